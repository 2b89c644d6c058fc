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
            var drain = ""
            if let left = generation.drainSecondsLeft {
                drain =
                    "  \(generation.connections.map { "\($0) connection\($0 == 1 ? "" : "s")" } ?? "connections not counted yet"), \(left)s left"
            }
            // A held generation serves beside the one that is promoted: say which.
            let beside = status.generations.first { $0.id != generation.id && $0.state.contains("serving") }
            let state = generation.state == "held" ? "held beside generation \(beside?.id ?? 0)" : generation.state
            out +=
                "  generation \(generation.id)  \(clean(state))\(generation.crashLooping ? " (crash-looping)" : "")\(drain)  started \(started) ago\n"
            for worker in generation.workers {
                let uptime = age(worker.uptimeSeconds).shortDescription
                out +=
                    "    worker \(worker.slot)  pid \(worker.pid.map(String.init) ?? "-")  \(clean(worker.state))  up \(uptime)  restarts \(worker.restarts)"
                if let cpu = worker.cpuSeconds { out += "  cpu \(WorkerUsage.cpuText(cpu))" }
                if let percent = worker.cpuPercent { out += " (\(WorkerUsage.percentText(percent)))" }
                if let rss = worker.rssBytes { out += "  rss \(WorkerUsage.bytesText(rss))" }
                if let text = worker.status { out += "  \"\(clean(text))\"" }
                if let health = worker.health { out += "  (\(clean(health)))" }
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
        if let rescued = status.rescued, rescued.held > 0 || (status.relays ?? 0) > 0 {
            out +=
                "connections taken over from retiring workers: \(rescued.held) (\(rescued.relayed) handed to a serving generation, \(rescued.closed) closed idle, \(rescued.reset) reset, \(rescued.left) shut down by the app; \(rescued.moved) relay(s) moved on at a later reload); \(status.relays ?? 0) relay(s) running\n"
        }
        // The history in short: the last few reloads, newest first (`--json` has all of them).
        let recent = (status.reloads ?? []).prefix(5)
        if recent.count > 1 {
            out += "recent reloads (newest first, \(status.reloads?.count ?? 0) kept):\n"
            for reload in recent {
                let ago = age(now - (reload.startedAt ?? reload.finishedAt)).shortDescription
                out +=
                    "  generation \(reload.generation)  \(reload.ok ? "ok" : "failed")  \(Duration.milliseconds(reload.durationMilliseconds).shortDescription)  started \(ago) ago"
                if let reason = reload.reason { out += "  \(clean(String(reason.prefix(80))))" }
                out += "\n"
            }
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
