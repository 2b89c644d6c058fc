/// What baton does with a connection it took over from a retiring worker once no process of that worker holds it
/// any more (issue: zero failed requests with servers that close idle keep-alive connections on their stop signal).
///
/// The server's `close()` sent nothing, because baton still holds the socket: the client does not know yet. baton
/// finishes what the server meant to do, without the race that loses a request already on the wire.
public enum HeldConnection {
    public enum Verdict: Sendable, Equatable {
        /// The client's next request has arrived: hand the connection to the serving generation.
        case relay
        /// Idle: close it cleanly (FIN), as the server meant to.
        case close
        /// Unread bytes that are not the start of an HTTP/1 request (TLS, HTTP/2, a half-sent body), or the
        /// worker was killed: close it as the server's close would have (a reset), no worse than without baton.
        case reset
        /// Idle, but a request may still be on its way: look again soon.
        case wait
        /// The server shut it down itself (a FIN already went out) or it is gone: nothing to do but let go.
        case leave
    }

    /// - Parameters:
    ///   - established: TCP_INFO says ESTABLISHED or CLOSE_WAIT (the server did not `shutdown()` it).
    ///   - clientClosed: the client sent FIN (CLOSE_WAIT) and nothing is left to read.
    ///   - unread: bytes waiting to be read; `firstBytes` the first of them.
    ///   - idleFor: how long ago the worker let go of it.
    ///   - quietBefore: how long nothing had moved on it either way when the worker let go of it.
    ///   - ownerKilled: the worker was killed (SIGKILL at the stop timeout), so a response may be half-written.
    public static func verdict(
        established: Bool,
        clientClosed: Bool,
        unread: Int,
        firstBytes: [UInt8],
        idleFor: Duration,
        quietBefore: Duration = .zero,
        window: Duration,
        ownerKilled: Bool
    ) -> Verdict {
        guard established else { return .leave }
        if unread > 0 {
            return !ownerKilled && missingStart(of: firstBytes) != nil ? .relay : .reset
        }
        if clientClosed || ownerKilled { return .close }
        // A connection idle for a second or more before the server closed it has no request on its way more than
        // any other moment: its client gets the FIN at once, as without baton. Held for the window, a client that
        // looked at it meanwhile (found it open) and sends later would meet the FIN as its request goes out.
        if quietBefore >= longIdle { return .close }
        return idleFor >= window ? .close : .wait
    }

    /// How long a connection must have been quiet before its worker let go of it to be closed without a window.
    public static let longIdle = Duration.seconds(1)

    /// Whether `bytes` begin an HTTP/1 request: a method token (upper-case letters) and a space, such as `GET `.
    /// A shorter prefix of one counts too (the rest is on its way).
    public static func looksLikeRequest(_ bytes: [UInt8]) -> Bool {
        guard let first = bytes.first, first >= UInt8(ascii: "A"), first <= UInt8(ascii: "Z") else { return false }
        for (index, byte) in bytes.enumerated() {
            if byte == UInt8(ascii: " ") { return index >= 3 }
            guard byte >= UInt8(ascii: "A"), byte <= UInt8(ascii: "Z"), index < 16 else { return false }
        }
        return true
    }

    /// What must go before `bytes` for them to begin an HTTP/1 request: nothing when they do; the first letter of a
    /// standard method when that is all they lack (Go's `net/http` reads one byte ahead on an idle keep-alive
    /// connection, so a request it closed on has lost its first letter: `ET / HTTP/1.1` can only be `GET`); nil
    /// when they are something else (TLS, HTTP/2, a body).
    public static func missingStart(of bytes: [UInt8]) -> [UInt8]? {
        let methods = ["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"]
        for method in methods {
            let rest = Array(method.utf8.dropFirst()) + [UInt8(ascii: " ")]
            if bytes.starts(with: rest) && bytes.count > rest.count && bytes[rest.count] == UInt8(ascii: "/") {
                return [method.utf8.first!]
            }
        }
        return looksLikeRequest(bytes) ? [] : nil
    }

    /// Whether `bytes` begin a request with an idempotent method (RFC 9110: GET, HEAD, OPTIONS, TRACE, PUT, DELETE),
    /// which may be sent again when a server closed the connection after reading it without answering.
    public static func isIdempotentRequest(_ bytes: [UInt8]) -> Bool {
        ["GET ", "HEAD ", "OPTIONS ", "TRACE ", "PUT ", "DELETE "].contains { bytes.starts(with: Array($0.utf8)) }
    }

    /// How long an idle connection is kept after the worker let go of it, for a request already on the wire to
    /// arrive: four round-trip times, at least 250 ms, at most 1 s. A keep-alive client's next request follows its
    /// last response by far less than a round trip on a quiet machine, but by tens of milliseconds on a loaded one
    /// (wrk at a load average of 9-16, 16 Python client threads sharing one interpreter): a 20 ms floor closed
    /// connections whose next request was on its way.
    public static func window(rtt: Duration) -> Duration {
        min(.seconds(1), max(.milliseconds(250), rtt * 4))
    }
}

/// What happened to the connections baton took over from one worker, or from all since it started.
public struct RescueCounts: Sendable, Equatable, Codable {
    /// Connections taken over.
    public var held = 0
    /// Handed to the serving generation (a request had arrived).
    public var relayed = 0
    /// Closed cleanly, idle.
    public var closed = 0
    /// Reset: unread bytes that were not an HTTP/1 request, or the worker was killed.
    public var reset = 0
    /// Left to the server, which shut them down itself.
    public var left = 0
    /// Relays of earlier rescues whose upstream this worker was, moved on to the serving generation (not in `held`).
    public var moved = 0

    public init() {}

    /// Every count is optional in JSON: a `baton status` of this version reads what an older daemon reports.
    public init(from decoder: any Decoder) throws {
        let values = try decoder.container(keyedBy: CodingKeys.self)
        held = try values.decodeIfPresent(Int.self, forKey: .held) ?? 0
        relayed = try values.decodeIfPresent(Int.self, forKey: .relayed) ?? 0
        closed = try values.decodeIfPresent(Int.self, forKey: .closed) ?? 0
        reset = try values.decodeIfPresent(Int.self, forKey: .reset) ?? 0
        left = try values.decodeIfPresent(Int.self, forKey: .left) ?? 0
        moved = try values.decodeIfPresent(Int.self, forKey: .moved) ?? 0
    }

    public static func + (a: RescueCounts, b: RescueCounts) -> RescueCounts {
        var sum = a
        sum.held += b.held
        sum.relayed += b.relayed
        sum.closed += b.closed
        sum.reset += b.reset
        sum.left += b.left
        sum.moved += b.moved
        return sum
    }
}
