import BatonCore
import Testing

/// The plain-Swift side of the connection rescue: what becomes of a connection a retiring worker let go of.
@Suite("connection rescue: the verdict on a connection baton holds")
struct HeldConnectionTests {
    func verdict(
        established: Bool = true,
        clientClosed: Bool = false,
        bytes: String = "",
        idleFor: Duration = .zero,
        ownerKilled: Bool = false
    ) -> HeldConnection.Verdict {
        let first = Array(bytes.utf8.prefix(16))
        return HeldConnection.verdict(
            established: established,
            clientClosed: clientClosed,
            unread: bytes.utf8.count,
            firstBytes: first,
            idleFor: idleFor,
            window: HeldConnection.window(rtt: .microseconds(50)),
            ownerKilled: ownerKilled
        )
    }

    @Test func aRequestThatArrivedIsRelayed() {
        #expect(verdict(bytes: "GET / HTTP/1.1\r\n") == .relay)
        #expect(verdict(bytes: "POST /form HTTP/1.1\r\n") == .relay)
        // Go's net/http read one byte ahead of an idle connection: the rest of a GET is still a request.
        #expect(verdict(bytes: "ET / HTTP/1.1\r\n") == .relay)
        #expect(verdict(bytes: "GE") == .relay)
    }

    @Test func bytesThatAreNotAnHTTP1RequestGetTheResetTheCloseWouldHaveCaused() {
        #expect(verdict(bytes: "\u{16}\u{03}\u{01}\u{02}\u{00}") == .reset)  // TLS
        #expect(verdict(bytes: "PRI * HTTP/2.0\r\n") == .relay)  // the preface's method is a request line's
        #expect(verdict(bytes: "{\"body\": 1}") == .reset)
        #expect(verdict(bytes: "get / HTTP/1.1") == .reset)
        #expect(verdict(bytes: "GET / HTTP/1.1\r\n", ownerKilled: true) == .reset)
    }

    @Test func anIdleConnectionWaitsForTheWindowThenCloses() {
        #expect(verdict(idleFor: .milliseconds(20)) == .wait)
        #expect(verdict(idleFor: .milliseconds(249)) == .wait)
        #expect(verdict(idleFor: .milliseconds(250)) == .close)
        #expect(verdict(clientClosed: true) == .close)
        #expect(verdict(ownerKilled: true) == .close)
    }

    @Test func aConnectionQuietForASecondBeforeItsServerLetGoIsClosedAtOnce() {
        func quiet(_ before: Duration, idleFor: Duration = .zero) -> HeldConnection.Verdict {
            HeldConnection.verdict(
                established: true,
                clientClosed: false,
                unread: 0,
                firstBytes: [],
                idleFor: idleFor,
                quietBefore: before,
                window: HeldConnection.window(rtt: .zero),
                ownerKilled: false
            )
        }
        #expect(quiet(.seconds(1)) == .close)
        #expect(quiet(.seconds(30)) == .close)
        #expect(quiet(.milliseconds(999)) == .wait)
        #expect(quiet(.milliseconds(5), idleFor: .milliseconds(100)) == .wait)
        // What arrived is relayed however long it was quiet before.
        #expect(
            HeldConnection.verdict(
                established: true,
                clientClosed: false,
                unread: 16,
                firstBytes: Array("GET / HTTP/1.1\r\n".utf8),
                idleFor: .zero,
                quietBefore: .seconds(5),
                window: .milliseconds(250),
                ownerKilled: false
            ) == .relay
        )
    }

    @Test func aConnectionTheServerShutDownIsLeftAlone() {
        #expect(verdict(established: false, bytes: "GET / HTTP/1.1\r\n") == .leave)
        #expect(verdict(established: false) == .leave)
    }

    @Test func theWindowIsFourRoundTripsBetweenAQuarterSecondAndOne() {
        #expect(HeldConnection.window(rtt: .zero) == .milliseconds(250))
        #expect(HeldConnection.window(rtt: .milliseconds(100)) == .milliseconds(400))
        #expect(HeldConnection.window(rtt: .seconds(3)) == .seconds(1))
    }

    @Test func onlyIdempotentRequestsAreSentAgain() {
        for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            #expect(HeldConnection.isIdempotentRequest(Array("\(method) / HTTP/1.1\r\n".utf8)), "\(method)")
        }
        for method in ["POST", "PATCH", "CONNECT"] {
            #expect(!HeldConnection.isIdempotentRequest(Array("\(method) / HTTP/1.1\r\n".utf8)), "\(method)")
        }
    }

    @Test func theMissingFirstLetterOfAStandardMethodIsPutBack() {
        #expect(HeldConnection.missingStart(of: Array("ET /x HTTP/1.1".utf8)) == Array("G".utf8))
        #expect(HeldConnection.missingStart(of: Array("OST / HTTP/1.1".utf8)) == Array("P".utf8))
        #expect(HeldConnection.missingStart(of: Array("GET / HTTP/1.1".utf8)) == [])
        #expect(HeldConnection.missingStart(of: Array("\u{16}\u{03}\u{01}".utf8)) == nil)
    }
}
