internal import CBatonSystem
internal import Glibc

/// baton's own output (worker lines, log lines, journal entries), written by a thread of its own, so that the event
/// loop and the launcher never block on a stdout, stderr or journal that does not keep up.
///
/// The queue is bounded: what does not fit is dropped and counted, and once the writer catches up it reports how many
/// lines it dropped, in one line on stderr.
public final class OutputWriter: @unchecked Sendable {
    /// What one write is.
    private enum Item {
        case bytes(fd: Int32, [UInt8], lines: Int)
        case journal([String])

        /// What it costs in memory, roughly: its bytes and the bookkeeping around them (so that a flood of tiny
        /// journal entries is bounded as well as one of long lines).
        var size: Int {
            switch self {
            case .bytes(_, let bytes, _): 64 + bytes.count
            case .journal(let fields): 64 + fields.reduce(0) { $0 + 48 + $1.utf8.count }
            }
        }

        var lines: Int {
            switch self {
            case .bytes(_, _, let lines): lines
            case .journal: 1
            }
        }
    }

    /// The writer of the daemon (`baton run`).
    public static let shared = OutputWriter(limit: 4 << 20)

    /// The most bytes queued at once.
    public let limit: Int
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    // Guarded by the mutex:
    private var queue: [Item] = []
    private var queued = 0
    private var droppedLines = 0
    private var droppedBytes = 0
    private var busy = false
    private var started = false

    init(limit: Int) {
        self.limit = limit
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        condition.initialize(to: pthread_cond_t())
        pthread_cond_init(condition, nil)
    }

    /// Queues `text` (`lines` lines of it) for `fd` (1 or 2); dropped and counted if the queue is full.
    public func write(_ text: String, to fd: Int32, lines: Int = 1) {
        enqueue(.bytes(fd: fd, Array(text.utf8), lines: lines))
    }

    /// Queues a native journal entry (`sd_journal_sendv`).
    public func journal(_ fields: [String]) {
        enqueue(.journal(fields))
    }

    /// Waits until everything queued has been written, or `timeout` has passed (before baton exits).
    public func flush(timeout: Duration) {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            pthread_mutex_lock(mutex)
            let idle = queue.isEmpty && !busy
            pthread_mutex_unlock(mutex)
            if idle { return }
            usleep(1000)
        }
    }

    /// How many lines have been dropped so far (for tests and status).
    public var dropped: Int {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return droppedLines
    }

    private func enqueue(_ item: Item) {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        if !started {
            started = true
            startThread()
        }
        let size = item.size
        guard queued + size <= limit else {
            droppedLines += item.lines
            droppedBytes += size
            return
        }
        queue.append(item)
        queued += size
        pthread_cond_signal(condition)
    }

    private func startThread() {
        Threads.detach { self.run() }
    }

    private func run() {
        // Signals go to the signalfd of the event loop; this thread blocks them all.
        var all = sigset_t()
        sigfillset(&all)
        pthread_sigmask(SIG_SETMASK, &all, nil)
        while true {
            pthread_mutex_lock(mutex)
            while queue.isEmpty { pthread_cond_wait(condition, mutex) }
            var items = queue
            queue = []
            queued = 0
            busy = true
            if droppedLines > 0 {
                let notice =
                    "baton: dropped \(droppedLines) line(s) of output (\(droppedBytes) bytes): its destination did not keep up\n"
                items.append(.bytes(fd: 2, Array(notice.utf8), lines: 0))
                droppedLines = 0
                droppedBytes = 0
            }
            pthread_mutex_unlock(mutex)
            for item in items {
                switch item {
                case .bytes(let fd, let bytes, _):
                    Self.writeAll(fd, bytes)
                case .journal(let fields):
                    Systemd.journalSend(fields)
                }
            }
            pthread_mutex_lock(mutex)
            busy = false
            pthread_mutex_unlock(mutex)
        }
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, bytes.count - offset) }
            if n < 0 && Glibc.errno == EINTR { continue }
            if n <= 0 { return }
            offset += n
        }
    }
}
