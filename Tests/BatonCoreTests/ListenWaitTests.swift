import BatonCore
import Foundation
import Testing

/// The plain-Swift side of zero-configuration readiness: syscall lines, `fd_set` and `pollfd` arrays, the syscall
/// tables, what counts as accepting, and the ready-timeout explanation.
@Suite("--ready listen: what a worker waits in")
struct ListenWaitTests {
    /// A worker's memory, as `ListenWait.decode` reads it: ranges at addresses; the requests are recorded.
    final class Memory {
        var ranges: [UInt64: [UInt8]] = [:]
        var asked: [(UInt64, Int)] = []

        func read(_ address: UInt64, _ count: Int) -> Result<[UInt8], UnreadableMemory> {
            asked.append((address, count))
            guard let bytes = ranges[address] else {
                return .failure(UnreadableMemory("process_vm_readv: Bad address"))
            }
            return .success(Array(bytes.prefix(count)))
        }
    }

    static func pollfd(_ fd: Int32, _ events: Int16) -> [UInt8] {
        withUnsafeBytes(of: fd) { Array($0) } + withUnsafeBytes(of: events) { Array($0) } + [0, 0]
    }

    static func fdSet(_ fds: [Int], words: Int) -> [UInt8] {
        var set = [UInt64](repeating: 0, count: words)
        for fd in fds { set[fd / 64] |= 1 << UInt64(fd % 64) }
        return set.flatMap { word in withUnsafeBytes(of: word) { Array($0) } }
    }

