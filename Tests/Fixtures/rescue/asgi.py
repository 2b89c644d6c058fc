"""An ASGI app for uvicorn/hypercorn, unmodified servers under baton: answers with its generation."""
import os

BODY = f"hello from generation {os.environ.get('BATON_GENERATION', '?')} pid {os.getpid()}\n".encode()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})
