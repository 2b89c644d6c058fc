internal import Glibc

/// A value behind a `pthread_mutex_t`.
///
/// baton uses this rather than `Synchronization.Mutex`: on Linux that one is built on raw futexes that
/// ThreadSanitizer cannot see, so every access through it is reported as a race, and real races would drown in
/// the noise. A pthread mutex is understood by TSan, so the suite runs clean under it.
///
/// The corresponding C functions are `pthread_mutex_lock` and `pthread_mutex_unlock`.
public final class Locked<Value: ~Copyable>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    public init(_ value: consuming Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        let status = pthread_mutex_init(mutex, nil)
        precondition(status == 0, "pthread_mutex_init failed: \(status)")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value.
    public func withLock<T: ~Copyable>(_ body: (inout Value) throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}

/// Threads of baton's own (the event loop, the output writer), outside Swift concurrency's pool.
enum Threads {
    /// Runs `body` on a new detached thread.
    ///
    /// The corresponding C function is `pthread_create`.
    static func detach(_ body: @escaping @Sendable () -> Void) {
        final class Box: @unchecked Sendable {
            let body: @Sendable () -> Void
            init(_ body: @escaping @Sendable () -> Void) { self.body = body }
        }
        let box = Unmanaged.passRetained(Box(body))
        var thread = pthread_t()
        let status = pthread_create(
            &thread,
            nil,
            { argument in
                Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue().body()
                return nil
            },
            box.toOpaque()
        )
        precondition(status == 0, "pthread_create failed: \(status)")
        pthread_detach(thread)
    }
}
