/// Text that came from a worker (its `STATUS=`, its output, a failure reason with its stderr) made safe to show
/// on a terminal or in one log line: control characters cannot move the cursor, retitle the window or forge
/// lines.
public enum TerminalText {
    /// `text` with every control character written out as `\xHH` (C0 but tab, DEL) or `\u{HHHH}` (C1, and the
    /// bidirectional overrides that reorder what a terminal shows); everything else is kept.
    public static func sanitized(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: needsEscape) else { return text }
        var out = String.UnicodeScalarView()
        for scalar in text.unicodeScalars {
            if needsEscape(scalar) {
                let hex = String(scalar.value, radix: 16)
                let escaped = scalar.value < 0x80 ? "\\x" + (hex.count < 2 ? "0" + hex : hex) : "\\u{\(hex)}"
                out.append(contentsOf: escaped.unicodeScalars)
            } else {
                out.append(scalar)
            }
        }
        return String(out)
    }

    /// Whether `scalar` must not reach a terminal as is.
    static func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x09: false
        case 0x00...0x1f, 0x7f...0x9f: true
        // Bidirectional embeddings, overrides and isolates (the "Trojan Source" characters), and the line and
        // paragraph separators, which some terminals and log viewers break lines at.
        case 0x202a...0x202e, 0x2066...0x2069, 0x2028, 0x2029: true
        default: false
        }
    }
}
