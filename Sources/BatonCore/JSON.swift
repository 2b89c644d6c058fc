/// JSON for the control protocol and the re-execution state, in plain Swift: `Codable` values to one compact line
/// with keys sorted by code point, and back. It writes strings and numbers as FoundationEssentials' `JSONEncoder`
/// does (the same escapes, `/` as `\/`; numbers as Swift prints them, less a trailing `.0`), so that the daemon
/// needs no Foundation: its code and tables are never paged in (bench/README.md, "baton's resident memory").
public enum JSON {
    /// Why a value could not be encoded or a text decoded: one line naming the place.
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public var description: String
        init(_ description: String) { self.description = description }
    }

    /// The value as compact JSON with sorted keys (no newline).
    public static func encode(_ value: some Encodable) throws(Failure) -> [UInt8] {
        let encoder = ValueEncoder(path: [])
        do {
            try value.encode(to: encoder)
        } catch let failure as Failure {
            throw failure
        } catch {
            throw Failure("cannot encode: \(error)")
        }
        var out: [UInt8] = []
        out.reserveCapacity(256)
        try write(encoder.target.value, into: &out)
        return out
    }

    /// A value of type `T` from the JSON text `bytes` (nothing but whitespace may follow it). Keys that `T` does
    /// not know are ignored; a key that is absent or `null` is nil.
    public static func decode<T: Decodable>(_ type: T.Type, from bytes: some Collection<UInt8>) throws(Failure) -> T {
        var parser = Parser(bytes: Array(bytes))
        let value = try parser.document()
        do {
            return try T(from: ValueDecoder(value: value, path: []))
        } catch let failure as Failure {
            throw failure
        } catch {
            throw Failure("cannot decode: \(error)")
        }
    }

    indirect enum Value {
        case null
        case bool(Bool)
        /// The number as written (JSON text).
        case number(String)
        case string(String)
        case array([Value])
        case object([String: Value])
    }

    // MARK: Writing

    static func write(_ value: Value, into out: inout [UInt8]) throws(Failure) {
        switch value {
        case .null: out += "null".utf8
        case .bool(let flag): out += (flag ? "true" : "false").utf8
        case .number(let text): out += text.utf8
        case .string(let text): writeString(text, into: &out)
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (index, item) in items.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                try write(item, into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let members):
            out.append(UInt8(ascii: "{"))
            for (index, key) in members.keys.sorted().enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                writeString(key, into: &out)
                out.append(UInt8(ascii: ":"))
                try write(members[key]!, into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    static func writeString(_ text: String, into out: inout [UInt8]) {
        let hex = Array("0123456789abcdef".utf8)
        out.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out += #"\""#.utf8
            case UInt8(ascii: "\\"): out += #"\\"#.utf8
            case UInt8(ascii: "/"): out += #"\/"#.utf8
            case 0x08: out += #"\b"#.utf8
            case 0x0C: out += #"\f"#.utf8
            case 0x0A: out += #"\n"#.utf8
            case 0x0D: out += #"\r"#.utf8
            case 0x09: out += #"\t"#.utf8
            case 0..<0x20:
                out += #"\u00"#.utf8
                out += [hex[Int(byte >> 4)], hex[Int(byte & 15)]]
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    static func number(_ value: Double, at path: [any CodingKey]) throws(Failure) -> Value {
        guard value.isFinite else { throw Failure("cannot encode \(value) at \(describe(path)): not a JSON number") }
        var text = value.description
        if text.hasSuffix(".0") { text.removeLast(2) }
        return .number(text)
    }

    static func describe(_ path: [any CodingKey]) -> String {
        path.isEmpty ? "the top level" : path.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
    }
}

// MARK: Encoding

/// A node of the tree being encoded; containers hold their children by reference until the end.
private final class Node {
    enum Content {
        case value(JSON.Value)
        case array([Node])
        case object([String: Node])
    }
    var content: Content = .value(.null)

    var value: JSON.Value {
        switch content {
        case .value(let value): value
        case .array(let nodes): .array(nodes.map(\.value))
        case .object(let nodes): .object(nodes.mapValues(\.value))
        }
    }

    func object() -> Node {
        if case .object = content { return self }
        content = .object([:])
        return self
    }

    func array() -> Node {
        if case .array = content { return self }
        content = .array([])
        return self
    }

    func child(_ key: String) -> Node {
        let node = Node()
        if case .object(var members) = content {
            content = .value(.null)  // one reference, so that the update does not copy
            members[key] = node
            content = .object(members)
        }
        return node
    }

    func append() -> Node {
        let node = Node()
        if case .array(var items) = content {
            content = .value(.null)
            items.append(node)
            content = .array(items)
        }
        return node
    }

    var count: Int {
        if case .array(let items) = content { return items.count }
        return 0
    }
}

private struct JSONKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(stringValue: String) { self.stringValue = stringValue }
    init(intValue: Int) {
        stringValue = "\(intValue)"
        self.intValue = intValue
    }
}

private struct ValueEncoder: Encoder {
    let target: Node
    var codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(path: [any CodingKey], node: Node = Node()) {
        codingPath = path
        target = node
    }

    func container<K: CodingKey>(keyedBy type: K.Type) -> KeyedEncodingContainer<K> {
        KeyedEncodingContainer(KeyedEncoder<K>(node: target.object(), codingPath: codingPath))
    }
    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        UnkeyedEncoder(node: target.array(), codingPath: codingPath)
    }
    func singleValueContainer() -> any SingleValueEncodingContainer {
        SingleEncoder(node: target, codingPath: codingPath)
    }
}

private func encodeValue(_ value: some Encodable, into node: Node, path: [any CodingKey]) throws {
    switch value {
    case let text as String: node.content = .value(.string(text))
    case let flag as Bool: node.content = .value(.bool(flag))
    case let number as Double: node.content = .value(try JSON.number(number, at: path))
    case let number as Float: node.content = .value(try JSON.number(Double(number), at: path))
    default:
        if let integer = value as? any BinaryInteger {
            node.content = .value(.number("\(integer)"))
        } else {
            try value.encode(to: ValueEncoder(path: path, node: node))
        }
    }
}

private struct KeyedEncoder<K: CodingKey>: KeyedEncodingContainerProtocol {
    let node: Node
    var codingPath: [any CodingKey]

    mutating func encodeNil(forKey key: K) throws { node.child(key.stringValue).content = .value(.null) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: K) throws {
        try encodeValue(value, into: node.child(key.stringValue), path: codingPath + [key])
    }
    mutating func nestedContainer<N: CodingKey>(keyedBy type: N.Type, forKey key: K) -> KeyedEncodingContainer<N> {
        KeyedEncodingContainer(
            KeyedEncoder<N>(node: node.child(key.stringValue).object(), codingPath: codingPath + [key])
        )
    }
    mutating func nestedUnkeyedContainer(forKey key: K) -> any UnkeyedEncodingContainer {
        UnkeyedEncoder(node: node.child(key.stringValue).array(), codingPath: codingPath + [key])
    }
    mutating func superEncoder() -> any Encoder {
        ValueEncoder(path: codingPath + [JSONKey(stringValue: "super")], node: node.child("super"))
    }
    mutating func superEncoder(forKey key: K) -> any Encoder {
        ValueEncoder(path: codingPath + [key], node: node.child(key.stringValue))
    }
}

private struct UnkeyedEncoder: UnkeyedEncodingContainer {
    let node: Node
    var codingPath: [any CodingKey]
    var count: Int { node.count }

    mutating func encodeNil() throws { node.append().content = .value(.null) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        let path = codingPath + [JSONKey(intValue: count)]
        try encodeValue(value, into: node.append(), path: path)
    }
    mutating func nestedContainer<N: CodingKey>(keyedBy type: N.Type) -> KeyedEncodingContainer<N> {
        let path = codingPath + [JSONKey(intValue: count)]
        return KeyedEncodingContainer(KeyedEncoder<N>(node: node.append().object(), codingPath: path))
    }
    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let path = codingPath + [JSONKey(intValue: count)]
        return UnkeyedEncoder(node: node.append().array(), codingPath: path)
    }
    mutating func superEncoder() -> any Encoder {
        let path = codingPath + [JSONKey(intValue: count)]
        return ValueEncoder(path: path, node: node.append())
    }
}

