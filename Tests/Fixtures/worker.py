#!/usr/bin/env python3
"""A test worker for baton's system tests: an HTTP server on the listeners baton hands over.

Behaviour comes from the environment and from a file read at start, so that a reload can switch it:
  REPORT_DIR       write REPORT_DIR/<pid>.json describing what the process received (fds, env, signals, pgid)
  READY_MODE       notify | fd | none (default none: baton detects the accept)
  BEHAVIOUR_FILE   a file holding one word: ok | crash | hang | ignore-term | fork-child | late-crash |
                   shutdown-listener | shutdown-then-crash | shutdown-loop | small-backlog | no-accept |
                   wiped-daemon | forged-daemon | filter | locked-filter, or
                   'send-notify MSG|MSG...' (notify messages sent once ready) |
                   health-503 (answers 503 on the listener named health: baton's probe socket) |
                   health-trigger (answers 503 there once the file BEHAVIOUR_FILE.unhealthy holds its pid)
  RECORD_SIGNALS   signal names (HUP,USR1): on each, append its name to REPORT_DIR/<pid>.signals and print
                   "worker pid P got SIGNAME"
Each response body is "generation G worker W pid P".
"""
import json, os, signal, socket, sys, threading, time

behaviour = "ok"
if os.environ.get("BEHAVIOUR_FILE") and os.path.exists(os.environ["BEHAVIOUR_FILE"]):
    behaviour = open(os.environ["BEHAVIOUR_FILE"]).read().strip() or "ok"

def status_line(name):
    for line in open("/proc/self/status"):
        if line.startswith(name + ":"):
            return line.split()[1]

