"""The launchers under test, the peers: the bare app, baton, and the alternatives of bench/peers/. Each starts,
reloads (blocking until done) and stops."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from procs import APPTIMING, NODE, NODE_APP, PEERS, Spawned, kill_pids, log


class Peer:
    """One launcher under test. start() returns once it serves; reload() blocks until done and returns
    {"start": unix s, "end": unix s, ...}."""
    reloads = True
    node_based = True

    def __init__(self, name, label):
        self.name, self.label = name, label
        self.proc = None

    def events_wait(self, since_lines, pred, timeout=120):
        """Polls the events file every 2 ms until pred(new events) holds; returns the new events."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            new = self.read_events()[since_lines:]
            if new and pred(new):
                return new
            if not self.proc.alive():
                raise RuntimeError(f"{self.name} exited (see {self.proc.logpath})")
            time.sleep(0.002)
        raise RuntimeError(f"{self.name}: timed out waiting for an event")

    def read_events(self):
        try:
            with open(self.events) as f:
                return [json.loads(line) for line in f if line.endswith("\n")]
        except FileNotFoundError:
            return []

    def stop(self):
        if self.proc:
            self.proc.stop()

    def monitored_pid(self):
        return None

    def wait_retired(self, timeout=60):
        """Returns once the workers a reload replaced have exited. The peers' reload() ends then already; baton's
        ends once the new generation serves, and the old one drains after it."""


class Bare(Peer):
    reloads = False

    def start(self, case):
        env = dict(case.env, PORT=str(case.port))
        self.proc = Spawned([NODE, NODE_APP], env, case.path("launcher.log"))


