import ArgumentParser
import BatonCore
import BatonSystem

extension Baton {
    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ls",
            abstract: "List every baton on this host: name, pid, version, serving generation, workers, last reload.",
            discussion: """
                baton looks for control sockets (*.sock) in $RUNTIME_DIRECTORY, /run/baton and /run/baton-* (the \
                baton@NAME.service template), and for /run/NAME/NAME.sock, that only their owner may use (as baton \
                makes its control socket; not an app's listener or another program's socket), and asks each for its \
                status, all at once, within 1s: one that is paused or hung is shown as not answering, a socket file a killed baton left \
                behind as stale (neither is skipped). Exits 0, also when none is found.
                """
        )

        @Flag(help: "Print JSON: an array with each instance's name, control socket, state and status.")
        var json = false

        /// How long the instances have to answer, all together.
        static let deadline = Duration.seconds(1)

        func run() throws {
            Signals.ignoreBrokenPipe()
            Signals.ignore(Signals.upgrade)
            let directories = OS.environment("RUNTIME_DIRECTORY")?.split(separator: ":").map(String.init) ?? []
            let paths = ControlSockets.discover(runtimeDirectories: directories)
            let request = ControlProtocol.encode(ControlProtocol.Request(command: .status))
            let answers = ControlSockets.ask(paths, request, timeout: Self.deadline)
            let instances = zip(paths, answers).map { path, answer in
                let name = InstanceListing.name(forControl: path)
                switch answer {
                case .reply(let line):
                    let reply = ControlProtocol.decodeReply(line)
                    guard let status = reply?.status else {
                        return InstanceListing(name: name, control: path, state: .unknown, message: reply?.message)
                    }
                    return InstanceListing(name: status.name, control: path, state: .running, status: status)
                case .stale: return InstanceListing(name: name, control: path, state: .stale)
                case .silent: return InstanceListing(name: name, control: path, state: .notAnswering)
                case .denied: return InstanceListing(name: name, control: path, state: .permissionDenied)
                case .failed: return InstanceListing(name: name, control: path, state: .unknown)
                }
            }
            if json {
                StandardStreams.writeOutput(String(decoding: ControlProtocol.encode(instances), as: UTF8.self))
            } else if instances.isEmpty {
                let places = (directories + ["/run/baton", "/run/baton-*", "/run/NAME/NAME.sock"]).joined(
                    separator: ", "
                )
                StandardStreams.writeOutput("no baton found (looked in \(places))\n")
            } else {
                StandardStreams.writeOutput(InstanceList.text(instances, now: OS.wallClockSeconds()))
            }
        }
    }
}
