"""Checks what libbaton-adopt.so does to the socket calls of a worker, and writes a JSON report to $REPORT.
baton runs it with --listen 127.0.0.1:$PORT --listen unix:$UNIX_PATH (fds 3 and 4)."""
import errno
import fcntl
import json
import os
import signal
import socket
import threading
import time

PORT = int(os.environ["PORT"])
UNIX = os.environ["UNIX_PATH"]
report = {}


def inode(fd):
    return os.fstat(fd).st_ino


def bind_error(sock, address):
    try:
        sock.bind(address)
        return 0
    except OSError as error:
        return error.errno


tcp, unix = inode(3), inode(4)

# An IPv6 dual-stack wildcard on baton's port (what Node's listen(8000) binds), blocking and close-on-exec
# (Python's default): baton's 127.0.0.1 listener, on the app's own fd number, with the app's flags.
first = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
first.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
number = first.fileno()
first.bind(("::", PORT))
first.listen(5)
report["wildcard_adopted"] = inode(number) == tcp and first.fileno() == number and number > 4
report["wildcard_cloexec"] = not os.get_inheritable(number)
report["wildcard_blocking"] = first.getblocking() and not fcntl.fcntl(number, fcntl.F_GETFL) & os.O_NONBLOCK
report["wildcard_name"] = list(first.getsockname()[:2])

# The same port a second time, from an IPv4 socket the app made non-blocking and inheritable: the same listener.
second = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
second.setblocking(False)
os.set_inheritable(second.fileno(), True)
second.bind(("127.0.0.1", PORT))
second.listen(7)
report["twice_adopted"] = inode(second.fileno()) == tcp
report["twice_nonblocking"] = not second.getblocking() and bool(fcntl.fcntl(second.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK)
report["twice_inheritable"] = os.get_inheritable(second.fileno())
report["first_still_blocking"] = first.getblocking() and not fcntl.fcntl(number, fcntl.F_GETFL) & os.O_NONBLOCK
try:
    second.accept()
    report["nonblocking_accept"] = "accepted"
except BlockingIOError:
    report["nonblocking_accept"] = "EAGAIN"

# Port 0 ("any port") and another port: sockets of the app's own.
any_port = socket.socket()
any_port.bind(("127.0.0.1", 0))
report["port0_own"] = inode(any_port.fileno()) not in (tcp, unix) and any_port.getsockname()[1] not in (0, PORT)
other = socket.socket()
report["other_port_error"] = bind_error(other, ("127.0.0.1", PORT + 1))
report["other_port_own"] = inode(other.fileno()) not in (tcp, unix)

# The unix path baton serves: adopted, and the app's unlink() leaves baton's socket file alone. A symlink to it is
# another path: not followed, so the app's bind meets the existing file.
served = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
served.bind(UNIX)
served.listen(1)
report["unix_adopted"] = inode(served.fileno()) == unix
os.unlink(UNIX)
report["unix_path_kept"] = os.path.exists(UNIX)
link = UNIX + ".link"
os.symlink(UNIX, link)
report["symlink_error"] = bind_error(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), link)

# A forked child is not the process LISTEN_PID names: nothing is adopted there.
child = os.fork()
if child == 0:
    os._exit(3 if bind_error(socket.socket(), ("127.0.0.1", PORT)) == errno.EADDRINUSE else 1)
report["child_bind"] = "EADDRINUSE" if os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 3 else "other"

# shutdown() of an adopted socket stops that fd only: baton's listener keeps listening (the accept below).
third = socket.socket()
third.bind(("127.0.0.1", PORT))
third.listen(1)
third.shutdown(socket.SHUT_RDWR)
try:
    third.accept()
    report["shut_accept"] = "accepted"
except OSError as error:
    report["shut_accept"] = errno.errorcode.get(error.errno, str(error.errno))

# A blocking accept() waits for a connection although the shared socket is non-blocking.
def connect_later():
    time.sleep(0.3)
    socket.create_connection(("127.0.0.1", PORT)).close()


threading.Thread(target=connect_later).start()
started = time.monotonic()
try:
    connection, peer = first.accept()
    report["blocking_accept_waited_ms"] = int((time.monotonic() - started) * 1000)
    report["blocking_accept_peer"] = peer[0]
    connection.close()
except OSError as error:
    report["blocking_accept_waited_ms"] = -1
    report["blocking_accept_error"] = str(error)

# ioctl(FIONBIO) with a pointer the app does not own: EFAULT, as without the library, not a crash.
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
FIONBIO = 0x5421
result = libc.ioctl(number, FIONBIO, ctypes.c_void_p(8))
report["fionbio_bad_pointer"] = errno.errorcode.get(ctypes.get_errno(), "none") if result != 0 else "ok"
report["still_blocking_after_bad_ioctl"] = first.getblocking()

with open(os.environ["REPORT"] + ".tmp", "w") as out:
    json.dump(report, out)
os.rename(os.environ["REPORT"] + ".tmp", os.environ["REPORT"])
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
while True:
    signal.pause()
