// The options of canary and held reloads: `--canary DURATION` (for `baton run`, every reload's default; for
// `baton reload`, this one's) and `baton reload --hold`.
public import ArgumentParser
public import BatonCore

/// `--canary DURATION`: how long one new worker serves beside the old generation before the rest start.
public enum CanaryOption {
    /// The window `text` gives (zero: no canary), or a one-line error that names the option and the fix.
    public static func parse(_ text: String) throws(BatonError) -> Duration {
        // A bare number: the unit is missing (a zero needs none: it turns the canary off).
        if text != "0", !text.isEmpty, text.utf8.count <= 20,
            text.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") })
        {
            throw BatonError(
                .badArgument,
                "invalid --canary \(BatonError.quoted(text)): give a unit, such as \(text)s or \(text)ms"
            )
        }
        guard let value = DurationText(text) else {
            throw BatonError(
                .badArgument,
                "invalid --canary \(BatonError.quoted(text)): \(DurationText.form), such as 5s, or 0 for no canary"
            )
        }
        return value.duration
    }
}

/// The options of `baton reload`.
public struct ReloadCommandOptions: ParsableArguments {
    // Unconditional: `--canary -1s` is a value to check, not a missing one.
    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Start one new worker first and let it serve beside the old generation this long; if it stays up (no exit of it or its processes, watchdog fed) the reload goes on, otherwise it rolls back. 0 for none. Default: baton run's --canary.",
            valueName: "duration"
        )
    )
    public var canary: String?

    @Flag(
        help:
            "Once the new generation is ready, leave it serving beside the old one (both on the shared sockets) and return; then 'baton promote' retires the old one, or 'baton rollback' the new one."
    )
    public var hold = false

    public init() {}

    /// The control request for this reload, or a one-line error.
    public func request() throws(BatonError) -> ControlProtocol.Request {
        let window = try canary.map { text throws(BatonError) in try CanaryOption.parse(text) }
        return ControlProtocol.Request(
            command: .reload,
            canaryMilliseconds: window?.milliseconds,
            hold: hold ? true : nil
        )
    }
}
