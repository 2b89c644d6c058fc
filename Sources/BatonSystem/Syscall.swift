internal import CBatonSystem
internal import Glibc
public import SystemPackage

/// A failed system call: its name and the `errno` it set.
public struct SystemError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The name of the call, such as `bind`.
    public var call: String
    /// The error the call set.
    public var errno: Errno

    public init(_ call: String, _ errno: Errno) {
        self.call = call
        self.errno = errno
    }

    public var description: String { "\(call): \(errno.description)" }
}

/// Runs a system call that returns -1 on failure, retrying on EINTR and throwing a ``SystemError`` that
/// names the call otherwise.
///
/// EBADF and EFAULT are programmer errors: they stop the program rather than being thrown.
@discardableResult
@inline(__always)
func syscall<T: FixedWidthInteger>(
    _ name: @autoclosure () -> String,
    _ body: () throws -> T
) throws(SystemError) -> T {
    while true {
        let result: T
        do {
            result = try body()
        } catch {
            fatalError("unexpected throw from \(name())")
        }
        if result != -1 { return result }
        let code = Glibc.errno
        if code == EINTR { continue }
        precondition(code != EBADF && code != EFAULT, "\(name()) failed with \(Errno(rawValue: code)): a bug in baton")
        throw SystemError(name(), Errno(rawValue: code))
    }
}

/// What a non-blocking call did: its result, or nothing because it would have blocked.
public enum IOResult<T: Sendable>: Sendable {
    case processed(T)
    case wouldBlock

    /// The result, or nil when the call would have blocked.
    public var value: T? {
        if case .processed(let value) = self { value } else { nil }
    }
}

/// Runs a non-blocking system call: retries on EINTR, returns ``IOResult/wouldBlock`` on EAGAIN (and on the errnos
/// in `alsoWouldBlock`, such as ECONNABORTED for `accept`), and throws a ``SystemError`` that names the call otherwise.
@inline(__always)
func syscall<T: FixedWidthInteger & Sendable>(
    blocking name: @autoclosure () -> String,
    alsoWouldBlock: Set<Int32> = [],
    _ body: () -> T
) throws(SystemError) -> IOResult<T> {
    while true {
        let result = body()
        if result != -1 { return .processed(result) }
        let code = Glibc.errno
        if code == EINTR { continue }
        if code == EAGAIN || code == EWOULDBLOCK || alsoWouldBlock.contains(code) { return .wouldBlock }
        precondition(code != EBADF && code != EFAULT, "\(name()) failed with \(Errno(rawValue: code)): a bug in baton")
        throw SystemError(name(), Errno(rawValue: code))
    }
}
