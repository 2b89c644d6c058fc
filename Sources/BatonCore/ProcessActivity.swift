/// What `/proc/PID/status` says of whether a process has run: its state, its thread count and its main thread's
/// context switches. A single-threaded process that is not running and whose switch count has not moved since an
/// earlier look has not run since then: its fds, epoll sets and system call are what that look saw (zero-config
/// readiness skips looking at them again).
public struct ProcessActivity: Sendable, Equatable {
    public var state: Character
    public var threads: Int
    public var switches: UInt64

    public init(state: Character, threads: Int, switches: UInt64) {
        self.state = state
        self.threads = threads
        self.switches = switches
    }

    /// From the text of `/proc/PID/status`; nil if a field is missing (a process that is gone reads empty). Read
    /// byte by byte: a check of a starting worker that has not run costs this and one read.
    public init?(status text: String) {
        var state: UInt8?
        var threads: UInt64?
        var voluntary: UInt64?
        var involuntary: UInt64?
        let bytes = Array(text.utf8)
        var start = 0
        while start < bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != UInt8(ascii: "\n") { end += 1 }
            let line = bytes[start..<end]
            start = end + 1
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { continue }
            let key = line[line.startIndex..<colon]
            let value = line[(colon + 1)...].drop { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }
            if key.elementsEqual("State".utf8) {
                state = value.first
            } else if key.elementsEqual("Threads".utf8) {
                threads = Self.number(value)
            } else if key.elementsEqual("voluntary_ctxt_switches".utf8) {
                voluntary = Self.number(value)
            } else if key.elementsEqual("nonvoluntary_ctxt_switches".utf8) {
                involuntary = Self.number(value)
            }
        }
        guard let state, let threads, let voluntary, let involuntary else { return nil }
        self.init(state: Character(Unicode.Scalar(state)), threads: Int(threads), switches: voluntary &+ involuntary)
    }

    /// The decimal number `digits` spell, or nil (none, or another character).
    private static func number(_ digits: ArraySlice<UInt8>) -> UInt64? {
        guard !digits.isEmpty, digits.count <= 19 else { return nil }
        var result: UInt64 = 0
        for digit in digits {
            guard digit >= UInt8(ascii: "0") && digit <= UInt8(ascii: "9") else { return nil }
            result = result * 10 + UInt64(digit - UInt8(ascii: "0"))
        }
        return result
    }

    /// Whether a later look that reads the same proves the process has not run in between: one thread, and not
    /// running now (a running thread may change anything without being switched out yet).
    public var provesIdle: Bool { threads == 1 && state != "R" }
}
