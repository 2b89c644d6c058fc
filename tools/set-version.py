#!/usr/bin/env python3
"""Rewrites the version a built baton binary reports, in place: set-version.py BINARY OLD NEW.

The version lives in one fixed-size record, "baton-version:" + version padded with NULs to 64 bytes, in the
binary's .baton_version section (Sources/CBatonSystem/version.c). The record must appear exactly once, with
OLD in it; NEW must fit. Tests/system/upgrade-tests.sh makes "the next baton" this way, from the package
under test, instead of building baton a second time.
"""
import sys

PREFIX = b"baton-version:"
SIZE = 64


def main(argv):
    if len(argv) != 4:
        sys.exit("usage: set-version.py BINARY OLD NEW")
    path, old, new = argv[1], argv[2].encode(), argv[3].encode()
    if not new or len(PREFIX) + len(new) >= SIZE or b"\0" in new:
        sys.exit(f"set-version.py: the new version {argv[3]!r} must be 1 to {SIZE - len(PREFIX) - 1} bytes")
    with open(path, "r+b") as f:
        data = f.read()
        record = PREFIX + old + b"\0"
        at = data.find(record)
        if at < 0 or data.find(PREFIX, at + 1) >= 0 or data.find(PREFIX) != at:
            sys.exit(f"set-version.py: {path} does not hold exactly one record {record!r}: is it baton {argv[2]}?")
        if data[at + len(record) : at + SIZE].strip(b"\0"):
            sys.exit(f"set-version.py: the record in {path} is not {SIZE} bytes padded with NULs")
        f.seek(at)
        f.write((PREFIX + new).ljust(SIZE, b"\0"))


if __name__ == "__main__":
    main(sys.argv)
