#!/usr/bin/env python3
"""baton's bench: what a reload costs, measured side by side against the alternatives, in one run on one
machine. Started by bench/run.sh (which builds baton and installs what is missing); see bench/README.md.

    python3 bench/bench.py --baton PATH [--quick] [--only SCENARIO[,..]] [--no-readme]

Writes bench/results/latest.json, latest.md, latency-*.png, prints the tables, and (full runs only) puts
the latest table into bench/README.md between the results markers.
"""
import argparse
import csv
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
RESULTS = os.path.join(BENCH, "results")
NODE_APP = os.path.join(ROOT, "examples", "node", "app.js")
LOADGEN = os.path.join(ROOT, "tools", "loadgen.py")
APPTIMING = os.path.join(BENCH, "apptiming.js")
PEERS = os.path.join(BENCH, "peers")
CLK_TCK = os.sysconf("SC_CLK_TCK")
NODE = shutil.which("node") or shutil.which("nodejs") or "node"
FAIL_KINDS = ["non2xx", "refused", "reset", "eof_idle", "eof_new", "eof_mid", "timeout", "other"]


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def pct(vals, p):
    """Nearest-rank percentile, as tools/loadgen.py computes it."""
    if not vals:
        return None
    vals = sorted(vals)
    return round(vals[max(0, math.ceil(p / 100 * len(vals)) - 1)], 2)


def proc_stat(pid):
    """(utime+stime in ms, VmRSS in KiB) of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) * 1000 / CLK_TCK
        with open(f"/proc/{pid}/status") as f:
            rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
        return cpu, rss
    except (OSError, AttributeError):
        return None


def smaps_rollup(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                m = re.match(r"(\w+):\s+(\d+) kB", line)
                if m:
                    out[m.group(1)] = int(m.group(2))
    except OSError:
        pass
    return out


def wait_http(port, timeout=60, path="/"):
    """Until GET answers 200 on 127.0.0.1:port."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if data.startswith(b"HTTP/1.1 200"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answers on port {port}")


class Spawned:
    """A launcher process in a session of its own, output to a log file; stopped by its pid. With
    stamp=True every output line is written with the unix time it arrived ("1795330762.123456 line")."""

    def __init__(self, argv, env, logpath, cwd=ROOT, stamp=False):
        self.logpath = logpath
        self.logf = open(logpath, "wb")
        self.reader = None
        self.p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE if stamp else self.logf,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.p.pid
        if stamp:
            self.reader = threading.Thread(target=self._stamp, daemon=True)
            self.reader.start()

    def _stamp(self):
        for line in self.p.stdout:
            self.logf.write(f"{time.time():.6f} ".encode() + line)
            self.logf.flush()

    def alive(self):
        return self.p.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=40):
        if self.p.poll() is None:
            try:
                os.kill(self.pid, sig)
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"pid {self.pid} did not stop in {timeout}s; SIGKILL to its process group")
                os.killpg(self.pid, signal.SIGKILL)
                self.p.wait()
        # Anything left in the launcher's process group (its own children) goes too.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.reader:
            self.reader.join(5)
        self.logf.close()


