import BatonCore
import BatonSystem
import Logging
import SystemPackage

/// Re-execution in place (SIGUSR2 after a package upgrade): the state and fds go to the new binary in
/// ``ResumeState``; the new binary takes the workers' pipes over.
extension Launcher {
    /// Takes over the output and readiness pipes of the workers the previous binary started.
    func adoptWorkers(_ resume: ResumeState) throws(SystemError) {
        for saved in resume.workers {
            let id = WorkerID(saved.worker)
            guard let worker = supervisor.worker(id) else { continue }
            io[id] = try starter.adopt(
                id,
                generation: worker.generation,
                slot: worker.slot,
                pid: worker.pid,
                stdout: saved.stdout,
                stderr: saved.stderr,
                notify: saved.notify,
                events: sink
            )
            if let fd = saved.health, let address = saved.healthAddress {
                try health?.adopt(id, fd: fd, address: address, generation: worker.generation)
            }
        }
    }

    /// Replaces this process's program with the (upgraded) binary at ``executablePath``, keeping the pid, the
    /// listeners, the control socket and the running generation. If the new binary cannot be run, logs why and
    /// keeps running.
    func reexecute() {
        reexecRequested = false
        guard let snapshot = supervisor.snapshot(now: .now) else { return }
        let fail = { (why: String) in
            self.logger.error("cannot re-execute \(self.executablePath): \(why); the running baton carries on")
        }
        // The new binary must at least run.
        guard let version = probeVersion(executablePath) else {
            return fail("it does not run ('\(executablePath) --version' failed)")
        }
        let state = ResumeState(
            previousVersion: BatonVersion.current,
            supervisor: snapshot,
            listeners: listeners.map {
                .init(fd: $0.fd.rawValue, name: $0.name, address: $0.address, passed: $0.passed)
            },
            control: control?.descriptor.rawValue ?? -1,
            notify: notify?.fd.rawValue,
            notifyAddress: notify?.address,
            workers: snapshot.workers.map { saved in
                let workerIO = io[WorkerID(saved.id)]
                return .init(
                    worker: saved.id,
                    stdout: workerIO?.stdout.descriptor?.rawValue,
                    stderr: workerIO?.stderr.descriptor?.rawValue,
                    notify: workerIO?.notify?.descriptor?.rawValue,
                    health: health?.socket(of: WorkerID(saved.id))?.fd.rawValue,
                    healthAddress: health?.socket(of: WorkerID(saved.id))?.address
                )
            }
        )
        guard let encoded = state.encoded() else { return fail("cannot encode its state") }
        logger.notice("re-executing \(executablePath) (\(version)) in place, serving generation \(snapshot.serving)")
        let descriptors = state.descriptors
        for fd in descriptors { try? fd.setCloseOnExec(false) }
        let environment =
            OS.environment().filter { !$0.hasPrefix(ResumeState.variable + "=") } + [
                ResumeState.variable + "=" + encoded
            ]
        let error = OS.execute(executablePath, arguments: CommandLine.arguments, environment: environment)
        for fd in descriptors { try? fd.setCloseOnExec() }
        fail("\(error)")
    }

    /// Runs `path --version` and returns what it printed, or nil if it did not run.
    private func probeVersion(_ path: String) -> String? {
        guard let pipe = try? OwnedPipe() else { return nil }
        let request = SpawnRequest(
            executable: path,
            arguments: [path, "--version"],
            environment: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            listeners: [],
            setListenPID: false,
            standardInput: devNull.descriptor,
            standardOutput: pipe.write.descriptor,
            standardError: devNull.descriptor
        )
        let spawned = (try? Spawner.spawn(request)) != nil
        let read = pipe.read
        pipe.write.close()
        guard spawned else { return nil }
        let output = read.descriptor.readToEnd(timeout: .seconds(5))
        let firstLine = String(decoding: output, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
        return firstLine.isEmpty ? nil : firstLine
    }
}
