/// Renders a ``StatusReport`` for people. Text from workers (their `STATUS=`) and everything else in the report is
/// shown with its control characters escaped (``TerminalText``).
public enum StatusFormatter {
    public static func text(_ status: StatusReport, now: Double) -> String {
        let clean = TerminalText.sanitized
        var out =
            "\(status.name == LaunchConfiguration.defaultName ? "baton" : "baton \(clean(status.name))") (pid \(status.pid), version \(clean(status.version)))\(status.reloading ? ", reloading" : "")\n"
        out += "listeners:\n"
        for listener in status.listeners {
            out += "  \(clean(listener.name))  \(clean(listener.address))  (fd \(listener.fd))"
            out +=
                listener.refusing == true
                ? "  REFUSES CONNECTIONS: a worker broke it; restart baton (and its .socket unit)\n" : "\n"
        }
        out += "generations:\n"
        if status.generations.isEmpty { out += "  none\n" }
        for generation in status.generations {
            let started = age(now - generation.startedAt).shortDescription
            // A held generation serves beside the one that is promoted: say which.
            let beside = status.generations.first { $0.id != generation.id && $0.state.contains("serving") }
            let state = generation.state == "held" ? "held beside generation \(beside?.id ?? 0)" : generation.state
            out +=
                "  generation \(generation.id)  \(clean(state))\(generation.crashLooping ? " (crash-looping)" : "")  started \(started) ago\n"
            for worker in generation.workers {
                let uptime = age(worker.uptimeSeconds).shortDescription
                out +=
                    "    worker \(worker.slot)  pid \(worker.pid.map(String.init) ?? "-")  \(clean(worker.state))  up \(uptime)  restarts \(worker.restarts)"
                if let text = worker.status { out += "  \"\(clean(text))\"" }
                out += "\n"
            }
        }
        if let reload = status.lastReload {
            let ago = age(now - reload.finishedAt).shortDescription
            out +=
                "last reload: \(reload.ok ? "ok" : "failed") (generation \(reload.generation)) in \(Duration.milliseconds(reload.durationMilliseconds).shortDescription), \(ago) ago"
            if let reason = reload.reason { out += ": \(clean(reason))" }
            out += "\n"
        } else {
            out += "last reload: none\n"
        }
        return out
    }

    /// A span in seconds as a duration: negative, not finite or absurd values (a clock step, a bad reply) show as
    /// 0 or are capped at 100 years instead of trapping in the conversion.
    static func age(_ seconds: Double) -> Duration {
        guard seconds.isFinite, seconds > 0 else { return .zero }
        return .milliseconds(Int64(min(seconds, 100 * 365 * 86400) * 1000))
    }
}
