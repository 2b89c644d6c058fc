"""The `servers` scenario: the servers users run, unmodified, under baton with and without the connection rescue,
under a real keep-alive client (wrk) and under a new connection per request (tools/loadgen.py --mode newconn), a
reload every ~1.5 s. Also nginx's and HAProxy's own reloads under the same keep-alive load, as peers.

Each server is run the way its own documentation shows (Tests/Fixtures/rescue/): it closes
its idle keep-alive connections when it stops. Results go to results/servers.json and servers.md, and (unless
--results or --no-readme) into bench/README.md between the servers markers; the other scenarios' results stay."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from load import wait_http
from procs import BENCH, LOADGEN, NODE, ROOT, Spawned, kill_pids, loadavg, log

FIXTURES = os.path.join(ROOT, "Tests", "Fixtures", "rescue")
WRK_LUA = os.path.join(BENCH, "wrk-summary.lua")
WRK_KINDS = ["read", "connect", "write", "timeout", "status"]
LOADGEN_KINDS = ["non2xx", "refused", "reset", "eof_idle", "eof_new", "eof_mid", "timeout", "other"]
RESCUE_RE = re.compile(r"took over (\d+) connection\(s\).*?: (\d+) handed to the serving generation, (\d+) closed idle, "
                       r"(\d+) reset, (\d+) shut down by the app")


def python_with(module):
    """A python3 that can import module (uvicorn and hypercorn come from PyPI, maybe into another python3 than
    Debian's), as its real path; or None."""
    for cand in [shutil.which("python3"), "/usr/bin/python3", sys.executable]:
        if not cand:
            continue
        r = subprocess.run([cand, "-c", f"import {module}, sys; print(sys.executable)"], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip()
    return None


def servers(goapp):
    """(key, label, argv, extra env) of each server that is installed here; the rest with the reason."""
    out, missing = [], []
    py = python_with("uvicorn")
    if py:
        out.append(("uvicorn", "uvicorn `--fd 3`",
                    [py, "-m", "uvicorn", "--fd", "3", "--app-dir", FIXTURES, "asgi:app", "--log-level", "warning"], {}))
    else:
        missing.append("uvicorn (pip install uvicorn)")
    py = python_with("hypercorn")
    if py:
        out.append(("hypercorn", "hypercorn `--bind fd://3`",
                    [py, "-m", "hypercorn", "--bind", "fd://3", "--log-level", "warning", "asgi:app"],
                    {"PYTHONPATH": FIXTURES}))
    else:
        missing.append("hypercorn (pip install hypercorn)")
    if goapp and os.access(goapp, os.X_OK):
        out.append(("go", "Go `net/http` + go-systemd `activation` + `Shutdown`", [goapp], {}))
    else:
        missing.append("Go (golang-go golang-github-coreos-go-systemd-dev)")
    if os.path.isdir("/usr/share/nodejs/express"):
        out.append(("express", "express 4 (`app.listen(PORT)`, bind adoption)", [NODE, os.path.join(FIXTURES, "express-app.js")],
                    {"NODE_PATH": "/usr/share/nodejs"}))
    else:
        missing.append("express (node-express)")
    out.append(("node", "Node `http`, `listen({fd: 3})` + `server.close()`", [NODE, os.path.join(FIXTURES, "node-close.js")], {}))
    return out, missing


# ---------------------------------------------------------------------------------------------- load


def start_load(kind, port, duration, d):
    """wrk (keep-alive) or loadgen (a new connection per request) for duration seconds; returns (Popen, parse)."""
    url = f"http://127.0.0.1:{port}/"
    if kind == "keepalive":
        argv = ["wrk", "-t2", "-c16", f"-d{duration}s", "--timeout", "5s", "-s", WRK_LUA, url]
        out = open(os.path.join(d, "wrk.out"), "w")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

        def parse():
            text = open(os.path.join(d, "wrk.out")).read()
            m = re.search(r"^WRK_JSON (.*)$", text, re.M)
            if not m:
                raise RuntimeError(f"wrk printed no summary: {text[-500:]}")
            w = json.loads(m.group(1))
            kinds = {k: w[k] for k in WRK_KINDS if w[k]}
            return {"client": "wrk -t2 -c16", "requests": w["requests"] + sum(w[k] for k in ("read", "connect", "write")),
                    "ok": w["requests"] - w["status"], "failed": sum(kinds.values()), "fail_kinds": kinds,
                    "p50_ms": round(w["p50_us"] / 1000, 2), "p99_ms": round(w["p99_us"] / 1000, 2),
                    "max_ms": round(w["max_us"] / 1000, 1), "elapsed_s": round(w["duration_us"] / 1e6, 2)}
        return p, parse
    lj = os.path.join(d, "loadgen.json")
    argv = [sys.executable, LOADGEN, "--url", url, "--clients", "16", "--mode", "newconn", "--duration", str(duration),
            "--timeout", "5", "--json", lj]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "loadgen.log"), "wb"))

    def parse():
        s = json.load(open(lj))
        kinds = {k: s[k] for k in LOADGEN_KINDS if s.get(k)}
        return {"client": "loadgen --mode newconn, 16 clients", "requests": s["requests"], "ok": s["ok"],
                "failed": s["failed"], "fail_kinds": kinds, "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"],
                "max_ms": s["max_ms"], "elapsed_s": s["elapsed_s"]}
    return p, parse


