"""A WSGI app for gunicorn, unmodified under baton: answers with its generation. GET /?sleep=MS answers after MS ms."""
import os
import re
import time


def app(environ, start_response):
    slow = re.search(r"(?:^|&)sleep=(\d{1,5})(?:&|$)", environ.get("QUERY_STRING", ""))
    if slow:
        time.sleep(int(slow.group(1)) / 1000)
    body = f"hello from generation {os.environ.get('BATON_GENERATION', '?')} pid {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