private struct SingleEncoder: SingleValueEncodingContainer {
    let node: Node
    var codingPath: [any CodingKey]

    mutating func encodeNil() throws { node.content = .value(.null) }
    mutating func encode<T: Encodable>(_ value: T) throws { try encodeValue(value, into: node, path: codingPath) }
}

// MARK: Parsing

private struct Parser {
    let bytes: [UInt8]
    var index = 0
    /// Arrays and objects nest at most this deep (a hostile request cannot exhaust the stack).
    static let maximumDepth = 64

    init(bytes: [UInt8]) { self.bytes = bytes }

    mutating func document() throws(JSON.Failure) -> JSON.Value {
        let value = try parseValue(depth: 0)
        skipSpace()
        guard index == bytes.count else { throw fail("unexpected text after the value") }
        return value
    }

    func fail(_ what: String) -> JSON.Failure { JSON.Failure("invalid JSON at byte \(index): \(what)") }

    mutating func skipSpace() {
        while index < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) { index += 1 }
    }

    mutating func literal(_ word: String, _ value: JSON.Value) throws(JSON.Failure) -> JSON.Value {
        let text = Array(word.utf8)
        guard bytes.count - index >= text.count, Array(bytes[index..<index + text.count]) == text else {
            throw fail("expected a value")
        }
        index += text.count
        return value
    }

    mutating func parseValue(depth: Int) throws(JSON.Failure) -> JSON.Value {
        skipSpace()
        guard index < bytes.count else { throw fail("unexpected end") }
        guard depth < Parser.maximumDepth else { throw fail("nested deeper than \(Parser.maximumDepth)") }
        switch bytes[index] {
        case UInt8(ascii: "n"): return try literal("null", .null)
        case UInt8(ascii: "t"): return try literal("true", .bool(true))
        case UInt8(ascii: "f"): return try literal("false", .bool(false))
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "["):
            index += 1
            var items: [JSON.Value] = []
            skipSpace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
                index += 1
                return .array(items)
            }
            while true {
                items.append(try parseValue(depth: depth + 1))
                skipSpace()
                guard index < bytes.count else { throw fail("unexpected end in an array") }
                index += 1
                if bytes[index - 1] == UInt8(ascii: "]") { return .array(items) }
                guard bytes[index - 1] == UInt8(ascii: ",") else { throw fail("expected , or ]") }
            }
        case UInt8(ascii: "{"):
            index += 1
            var members: [String: JSON.Value] = [:]
            skipSpace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
                index += 1
                return .object(members)
            }
            while true {
                skipSpace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw fail("expected a key") }
                let key = try parseString()
                skipSpace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw fail("expected :") }
                index += 1
                members[key] = try parseValue(depth: depth + 1)
                skipSpace()
                guard index < bytes.count else { throw fail("unexpected end in an object") }
                index += 1
                if bytes[index - 1] == UInt8(ascii: "}") { return .object(members) }
                guard bytes[index - 1] == UInt8(ascii: ",") else { throw fail("expected , or }") }
            }
        default: return try parseNumber()
        }
    }

    mutating func parseNumber() throws(JSON.Failure) -> JSON.Value {
        let start = index
        if index < bytes.count, bytes[index] == UInt8(ascii: "-") { index += 1 }
        let digits = index
        while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
        guard index > digits else { throw fail("expected a value") }
        guard bytes[digits] != UInt8(ascii: "0") || index == digits + 1 else { throw fail("leading zero") }
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            let fraction = index
            while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
            guard index > fraction else { throw fail("expected digits after .") }
        }
        if index < bytes.count, bytes[index] | 0x20 == UInt8(ascii: "e") {
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
                index += 1
            }
            let exponent = index
            while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
            guard index > exponent else { throw fail("expected digits in the exponent") }
        }
        return .number(String(decoding: bytes[start..<index], as: UTF8.self))
    }

    mutating func hex4() throws(JSON.Failure) -> UInt32 {
        guard bytes.count - index >= 4 else { throw fail("short \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw fail("bad \\u escape")
            }
            value = value << 4 | UInt32(digit)
            index += 1
        }
        return value
    }

    mutating func parseString() throws(JSON.Failure) -> String {
        index += 1  // the opening quote
        var out: [UInt8] = []
        while true {
            guard index < bytes.count else { throw fail("unterminated string") }
            let byte = bytes[index]
            index += 1
            switch byte {
            case UInt8(ascii: "\""):
                guard let text = String(validating: out, as: UTF8.self) else { throw fail("string is not UTF-8") }
                return text
            case UInt8(ascii: "\\"):
                guard index < bytes.count else { throw fail("unterminated string") }
                let escape = bytes[index]
                index += 1
                switch escape {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(escape)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try hex4()
                    if (0xD800..<0xDC00).contains(scalar) {
                        guard bytes.count - index >= 6, bytes[index] == UInt8(ascii: "\\"),
                            bytes[index + 1] == UInt8(ascii: "u")
                        else { throw fail("lone surrogate") }
                        index += 2
                        let low = try hex4()
                        guard (0xDC00..<0xE000).contains(low) else { throw fail("lone surrogate") }
                        scalar = 0x10000 + (scalar - 0xD800) << 10 + (low - 0xDC00)
                    }
                    guard let unicode = Unicode.Scalar(scalar) else { throw fail("lone surrogate") }
                    out += String(Character(unicode)).utf8
                default: throw fail("bad escape")
                }
            case 0..<0x20: throw fail("control character in a string")
            default: out.append(byte)
            }
        }
    }
}

