/// baton's domain error: a code, a message that names the thing and the fix, and the underlying cause.
///
/// The command line maps each code to an exit status in one place (`Baton.swift`).
public struct BatonError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        /// A bad option, value or request (a usage error).
        case badArgument
        /// The app's command cannot be run.
        case cannotExecute
        /// A listener cannot be bound or was not passed.
        case listen
        /// The control socket cannot be set up or used.
        case control
        /// No launcher answers.
        case notRunning
        case permissionDenied
        case reloadFailed
        case internalError
    }

    public var code: Code
    /// What went wrong, in one line that names the thing and the fix; the underlying error's words follow it.
    public var message: String
    /// What caused it, such as a failed system call.
    public var underlying: (any Error)?

    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String {
        guard let underlying else { return message }
        return "\(message): \(underlying)"
    }
}

extension BatonError {
    /// A value from the command line, quoted for a one-line error: control characters and newlines are escaped, and a
    /// very long value is cut, so that the error stays one readable line.
    public static func quoted(_ text: String) -> String {
        var result = "'"
        for scalar in text.unicodeScalars {
            if result.unicodeScalars.count > 80 {
                result += "..."
                break
            }
            switch scalar {
            case "\n": result += "\\n"
            case "\t": result += "\\t"
            case "'": result += "\\'"
            case "\\": result += "\\\\"
            default:
                if scalar.value < 0x20 || (0x7f..<0xa0).contains(scalar.value) || scalar.value == 0x2028
                    || scalar.value == 0x2029
                {
                    let hex = String(scalar.value, radix: 16)
                    result += "\\u{\(hex)}"
                } else {
                    result.unicodeScalars.append(scalar)
                }
            }
        }
        return result + "'"
    }
}
