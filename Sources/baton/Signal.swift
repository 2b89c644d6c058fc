import ArgumentParser
import BatonCommandLine
import BatonCore
import BatonSystem

extension Baton {
    struct SendSignal: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "signal",
            abstract: "Send a signal to the workers of the serving generation (or of one generation, or one worker).",
            discussion: """
                For example HUP, for an app that rereads its configuration on it without a restart. The signal goes to \
                each worker process (not to its process group), and baton prints which pids got it. SIGKILL and SIGSTOP \
                are refused. Exits 0 when every chosen worker got it; 1 when not (no such generation or worker, \
                none running, no launcher answers); 64 for a bad or refused signal or option.
                """
        )

        @Argument(help: ArgumentHelp("A signal name (HUP, SIGUSR1, RTMIN+2) or number.", valueName: "signal"))
        var signal: String

        @Option(
            parsing: .unconditional,
            help: ArgumentHelp("The generation whose workers get it (default: the serving one).", valueName: "n")
        )
        var generation: Int?

        @Option(
            parsing: .unconditional,
            help: ArgumentHelp("Only the worker of this slot (1..N, as BATON_WORKER says).", valueName: "k")
        )
        var worker: Int?

        @OptionGroup var control: ControlOptions

        @Flag(help: "Print the launcher's answer as one JSON object (with the pids).")
        var json = false

        func run() throws {
            Signals.ignoreBrokenPipe()
            Signals.ignore(Signals.upgrade)
            let number = try Self.checkedSignal(signal)
            if let generation, !(1...Int(Int32.max)).contains(generation) {
                throw fail("invalid --generation \(generation): must be at least 1 (see baton status)", .badArgument)
            }
            if let worker, !(1...1024).contains(worker) {
                throw fail(
                    "invalid --worker \(worker): must be a slot from 1 to the number of --workers (see baton status)",
                    .badArgument
                )
            }
            var client = try connect(control.clientPath)
            defer { client.fd.closeOnce() }
            client.send(
                ControlProtocol.Request(command: .signal, signal: number, generation: generation, worker: worker)
            )
            Sockets.setReceiveTimeout(client.fd, seconds: 10)
            let asked = ContinuousClock.now
            guard let line = client.readLine(), let reply = ControlProtocol.decodeReply(line) else {
                if ContinuousClock.now - asked >= .seconds(9) {
                    throw fail(
                        "the launcher at \(control.clientPath) did not answer within 10s: is it paused or hung?",
                        .control
                    )
                }
                throw fail("the launcher closed the connection without answering", .control)
            }
            if reply.kind == .error, reply.message?.hasPrefix("malformed request") == true {
                throw fail(
                    "the launcher at \(control.clientPath) is older than baton signal: upgrade it in place with SIGUSR2 "
                        + "(or restart it) with this baton",
                    .control
                )
            }
            if json { StandardStreams.writeOutput(String(decoding: ControlProtocol.encode(reply), as: UTF8.self)) }
            let message = reply.message.map(TerminalText.sanitized) ?? "unexpected answer"
            guard reply.kind == .result, reply.ok == true else {
                if json { throw ExitCode(1) }
                throw fail(message, .control)
            }
            if !json { StandardStreams.writeOutput("\(message)\n") }
        }

        /// The signal's number, or a usage error: unknown, out of range, or one a worker cannot catch.
        static func checkedSignal(_ text: String) throws(ExitCode) -> Int32 {
            guard let number = Signals.number(named: text) else {
                throw fail(
                    "invalid signal \(BatonError.quoted(text)): give a name such as HUP, USR1 or TERM, or a number from 1 to \(Signals.largest) (see kill -l)",
                    .badArgument
                )
            }
            guard !Signals.uncatchable.contains(number) else {
                throw fail(SignalTargets.refusal(of: Signals.name(of: number)), .badArgument)
            }
            return number
        }
    }
}
