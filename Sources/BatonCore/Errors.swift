/// baton's domain error: a code, a message that names the thing and the fix, and the underlying cause.
public struct BatonError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        case badArgument
        case cannotExecute
        case listen
        case control
        case notRunning
        case permissionDenied
        case reloadFailed
        case internalError
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