def kill_pids(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------------------------- peers


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


# ---------------------------------------------------------------------------------------------- cases


class Case:
    def __init__(self, scenario, peer, port, workdir):
        self.scenario, self.peer, self.port = scenario, peer, port
        self.workers = scenario["workers"]
        self.dir = os.path.join(workdir, f"{scenario['key']}-{peer.name}")
        os.makedirs(self.dir, exist_ok=True)
        self.env = dict(os.environ, **scenario["env"])

    def path(self, name):
        return os.path.join(self.dir, name)


def cpu_ns(pid):
    """{tid: ns on CPU} for every thread of pid (/proc/PID/task/TID/schedstat, nanosecond resolution)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[tid] = int(f.read().split()[0])
        except (OSError, ValueError):
            pass
    return out


class Sampler(threading.Thread):
    """Samples a process every 50 ms: RSS, and CPU time per thread (schedstat, ns), so that the CPU time
    between two moments is exact to the ns even when threads come and go (a thread that exits counts up to
    its last sample)."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop_ev = pid, [], threading.Event()
        self.cpu_last, self.cpu_first = {}, {}
        self.marks = []  # (label, cpu ms so far)

    def cpu_ms(self):
        return sum(v - self.cpu_first.get(t, 0) for t, v in self.cpu_last.items()) / 1e6

    def sample(self):
        now = cpu_ns(self.pid)
        for t, v in now.items():
            if t not in self.cpu_last and self.samples:
                self.cpu_first[t] = 0  # a new thread: all its time counts
            self.cpu_last[t] = v
        if not self.samples:
            self.cpu_first = dict(now)
        s = proc_stat(self.pid)
        if s:
            self.samples.append((time.time(), self.cpu_ms(), s[1]))

    def mark(self, label):
        self.sample()
        self.marks.append((label, self.cpu_ms()))

    def run(self):
        while not self.stop_ev.is_set():
            self.sample()
            self.stop_ev.wait(0.05)


def run_case(scn, peer, port, workdir):
    case = Case(scn, peer, port, workdir)
    log(f"{scn['key']} / {peer.name}: start (port {port})")
    la0 = loadavg()
    peer.start(case)
    wait_http(port)
    sampler = None
    if peer.monitored_pid():
        sampler = Sampler(peer.monitored_pid())
        sampler.start()
    holder = None
    holder_json = case.path("holder.json")
    if scn.get("idle_conns"):
        ready, check = case.path("holder.ready"), case.path("holder.check")
        holder = subprocess.Popen([sys.executable, os.path.join(BENCH, "holder.py"), "--port", str(port),
                                   "--conns", str(scn["idle_conns"]), "--ready-file", ready, "--check-file", check,
                                   "--json", holder_json], stdout=subprocess.DEVNULL, stderr=open(case.path("holder.log"), "wb"))
        end = time.monotonic() + 120
        while not os.path.exists(ready):
            if holder.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"holder failed (see {case.path('holder.log')})")
            time.sleep(0.05)
        log(f"  holding {open(ready).read()} idle connections")
    stopfile, lj, lcsv = case.path("load.stop"), case.path("load.json"), case.path("latency.csv")
    duration = scn["duration"]
    lg = subprocess.Popen([sys.executable, LOADGEN, "--url", f"http://127.0.0.1:{port}/", "--clients", str(scn["clients"]),
                           "--mode", scn["mode"], "--duration", str(duration + 120), "--until-file", stopfile,
                           "--timeout", "10", "--json", lj, "--latency-csv", lcsv] + scn.get("load_args", []),
                          stderr=open(case.path("load.log"), "wb"))
    t_run0 = time.time()
    windows = []
    if sampler:
        sampler.mark("run")
    rss_before_reload = None
    if peer.reloads:
        next_at = t_run0 + scn["warmup"]
        est = scn["reload_estimate"]
        max_reloads = scn.get("max_reloads", 1000)
        while len(windows) < max_reloads:
            now = time.time()
            if next_at + est + scn["tail"] > t_run0 + duration:
                break
            if now < next_at:
                time.sleep(next_at - now)
            if rss_before_reload is None and peer.monitored_pid():
                rss_before_reload = proc_stat(peer.monitored_pid())[1]
            if sampler:
                sampler.mark("reload")
            w = peer.reload()
            if sampler:
                sampler.mark("reloaded")
            windows.append(w)
            est = max(est, w["end"] - w["start"])
            next_at = max(w["end"] + scn["gap"], w["start"] + scn["period"])
    busy = []  # the holder checking its connections: a burst of its own, neither quiet time nor a reload
    if holder:
        time.sleep(1.0 if peer.reloads else scn["warmup"] + 2)
        t_check = time.time()
        open(case.path("holder.check"), "w").close()
        holder.wait(timeout=120)
        busy.append((t_check, time.time()))
    left = t_run0 + duration - time.time()
    if left > 0:
        time.sleep(left)
    open(stopfile, "w").close()
    lg.wait(timeout=60)
    if sampler:
        sampler.stop_ev.set()
        sampler.join()
        sampler.mark("end")
    smaps = smaps_rollup(peer.monitored_pid()) if peer.monitored_pid() else {}
    peer.stop()
    la1 = loadavg()
    res = analyse(case, windows, lj, lcsv, t_run0, scn.get("slow_ms"), busy)
    res.update(scenario=scn["key"], peer=peer.name, label=peer.label, port=port, loadavg_before=la0, loadavg_after=la1)
    if holder:
        try:
            res["idle"] = json.load(open(holder_json))
        except (OSError, ValueError):
            res["idle"] = {"error": "holder wrote nothing", "failed": None}
    if isinstance(peer, Baton):
        res["baton"] = baton_figures(peer, case, windows, sampler, rss_before_reload, smaps)
    summary = f"{res['ok']} ok, {res['failed']} failed{' ' + str(res['fail_kinds']) if res['failed'] else ''}, " \
              f"{len(windows)} reloads, p99 {res['p99_quiet']}/{res['p99_during']} ms (quiet/during)"
    if res.get("idle"):
        summary += f", idle: {res['idle'].get('counts')}"
    log(f"  {summary}")
    return res


def analyse(case, windows, lj, lcsv, t_run0, slow_ms=None, busy=()):
    """Latency figures are over successful requests; with slow_ms (the slow scenario), over those that
    were not asked to be slow: the CSV does not say which were, but every one that was took >= slow_ms.
    Requests that overlap a busy window (the holder's check) count as neither quiet nor during a reload."""
    summary = json.load(open(lj))
    busy_ms = [(a * 1000, b * 1000) for a, b in busy]
    slow = []
    wins = [(w["start"] * 1000, w["end"] * 1000) for w in windows]
    quiet, during, fails = [], [], []
    fail_during = 0
    with open(lcsv) as f:
        rows = list(csv.reader(f))[1:]
    points = []
    for t, lat, outcome in rows:
        t, lat = int(t), float(lat)
        d = any(t < we and t + lat > ws for ws, we in wins)
        if outcome == "ok":
            if slow_ms and lat >= slow_ms:
                slow.append(lat)
            elif d or not any(t < be and t + lat > bs for bs, be in busy_ms):
                (during if d else quiet).append(lat)
        else:
            fails.append((round(t / 1000 - t_run0, 3), outcome))
            fail_during += d
        points.append((round(t / 1000 - t_run0, 3), lat, outcome))
    ok_all = quiet + during
    elapsed = summary["elapsed_s"]
    return {
        "requests": summary["requests"], "ok": summary["ok"], "failed": summary["failed"],
        "fail_kinds": {k: summary[k] for k in FAIL_KINDS if summary.get(k)},
        "failed_during_reloads": fail_during,
        "p50": pct(ok_all, 50), "p99": pct(ok_all, 99), "max": pct(ok_all, 100),
        "p50_quiet": pct(quiet, 50), "p99_quiet": pct(quiet, 99), "max_quiet": pct(quiet, 100),
        "p50_during": pct(during, 50), "p99_during": pct(during, 99), "max_during": pct(during, 100),
        "requests_during": len(during),
        "slow_requests": len(slow), "slow_max": pct(slow, 100),
        "elapsed_s": elapsed, "ok_rps": round(summary["ok"] / elapsed, 1) if elapsed else 0,
        "reloads": len(windows),
        "reload_ms": [round((w["end"] - w["start"]) * 1000, 1) for w in windows],
        "reload_ms_median": round(statistics.median([(w["end"] - w["start"]) * 1000 for w in windows]), 1) if windows else None,
        "windows": [(round(w["start"] - t_run0, 3), round(w["end"] - t_run0, 3)) for w in windows],
        "busy_windows": [(round(a - t_run0, 3), round(b - t_run0, 3)) for a, b in busy],
        "reload_detail": [{k: v for k, v in w.items() if k not in ("start", "end")} for w in windows],
        "_points": points, "_fails": fails,
    }


