// libFuzzer entry point for baton's parsers. One binary holds every target; BATON_FUZZ_TARGET picks one:
//   notify   the notify-message parser and the line splitter (what any worker can send)
//   control  the control protocol's request and reply decoders (what any local client can send)
//   address  the listen-address, duration and name parsers (the command line)
// Build and run with Fuzz/run.sh.
import Glibc

let target: String = getenv("BATON_FUZZ_TARGET").map { String(cString: $0) } ?? "notify"

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    switch target {
    case "control": return fuzzControl(data, size)
    case "address": return fuzzAddress(data, size)
    default: return fuzzNotify(data, size)
    }
}

// libFuzzer target: the notify-message parser (what any worker can send to baton).
func fuzzNotify(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    if let message = NotifyMessage(parsing: bytes) {
        precondition(size <= NotifyMessage.maximumSize)
        precondition(message.other.count <= 16)
        precondition((message.status?.count ?? 0) <= 512)
    }
    // The same bytes as a stream of lines on a BATON_NOTIFY_FD pipe.
    var splitter = LineSplitter(maximumLineLength: 64)
    for line in splitter.feed(bytes) { precondition(line.count <= 64) }
    return 0
}

// libFuzzer target: the control protocol's request decoder (what any local client can send).
func fuzzControl(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let line = Array(UnsafeBufferPointer(start: data, count: size))
    do throws(BatonError) {
        let request = try ControlProtocol.decodeRequest(line)
        // Whatever decodes must encode and decode again to the same request.
        let again = try ControlProtocol.decodeRequest(Array(ControlProtocol.encode(request).dropLast()))
        precondition(again == request)
    } catch {
        precondition(!error.message.isEmpty)
    }
    if let reply = ControlProtocol.decodeReply(line) {
        precondition(ControlProtocol.decodeReply(Array(ControlProtocol.encode(reply).dropLast())) == reply)
    }
    return 0
}

// libFuzzer target: the listen-address parser and the other command-line value parsers.
func fuzzAddress(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    do throws(BatonError) {
        let spec = try ListenSpec(parsing: text, defaultName: "d")
        precondition(ListenSpec.isValidName(spec.name))
        // What parses prints as an address that parses to the same thing.
        let again = try ListenSpec(parsing: spec.address.description, defaultName: "d")
        precondition(again.address == spec.address, "\(spec.address) reparsed as \(again.address)")
    } catch {
        precondition(error.message.hasPrefix("invalid --listen"))
    }
    if let duration = DurationText(text) { precondition(duration.duration >= .zero) }
    _ = LaunchConfiguration.isValidName(text)
    return 0
}
