/// A state change a worker reports, in sd_notify's `KEY=VALUE` newline-separated form.
public struct NotifyMessage: Sendable, Equatable {
    public var ready = false
    public var stopping = false
    public var watchdog = false
    public var reloading = false
    public var status: String?
    /// `WATCHDOG_USEC=`: the worker asks for a watchdog of this interval, within ``watchdogRange``.
    public var watchdogInterval: Duration?
    /// Assignments baton does not act on.
    public var other: [String] = []
    /// Assignments baton would act on but whose value it rejected, each as `KEY=VALUE (why)`, printable and short,
    /// for the log. The rest of the message still counts.
    public var rejected: [String] = []

    /// The largest message baton accepts; larger datagrams are dropped.
    public static let maximumSize = 4096

    /// The `WATCHDOG_USEC=` values baton accepts, in microseconds: 1 ms to 365 days (as long as any duration
    /// baton takes). Anything else (0, a number past 64 bits, a sign) is rejected.
    public static let watchdogRange: ClosedRange<UInt64> = 1_000...31_536_000_000_000

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
            case "WATCHDOG_USEC":
                if let number = UInt64(value), NotifyMessage.watchdogRange.contains(number) {
                    watchdogInterval = .microseconds(Int64(number))
                } else if rejected.count < 16 {
                    rejected.append(
                        "WATCHDOG_USEC=\(NotifyMessage.printable(value, limit: 32)) (not a number of microseconds from "
                            + "\(NotifyMessage.watchdogRange.lowerBound) to \(NotifyMessage.watchdogRange.upperBound))"
                    )
                }
            default: if other.count < 16 { other.append(String(key.prefix(64))) }
            }
        }
    }

    /// `text` cut to `limit` characters with control characters escaped, fit for one log line.
    static func printable(_ text: Substring, limit: Int) -> String {
        let clean = TerminalText.sanitized(String(text.prefix(limit)))
        return clean.count > limit || text.count > limit ? clean.prefix(limit) + "..." : clean
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
