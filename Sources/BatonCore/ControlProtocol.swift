/// The control protocol between `baton reload`/`baton status` and the running launcher: one JSON object per
/// line over a unix stream socket. A client sends one request; the launcher answers with zero or more
/// `progress` lines and one final line (`result`, `status` or `error`).
public enum ControlProtocol {
    /// The longest request line the launcher reads.
    public static let maximumRequestSize = 4096

    public struct Request: Codable, Sendable, Equatable {
        public enum Command: String, Codable, Sendable {
            case reload
            case status
            /// Sends `signal` to the workers of the serving generation (or of `generation`; only slot `worker`).
            case signal
            /// Retire the generation a `--hold` reload left serving beside the new one.
            case promote
            /// Retire the held new generation; the old one serves on.
            case rollback
        }

        public var command: Command
        /// `reload`: answer once the old generation is gone (`--wait-drained`), not when the new one serves.
        public var waitDrained: Bool?
        /// `reload`: kill what is left of a generation that still drains instead of waiting for it (`--cut-drain`).
        public var cutDrain: Bool?
        /// `reload`: the canary window in milliseconds (0: none); absent: the launcher's `--canary`.
        public var canaryMilliseconds: Int64?
        /// `reload`: leave the new generation serving beside the old one until promote or rollback.
        public var hold: Bool?

        /// `signal`: the signal's number.
        public var signal: Int32?
        /// `signal`: the generation whose workers get it (default: the serving one).
        public var generation: Int?
        /// `signal`: only the worker of this slot.
        public var worker: Int?

        public init(
            command: Command,
            waitDrained: Bool? = nil,
            cutDrain: Bool? = nil,
            canaryMilliseconds: Int64? = nil,
            hold: Bool? = nil,
            signal: Int32? = nil,
            generation: Int? = nil,
            worker: Int? = nil
        ) {
            self.command = command
            self.waitDrained = waitDrained
            self.cutDrain = cutDrain
            self.canaryMilliseconds = canaryMilliseconds
            self.hold = hold
            self.signal = signal
            self.generation = generation
            self.worker = worker
        }

        /// The reload's options, range-checked: a message fit for the error reply if they are out of range.
        public func reloadOptions() throws(BatonError) -> ReloadOptions {
            var options = ReloadOptions(hold: hold ?? false)
            if let canaryMilliseconds {
                guard canaryMilliseconds >= 0, canaryMilliseconds <= 365 * 86_400_000 else {
                    throw BatonError(
                        .control,
                        "invalid canaryMilliseconds \(canaryMilliseconds): give 0 (no canary) to 31536000000 (365 days)"
                    )
                }
                options.canary = .milliseconds(canaryMilliseconds)
            }
            return options
        }
    }

    /// One line the launcher sends back.
    public struct Reply: Codable, Sendable, Equatable {
        public enum Kind: String, Codable, Sendable {
            case progress
            case result
            case status
            case error
        }

        public var kind: Kind
        public var message: String?
        public var ok: Bool?
        public var durationMilliseconds: Int64?
        /// The last lines the failing worker wrote to stderr.
        public var stderr: [String]?
        public var status: StatusReport?
        /// `result`: the reload's new generation, and why it failed.
        public var generation: Int?
        public var reason: String?
        /// `result`: what still drains when a reload finished.
        public var draining: [DrainProgress]?
        /// `signal`: the pids that got it.
        public var pids: [Int32]?

        public init(
            kind: Kind,
            message: String? = nil,
            ok: Bool? = nil,
            durationMilliseconds: Int64? = nil,
            stderr: [String]? = nil,
            status: StatusReport? = nil,
            pids: [Int32]? = nil
        ) {
            self.kind = kind
            self.message = message
            self.ok = ok
            self.durationMilliseconds = durationMilliseconds
            self.stderr = stderr
            self.status = status
            self.pids = pids
        }

        public static func progress(_ message: String) -> Reply { Reply(kind: .progress, message: message) }
        public static func error(_ message: String) -> Reply { Reply(kind: .error, message: message, ok: false) }
    }

    /// Decodes a request line; throws a message fit for the error reply.
    public static func decodeRequest(_ line: [UInt8]) throws(BatonError) -> Request {
        guard line.count <= maximumRequestSize else { throw tooLarge(line.count) }
        do {
            return try JSON.decode(Request.self, from: line)
        } catch {
            throw BatonError(
                .control,
                "malformed request: expected {\"command\":C} with C one of reload, status, signal, promote, rollback"
            )
        }
    }

    /// The error for a request line of `size` bytes, over ``maximumRequestSize``.
    public static func tooLarge(_ size: Int) -> BatonError {
        BatonError(
            .control,
            "request of \(size) bytes is too large (a request is one line of at most \(maximumRequestSize) bytes)"
        )
    }

    public static func encode(_ value: some Encodable) -> [UInt8] {
        guard let data = try? JSON.encode(value) else { return Array("{\"kind\":\"error\"}\n".utf8) }
        return data + [UInt8(ascii: "\n")]
    }

    public static func decodeReply(_ line: [UInt8]) -> Reply? {
        try? JSON.decode(Reply.self, from: line)
    }
}
