import BatonCore
import Testing

@Suite("what /proc/PID/status says of whether a process ran")
struct ProcessActivityTests {
    let sleeping = """
        Name:\tpython3
        State:\tS (sleeping)
        Tgid:\t4242
        Threads:\t1
        voluntary_ctxt_switches:\t12
        nonvoluntary_ctxt_switches:\t3

        """

    @Test func aSleepingSingleThreadedProcessCanProveItDidNotRun() throws {
        let activity = try #require(ProcessActivity(status: sleeping))
        #expect(activity == ProcessActivity(state: "S", threads: 1, switches: 15))
        #expect(activity.provesIdle)
    }

    @Test func aRunningOrMultiThreadedProcessProvesNothing() throws {
        let running = try #require(
            ProcessActivity(status: sleeping.replacingOccurrences("S (sleeping)", "R (running)"))
        )
        #expect(!running.provesIdle)
        let threaded = try #require(
            ProcessActivity(status: sleeping.replacingOccurrences("Threads:\t1", "Threads:\t7"))
        )
        #expect(!threaded.provesIdle)
    }

    @Test func aProcessThatIsGoneOrAFieldMissingReadsNil() {
        #expect(ProcessActivity(status: "") == nil)
        #expect(ProcessActivity(status: sleeping.replacingOccurrences("Threads:\t1\n", "")) == nil)
    }
}

extension String {
    fileprivate func replacingOccurrences(_ target: String, _ replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
