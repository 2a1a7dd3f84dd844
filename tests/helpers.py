"""Shared helpers of the test-suite (fixtures: conftest.py; servers: servers.py;
in-process stand-ins: stubs.py).

- run certbot-kvault (``kvault``: the console script; ``cli``: click's runner, in-process);
- read and write Vault records for set-up and checks (``record``, ``walk``, ``seed``...);
- OpenBao auth set-up (``load_policy``, ``enable_auth``, ``approle``, ``token_with_policy``);
- certbot (``issue_lineage``, ``dir_args``) and DNS-01 (``certonly_args``, ``pdns_entry``);
- the Kubernetes TokenReview API that Vault's kubernetes auth calls (``TokenReviewStub``).

Issuing costs ~3 s per certificate, so the session issues a few real lineages
once (the ``golden`` fixture) into their own Vault prefix, and each test copies the
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
import datetime
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import configobj
import jwt as pyjwt
import servers
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from servers import Bao, Pebble, PowerDNS
from stubs import Answer, HttpStub, Request

from certbot_kvault._internal.cli import main
from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.store.records import LineageRecord, PemSet
from certbot_kvault._internal.vault.client import VaultClient
from certbot_kvault._internal.vault.settings import VaultSettings

KVAULT = os.path.join(os.path.dirname(sys.executable), "certbot-kvault")
# Cases each Hypothesis property of test_generated.py ran, for the terminal summary.
GENERATED_CASES: dict[str, int] = {}
# Variables of the outer environment that must never leak into a test.
SCRUB_PREFIXES = ("VAULT_", "KVAULT_", "BAO_")
SCRUB_NAMES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
POLICIES = Path(__file__).resolve().parent.parent / "policies"
ZONE = "example.com"


# ---- certbot-kvault -------------------------------------------------------------------------


def kvault(*args: str, env: Optional[Mapping[str, str]] = None, check: bool = True,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real console script, as users and certbot's hook do.

    ``env`` is the whole environment of the child (default: ``os.environ``).
    """
    proc = subprocess.run([KVAULT, *args], env=dict(os.environ if env is None else env),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"certbot-kvault {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def cli(*args: str, env: Optional[dict[str, str]] = None) -> Result:
    """Run the CLI in-process (click's runner) with the current os.environ plus env."""
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def scrubbed_env(**extra: str) -> dict[str, str]:
    """os.environ without any Vault or CA-bundle setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(SCRUB_PREFIXES) and k not in SCRUB_NAMES}
    env.update(extra)
    return env


def golden_env(bao: Bao, golden: Golden, prefix: str, token: Optional[str] = None,
               **extra: str) -> dict[str, str]:
    """A renewer's whole environment: only Vault's address and a token (root unless
    ``token``), the test's prefix and the Pebbles' CA; ``extra`` adds or overrides."""
    return scrubbed_env(**{"VAULT_ADDR": bao.addr, "VAULT_TOKEN": token or bao.token,
                           "KVAULT_PREFIX": prefix, "REQUESTS_CA_BUNDLE": golden.ca_bundle,
                           **extra})


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The failed run's stderr, which must be exactly one line and no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def layout_from_env(**overrides: Any) -> Layout:
    return Layout(VaultClient(VaultSettings.from_env(**overrides)))


def snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry below root: (kind, mode, content or link target)."""
    out: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, "")
            else:
                out[rel] = ("file", mode, path.read_text())
    return out


# ---- OpenBao set-up ----------------------------------------------------------------------


def token_with_policy(bao: Bao, name: str, policy: str, ttl: str = "5m") -> str:
    """A fresh token holding only ``policy`` (written as ACL policy ``name``)."""
    r = bao.api("PUT", f"sys/policies/acl/{name}", {"policy": policy})
    assert r.status_code in (200, 204), r.text
    r = bao.api("POST", "auth/token/create", {"policies": [name], "ttl": ttl,
                                               "no_default_policy": False})
    assert r.status_code == 200, r.text
    token: str = r.json()["auth"]["client_token"]
    return token


def load_policy(bao: Bao, kind: str, prefix: str, entry: Optional[str] = None) -> str:
    """policies/<kind>.hcl for this test's prefix (and DNS ``entry``, for dns-entry.hcl's
    ENTRY), loaded into OpenBao; returns its name."""
    text = (POLICIES / f"{kind}.hcl").read_text().replace("/certbot/", f"/{prefix}/")
    if entry is not None:
        text = text.replace("ENTRY", entry)
    name = f"{kind}-{prefix}" + (f"-{entry}" if entry else "")
    r = bao.api("PUT", f"sys/policies/acl/{name}", json={"policy": text})
    assert r.status_code == 204, r.text
    return name


def enable_auth(bao: Bao, kind: str) -> str:
    mount = f"{kind}-{secrets.token_hex(3)}"
    r = bao.api("POST", f"sys/auth/{mount}", json={"type": kind})
    assert r.status_code == 204, r.text
    return mount


