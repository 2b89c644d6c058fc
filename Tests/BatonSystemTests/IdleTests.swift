import BatonSystem
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// How often each thread of process `pid` has been put on a CPU (`/proc/PID/task/TID/schedstat`, its third field) and
/// has gone to sleep of its own accord (`voluntary_ctxt_switches`: once a wakeup, where a preemption adds a run), with
/// the thread's name.
func threadRuns(of pid: Int32) -> [Int32: (name: String, runs: UInt64, sleeps: UInt64)] {
    var result: [Int32: (name: String, runs: UInt64, sleeps: UInt64)] = [:]
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    for task in tasks {
        let directory = "/proc/\(pid)/task/\(task)"
        guard let tid = Int32(task),
            let stat = try? String(contentsOfFile: "\(directory)/schedstat", encoding: .utf8),
            let runs = stat.split(separator: " ").dropFirst(2).first.flatMap({ UInt64($0.filter(\.isNumber)) }),
            let status = try? String(contentsOfFile: "\(directory)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("voluntary_ctxt_switches:") }),
            let sleeps = UInt64(line.filter(\.isNumber))
        else { continue }
        let name = (try? String(contentsOfFile: "\(directory)/comm", encoding: .utf8)) ?? "?"
        result[tid] = (name.trimmingCharacters(in: .whitespacesAndNewlines), runs, sleeps)
    }
    return result
}

/// The times the threads of `pid` ran and went back to sleep during `window` (a thread that appears counts from zero),
/// and each thread's share: what woke baton while it had nothing to do.
func wakeups(of pid: Int32, over window: TimeInterval) -> (total: UInt64, sleeps: UInt64, detail: String) {
    let before = threadRuns(of: pid)
    Thread.sleep(forTimeInterval: window)
    let after = threadRuns(of: pid)
    var total: UInt64 = 0
    var sleeps: UInt64 = 0
    var detail: [String] = []
    for (tid, now) in after.sorted(by: { $0.key < $1.key }) {
        let runs = now.runs - (before[tid]?.runs ?? 0)
        total += runs
        sleeps += now.sleeps - (before[tid]?.sleeps ?? 0)
        detail.append("\(tid) \(now.name): \(runs)")
    }
    return (total, sleeps, detail.joined(separator: ", "))
}

/// The event loop as the launcher's executor, and its timers.
@Suite("the event loop's executor and timers", .timeLimit(.minutes(5)))
struct LoopExecutorTests {
    actor OnLoop {
        let loop: EventLoop
        init(_ loop: EventLoop) { self.loop = loop }
        nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }
        func onLoopThread() -> Bool { loop.isLoopThread }
    }

    @Test func anActorOnTheLoopRunsOnItsThreadAndATaskPreferringItToo() async throws {
        let loop = try EventLoop()
        let actor = OnLoop(loop)
        #expect(await actor.onLoopThread())
        let fromTask = await Task(executorPreference: loop) { loop.isLoopThread }.value
        #expect(fromTask)
        #expect(!loop.isLoopThread, "the test itself does not run there")
    }

    @Test func timersFireInDeadlineOrderAndACancelledOneNever() throws {
        let loop = try EventLoop()
        loop.start()
        let fired = Locked<[Int]>([])
        let done = DispatchSemaphore(value: 0)
        let now = ContinuousClock.now
        // Scheduled out of order; the last one to fire signals.
        loop.schedule(at: now + .milliseconds(60)) {
            fired.withLock { $0.append(3) }
            done.signal()
        }
        loop.schedule(at: now + .milliseconds(20)) { fired.withLock { $0.append(1) } }
        let cancelled = loop.schedule(at: now + .milliseconds(30)) { fired.withLock { $0.append(99) } }
        loop.schedule(at: now + .milliseconds(40)) { fired.withLock { $0.append(2) } }
        loop.cancel(cancelled)
        #expect(done.wait(timeout: .now() + 10) == .success)
        #expect(fired.withLock { $0 } == [1, 2, 3])
        #expect(loop.scheduledTimers == 0, "a one-shot timer is gone once it fired")
    }

    @Test func aRepeatingTimerFiresUntilCancelledAndThenTheLoopSleeps() throws {
        let loop = try EventLoop()
        loop.start()
        let count = Locked(0)
        let third = DispatchSemaphore(value: 0)
        let timer = loop.schedule(after: .milliseconds(5), repeating: .milliseconds(5)) {
            if count.withLock({
                $0 += 1
                return $0
            }) == 3 {
                third.signal()
            }
        }
        #expect(third.wait(timeout: .now() + 10) == .success)
        loop.cancel(timer)
        #expect(loop.scheduledTimers == 0)
        // A job through the loop after the cancel: whatever fired before it has fired.
        let flushed = DispatchSemaphore(value: 0)
        loop.schedule(after: .zero) { flushed.signal() }
        #expect(flushed.wait(timeout: .now() + 10) == .success)
        let after = count.withLock { $0 }
        let passed = DispatchSemaphore(value: 0)
        loop.schedule(after: .milliseconds(100)) { passed.signal() }
        #expect(passed.wait(timeout: .now() + 10) == .success)
        #expect(count.withLock { $0 } == after, "no tick after the cancel")
    }
}

