import BatonCore
import Testing

/// The plain-Swift side of bind adoption: where the library is looked for, the workers' LD_PRELOAD, the diagnosis.
@Suite("bind adoption: LD_PRELOAD and the diagnosis")
struct AdoptBindCoreTests {
    @Test func theLibraryIsLookedForBesideBatonThenInLibBaton() {
        #expect(
            AdoptBind.libraryCandidates(executable: "/usr/bin/baton") == [
                "/usr/bin/libbaton-adopt.so", "/usr/lib/baton/libbaton-adopt.so",
            ]
        )
        #expect(
            AdoptBind.libraryCandidates(executable: "/src/.build/debug/baton").first
                == "/src/.build/debug/libbaton-adopt.so"
        )
        #expect(AdoptBind.libraryCandidates(executable: "baton").isEmpty)
    }

    @Test func onlyAPathTheLoaderReadsWholeIsPreloaded() {
        #expect(AdoptBind.isPreloadable("/usr/lib/baton/libbaton-adopt.so"))
        #expect(!AdoptBind.isPreloadable("relative/libbaton-adopt.so"))
        #expect(!AdoptBind.isPreloadable("/my dir/libbaton-adopt.so"))
        #expect(!AdoptBind.isPreloadable("/a:b/libbaton-adopt.so"))
        #expect(!AdoptBind.isPreloadable("/a\nb/libbaton-adopt.so"))
    }

    @Test func theLibraryIsAddedAfterWhatTheAppPreloads() {
        let library = "/usr/lib/baton/libbaton-adopt.so"
        #expect(AdoptBind.environment(["PATH=/bin"], preloading: library) == ["PATH=/bin", "LD_PRELOAD=" + library])
        #expect(
            AdoptBind.environment(["LD_PRELOAD=/usr/lib/libasan.so.8 /opt/x.so", "A=1"], preloading: library)
                == ["LD_PRELOAD=/usr/lib/libasan.so.8 /opt/x.so:" + library, "A=1"]
        )
        #expect(AdoptBind.environment(["LD_PRELOAD="], preloading: library) == ["LD_PRELOAD=" + library])
        #expect(
            AdoptBind.environment(["LD_PRELOAD=/x.so:" + library], preloading: library) == [
                "LD_PRELOAD=/x.so:" + library
            ]
        )
        // Another variable that merely ends in LD_PRELOAD is not it.
        #expect(
            AdoptBind.environment(["MY_LD_PRELOAD=/x.so"], preloading: library) == [
                "MY_LD_PRELOAD=/x.so", "LD_PRELOAD=" + library,
            ]
        )
    }

    @Test func nodesDrainIsRequiredAfterTheAppsOwnNodeOptions() {
        let script = "/usr/lib/baton/baton-node.js"
        #expect(AdoptBind.environment(["A=1"], nodeRequiring: script) == ["A=1", "NODE_OPTIONS=--require=" + script])
        #expect(
            AdoptBind.environment(["NODE_OPTIONS=--max-old-space-size=256"], nodeRequiring: script) == [
                "NODE_OPTIONS=--max-old-space-size=256 --require=" + script
            ]
        )
        #expect(AdoptBind.environment(["NODE_OPTIONS="], nodeRequiring: script) == ["NODE_OPTIONS=--require=" + script])
        let already = ["NODE_OPTIONS=--require=\(script) --inspect"]
        #expect(AdoptBind.environment(already, nodeRequiring: script) == already)
    }

    @Test func theDiagnosisNamesTheListenerTheAppCollidedWith() {
        let listeners = [
            AdoptBind.Listener(address: "127.0.0.1:8000", port: 8000),
            AdoptBind.Listener(address: ":9000", port: 9000),
            AdoptBind.Listener(address: "unix:/run/app.sock", port: nil, path: "/run/app.sock"),
        ]
        let node = ["Error: listen EADDRINUSE: address already in use :::9000", "    at Server.setupListenHandle"]
        #expect(
            AdoptBind.diagnosis(stderr: node, listeners: listeners)
                == "the app bound :9000 itself (EADDRINUSE): use LISTEN_FDS, or see --no-adopt-bind"
        )
        let python = ["Traceback (most recent call last):", "OSError: [Errno 98] Address already in use"]
        #expect(
            AdoptBind.diagnosis(stderr: python, listeners: listeners)?.hasPrefix("the app bound 127.0.0.1:8000 itself")
                == true
        )
        let unix = ["listen EADDRINUSE: address already in use /run/app.sock"]
        #expect(
            AdoptBind.diagnosis(stderr: unix, listeners: listeners)?.hasPrefix(
                "the app bound unix:/run/app.sock itself"
            ) == true
        )
        #expect(AdoptBind.diagnosis(stderr: ["TypeError: x is not a function"], listeners: listeners) == nil)
        // A collision on a port baton does not serve is none of baton's business.
        #expect(
            AdoptBind.diagnosis(
                stderr: ["Error: listen EADDRINUSE: address already in use :::3000"],
                listeners: listeners
            ) == nil
        )
        #expect(AdoptBind.diagnosis(stderr: python, listeners: []) == nil)
    }

    @Test func aWorkerListeningByItselfIsNamedWithWhatBatonServes() {
        let listeners = [
            AdoptBind.Listener(address: "127.0.0.1:8000", port: 8000), AdoptBind.Listener(address: ":9000", port: 9000),
        ]
        #expect(
            AdoptBind.diagnosis(ownListeners: ["[::]:3000"], listeners: listeners)
                == "the app listens on [::]:3000 itself, not on baton's 127.0.0.1:8000, :9000: bind the address baton serves, use LISTEN_FDS, or change --listen"
        )
        #expect(AdoptBind.diagnosis(ownListeners: [], listeners: listeners) == nil)
    }
}