    @Test func syscallLinesAsTheKernelWritesThem() {
        // Read from a Python worker in select.select([listener], [], [], 30) on x86_64 (glibc makes it pselect6).
        #expect(
            SyscallLine("270 0x4 0x7ffddf99a650 0x0 0x0 0x7ffddf99a580 0x0 0x7ffddf99a570 0x7f044ef1c954\n")
                == .blocked(number: 270, arguments: [4, 0x7ffd_df99_a650, 0, 0, 0x7ffd_df99_a580, 0])
        )
        #expect(SyscallLine("running\n") == .running)
        #expect(SyscallLine("-1 0x7ffd3cb7d668 0x7fbcdf71a230\n") == .outsideSyscall)
        for malformed in ["", "\n", "running now", "270 0x4", "270 4 0 0 0 0 0 0 0", "-1", "x 0x0 0x0", "-1 0x0"] {
            #expect(SyscallLine(malformed) == nil, "\(malformed)")
        }
        #expect(
            SyscallLine("7 0x1 0x2 0x3 0x4 0x5 0xffffffffffffffff 0x0 0x0")
                == .blocked(number: 7, arguments: [1, 2, 3, 4, 5, .max])
        )
        #expect(SyscallLine("7 0x1 0x2 0x3 0x4 0x5 0x1ffffffffffffffff 0x0 0x0") == nil, "a 65-bit argument")
    }

    @Test func selectSetsHoldTheFdsBelowTheirCount() {
        let set = Self.fdSet([3, 70, 127], words: 2)
        #expect(ListenWait.selectSet(set, count: 128) == [3, 70, 127])
        #expect(ListenWait.selectSet(set, count: 71) == [3, 70])
        #expect(ListenWait.selectSet(set, count: 64) == [3])
        #expect(ListenWait.selectSet(set, count: 3) == [])
        #expect(ListenWait.selectSet(Array(set.prefix(8)), count: 128) == [3], "a short read is judged by its words")
        #expect(ListenWait.selectSet(Array(set.prefix(5)), count: 128) == [], "a part of a word is no word")
        #expect(ListenWait.selectSet(set, count: -1) == [])
    }

    @Test func pollEntriesThatWaitToRead() {
        let entries =
            Self.pollfd(3, 0x001) + Self.pollfd(4, 0x004) + Self.pollfd(-1, 0x001) + Self.pollfd(5, 0x002)
            + Self.pollfd(6, 0x040) + Self.pollfd(7, 0x004 | 0x001)
        #expect(ListenWait.pollReadable(entries) == [3, 5, 6, 7], "POLLIN, POLLPRI or POLLRDNORM; no POLLOUT alone")
        #expect(ListenWait.pollReadable(entries + [1, 0, 0]) == [3, 5, 6, 7], "a part of an entry is no entry")
        #expect(ListenWait.pollReadable([]) == [])
    }

    @Test func pollAndSelectAreReadFromTheWorkersMemory() {
        let table = SyscallTable.x86_64
        let memory = Memory()
        memory.ranges[0x1000] = Self.pollfd(9, 0x001) + Self.pollfd(3, 0x001)
        let poll = ListenWait.decode(.blocked(number: 7, arguments: [0x1000, 2, 30000, 0, 0, 0]), table: table) {
            memory.read($0, $1)
        }
        #expect(poll == .readiness(.poll, readable: [9, 3]))
        #expect(memory.asked.last! == (0x1000, 16))

        let ppoll = ListenWait.decode(.blocked(number: 271, arguments: [0x1000, 1, 0, 0, 8, 0]), table: table) {
            memory.read($0, $1)
        }
        #expect(ppoll == .readiness(.ppoll, readable: [9]))

        memory.ranges[0x2000] = Self.fdSet([3, 6], words: 1)
        let pselect = ListenWait.decode(.blocked(number: 270, arguments: [7, 0x2000, 0, 0, 0x3000, 0]), table: table) {
            memory.read($0, $1)
        }
        #expect(pselect == .readiness(.pselect6, readable: [3, 6]))
        #expect(memory.asked.last! == (0x2000, 8), "nfds 7 is one word")
        let select = ListenWait.decode(.blocked(number: 23, arguments: [4, 0x2000, 0, 0, 0, 0]), table: table) {
            memory.read($0, $1)
        }
        #expect(select == .readiness(.select, readable: [3]), "fds at or above nfds are not waited on")

        // No read set, no fds, or a set that cannot be read.
        let asked = memory.asked.count
        let writeOnly = ListenWait.decode(.blocked(number: 23, arguments: [4, 0, 0x2000, 0, 0, 0]), table: table) {
            memory.read($0, $1)
        }
        #expect(writeOnly == .readiness(.select, readable: []))
        let sleeping = ListenWait.decode(.blocked(number: 7, arguments: [0, 0, 100, 0, 0, 0]), table: table) {
            memory.read($0, $1)
        }
        #expect(sleeping == .readiness(.poll, readable: []))
        #expect(memory.asked.count == asked, "nothing to read, nothing read")
        let unreadable = ListenWait.decode(.blocked(number: 7, arguments: [0x9000, 1, 0, 0, 0, 0]), table: table) {
            memory.read($0, $1)
        }
        #expect(unreadable == .readinessUnseen(.poll, UnreadableMemory("process_vm_readv: Bad address")))
    }

    @Test func countsFromTheWorkerAreBounded() {
        let memory = Memory()
        _ = ListenWait.decode(.blocked(number: 7, arguments: [0x1000, .max, 0, 0, 0, 0]), table: .x86_64) {
            memory.read($0, $1)
        }
        #expect(memory.asked.last!.1 == ListenWait.maxPollEntries * ListenWait.pollEntrySize)
        _ = ListenWait.decode(.blocked(number: 23, arguments: [0x7fff_ffff, 0x1000, 0, 0, 0, 0]), table: .x86_64) {
            memory.read($0, $1)
        }
        #expect(memory.asked.last!.1 == ListenWait.maxSelectFds / 8)
        let asked = memory.asked.count
        // nfds is an int: 0xffffffff is -1, which the kernel refuses.
        let negative = ListenWait.decode(
            .blocked(number: 23, arguments: [0xffff_ffff, 0x1000, 0, 0, 0, 0]),
            table: .x86_64
        ) { memory.read($0, $1) }
        #expect(negative == .readiness(.select, readable: []))
        #expect(memory.asked.count == asked)
    }

    @Test func otherCallsAreNamedWithTheirFd() {
        func decode(_ number: Int, _ first: UInt64 = 0, table: SyscallTable = .x86_64) -> ThreadWait {
            ListenWait.decode(.blocked(number: number, arguments: [first, 0, 0, 0, 0, 0]), table: table) { _, _ in
                Issue.record("no memory is read for \(number)")
                return .success([])
            }
        }
        #expect(decode(43, 3) == .accept(.accept, fd: 3))
        #expect(decode(288, 5) == .accept(.accept4, fd: 5))
        #expect(decode(0, 0) == .onDescriptor(.read, fd: 0))
        #expect(decode(232, 4) == .epoll(.epollWait, fd: 4))
        #expect(decode(35) == .other(.nanosleep))
        #expect(decode(230) == .other(.clockNanosleep))
        #expect(decode(61) == .other(.wait4))
        #expect(decode(0, 0xffff_ffff) == .onDescriptor(.read, fd: -1), "an fd is the low 32 bits, signed")
        #expect(decode(999) == .unknown(number: 999))
        #expect(decode(202, 3, table: .aarch64) == .accept(.accept, fd: 3))
        #expect(decode(242, 3, table: .aarch64) == .accept(.accept4, fd: 3))
        #expect(decode(63, 0, table: .aarch64) == .onDescriptor(.read, fd: 0))
        #expect(decode(7, table: .aarch64) == .unknown(number: 7), "aarch64 has no poll")
        #expect(ListenWait.decode(.running, table: .x86_64) { _, _ in .success([]) } == .running)
        #expect(ListenWait.decode(.outsideSyscall, table: .x86_64) { _, _ in .success([]) } == .outsideSyscall)
        #expect(
            ListenWait.decode(.blocked(number: 43, arguments: [3]), table: .x86_64) { _, _ in .success([]) }
                == .unknown(number: 43),
            "a line without its six arguments"
        )
    }

    /// Each table entry is the number the kernel's headers give (where the machine has them), and aarch64 has none
    /// of the calls its generic table leaves out.
    @Test(arguments: [
        ("x86_64", "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"), ("aarch64", "/usr/include/asm-generic/unistd.h"),
    ])
    func theTablesMatchTheKernelHeaders(architecture: String, header: String) throws {
        let table: SyscallTable = architecture == "x86_64" ? .x86_64 : .aarch64
        guard let text = try? String(contentsOfFile: header, encoding: .utf8) else {
            print("no \(header) here (linux-libc-dev): the \(architecture) table is checked by hand only")
            return
        }
        var defined: [String: Int] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("#define __NR_") {
            let fields = line.split(separator: " ")
            if fields.count >= 3, let number = Int(fields[2]) { defined[String(fields[1].dropFirst(5))] = number }
        }
        #expect(defined["read"] != nil, "the header was parsed")
        for call in SyscallTable.Call.allCases {
            #expect(table.number(of: call) == defined[call.rawValue], "\(architecture) \(call.rawValue)")
        }
        if architecture == "aarch64" {
            for call in [SyscallTable.Call.poll, .select, .pause, .epollWait] { #expect(table.number(of: call) == nil) }
        }
    }

    @Test func acceptingMeansWaitingToTakeAConnectionOnAListener() {
        let listeners: Set<Int> = [3, 9]
        #expect(ListenWait.accepts(.accept(.accept4, fd: 9), listeners: listeners))
        #expect(ListenWait.accepts(.readiness(.pselect6, readable: [5, 3]), listeners: listeners))
        #expect(!ListenWait.accepts(.accept(.accept, fd: 4), listeners: listeners), "another socket of its own")
        #expect(!ListenWait.accepts(.readiness(.poll, readable: [4]), listeners: listeners))
        #expect(!ListenWait.accepts(.onDescriptor(.read, fd: 3), listeners: listeners))
        #expect(!ListenWait.accepts(.epoll(.epollWait, fd: 3), listeners: listeners), "epoll is judged by fdinfo")
        #expect(!ListenWait.accepts(.readinessUnseen(.select, UnreadableMemory("x")), listeners: listeners))
    }

    @Test func theExplanationSaysWhatBatonWaitedForAndWhatItSaw() {
        let sleeping = ProcessWaits(pid: 42, listeners: [3], threads: [.init(tid: 42, wait: .other(.clockNanosleep))])
        #expect(
            ListenWait.explanation([sleeping], expected: [3])
                == "--ready listen waited for it to accept on baton's listener (fd 3), but fd 3 is open and unused (in no epoll set, no thread waits on it) and its main thread sleeps in clock_nanosleep(): accept on fd 3 (LISTEN_FDS), or use --ready notify, fd or exec"
        )
        // The thread that waits on an fd is named before one that waits on a lock.
        let reading = ProcessWaits(
            pid: 42,
            listeners: [3],
            threads: [.init(tid: 42, wait: .other(.futex)), .init(tid: 43, wait: .onDescriptor(.read, fd: 0))],
            targets: [0: "pipe:[77]"]
        )
        #expect(
            ListenWait.explanation([reading], expected: [3])?.contains(
                "and its thread 43 waits in read() on fd 0 (pipe:[77]):"
            )
                == true
        )
        let closed = ProcessWaits(pid: 42, listeners: [], threads: [.init(tid: 42, wait: .other(.pause))])
        #expect(
            ListenWait.explanation([closed], expected: [3, 4])
                == "--ready listen waited for it to accept on baton's listeners (fds 3, 4), but it closed fds 3, 4 and its main thread sleeps in pause(): keep the fds in LISTEN_FDS open and accept on them, or use --ready notify, fd or exec"
        )
        let parent = ProcessWaits(pid: 42, listeners: [3], threads: [.init(tid: 42, wait: .other(.wait4))])
        let child = ProcessWaits(
            pid: 50,
            listeners: [7],
            threads: [.init(tid: 50, wait: .readiness(.pselect6, readable: [8]))],
            targets: [8: "socket:[99]"]
        )
        #expect(
            ListenWait.explanation([parent, child], expected: [3])
                == "--ready listen waited for it to accept on baton's listener (fd 3), but fds 3, 7 are open and unused (in no epoll set, no thread waits on them), its main thread waits for a child in wait4() and its child 50 waits in pselect6() on fd 8 (socket:[99]): accept on fds 3, 7 (LISTEN_FDS), or use --ready notify, fd or exec"
        )
    }

    @Test func whatBatonCouldNotSeeIsSaidAndTheWayOut() {
        let unseenMemory = ProcessWaits(
            pid: 42,
            listeners: [3],
            threads: [
                .init(
                    tid: 42,
                    wait: .readinessUnseen(.pselect6, UnreadableMemory("process_vm_readv: Operation not permitted"))
                )
            ]
        )
        #expect(
            ListenWait.explanation([unseenMemory], expected: [3], ptraceScope: 2)
                == "--ready listen waited for it to accept on baton's listener (fd 3), but fd 3 is open and in no epoll set and its main thread waits in pselect6(), whose fds baton cannot read (process_vm_readv: Operation not permitted): use --ready notify or --ready fd; looking into a worker takes its uid and a dumpable worker, or CAP_SYS_PTRACE (kernel.yama.ptrace_scope is 2: only CAP_SYS_PTRACE)"
        )
        var hidden = ProcessWaits(
            pid: 42,
            listeners: [],
            threads: [.init(tid: 42, wait: .unseen("open /proc/42/task/42/syscall: Permission denied"))]
        )
        hidden.descriptorsUnseen = "open /proc/42/fd: Permission denied"
        #expect(
            ListenWait.explanation([hidden], expected: [3])
                == "--ready listen waited for it to accept on baton's listener (fd 3), but baton may not look into it (open /proc/42/fd: Permission denied): use --ready notify or --ready fd; looking into a worker takes its uid and a dumpable worker, or CAP_SYS_PTRACE"
        )
        #expect(ListenWait.explanation([], expected: [3]) == nil)
    }
}