def stamped_lines(path):
    out = []
    with open(path, "rb") as f:
        for raw in f:
            t, _, line = raw.decode("utf-8", "replace").rstrip("\n").partition(" ")
            try:
                out.append((float(t), line))
            except ValueError:
                pass
    return out


def baton_figures(peer, case, windows, sampler, rss_before_reload, smaps):
    out = {}
    if sampler and sampler.marks:
        marks = sampler.marks
        total = marks[-1][1] - marks[0][1]
        in_reloads = sum(b[1] - a[1] for a, b in zip(marks, marks[1:]) if a[0] == "reload" and b[0] == "reloaded")
        run_s = sampler.samples[-1][0] - sampler.samples[0][0] if len(sampler.samples) > 1 else 1
        quiet_s = max(1e-3, run_s - sum(w["end"] - w["start"] for w in windows))
        out["cpu_ms"] = round(total, 2)
        out["cpu_ms_per_reload"] = round(in_reloads / len(windows), 2) if windows else None
        out["cpu_ms_per_s_between_reloads"] = round((total - in_reloads) / quiet_s, 3)
    if sampler and sampler.samples:
        out["rss_kib_one_generation"] = rss_before_reload or sampler.samples[0][2]
        out["rss_kib_max"] = max(s[2] for s in sampler.samples)
    if smaps:
        out["pss_kib_end"] = smaps.get("Pss")
        out["private_kib_end"] = smaps.get("Private_Clean", 0) + smaps.get("Private_Dirty", 0)
    # Split each reload along a common clock (CLOCK_REALTIME): baton's log lines, stamped as they arrive
    # on its stderr pipe, and the app's own moments (bench/apptiming.js).
    recs = []
    try:
        with open(peer.timing) as f:
            recs = [json.loads(l) for l in f if l.strip()]
    except FileNotFoundError:
        pass
    lines = stamped_lines(case.path("launcher.log"))

    def first(pattern, after=0.0):
        rx = re.compile(pattern)
        return next((t for t, l in lines if t >= after and rx.search(l)), None)

    def last(pattern):
        rx = re.compile(pattern)
        return max((t for t, l in lines if rx.search(l)), default=None)

    splits = []
    for w in windows:
        gen = w.get("generation")
        total = w.get("baton_ms")
        if not gen or total is None or not w.get("ok"):
            continue
        new = [r for r in recs if r["generation"] == gen and r.get("ready")]
        old = [r for r in recs if r["generation"] == gen - 1 and r.get("sigterm") and r.get("exit")]
        if len(new) < case.workers or len(old) < case.workers:
            continue
        ms = lambda a, b: round((b - a) * 1000, 2) if a is not None and b is not None else None
        t_start = first(rf"generation {gen} starting", w["start"])
        t_req = max((t for t, l in lines if "reload requested" in l and t <= (t_start or 0)), default=None)
        t_seen = first(rf"generation {gen} ready")
        t_reaped = last(rf"of generation {gen - 1} \(pid \d+\) exited")
        t_done = first(rf"reload to generation {gen} succeeded")
        origin = max(r["origin"] for r in new) / 1000
        ready = max(r["ready"] for r in new) / 1000
        sigterm = max(r["sigterm"] for r in old) / 1000
        exit_ = max(r["exit"] for r in old) / 1000
        startup = sum(r["ready"] - r["origin"] for r in new) if peer.strategy == "rolling" else max(r["ready"] - r["origin"] for r in new)
        last_old = next((r for r in old if r["worker"] == case.workers), old[-1]) if peer.strategy == "rolling" else None
        drain = (last_old["exit"] - last_old["sigterm"]) if last_old else max(r["exit"] - r["sigterm"] for r in old)
        sp = {"total_ms": total, "app_startup_ms": round(startup, 1), "app_drain_ms": round(drain, 1),
              "rest_ms": round(total - startup - drain, 1)}
        if peer.strategy != "rolling" and None not in (t_req, t_start, t_seen, t_reaped, t_done):
            # baton's own moments: request -> spawn; the app's READY -> baton acts on it (log line);
            # baton acts -> SIGTERM arrives in the old app; old app's last breath reaped -> reload done
            sp.update(baton_request_to_spawn_ms=ms(t_req, t_start), exec_to_node_start_ms=ms(t_start, origin),
                      baton_ready_seen_ms=ms(ready, t_seen), baton_sigterm_ms=ms(t_seen, sigterm),
                      ready_to_sigterm_ms=ms(ready, sigterm),
                      node_exit_to_reaped_ms=ms(exit_, t_reaped), baton_reaped_to_done_ms=ms(t_reaped, t_done))
            sp["baton_own_ms"] = round(sum(sp[k] for k in ("baton_request_to_spawn_ms", "baton_ready_seen_ms",
                                                            "baton_sigterm_ms", "baton_reaped_to_done_ms")), 2)
        splits.append(sp)
    out["reload_split"] = splits
    for key in ("rest_ms", "app_startup_ms", "app_drain_ms", "baton_own_ms", "exec_to_node_start_ms", "node_exit_to_reaped_ms",
                "ready_to_sigterm_ms", "baton_request_to_spawn_ms", "baton_reaped_to_done_ms"):
        vals = [s_[key] for s_ in splits if s_.get(key) is not None]
        if vals:
            out[key + "_median"] = round(statistics.median(vals), 2)
    return out


