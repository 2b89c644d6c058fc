#!/usr/bin/env python3
"""Peer "reuseport": hand over with SO_REUSEPORT, the way nginx-style launchers and many blog posts do it.

    reuseport.py --port 8080 --workers 1 -- node examples/node/app.js

Node 20's net.Server has no reusePort option, so this small launcher binds for the app: for every worker
it opens its own socket with SO_REUSEADDR + SO_REUSEPORT and binds 127.0.0.1:PORT, but does not listen():
it starts the app with that socket at fd 3 and LISTEN_FDS=1, and examples/node/app.js calls listen() on
fd 3 when it is ready (node's server.listen({fd}) does), which is the moment the socket joins the port's
reuseport group, as if the app had bound it with SO_REUSEPORT itself. (A socket that listened from the
start would get its share of new connections while the app is still starting up, and they would wait
for it.) No LISTEN_PID, which the app checks only when set. The launcher keeps no copy of the socket: the
app owns it, so when the app closes its listener the socket is really gone. The kernel spreads new
connections over all sockets listening on the port.

Readiness: the app's own `READY=1` line on the pipe in BATON_NOTIFY_FD (fd 4), which the example app
writes once it listens; a launcher without it would have to poll.

On SIGHUP (all at once): new sockets + new workers; once all are ready, SIGTERM the old workers (the app
keeps serving for DRAIN_GRACE_MS with Connection: close, then closes its listener and drains); done once
they have exited. Connections that the kernel had already queued on an old socket but the old app had not
accepted yet when it closed the listener are reset: that is the known weak spot of this handover (Linux
can migrate them with net.ipv4.tcp_migrate_req=1, off by default; this launcher leaves it as it is).
Each finished reload appends {"event":"reloaded","start":t,"end":t} to the file in $BENCH_EVENTS.
SIGTERM stops the workers and exits.
"""
import argparse
import json
import os
import select
import signal
import socket
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--ready-timeout", type=float, default=30)
    ap.add_argument("command", nargs="+")
    a = ap.parse_args()
    events = os.environ.get("BENCH_EVENTS")

    def spawn():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", a.port))  # no listen(): the app listens when it is ready
        r, w = os.pipe()
        env = dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES="reuseport", BATON_NOTIFY_FD="4")
        env.pop("LISTEN_PID", None)
        actions = [(os.POSIX_SPAWN_DUP2, s.fileno(), 3), (os.POSIX_SPAWN_DUP2, w, 4)]
        pid = os.posix_spawnp(a.command[0], a.command, env, file_actions=actions)
        s.close()  # the app's socket now, not ours
        os.close(w)
        return pid, r

    def wait_ready(workers):
        deadline = time.monotonic() + a.ready_timeout
        pending = {r: pid for pid, r in workers}
        buf = {r: b"" for r in pending}
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                sys.exit("reuseport: a worker missed the ready timeout")
            for r in select.select(list(pending), [], [], left)[0]:
                data = os.read(r, 256)
                buf[r] += data
                if b"READY=1" in buf[r] or not data:
                    if not data:
                        sys.exit("reuseport: a worker exited before it was ready")
                    del pending[r]
        # Keep reading the pipes? The app writes once more (STOPPING=1) when it drains; a closed read end
        # would give it EPIPE, which it logs and ignores. Close them.
        for _, r in workers:
            os.close(r)

    def stop(pids):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in pids:
            os.waitpid(pid, 0)

    pending = []
    signal.signal(signal.SIGHUP, lambda *_: pending.append("reload"))
    signal.signal(signal.SIGTERM, lambda *_: pending.append("stop"))
    current = [spawn() for _ in range(a.workers)]
    wait_ready(current)
    current = [pid for pid, _ in current]
    while True:
        if not pending:
            time.sleep(0.005)
            continue
        what = pending.pop(0)
        if what == "stop":
            stop(current)
            return
        t0 = time.time()
        fresh = [spawn() for _ in range(a.workers)]
        wait_ready(fresh)
        stop(current)
        current = [pid for pid, _ in fresh]
        if events:
            with open(events, "a") as f:
                f.write(json.dumps({"event": "reloaded", "start": t0, "end": time.time()}) + "\n")


if __name__ == "__main__":
    main()
