#!/usr/bin/env python3
"""Writes packaging/baton.order: the functions of the baton binary that run when it starts one generation, answers
status, reloads, answers status again and stops, for the linker to place next to each other
(packaging/release-build.sh; --symbol-ordering-file).

    python3 tools/order-file.py [BATON] [OUT]    # default: .build-deb/release/baton (unstripped), packaging/baton.order

It runs BATON under valgrind's callgrind (Debian's valgrind), which records every function that ran, with the app
of the bench (bench/tinyapp.c, compiled here with cc). A function missing from the file (renamed since) still links;
it is only placed among the rest, so an old file costs memory, never correctness: run this again after large
changes and commit the result.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def request(path, command):
    """One request on the control socket; the last line of the answer, decoded."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(path)
        s.sendall(json.dumps({"command": command}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n") or b'"kind":"progress"' in data.splitlines()[-1]:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data.splitlines()[-1])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    baton = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, ".build-deb/release/baton"))
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "packaging/baton.order")
    if not shutil.which("valgrind"):
        sys.exit("order-file: valgrind is not installed (apt-get install valgrind)")
    work = tempfile.mkdtemp(prefix="baton-order-")
    try:
        tiny = os.path.join(work, "tinyapp")
        subprocess.run(["cc", "-O2", "-o", tiny, os.path.join(ROOT, "bench/tinyapp.c")], check=True)
        # valgrind reads the symbol table, not the DWARF of lld's output: a copy without debug information.
        exe = os.path.join(work, "baton")
        subprocess.run(["strip", "--strip-debug", "-o", exe, baton], check=True)
        control, profile = os.path.join(work, "control.sock"), os.path.join(work, "callgrind.out")
        argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + profile, "--dump-instr=no",
                "--compress-strings=no", "--compress-pos=no", "--demangle=no", exe, "run", "--name", "order",
                "--control", control, "--workers", "1", "--ready", "fd", "--listen", f"127.0.0.1:{free_port()}",
                "--", tiny]
        log = open(os.path.join(work, "log"), "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while True:
            try:
                status = request(control, "status")
                if any(g["state"] == "serving" for g in status["status"]["generations"]):
                    break
            except (OSError, ValueError, KeyError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"order-file: baton did not start under valgrind (see {log.name})")
            time.sleep(0.1)
        for command in ("reload", "status"):
            reply = request(control, command)
            if reply.get("ok") is False:
                sys.exit(f"order-file: {command} failed under valgrind: {reply}")
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        names, current = set(), None
        with open(profile) as f:
            for line in f:
                if line.startswith("ob="):
                    current = line[3:].strip()
                elif line.startswith("fn=") and current == exe:
                    names.add(re.sub(r"'\d+$", "", line[3:].strip()))  # 'N: callgrind's recursion depth
        with open(out, "w") as f:
            f.write("".join(n + "\n" for n in sorted(names)))
        print(f"order-file: {len(names)} functions into {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
