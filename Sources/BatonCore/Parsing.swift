/// A duration as written on baton's command line: `30s`, `500ms`, `2m`, `1h`, `1.5s`. The unit is required: a bare
/// number (`10`) is not a duration, since it could mean seconds or milliseconds.
public struct DurationText: Sendable, Equatable {
    public var duration: Duration

    /// What a duration must look like, for error messages.
    public static let form = "a number with a unit (ms, s, m or h), at most 365 days"

    public init(_ duration: Duration) { self.duration = duration }

    /// `30s`, `500ms`, `2m`, ...: a number and its unit; only a zero may go without one (`0`).
    public init?(_ text: String) {
        if text == "0" {
            duration = .zero
            return
        }
        let units: [(String, Double)] = [("ms", 0.001), ("us", 0.000_001), ("s", 1), ("m", 60), ("h", 3600)]
        guard let (suffix, scale) = units.first(where: { text.hasSuffix($0.0) }) else { return nil }
        let number = text.dropLast(suffix.count)
        guard !number.isEmpty, number.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
            let value = Double(number), value.isFinite, value >= 0, value * scale <= 365 * 86400
        else { return nil }
        duration = .nanoseconds(Int64((value * scale * 1e9).rounded()))
    }
}

extension Duration {
    /// Milliseconds, rounded toward zero; saturated at `Int64.min` and `Int64.max` rather than trapping.
    public var milliseconds: Int64 { count(unit: 1000) }

    /// Microseconds, rounded toward zero; saturated at `Int64.min` and `Int64.max` rather than trapping.
    public var microseconds: Int64 { count(unit: 1_000_000) }

    /// How many `1/unit` seconds this is, saturated.
    private func count(unit: Int64) -> Int64 {
        let (seconds, attoseconds) = components
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: unit)
        let (total, carry) = whole.addingReportingOverflow(attoseconds / (1_000_000_000_000_000_000 / unit))
        guard !overflow && !carry else { return seconds < 0 ? .min : .max }
        return total
    }

    /// A short human form: `840ms`, `2.5s`, `3m10s`.
    public var shortDescription: String {
        let ms = milliseconds
        if ms < 1000 { return "\(ms)ms" }
        if ms < 60_000 {
            let tenths = ms / 100
            return tenths % 10 == 0 ? "\(tenths / 10)s" : "\(tenths / 10).\(tenths % 10)s"
        }
        let seconds = ms / 1000
        return seconds % 60 == 0 ? "\(seconds / 60)m" : "\(seconds / 60)m\(seconds % 60)s"
    }
}

/// Where a listener is bound: a TCP host and port, or a unix socket path.
public enum ListenAddress: Sendable, Hashable, CustomStringConvertible {
    /// `host` nil means every address.
    case tcp(host: String?, port: UInt16)
    case unix(path: String)

    public var description: String {
        switch self {
        case .tcp(nil, let port): return ":\(port)"
        case .tcp(let host?, let port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unix(let path): return "unix:\(path)"
        }
    }
}

/// One `--listen [NAME=]ADDRESS` argument.
public struct ListenSpec: Sendable, Hashable {
    public var name: String
    public var address: ListenAddress

    public init(name: String, address: ListenAddress) {
        self.name = name
        self.address = address
    }

    /// Parses `[NAME=]ADDRESS`, where ADDRESS is `HOST:PORT`, `[IPV6]:PORT`, `:PORT` or `unix:PATH`; without a
    /// name the listener is called `defaultName`. Errors name `option`.
    public init(parsing text: String, defaultName: String, option: String = "--listen") throws(BatonError) {
        func bad(_ why: String) -> BatonError {
            BatonError(.badArgument, "invalid \(option) \(BatonError.quoted(text)): \(why)")
        }
        var name = defaultName
        var rest = Substring(text)
        // A NAME= prefix; an '=' after "unix:" belongs to the path.
        if let equals = rest.firstIndex(of: "="), !rest[..<equals].contains(":"), !rest[..<equals].contains("[") {
            name = String(rest[..<equals])
            rest = rest[rest.index(after: equals)...]
            guard ListenSpec.isValidName(name) else {
                throw bad(
                    "the name \(BatonError.quoted(name)) must be 1-255 printable characters without ':' or spaces"
                )
            }
        }
        self.name = name
        if rest.hasPrefix("unix:") {
            let path = String(rest.dropFirst(5))
            guard !path.isEmpty else { throw bad("expected unix:PATH") }
            guard path.utf8.count < 108 else { throw bad("a unix socket path must be shorter than 108 bytes") }
            guard !path.contains("\0") else { throw bad("the path contains a NUL byte") }
            address = .unix(path: path)
            return
        }
        guard let colon = rest.lastIndex(of: ":") else {
            throw bad("expected HOST:PORT, [IPV6]:PORT, :PORT or unix:PATH")
        }
        var host = String(rest[..<colon])
        let portText = rest[rest.index(after: colon)...]
        guard let port = UInt16(portText), port > 0 else {
            throw bad("the port \(BatonError.quoted(String(portText))) must be a number from 1 to 65535")
        }
        if host.hasPrefix("[") {
            guard host.hasSuffix("]"), host.count > 2 else { throw bad("an IPv6 address goes in brackets: [::1]:8080") }
            host = String(host.dropFirst().dropLast())
            // An IPv6 literal has a colon; a zone (fe80::1%eth0) may add letters after '%'.
            let address = host.split(separator: "%", maxSplits: 1).first ?? ""
            guard address.contains(":"), address.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }),
                host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || ":.%".contains($0)) })
            else { throw bad("\(BatonError.quoted(String(host))) is not an IPv6 address") }
        } else if host.contains(":") {
            let example = host.count <= 45 && host.allSatisfy({ $0.isHexDigit || ":.%".contains($0) }) ? host : "::1"
            throw bad("an IPv6 address goes in brackets: [\(example)]:\(port)")
        } else if !host.isEmpty {
            guard host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "." || $0 == "-") }) else {
                throw bad("\(BatonError.quoted(String(host))) is not a host name or IPv4 address")
            }
        }
        address = .tcp(host: host.isEmpty ? nil : host, port: port)
    }

    /// Whether `name` can travel in `LISTEN_FDNAMES`.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 255
            && name.unicodeScalars.allSatisfy { $0.value > 0x20 && $0.value < 0x7f && $0 != ":" }
    }
}

/// How baton learns that a worker is ready.
public enum ReadyMode: String, Sendable, CaseIterable {
    /// `NOTIFY_SOCKET`: the sd_notify protocol, attributed by SCM_CREDENTIALS.
    case notify
    /// `BATON_NOTIFY_FD`: `KEY=VALUE` lines on a pipe.
    case fd
    /// Zero configuration: the worker accepts on a listener (seen in `/proc`).
    case listen
    /// Ready as soon as the worker has been exec'd (no check at all).
    case exec
}

/// How a reload replaces the workers.
public enum Strategy: String, Sendable, CaseIterable {
    case allAtOnce = "all-at-once"
    case rolling
}
