"""The report: the tables and the targets as Markdown, the latency pictures, and bench/README.md's results."""
import os
import statistics

from procs import BENCH, log


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
                      fmt(b.get("exec_to_node_start_ms_median"), 1), fmt(b.get("baton_request_to_spawn_ms_median"), 2),
                      fmt(b.get("baton_ready_seen_ms_median"), 2), fmt(b.get("baton_seen_to_done_ms_median"), 2),
                      fmt(b.get("baton_own_ms_median"), 2),
                      fmt(b.get("rest_ms_median"), 1), fmt(b.get("ready_to_sigterm_ms_median"), 2),
                      fmt(b.get("app_drain_ms_median"), 0), fmt(b.get("node_exit_to_reaped_ms_median"), 1),
                      fmt(b.get("cpu_ms_per_reload"), 1), fmt(b.get("cpu_ms_per_s_between_reloads"), 3),
                      fmt(round(b["rss_kib_one_generation"] / 1024, 1) if b.get("rss_kib_one_generation") else None, 1),
                      fmt(round(b["rss_kib_max"] / 1024, 1) if b.get("rss_kib_max") else None, 1)])
    if brows:
        lines.append("\n**baton itself**: each reload split along one clock (medians; see README, \"How a reload is split\"); CPU and RSS of the baton process\n")
        lines.append(md_table(["run", "reload ms", "app startup ms", "exec to node start ms", "request to spawn ms",
                               "READY to baton's log ms", "baton's log to the reply ms", "baton's own ms (sum of the 3)",
                               "reload − app startup ms", "after the reply: READY to SIGTERM in the old app ms",
                               "old app's drain ms", "node exit to reaped ms",
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
        lines += memory_tables(data["idle"].get("plain", {}).get("memory"))
    if data.get("readiness"):
        lines.append("\n**`--ready listen` while workers are not ready yet** (one generation of tinyapps that sleep "
                     "before they touch the listener; baton's CPU over the middle of the wait)\n")
        lines.append(md_table(["workers", "not ready for s", "window s", "baton CPU ms", "% of a core",
                               "serving ms after the delay"],
                              [[r["workers"], r["delay_s"], r["window_s"], r["cpu_ms"], r["cpu_pct_of_core"],
                                r["ready_after_delay_ms"]] for r in data["readiness"]]))
    return "\n".join(lines)


def memory_tables(mem, top=8):
    """Where baton's resident memory is (idle, one generation): file pages and anonymous ones, per mapped file
    and, for the baton binary, per ELF section (bench/memory.py)."""
    if not mem:
        return []
    kib = lambda v: round(v / 1024, 2)
    out = [f"\n**baton's resident memory** (idle, one generation): VmRSS {kib(mem['rss_kib'])} MiB = "
           f"{kib(mem['rss_file_kib'])} MiB file pages + {kib(mem['rss_anon_kib'])} MiB anonymous\n"]
    for title, key in (("mapping", "by_mapping"), ("section of the baton binary", "exe_by_section")):
        rows = sorted((mem.get(key) or {}).items(), key=lambda kv: -(kv[1]["file"] + kv[1]["anon"]))
        if not rows:
            continue
        body = [[name, kib(v["file"]), kib(v["anon"])] for name, v in rows[:top]]
        if rows[top:]:
            body.append([f"{len(rows) - top} more", kib(sum(v["file"] for _, v in rows[top:])),
                         kib(sum(v["anon"] for _, v in rows[top:]))])
        out.append(md_table([title, "file MiB", "anonymous MiB"], body))
        out.append("")
    return out


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
        out.append(("baton RSS <= 8 MiB with one generation", max(rss) <= 8 * 1024,
                    f"VmRSS {min(rss) / 1024:.1f}-{max(rss) / 1024:.1f} MiB" +
                    (f" (PSS {idle['smaps'].get('Pss', 0) / 1024:.1f} MiB, private {(idle['smaps'].get('Private_Clean', 0) + idle['smaps'].get('Private_Dirty', 0)) / 1024:.1f} MiB)" if idle else "")))
    if idle:
        wd = data["idle"].get("watchdog")
        extra = f"; with WatchdogSec=2s: {wd['wakeups_per_s']} wakeups/s for {wd['watchdog_pings_per_s']} pings/s" if wd else ""
        out.append(("0 idle wakeups/s apart from watchdog pings", idle["wakeups_per_s"] == 0,
                    f"{idle['wakeups_per_s']} wakeups/s over {idle['window_s']} s ({idle['threads']} threads){extra}"))
    scale = {s_["config"]: s_ for s_ in data.get("scale", [])}
    for config, margin in (("64 workers, 1 listener", 20), ("64 workers, 256 listeners", 25)):
        s_ = scale.get(config)
        if s_ and s_.get("floor_ms") is not None:
            over = s_["median_ms"] - s_["floor_ms"]
            out.append((f"reload of {config.replace('workers', 'workers x').replace(', ', ' ')} <= posix_spawn floor + {margin} ms",
                        over <= margin, f"{s_['median_ms']} ms median over a {s_['floor_ms']} ms floor (+{over:.1f} ms)"))
    ready = data.get("readiness") or []
    if ready:
        out.append(("--ready listen CPU while 200 workers are not ready <= 2 % of a core",
                    all(r["cpu_pct_of_core"] <= 2 for r in ready),
                    ", ".join(f"{r['workers']} workers: {r['cpu_pct_of_core']} %" for r in ready)))
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


# ---------------------------------------------------------------------------------------------- markdown


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


def render(data, pngs, results):
    """The tables (and targets) as Markdown, from the data of a run; writes latest.md into results."""
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
    with open(os.path.join(results, "latest.md"), "w") as f:
        f.write(md)
    return md
