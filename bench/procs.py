"""The bench's processes: where things are, spawning a launcher and reading what /proc says about it (CPU time,
memory), with a sampler thread."""
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
NODE_APP = os.path.join(ROOT, "examples", "node", "app.js")
LOADGEN = os.path.join(ROOT, "tools", "loadgen.py")
APPTIMING = os.path.join(BENCH, "apptiming.js")
PEERS = os.path.join(BENCH, "peers")
CLK_TCK = os.sysconf("SC_CLK_TCK")
NODE = shutil.which("node") or shutil.which("nodejs") or "node"


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
