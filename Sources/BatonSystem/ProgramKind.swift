/// What kind of program an executable is, from its ELF headers: whether it is written in Go.
///
/// A Go program makes its own system calls instead of calling the C library's, so `libbaton-adopt.so` (which an
/// `LD_PRELOAD` still loads into a Go program linked with cgo) sees none of its sockets, and its signals would only
/// delay the stop signal; Go's runtime also catches every signal, so `SigCgt:` cannot tell.
public enum ProgramKind {
    /// Whether the ELF file that `read(offset, count)` reads has the note Go's linker writes (`.note.go.buildid`:
    /// owner "Go", type 4, `GO BUILDID`) in one of its `PT_NOTE` segments. Only 64-bit little-endian ELF is looked at; anything
    /// else, or a short or inconsistent file, is not Go.
    public static func isGo(read: (_ offset: Int, _ count: Int) -> [UInt8]) -> Bool {
        let header = read(0, 64)
        guard header.count == 64, header.starts(with: [0x7f, 0x45, 0x4c, 0x46, 2, 1]) else { return false }
        let phoff = Int(truncatingIfNeeded: integer(header, at: 0x20, size: 8))
        let phentsize = Int(integer(header, at: 0x36, size: 2))
        let phnum = Int(integer(header, at: 0x38, size: 2))
        guard phentsize >= 56, phnum > 0, phnum <= 128, phoff > 0, phoff < 1 << 30 else { return false }
        let table = read(phoff, phentsize * phnum)
        guard table.count == phentsize * phnum else { return false }
        for index in 0..<phnum {
            let entry = index * phentsize
            guard integer(table, at: entry, size: 4) == 4 else { continue }  // PT_NOTE
            let offset = integer(table, at: entry + 8, size: 8)
            let size = integer(table, at: entry + 32, size: 8)
            guard offset < 1 << 40, size <= 1 << 16 else { continue }
            if hasGoNote(read(Int(offset), Int(size))) { return true }
        }
        return false
    }

    static func hasGoNote(_ notes: [UInt8]) -> Bool {
        var at = 0
        while at + 12 <= notes.count {
            let nameSize = Int(integer(notes, at: at, size: 4))
            let descriptionSize = Int(integer(notes, at: at + 4, size: 4))
            let type = integer(notes, at: at + 8, size: 4)
            let name = at + 12
            let description = name + (nameSize + 3) & ~3
            guard nameSize <= 256, descriptionSize <= 1 << 16, description <= notes.count else { return false }
            // Go's linker writes the name padded: "Go\0\0", size 4.
            if type == 4 && (nameSize == 3 || nameSize == 4) && notes[name..<name + 3].elementsEqual([0x47, 0x6f, 0]) {
                return true
            }
            at = description + (descriptionSize + 3) & ~3
        }
        return false
    }

    static func integer(_ bytes: [UInt8], at offset: Int, size: Int) -> UInt64 {
        guard offset >= 0, offset + size <= bytes.count else { return 0 }
        var value: UInt64 = 0
        for index in (0..<size).reversed() { value = value << 8 | UInt64(bytes[offset + index]) }
        return value
    }
}
