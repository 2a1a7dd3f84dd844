"""In-process stand-ins for what is not under test: an HTTP(S) server and a TCP proxy.

Vault, ACME and DNS are always the real servers of servers.py. These stubs play the
rest: a Kubernetes TokenReview API, a CI token endpoint, something at VAULT_ADDR that
is not Vault (or answers with faults, or redirects), and a network that drops Vault.

- ``HttpStub(answer)``: records every request and answers each with ``answer(request)``.
- ``TcpFaultProxy(target)``: a byte pipe to a local port that can refuse connections
  for a while, and notes the request line of every HTTP request it passes on.
  ``python stubs.py TARGET`` runs one as a process (it prints its port), for a
  certbot hook that must cut Vault off by killing a PID.
"""
from __future__ import annotations

import dataclasses
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional

import servers


@dataclasses.dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclasses.dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


class HttpStub:
    """An HTTP server on 127.0.0.1 (HTTPS with ``tls=(cert, key)``), in this process."""

    def __init__(self, answer: Callable[[Request], Answer], *,
                 tls: Optional[tuple[Path, Path]] = None) -> None:
        self.requests: list[Request] = []
        stub = self
        mutex = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = Request(self.command, self.path, dict(self.headers.items()), body)
                with mutex:
                    stub.requests.append(request)
                reply = answer(request)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_LIST = _any  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.port: int = self.server.server_address[1]
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def seen(self) -> list[str]:
        """``"METHOD /path"`` of every request so far."""
        return [f"{r.method} {r.path}" for r in self.requests]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> HttpStub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TcpFaultProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target`` (the real Vault), in this process.

    ``refuse_for(seconds)`` is a Vault that blinks: open connections are cut,
    new ones refused (nothing listens), then it listens on the same port again.
    ``seen``: ``"METHOD /path"`` of every HTTP request sent through it so far.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self._mutex = threading.Lock()
        self._conns: list[socket.socket] = []
        self._stopped = False
        self._timers: list[threading.Timer] = []
        self.seen: list[str] = []
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # A port of servers.free_port: free while the proxy refuses, none other takes it.
        self.port: int = servers.free_port()
        self._srv.bind(("127.0.0.1", self.port))
        self._srv.listen(64)
        self._start(self._srv)

    def _start(self, srv: socket.socket) -> None:
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return  # shut down: refusing, or stopped
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._mutex:
                self._conns += [client, upstream]
            for a, b, seen in ((client, upstream, self.seen), (upstream, client, None)):
                threading.Thread(target=self._pipe, args=(a, b, seen), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket, seen: Optional[list[str]]) -> None:
        buf = bytearray()
        try:
            while data := a.recv(65536):
                if seen is not None:
                    buf += data
                    self._note_requests(buf, seen)
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def _note_requests(self, buf: bytearray, seen: list[str]) -> None:
        """Take each whole request (head, then Content-Length bytes of body) off ``buf``."""
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            head = bytes(buf[:end]).decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                key, _, value = line.partition(":")
                if key.strip().lower() == "content-length":
                    length = int(value)
            if len(buf) < end + 4 + length:
                return
            with self._mutex:
                seen.append(" ".join(head[0].split(" ")[:2]))
            del buf[:end + 4 + length]

    def _close_all(self) -> None:
        with self._mutex:
            conns, self._conns = self._conns, []
            srv = self._srv
        # close() alone would not wake the thread blocked in accept().
        for s in [srv, *conns]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def refuse_for(self, seconds: float) -> None:
        """From now on for ``seconds``: every connection cut or refused."""
        self._close_all()
        timer = threading.Timer(seconds, self._listen_again)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _listen_again(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(64)
        with self._mutex:
            if self._stopped:
                srv.close()
                return
            self._srv = srv
        self._start(srv)

    def stop(self) -> None:
        with self._mutex:
            self._stopped = True
        for timer in self._timers:
            timer.cancel()
        self._close_all()


if __name__ == "__main__":
    proxy = TcpFaultProxy(int(sys.argv[1]))
    print(proxy.port, flush=True)
    threading.Event().wait()
