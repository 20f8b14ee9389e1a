"""Small server programs the lab runs inside its namespaces.

Run one server per process::

    python -m mirrord.lab.servers text-http --host H --port P --body TEXT
    python -m mirrord.lab.servers json-http --host H --port P --service NAME
    python -m mirrord.lab.servers tls-http  --host H --port P --service NAME --cert C --key K
    python -m mirrord.lab.servers udp-echo  --host H --port P --prefix PREFIX

Only the standard library is used, so the staging service's environment can stay minimal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import socketserver
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Enough for benchmarks that open hundreds of keep-alive connections at once
# (socketserver's default backlog of 5 drops SYNs under load).
_BACKLOG = 1024


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = _BACKLOG

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) of the bind
        # address: slow, and pointless noise for the lab's DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Readiness probes and cancelled clients disconnect mid-request all the time:
        # that is normal here, so no traceback per connection.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # includes ConnectionError, ssl.SSLError, TimeoutError
            return
        super().handle_error(request, client_address)


class _TLSServer(_Server):
    ssl_context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Handshake in the per-connection thread: a slow client must not block accept().
        tls = self.ssl_context.wrap_socket(request, server_side=True)
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    # headers and body are written separately: without this, Nagle + delayed ACK add 40 ms
    disable_nagle_algorithm = True
    server_version = "mirrord-lab"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one stderr line per request would dominate benchmark time

    def _read_body(self) -> bytes:
        # The body must be consumed even if unused, or the next request on a
        # keep-alive connection would be parsed from its leftover bytes.
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)  # CRLF after the chunk
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _reply(self, content_type: str, body: bytes, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        raise NotImplementedError

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET


class _TextHandler(_Handler):
    body: bytes = b""

    def _handle(self) -> None:
        self._read_body()
        self._reply("text/plain; charset=utf-8", self.body)


class _JsonHandler(_Handler):
    service: str = ""

    def _handle(self) -> None:
        body = self._read_body()
        reply: dict[str, Any] = {
            "service": self.service,
            "client": self.client_address[0],
            "client_port": self.client_address[1],
            "path": self.path,
            "method": self.command,
            "headers": dict(self.headers.items()),
        }
        if body or self.command == "POST":
            reply["body"] = body.decode("utf-8", errors="replace")
        self._reply("application/json", json.dumps(reply).encode())


def _handler(base: type[_Handler], **attrs: Any) -> type[_Handler]:
    return type(base.__name__, (base,), attrs)


def serve_udp_echo(host: str, port: int, prefix: bytes) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    _ready(f"udp-echo on {host}:{port}")
    while True:
        data, peer = sock.recvfrom(65535)
        with contextlib.suppress(OSError):  # peer gone / reply too big: keep serving
            sock.sendto(prefix + data, peer)


def _ready(what: str) -> None:
    print(f"listening: {what}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mirrord.lab.servers")
    parser.add_argument("kind", choices=["text-http", "json-http", "tls-http", "udp-echo"])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", default="", help="text-http: the response body")
    parser.add_argument("--service", default="", help="json-http/tls-http: the 'service' field")
    parser.add_argument("--prefix", default="echo:", help="udp-echo: prepended to each reply")
    parser.add_argument("--cert", help="tls-http: certificate chain PEM")
    parser.add_argument("--key", help="tls-http: private key PEM")
    parser.add_argument(
        "--remote-files",
        metavar="MOUNT_POINT",
        help="first mount a tmpfs there (in this mount namespace) with the target's files",
    )
    args = parser.parse_args(argv)
    if args.remote_files:
        from mirrord.lab.remote_files import populate

        populate(args.remote_files)

    if args.kind == "udp-echo":
        serve_udp_echo(args.host, args.port, args.prefix.encode())
        return

    server: _Server
    if args.kind == "text-http":
        handler = _handler(_TextHandler, body=args.body.encode())
        server = _Server((args.host, args.port), handler)
    elif args.kind == "json-http":
        server = _Server((args.host, args.port), _handler(_JsonHandler, service=args.service))
    else:
        if not (args.cert and args.key):
            parser.error("tls-http needs --cert and --key")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        tls_server = _TLSServer(
            (args.host, args.port), _handler(_JsonHandler, service=args.service)
        )
        tls_server.ssl_context = ctx
        server = tls_server
    _ready(f"{args.kind} on {args.host}:{args.port}")
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