/// An idle baton does not wake: its actor and timers run on its own event loop, every periodic thing is off when
/// there is nothing to do, and no thread of Swift concurrency's pool (libdispatch's, which wakes once a second once
/// it has run anything) ever starts.
/// Not under a sanitizer: ThreadSanitizer's own background thread in baton wakes ten times a second.
@Suite(
    "baton idle",
    .serialized,
    .timeLimit(.minutes(5)),
    .disabled(if: Sanitizers.active, "a sanitizer's runtime has threads of its own that wake")
)
struct IdleTests {
    @Test func anIdleLauncherDoesNotWakeAfterAReloadAndItsDrain() throws {
        // --ready listen (the default): its checks, the drain's count, the stop timeout's timer all come and go.
        let (_, _, baton) = try launchWorker(["--workers", "2", "--stop-timeout", "5s"])
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let reload = baton.client(["reload", "--wait-drained"])
        #expect(reload.status == 0, "\(reload.stdout)\(reload.stderr)")
        // The status answer comes after baton has handled everything before it.
        #expect(baton.client(["status"]).status == 0)
        // A second to settle (the status client's hang-up, the output writer's last lines), then the window.
        _ = wakeups(of: baton.pid, over: 1)
        let (total, _, detail) = wakeups(of: baton.pid, over: 3)
        #expect(total == 0, "baton's threads ran \(total) times in 3 s of nothing: \(detail)")
        let names = threadRuns(of: baton.pid).values.map(\.name)
        #expect(!names.contains { $0.contains("qos") || $0.contains("dispatch") }, "no libdispatch thread: \(names)")
        #expect(baton.stop() == 0)
    }