// MARK: Decoding

private struct ValueDecoder: Decoder {
    let value: JSON.Value
    var codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(value: JSON.Value, path: [any CodingKey]) {
        self.value = value
        codingPath = path
    }

    func container<K: CodingKey>(keyedBy type: K.Type) throws -> KeyedDecodingContainer<K> {
        guard case .object(let members) = value else { throw mismatch("an object", value, codingPath) }
        return KeyedDecodingContainer(KeyedDecoder<K>(members: members, codingPath: codingPath))
    }
    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .array(let items) = value else { throw mismatch("an array", value, codingPath) }
        return UnkeyedDecoder(items: items, codingPath: codingPath)
    }
    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        SingleDecoder(value: value, codingPath: codingPath)
    }
}

private func mismatch(_ expected: String, _ value: JSON.Value, _ path: [any CodingKey]) -> JSON.Failure {
    let found: String
    switch value {
    case .null: found = "null"
    case .bool: found = "a boolean"
    case .number(let text): found = "the number \(text)"
    case .string: found = "a string"
    case .array: found = "an array"
    case .object: found = "an object"
    }
    return JSON.Failure("expected \(expected) at \(JSON.describe(path)), found \(found)")
}

private func decodeValue<T: Decodable>(_ type: T.Type, from value: JSON.Value, path: [any CodingKey]) throws -> T {
    if T.self == String.self {
        guard case .string(let text) = value else { throw mismatch("a string", value, path) }
        return text as! T
    }
    if T.self == Bool.self {
        guard case .bool(let flag) = value else { throw mismatch("a boolean", value, path) }
        return flag as! T
    }
    if T.self == Double.self || T.self == Float.self {
        guard case .number(let text) = value, let number = Double(text) else { throw mismatch("a number", value, path) }
        if T.self == Float.self { return Float(number) as! T }
        return number as! T
    }
    if let integer = T.self as? any FixedWidthInteger.Type {
        guard case .number(let text) = value else { throw mismatch("an integer", value, path) }
        return try decodeInteger(integer, text, path) as! T
    }
    return try T(from: ValueDecoder(value: value, path: path))
}