def reload_loop(load, period, warmup, duration, tail, do_reload):
    """Reloads every `period` s (or 0.2 s after the previous one returned, if later) while the load runs, from
    `warmup` s on, none in the last `tail` s. Returns the reloads: {"t": s since start, "ms", "ok"}."""
    t_start = time.monotonic()
    out = []
    next_at = t_start + warmup
    while load.poll() is None:
        now = time.monotonic()
        if next_at > t_start + duration - tail:
            break
        if now < next_at:
            time.sleep(next_at - now)
            continue
        t0 = time.monotonic()
        ok, detail = do_reload()
        t1 = time.monotonic()
        out.append({"t": round(t0 - t_start, 3), "ms": round((t1 - t0) * 1000, 1), "ok": ok, **({"detail": detail} if detail else {})})
        next_at = max(t0 + period, t1 + 0.2)
    return out


# ---------------------------------------------------------------------------------------------- under baton


def run_baton_case(baton, server, rescue, kind, port, workdir, duration, period):
    key, label, argv, env_extra = server
    d = os.path.join(workdir, f"servers-{key}-{'rescue' if rescue else 'norescue'}-{kind}")
    os.makedirs(d, exist_ok=True)
    control = os.path.join(d, "control.sock")
    env = dict(os.environ, PORT=str(port), **env_extra)
    cmd = [baton, "run", "--name", f"bench-{key}", "--control", control, "--listen", f"127.0.0.1:{port}",
           "--workers", "1", "--stop-timeout", "10s"] + ([] if rescue else ["--no-rescue"]) + ["--"] + argv
    log(f"servers / {key} {'rescue' if rescue else '--no-rescue'} / {kind}: start (port {port})")
    la0 = loadavg()
    proc = Spawned(cmd, env, os.path.join(d, "baton.log"))
    try:
        wait_http(port, timeout=60)
        load, parse = start_load(kind, port, duration, d)

        def do_reload():
            r = subprocess.run([baton, "reload", "--quiet", "--control", control], capture_output=True, text=True)
            return r.returncode == 0, (r.stderr.strip()[-300:] if r.returncode else None)
        reloads = reload_loop(load, period, 1.0, duration, 1.0, do_reload)
        load.wait(timeout=duration + 60)
        res = parse()
    finally:
        pids = []
        try:
            st = subprocess.run([baton, "status", "--json", "--control", control], capture_output=True, text=True, timeout=10)
            pids = [w["pid"] for g in json.loads(st.stdout).get("generations", []) for w in g["workers"] if w.get("pid")]
        except Exception:
            pass
        proc.stop()
        kill_pids(pids)
    rescued = [0, 0, 0, 0, 0]
    for line in open(os.path.join(d, "baton.log"), errors="replace"):
        m = RESCUE_RE.search(line)
        if m:
            rescued = [a + int(b) for a, b in zip(rescued, m.groups())]
    res.update(server=key, label=label, launcher="baton" if rescue else "baton --no-rescue", rescue=rescue, load=kind,
               reloads=sum(r["ok"] for r in reloads), reloads_failed=sum(not r["ok"] for r in reloads),
               reload_ms=[r["ms"] for r in reloads], reload_failures=[r["detail"] for r in reloads if not r["ok"]][:5],
               rescue_counts=dict(zip(["taken", "handed", "closed_idle", "reset", "shut_down_by_app"], rescued)),
               loadavg_before=la0, loadavg_after=loadavg())
    log(f"  {res['ok']} ok, {res['failed']} failed {res['fail_kinds'] or ''}, {res['reloads']} reloads "
        f"({res['reloads_failed']} refused), p99 {res['p99_ms']} ms, rescue {res['rescue_counts']}")
    return res


