import BatonSystem
import Foundation
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What a hostile or careless worker, a local user or the host's limits can do to `baton run`: none of it takes
/// baton down, leaves workers behind or redirects what baton does to a file.
@Suite("hostile workers and signals, with real processes", .serialized, .timeLimit(.minutes(3)))
struct HostileWorkerTests {

    // MARK: - Numbers from outside

    @Test(arguments: ["notify", "fd"])
    func aWatchdogIntervalPast64BitsIsRejectedAndBatonCarriesOn(mode: String) throws {
        let (scratch, _, baton) = try launchWorker(
            ["--ready", mode],
            behaviour:
                "send-notify WATCHDOG_USEC=18446744073709551615|WATCHDOG=1|WATCHDOG_USEC=0\nWATCHDOG=1|STATUS=still here",
            environment: ["READY_MODE": mode]
        )
        #expect(baton.stdout.waitFor("sent notify") != nil)
        #expect(
            baton.stderr.waitFor(
                "rejected WATCHDOG_USEC=18446744073709551615 (not a number of microseconds from 1000 to"
            ) != nil
        )
        #expect(baton.stderr.waitFor("rejected WATCHDOG_USEC=0 (") != nil)
        // The message after the rejected ones was still delivered: baton is alive and acting on it.
        let status = baton.client(["status"])
        #expect(status.status == 0, "baton answers: \(status.stderr)")
        #expect(status.stdout.contains("\"still here\""))
        #expect(try HTTP.get(unix: scratch.file("s.sock")).status == 200)
        #expect(
            !baton.stderr.text.contains("stopped sending WATCHDOG=1"),
            "no watchdog was armed from a rejected value"
        )
        #expect(baton.stop() == 0)
    }

    // MARK: - Paths another user can write

    /// A racer running as `nobody` in a directory `nobody` owns: whenever a socket appears at the path, it moves
    /// it away and puts a symlink to a root-owned file in its place. strace holds baton for 300 ms right after each
    /// `bind` returns (`inject=bind:delay_exit`), so that the racer wins that window every time. baton must never
    /// change the file's mode, and refuses to start with the socket gone from under it.
    @Test func aSymlinkSwappedInAfterBindIsNeverFollowed() throws {
        try #require(getuid() == 0, "needs root to act as a second user")
        let setpriv = try #require(Paths.which("setpriv"))
        let strace = try #require(Paths.which("strace"), "scripts/deps.sh installs strace")
        let scratch = Scratch()
        chmod(scratch.path, 0o755)
        let shared = scratch.file("shared")
        try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: true)
        chown(shared, 65534, 65534)
        let target = scratch.file("root-only")
        scratch.write("root-only", "secret\n")
        chmod(target, 0o600)
        let path = "\(shared)/s.sock"
        scratch.write(
            "racer.py",
            """
            import os, stat, sys, time
            path, target = sys.argv[1], sys.argv[2]
            n = 0
            print("racing", flush=True)
            while True:
                try:
                    if stat.S_ISSOCK(os.lstat(path).st_mode):
                        os.rename(path, f"{path}.{n}")
                        os.symlink(target, path)
                        n += 1
                except OSError:
                    pass
                time.sleep(0.002)
            """
        )
        let racer = Foundation.Process()
        racer.executableURL = URL(fileURLWithPath: setpriv)
        racer.arguments = [
            "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", scratch.file("racer.py"), path,
            target,
        ]
        let racerOut = Pipe()
        racer.standardOutput = racerOut
        try racer.run()
        // SIGKILL: the test runner's children inherit its blocked signals, SIGTERM included.
        defer {
            kill(racer.processIdentifier, SIGKILL)
            racer.waitUntilExit()
        }
        #expect(LineCollector(racerOut.fileHandleForReading).waitFor("racing") != nil)

        var refused = 0
        var attempts = 0
        while refused < 3 && attempts < 6 {
            attempts += 1
            unlink(path)  // the racer's symlink from the last round (removed as root; the racer only moves sockets)
            let result = run(
                strace,
                [
                    "-qq", "-o", "/dev/null", "-e", "trace=bind", "-e", "inject=bind:delay_exit=300000", Paths.baton,
                    "run",
                    "--control", scratch.file("c.sock"), "--listen", "unix:\(path)", "--socket-mode", "666", "--",
                    "true",
                ]
            )
            if result.stderr.contains("was replaced by another file right after bind") { refused += 1 }
            var info = stat()
            lstat(target, &info)
            if info.st_mode & 0o7777 != 0o600 {
                Issue.record(
                    "baton changed the mode of a root-owned file through a symlink (attempt \(attempts)): \(String(info.st_mode & 0o7777, radix: 8))"
                )
                break
            }
            #expect(result.stderr.split(separator: "\n").allSatisfy { !$0.isEmpty }, "one-line errors")
        }
        print("symlink race: \(attempts) starts, the racer won the window after bind \(refused) times")
        #expect(refused == 3, "baton saw the socket replaced after bind and refused, each time")
        var info = stat()
        lstat(target, &info)
        #expect(info.st_mode & 0o7777 == 0o600 && info.st_uid == 0)
    }

    @Test func aSocketModeIsExactDespiteTheUmaskAndTheControlSocketIsNeverOpenToOthers() throws {
        let scratch = Scratch()
        let path = scratch.file("s.sock")
        let baton = try BatonRun(
            ["--listen", "unix:\(path)", "--socket-mode", "666", "--", "python3", Paths.worker],
            scratch: scratch,
            wrapper: ["/bin/sh", "-c", "umask 077; exec \"$0\" \"$@\""]
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        var info = stat()
        #expect(
            lstat(path, &info) == 0 && info.st_mode & 0o7777 == 0o666,
            "exactly the mode asked for, whatever the umask"
        )
        #expect(lstat(baton.control, &info) == 0 && info.st_mode & 0o7777 == 0o600)
        #expect(baton.stop() == 0)
        #expect(lstat(baton.control, &info) != 0, "the control socket is removed at exit")
    }

    @Test func atExitBatonRemovesOnlyItsOwnControlSocket() throws {
        let scratch = Scratch()
        let baton = try BatonRun(
            ["--listen", "unix:\(scratch.file("s.sock"))", "--", "python3", Paths.worker],
            scratch: scratch
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        // Something else now sits at the control path: a symlink to a file that must survive.
        scratch.write("keep", "keep\n")
        unlink(baton.control)
        symlink(scratch.file("keep"), baton.control)
        #expect(baton.stop() == 0)
        var info = stat()
        #expect(lstat(baton.control, &info) == 0 && info.st_mode & S_IFMT == S_IFLNK, "not baton's socket: left alone")
        #expect(FileManager.default.fileExists(atPath: scratch.file("keep")))
    }

    // MARK: - Signals

    /// Every signal whose default would end baton and that means nothing to it: none may take baton down or cost a
    /// worker. (SIGRTMIN is 34 under glibc, SIGRTMAX 64.)
    @Test func signalsThatMeanNothingToBatonAreIgnored() throws {
        let (scratch, reports, baton) = try launchWorker(["--workers", "2"])
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let workers = Set(WorkerReport.all(in: reports).map(\.pid))
        #expect(workers.count == 2)
        let signals = [
            SIGUSR1, SIGPIPE, SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGSTKFLT, SIGXFSZ, 34, 35, 40, 50, 63, 64,
        ]
        for signal in signals { #expect(kill(baton.pid, signal) == 0) }
        // A request answered after the signals: baton has run since they arrived.
        let status = baton.client(["status"])
        #expect(status.status == 0, "baton survives \(signals): \(status.stderr)")
        #expect(isAlive(baton.pid))
        #expect(workers.allSatisfy(isAlive), "no worker was touched")
        #expect(try HTTP.get(unix: scratch.file("s.sock")).status == 200)
        #expect(baton.stop() == 0)
    }

    @Test(arguments: [SIGQUIT, SIGPWR, SIGXCPU])
    func signalsThatMeanStopRetireEveryWorkerAndRemoveTheControlSocket(signal: Int32) throws {
        let (_, reports, baton) = try launchWorker(["--workers", "2"])
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let workers = WorkerReport.all(in: reports).map(\.pid)
        #expect(workers.count == 2)
        kill(baton.pid, signal)
        #expect(baton.wait() == 0, "a graceful stop, as for SIGTERM")
        #expect(baton.stderr.text.contains("received: stopping as for SIGTERM"))
        for pid in workers { #expect(waitForExit(pid), "worker \(pid) is gone with baton") }
        #expect(!FileManager.default.fileExists(atPath: baton.control), "no stale control socket")
    }

    // MARK: - What a worker inherits

    /// A limit's soft and hard value from /proc/PID/limits, such as `Max open files`.
    func limit(_ pid: Int32, _ name: String) -> (soft: String, hard: String)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix(name) })
        else { return nil }
        let values = line.dropFirst(name.count).split(separator: " ")
        return values.count >= 2 ? (String(values[0]), String(values[1])) : nil
    }

    @Test func workersGetTheNiceValueAndPolicyBatonStartedWithWhicheverThreadSpawnsThem() throws {
        let nice = try #require(Paths.which("nice"))
        let chrt = try #require(Paths.which("chrt"))
        let (_, reports, baton) = try launchWorker(
            ["--workers", "2"],
            wrapper: [nice, "-n", "10", chrt, "--batch", "0"]
        )
        // At nice 10 under SCHED_BATCH, baton and its workers get a small share of a busy machine (the test command
        // runs three test processes at once): the waits allow for it.
        #expect(baton.stderr.waitFor("generation 1 ready", timeout: 120) != nil)
        #expect(statField(baton.pid, 19) == "10", "baton's main thread runs at nice 10")
        // The first generation, then a reload's and a respawn's: each spawned from whatever thread runs the actor.
        // (--wait-drained: only generation 2's workers are alive below.)
        #expect(baton.client(["reload", "--wait-drained"]).status == 0)
        // A serving worker of generation 2 (not the newest pid: pids wrap at pid_max, 32768 here).
        let victim = try #require(
            WorkerReport.all(in: reports).first { $0.env["BATON_GENERATION"] == "2" && isAlive($0.pid) }?.pid
        )
        kill(victim, SIGKILL)
        #expect(baton.stderr.waitFor("is back", timeout: 120) != nil)
        let workers = WorkerReport.all(in: reports).map(\.pid).filter(isAlive)
        #expect(workers.count == 2)
        for pid in workers {
            #expect(statField(pid, 19) == "10", "worker \(pid) runs at nice 10, as baton does")
            #expect(statField(pid, 41) == "3", "worker \(pid) runs under SCHED_BATCH, as baton does")
        }
        #expect(baton.stop() == 0)
    }

    @Test func workersGetTheLimitsBatonStartedWithWhateverHappensToBatonsOwn() throws {
        let prlimit = try #require(Paths.which("prlimit"))
        let (_, reports, baton) = try launchWorker(
            [],
            wrapper: [prlimit, "--nofile=900:4000", "--core=0:100000", "--nproc=3000:5000"]
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        // baton's own limits change while it runs; a new worker still gets those it started with. (A hard limit
        // lowered since comes back only with CAP_SYS_RESOURCE; without it the soft limit still does.)
        #expect(
            run(prlimit, ["--pid", "\(baton.pid)", "--nofile=700:", "--core=5000:", "--nproc=2000:4000"]).status == 0
        )
        #expect(limit(baton.pid, "Max open files")! == ("700", "4000"))
        #expect(baton.client(["reload", "--wait-drained"]).status == 0)
        let worker = try #require(WorkerReport.all(in: reports).map(\.pid).filter(isAlive).first)
        #expect(limit(worker, "Max open files")! == ("900", "4000"))
        // A sanitizer's runtime sets baton's core limit itself before baton can read it.
        if !Sanitizers.active { #expect(limit(worker, "Max core file size")! == ("0", "100000")) }
        let processes = try #require(limit(worker, "Max processes"))
        #expect(processes.soft == "3000" && ["4000", "5000"].contains(processes.hard), "\(processes)")
        #expect(baton.stop() == 0)
    }

    // MARK: - What baton shows of a worker, and its messages

    @Test func aWorkersControlCharactersNeverReachTheTerminalOfBatonStatusOrBatonReload() throws {
        let (scratch, _, baton) = try launchWorker(
            ["--ready", "notify"],
            behaviour: "send-notify STATUS=\u{1b}]0;owned\u{07}\u{1b}[2Jwarm\u{9b}31m",
            environment: ["READY_MODE": "notify"]
        )
        #expect(baton.stdout.waitFor("sent notify") != nil)
        let status = baton.client(["status"])
        #expect(status.status == 0)
        #expect(status.stdout.contains(#""\x1b]0;owned\x07\x1b[2Jwarm\u{9b}31m""#), "\(status.stdout)")
        #expect(!status.stdout.unicodeScalars.contains { $0.value == 0x1b || $0.value == 0x07 || $0.value == 0x9b })
        let json = baton.client(["status", "--json"])
        #expect(json.stdout.contains(#"\u001b]0;owned"#), "JSON escapes them its own way")
        // A release that fails with escapes in its last stderr lines.
        scratch.write("behaviour", "crash-with-escapes")
        let reload = baton.client(["reload"])
        #expect(reload.status == 1)
        #expect(reload.stderr.contains(#"| \x1b]0;owned\x07\x1b[2Jfatal: escapes (test crash)"#), "\(reload.stderr)")
        #expect(!reload.stderr.unicodeScalars.contains { $0.value == 0x1b || $0.value == 0x07 })
        #expect(baton.stop() == 0)
    }

    @Test func aWorkersOutputOnATerminalHasItsControlCharactersEscaped() throws {
        let script = try #require(Paths.which("script"))
        let scratch = Scratch()
        // An app that writes escapes and a tab, then fails its start: baton relays the lines, gives up and exits.
        scratch.write(
            "app.sh",
            "#!/bin/sh\nprintf '\\033]0;owned\\007\\033[2Jmarker\\n'\nprintf 'tab\\there\\n' >&2\nexit 3\n"
        )
        chmod(scratch.file("app.sh"), 0o755)
        // script(1) gives baton a terminal for stdout and stderr, and copies what it shows to its own stdout.
        let command =
            "\(Paths.baton) run --control \(scratch.file("c.sock")) --listen unix:\(scratch.file("s.sock")) -- \(scratch.file("app.sh"))"
        let result = run(script, ["-qec", command, "/dev/null"])
        let line = try #require(
            result.stdout.split(separator: "\n").first { $0.contains("marker") },
            "\(result.stdout)"
        )
        #expect(line.contains(#"baton[g1.w1]: \x1b]0;owned\x07\x1b[2Jmarker"#), "\(line)")
        #expect(!result.stdout.unicodeScalars.contains { $0.value == 0x1b || $0.value == 0x07 }, "\(result.stdout)")
        #expect(result.stdout.contains("baton[g1.w1]: tab\there"), "a tab is no danger: kept")
    }

    @Test func errorsAboutPathsAndLimitsSayWhatIsWrongOnce() throws {
        try #require(getuid() == 0, "needs root to act as a second user")
        let setpriv = try #require(Paths.which("setpriv"))
        let scratch = Scratch()
        chmod(scratch.path, 0o755)
        let control = scratch.file("ctl")
        try FileManager.default.createDirectory(atPath: control, withIntermediateDirectories: true)
        chmod(control, 0o777)
        let locked = scratch.file("locked")
        try FileManager.default.createDirectory(atPath: locked, withIntermediateDirectories: true)
        // A unix socket in a directory baton's user cannot write: no hint about ports.
        let unwritable = run(
            setpriv,
            [
                "--reuid=65534", "--regid=65534", "--clear-groups", Paths.baton, "run", "--control",
                "\(control)/c.sock",
                "--listen", "unix:\(locked)/s.sock", "--", "/bin/true",
            ]
        )
        #expect(
            unwritable.stderr
                == "baton: permission denied creating unix:\(locked)/s.sock: baton's user needs write and search permission on its directory"
        )
        // A control path taken by a file: said once, with the fix.
        scratch.write("taken", "")
        let taken = run(
            Paths.baton,
            [
                "run", "--control", scratch.file("taken"), "--listen", "unix:\(scratch.file("s.sock"))", "--",
                "/bin/true",
            ]
        )
        #expect(taken.status != 0)
        let error = String(taken.stderr.split(separator: "\n").last ?? "")
        #expect(error.hasPrefix("baton: control socket \(scratch.file("taken")): "), "\(error)")
        #expect(error.components(separatedBy: "exists and is not a socket").count == 2, "\(error)")
        #expect(!error.contains("File exists"), "\(error)")
        // Out of fds, in the spawn's setup or in the child: baton's limit, not the app's fault.
        let spawn = SpawnError(code: .exec, executable: "python3", underlying: SystemError("execve", .tooManyOpenFiles))
        #expect(
            spawn.description
                == "cannot start python3: out of file descriptors (Too many open files); raise baton's limit (LimitNOFILE=)"
        )
    }

    // MARK: - What a worker leaves in its process group

    @Test func aHelperLeftInTheWorkersProcessGroupGetsTheStopSignalThenSIGKILLAfterTheStopTimeout() throws {
        let (_, reports, baton) = try launchWorker(["--stop-timeout", "1s"], behaviour: "fork-child")
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let worker = try #require(WorkerReport.all(in: reports).first)
        let child = try #require(Int32(try String(contentsOfFile: "\(reports)/\(worker.pid).child", encoding: .utf8)))
        #expect(baton.client(["reload"]).status == 0)
        // The old worker drained and exited; its child (which ignores SIGTERM) stayed in its process group.
        let stopping = baton.stderr.waitFor(
            "stopping pid \(child), left in the process group of worker 1 of generation 1 after it exited"
        )
        #expect(stopping != nil, "\(baton.stderr.text)")
        let killing = baton.stderr.waitFor(
            "killing pid \(child), left in the process group of worker 1 of generation 1: it did not stop within 1s"
        )
        #expect(killing != nil)
        #expect((stopping ?? 0) < (killing ?? 0), "the stop signal comes first")
        #expect(waitForExit(child))
        #expect(!baton.stderr.text.contains("outside its process group"), "it never left the group")
        #expect(baton.stop() == 0)
    }

    @Test func pythonsResourceTrackerIsNotTakenForADaemonNorSIGKILLed() throws {
        let (_, reports, baton) = try launchWorker([], behaviour: "resource-tracker")
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let worker = try #require(WorkerReport.all(in: reports).first)
        let tracker = try #require(
            Int32(try String(contentsOfFile: "\(reports)/\(worker.pid).tracker", encoding: .utf8))
        )
        #expect(
            ProcInspectorCount.processGroup(tracker) == worker.pid,
            "the tracker runs in its worker's process group"
        )
        #expect(baton.client(["reload"]).status == 0)
        #expect(waitForExit(tracker), "it exits once its worker is gone")
        #expect(!baton.stderr.text.contains("outside its process group"), "\(baton.stderr.text)")
        #expect(!baton.stderr.text.contains("killing pid \(tracker)"))
        #expect(baton.stop() == 0)
    }
}

extension ProcInspectorCount {
    static func processGroup(_ pid: Int32) -> Int32? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
        return fields.count > 2 ? Int32(fields[2]) : nil
    }
}
