#!/usr/bin/env python3
"""Holds N idle keep-alive connections across a reload, then checks what became of each one.

    holder.py --port 8080 --conns 10000 --ready-file R --check-file C --json out.json

1. Opens N connections (in batches, so as not to overflow the listen backlog) and sends one request on
   each; every connection that got its 200 counts as "held".
2. Touches --ready-file, then leaves them all idle until --check-file exists (the bench reloads meanwhile).
3. For each held connection, first looks whether the server has closed it while it was idle:
     closed_idle  a FIN arrived while idle: a clean close that any client sees before reusing the
                  connection (HTTP clients then reconnect); not a failure
     reset_idle   an RST arrived while idle (failure)
   Otherwise it sends a request on it and reads the answer:
     ok           a 200 (also one that carries Connection: close: the clean way to say goodbye)
     non2xx, eof (the server closed it as the request went out: the race every launcher should avoid),
     reset, timeout  (failures)
   Every connection closed while idle is then replaced by a new one with one request: reconnect_ok or
   reconnect_<kind> (refused, reset, eof, timeout, non2xx: failures).
Standard library only, one thread, non-blocking sockets and a selector.
"""
import argparse
import errno
import json
import os
import selectors
import socket
import time

REQ = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: baton-bench-holder\r\n\r\n"


def parse(buf):
    """Returns (status, close) once a full response is in buf, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1").lower().split("\r\n")
    status = int(head[0].split()[1])
    length, close = 0, False
    for line in head[1:]:
        k, _, v = line.partition(":")
        if k.strip() == "content-length":
            length = int(v)
        elif k.strip() == "connection" and "close" in v:
            close = True
    if len(buf) < end + 4 + length:
        return None
    return status, close


def exchange(socks, timeout, connect_to=None):
    """Sends REQ on every socket (connecting first if connect_to is given) and reads the response.
    Returns {sock: outcome}, outcome one of ok, ok_close, non2xx, refused, reset, eof, timeout."""
    sel = selectors.DefaultSelector()
    state = {}
    out = {}
    for s in socks:
        if connect_to is not None:
            err = s.connect_ex(connect_to)
            if err not in (0, errno.EINPROGRESS):
                out[s] = "refused" if err == errno.ECONNREFUSED else "reset"
                continue
            state[s] = ["connect", b""]
            sel.register(s, selectors.EVENT_WRITE)
        else:
            try:
                s.send(REQ)
            except OSError as e:
                out[s] = "reset" if e.errno in (errno.ECONNRESET, errno.EPIPE) else "eof"
                continue
            state[s] = ["read", b""]
            sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while state:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for key, _ in sel.select(min(left, 1.0)):
            s = key.fileobj
            st = state[s]
            try:
                if st[0] == "connect":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    s.send(REQ)
                    st[0] = "read"
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                data = s.recv(65536)
                if not data:
                    raise EOFError
                st[1] += data
                r = parse(st[1])
                if r is None:
                    continue
                out[s] = ("ok_close" if r[1] else "ok") if 200 <= r[0] < 300 else "non2xx"
            except EOFError:
                out[s] = "eof"
            except OSError as e:
                out[s] = {errno.ECONNREFUSED: "refused", errno.ECONNRESET: "reset", errno.EPIPE: "reset"}.get(e.errno, "reset")
            sel.unregister(s)
            del state[s]
    for s in state:
        out[s] = "timeout"
    sel.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--timeout", type=float, default=15)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--check-file", required=True)
    ap.add_argument("--max-wait", type=float, default=300)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    addr = (a.host, a.port)
    counts = {}

    def count(k):
        counts[k] = counts.get(k, 0) + 1

    t0 = time.time()
    held = []
    for i in range(0, a.conns, a.batch):
        batch = []
        for _ in range(min(a.batch, a.conns - i)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            batch.append(s)
        for s, outcome in exchange(batch, a.timeout, connect_to=addr).items():
            if outcome in ("ok", "ok_close"):
                if outcome == "ok":
                    held.append(s)
                else:
                    s.close()
                    count("open_" + outcome)
            else:
                count("open_" + outcome)
                s.close()
    open_s = time.time() - t0
    with open(a.ready_file, "w") as f:
        f.write(str(len(held)))
    end = time.monotonic() + a.max_wait
    while not os.path.exists(a.check_file) and time.monotonic() < end:
        time.sleep(0.05)

    t1 = time.time()
    alive, closed = [], []
    for s in held:
        try:
            data = s.recv(65536)  # non-blocking: anything there arrived while the connection was idle
            if data:
                count("unexpected_data")
                s.close()
            else:
                count("closed_idle")
                closed.append(s)
        except BlockingIOError:
            alive.append(s)
        except OSError as e:
            count("reset_idle" if e.errno == errno.ECONNRESET else "error_idle")
            s.close()
    for i in range(0, len(alive), a.batch):
        for s, outcome in exchange(alive[i:i + a.batch], a.timeout).items():
            count(outcome)
            s.close()
    for s in closed:
        s.close()
    for i in range(0, len(closed), a.batch):
        batch = []
        for _ in range(min(a.batch, len(closed) - i)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            batch.append(s)
        for s, outcome in exchange(batch, a.timeout, connect_to=addr).items():
            count("reconnect_" + outcome)
            s.close()
    ok_kinds = {"ok", "ok_close", "closed_idle", "reconnect_ok", "reconnect_ok_close"}
    summary = {
        "conns": a.conns,
        "held": len(held),
        "counts": counts,
        "failed": sum(v for k, v in counts.items() if k not in ok_kinds and not k.startswith("open_")),
        "failed_opening": sum(v for k, v in counts.items() if k.startswith("open_") and k != "open_ok_close"),
        "open_seconds": round(open_s, 2),
        "check_seconds": round(time.time() - t1, 2),
    }
    with open(a.json, "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
