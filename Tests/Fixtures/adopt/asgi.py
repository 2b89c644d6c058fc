"""A minimal ASGI app for `uvicorn asgi:app --port 8000`."""
import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"hello from generation {os.environ.get('BATON_GENERATION')} pid {os.getpid()}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
