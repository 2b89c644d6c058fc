import ArgumentParser
import BatonCommandLine
import BatonCore
import Testing

/// The configuration parser: `baton run`'s command line (BATON_OPTIONS under baton@.service) through
/// swift-argument-parser and `RunOptions.configuration` into a checked `LaunchConfiguration`.
@Suite("configuration parser")
struct ConfigurationTests {
    /// A fixed machine: root runs baton; users root and nobody; Linux's signal numbers.
    static let facts = SystemFacts(
        userID: 0,
        runtimeDirectory: "/run/baton-app",
        user: { ["nobody": .init(uid: 65534, gid: 65534, groups: [65534])][$0] },
        group: { ["nogroup": 65534, "www-data": 33][$0] },
        signal: { ["TERM": 15, "QUIT": 3, "USR2": 12, "KILL": 9, "STOP": 19][$0] },
        uncatchableSignals: [9, 19]
    )

    func parse(_ arguments: [String], facts: SystemFacts = Self.facts) throws -> LaunchConfiguration {
        try RunOptions.parse(arguments).configuration(facts)
    }

    func failure(_ arguments: [String], facts: SystemFacts = Self.facts) -> String? {
        do {
            _ = try parse(arguments, facts: facts)
            return nil
        } catch let error as BatonError {
            return error.message
        } catch {
            return RunOptions.message(for: error)
        }
    }

    @Test func aFullCommandLine() throws {
        let configuration = try parse([
            "--name", "shop", "--listen", ":8080", "--listen", "api=unix:/run/shop/api.sock", "--workers", "4",
            "--ready", "fd", "--ready-timeout", "500ms", "--stop-signal", "QUIT", "--stop-timeout", "2m",
            "--strategy", "rolling", "--watchdog", "10s", "--user", "nobody", "--group", "www-data", "--backlog", "128",
            "--socket-mode", "660", "--", "/usr/bin/node", "app.js", "--port", "3000",
        ])
        #expect(configuration.name == "shop")
        #expect(configuration.command == ["/usr/bin/node", "app.js", "--port", "3000"])
        #expect(configuration.listeners.map(\.name) == ["listen0", "api"])
        #expect(configuration.supervisor.workers == 4)
        #expect(configuration.readyMode == .fd)
        #expect(configuration.supervisor.readyTimeout == .milliseconds(500))
        #expect(configuration.supervisor.stopTimeout == .seconds(120))
        #expect(configuration.supervisor.strategy == .rolling)
        #expect(configuration.supervisor.workerWatchdog == .seconds(10))
        #expect(configuration.stopSignal == 3)
        #expect(configuration.workerUser == .init(uid: 65534, gid: 33, groups: [33]))
        #expect(configuration.backlog == 128)
        #expect(configuration.unixMode == 0o660)
        #expect(configuration.controlPath == "/run/baton-app/shop.sock")
    }

    @Test func bindAdoptionIsOnUnlessTurnedOff() throws {
        #expect(try parse(["--", "app"]).adoptBind)
        #expect(try parse(["--no-adopt-bind", "--", "app"]).adoptBind == false)
        #expect(failure(["--no-adopt-bind=yes", "--", "app"]) != nil)
    }

    @Test func defaults() throws {
        let configuration = try parse(["--", "app"])
        #expect(configuration.name == "baton")
        #expect(configuration.supervisor.workers == 1)
        #expect(configuration.readyMode == .listen)
        #expect(configuration.stopSignal == 15)
        #expect(configuration.workerUser == nil)
        #expect(configuration.unixMode == nil)
        #expect(configuration.supervisor.minReady == .zero)
    }

    @Test func minReadyIsADurationAndZeroTurnsItOff() throws {
        #expect(try parse(["--min-ready", "5s", "--", "app"]).supervisor.minReady == .seconds(5))
        #expect(try parse(["--min-ready=750ms", "--", "app"]).supervisor.minReady == .milliseconds(750))
        #expect(try parse(["--min-ready", "0", "--", "app"]).supervisor.minReady == .zero)
    }