# ---------------------------------------------------------------------------------------------- baton alone


class Control:
    """baton's control protocol spoken directly (one JSON object per line), to time a reload to the
    microsecond without the start-up of a `baton reload` process."""

    def __init__(self, path):
        self.path = path

    def request(self, command):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        t0 = time.perf_counter()
        s.sendall(json.dumps({"command": command}).encode() + b"\n")
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            lines = buf.split(b"\n")
            for line in lines[:-1]:
                if line.strip():
                    r = json.loads(line)
                    if r.get("kind") in ("result", "status", "error"):
                        s.close()
                        return r, (time.perf_counter() - t0) * 1000
            buf = lines[-1]
        s.close()
        raise RuntimeError("control socket closed without an answer")


def start_tiny(baton, tiny, workdir, tag, workers, listeners, base_port, ready="fd", extra_env=None):
    control = os.path.join(workdir, f"{tag}.sock")
    argv = [baton, "run", "--name", tag, "--control", control, "--workers", str(workers), "--ready", ready]
    for i in range(listeners):
        argv += ["--listen", f"127.0.0.1:{base_port + i}"]
    argv += ["--", tiny]
    env = dict(os.environ, **(extra_env or {}))
    proc = Spawned(argv, env, os.path.join(workdir, f"{tag}.log"))
    ctl = Control(control)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            r, _ = ctl.request("status")
            if any(g["state"] == "serving" for g in r["status"]["generations"]):
                return proc, ctl
        except (OSError, RuntimeError, KeyError):
            pass
        if not proc.alive():
            raise RuntimeError(f"baton exited (see {proc.logpath})")
        time.sleep(0.02)
    raise RuntimeError("baton with tinyapp did not start")


def stop_tiny(proc, ctl):
    try:
        r, _ = ctl.request("status")
        pids = [w["pid"] for g in r["status"]["generations"] for w in g["workers"] if w.get("pid")]
    except Exception:
        pids = []
    proc.stop()
    kill_pids(pids)


def spawn_floor(tiny, workers, listeners, base_port, rounds):
    """The kernel's floor for what a reload does, without baton: posix_spawn `workers` tinyapps from this
    (small) Python process with the listeners at fd 3.. and a readiness pipe, wait for every READY=1, then
    SIGTERM the previous set and reap it. Median ms over `rounds`."""
    socks = []
    for i in range(listeners):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", base_port + i))
        s.listen(16)
        socks.append(s)

    def spawn():
        r, w = os.pipe()
        env = dict(os.environ, LISTEN_FDS=str(listeners), BATON_NOTIFY_FD=str(3 + listeners))
        acts = [(os.POSIX_SPAWN_DUP2, s.fileno(), 3 + i) for i, s in enumerate(socks)]
        acts.append((os.POSIX_SPAWN_DUP2, w, 3 + listeners))
        pid = os.posix_spawn(tiny, [tiny], env, file_actions=acts)
        os.close(w)
        return pid, r

    times = []
    old = []
    for _ in range(rounds + 1):
        t0 = time.perf_counter()
        new = [spawn() for _ in range(workers)]
        for _, r in new:
            os.read(r, 64)
            os.close(r)
        for pid, _ in old:
            os.kill(pid, signal.SIGTERM)
        for pid, _ in old:
            os.waitpid(pid, 0)
        if old:
            times.append((time.perf_counter() - t0) * 1000)
        old = new
    for pid, _ in old:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    for s in socks:
        s.close()
    return round(statistics.median(times), 2)


