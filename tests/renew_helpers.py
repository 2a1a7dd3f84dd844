"""Helpers for the stateless-renewal tests (fixtures: renew_fixtures.py).

Issuing costs ~3 s per certificate, so the session issues a few real lineages
once (``golden``) into their own Vault prefix, and each test copies the
records it needs into its own ``KVAULT_PREFIX`` (``seed``) - byte for byte
what ``certbot-kvault push`` wrote, accounts included.

Lineages:

- ``due``: www.example.com from the session Pebble; its renewal conf says
  ``renew_before_expiry = 3650 days``, so certbot always finds it due (also
  right after a renewal: what the double-order tests need).
- ``calm``: calm.example.com from the session Pebble, 5-year cert, not due.
- ``short``: short.example.com from a second Pebble issuing 2-day certs (so
  ``--due-within`` has something inside its window).
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import configobj
import jwt as pyjwt
import servers
from cryptography.hazmat.primitives.asymmetric import rsa
from servers import Bao, Pebble

KVAULT = os.path.join(os.path.dirname(sys.executable), "certbot-kvault")


@dataclasses.dataclass
class Golden:
    prefix: str
    ca_bundle: str          # both Pebbles' listener CAs: certbot may talk to either
    pebble: Pebble
    pebble2: Pebble
    domains: dict[str, str]


def scrubbed_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VAULT_", "KVAULT_", "BAO_"))
           and k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env.update(extra)
    return env


def run_kvault(args: Sequence[str], env: dict[str, str], check: bool = True,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([KVAULT, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"certbot-kvault {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def dir_args(root: Path) -> list[str]:
    for sub in ("config", "work", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return ["--config-dir", str(root / "config"), "--work-dir", str(root / "work"),
            "--logs-dir", str(root / "logs")]


def issue_lineage(pebble: Pebble, root: Path, name: str, domain: str, env: dict[str, str]) -> None:
    servers.run_certbot(
        ["certonly", "--standalone", "--http-01-port", str(pebble.http_port), "-d", domain,
         "--cert-name", name, "--register-unsafely-without-email", "--agree-tos"],
        config_dir=root / "config", work_dir=root / "work", logs_dir=root / "logs",
        pebble=pebble, env=env)


def make_always_due(conf_path: Path) -> None:
    conf = configobj.ConfigObj(str(conf_path), encoding="utf-8")
    conf["renew_before_expiry"] = "3650 days"
    # Top-level keys must come before the sections in a renewal conf.
    conf.scalars.remove("renew_before_expiry")
    conf.scalars.insert(0, "renew_before_expiry")
    conf.write()


def walk(bao: Bao, base: str) -> Iterator[str]:
    """Every secret below ``base`` on KV v2 ``secret/`` (relative paths)."""
    stack = [""]
    while stack:
        sub = stack.pop()
        r = bao.api("LIST", f"secret/metadata/{base}/{sub}".rstrip("/"))
        if r.status_code == 404:
            continue
        assert r.status_code == 200, r.text
        for key in r.json()["data"]["keys"]:
            if key.endswith("/"):
                stack.append(sub + key)
            else:
                yield sub + key


def seed(bao: Bao, golden: Golden, prefix: str, names: Sequence[str],
         target: Optional[Bao] = None) -> None:
    """Copy all accounts and the named lineages from the golden prefix (on ``bao``) to
    ``prefix`` on ``target`` (default: the same server)."""
    paths = [f"accounts/{p}" for p in walk(bao, f"{golden.prefix}/accounts")]
    paths += [f"certificates/{n}" for n in names]
    for path in paths:
        r = bao.api("GET", f"secret/data/{golden.prefix}/{path}")
        assert r.status_code == 200, r.text
        w = (target or bao).api("POST", f"secret/data/{prefix}/{path}",
                                json={"data": r.json()["data"]["data"]})
        assert w.status_code == 200, w.text


def kv_version(bao: Bao, prefix: str, path: str) -> int:
    """KV v2 metadata current_version of a secret (0 if absent)."""
    r = bao.api("GET", f"secret/metadata/{prefix}/{path}")
    if r.status_code == 404:
        return 0
    assert r.status_code == 200, r.text
    return int(r.json()["data"]["current_version"])


def record(bao: Bao, prefix: str, path: str) -> Optional[dict[str, Any]]:
    r = bao.api("GET", f"secret/data/{prefix}/{path}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["data"]["data"]
    return data


def locks_held(bao: Bao, prefix: str) -> list[str]:
    """Lock records below ``prefix`` that have an owner (a released lock has none)."""
    return sorted(p for p in walk(bao, f"{prefix}/locks")
                  if (record(bao, prefix, f"locks/{p}") or {}).get("owner"))


def orders(pebble: Pebble) -> int:
    """ACME orders this Pebble has accepted so far (from its log)."""
    return pebble.log_path.read_text(errors="replace").count("Added order")


def fresh_dirs(tmp_path: Path, name: str = "run") -> tuple[Path, list[str]]:
    root = tmp_path / name
    if root.exists():
        shutil.rmtree(root)
    return root, dir_args(root)


# ---- a TCP proxy in front of Vault that can refuse connections for a while -------------


class TcpFaultProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target`` (the real Vault), in this process.

    ``refuse_for(seconds)`` is a Vault that blinks: open connections are cut,
    new ones refused (nothing listens), then it listens on the same port again.
    The same byte pipe as test_dns's proxy, which a hook must be able to kill by
    pid and so runs as a process.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self._mutex = threading.Lock()
        self._conns: list[socket.socket] = []
        self._stopped = False
        self._timers: list[threading.Timer] = []
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", 0))
        self.port: int = self._srv.getsockname()[1]
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
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
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


# ---- a Kubernetes API server, as far as Vault's kubernetes auth needs one ----------------


class TokenReviewStub:
    """POST /apis/authentication.k8s.io/v1/tokenreviews over TLS, for known tokens only."""

    def __init__(self, workdir: Path) -> None:
        self.ca, cert, key = servers._make_listener_cert(workdir)
        self.accounts: dict[str, tuple[str, str, str]] = {}  # token -> (ns, name, uid)
        self.reviews = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.reviews += 1
                who = stub.accounts.get(body.get("spec", {}).get("token", ""))
                status: dict[str, Any] = {"authenticated": False}
                if self.path == "/apis/authentication.k8s.io/v1/tokenreviews" and who:
                    ns, name, uid = who
                    status = {"authenticated": True, "user": {
                        "username": f"system:serviceaccount:{ns}:{name}", "uid": uid,
                        "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}"]}}
                    # A projected token for audience X is reviewed for X (role `audience`).
                    if body.get("spec", {}).get("audiences"):
                        status["audiences"] = body["spec"]["audiences"]
                data = json.dumps({"apiVersion": "authentication.k8s.io/v1",
                                   "kind": "TokenReview", "status": status}).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def service_account_token(self, namespace: str, name: str,
                              audience: Optional[str] = None) -> str:
        """A service-account JWT: legacy (secret-based), or projected for ``audience``."""
        uid = secrets.token_hex(8)
        sub = f"system:serviceaccount:{namespace}:{name}"
        if audience is None:
            claims: dict[str, Any] = {
                "iss": "kubernetes/serviceaccount", "sub": sub,
                "kubernetes.io/serviceaccount/namespace": namespace,
                "kubernetes.io/serviceaccount/secret.name": f"{name}-token",
                "kubernetes.io/serviceaccount/service-account.name": name,
                "kubernetes.io/serviceaccount/service-account.uid": uid}
        else:
            now = int(time.time())
            claims = {
                "iss": "https://kubernetes.default.svc.cluster.local", "sub": sub,
                "aud": [audience], "iat": now, "nbf": now, "exp": now + 600,
                "kubernetes.io": {"namespace": namespace,
                                  "serviceaccount": {"name": name, "uid": uid}}}
        token = pyjwt.encode(claims, self.signer, algorithm="RS256")
        self.accounts[token] = (namespace, name, uid)
        return token

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