    /// Every mistake gets one line that names the option and says what to write instead.
    @Test(
        arguments: [
            (["--workers", "0"], "invalid --workers 0: must be at least 1"),
            (["--workers", "-1"], "invalid --workers -1: must be at least 1"),
            (["--workers", "2000"], "invalid --workers 2000: must be at most 1024"),
            (["--ready", "soon"], "invalid --ready 'soon': use notify, fd, listen or exec"),
            (["--strategy", "blue-green"], "invalid --strategy 'blue-green': use all-at-once or rolling"),
            (["--ready-timeout", "0s"], "invalid --ready-timeout '0s': must be more than 0"),
            (
                ["--stop-timeout", "ten"],
                "invalid --stop-timeout 'ten': a number with a unit (ms, s, m or h), at most 365 days, such as 30s, 500ms or 2m"
            ),
            (["--stop-timeout", "10"], "invalid --stop-timeout '10': give a unit, such as 10s or 10ms"),
            (["--ready-timeout", "1.5"], "invalid --ready-timeout '1.5': give a unit, such as 1.5s or 1.5ms"),
            (
                ["--watchdog=-1s"],
                "invalid --watchdog '-1s': a number with a unit (ms, s, m or h), at most 365 days, such as 30s, 500ms or 2m"
            ),
            (
                ["--min-ready", "soon"],
                "invalid --min-ready 'soon': a number with a unit (ms, s, m or h), at most 365 days, such as 5s, or 0 for no soak window"
            ),
            (
                ["--min-ready=-5s"],
                "invalid --min-ready '-5s': a number with a unit (ms, s, m or h), at most 365 days, such as 5s, or 0 for no soak window"
            ),
            (
                ["--min-ready", "9000h"],
                "invalid --min-ready '9000h': a number with a unit (ms, s, m or h), at most 365 days, such as 5s, or 0 for no soak window"
            ),
            (
                ["--stop-signal", "KILL"],
                "invalid --stop-signal 'KILL': use a signal name such as TERM, INT, QUIT or USR2"
            ),
            (
                ["--stop-signal", "STOP"],
                "invalid --stop-signal 'STOP': use a signal name such as TERM, INT, QUIT or USR2"
            ),
            (["--backlog", "0"], "invalid --backlog 0: give a positive number"),
            (["--socket-mode", "999"], "invalid --socket-mode '999': give an octal mode such as 660"),
            (["--socket-mode", "1777"], "invalid --socket-mode '1777': give an octal mode such as 660"),
            (["--name", "../etc"], "invalid --name '../etc': use letters, digits, '-', '_', '.' or '@'"),
            (["--control", ""], "invalid --control '': give a socket path shorter than 108 bytes"),
            (["--listen", ":80", "--listen", ":81"], nil),
            (["--listen", "a=:80", "--listen", "a=:81"], "invalid --listen 'a=:81': the name 'a' is used twice"),
            (["--user", "nosuch"], "invalid --user 'nosuch': no such user (check getent passwd)"),
            (["--group", "nosuch"], "invalid --group 'nosuch': no such group (check getent group)"),
        ] as [([String], String?)]
    )
    func mistakes(arguments: [String], message: String?) {
        #expect(failure(arguments + ["--", "app"]) == message)
    }

    @Test func aLongControlPathIsRefusedBeforeBindingFails() {
        let long = "/run/" + String(repeating: "x", count: 120) + ".sock"
        #expect(failure(["--control", long, "--", "app"])?.hasPrefix("invalid --control '/run/xxx") == true)
    }

    @Test func noCommand() {
        #expect(failure([]) == "no app to run: give its command after --, e.g. baton run --listen :8080 -- node app.js")
        #expect(failure(["--"]) == failure([]))
    }

    @Test func workersAsAnotherUserNeedRoot() {
        var facts = Self.facts
        facts.userID = 1000
        #expect(
            failure(["--user", "nobody", "--", "app"], facts: facts) == "--user and --group need baton to run as root"
        )
    }

    /// Found by the fuzzer: values with control characters, or very long ones (300 colons in --listen, echoed back
    /// in the advice to use brackets), made errors span lines or pages.
    @Test func errorsStayOneShortLineWhateverTheValue() throws {
        let hostile = "a\nb\tc\u{2028}" + String(repeating: "\0", count: 300)
        let colons = String(repeating: ":", count: 300) + ":4"
        for arguments in [
            ["--ready", hostile], ["--listen", ":" + hostile], ["--listen", hostile + "=:80"], ["--name", hostile],
            ["--listen", colons],
        ] {
            let message = try #require(failure(arguments + ["--", "app"]))
            let oneLine = !message.contains(where: \.isNewline)
            #expect(oneLine, "\(message)")
            #expect(message.count < 400)
        }
        #expect(BatonError.quoted("a\nb") == "'a\\nb'")
        #expect(
            BatonError.quoted(String(repeating: "y", count: 100)) == "'" + String(repeating: "y", count: 80) + "...'"
        )
    }

    /// swift-argument-parser's own errors (a value that is not a number, an unknown option) name the option.
    @Test func argumentParserErrorsNameTheOption() {
        #expect(failure(["--workers", "four", "--", "app"])?.contains("--workers") == true)
        // A mistyped option is not taken for the app's command.
        #expect(
            failure(["--wrokers", "4", "--", "app"])
                == "unknown option '--wrokers': see baton run --help; the app's command goes after --"
        )
        #expect(failure(["--", ""]) == failure([]))
    }
}
