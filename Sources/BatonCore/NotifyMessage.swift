/// A state change a worker reports, in sd_notify's `KEY=VALUE` newline-separated form.
public struct NotifyMessage: Sendable, Equatable {
    public var ready = false
    public var stopping = false
    public var watchdog = false
    public var reloading = false
    public var status: String?
    /// `WATCHDOG_USEC=`: the worker asks for a watchdog of this interval.
    public var watchdogMicroseconds: UInt64?
    /// Assignments baton does not act on.
    public var other: [String] = []

    /// The largest message baton accepts; larger datagrams are dropped.
    public static let maximumSize = 4096

    public init() {}

    /// Parses a message; `nil` if it is not valid UTF-8, too long, or has a line without `=`.
    public init?(parsing bytes: some Collection<UInt8>) {
        guard bytes.count <= NotifyMessage.maximumSize, !bytes.contains(0) else { return nil }
        guard let text = String(validating: Array(bytes), as: UTF8.self) else { return nil }
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            guard let equals = line.firstIndex(of: "="), equals != line.startIndex else { return nil }
            let key = line[..<equals]
            let value = line[line.index(after: equals)...]
            switch key {
            case "READY": ready = value == "1"
            case "STOPPING": stopping = value == "1"
            case "WATCHDOG": watchdog = value == "1"
            case "RELOADING": reloading = value == "1"
            case "STATUS": status = String(value.prefix(512))
            case "WATCHDOG_USEC": watchdogMicroseconds = UInt64(value)
            default: if other.count < 16 { other.append(String(key.prefix(64))) }
            }
        }
    }
}

/// Splits a byte stream into lines, with a cap on a line's length so that a worker cannot make baton
/// buffer without bound.
public struct LineSplitter: Sendable {
    public var maximumLineLength: Int
    private var partial: [UInt8] = []

    public init(maximumLineLength: Int = 8192) {
        self.maximumLineLength = maximumLineLength
    }

    /// Feeds bytes and returns the complete lines (without their newline). An overlong line is cut.
    public mutating func feed(_ bytes: some Sequence<UInt8>) -> [[UInt8]] {
        var lines: [[UInt8]] = []
        for byte in bytes {
            if byte == UInt8(ascii: "\n") {
                lines.append(partial)
                partial.removeAll(keepingCapacity: true)
            } else if partial.count < maximumLineLength {
                partial.append(byte)
            } else {
                lines.append(partial)
                partial = [byte]
            }
        }
        return lines
    }

    /// What is left after the last newline, at end of stream.
    public mutating func finish() -> [UInt8]? {
        defer { partial = [] }
        return partial.isEmpty ? nil : partial
    }
}