# ---------------------------------------------------------------------------------------------- peers: nginx, haproxy


class Backend:
    """The Go app as nginx's and HAProxy's upstream, under baton (for its listener; never reloaded)."""

    def __init__(self, baton, goapp, port, d):
        self.control = os.path.join(d, "backend.sock")
        self.proc = Spawned([baton, "run", "--name", "bench-backend", "--control", self.control, "--listen",
                             f"127.0.0.1:{port}", "--", goapp], dict(os.environ), os.path.join(d, "backend.log"))

    def stop(self):
        self.proc.stop()


def nginx_start(port, backend_port, d):
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
worker_processes 1;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  upstream app {{ server 127.0.0.1:{backend_port}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port};
    keepalive_requests 1000000;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
    proc = Spawned(["nginx", "-c", conf, "-p", d], dict(os.environ), os.path.join(d, "nginx.log"))

    def reload():
        r = subprocess.run(["nginx", "-c", conf, "-p", d, "-s", "reload"], capture_output=True, text=True)
        return r.returncode == 0, (r.stderr.strip()[-300:] if r.returncode else None)
    return proc, reload


def haproxy_start(port, backend_port, d):
    conf = os.path.join(d, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(f"""global
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  server app 127.0.0.1:{backend_port}
""")
    proc = Spawned(["haproxy", "-W", "-db", "-f", conf], dict(os.environ), os.path.join(d, "haproxy.log"))

    def reload():
        # Master-worker mode: SIGUSR2 to the master re-executes it and starts new workers; the old ones finish.
        os.kill(proc.pid, signal.SIGUSR2)
        return True, None
    return proc, reload


def run_proxy_case(name, baton, goapp, kind, port, workdir, duration, period):
    d = os.path.join(workdir, f"servers-{name}-{kind}")
    os.makedirs(d, exist_ok=True)
    log(f"servers / {name} reload / {kind}: start (port {port})")
    la0 = loadavg()
    backend = Backend(baton, goapp, port + 1, d)
    proc = None
    try:
        wait_http(port + 1, timeout=30)
        proc, reload = (nginx_start if name == "nginx" else haproxy_start)(port, port + 1, d)
        wait_http(port, timeout=30)
        load, parse = start_load(kind, port, duration, d)
        reloads = reload_loop(load, period, 1.0, duration, 1.0, reload)
        load.wait(timeout=duration + 60)
        res = parse()
    finally:
        if proc:
            proc.stop(sig=signal.SIGTERM if name == "haproxy" else signal.SIGQUIT)
        backend.stop()
    label = {"nginx": "nginx `-s reload` (proxy to the Go app)", "haproxy": "HAProxy `-W`, SIGUSR2 (proxy to the Go app)"}[name]
    res.update(server=name, label=label, launcher="its own reload", rescue=None, load=kind,
               reloads=sum(r["ok"] for r in reloads), reloads_failed=sum(not r["ok"] for r in reloads),
               reload_ms=[r["ms"] for r in reloads], reload_failures=[r["detail"] for r in reloads if not r["ok"]][:5],
               loadavg_before=la0, loadavg_after=loadavg())
    log(f"  {res['ok']} ok, {res['failed']} failed {res['fail_kinds'] or ''}, {res['reloads']} reloads, p99 {res['p99_ms']} ms")
    return res


# ---------------------------------------------------------------------------------------------- the scenario


def servers_bench(baton, goapp, workdir, base_port, quick=False):
    """Every installed server x {rescue, --no-rescue} x {keep-alive, new connection}; then nginx and HAProxy."""
    if not shutil.which("wrk"):
        log("servers: wrk is not installed (apt-get install wrk): skipped")
        return None
    duration, newconn_duration, period = (8, 6, 1.5) if quick else (14, 10, 1.5)
    found, missing = servers(goapp)
    if quick:
        found = [s for s in found if s[0] in ("uvicorn", "node")]
    runs = []
    port = base_port
    for server in found:
        for rescue in (True, False):
            for kind, d in (("keepalive", duration), ("newconn", newconn_duration)):
                try:
                    runs.append(run_baton_case(baton, server, rescue, kind, port, workdir, d, period))
                except Exception as e:  # one broken server must not cost the rest of the run
                    log(f"  servers / {server[0]} FAILED: {e}")
                port += 1
    peers = []
    if goapp and not quick:
        for name in ("nginx", "haproxy"):
            if not shutil.which(name):
                missing.append(f"{name} (apt-get install {name})")
                continue
            try:
                runs.append(run_proxy_case(name, baton, goapp, "keepalive", port, workdir, duration, period))
                peers.append(name)
            except Exception as e:
                log(f"  servers / {name} FAILED: {e}")
            port += 2
    return {"duration_s": duration, "newconn_duration_s": newconn_duration, "reload_period_s": period,
            "workers": 1, "missing": missing, "peers": peers, "runs": runs}


def render_servers(data, header):
    """The table "what a user of each server gets", then every run."""
    from report import fmt, md_table
    s = data["servers"]
    runs = s["runs"]
    lines = [header, "",
             f"**servers**: each server unmodified, 1 worker, under baton with the connection rescue (the default) and "
             f"with `--no-rescue`; a reload every {s['reload_period_s']} s (or 0.2 s after the previous `baton reload` "
             f"returned); keep-alive load `wrk -t2 -c16 -d{s['duration_s']}s`, and a new connection per request "
             f"(`tools/loadgen.py --mode newconn`, 16 clients, {s['newconn_duration_s']} s). Failed: wrk's read, "
             f"connect, write, timeout and non-2xx counts; loadgen's kinds. nginx and HAProxy: their own reloads, "
             f"proxying to the Go app, under the same keep-alive load.", ""]

    def find(server, rescue, load):
        return next((r for r in runs if r["server"] == server and r["rescue"] == rescue and r["load"] == load), None)

    def cell(r):
        if not r:
            return "-"
        kinds = ", ".join(f"{k} {v}" for k, v in r["fail_kinds"].items())
        return (f"**{r['failed']}** ({kinds})" if r["failed"] else "0") + f" / {r['reloads']}"
    rows = []
    for server in dict.fromkeys(r["server"] for r in runs):
        if server in ("nginx", "haproxy"):
            continue
        label = next(r["label"] for r in runs if r["server"] == server)
        rows.append([label, cell(find(server, True, "keepalive")), cell(find(server, False, "keepalive")),
                     cell(find(server, True, "newconn")), cell(find(server, False, "newconn"))])
    lines.append(md_table(["server, unmodified", "keep-alive, baton: failed / reloads", "keep-alive, `--no-rescue`",
                           "new connection per request, baton", "new connection, `--no-rescue`"], rows))
    proxies = [r for r in runs if r["server"] in ("nginx", "haproxy")]
    if proxies:
        lines += ["", md_table(["peer, its own reload", "keep-alive: failed / reloads", "p99 ms"],
                               [[r["label"], cell(r), fmt(r["p99_ms"], 1)] for r in proxies])]
    lines += ["", "Every run:", ""]
    lines.append(md_table(
        ["server", "launcher", "load", "reloads (refused)", "requests", "req/s", "failed", "by kind", "p50 ms", "p99 ms",
         "max ms", "rescue: taken / handed on / closed idle / reset / shut down by the app"],
        [[r["label"], r["launcher"], r["load"], f"{r['reloads']} ({r['reloads_failed']})", r["requests"],
          fmt(r["requests"] / r["elapsed_s"] if r["elapsed_s"] else None, 0),
          f"**{r['failed']}**" if r["failed"] else "0", ", ".join(f"{k} {v}" for k, v in r["fail_kinds"].items()) or "-",
          fmt(r["p50_ms"], 1), fmt(r["p99_ms"], 1), fmt(r["max_ms"], 0),
          " / ".join(str(r["rescue_counts"][k]) for k in ("taken", "handed", "closed_idle", "reset", "shut_down_by_app")) if r.get("rescue_counts") else "-"]
         for r in runs]))
    if s["missing"]:
        lines += ["", "Not installed, not run: " + ", ".join(s["missing"]) + "."]
    return "\n".join(lines) + "\n"


def update_readme_servers(md):
    path = os.path.join(BENCH, "README.md")
    begin, end = "<!-- servers:begin -->", "<!-- servers:end -->"
    text = open(path).read()
    if begin not in text or end not in text:
        log("bench/README.md has no servers markers; not updated")
        return
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    with open(path, "w") as f:
        f.write(head + begin + "\n" + md + end + tail)