    /// The size and resident part, in KiB, of the executable's code mapping (the r-xp mapping of /proc/PID/exe).
    func residentCode(of pid: Int32) -> (size: Int, resident: Int)? {
        guard let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe"),
            let smaps = try? String(contentsOfFile: "/proc/\(pid)/smaps", encoding: .utf8)
        else { return nil }
        var inCode = false
        var size: Int?
        for line in smaps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if let first = fields.first, first.contains("-"), fields.count >= 5 {
                inCode = fields.count >= 6 && fields[1].contains("x") && String(fields[5]) == exe
            } else if inCode, fields.count >= 2, let value = Int(fields[1]) {
                if fields[0] == "Size:" { size = value }
                if fields[0] == "Rss:", let size { return (size, value) }
            }
        }
        return nil
    }

    /// After start and after a reload, baton lets go of its code pages (MADV_DONTNEED on its text): idle, little of
    /// its code is resident, although starting ran much of it and the kernel maps 64 KiB around each page run. (The
    /// debug build here: 0.8-1.6 MiB of its 6 MiB of code, against 4.2-4.4 MiB without.)
    @Test func anIdleBatonKeepsLittleOfItsCodeResident() throws {
        let (_, _, baton) = try launchWorker(["--workers", "2"])
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        // Whether a third or less of the code mapping is resident, looked at until it is or 10 s have passed (the
        // pages go once baton has handled the event, a moment after the line above or the reload's answer).
        func settlesLow() throws -> (size: Int, resident: Int) {
            let deadline = Date().addingTimeInterval(10)
            var code = try #require(residentCode(of: baton.pid), "baton's code mapping in /proc/\(baton.pid)/smaps")
            while code.resident * 3 > code.size && Date() < deadline {
                usleep(20_000)
                code = try #require(residentCode(of: baton.pid))
            }
            return code
        }
        let started = try settlesLow()
        #expect(
            started.resident * 3 <= started.size,
            "after start, \(started.resident) KiB of \(started.size) KiB of code resident"
        )
        #expect(baton.client(["reload", "--wait-drained"]).status == 0)
        let reloaded = try settlesLow()
        #expect(
            reloaded.resident * 3 <= reloaded.size,
            "after a reload, \(reloaded.resident) KiB of \(reloaded.size) KiB of code resident"
        )
        #expect(baton.stop() == 0)
    }

    @Test func withWatchdogSecOnlyThePingsWake() throws {
        // WATCHDOG_USEC=2s: a ping every second (half of it), and nothing else.
        let scratch = Scratch()
        let notify = scratch.file("notify.sock")
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #expect(fd >= 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { bytes in
            for (index, byte) in notify.utf8.enumerated() where index < bytes.count - 1 { bytes[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        #expect(bound == 0)
        // The pings are read as they come (a full socket would block baton's sendmsg), and counted.
        let pings = Locked(0)
        let reader = Thread {
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = recv(fd, &buffer, buffer.count, 0)
                if n <= 0 { return }
                if String(decoding: buffer[0..<n], as: UTF8.self).contains("WATCHDOG=1") { pings.withLock { $0 += 1 } }
            }
        }
        reader.start()
        let baton = try BatonRun(
            ["--listen", "unix:\(scratch.file("s.sock"))", "--ready", "exec", "--", "python3", Paths.worker],
            scratch: scratch,
            environment: ["NOTIFY_SOCKET": notify, "WATCHDOG_USEC": "2000000"]
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        #expect(baton.client(["status"]).status == 0)
        _ = wakeups(of: baton.pid, over: 1)
        let pingsBefore = pings.withLock { $0 }
        let (total, sleeps, detail) = wakeups(of: baton.pid, over: 4)
        let pinged = pings.withLock { $0 } - pingsBefore
        // A ping a second, each one wakeup of the loop's thread, which may go to sleep once more within it when the
        // machine is busy (the test command runs three test processes at once: a lock another thread of baton holds
        // while it is preempted); the dispatch monitor alone would add a wakeup a second beyond that (13 for 4 pings).
        #expect(pinged >= 2, "the watchdog pings go on: \(pinged)")
        #expect(
            sleeps <= 2 * UInt64(pinged) + 1,
            "baton's threads woke \(sleeps) times (\(total) runs) in 4 s for \(pinged) pings: \(detail)"
        )
        #expect(baton.stop() == 0)
        shutdown(fd, Int32(SHUT_RDWR))
    }

    @Test func workersThatAreNotReadyYetAreLookedAtRarelyAndNotAtAllOnceReady() throws {
        // 20 workers that sleep 7 s before they select() on the listener: --ready listen looks at them in sweeps, each
        // one timer's wakeup, every 100 ms at most; the old watch slept 100 ms in a task a worker.
        let scratch = Scratch()
        let app = scratch.file("late.py")
        scratch.write(
            "late.py",
            """
            import os, select, socket, time
            time.sleep(7)
            s = socket.socket(fileno=3)
            s.setblocking(False)
            while True:
                select.select([s], [], [])
                try:
                    s.accept()[0].close()
                except BlockingIOError:
                    pass
            """
        )
        let workers = 20
        let baton = try BatonRun(
            ["--listen", "unix:\(scratch.file("s.sock"))", "--workers", "\(workers)", "--", "python3", app],
            scratch: scratch
        )
        #expect(baton.stderr.waitFor("generation 1 starting") != nil)
        // Every worker spawned (the status lists its pid), then past the first 2 s of quick looks.
        var spawned = 0
        for _ in 0..<200 where spawned < workers {
            spawned = baton.client(["status"]).stdout.split(separator: "\n").filter { $0.contains(" pid ") }.count
            if spawned < workers { Thread.sleep(forTimeInterval: 0.05) }
        }
        #expect(spawned == workers)
        Thread.sleep(forTimeInterval: 2.5)
        let (runs, waiting, detail) = wakeups(of: baton.pid, over: 2)
        // About 10 sweeps a second at most (11 to 17 in 2 s here); the previous binary, a task a worker every 100 ms:
        // 200. (Woken, not run: a loaded machine preempts a thread that reads /proc more often.)
        #expect(
            waiting < 80,
            "baton's threads woke \(waiting) times (\(runs) runs) in 2 s for \(workers) waiting workers: \(detail)"
        )
        #expect(baton.stderr.waitFor("generation 1 ready", timeout: 30) != nil)
        #expect(baton.client(["status"]).status == 0)
        _ = wakeups(of: baton.pid, over: 1)
        let (ready, _, readyDetail) = wakeups(of: baton.pid, over: 2)
        #expect(ready == 0, "no look once every worker is ready: \(readyDetail)")
        #expect(baton.stop() == 0)
    }
}
