"""Where a process's resident memory is: file pages against anonymous ones, per mapped file, and for the
executable itself per ELF section (which parts of the binary were paged in).

/proc/PID/smaps gives, per mapping, Rss and Anonymous (the pages that are the process's own: heap, stacks, and
the copy-on-write copies of a file's writable pages, such as relocated data); the rest of a file mapping's Rss
are page-cache pages of the file. The per-section split reads /proc/PID/pagemap (bit 63: the page is present;
bit 61: it is a file page, not a private copy), whose flags any process of the same user may read.

    python3 bench/memory.py PID     # prints the breakdown of a running process
"""
import os
import re
import struct
import sys

PAGE = os.sysconf("SC_PAGE_SIZE")


def mappings(pid):
    """[(start, end, offset, path, {field: KiB})] from /proc/PID/smaps; path is '' for an anonymous mapping."""
    out = []
    head = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) ([0-9a-f]+) \S+ \d+\s*(.*)$")
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = head.match(line)
            if m:
                cur = (int(m.group(1), 16), int(m.group(2), 16), int(m.group(4), 16), m.group(5).strip(), {})
                out.append(cur)
                continue
            m = re.match(r"(\w+):\s+(\d+) kB", line)
            if m and cur:
                cur[4][m.group(1)] = int(m.group(2))
    return out


def by_mapping(pid):
    """{name: {"file": KiB, "anon": KiB}}: file pages and anonymous pages per mapped file; anonymous mappings
    count under [anon] (or [heap], [stack], ...)."""
    out = {}
    for _, _, _, path, f in mappings(pid):
        name = os.path.basename(path) if path.startswith("/") else (path or "[anon]")
        e = out.setdefault(name, {"file": 0, "anon": 0})
        anon = f.get("Anonymous", 0)
        e["anon"] += anon
        e["file"] += f.get("Rss", 0) - anon
    return {k: v for k, v in out.items() if v["file"] or v["anon"]}


def elf_sections(path):
    """[(name, file offset, size)] of an ELF64 file's allocated sections (SHF_ALLOC) that are in the file."""
    with open(path, "rb") as f:
        data = f.read(64)
        if data[:4] != b"\x7fELF" or data[4] != 2:
            return []
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        f.seek(shoff)
        raw = f.read(shentsize * shnum)
        hdrs = [struct.unpack_from("<IIQQQQIIQQ", raw, i * shentsize) for i in range(shnum)]
        f.seek(hdrs[shstrndx][4])
        names = f.read(hdrs[shstrndx][5])
    out = []
    for name, kind, flags, _, off, size, *_ in hdrs:
        if flags & 2 and kind != 8 and size:  # SHF_ALLOC, not SHT_NOBITS
            out.append((names[name:names.index(b"\0", name)].decode(), off, size))
    return out


def by_section(pid, path=None):
    """{section: {"file": KiB, "anon": KiB}} for the executable (or path): its resident pages, by the
    section they hold (a page shared by two sections counts for the first). None if it cannot be read."""
    path = path or os.readlink(f"/proc/{pid}/exe")
    secs = sorted(elf_sections(path), key=lambda s: s[1])
    if not secs:
        return None
    page_of = {}  # file page index -> section
    for name, off, size in secs:
        for p in range(off // PAGE, (off + size - 1) // PAGE + 1):
            page_of.setdefault(p, name)
    out = {}
    try:
        pm = open(f"/proc/{pid}/pagemap", "rb")
    except OSError:
        return None
    with pm:
        real = os.path.realpath(path)
        for start, end, offset, mpath, f in mappings(pid):
            if not mpath.startswith("/") or os.path.realpath(mpath.replace(" (deleted)", "")) != real:
                continue
            n = (end - start) // PAGE
            pm.seek(start // PAGE * 8)
            entries = struct.unpack(f"<{n}Q", pm.read(n * 8))
            for i, e in enumerate(entries):
                if e & (1 << 63):
                    sec = page_of.get(offset // PAGE + i, "(between sections)")
                    # bit 61: file-page or shared-anon; a present page without it is a private (anonymous) copy.
                    kind = "file" if e & (1 << 61) else "anon"
                    d = out.setdefault(sec, {"file": 0, "anon": 0})
                    d[kind] += PAGE // 1024
    return out


def breakdown(pid):
    """What the bench records: VmRSS split (status), per mapping, and per section of the executable."""
    with open(f"/proc/{pid}/status") as f:
        st = dict(re.findall(r"^(Rss\w+|VmRSS):\s+(\d+) kB", f.read(), re.M))
    out = {"rss_kib": int(st.get("VmRSS", 0)), "rss_file_kib": int(st.get("RssFile", 0)),
           "rss_anon_kib": int(st.get("RssAnon", 0)), "rss_shmem_kib": int(st.get("RssShmem", 0)),
           "by_mapping": by_mapping(pid)}
    try:
        secs = by_section(pid)
    except OSError:
        secs = None
    if secs is not None:
        out["exe_by_section"] = secs
    return out


def render(b, top=12):
    """Lines of text: the split, the mappings and the sections, largest first."""
    lines = [f"VmRSS {b['rss_kib']} KiB: file {b['rss_file_kib']}, anonymous {b['rss_anon_kib']}, "
             f"shmem {b['rss_shmem_kib']}"]
    for title, key in (("mapping", "by_mapping"), ("section of the executable", "exe_by_section")):
        rows = sorted((b.get(key) or {}).items(), key=lambda kv: -(kv[1]["file"] + kv[1]["anon"]))
        if not rows:
            continue
        lines.append(f"  {title:<28} {'file KiB':>9} {'anon KiB':>9}")
        for name, v in rows[:top]:
            lines.append(f"  {name[:28]:<28} {v['file']:>9} {v['anon']:>9}")
        rest = rows[top:]
        if rest:
            lines.append(f"  {'(' + str(len(rest)) + ' more)':<28} {sum(v['file'] for _, v in rest):>9} "
                         f"{sum(v['anon'] for _, v in rest):>9}")
    return lines


if __name__ == "__main__":
    print("\n".join(render(breakdown(int(sys.argv[1])), top=40)))
