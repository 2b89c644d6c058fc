import BatonCore
import BatonSystem
import SystemPackage

/// Zero-configuration readiness (`--ready listen`): whether a worker accepts on baton's listeners, from `/proc` and its
/// memory, and at the ready timeout what it does instead.
///
/// A process of the worker's tree accepts when it holds one of the listeners (by inode, at whatever fd) and either
/// has it registered in an epoll instance (Node, Go, asyncio, `selectors.DefaultSelector`) or has a thread blocked in
/// `accept`/`accept4` on it, or in `poll`/`ppoll`/`select`/`pselect6` waiting to read it (gunicorn's sync workers,
/// `socketserver`, `select.select`). Each check reads only the starting worker's tree.
enum ListenReadiness {
    /// Whether worker `pid` or one of its descendants accepts on a socket whose inode is in `listenerInodes`.
    static func isAccepting(pid: Int32, listenerInodes: Set<UInt64>) -> Bool {
        var previous: [Int32: ProcessActivity] = [:]
        return isAccepting(pid: pid, listenerInodes: listenerInodes, previous: &previous)
    }

    /// The same, given what the previous look found of each process of the tree (`/proc/PID/status`, read before
    /// looking at it), and updated: when none of them has run since (each single-threaded, not running, its switch
    /// count unchanged), nothing can have changed, and the answer is that look's (no) at the cost of one read each.
    static func isAccepting(pid: Int32, listenerInodes: Set<UInt64>, previous: inout [Int32: ProcessActivity]) -> Bool {
        guard let table = SyscallTable.current else { return false }
        if !previous.isEmpty,
            previous.allSatisfy({ process, before in
                before.provesIdle && activity(of: process) == before
            })
        {
            return false
        }
        var seen: [Int32: ProcessActivity] = [:]
        defer { previous = seen }
        return ProcInspector.anyInTree(of: pid) { process in
            // Read before the look, so that a later equal reading proves nothing ran after what the look saw.
            let before = activity(of: process)
            // A process that cannot be read proves nothing: the next look is a full one.
            seen[process] = before ?? ProcessActivity(state: "R", threads: 0, switches: 0)
            guard case .success(let fds) = ProcInspector.listenerDescriptors(of: process, inodes: listenerInodes),
                !fds.listeners.isEmpty
            else { return false }
            let listeners = Set(fds.listeners)
            for epoll in fds.epolls
            where ProcInspector.epollTargets(of: process, epoll: epoll).contains(where: {
                listeners.contains($0)
            }) {
                return true
            }
            return ProcInspector.threadSyscalls(of: process).contains { thread in
                wait(of: process, thread.syscall, table: table).map { ListenWait.accepts($0, listeners: listeners) }
                    ?? false
            }
        }
    }

    private static func activity(of process: Int32) -> ProcessActivity? {
        ProcessActivity(status: ProcInspector.readFile("/proc/\(process)/status"))
    }

    /// Why worker `pid` has not become ready under `--ready listen`, seen now (at its ready timeout): what baton
    /// waited for and what each process of its tree does instead. Nil in another mode.
    static func explanation(
        _ mode: ReadyMode,
        pid: Int32?,
        listenerInodes: Set<UInt64>,
        listenerCount: Int
    ) -> String? {
        guard mode == .listen, let pid, let table = SyscallTable.current else { return nil }
        let processes = ProcInspector.processTree(of: pid).map { process in
            let threads = ProcInspector.threadSyscalls(of: process).compactMap { thread in
                wait(of: process, thread.syscall, table: table).map { ProcessWaits.Thread(tid: thread.tid, wait: $0) }
            }
            var waits = ProcessWaits(pid: process, listeners: [], threads: threads)
            switch ProcInspector.listenerDescriptors(of: process, inodes: listenerInodes) {
            case .success(let fds): waits.listeners = fds.listeners
            case .failure(let error): waits.descriptorsUnseen = error.description
            }
            for fd in waits.waitedDescriptors {
                waits.targets[fd] = ProcInspector.descriptorTarget(of: process, fd: fd)
            }
            return waits
        }
        // A worker gone by now has its exit explained instead.
        guard processes.first?.threads.isEmpty == false else { return nil }
        return ListenWait.explanation(
            processes,
            expected: Array(3..<3 + max(listenerCount, 1)),
            ptraceScope: ProcInspector.ptraceScope()
        )
    }

    /// What a thread of `process` waits in, given what reading its syscall file gave; nil for a thread that has
    /// exited since its process's threads were listed.
    private static func wait(
        of process: Int32,
        _ syscall: Result<String, SystemError>,
        table: SyscallTable
    ) -> ThreadWait? {
        let text: String
        switch syscall {
        case .success(let line): text = line
        case .failure(let error) where error.errno == .noSuchFileOrDirectory || error.errno == .noSuchProcess:
            return nil
        case .failure(let error): return .unseen(error.description)
        }
        guard !text.isEmpty else { return nil }
        guard let line = SyscallLine(text) else { return .unseen("its syscall file reads '\(text.prefix(40))'") }
        return ListenWait.decode(line, table: table) { address, count in
            ProcInspector.readMemory(of: process, at: address, count: count).mapError {
                UnreadableMemory($0.description)
            }
        }
    }
}
