// libFuzzer entry point for baton's parsers. One binary holds every target; BATON_FUZZ_TARGET picks one:
//   notify   the notify-message parser and the line splitter (what any worker can send)
//   control  the control protocol's request and reply decoders (what any local client can send)
//   address  the listen-address, duration and name parsers (the command line)
//   config   baton's configuration: BATON_OPTIONS from /etc/baton/APP.conf, split as systemd splits it, through
//            swift-argument-parser and RunOptions into a checked LaunchConfiguration
// Build and run with Fuzz/run.sh. (BatonCore and BatonCommandLine are compiled into one module here.)
import ArgumentParser
import Glibc

/// A property that must hold; unlike `precondition` in an optimised build, it says which one failed.
func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String = "", line: UInt = #line) {
    guard !condition() else { return }
    fputs("check failed at Fuzz.swift:\(line): \(message())\n", stderr)
    abort()
}

let target: String = getenv("BATON_FUZZ_TARGET").map { String(cString: $0) } ?? "notify"

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    switch target {
    case "control": return fuzzControl(data, size)
    case "address": return fuzzAddress(data, size)
    case "config": return fuzzConfig(data, size)
    default: return fuzzNotify(data, size)
    }
}

// libFuzzer target: the notify-message parser (what any worker can send to baton).
func fuzzNotify(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    if let message = NotifyMessage(parsing: bytes) {
        check(size <= NotifyMessage.maximumSize)
        check(message.other.count <= 16)
        check((message.status?.count ?? 0) <= 512)
        // What is rejected is said in one short printable line each, for the log.
        check(message.rejected.count <= 16)
        for rejected in message.rejected {
            // (A tab is kept: it cannot drive a terminal.)
            check(
                rejected.count < 160
                    && !rejected.unicodeScalars.contains { ($0.value < 0x20 && $0 != "\t") || $0.value == 0x7f },
                rejected
            )
        }
        // The values baton acts on are within their documented bounds, and turn into timers without trapping.
        if let interval = message.watchdogInterval {
            let range = NotifyMessage.watchdogRange
            check(
                interval >= .microseconds(Int64(range.lowerBound)) && interval <= .microseconds(Int64(range.upperBound))
            )
            check(UInt64(interval.microseconds) >= range.lowerBound && interval.milliseconds > 0)
            _ = ContinuousClock.now + interval
            _ = interval.shortDescription
        }
        checkSupervisorActs(on: message)
    }
    // The same bytes as a stream of lines on a BATON_NOTIFY_FD pipe.
    var splitter = LineSplitter(maximumLineLength: 64)
    for line in splitter.feed(bytes) { check(line.count <= 64) }
    return 0
}

/// Feeds a parsed message to a supervisor the way the launcher does, for a worker that is starting and again once
/// it is ready, and checks that every timer it asks for is positive and bounded, and that status text is kept short.
func checkSupervisorActs(on message: NotifyMessage) {
    var supervisor = Supervisor(settings: SupervisorSettings(workers: 1, workerWatchdog: .seconds(10)))
    let start = ContinuousClock.now
    var actions = supervisor.handle(.start, now: start)
    guard case .spawn(let id, _, _)? = actions.first(where: { if case .spawn = $0 { true } else { false } }) else {
        return check(false, "no spawn at start")
    }
    actions += supervisor.handle(.spawned(id, pid: 100), now: start)
    for round in 0..<2 {
        let now = start + .seconds(round)
        if let status = message.status { actions += supervisor.handle(.status(id, status), now: now) }
        if message.watchdog || message.watchdogInterval != nil {
            actions += supervisor.handle(.watchdogPing(id, interval: message.watchdogInterval), now: now)
        }
        if message.ready { actions += supervisor.handle(.ready(id), now: now) }
    }
    let longest = Duration.microseconds(Int64(NotifyMessage.watchdogRange.upperBound))
    for action in actions {
        switch action {
        case .schedule(let timer, let delay):
            check(delay > .zero && delay <= max(longest, .seconds(60)), "timer \(timer) after \(delay)")
            _ = now() + delay
        case .notifyManager(.extendTimeout(let delay)):
            check(delay > .zero && delay.microseconds > 0)
        default:
            break
        }
    }
    check((supervisor.worker(id)?.status?.count ?? 0) <= 512)
    _ = supervisor.statusLine
}

func now() -> ContinuousClock.Instant { .now }

// libFuzzer target: the control protocol's request decoder (what any local client can send).
func fuzzControl(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let line = Array(UnsafeBufferPointer(start: data, count: size))
    do throws(BatonError) {
        let request = try ControlProtocol.decodeRequest(line)
        // Whatever decodes must encode and decode again to the same request.
        let again = try ControlProtocol.decodeRequest(Array(ControlProtocol.encode(request).dropLast()))
        check(again == request)
        // A reload's options are in range, or refused in one line.
        do throws(BatonError) {
            let options = try request.reloadOptions()
            check(options.canary.map { $0 >= .zero && $0 <= .seconds(365 * 86400) } ?? true)
        } catch {
            check(!error.message.isEmpty && !error.message.contains("\n"))
        }
    } catch {
        check(!error.message.isEmpty)
    }
    if let reply = ControlProtocol.decodeReply(line) {
        check(ControlProtocol.decodeReply(Array(ControlProtocol.encode(reply).dropLast())) == reply)
    }
    // The control server's line finder, fed in two pieces: it keeps the line up to the limit and counts the rest.
    let limit = ControlProtocol.maximumRequestSize
    var finder = RequestLine(limit: limit)
    let cut = line.isEmpty ? 0 : Int(line[0]) % (line.count + 1)
    finder.feed(line[..<cut])
    finder.feed(line[cut...])
    if let newline = line.firstIndex(of: UInt8(ascii: "\n")) {
        check(finder.outcome == (newline <= limit ? .line(Array(line[..<newline])) : .oversized(newline)))
    } else {
        check(finder.outcome == nil)
        check(finder.unfinished == (line.isEmpty ? nil : line.count <= limit ? .line(line) : .oversized(line.count)))
    }
    return 0
}

