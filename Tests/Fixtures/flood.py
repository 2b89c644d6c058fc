#!/usr/bin/env python3
"""Floods for baton's hardening tests; each stops by itself.

  flood.py notify ADDRESS SECONDS       send junk notify datagrams to ADDRESS (an abstract '@...' name) as fast as possible
  flood.py status SECONDS               as a worker: READY=1, then STATUS= datagrams to NOTIFY_SOCKET as fast as possible,
                                        then serve nothing and wait
  flood.py output BYTES                 as a worker: READY=1 on BATON_NOTIFY_FD, write BYTES to stdout at once, then
                                        write a line a millisecond for ever
  flood.py bigstatus BYTES              as a worker: READY=1 and a STATUS= of BYTES to NOTIFY_SOCKET, then wait
  flood.py stderr LINES LENGTH          as a worker: write LINES lines of LENGTH to stderr, then exit 1
"""
import os, socket, sys, time

def address(text):
    return "\0" + text[1:] if text.startswith("@") else text

def notify_socket():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.connect(address(os.environ["NOTIFY_SOCKET"]))
    return s

kind = sys.argv[1]
if kind == "notify":
    target, seconds = address(sys.argv[2]), float(sys.argv[3])
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.setblocking(False)
    end = time.monotonic() + seconds
    sent = 0
    payload = b"STATUS=" + b"x" * 2000
    while time.monotonic() < end:
        try:
            s.sendto(payload, target)
            sent += 1
        except (BlockingIOError, ConnectionRefusedError):
            time.sleep(0.0001)
    print(sent)
elif kind == "status":
    seconds = float(sys.argv[2])
    s = notify_socket()
    s.send(b"READY=1")
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        try:
            s.send(b"STATUS=busy %d" % n + b" " * 400)
            n += 1
        except BlockingIOError:
            pass
    print(f"sent {n}", flush=True)
    time.sleep(3600)
elif kind == "output":
    os.write(int(os.environ["BATON_NOTIFY_FD"]), b"READY=1\n")
    data = (b"y" * 99 + b"\n") * (int(sys.argv[2]) // 100)
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    while True:
        sys.stdout.buffer.write(b"still writing\n" * 100)
        sys.stdout.flush()
elif kind == "bigstatus":
    s = notify_socket()
    s.send(b"READY=1\nSTATUS=" + b"s" * int(sys.argv[2]))
    time.sleep(3600)
elif kind == "stderr":
    lines, length = int(sys.argv[2]), int(sys.argv[3])
    for i in range(lines):
        sys.stderr.write(f"line {i:02d} " + "e" * length + "\n")
    sys.stderr.flush()
    sys.exit(1)
