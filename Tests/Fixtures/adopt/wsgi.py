"""A minimal WSGI app for `gunicorn -b 127.0.0.1:8000 wsgi:app`."""
import os


def app(environ, start_response):
    body = f"hello from generation {os.environ.get('BATON_GENERATION')} pid {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
