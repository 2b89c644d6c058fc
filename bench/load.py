"""The load driver: one scenario against one launcher (load, reloads, idle connections, samples) and what its
figures are; and baton alone, with an instant app: reload time by scale, and wakeups when idle."""
import csv
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

from launchers import Baton
from memory import breakdown as memory_breakdown
from procs import BENCH, LOADGEN, Sampler, Spawned, kill_pids, loadavg, log, pct, proc_stat, smaps_rollup

FAIL_KINDS = ["non2xx", "refused", "reset", "eof_idle", "eof_new", "eof_mid", "timeout", "other"]


def received(sock, size):
    """What sock receives, chunk by chunk, until the peer closes."""
    while True:
        chunk = sock.recv(size)
        if not chunk:
            return
        yield chunk


def wait_http(port, timeout=60, path="/"):
    """Until GET answers 200 on 127.0.0.1:port."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                data = b"".join(received(s, 4096))
                if data.startswith(b"HTTP/1.1 200"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answers on port {port}")


class Case:
    def __init__(self, scenario, peer, port, workdir):
        self.scenario, self.peer, self.port = scenario, peer, port
        self.workers = scenario["workers"]
        self.dir = os.path.join(workdir, f"{scenario['key']}-{peer.name}")
        os.makedirs(self.dir, exist_ok=True)
        self.env = dict(os.environ, **scenario["env"])

    def path(self, name):
        return os.path.join(self.dir, name)


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
        # The holder checks its connections once the reload is over for every launcher, the old workers gone (baton's
        # reload returns before its old generation has drained): a FIN on its way as the holder looks would count a
        # request lost to the launcher that is still draining.
        if peer.reloads:
            peer.wait_retired()
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
        # The reply comes once the new generation serves and the old one has its stop signal: the old
        # generation's drain and reaping come after it and are not part of the reload's time.
        sp = {"total_ms": total, "app_startup_ms": round(startup, 1), "app_drain_ms": round(drain, 1),
              "rest_ms": round(total - startup, 1)}
        if peer.strategy != "rolling" and None not in (t_req, t_start, t_seen, t_done):
            # baton's own moments: request -> spawn; the app's READY -> baton acts on it (log line);
            # baton acts -> the reload's reply (log line). Beside them: baton acts -> SIGTERM arrives in the
            # old app, and the old app's last breath -> reaped (both after the reply can be sent).
            sp.update(baton_request_to_spawn_ms=ms(t_req, t_start), exec_to_node_start_ms=ms(t_start, origin),
                      baton_ready_seen_ms=ms(ready, t_seen), baton_seen_to_done_ms=ms(t_seen, t_done),
                      ready_to_sigterm_ms=ms(ready, sigterm),
                      node_exit_to_reaped_ms=ms(exit_, t_reaped))
            sp["baton_own_ms"] = round(sum(sp[k] for k in ("baton_request_to_spawn_ms", "baton_ready_seen_ms",
                                                            "baton_seen_to_done_ms")), 2)
        splits.append(sp)
    out["reload_split"] = splits
    for key in ("rest_ms", "app_startup_ms", "app_drain_ms", "baton_own_ms", "exec_to_node_start_ms", "node_exit_to_reaped_ms",
                "ready_to_sigterm_ms", "baton_request_to_spawn_ms", "baton_ready_seen_ms", "baton_seen_to_done_ms"):
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
        for chunk in received(s, 65536):
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
                     "cpu_ms": round(c1[0] - c0[0], 1), "rss_kib": c1[1], "smaps": smaps_rollup(proc.pid),
                     "memory": memory_breakdown(proc.pid)}
        stop_tiny(proc, ctl)
        log(f"idle ({mode}): {out[mode]['wakeups_per_s']} wakeups/s over {window}s, "
            f"{out[mode]['watchdog_pings_per_s']} pings/s, {out[mode]['threads']} threads, RSS {out[mode]['rss_kib']} KiB")
    return out


def readiness_bench(baton, tiny, workdir, base_port, counts, delay):
    """baton's CPU while `--ready listen` waits for workers that are not ready yet: one generation of N tinyapps
    that sleep `delay` s (TINYAPP_DELAY_MS) before they put the listener into their epoll set. CPU is baton's
    utime+stime over the middle of the wait (from 2 s after baton started, every worker spawned by then, to 0.5 s
    before the delay ends); then how long after the delay the generation was serving (when baton saw the last
    worker accept, to the 20 ms of the status poll)."""
    rows = []
    for n in counts:
        tag = f"ready{n}"
        control = os.path.join(workdir, f"{tag}.sock")
        argv = [baton, "run", "--name", tag, "--control", control, "--workers", str(n), "--ready", "listen",
                "--ready-timeout", f"{delay + 60}s", "--listen", f"127.0.0.1:{base_port}", "--", tiny]
        env = dict(os.environ, TINYAPP_DELAY_MS=str(int(delay * 1000)))
        t0 = time.monotonic()
        proc = Spawned(argv, env, os.path.join(workdir, f"{tag}.log"))
        ctl = Control(control)
        time.sleep(2.0)
        c0, w0 = proc_stat(proc.pid), time.monotonic()
        time.sleep(max(0.5, t0 + delay - 0.5 - time.monotonic()))
        c1, w1 = proc_stat(proc.pid), time.monotonic()
        served = None
        while time.monotonic() < t0 + delay + 60 and proc.alive():
            try:
                r, _ = ctl.request("status")
                if any(g["state"] == "serving" for g in r["status"]["generations"]):
                    served = time.monotonic()
                    break
            except (OSError, RuntimeError, KeyError):
                pass
            time.sleep(0.02)
        early = served is not None and served < w1
        pct_core = round((c1[0] - c0[0]) / ((w1 - w0) * 1000) * 100, 2) if c0 and c1 else None
        rows.append({"workers": n, "delay_s": delay, "window_s": round(w1 - w0, 2),
                     "cpu_ms": round(c1[0] - c0[0], 1) if c0 and c1 else None, "cpu_pct_of_core": pct_core,
                     "ready_after_delay_ms": round((served - (t0 + delay)) * 1000) if served else None,
                     "ready_before_window_end": early})
        stop_tiny(proc, ctl)
        log(f"readiness: {n} workers not ready for {delay}s: baton {pct_core}% of a core over {w1 - w0:.1f}s; "
            f"serving {rows[-1]['ready_after_delay_ms']} ms after the delay")
    return rows
