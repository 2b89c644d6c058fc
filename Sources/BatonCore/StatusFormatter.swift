/// Renders a ``StatusReport`` for people.
public enum StatusFormatter {
    public static func text(_ status: StatusReport, now: Double) -> String {
        var out = "baton \(status.name) (pid \(status.pid), version \(status.version))\(status.reloading ? ", reloading" : "")\n"
        out += "listeners:\n"
        for listener in status.listeners {
            out += "  \(listener.name)  \(listener.address)  (fd \(listener.fd))"
            out += listener.refusing == true ? "  REFUSES CONNECTIONS: a worker shut it down; restart baton\n" : "\n"
        }
        out += "generations:\n"
        if status.generations.isEmpty { out += "  none\n" }
        for generation in status.generations {
            let age = Duration.milliseconds(Int64(max(0, now - generation.startedAt) * 1000)).shortDescription
            out += "  generation \(generation.id)  \(generation.state)\(generation.crashLooping ? " (crash-looping)" : "")  started \(age) ago\n"
            for worker in generation.workers {
                let uptime = Duration.milliseconds(Int64(worker.uptimeSeconds * 1000)).shortDescription
                out += "    worker \(worker.slot)  pid \(worker.pid.map(String.init) ?? "-")  \(worker.state)  up \(uptime)  restarts \(worker.restarts)"
                if let text = worker.status { out += "  \"\(text)\"" }
                out += "\n"
            }
        }
        if let reload = status.lastReload {
            let ago = Duration.milliseconds(Int64(max(0, now - reload.finishedAt) * 1000)).shortDescription
            out += "last reload: \(reload.ok ? "ok" : "failed") (generation \(reload.generation)) in \(Duration.milliseconds(reload.durationMilliseconds).shortDescription), \(ago) ago"
            if let reason = reload.reason { out += ": \(reason)" }
            out += "\n"
        } else {
            out += "last reload: none\n"
        }
        return out
    }
}