// libFuzzer target: the listen-address parser and the other command-line value parsers.
func fuzzAddress(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    do throws(BatonError) {
        let spec = try ListenSpec(parsing: text, defaultName: "d")
        check(ListenSpec.isValidName(spec.name))
        // What parses prints as an address that parses to the same thing.
        let again = try ListenSpec(parsing: spec.address.description, defaultName: "d")
        check(again.address == spec.address, "\(spec.address) reparsed as \(again.address)")
    } catch {
        check(error.message.hasPrefix("invalid --listen"))
    }
    if let duration = DurationText(text) { check(duration.duration >= .zero) }
    _ = LaunchConfiguration.isValidName(text)
    return 0
}

/// A fixed machine for the config target: root runs baton; users root and nobody; Linux's signal numbers.
let fuzzFacts = SystemFacts(
    userID: 0,
    runtimeDirectory: "/run/baton-fuzz",
    user: {
        ["root": .init(uid: 0, gid: 0, groups: [0]), "nobody": .init(uid: 65534, gid: 65534, groups: [65534])][$0]
    },
    group: { ["root": 0, "nogroup": 65534][$0] },
    signal: { name in
        if let number = Int32(name), number > 0, number < 65 { return number }
        return ["HUP": 1, "INT": 2, "QUIT": 3, "KILL": 9, "USR1": 10, "USR2": 12, "TERM": 15, "STOP": 19][name]
    },
    uncatchableSignals: [9, 19]
)

// libFuzzer target: the configuration parser, `RunOptions.configuration`: the option values of `baton run` (from
// BATON_OPTIONS in /etc/baton/APP.conf under the baton@.service template) into a checked LaunchConfiguration.
// Each input line `OPTION=VALUE` sets an option's value, as swift-argument-parser would after splitting the
// command line (whose own parsing is that library's job, and costs ~3 ms an input, too slow for 10 million).
let fuzzBaseOptions = try! RunOptions.parse(["--name", "app", "--", "/usr/bin/app", "--port", "1"])

func fuzzConfig(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    var options = fuzzBaseOptions
    for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
        guard let equals = line.firstIndex(of: "=") else { continue }
        let value = String(line[line.index(after: equals)...])
        switch line[..<equals] {
        case "listen": options.listen.append(value)
        case "workers": if let number = Int(value) { options.workers = number }
        case "ready": options.ready = value
        case "ready-timeout": options.readyTimeout = value
        case "stop-signal": options.stopSignal = value
        case "stop-timeout": options.stopTimeout = value
        case "strategy": options.strategy = value
        case "watchdog": options.watchdog = value
        case "user": options.user = value
        case "group": options.group = value
        case "backlog": if let number = Int32(value) { options.backlog = number }
        case "socket-mode": options.socketMode = value
        case "name": options.control.name = value
        case "control": options.control.control = value
        case "command": options.command = value.split(separator: " ").map(String.init)
        default: continue
        }
    }
    do throws(BatonError) {
        let configuration = try options.configuration(fuzzFacts)
        // What is accepted is sane.
        check(LaunchConfiguration.isValidName(configuration.name))
        check(!configuration.command.isEmpty && !configuration.command[0].isEmpty)
        check((1...1024).contains(configuration.supervisor.workers))
        check(configuration.supervisor.readyTimeout > .zero && configuration.supervisor.stopTimeout > .zero)
        check((configuration.supervisor.workerWatchdog ?? .seconds(1)) > .zero)
        check(![9, 19].contains(configuration.stopSignal) && configuration.stopSignal > 0)
        check(configuration.backlog > 0 && (configuration.unixMode ?? 0) <= 0o777)
        check(Set(configuration.listeners.map(\.name)).count == configuration.listeners.count)
        check(configuration.listeners.allSatisfy { ListenSpec.isValidName($0.name) })
        check(configuration.controlPath == (options.control.control ?? "/run/baton-fuzz/\(configuration.name).sock"))
        check(!configuration.controlPath.isEmpty && configuration.controlPath.utf8.count < 108)
        check(configuration.workerUser == nil || options.user != nil || options.group != nil)
    } catch {
        // baton's own error: one line that names the option (or what is missing) and the fix.
        check(!error.message.contains(where: \.isNewline), "multi-line error: \(error.message)")
        check(
            error.message.hasPrefix("invalid --") || error.message.hasPrefix("no app to run")
                || error.message.hasPrefix("unknown option")
                || error.message.hasPrefix("--user and --group"),
            "unexpected error: \(error.message)"
        )
        check(error.message.count < 400, "overlong error: \(error.message)")
    }
    return 0
}
