"""An ASGI app for uvicorn/hypercorn, unmodified servers under baton: answers with its generation.

GET /?sleep=MS answers after MS milliseconds.
"""
import asyncio
import os
import re

BODY = f"hello from generation {os.environ.get('BATON_GENERATION', '?')} pid {os.getpid()}\n".encode()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    slow = re.search(rb"(?:^|&)sleep=(\d{1,5})(?:&|$)", scope.get("query_string", b""))
    if slow:
        await asyncio.sleep(int(slow.group(1)) / 1000)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})
