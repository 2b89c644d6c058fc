"""A release that meets EADDRINUSE and stays up without serving (run from a shell that forks, so that
LISTEN_PID names the shell, not this process): baton's ready timeout then explains it."""
import os
import socket
import sys
import time

try:
    socket.socket().bind(("127.0.0.1", int(os.environ["PORT"])))
except OSError as error:
    print(f"OSError: {error}", file=sys.stderr, flush=True)
time.sleep(120)
