"""A keep-alive HTTP server on fd 3 that, on SIGTERM, stops accepting, waits LAZY_CLOSE_MS without reading, then
closes every connection it has and exits: what a server's idle close does to a request already on its way. A
connection whose request is GET /bye is closed once answered, as a keep-alive timeout would close it."""
import os, selectors, signal, socket, sys, time

generation = os.environ.get("BATON_GENERATION", "?")
wait = int(os.environ.get("LAZY_CLOSE_MS", "1000")) / 1000
listener = socket.socket(fileno=3)
listener.setblocking(False)
selector = selectors.DefaultSelector()
selector.register(listener, selectors.EVENT_READ)
connections = set()
stopping = False


def stop(*_):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, stop)
while not stopping:
    for key, _ in selector.select(0.05):
        if key.fileobj is listener:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue
            conn.setblocking(False)
            connections.add(conn)
            selector.register(conn, selectors.EVENT_READ)
            continue
        conn = key.fileobj
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            data = b""
        if not data:
            selector.unregister(conn)
            connections.discard(conn)
            conn.close()
            continue
        body = f"hello from generation {generation} pid {os.getpid()}\n".encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        if data.startswith(b"GET /bye "):
            # Answered, then closed between requests, as a server's keep-alive timeout does.
            selector.unregister(conn)
            connections.discard(conn)
            conn.close()
selector.unregister(listener)
listener.close()
print(f"closing {len(connections)} connection(s) in {wait}s", flush=True)
time.sleep(wait)
for conn in connections:
    conn.close()
sys.exit(0)
