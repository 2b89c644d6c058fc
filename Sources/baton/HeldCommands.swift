import ArgumentParser
import BatonCommandLine
import BatonCore
import BatonSystem

extension Baton {
    struct Promote: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Promote the generation 'baton reload --hold' left serving beside the old one.",
            discussion: "Retires the old generation and blocks until it has drained: the reload is then complete. "
                + "Exits 1 with a one-line error when no generation is held."
        )

        @OptionGroup var control: ControlOptions

        func run() throws { try awaitHeldOutcome(.promote, control: control) }
    }

    struct Rollback: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Roll back the generation 'baton reload --hold' left serving beside the old one.",
            discussion: "Retires the held generation gracefully and blocks until its workers are gone; the old "
                + "generation serves on. Exits 1 with a one-line error when no generation is held."
        )

        @OptionGroup var control: ControlOptions

        func run() throws { try awaitHeldOutcome(.rollback, control: control) }
    }
}

/// Sends `command` (promote or rollback) and prints its outcome: the result's message, or `baton: REASON`.
func awaitHeldOutcome(_ command: ControlProtocol.Request.Command, control: ControlOptions) throws {
    Signals.ignoreBrokenPipe()
    Signals.ignore(Signals.upgrade)
    var client = try connect(control.clientPath)
    defer { client.fd.closeOnce() }
    client.send(ControlProtocol.Request(command: command))
    while let line = client.readLine() {
        guard let reply = ControlProtocol.decodeReply(line) else { continue }
        let message = reply.message.map(TerminalText.sanitized)
        switch reply.kind {
        case .progress:
            continue
        case .result where reply.ok == true:
            StandardStreams.writeOutput("\(message ?? "\(command.rawValue) done")\n")
            return
        case .result, .status, .error:
            throw fail(message ?? "\(command.rawValue) failed", reply.kind == .error ? .control : .reloadFailed)
        }
    }
    throw fail("the launcher closed the connection before the \(command.rawValue) finished", .control)
}