def scale_bench(baton, tiny, workdir, base_port, reloads, quick):
    """Reload time of baton with an app that is ready at once, for 1/64 workers and 1/256 listeners."""
    configs = [("1 worker, 1 listener", 1, 1, "fd"), ("1 worker, 1 listener, --ready listen", 1, 1, "listen"),
               ("64 workers, 1 listener", 64, 1, "fd"), ("1 worker, 256 listeners", 1, 256, "fd"),
               ("64 workers, 256 listeners", 64, 256, "fd")]
    if quick:
        configs = configs[:4]
    rows = []
    for label, workers, listeners, ready in configs:
        log(f"scale: {label}")
        proc, ctl = start_tiny(baton, tiny, workdir, f"scale{workers}x{listeners}{ready}", workers, listeners, base_port, ready)
        time.sleep(0.3)
        sampler = Sampler(proc.pid)
        sampler.mark("start")
        client, inner = [], []
        for _ in range(reloads):
            r, ms = ctl.request("reload")
            if not r.get("ok"):
                log(f"  reload failed: {r}")
                continue
            client.append(ms)
            inner.append(r.get("durationMilliseconds"))
            time.sleep(0.05)
        sampler.mark("end")
        cpu = sampler.marks[-1][1] - sampler.marks[0][1]
        rss = proc_stat(proc.pid)[1]
        stop_tiny(proc, ctl)
        floor = spawn_floor(tiny, workers, listeners, base_port, max(3, reloads // 2)) if ready == "fd" else None
        rows.append({"config": label, "workers": workers, "listeners": listeners, "ready": ready, "reloads": len(client),
                     "floor_ms": floor,
                     "median_ms": round(statistics.median(client), 2) if client else None,
                     "p90_ms": pct(client, 90), "min_ms": round(min(client), 2) if client else None,
                     "max_ms": round(max(client), 2) if client else None,
                     "baton_reported_ms_median": statistics.median(inner) if inner else None,
                     "cpu_ms_per_reload": round(cpu / max(1, len(client)), 2), "rss_kib": rss})
        log(f"  median {rows[-1]['median_ms']} ms, max {rows[-1]['max_ms']} ms, cpu {rows[-1]['cpu_ms_per_reload']} ms/reload; "
            f"posix_spawn floor {floor} ms")
    return rows


def task_counters(pid):
    """{tid: (times run on a CPU, voluntary switches, involuntary switches)} for every thread of pid."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                runs = int(f.read().split()[2])
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                st = f.read()
            out[tid] = (runs, int(re.search(r"\nvoluntary_ctxt_switches:\s+(\d+)", st).group(1)),
                        int(re.search(r"nonvoluntary_ctxt_switches:\s+(\d+)", st).group(1)))
        except (OSError, AttributeError):
            pass
    return out


def count_wakeups(pid, window):
    """Wakeups of all of pid's threads over window seconds: per thread, the growth of its run count
    (schedstat) and context switches; threads that appear count from zero, threads that exit count up to
    their last sample (sampled every 50 ms, which costs the watched process nothing)."""
    first = task_counters(pid)
    last = dict(first)
    seen = set(first)
    end = time.monotonic() + window
    while time.monotonic() < end:
        time.sleep(0.05)
        now = task_counters(pid)
        seen |= set(now)
        last.update(now)
    tot = [0, 0, 0]
    for tid, v in last.items():
        base = first.get(tid, (0, 0, 0))
        for i in range(3):
            tot[i] += v[i] - base[i]
    return tot, len(task_counters(pid)), len(seen)


def idle_bench(baton, tiny, workdir, base_port, window):
    """baton's wakeups while nothing happens: one generation of an idle app, no requests, no reload.
    Once as started by hand, once as under systemd with WatchdogSec=2s (NOTIFY_SOCKET is ours, and we
    count its WATCHDOG=1 pings)."""
    out = {}
    for mode in ("plain", "watchdog"):
        extra = {}
        sock = None
        if mode == "watchdog":
            path = os.path.join(workdir, "notify.sock")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(path)
            sock.setblocking(False)
            extra = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
        proc, ctl = start_tiny(baton, tiny, workdir, f"idle{mode}", 1, 1, base_port, "fd", extra)
        time.sleep(2)
        pings = 0
        if sock:
            while True:
                try:
                    sock.recv(65536)
                except BlockingIOError:
                    break
        c0 = proc_stat(proc.pid)
        (runs, vol, invol), threads, seen = count_wakeups(proc.pid, window)
        c1 = proc_stat(proc.pid)
        if sock:
            while True:
                try:
                    if b"WATCHDOG=1" in sock.recv(65536):
                        pings += 1
                except BlockingIOError:
                    break
            sock.close()
        out[mode] = {"window_s": window, "threads": threads, "threads_seen": seen,
                     "wakeups_per_s": round(runs / window, 2),
                     "voluntary_switches_per_s": round(vol / window, 2),
                     "involuntary_switches_per_s": round(invol / window, 2),
                     "watchdog_pings_per_s": round(pings / window, 2) if sock else 0,
                     "cpu_ms": round(c1[0] - c0[0], 1), "rss_kib": c1[1], "smaps": smaps_rollup(proc.pid)}
        stop_tiny(proc, ctl)
        log(f"idle ({mode}): {out[mode]['wakeups_per_s']} wakeups/s over {window}s, "
            f"{out[mode]['watchdog_pings_per_s']} pings/s, {out[mode]['threads']} threads, RSS {out[mode]['rss_kib']} KiB")
    return out


# ---------------------------------------------------------------------------------------------- plan


def plan(quick, baton, only):
    node_env = {"WORK_MS": "30", "STARTUP_MS": "750"}
    d = 9 if quick else 14
    common = dict(workers=1, env=node_env, clients=16, mode="mixed", warmup=1.5, gap=1.2, period=3.5, tail=0.8,
                  reload_estimate=2.5, duration=d)
    scenarios = [
        dict(common, key="node", title="Node app (WORK_MS=30, STARTUP_MS=750), 1 worker, 16 mixed clients",
             peers=["bare", "baton-noreload", "baton", "naive", "cluster", "reuseport", "gunicorn", "bare-again"]),
        dict(common, key="slow", title="same, every 10th request takes 2 s (in flight across reloads); "
             "latency figures leave the slow requests out", slow_ms=2000,
             load_args=["--slow-every", "10", "--slow-ms", "2000"], reload_estimate=3.5, duration=d + 4,
             peers=["bare", "baton", "naive", "cluster", "reuseport", "gunicorn"]),
        dict(common, key="workers4", title="4 workers, 16 mixed clients", workers=4, reload_estimate=5.0,
             duration=d + 6, peers=["baton-rolling", "baton", "cluster", "reuseport", "gunicorn"], baseline="node"),
        dict(common, key="idle10k", title=f"{2000 if quick else 10000} idle keep-alive connections held across a reload, plus 16 mixed clients",
             idle_conns=2000 if quick else 10000, max_reloads=1, duration=8 if quick else 12, warmup=1.0, baseline=None,
             peers=["baton"] if quick else ["baton", "naive", "cluster", "reuseport"]),
    ]
    if quick:
        scenarios = [scenarios[0], scenarios[3]]
        scenarios[0]["peers"] = ["bare", "baton", "naive", "cluster", "reuseport", "gunicorn"]
    if only:
        scenarios = [s for s in scenarios if s["key"] in only]
    return scenarios


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


# ---------------------------------------------------------------------------------------------- report


def fmt(v, nd=0):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def md_table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def report(data):
    lines = []
    runs = data["runs"]
    base = {}
    for scn_key in {r["scenario"] for r in runs}:
        bare = [r["ok_rps"] for r in runs if r["scenario"] == scn_key and r["peer"].startswith("bare")]
        if bare:
            base[scn_key] = statistics.mean(bare)
    for scn in data["scenarios"]:
        srows = [r for r in runs if r["scenario"] == scn["key"]]
        if not srows:
            continue
        lines.append(f"\n**{scn['key']}**: {scn['title']} ({scn['duration']} s per launcher)\n")
        bkey = scn.get("baseline", scn["key"])  # None: not comparable (idle10k: the holder's own burst shares the CPU)
        rows = []
        for r in srows:
            b = base.get(bkey)
            r["throughput_ratio"] = round(r["ok_rps"] / b, 3) if b else None
            kinds = ", ".join(f"{k} {v}" for k, v in r["fail_kinds"].items()) or "-"
            row = [r["label"], r["reloads"], r["ok"], f"**{r['failed']}**" if r["failed"] else "0", kinds,
                   fmt(r["p50_quiet"], 1), fmt(r["p99_quiet"], 1), fmt(r["p99_during"], 1), fmt(r["max_during"], 0),
                   fmt(r["throughput_ratio"], 3) if r["throughput_ratio"] is not None else "-",
                   fmt(r["reload_ms_median"], 0)]
            if scn.get("idle_conns"):
                idle = r.get("idle") or {}
                c = idle.get("counts", {})
                row.append(f"{idle.get('held', '-')} held: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) +
                           f"; **{idle.get('failed')} failed**" if idle.get("failed") else
                           f"{idle.get('held', '-')} held: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) + "; 0 failed")
            rows.append(row)
        headers = ["launcher", "reloads", "ok", "failed", "failures by kind", "p50 ms", "p99 ms (no reload)",
                   "p99 ms (during)", "max ms (during)", "throughput vs bare", "reload ms (median)"]
        if scn.get("idle_conns"):
            headers.append("idle connections after the reload")
        lines.append(md_table(headers, rows))
    # baton details
    brows = []
    for r in runs:
        b = r.get("baton")
        if not b:
            continue
        brows.append([f"{r['scenario']} / {r['label']}", fmt(r["reload_ms_median"], 0), fmt(b.get("app_startup_ms_median"), 0),
                      fmt(b.get("app_drain_ms_median"), 0), fmt(b.get("exec_to_node_start_ms_median"), 1),
                      fmt(b.get("node_exit_to_reaped_ms_median"), 1), fmt(b.get("baton_request_to_spawn_ms_median"), 2),
                      fmt(b.get("ready_to_sigterm_ms_median"), 2), fmt(b.get("baton_reaped_to_done_ms_median"), 2),
                      fmt(b.get("baton_own_ms_median"), 2),
                      fmt(b.get("rest_ms_median"), 1),
                      fmt(b.get("cpu_ms_per_reload"), 1), fmt(b.get("cpu_ms_per_s_between_reloads"), 3),
                      fmt(round(b["rss_kib_one_generation"] / 1024, 1) if b.get("rss_kib_one_generation") else None, 1),
                      fmt(round(b["rss_kib_max"] / 1024, 1) if b.get("rss_kib_max") else None, 1)])
    if brows:
        lines.append("\n**baton itself**: each reload split along one clock (medians; see README, \"How a reload is split\"); CPU and RSS of the baton process\n")
        lines.append(md_table(["run", "reload ms", "app startup ms", "app drain ms", "exec to node start ms",
                               "node exit to reaped ms", "request to spawn ms", "READY to SIGTERM in the old app ms",
                               "reaped to done ms", "baton's own ms (sum of the 3)", "all but the app's ms",
                               "baton CPU ms/reload", "baton CPU ms/s between reloads", "RSS MiB (1 generation)", "RSS MiB (max)"], brows))
    if data.get("scale"):
        lines.append("\n**baton's own share and scale**: tinyapp (bench/tinyapp.c: ready at exec, dies on SIGTERM), reload timed over the control socket\n")
        lines.append(md_table(["configuration", "reloads", "median ms", "p90 ms", "max ms", "same work without baton ms",
                               "baton CPU ms/reload", "RSS MiB"],
                              [[s["config"], s["reloads"], fmt(s["median_ms"], 2), fmt(s["p90_ms"], 2), fmt(s["max_ms"], 2),
                                fmt(s.get("floor_ms"), 2), fmt(s["cpu_ms_per_reload"], 1), fmt(round(s["rss_kib"] / 1024, 1), 1)]
                               for s in data["scale"]]))
    if data.get("idle"):
        lines.append("\n**baton idle** (one generation of tinyapp, no traffic)\n")
        lines.append(md_table(["mode", "window s", "threads", "wakeups/s", "voluntary switches/s", "watchdog pings/s", "CPU ms", "RSS MiB", "PSS MiB"],
                              [[m, v["window_s"], v["threads"], v["wakeups_per_s"], v["voluntary_switches_per_s"],
                                v["watchdog_pings_per_s"], v["cpu_ms"], round(v["rss_kib"] / 1024, 1),
                                round(v["smaps"].get("Pss", 0) / 1024, 1)] for m, v in data["idle"].items()]))
    return "\n".join(lines)


def targets(data):
    runs = data["runs"]
    out = []
    baton_runs = [r for r in runs if r["peer"].startswith("baton") and r["reloads"]]
    failed = sum(r["failed"] for r in baton_runs) + sum((r.get("idle") or {}).get("failed") or 0 for r in baton_runs)
    detail = "; ".join(f"{r['scenario']}/{r['peer']}: {r['failed']}" + (f" + idle {r['idle'].get('failed')}" if r.get("idle") else "")
                       for r in baton_runs)
    out.append(("0 failed requests across all reloads in every baton scenario", failed == 0, f"{failed} failed ({detail})"))
    tiny = next((s for s in data.get("scale", []) if s["config"] == "1 worker, 1 listener"), None)
    own = [f"{r['scenario']}/{r['peer']} {r['baton']['baton_own_ms_median']}" for r in baton_runs
           if r.get("baton", {}).get("baton_own_ms_median") is not None]
    if tiny:
        out.append(("baton's own share of a reload <= 5 ms", tiny["median_ms"] <= 5,
                    f"whole reload with an instant app (tinyapp): {tiny['median_ms']} ms median, max {tiny['max_ms']} "
                    f"(posix_spawn floor {tiny.get('floor_ms')} ms); with Node, baton's own moments: "
                    f"{', '.join(own) or '-'} ms (median)"))
    ratios = [(r["scenario"], r["peer"], r.get("throughput_ratio")) for r in runs if r["peer"].startswith("baton")]
    # (idle10k has no ratio: its load shares the CPU with the holder's 10 000 connections.)
    ratios = [x for x in ratios if x[2] is not None]
    if ratios:
        worst = min(x[2] for x in ratios)
        out.append(("throughput under baton >= 0.99 x bare", worst >= 0.99,
                    ", ".join(f"{s}/{p}: {v}" for s, p, v in ratios)))
    p99s = [(r["scenario"], r["peer"], r["p99_during"], r["p99_quiet"]) for r in baton_runs
            if r["p99_during"] and r["p99_quiet"] and r["scenario"] != "idle10k"]  # there the holder's burst is "quiet" time
    if p99s:
        worst = max(d / q for _, _, d, q in p99s)
        out.append(("p99 during reloads <= 1.2 x p99 without", worst <= 1.2,
                    ", ".join(f"{s}/{p}: {d}/{q} = {d / q:.2f}" for s, p, d, q in p99s)))
    rss = [r["baton"]["rss_kib_one_generation"] for r in baton_runs if r.get("baton", {}).get("rss_kib_one_generation")]
    idle = data.get("idle", {}).get("plain")
    if idle:
        rss.append(idle["rss_kib"])
    if rss:
        out.append(("baton RSS <= 10 MiB with one generation", max(rss) <= 10 * 1024,
                    f"VmRSS {min(rss) / 1024:.1f}-{max(rss) / 1024:.1f} MiB" +
                    (f" (PSS {idle['smaps'].get('Pss', 0) / 1024:.1f} MiB, private {(idle['smaps'].get('Private_Clean', 0) + idle['smaps'].get('Private_Dirty', 0)) / 1024:.1f} MiB)" if idle else "")))
    if idle:
        wd = data["idle"].get("watchdog")
        extra = f"; with WatchdogSec=2s: {wd['wakeups_per_s']} wakeups/s for {wd['watchdog_pings_per_s']} pings/s" if wd else ""
        out.append(("0 idle wakeups/s apart from watchdog pings", idle["wakeups_per_s"] == 0,
                    f"{idle['wakeups_per_s']} wakeups/s over {idle['window_s']} s ({idle['threads']} threads){extra}"))
    return out


# ---------------------------------------------------------------------------------------------- plot


def plot(data, path_fmt):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    for scn in data["scenarios"]:
        rows = [r for r in data["runs"] if r["scenario"] == scn["key"]]
        if not rows:
            continue
        fig, axes = plt.subplots(len(rows), 1, figsize=(13, 1.9 * len(rows) + 1.0), sharex=True, squeeze=False)
        ymax = max([max((p[1] for p in r["_points"] if p[2] == "ok"), default=1) for r in rows] + [100])
        for ax, r in zip(axes[:, 0], rows):
            ok = [(p[0], p[1]) for p in r["_points"] if p[2] == "ok"]
            for ws, we in r["windows"]:
                ax.axvspan(ws, we, color="#f2c14e", alpha=0.35, lw=0)
            for ws, we in r.get("busy_windows", []):
                ax.axvspan(ws, we, color="#999999", alpha=0.18, lw=0)
            if ok:
                ax.scatter([p[0] for p in ok], [p[1] for p in ok], s=2, c="#1f5fa8", alpha=0.45, lw=0, rasterized=True)
            ax.set_yscale("log")
            ax.set_ylim(1, ymax * 2.5)
            fails = r["_fails"]
            if fails:
                ax.scatter([f[0] for f in fails], [ymax * 1.7] * len(fails), marker="|", s=120, c="#d62728", lw=1.2)
            kinds = ", ".join(f"{k} {v}" for k, v in r["fail_kinds"].items())
            title = (f"{r['label']}: {r['ok']} ok, {r['failed']} failed" + (f" ({kinds})" if kinds else "") +
                     (f"; p99 {fmt(r['p99_quiet'], 0)} ms without reloads / {fmt(r['p99_during'], 0)} ms during, "
                      f"reload {fmt(r['reload_ms_median'], 0)} ms (median)" if r["reloads"] else f"; p99 {fmt(r['p99_quiet'], 0)} ms"))
            idle = r.get("idle")
            if idle and idle.get("held") is not None:
                title += f"; {idle['held']} idle connections: {idle.get('failed')} failed"
            ax.set_title(title, fontsize=9, loc="left", color="#d62728" if r["failed"] else "black")
            ax.set_ylabel("latency ms", fontsize=8)
            ax.tick_params(labelsize=8)
            ax.grid(True, which="major", axis="y", alpha=0.3)
        xlabel = "seconds since the load started   (yellow: reload windows; red ticks: failed requests"
        if any(r.get("busy_windows") for r in rows):
            xlabel += "; grey: the holder checks its idle connections"
        axes[-1, 0].set_xlabel(xlabel + ")", fontsize=9)
        fig.suptitle(f"{scn['key']}: {scn['title']}", fontsize=11, x=0.01, ha="left")
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        p = path_fmt.format(scn["key"])
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------------------------- main


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
    except (OSError, AttributeError):
        pass
    node = subprocess.run([NODE, "--version"], capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "python": platform.python_version(),
            "node": node, "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def update_readme(md):
    path = os.path.join(BENCH, "README.md")
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    text = open(path).read()
    if begin not in text or end not in text:
        log("bench/README.md has no results markers; not updated")
        return
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    with open(path, "w") as f:
        f.write(head + begin + "\n" + md + "\n" + end + tail)


def render(data, pngs):
    """The tables (and targets) as Markdown, from the data of a run; writes results/latest.md."""
    table = report(data)
    tg = targets(data)
    data["targets"] = [{"target": t, "met": m, "figures": f} for t, m, f in tg]
    m = data["machine"]
    busy = data["loadavg_start"][0] > 0.5 * (m["nproc"] or 1)
    header = (f"{'Full run' if data.get('full', not data['quick']) else 'Partial run' if not data['quick'] else 'Quick run'} "
              f"of {data['date']} (baton {data.get('baton_commit', '?')}), "
              f"{data['elapsed_s']:.0f} s. Machine: {m['nproc']} x {m['cpu']}, kernel {m['kernel']}, node {m['node']}, "
              f"Python {m['python']}. Load average (1 min) {data['loadavg_start'][0]} at the start, "
              f"{data['loadavg_during']['min']}-{data['loadavg_during']['max']} during the runs, "
              f"{data['loadavg_end'][0]} at the end" + (": the machine was busy with other work." if busy else "."))
    tmd = md_table(["target", "met", "figures"], [[t, "yes" if m_ else "**no**", f] for t, m_, f in tg])
    md = header + "\n" + table + "\n\n**Targets** (printed, not asserted)\n\n" + tmd + "\n\n" + \
        "Pictures: " + ", ".join(f"[{os.path.basename(p)}](results/{os.path.basename(p)})" for p in pngs) + "\n" + \
        "".join(f"\n![latency over time, {os.path.basename(p)}](results/{os.path.basename(p)})\n" for p in pngs[:1])
    with open(os.path.join(RESULTS, "latest.md"), "w") as f:
        f.write(md)
    return md


def main():
    global RESULTS
    if "--render" in sys.argv:  # tables and README again from results/latest.json, without running anything
        data = json.load(open(os.path.join(RESULTS, "latest.json")))
        pngs = [os.path.join(RESULTS, f"latency-{s_['key']}.png") for s_ in data["scenarios"]
                if os.path.exists(os.path.join(RESULTS, f"latency-{s_['key']}.png"))]
        md = render(data, pngs)
        if data.get("full", not data["quick"]) and "--no-readme" not in sys.argv:
            update_readme(md)
        print(md)
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--baton", required=True)
    ap.add_argument("--tinyapp", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="comma-separated scenario keys (node, slow, workers4, idle10k, scale, idle)")
    ap.add_argument("--base-port", type=int, default=27100)
    ap.add_argument("--no-readme", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, CSVs)")
    ap.add_argument("--results", help="write results here instead of bench/results (and leave bench/README.md alone)")
    a = ap.parse_args()
    if a.results:
        RESULTS, a.no_readme = os.path.abspath(a.results), True
    only = set(a.only.split(",")) if a.only else None
    started = time.time()
    workdir = tempfile.mkdtemp(prefix="baton-bench.")
    log(f"work directory {workdir}; load average {loadavg()}")
    data = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "quick": a.quick,
            "machine": machine(), "loadavg_start": loadavg(), "runs": [], "scenarios": []}
    try:
        gits = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        data["baton_commit"] = gits
    except OSError:
        pass
    port = a.base_port
    load_samples = []
    scenarios = plan(a.quick, a.baton, only)
    for scn in scenarios:
        data["scenarios"].append({k: v for k, v in scn.items() if k != "peers"} | {"peers": scn["peers"]})
        for name in scn["peers"]:
            if name == "gunicorn" and not shutil.which("gunicorn"):
                log("gunicorn is not installed: skipped")
                continue
            peer = make_peer(name, a.baton)
            try:
                res = run_case(scn, peer, port, workdir)
                data["runs"].append(res)
                load_samples += [res["loadavg_before"][0], res["loadavg_after"][0]]
            except Exception as e:  # one broken peer must not cost the rest of the run
                log(f"  {scn['key']} / {name} FAILED: {e}")
                try:
                    peer.stop()
                except Exception:
                    pass
            port += 1
    if not only or "scale" in only:
        data["scale"] = scale_bench(a.baton, a.tinyapp, workdir, a.base_port + 200, 4 if a.quick else 10, a.quick)
    if not only or "idle" in only:
        data["idle"] = idle_bench(a.baton, a.tinyapp, workdir, a.base_port + 100, 4 if a.quick else 10)
    data["loadavg_end"] = loadavg()
    data["loadavg_during"] = {"min": min(load_samples, default=None), "max": max(load_samples, default=None),
                              "mean": round(statistics.mean(load_samples), 2) if load_samples else None}
    data["elapsed_s"] = round(time.time() - started, 1)

    os.makedirs(RESULTS, exist_ok=True)
    data["targets"] = []
    pngs = plot(data, os.path.join(RESULTS, "latency-{}.png"))
    for r in data["runs"]:
        r.pop("_points", None)
        r["failures"] = r.pop("_fails")[:200]
    data["full"] = not a.quick and not only
    md = render(data, pngs)
    with open(os.path.join(RESULTS, "latest.json.tmp"), "w") as f:
        json.dump(data, f, indent=1)
    os.replace(os.path.join(RESULTS, "latest.json.tmp"), os.path.join(RESULTS, "latest.json"))
    if data["full"] and not a.no_readme:
        update_readme(md)
    print(md)
    log(f"done in {data['elapsed_s']:.0f} s: " + ", ".join(os.path.relpath(p, ROOT) for p in [os.path.join(RESULTS, "latest.json"), os.path.join(RESULTS, "latest.md")] + pngs))
    if a.keep:
        log(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
