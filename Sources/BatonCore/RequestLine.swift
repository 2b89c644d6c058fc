/// Finds the one request line a control client sends, in bounded memory: it keeps at most the limit's worth of
/// bytes, and of a longer line only counts the rest, so that an oversized request is reported with its real size.
public struct RequestLine: Sendable {
    /// What the client sent.
    public enum Outcome: Sendable, Equatable {
        /// A line of at most the limit, without its newline.
        case line([UInt8])
        /// A line longer than the limit: its length in bytes, without the newline.
        case oversized(Int)
    }

    /// The longest line accepted.
    public let limit: Int
    /// The line's first bytes, up to the limit.
    private var head: [UInt8] = []
    /// The bytes of the line so far, kept or counted.
    public private(set) var length = 0
    /// Set once the line has ended (its newline arrived); nothing is read after it.
    public private(set) var outcome: Outcome?

    public init(limit: Int) {
        self.limit = limit
    }

    /// Takes the bytes that arrived; once the newline is among them, ``outcome`` is set and the rest is ignored.
    public mutating func feed(_ bytes: some Collection<UInt8>) {
        guard outcome == nil else { return }
        let newline = bytes.firstIndex(of: UInt8(ascii: "\n"))
        let part = bytes[..<(newline ?? bytes.endIndex)]
        if head.count < limit { head += part.prefix(limit - head.count) }
        length += part.count
        if newline != nil { outcome = current }
    }

    /// What the bytes so far amount to, when no more will come (the deadline passed): nil if nothing arrived.
    public var unfinished: Outcome? {
        length == 0 ? nil : current
    }

    /// Whether the line has grown past the limit.
    public var isOversized: Bool { length > limit }

    private var current: Outcome { length > limit ? .oversized(length) : .line(head) }
}
