#!/usr/bin/env python3
"""Peer "naive": restart by stopping the app and starting it again (what `systemctl restart` does for a
service that binds its own port).

    naive.py --port 8080 -- node examples/node/app.js

Runs the command with PORT=8080 so that the app binds the port itself. On SIGHUP: SIGTERM the app, wait
for it to exit (it drains for its DRAIN_GRACE_MS, then closes the listener), start it again, and wait
until the port accepts connections again (the reload is "done" then: like Type=notify, nothing later).
Each finished reload appends {"event": "reloaded", "start": t, "end": t} (unix seconds) to the file in
$BENCH_EVENTS. SIGTERM stops the app and exits.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--stop-timeout", type=float, default=30)
    ap.add_argument("command", nargs="+")
    a = ap.parse_args()
    env = dict(os.environ, PORT=str(a.port))
    events = os.environ.get("BENCH_EVENTS")

    def start():
        return subprocess.Popen(a.command, env=env)

    def wait_listening(proc):
        while proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", a.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.005)

    def stop(proc):
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(a.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    pending = []
    signal.signal(signal.SIGHUP, lambda *_: pending.append("reload"))
    signal.signal(signal.SIGTERM, lambda *_: pending.append("stop"))
    proc = start()
    wait_listening(proc)
    while True:
        if not pending:
            time.sleep(0.005)
            if proc.poll() is not None:
                sys.exit(f"naive: app exited with {proc.returncode}")
            continue
        what = pending.pop(0)
        if what == "stop":
            stop(proc)
            return
        t0 = time.time()
        stop(proc)
        proc = start()
        wait_listening(proc)
        if events:
            with open(events, "a") as f:
                f.write(json.dumps({"event": "reloaded", "start": t0, "end": time.time()}) + "\n")


if __name__ == "__main__":
    main()