private func decodeInteger<I: FixedWidthInteger>(_ type: I.Type, _ text: String, _ path: [any CodingKey]) throws -> I {
    if let exact = I(text) { return exact }
    // 3.0 or 1e3 are integers too; 3.5 and anything out of range are not.
    if let number = Double(text), number.rounded() == number, let exact = I(exactly: number) { return exact }
    throw JSON.Failure("expected \(I.self) at \(JSON.describe(path)), found the number \(text)")
}

private struct KeyedDecoder<K: CodingKey>: KeyedDecodingContainerProtocol {
    let members: [String: JSON.Value]
    var codingPath: [any CodingKey]
    var allKeys: [K] { members.keys.compactMap { K(stringValue: $0) } }

    func contains(_ key: K) -> Bool { members[key.stringValue] != nil }
    func member(_ key: K) throws -> JSON.Value {
        guard let value = members[key.stringValue] else {
            throw JSON.Failure("missing key \(key.stringValue) at \(JSON.describe(codingPath))")
        }
        return value
    }
    func decodeNil(forKey key: K) throws -> Bool {
        if case .null = try member(key) { return true }
        return false
    }
    func decode<T: Decodable>(_ type: T.Type, forKey key: K) throws -> T {
        try decodeValue(type, from: member(key), path: codingPath + [key])
    }
    func nestedContainer<N: CodingKey>(keyedBy type: N.Type, forKey key: K) throws -> KeyedDecodingContainer<N> {
        try ValueDecoder(value: member(key), path: codingPath + [key]).container(keyedBy: type)
    }
    func nestedUnkeyedContainer(forKey key: K) throws -> any UnkeyedDecodingContainer {
        try ValueDecoder(value: member(key), path: codingPath + [key]).unkeyedContainer()
    }
    func superDecoder() throws -> any Decoder {
        ValueDecoder(value: members["super"] ?? .null, path: codingPath + [JSONKey(stringValue: "super")])
    }
    func superDecoder(forKey key: K) throws -> any Decoder {
        ValueDecoder(value: members[key.stringValue] ?? .null, path: codingPath + [key])
    }
}

