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
                if scalar.value < 0x20 || (0x7f..<0xa0).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029 {
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
