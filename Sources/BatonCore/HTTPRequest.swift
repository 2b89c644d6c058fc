/// The little HTTP/1.x that `GET /metrics` needs: a request head read line by line, checked, and routed; and a
/// response with `Connection: close`. Plain Swift, so that every answer is testable without a socket.
public enum MetricsHTTP {
    /// The most bytes a request head may have (request line and headers).
    public static let maximumRequestSize = 8192

    /// The Prometheus text exposition format's content type. swift-prometheus 2.4.1 renders only this format, so it
    /// is also the answer to `Accept: application/openmetrics-text` (Prometheus accepts it there too).
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// A request head as read so far, one line at a time.
    public struct RequestHead: Sendable {
        public private(set) var lines: [String] = []
        public private(set) var size = 0
        /// Set once the empty line that ends the head has arrived.
        public private(set) var complete = false

        public init() {}

        /// Adds one line (without its `\n`; a trailing `\r` is dropped). False once the head is over
        /// ``MetricsHTTP/maximumRequestSize``.
        public mutating func add(_ line: [UInt8]) -> Bool {
            size += line.count + 1
            guard size <= MetricsHTTP.maximumRequestSize else { return false }
            let text = String(decoding: line.last == UInt8(ascii: "\r") ? line.dropLast() : line[...], as: UTF8.self)
            // Empty lines before the request line are allowed (RFC 9112, section 2.2).
            if text.isEmpty {
                complete = !lines.isEmpty
                return true
            }
            lines.append(text)
            return true
        }
    }

    /// What to answer.
    public enum Route: Sendable, Equatable {
        /// Render the metrics; `head` answers without the body.
        case metrics(head: Bool)
        case error(Response)
    }

    /// One response.
    public struct Response: Sendable, Equatable {
        public var status: Int
        public var reason: String
        public var headers: [(String, String)]
        public var body: [UInt8]
        /// A `HEAD` request gets the headers only.
        public var headOnly = false

        public init(status: Int, reason: String, headers: [(String, String)] = [], body: [UInt8]) {
            self.status = status
            self.reason = reason
            self.headers = headers
            self.body = body
        }

        /// A plain-text error response whose body is `message` and a newline.
        public static func error(
            _ status: Int,
            _ reason: String,
            _ message: String,
            headers: [(String, String)] = []
        )
            -> Response
        {
            Response(
                status: status,
                reason: reason,
                headers: [("Content-Type", "text/plain; charset=utf-8")] + headers,
                body: Array((message + "\n").utf8)
            )
        }

        /// The metrics page.
        public static func metrics(_ body: [UInt8], headOnly: Bool) -> Response {
            var response = Response(status: 200, reason: "OK", headers: [("Content-Type", contentType)], body: body)
            response.headOnly = headOnly
            return response
        }

        /// The bytes on the wire: status line, headers, `Content-Length`, `Connection: close`, and the body.
        public func encoded() -> [UInt8] {
            var text = "HTTP/1.1 \(status) \(reason)\r\n"
            for (name, value) in headers { text += "\(name): \(value)\r\n" }
            text += "Content-Length: \(body.count)\r\nConnection: close\r\n\r\n"
            return Array(text.utf8) + (headOnly ? [] : body)
        }

        public static func == (a: Response, b: Response) -> Bool {
            a.status == b.status && a.reason == b.reason && a.body == b.body && a.headOnly == b.headOnly
                && a.headers.map { "\($0.0): \($0.1)" } == b.headers.map { "\($0.0): \($0.1)" }
        }
    }

    /// The answer to an oversized request head.
    public static let tooLarge = Response.error(
        431,
        "Request Header Fields Too Large",
        "request head over \(maximumRequestSize) bytes"
    )

    /// What a complete request head asks for: `GET /metrics` (or `HEAD`), with any query string; 400 for a head that
    /// is not HTTP/1.x, 405 for another method, 404 for another path.
    public static func route(_ head: RequestHead) -> Route {
        guard let requestLine = head.lines.first else {
            return .error(.error(400, "Bad Request", "empty request"))
        }
        let parts = requestLine.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, parts[1].hasPrefix("/") || parts[1] == "*",
            parts[2] == "HTTP/1.1" || parts[2] == "HTTP/1.0"
        else {
            return .error(.error(400, "Bad Request", "expected a request line such as GET /metrics HTTP/1.1"))
        }
        for header in head.lines.dropFirst() {
            guard let colon = header.firstIndex(of: ":"), colon != header.startIndex,
                !header[..<colon].contains(where: { $0 == " " || $0 == "\t" })
            else {
                return .error(.error(400, "Bad Request", "malformed header line"))
            }
        }
        let method = parts[0]
        guard method == "GET" || method == "HEAD" else {
            return .error(
                .error(405, "Method Not Allowed", "only GET and HEAD are served", headers: [("Allow", "GET, HEAD")])
            )
        }
        let path = parts[1].split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        guard path == "/metrics" else {
            return .error(.error(404, "Not Found", "not found: baton serves GET /metrics only"))
        }
        return .metrics(head: method == "HEAD")
    }
}
