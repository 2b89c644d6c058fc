"""Python's http.server as its documentation shows it: HTTPServer((HOST, PORT), Handler).serve_forever(), a
blocking socket, a single thread, and no SIGTERM handling."""
import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        generation = os.environ.get("BATON_GENERATION")
        body = f"hello from generation {generation} pid {os.getpid()} client {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = HTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))), Hello)
print(f"serving on {server.socket.getsockname()}", flush=True)
server.serve_forever()
