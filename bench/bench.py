#!/usr/bin/env python3
"""baton's bench: what a reload costs, measured side by side against the alternatives, in one run on one
machine. Started by bench/run.sh (which builds baton and installs what is missing); see bench/README.md.

    python3 bench/bench.py --baton PATH [--quick] [--only SCENARIO[,..]] [--no-readme]

Writes bench/results/latest.json, latest.md, latency-*.png, prints the tables, and (full runs only) puts
the latest table into bench/README.md between the results markers.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from launchers import make_peer
from load import idle_bench, readiness_bench, run_case, scale_bench
from procs import BENCH, NODE, ROOT, loadavg, log
from report import plot, render, update_readme
from servers import render_servers, servers_bench, update_readme_servers

RESULTS = os.path.join(BENCH, "results")


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


def run_servers(a, data, results, workdir):
    """The servers scenario (bench/servers.py), into results/servers.json and servers.md and bench/README.md's
    servers section (not for --quick, --results or --no-readme)."""
    started, la0 = time.time(), loadavg()
    sv = servers_bench(a.baton, a.goapp, workdir, a.base_port + 300, a.quick)
    if sv is None:
        return
    m = data["machine"]
    la1 = loadavg()
    during = [x for r in sv["runs"] for x in (r["loadavg_before"][0], r["loadavg_after"][0])]
    out = {"date": data["date"], "baton_commit": data.get("baton_commit"), "quick": a.quick, "machine": m,
           "loadavg_start": la0, "loadavg_end": la1, "elapsed_s": round(time.time() - started, 1), "servers": sv}
    busy = max(during + [la0[0]]) > 0.5 * (m["nproc"] or 1)
    header = (f"{'Quick run' if a.quick else 'Run'} of {out['date']} (baton {out.get('baton_commit', '?')}), "
              f"{out['elapsed_s']:.0f} s. Machine: {m['nproc']} x {m['cpu']}, kernel {m['kernel']}, node {m['node']}. "
              f"Load average (1 min) {la0[0]} at the start, {min(during, default=la0[0])}-{max(during, default=la0[0])} "
              f"during the runs, {la1[0]} at the end" +
              (": the machine was shared with other work, so latencies are noisy; the failure counts are what to read."
               if busy else "."))
    out["header"] = header
    md = render_servers(out, header)
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, "servers.json.tmp"), "w") as f:
        json.dump(out, f, indent=1)
    os.replace(os.path.join(results, "servers.json.tmp"), os.path.join(results, "servers.json"))
    with open(os.path.join(results, "servers.md"), "w") as f:
        f.write(md)
    if not a.quick and not a.no_readme:
        update_readme_servers(md)
    print(md)
    log(f"servers: done in {out['elapsed_s']:.0f} s: {os.path.relpath(os.path.join(results, 'servers.json'), ROOT)}, servers.md")


def main():
    results = RESULTS
    if "--render" in sys.argv:  # tables and README again from results/latest.json, without running anything
        data = json.load(open(os.path.join(results, "latest.json")))
        pngs = [os.path.join(results, f"latency-{s_['key']}.png") for s_ in data["scenarios"]
                if os.path.exists(os.path.join(results, f"latency-{s_['key']}.png"))]
        md = render(data, pngs, results)
        if data.get("full", not data["quick"]) and "--no-readme" not in sys.argv:
            update_readme(md)
        print(md)
        sv = os.path.join(results, "servers.json")
        if os.path.exists(sv):  # the servers scenario's own results, kept apart
            out = json.load(open(sv))
            md = render_servers(out, out["header"])
            with open(os.path.join(results, "servers.md"), "w") as f:
                f.write(md)
            if not out["quick"] and "--no-readme" not in sys.argv:
                update_readme_servers(md)
            print(md)
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--baton", required=True)
    ap.add_argument("--tinyapp", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="comma-separated scenario keys (node, slow, workers4, idle10k, scale, idle, readiness, servers)")
    ap.add_argument("--goapp", help="Tests/Fixtures/rescue/goapp.go, built (bench/run.sh builds it); without it, no Go server")
    ap.add_argument("--base-port", type=int, default=27100)
    ap.add_argument("--no-readme", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, CSVs)")
    ap.add_argument("--results", help="write results here instead of bench/results (and leave bench/README.md alone)")
    a = ap.parse_args()
    if a.results:
        results, a.no_readme = os.path.abspath(a.results), True
    only = set(a.only.split(",")) if a.only else None
    started = time.time()
    workdir = tempfile.mkdtemp(prefix="baton-bench.")
    log(f"work directory {workdir}; load average {loadavg()}")
    data = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "quick": a.quick,
            "machine": machine(), "loadavg_start": loadavg(), "runs": [], "scenarios": []}
    try:
        gits = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        # Uncommitted changes to what is built (the figures then belong to the commit that adds them).
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "Sources", "preload", "Package.swift"],
                               capture_output=True, text=True).stdout.strip()
        data["baton_commit"] = gits + (" with uncommitted changes" if dirty else "")
    except OSError:
        pass
    port = a.base_port
    load_samples = []
    scenarios = plan(a.quick, a.baton, only)
    if only and not only - {"servers"}:
        run_servers(a, data, results, workdir)  # only the servers scenario: the others' results stay as they are
        if a.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        return
    # baton's own figures first, on a host the load scenarios have not left sockets on yet (10 000 closed connections
    # in TIME_WAIT after idle10k made each look at the kernel's list of connections cost several times more).
    if not only or "scale" in only:
        data["scale"] = scale_bench(a.baton, a.tinyapp, workdir, a.base_port + 200, 4 if a.quick else 10, a.quick)
    if not only or "idle" in only:
        data["idle"] = idle_bench(a.baton, a.tinyapp, workdir, a.base_port + 100, 4 if a.quick else 10)
    if not only or "readiness" in only:
        data["readiness"] = readiness_bench(a.baton, a.tinyapp, workdir, a.base_port + 150,
                                            [100] if a.quick else [100, 200], 6 if a.quick else 8)
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
    if (not a.quick and not only) or (only and "servers" in only):
        run_servers(a, data, results, workdir)
    data["loadavg_end"] = loadavg()
    data["loadavg_during"] = {"min": min(load_samples, default=None), "max": max(load_samples, default=None),
                              "mean": round(statistics.mean(load_samples), 2) if load_samples else None}
    data["elapsed_s"] = round(time.time() - started, 1)

    os.makedirs(results, exist_ok=True)
    data["targets"] = []
    pngs = plot(data, os.path.join(results, "latency-{}.png"))
    for r in data["runs"]:
        r.pop("_points", None)
        r["failures"] = r.pop("_fails")[:200]
    data["full"] = not a.quick and not only
    md = render(data, pngs, results)
    with open(os.path.join(results, "latest.json.tmp"), "w") as f:
        json.dump(data, f, indent=1)
    os.replace(os.path.join(results, "latest.json.tmp"), os.path.join(results, "latest.json"))
    if data["full"] and not a.no_readme:
        update_readme(md)
    print(md)
    log(f"done in {data['elapsed_s']:.0f} s: " + ", ".join(os.path.relpath(p, ROOT) for p in [os.path.join(results, "latest.json"), os.path.join(results, "latest.md")] + pngs))
    if a.keep:
        log(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