class Baton(Peer):
    def __init__(self, name, label, baton, strategy="all-at-once", reloads=True, ready="fd"):
        super().__init__(name, label)
        self.baton, self.strategy, self.reloads, self.ready = baton, strategy, reloads, ready

    def start(self, case):
        self.control = case.path("control.sock")
        self.timing = case.path("apptiming.jsonl")
        env = dict(case.env, BENCH_APPTIMING=self.timing)
        argv = [self.baton, "run", "--name", "bench", "--control", self.control, "--listen", f"127.0.0.1:{case.port}",
                "--workers", str(case.workers), "--ready", self.ready, "--strategy", self.strategy,
                "--", NODE, "--require", APPTIMING, NODE_APP]
        self.proc = Spawned(argv, env, case.path("launcher.log"), stamp=True)
        self.wait_serving()

    def status(self):
        out = subprocess.run([self.baton, "status", "--json", "--control", self.control], capture_output=True, text=True)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else None

    def wait_serving(self, timeout=60):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.status() if os.path.exists(self.control) else None
            if st and any(g["state"] == "serving" for g in st["generations"]):
                return st
            if not self.proc.alive():
                raise RuntimeError(f"baton exited (see {self.proc.logpath})")
            time.sleep(0.05)
        raise RuntimeError("baton did not start serving")

    def wait_retired(self, timeout=60):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.status() or {}
            if st.get("generations") and not any(g["state"] == "draining" for g in st["generations"]):
                return
            time.sleep(0.05)
        raise RuntimeError("baton: the old generation did not retire")

    def reload(self):
        t0 = time.time()
        p = subprocess.Popen([self.baton, "reload", "--control", self.control], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        progress = []
        for line in p.stdout:
            progress.append((round(time.time() - t0, 4), line.rstrip()))
        p.wait()
        t1 = time.time()
        st = self.status() or {}
        last = st.get("lastReload") or {}
        if p.returncode != 0:
            log(f"baton reload failed: {progress}")
        return {"start": t0, "end": t1, "ok": p.returncode == 0, "client_ms": round((t1 - t0) * 1000, 1),
                "baton_ms": last.get("durationMilliseconds"), "generation": last.get("generation"),
                "progress": progress}

    def monitored_pid(self):
        return self.proc.pid

    def stop(self):
        st = self.status() if self.proc and self.proc.alive() else None
        pids = [w["pid"] for g in (st or {}).get("generations", []) for w in g["workers"] if w.get("pid")]
        super().stop()
        kill_pids(pids)  # nothing should be left; if something is, it goes


class Signalled(Peer):
    """naive, cluster and reuseport: reload by a signal; the launcher appends a "reloaded" event when done."""

    def __init__(self, name, label, kind):
        super().__init__(name, label)
        self.kind = kind

    def start(self, case):
        self.events = case.path("events.jsonl")
        env = dict(case.env, BENCH_EVENTS=self.events)
        if self.kind == "naive":
            argv, self.sig = [sys.executable, os.path.join(PEERS, "naive.py"), "--port", str(case.port), "--", NODE, NODE_APP], signal.SIGHUP
        elif self.kind == "cluster":
            # KILL_TIMEOUT_MS only sets how long a restart takes: busy keep-alive clients never let an old
            # worker go after disconnect(), so it is always killed with a request in flight per connection.
            env.update(WORKERS=str(case.workers), PORT=str(case.port), KILL_TIMEOUT_MS="5000")
            argv, self.sig = [NODE, os.path.join(PEERS, "cluster.js"), NODE_APP], signal.SIGUSR2
        else:
            argv, self.sig = [sys.executable, os.path.join(PEERS, "reuseport.py"), "--port", str(case.port),
                              "--workers", str(case.workers), "--", NODE, NODE_APP], signal.SIGHUP
        self.proc = Spawned(argv, env, case.path("launcher.log"))

    def reload(self):
        n = len(self.read_events())
        t0 = time.time()
        os.kill(self.proc.pid, self.sig)
        ev = next(e for e in self.events_wait(n, lambda new: any(e.get("event") == "reloaded" for e in new))
                  if e.get("event") == "reloaded")
        return {"start": t0, "end": max(ev["end"], t0), "ok": True}


class Gunicorn(Peer):
    node_based = False

    def start(self, case):
        self.events = case.path("events.jsonl")
        self.workers = case.workers
        env = dict(case.env, BENCH_EVENTS=self.events, GUNICORN_BIND=f"127.0.0.1:{case.port}", GUNICORN_WORKERS=str(case.workers))
        argv = [shutil.which("gunicorn") or "gunicorn", "-c", os.path.join(PEERS, "gunicorn_conf.py"),
                "--chdir", PEERS, "wsgi_app:app"]
        self.proc = Spawned(argv, env, case.path("launcher.log"))
        self.events_wait(0, lambda _: self.live_ready() >= case.workers)

    def live(self):
        ready, gone = [], set()
        for e in self.read_events():
            if e["event"] == "worker_ready":
                ready.append(e["pid"])
            elif e["event"] == "worker_exit":
                gone.add(e["pid"])
        return [p for p in ready if p not in gone], gone

    def live_ready(self):
        return len(self.live()[0])

    def reload(self):
        old = set(self.live()[0])
        n = len(self.read_events())
        t0 = time.time()
        os.kill(self.proc.pid, signal.SIGHUP)

        def done(_):
            live, gone = self.live()
            return old <= gone and len([p for p in live if p not in old]) >= self.workers
        new = self.events_wait(n, done)
        return {"start": t0, "end": max([e["t"] for e in new] + [t0]), "ok": True}


def make_peer(name, baton):
    return {
        "bare": lambda: Bare("bare", "bare app, no launcher (no reloads)"),
        "bare-again": lambda: Bare("bare-again", "bare app again, at the end (no reloads)"),
        "baton-noreload": lambda: Baton("baton-noreload", "baton, no reloads", baton, reloads=False),
        "baton": lambda: Baton("baton", "baton (all-at-once)", baton),
        "baton-rolling": lambda: Baton("baton-rolling", "baton --strategy rolling", baton, strategy="rolling"),
        "naive": lambda: Signalled("naive", "naive restart (stop, start)", "naive"),
        "cluster": lambda: Signalled("cluster", "node cluster, SIGUSR2 rolling", "cluster"),
        "reuseport": lambda: Signalled("reuseport", "SO_REUSEPORT handover", "reuseport"),
        "gunicorn": lambda: Gunicorn("gunicorn", "gunicorn gthread, HUP (Python app)"),
    }[name]()
