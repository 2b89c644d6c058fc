#!/usr/bin/env python3
"""HTTP load client for baton's end-to-end tests and demo (standard library only).

Each of --clients threads owns one raw socket and speaks HTTP/1.1 by hand, so
every failure keeps its kind:
  refused   ECONNREFUSED on connect
  reset     ECONNRESET / EPIPE while sending or reading
  eof_idle  EOF with zero response bytes on a reused keep-alive connection
            (the server closed an idle connection we were about to use)
  eof_new   EOF with zero response bytes on a fresh connection
  eof_mid   EOF after part of the response
  timeout   no complete response within --timeout
  non2xx    a complete response with a status outside 2xx (also by status)
  other     anything else (up to 20 samples kept)
A "Connection: close" from the server is not a failure: the client just
reconnects for its next request.

Stops after --duration seconds or once --until-file exists (whichever comes
first); each client finishes its current request. If the file holds a
generation number G, each client first goes on until a response of its own
came from generation G (for at most 10 s more), so that "every client's last
response came from G" is a check, not a race. Then the JSON summary is
written to --json and a one-line summary to stderr. The first complete 2xx
response prints "loadgen: first response" on stderr (once), which tests wait for
before what the load must run across. Exit status is 0 unless the
tool could not run at all: the caller asserts on the JSON.

  python3 tools/loadgen.py --url http://127.0.0.1:8080/ --clients 16 \\
      --mode keepalive --slow-every 10 --slow-ms 500 --duration 10 --json out.json
"""
import argparse
import errno
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

FAILURE_KINDS = ["non2xx", "refused", "reset", "eof_idle", "eof_new", "eof_mid", "timeout", "other"]
GEN_RE = re.compile(rb"generation (\S+)")