private struct UnkeyedDecoder: UnkeyedDecodingContainer {
    let items: [JSON.Value]
    var codingPath: [any CodingKey]
    var currentIndex = 0
    var count: Int? { items.count }
    var isAtEnd: Bool { currentIndex >= items.count }

    init(items: [JSON.Value], codingPath: [any CodingKey]) {
        self.items = items
        self.codingPath = codingPath
    }

    mutating func next() throws -> (JSON.Value, [any CodingKey]) {
        guard !isAtEnd else {
            throw JSON.Failure("array at \(JSON.describe(codingPath)) has only \(items.count) elements")
        }
        defer { currentIndex += 1 }
        return (items[currentIndex], codingPath + [JSONKey(intValue: currentIndex)])
    }
    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd, case .null = items[currentIndex] else { return false }
        currentIndex += 1
        return true
    }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let (value, path) = try next()
        return try decodeValue(type, from: value, path: path)
    }
    mutating func nestedContainer<N: CodingKey>(keyedBy type: N.Type) throws -> KeyedDecodingContainer<N> {
        let (value, path) = try next()
        return try ValueDecoder(value: value, path: path).container(keyedBy: type)
    }
    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let (value, path) = try next()
        return try ValueDecoder(value: value, path: path).unkeyedContainer()
    }
    mutating func superDecoder() throws -> any Decoder {
        let (value, path) = try next()
        return ValueDecoder(value: value, path: path)
    }
}

private struct SingleDecoder: SingleValueDecodingContainer {
    let value: JSON.Value
    var codingPath: [any CodingKey]

    func decodeNil() -> Bool {
        if case .null = value { return true }
        return false
    }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try decodeValue(type, from: value, path: codingPath) }
}
