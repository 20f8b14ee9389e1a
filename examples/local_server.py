"""The service you are developing, run on your laptop: it answers as "your laptop" and
prints every request it gets. Run it under mirrord to receive the target's traffic:

    python -m mirrord -t netns/STAGING examples/local_server.py                 # mirror
    python -m mirrord -t netns/STAGING -f examples/steal_header.json \\
        examples/local_server.py                                                # steal, filtered
"""

import http.server
import json


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        seen = {"method": self.command, "path": self.path, "client": self.client_address[0]}
        if body:
            seen["body"] = body.decode(errors="replace")
        print(json.dumps(seen), flush=True)
        reply = b"hello from your laptop"
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


server = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler)
print("ready", flush=True)
server.serve_forever()
