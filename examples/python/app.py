#!/usr/bin/env python3
"""Example HTTP app for baton (Python 3 standard library only).

What an app has to do to get zero-downtime reloads under baton:
  1. Serve on the listening sockets baton hands over (fd 3, 4, ...; how many is
     in LISTEN_FDS) instead of binding a port itself.
  2. Say when it is ready: "READY=1" as a datagram to NOTIFY_SOCKET
     (`--ready notify`, systemd's sd_notify protocol) or as a line to the fd in
     BATON_NOTIFY_FD (`--ready fd`). `--ready listen` needs neither.
  3. On SIGTERM, drain: tell keep-alive clients to go away, finish requests in
     flight, then exit 0. The listening socket stays open in baton and in the
     new generation, so no connection is refused while this process leaves.

Run alone:    PORT=8080 python3 app.py
Under baton:  baton run --listen :8080 --ready notify --workers 2 -- python3 app.py

Environment knobs (all optional): APP_VERSION (default 1.0), WORK_MS (extra
time per request), STARTUP_MS (delay before listening), APP_BREAK=start|hang
(fail at startup / never become ready), DRAIN_GRACE_MS (default 1000),
DRAIN_DEADLINE_MS (default 10000). A request can ask to be slow: GET /?sleep=500
"""
import os
import re
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

env = os.environ
GENERATION = env.get("BATON_GENERATION", "0")
WORKER = env.get("BATON_WORKER", "0")
VERSION = env.get("APP_VERSION", "1.0")


def ms(name, default):
    try:
        return int(env[name]) / 1000
    except (KeyError, ValueError):
        return default / 1000


WORK, STARTUP = ms("WORK_MS", 0), ms("STARTUP_MS", 0)
GRACE, DEADLINE = ms("DRAIN_GRACE_MS", 1000), ms("DRAIN_DEADLINE_MS", 10000)


def log(msg):
    print(f"[app pid {os.getpid()} gen {GENERATION} worker {WORKER}] {msg}", flush=True)


def notify(msg):
    """Send a status message ("READY=1", "STOPPING=1") to baton, if it asked for one."""
    try:
        if env.get("NOTIFY_SOCKET"):
            addr = env["NOTIFY_SOCKET"]
            if addr.startswith("@"):  # abstract socket address
                addr = "\0" + addr[1:]
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(msg.encode(), addr)
        elif env.get("BATON_NOTIFY_FD"):
            os.write(int(env["BATON_NOTIFY_FD"]), (msg + "\n").encode())
    except OSError as e:
        print(f"could not notify baton: {e}", file=sys.stderr, flush=True)


# Connection bookkeeping for the drain: connection -> [requests in flight, idle since]
conns = {}
lock = threading.Lock()
draining = False  # SIGTERM received: answer with Connection: close


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def setup(self):
        super().setup()
        if self.connection.family != socket.AF_UNIX:
            # Headers and body go out in two writes; without TCP_NODELAY, Nagle's
            # algorithm and delayed ACKs add ~40 ms to every keep-alive request.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with lock:
            conns[self.connection] = [0, time.monotonic()]

    def finish(self):
        super().finish()
        with lock:
            conns.pop(self.connection, None)

    def do_GET(self):
        st = conns[self.connection]
        with lock:
            st[0] += 1
        try:
            m = re.search(r"[?&]sleep=(\d+)", self.path)
            time.sleep(WORK + (int(m.group(1)) / 1000 if m else 0))
            body = f"hello from generation {GENERATION} worker {WORKER} pid {os.getpid()} version {VERSION}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            if draining:  # checked at response time, so slow requests started before SIGTERM get it too
                self.send_header("Connection", "close")  # also makes us close after this response
            self.end_headers()
            self.wfile.write(body)
        finally:
            with lock:
                st[0] -= 1
                st[1] = time.monotonic()

    def log_message(self, *args):  # no per-request log lines
        pass


def make_servers():
    if "LISTEN_FDS" not in env:
        socks = [socket.create_server(("", int(env.get("PORT", 8080))))]
    else:
        # LISTEN_PID says whom the fds are meant for; if it is not us, something
        # forked between baton and python (a shell wrapper?): exec python directly.
        if env.get("LISTEN_PID", str(os.getpid())) != str(os.getpid()):
            sys.exit(f"LISTEN_PID={env['LISTEN_PID']} but our pid is {os.getpid()}; start python directly")
        socks = [socket.socket(fileno=3 + i) for i in range(int(env["LISTEN_FDS"]))]
    servers = []
    for sock in socks:
        # Non-blocking accept: the listening socket is shared with the other
        # generation, which may take a connection we were woken up for. A
        # blocking accept() would then hang, and shutdown() with it.
        sock.setblocking(False)
        srv = ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
        srv.socket.close()
        srv.socket = sock
        servers.append(srv)
    return servers


def drain(servers, signame):
    """Why not just stop and close everything? An idle keep-alive connection can
    be closed at the very moment its client sends the next request on it; the
    client gets a reset or empty reply and cannot tell whether to retry. So:
      1. for GRACE keep serving, every response saying "Connection: close", so
         active keep-alive clients hang up and reconnect (to the new generation,
         which shares the listening socket);
      2. then stop accepting, and close a connection only once it has had
         nothing in flight for GRACE; requests in flight finish;
      3. exit 0 when no connection is left, or at DEADLINE at the latest."""
    global draining
    draining = True
    log(f"{signame}: draining {len(conns)} connections (grace {GRACE}s, deadline {DEADLINE}s)")
    notify("STOPPING=1")
    deadline = time.monotonic() + DEADLINE
    time.sleep(min(GRACE, DEADLINE))
    for srv in servers:
        srv.shutdown()  # stop the accept loop
        srv.server_close()  # close our copy of the listening socket
    while conns and time.monotonic() < deadline:
        with lock:
            for conn, (in_flight, idle_since) in conns.items():
                if in_flight == 0 and time.monotonic() - idle_since >= GRACE:
                    try:
                        # SHUT_RD wakes the handler waiting for the next request
                        # (it sees EOF and closes) but still lets it answer a
                        # request that has just been read.
                        conn.shutdown(socket.SHUT_RD)
                    except OSError:
                        pass
        time.sleep(0.05)
    log("drained, exiting" if not conns else f"drain deadline reached, exiting with {len(conns)} connections open")
    sys.exit(0)


def main():
    if env.get("APP_BREAK") == "start":
        sys.exit("APP_BREAK=start: failing at startup on purpose")
    if env.get("APP_BREAK") == "hang":
        log("APP_BREAK=hang: never listening, never ready")
        while True:
            time.sleep(3600)
    time.sleep(STARTUP)
    servers = make_servers()
    # Block SIGTERM/SIGINT in every thread; the main thread waits for them below.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    names = env.get("LISTEN_FDNAMES", "").split(":")
    for i, srv in enumerate(servers):
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        if "LISTEN_FDS" in env:
            log(f"listening on fd {3 + i} ({names[i] if i < len(names) and names[i] else 'unnamed'})")
        else:
            log(f"listening on port {srv.server_address[1]}")
    notify("READY=1")
    sig = signal.sigwait({signal.SIGTERM, signal.SIGINT})
    drain(servers, signal.Signals(sig).name)


if __name__ == "__main__":
    main()
