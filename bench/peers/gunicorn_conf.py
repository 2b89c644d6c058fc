"""gunicorn configuration for the bench (`gunicorn -c bench/peers/gunicorn_conf.py wsgi_app:app`).

Threaded workers (gthread) so that one worker serves many clients at once, as one Node process does;
keep-alive on. GUNICORN_BIND and GUNICORN_WORKERS come from the bench. The hooks only record events for the
bench (unix seconds, one JSON line each, in $BENCH_EVENTS): when a worker has loaded the app and when the
master has reaped one. gunicorn itself has no notion of "reload done"; the bench takes it as: as many
workers of the new set ready as configured, and every old one reaped."""
import json
import os
import time

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("GUNICORN_WORKERS", "1"))
worker_class = "gthread"
threads = 32
keepalive = 5
graceful_timeout = 30
backlog = 4096
accesslog = None


def _event(**fields):
    path = os.environ.get("BENCH_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(dict(fields, t=time.time())) + "\n")


def post_worker_init(worker):
    _event(event="worker_ready", pid=worker.pid)


def child_exit(server, worker):
    _event(event="worker_exit", pid=worker.pid)