def approle(bao: Bao, policy: str, **role: Any) -> dict[str, str]:
    """A fresh AppRole mount with role ``renewer``; returns its login variables."""
    mount = enable_auth(bao, "approle")
    body = {"token_policies": [policy], "token_ttl": "10m", **role}
    r = bao.api("POST", f"auth/{mount}/role/renewer", json=body)
    assert r.status_code == 204, r.text
    role_id = bao.api("GET", f"auth/{mount}/role/renewer/role-id").json()["data"]["role_id"]
    secret_id = bao.api("POST", f"auth/{mount}/role/renewer/secret-id").json()["data"][
        "secret_id"]
    return {"VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id,
            "KVAULT_APPROLE_MOUNT": mount}


def secret_id_uses_left(bao: Bao, creds: dict[str, str]) -> int:
    """Logins the AppRole secret id of ``creds`` (from ``approle``) still allows."""
    r = bao.api("POST", f"auth/{creds['KVAULT_APPROLE_MOUNT']}/role/renewer/secret-id/lookup",
                {"secret_id": creds["VAULT_SECRET_ID"]})
    assert r.status_code == 200, r.text
    return int(r.json()["data"]["secret_id_num_uses"])


def live_login_tokens(bao: Bao, mount: str) -> int:
    """Tokens alive right now that a login on auth/<mount> issued (asked with root)."""
    r = bao.api("LIST", "auth/token/accessors")
    assert r.status_code == 200, r.text
    live = 0
    for accessor in r.json()["data"]["keys"]:
        info = bao.api("POST", "auth/token/lookup-accessor", {"accessor": accessor})
        if info.status_code == 200 and info.json()["data"].get("path") == f"auth/{mount}/login":
            live += 1
    return live


def kubernetes_role(bao: Bao, token_review: TokenReviewStub, mount: str, role: str,
                    sa: Mapping[str, Any], *policies: str) -> None:
    """Vault's kubernetes auth at ``mount`` (enabled) as the examples' headers set it up:
    the TokenReview API of ``token_review``, and ``role`` for the service account ``sa``
    (metadata: name, namespace), audience vault, holding ``policies``."""
    r = bao.api("POST", f"auth/{mount}/config", json={
        "kubernetes_host": token_review.url, "kubernetes_ca_cert": token_review.ca.read_text(),
        "token_reviewer_jwt": token_review.service_account_token("kube-system", "reviewer"),
        "disable_local_ca_jwt": True})
    assert r.status_code == 204, r.text
    r = bao.api("POST", f"auth/{mount}/role/{role}", json={
        "bound_service_account_names": [sa["name"]],
        "bound_service_account_namespaces": [sa["namespace"]],
        "audience": "vault", "token_policies": list(policies), "token_ttl": "30m"})
    assert r.status_code == 204, r.text


def pub_pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


# ---- records in Vault ----------------------------------------------------------------------


@dataclasses.dataclass
class Golden:
    prefix: str
    ca_bundle: str          # both Pebbles' listener CAs: certbot may talk to either
    pebble: Pebble
    pebble2: Pebble
    domains: dict[str, str]


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


def signal_tree(pid: int, sig: int) -> None:
    """``sig`` to a certbot-kvault's process group (it runs with ``start_new_session``) and
    to its children's: without a terminal, it runs certbot in a process group of its own."""
    children: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(c) for c in f.read().split()]
    except FileNotFoundError:
        pass  # already gone
    for group in [pid, *children]:
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            pass


def locks_held(bao: Bao, prefix: str) -> list[str]:
    """Lock records below ``prefix`` that have an owner (a released lock has none)."""
    return sorted(p for p in walk(bao, f"{prefix}/locks")
                  if (record(bao, prefix, f"locks/{p}") or {}).get("owner"))


# ---- certbot and ACME ----------------------------------------------------------------------


