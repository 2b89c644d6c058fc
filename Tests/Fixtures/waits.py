#!/usr/bin/env python3
"""A worker for the zero-configuration readiness tests: it waits on baton's listener (fd 3) the way argv[1] says
(or the file argv[1] names after an @):

  select        select.select([listener], ...), then accept (the select syscall; glibc makes it pselect6)
  poll          select.poll(), then accept
  selectors     selectors.DefaultSelector (epoll), then accept
  socketserver  socketserver.ThreadingTCPServer on fd 3, serve_forever() (its PollSelector: poll)
  moved         fd 3 dup'ed to fd 9 and closed, then select on fd 9
  unseen        prctl(PR_SET_DUMPABLE, 0), then select (a baton without CAP_SYS_PTRACE cannot look into it)
  own-port      listens on a port of its own (127.0.0.1, PORT or a free one) and accepts there
  sleep         never touches fd 3, sleeps
  closed        closes fd 3, sleeps
  stdin         blocks reading fd 0 (a pipe put there, since baton gives workers /dev/null)
  select-other  select on a pipe of its own, not on fd 3
Each response body is "generation G worker W pid P"; on SIGTERM it stops waiting, finishes what it took and exits 0.
A worker that serves makes the listener non-blocking, as gunicorn does (it is shared: all workers here are alike).
"""
import os, select, selectors, signal, socket, socketserver, sys, threading, time

mode = sys.argv[1]
if mode.startswith("@"):
    mode = open(mode[1:]).read().strip()  # a mode a reload can switch
generation = os.environ.get("BATON_GENERATION", "?")
worker = os.environ.get("BATON_WORKER", "?")
active = [0]
lock = threading.Lock()
stopping = [False]
# The stop signal only sets a flag and wakes the wait through this pipe (which each wait also watches): a
# connection the worker took is never dropped by an exception raised between accept() and its thread.
wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)


class Stop(Exception):
    pass


def on_term(signum, frame):
    stopping[0] = True
    if mode in ("own-port", "sleep", "closed", "stdin", "select-other"):
        raise Stop()  # never ready: nothing to finish
    if mode == "socketserver":
        threading.Thread(target=server.shutdown, daemon=True).start()


signal.signal(signal.SIGTERM, on_term)


def handle(conn):
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        target = data.split(b" ")[1].decode()
        if "sleep=" in target:
            time.sleep(int(target.split("sleep=")[1].split("&")[0]) / 1000)
        body = f"generation {generation} worker {worker} pid {os.getpid()}\n".encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
    except OSError:
        pass
    finally:
        conn.close()
        with lock:
            active[0] -= 1


def take(listener):
    # The listener is non-blocking (as gunicorn makes it): another worker may have taken the connection this one was
    # woken for.
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return
    conn.setblocking(True)
    with lock:
        active[0] += 1
    threading.Thread(target=handle, args=(conn,), daemon=True).start()


def drain():
    deadline = time.time() + 10
    while time.time() < deadline:
        with lock:
            if active[0] == 0:
                break
        time.sleep(0.01)
    print(f"worker pid {os.getpid()} drained", flush=True)
    sys.exit(0)


print(f"worker pid {os.getpid()} waits: {mode}", flush=True)
if mode in ("select", "moved", "unseen"):
    fd = 3
    if mode == "moved":
        fd = os.dup2(3, 9)
        os.close(3)
    if mode == "unseen":
        import ctypes
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
    listener = socket.socket(fileno=fd)
    listener.setblocking(False)
    while not stopping[0]:
        readable, _, _ = select.select([listener, wake_r], [], [])
        if listener in readable:
            take(listener)
elif mode == "poll":
    listener = socket.socket(fileno=3)
    listener.setblocking(False)
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while not stopping[0]:
        if any(fd == 3 for fd, _ in poller.poll()):
            take(listener)
elif mode == "selectors":
    listener = socket.socket(fileno=3)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    print(f"selector {type(selector).__name__}", flush=True)
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    while not stopping[0]:
        if any(key.fileobj is listener for key, _ in selector.select()):
            take(listener)
elif mode == "socketserver":
    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            with lock:
                active[0] += 1
            handle(self.request)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True

        def shutdown_request(self, request):
            pass  # handle() closed it

    server = Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=3)
    server.socket.setblocking(False)  # its accept() after the herd's wake-up says EAGAIN, which it ignores
    server.serve_forever()
elif mode == "own-port":
    own = socket.socket()
    own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    own.bind(("127.0.0.1", int(os.environ.get("PORT", "0"))))
    own.listen()
    print(f"listening on {own.getsockname()[1]}", flush=True)
    try:
        while True:
            own.accept()[0].close()
    except Stop:
        pass
elif mode in ("sleep", "closed"):
    if mode == "closed":
        os.close(3)
    try:
        time.sleep(3600)
    except Stop:
        pass
elif mode == "stdin":
    r, w = os.pipe()
    os.dup2(r, 0)
    try:
        os.read(0, 1)
    except Stop:
        pass
elif mode == "select-other":
    r, w = os.pipe()
    try:
        select.select([r], [], [])
    except Stop:
        pass
else:
    sys.exit(f"unknown mode {mode}")
drain()