class EOF(Exception):
    """The server closed the connection before the response was complete."""

    def __init__(self, got):
        super().__init__(f"EOF after {got} response bytes")
        self.got = got


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.got = 0  # response bytes received for the current request
        self.used = False  # has served a request before (i.e. is a reused keep-alive connection)

    def recv_more(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request timed out")
        self.sock.settimeout(left)
        data = self.sock.recv(65536)
        if not data:
            raise EOF(self.got)
        self.got += len(data)
        self.buf += data

    def read_until(self, sep, deadline):
        while (i := self.buf.find(sep)) < 0:
            self.recv_more(deadline)
        out = bytes(self.buf[:i])
        del self.buf[: i + len(sep)]
        return out

    def read_exact(self, n, deadline):
        while len(self.buf) < n:
            self.recv_more(deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_response(self, deadline):
        """Returns (status, body, keep_alive)."""
        while True:
            head = self.read_until(b"\r\n\r\n", deadline).decode("latin-1").split("\r\n")
            version, status = head[0].split(" ", 2)[:2]
            status = int(status)
            headers = {}
            for line in head[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            if not 100 <= status < 200:
                break  # skip interim 1xx responses
        conn_hdr = headers.get("connection", "").lower()
        keep_alive = "close" not in conn_hdr and (version == "HTTP/1.1" or "keep-alive" in conn_hdr)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                size = int(self.read_until(b"\r\n", deadline).split(b";")[0], 16)
                if size == 0:
                    while self.read_until(b"\r\n", deadline):  # trailers
                        pass
                    break
                body += self.read_exact(size, deadline)
                self.read_exact(2, deadline)
        elif "content-length" in headers:
            body = self.read_exact(int(headers["content-length"]), deadline)
        elif status in (204, 304):
            body = b""
        else:  # body runs until the server closes
            try:
                while True:
                    self.recv_more(deadline)
            except EOF:
                pass
            body, keep_alive = bytes(self.buf), False
            self.buf.clear()
        return status, body, keep_alive


def classify(exc, conn):
    if isinstance(exc, EOF):
        return "eof_mid" if exc.got else ("eof_idle" if conn is not None and conn.used else "eof_new")
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "reset"
    return "other"


FIRST = threading.Event()
FIRST_LOCK = threading.Lock()


def first_response():
    """Says "loadgen: first response" on stderr once, when the first 2xx response is complete: a test waits for
    that line to know the load is running before it starts what the load should be running across."""
    if FIRST.is_set():
        return
    with FIRST_LOCK:
        if not FIRST.is_set():
            FIRST.set()
            print("loadgen: first response", file=sys.stderr, flush=True)


class Client(threading.Thread):
    def __init__(self, idx, keepalive, args, target, stop):
        super().__init__(daemon=True)
        self.idx, self.keepalive, self.args, self.target, self.stop = idx, keepalive, args, target, stop
        self.finish_at = None  # a generation: stop once a response came from it (set by main)
        self.finish = threading.Event()
        self.counts = dict.fromkeys(["ok"] + FAILURE_KINDS, 0)
        self.by_status, self.generations, self.other_samples = {}, {}, []
        self.records = []  # (t_unix_ms, latency_ms, outcome)
        self.last_generation = None

    def connect(self, deadline):
        family, addr = self.target
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.connect(addr)
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        return Conn(sock)

    def run(self):
        a, conn, n = self.args, None, 0
        base = a.path + ("&" if "?" in a.path else "?")
        while not self.stop.is_set():
            if self.finish.is_set() and (self.finish_at is None or self.last_generation == self.finish_at):
                break
            n += 1
            slow = a.slow_every and n % a.slow_every == 0
            path = f"{base}sleep={a.slow_ms}" if slow else a.path
            req = f"GET {path} HTTP/1.1\r\nHost: {a.host}\r\nUser-Agent: baton-loadgen\r\n"
            req = (req + ("\r\n" if self.keepalive else "Connection: close\r\n\r\n")).encode()
            t0, t_unix = time.monotonic(), time.time()
            deadline = t0 + a.timeout
            try:
                if conn is None:
                    conn = self.connect(deadline)
                conn.got = 0
                conn.sock.settimeout(max(0.001, deadline - time.monotonic()))
                conn.sock.sendall(req)
                status, body, keep_alive = conn.read_response(deadline)
                conn.used = True
                if 200 <= status < 300:
                    outcome = "ok"
                    first_response()
                else:
                    outcome = "non2xx"
                    self.by_status[status] = self.by_status.get(status, 0) + 1
                m = GEN_RE.search(body)
                if m:
                    gen = m.group(1).decode("latin-1")
                    self.generations[gen] = self.generations.get(gen, 0) + 1
                    self.last_generation = gen
                if not (keep_alive and self.keepalive):
                    conn.sock.close()
                    conn = None
            except Exception as e:
                outcome = classify(e, conn)
                if outcome == "other" and len(self.other_samples) < 20:
                    self.other_samples.append(f"{type(e).__name__}: {e}")
                if conn is not None:
                    conn.sock.close()
                    conn = None
            latency = (time.monotonic() - t0) * 1000
            self.counts[outcome] += 1
            self.records.append((int(t_unix * 1000), round(latency, 3), outcome if outcome != "non2xx" else f"non2xx_{status}"))
            if outcome not in ("ok", "non2xx"):
                self.stop.wait(0.01)  # don't spin on a dead server
        if conn is not None:
            conn.sock.close()


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = max(0, math.ceil(p / 100 * len(sorted_vals)) - 1)  # nearest rank
    return round(sorted_vals[k], 3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="http://HOST:PORT/PATH (Host header and path come from here)")
    ap.add_argument("--unix", help="connect to this unix socket instead of HOST:PORT")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--mode", choices=["keepalive", "newconn", "mixed"], default="keepalive")
    ap.add_argument("--slow-every", type=int, default=0, help="every K-th request of a client asks ?sleep=SLOW_MS")
    ap.add_argument("--slow-ms", type=int, default=500)
    ap.add_argument("--duration", type=float, help="seconds to run")
    ap.add_argument("--until-file", help="run until this file exists (polled every 50 ms)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    ap.add_argument("--json", help="write the JSON summary here")
    ap.add_argument("--latency-csv", help="write t_unix_ms,latency_ms,outcome per request here")
    a = ap.parse_args()
    if a.duration is None and a.until_file is None:
        ap.error("give --duration and/or --until-file")

    u = urlsplit(a.url)
    if u.scheme != "http":
        ap.error("only http:// URLs are supported")
    a.host = u.netloc
    a.path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    if a.unix:
        target = (socket.AF_UNIX, a.unix)
    else:
        try:
            info = socket.getaddrinfo(u.hostname, u.port or 80, type=socket.SOCK_STREAM)[0]
        except OSError as e:
            sys.exit(f"loadgen: cannot resolve {u.hostname}: {e}")
        target = (info[0], info[4])

    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    clients = [Client(i, a.mode == "keepalive" or (a.mode == "mixed" and i % 2 == 0), a, target, stop)
               for i in range(a.clients)]
    start = time.monotonic()
    for c in clients:
        c.start()
    end = start + a.duration if a.duration is not None else None
    while not stop.is_set():
        if end is not None and time.monotonic() >= end:
            break
        if a.until_file and os.path.exists(a.until_file):
            with open(a.until_file) as f:
                wanted = f.read().strip() or None
            for c in clients:
                c.finish_at = wanted
                c.finish.set()
            # Clients that have not yet had a response from that generation get 10 s more.
            deadline = time.monotonic() + 10
            for c in clients:
                c.join(max(0, deadline - time.monotonic()))
            break
        stop.wait(0.05)
    stop.set()
    for c in clients:
        c.join()
    elapsed = time.monotonic() - start

    summary = dict.fromkeys(["ok"] + FAILURE_KINDS, 0)
    by_status, gens, finals, samples, records = {}, {}, {}, [], []
    for c in clients:
        for k, v in c.counts.items():
            summary[k] += v
        for k, v in c.by_status.items():
            by_status[str(k)] = by_status.get(str(k), 0) + v
        for k, v in c.generations.items():
            gens[k] = gens.get(k, 0) + v
        if c.last_generation is not None:
            finals[c.last_generation] = finals.get(c.last_generation, 0) + 1
        samples.extend(c.other_samples)
        records.extend(c.records)
    records.sort()
    lat = sorted(r[1] for r in records if r[2] == "ok")  # latency of successful requests
    summary.update(
        failed=sum(summary[k] for k in FAILURE_KINDS),
        requests=len(records),
        non2xx_by_status=by_status,
        other_samples=samples[:20],
        generations=gens,
        final_generations=finals,  # {generation: number of clients whose last response came from it}
        last_generation_seen=[c.last_generation for c in clients],  # per client
        p50_ms=percentile(lat, 50),
        p99_ms=percentile(lat, 99),
        max_ms=lat[-1] if lat else None,
        elapsed_s=round(elapsed, 3),
        rps=round(len(records) / elapsed, 1) if elapsed > 0 else 0,
        clients=a.clients,
        mode=a.mode,
    )
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(a.json + ".tmp", a.json)  # readers never see a half-written file
    if a.latency_csv:
        with open(a.latency_csv, "w") as f:
            f.write("t_unix_ms,latency_ms,outcome\n")
            f.writelines(f"{t},{l},{o}\n" for t, l, o in records)
    fails = " ".join(f"{k}={summary[k]}" for k in FAILURE_KINDS if summary[k])
    print(f"loadgen: {summary['requests']} requests in {elapsed:.1f}s ({summary['rps']}/s), ok={summary['ok']} "
          f"failed={summary['failed']}{' (' + fails + ')' if fails else ''} p50={summary['p50_ms']}ms "
          f"p99={summary['p99_ms']}ms generations={gens} final={finals}", file=sys.stderr)


if __name__ == "__main__":
    main()