def dir_args(root: Path) -> list[str]:
    for sub in ("config", "work", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return ["--config-dir", str(root / "config"), "--work-dir", str(root / "work"),
            "--logs-dir", str(root / "logs")]


def fresh_dirs(tmp_path: Path, name: str = "run") -> tuple[Path, list[str]]:
    root = tmp_path / name
    if root.exists():
        shutil.rmtree(root)
    return root, dir_args(root)


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


def orders(pebble: Pebble) -> int:
    """ACME orders this Pebble has accepted so far (from its log)."""
    return pebble.log_path.read_text(errors="replace").count("Added order")


def pebble_log_mark(pebble: Pebble) -> int:
    """Where this Pebble's log ends now: pass it to ``validated_names``."""
    return pebble.log_path.stat().st_size


def validated_names(pebble: Pebble, since: int = 0) -> list[str]:
    """The names this Pebble validated since log offset ``since``, one entry per
    authorization (Pebble runs with PEBBLE_AUTHZREUSE=0: each order gets its own)."""
    with open(pebble.log_path, "rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    return sorted(m.group(1) for m in re.finditer(
        r'Pulled a task from the Tasks queue: .*?Value:"([^"]+)"', text))


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """certbot's last stderr line (where it puts the error of a failed run)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines, proc.stdout
    return lines[-2] if lines[-1].startswith("Ask for help") else lines[-1]


# ---- DNS-01 --------------------------------------------------------------------------------


def pdns_entry(pdns: PowerDNS, **override: str) -> dict[str, str]:
    entry = {"provider": "powerdns", "auth_token": pdns.api_key, "pdns_server": pdns.api_url,
             "pdns_server_id": pdns.server_id}
    entry.update(override)
    return entry


def resolver_opt(pdns: PowerDNS) -> str:
    return f"127.0.0.1:{pdns.dns_port}"


def certonly_args(*extra: str, dns: Optional[str] = "pdns",
                  domains: tuple[str, ...] = (ZONE, f"*.{ZONE}")) -> list[str]:
    args = ["certonly", "-a", "kvault", "--agree-tos", "--register-unsafely-without-email"]
    if dns:
        args += ["--kvault-dns", dns]
    for d in domains:
        args += ["-d", d]
    return args + list(extra)


# ---- a Kubernetes API server, as far as Vault's kubernetes auth needs one ----------------


class TokenReviewStub:
    """POST /apis/authentication.k8s.io/v1/tokenreviews over TLS, for known tokens only."""

    def __init__(self, workdir: Path) -> None:
        self.ca, cert, key = servers.make_listener_cert(workdir)
        self.accounts: dict[str, tuple[str, str, str]] = {}  # token -> (ns, name, uid)
        self.http = HttpStub(self._review, tls=(cert, key))
        self.url = self.http.url
        self.signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @property
    def reviews(self) -> int:
        return len(self.http.requests)

    def _review(self, request: Request) -> Answer:
        body = json.loads(request.body)
        who = self.accounts.get(body.get("spec", {}).get("token", ""))
        status: dict[str, Any] = {"authenticated": False}
        if request.path == "/apis/authentication.k8s.io/v1/tokenreviews" and who:
            ns, name, uid = who
            status = {"authenticated": True, "user": {
                "username": f"system:serviceaccount:{ns}:{name}", "uid": uid,
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}"]}}
            # A projected token for audience X is reviewed for X (role `audience`).
            if body.get("spec", {}).get("audiences"):
                status["audiences"] = body["spec"]["audiences"]
        data = json.dumps({"apiVersion": "authentication.k8s.io/v1",
                           "kind": "TokenReview", "status": status}).encode()
        return Answer(201, data, {"Content-Type": "application/json"})

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
        self.http.stop()


# ---- synthetic lineages ------------------------------------------------------------------


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def renewal_conf(name: str, *, account: str = "0123456789abcdef0123456789abcdef",
                 server: str = "https://acme.example/dir", http_port: Optional[int] = None,
                 top: str = "", extra: str = "", version: str = "5.8.0") -> str:
    """A renewal conf as certbot-kvault keeps it in Vault (portable paths; pull makes them
    this machine's): standalone http-01, ECDSA. ``top``/``extra``: more lines above the
    paths (e.g. ``renew_before_expiry``) and at the end of ``[renewalparams]``."""
    port = "" if http_port is None else f"http01_port = {http_port}\n"
    return (f"{top}version = {version}\narchive_dir = archive/{name}\n"
            + "".join(f"{kind} = live/{name}/{kind}.pem\n"
                      for kind in ("cert", "privkey", "chain", "fullchain"))
            + f"\n[renewalparams]\naccount = {account}\nauthenticator = standalone\n"
              f"server = {server}\nkey_type = ecdsa\n{port}{extra}")


class ThrowawayCA:
    """A CA of the test's own, for lineages with chosen dates: certbot renews a lineage
    from its names and renewal conf, whoever signed the certificate it holds."""

    def __init__(self, name: str = "certbot-kvault throwaway CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=400))
                     .not_valid_after(now + datetime.timedelta(days=400))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                    critical=True)
                     .sign(self.key, hashes.SHA256()))

    def pems(self, domain: str, not_before: datetime.datetime,
             lifetime: datetime.timedelta) -> PemSet:
        """A new key and a certificate for ``domain`` valid from ``not_before``."""
        key = ec.generate_private_key(ec.SECP256R1())
        # Whole seconds: certificates carry no fractions, and certbot's 2/3 point is
        # computed from what the certificate says.
        start = not_before.replace(microsecond=0)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(start + lifetime)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        privkey = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        chain = _pem(self.cert)
        return PemSet(_pem(cert), chain, _pem(cert) + chain, privkey)

    def lineage(self, name: str, domain: str, not_before: datetime.datetime,
                lifetime: datetime.timedelta, renewal: str,
                auto_renewable: bool = True) -> LineageRecord:
        """A lineage as ``push`` would store it (version 1), valid from ``not_before``."""
        return LineageRecord(name=name, version=1, pems=self.pems(domain, not_before, lifetime),
                             renewal=renewal, auto_renewable=auto_renewable)
