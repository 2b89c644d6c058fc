"""Peer "gunicorn": the example app's behaviour as a minimal WSGI app (standard library only).

Each request waits WORK_MS (plus ?sleep=N ms) and answers "hello from generation ... pid ...". Importing the
module waits STARTUP_MS, like the example apps' slow start (gunicorn imports it in every new worker, since
the bench does not use --preload)."""
import os
import re
import time

WORK = int(os.environ.get("WORK_MS", "0")) / 1000
time.sleep(int(os.environ.get("STARTUP_MS", "0")) / 1000)
SLEEP = re.compile(r"(?:^|&)sleep=(\d+)")


def app(environ, start_response):
    m = SLEEP.search(environ.get("QUERY_STRING", ""))
    time.sleep(WORK + (int(m.group(1)) / 1000 if m else 0))
    body = f"hello from generation gunicorn worker 0 pid {os.getpid()} version 1.0\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