def report():
    directory = os.environ.get("REPORT_DIR")
    if not directory:
        return
    me = f"/proc/{os.getpid()}/fd"
    fds = {}
    for name in os.listdir(me):
        try:
            target = os.readlink(f"{me}/{name}")
        except OSError:
            continue  # the fd listdir itself used, already closed
        if target != me:
            fds[name] = target
    data = {
        "pid": os.getpid(), "pgid": os.getpgid(0), "fds": fds,
        "env": {k: v for k, v in os.environ.items()},
        "sigblk": status_line("SigBlk"), "sigign": status_line("SigIgn"),
        "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "behaviour": behaviour,
    }
    path = os.path.join(directory, f"{os.getpid()}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(data, f)
    os.rename(path + ".tmp", path)

report()
print(f"worker pid {os.getpid()} behaviour {behaviour}", flush=True)

if behaviour == "daemonize":
    # The classic double fork: the grandchild leaves the worker's session and process group.
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True:
                time.sleep(3600)
        os._exit(0)
    os.close(w)
    daemon = os.read(r, 32).decode()
    with open(os.path.join(os.environ.get("REPORT_DIR", "/tmp"), f"{os.getpid()}.daemon"), "w") as f:
        f.write(daemon)
if behaviour == "wiped-daemon":
    # A daemon that leaves the worker's session and wipes its environment (BATON_* included): `setsid env -i sleep`.
    import subprocess
    daemon = subprocess.Popen(["setsid", "env", "-i", "sleep", "3599"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(os.environ.get("REPORT_DIR", "/tmp"), f"{os.getpid()}.daemon"), "w") as f:
        f.write(str(daemon.pid))
if behaviour == "resource-tracker":
    # Python's multiprocessing helper: a child in the worker's process group that exits once the worker is gone.
    from multiprocessing import resource_tracker
    resource_tracker.ensure_running()
    with open(os.path.join(os.environ.get("REPORT_DIR", "/tmp"), f"{os.getpid()}.tracker"), "w") as f:
        f.write(str(resource_tracker._resource_tracker._pid))
if behaviour == "forged-daemon":
    # A daemon that claims a later generation (the next one) to outlive its own.
    import subprocess
    daemon = subprocess.Popen(["setsid", "env", "-u", "LISTEN_PID", "BATON_GENERATION=2", "BATON_WORKER=1",
                               "sleep", "3598"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    with open(os.path.join(os.environ.get("REPORT_DIR", "/tmp"), f"{os.getpid()}.daemon"), "w") as f:
        f.write(str(daemon.pid))
if behaviour == "slow-start":
    time.sleep(1.0)
if behaviour == "crash":
    print("fatal: cannot load configuration (test crash)", file=sys.stderr, flush=True)
    sys.exit(3)
if behaviour == "shutdown-then-crash":
    socket.socket(fileno=os.dup(3)).shutdown(socket.SHUT_RDWR)
    print("shut the listener down, then crashing", file=sys.stderr, flush=True)
    sys.exit(3)
if behaviour == "crash-with-escapes":
    # A release whose last words would drive the terminal of whoever reads them: retitle it, clear it.
    print("\x1b]0;owned\x07\x1b[2Jfatal: escapes (test crash)", file=sys.stderr, flush=True)
    sys.exit(3)
if behaviour == "hang":
    print("hanging before ready", file=sys.stderr, flush=True)
    while True:
        time.sleep(3600)
if behaviour == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if behaviour == "fork-child":
    child = os.fork()
    if child == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(3600)
    with open(os.path.join(os.environ.get("REPORT_DIR", "/tmp"), f"{os.getpid()}.child"), "w") as f:
        f.write(str(child))

listeners = [socket.socket(fileno=3 + i) for i in range(int(os.environ.get("LISTEN_FDS", "1")))]
generation = os.environ.get("BATON_GENERATION", "?")
worker = os.environ.get("BATON_WORKER", "?")
in_flight = threading.Semaphore(1000)
active = [0]
lock = threading.Lock()
stopping = threading.Event()

names = os.environ.get("LISTEN_FDNAMES", "").split(":")

def unhealthy():
    if behaviour == "health-503":
        return True
    if behaviour == "health-trigger":
        try:
            return open(os.environ["BEHAVIOUR_FILE"] + ".unhealthy").read().strip() == str(os.getpid())
        except OSError:
            return False
    return False

def handle(conn, name=""):
    with lock:
        active[0] += 1
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        path = data.split(b" ")[1].decode()
        if "spin=" in path:
            # Burns this much CPU time (not wall time) before answering.
            end = time.thread_time() + int(path.split("spin=")[1].split("&")[0]) / 1000
            while time.thread_time() < end:
                pass
        if "sleep=" in path:
            print(f"handling {path}", flush=True)
            time.sleep(int(path.split("sleep=")[1].split("&")[0]) / 1000)
        if "hold=" in path:
            # Answers once the test lets it: it opens the FIFO named and closes its end (no timing involved).
            print(f"handling {path}", flush=True)
            with open(path.split("hold=")[1].split("&")[0], "rb") as fifo:
                fifo.read()
        body = f"generation {generation} worker {worker} pid {os.getpid()}\n".encode()
        if name == "health" and unhealthy():
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
    finally:
        conn.close()
        with lock:
            active[0] -= 1

class Stop(Exception):
    pass

# Set while the main thread accepts on the first listener and hands the connection to its thread: an exception raised
# there by the SIGTERM handler could land between accept() and the hand-off and drop that connection unanswered.
accepting = [False]
kept = []

def on_term(signum, frame):
    stopping.set()
    if not accepting[0]:
        raise Stop()
    # Inside accept: the first listener's fd now names a socket that does not listen, so a blocked accept, retried
    # once this handler returns, fails at once and the loop ends; a connection accepted already is handed off as
    # usual. The listener itself stays open in this worker (at another fd), as it would have.
    kept.append(os.dup(listeners[0].fileno()))
    dead = socket.socket()
    os.dup2(dead.fileno(), listeners[0].fileno(), inheritable=False)
    dead.close()

if behaviour != "ignore-term":
    signal.signal(signal.SIGTERM, on_term)

def on_recorded(signum, frame):
    name = signal.Signals(signum).name
    with open(os.path.join(os.environ.get("REPORT_DIR", "/tmp"), f"{os.getpid()}.signals"), "a") as f:
        f.write(name + "\n")
    print(f"worker pid {os.getpid()} got {name}", flush=True)

for name in filter(None, os.environ.get("RECORD_SIGNALS", "").split(",")):
    signal.signal(getattr(signal, "SIG" + name), on_recorded)

def notify(message):
    mode = os.environ.get("READY_MODE", "none")
    if mode == "notify":
        address = os.environ["NOTIFY_SOCKET"]
        if address.startswith("@"):
            address = "\0" + address[1:]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(message.encode(), address)
        s.close()
    elif mode == "fd":
        os.write(int(os.environ["BATON_NOTIFY_FD"]), (message + "\n").encode())

if behaviour == "junk-notify":
    # Hostile messages from a worker: an oversized datagram, and one that carries an fd (which baton must close).
    address = os.environ["NOTIFY_SOCKET"]
    address = "\0" + address[1:] if address.startswith("@") else address
    junk = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    junk.sendto(b"READY=1\n" + b"X" * 10000, address)
    marker = open(os.path.join(os.environ["REPORT_DIR"], "leak-marker"), "w")
    junk.connect(address)
    socket.send_fds(junk, [b"READY=1"], [marker.fileno()])
    marker.close()
    junk.close()
    print("junk sent", flush=True)

try:
    notify("STATUS=serving\nREADY=1")
    if behaviour == "watchdog-once":
        # Opts in to baton's watchdog (WATCHDOG_USEC), then hangs as far as the watchdog can tell.
        print(f"watchdog interval {os.environ.get('WATCHDOG_USEC')}", flush=True)
        notify("WATCHDOG=1")
    if behaviour.startswith("send-notify "):
        # Messages of the test's choosing, '|' between them, once ready: what a hostile or buggy app may send.
        for message in behaviour[len("send-notify "):].split("|"):
            notify(message)
        print("sent notify", flush=True)
    if behaviour == "late-crash":
        threading.Timer(0.2, lambda: os._exit(4)).start()
    if behaviour == "shutdown-listener" and worker == "1":
        # Breaks the listener every worker shares: the kernel then refuses every connection, for every worker.
        listeners[0].shutdown(socket.SHUT_RDWR)
        print("shut the listener down", flush=True)
    if behaviour == "no-accept":
        print("ready, and accepting nothing", flush=True)
        while not stopping.is_set():
            time.sleep(3600)
    if behaviour == "shutdown-loop" and worker == "1":
        # Breaks the shared listener again and again for a second.
        def breaker():
            end = time.time() + 1
            while time.time() < end:
                try:
                    socket.socket(fileno=os.dup(3)).shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # ENOTCONN: still broken from the last time, baton has not repaired it yet
                time.sleep(0.01)
            print("stopped breaking the listener", flush=True)
        threading.Thread(target=breaker, daemon=True).start()
    if behaviour in ("filter", "locked-filter") and worker == "1":
        # A socket filter that drops every connection, on the listener every worker shares (needs root).
        import ctypes, struct
        program = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))  # BPF_RET|BPF_K 0: drop
        listeners[0].setsockopt(socket.SOL_SOCKET, 26, struct.pack("HL", 1, ctypes.addressof(program)))
        if behaviour == "locked-filter":
            listeners[0].setsockopt(socket.SOL_SOCKET, 44, 1)  # SO_LOCK_FILTER
        print("filter attached", flush=True)
    if behaviour == "small-backlog":
        listeners[0].listen(1)
        print("listen(fd, 1)", flush=True)
    def serve(listener, name=""):
        # Only the main thread runs the SIGTERM handler, and only it says where it is.
        main = threading.current_thread() is threading.main_thread()
        while not stopping.is_set():
            try:
                if main:
                    accepting[0] = True
                try:
                    conn, _ = listener.accept()
                except OSError:
                    # The listener was shut down (by a worker); baton makes it listen again. (Or SIGTERM: see on_term.)
                    if stopping.is_set():
                        break
                    time.sleep(0.01)
                    continue
                threading.Thread(target=handle, args=(conn, name), daemon=True).start()
            finally:
                if main:
                    accepting[0] = False
    # The first listener is served by the main thread (blocked in accept, which baton can see), the others by
    # threads of their own.
    for index, extra in enumerate(listeners[1:], 1):
        name = names[index] if index < len(names) else ""
        threading.Thread(target=serve, args=(extra, name), daemon=True).start()
    serve(listeners[0])
except Stop:
    pass
# Drain: the listening socket stays open in baton; wait for requests in flight, then exit.
deadline = time.time() + 10
while time.time() < deadline:
    with lock:
        if active[0] == 0:
            break
    time.sleep(0.01)
print(f"worker pid {os.getpid()} drained", flush=True)
sys.exit(0)
