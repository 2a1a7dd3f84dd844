"""The Vault connection against real OpenBao servers: settings as the vault CLI reads
them, TLS options, namespaces, KV detection, bounded retries, error classes."""
from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests
import servers
from helpers import cli, token_with_policy
from servers import Bao, free_port
from stubs import Answer, HttpStub, Request

from certbot_kvault._internal.vault.client import VaultClient
from certbot_kvault._internal.vault.errors import (
    VaultError,
    VaultNotFound,
    VaultPermissionDenied,
    VaultUnreachable,
)
from certbot_kvault._internal.vault.settings import VaultSettings


@pytest.fixture(scope="module")
def tls_bao(tmp_path_factory) -> Iterator[tuple[Bao, str]]:
    """An OpenBao dev server on HTTPS with its own CA (`-dev-tls`)."""
    bao = servers.start_openbao_dev(tmp_path_factory.mktemp("bao-tls"), tls=True)
    assert bao.ca_cert is not None
    try:
        yield bao, bao.ca_cert
    finally:
        bao.stop()


def test_settings_read_like_the_vault_cli(tmp_path, monkeypatch):
    env = {"VAULT_ADDR": "https://vault.example:8200/", "VAULT_NAMESPACE": "team",
           "VAULT_SKIP_VERIFY": "true", "KVAULT_MOUNT": "/kv/", "KVAULT_PREFIX": "le/",
           "VAULT_ROLE_ID": "r"}
    s = VaultSettings.from_env(env, prefix="override")
    assert (s.addr, s.namespace, s.skip_verify, s.mount, s.prefix) == \
        ("https://vault.example:8200", "team", True, "kv", "override")
    assert s.auth_method == "approle"
    assert VaultSettings.from_env({}).addr == "https://127.0.0.1:8200"
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".vault-token").write_text("s.from-file\n")
    assert VaultSettings.from_env({}).file_token() == "s.from-file"
    assert "s.from-file" not in repr(VaultSettings.from_env({"VAULT_TOKEN": "s.from-file"}))


def test_tls_cacert_and_skip_verify(tls_bao, vault_env, monkeypatch):
    bao, ca = tls_bao
    monkeypatch.setenv("VAULT_ADDR", bao.addr)
    # REQUESTS_CA_BUNDLE (set on CI machines) must not beat VAULT_CACERT.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    no_ca = cli("status")
    assert no_ca.exit_code == 1 and "TLS error talking to Vault" in no_ca.output
    assert "VAULT_CACERT" in no_ca.output
    # OpenSSL's own reason rides along (the real cause when the CA is right but a
    # certificate breaks a rule).
    assert "names another host: unable to get local issuer certificate)" in no_ca.output
    monkeypatch.setenv("VAULT_CACERT", ca)
    assert cli("status").exit_code == 0
    monkeypatch.delenv("VAULT_CACERT")
    assert cli("status", "--vault-cacert", ca).exit_code == 0
    monkeypatch.setenv("VAULT_SKIP_VERIFY", "1")
    assert cli("status").exit_code == 0


def test_namespace(tls_bao, vault_env, monkeypatch, tmp_path):
    bao, ca = tls_bao
    ns = "team" + vault_env["KVAULT_PREFIX"][-6:]
    assert bao.api("POST", f"sys/namespaces/{ns}", {}).status_code == 200
    r = bao.request("POST", "sys/mounts/certs", json={"type": "kv", "options": {"version": "2"}},
                    headers={"X-Vault-Token": "root", "X-Vault-Namespace": ns})
    assert r.status_code == 204, r.text
    for k, v in {"VAULT_ADDR": bao.addr, "VAULT_CACERT": ca, "VAULT_NAMESPACE": ns,
                 "KVAULT_MOUNT": "certs"}.items():
        monkeypatch.setenv(k, v)
    client = VaultClient(VaultSettings.from_env())
    assert client.kv_version == 2
    client.write("certbot/dns/x", {"provider": "powerdns"})
    # It landed inside the namespace, not at the root.
    inside = bao.request("GET", "certs/data/certbot/dns/x",
                         headers={"X-Vault-Token": "root", "X-Vault-Namespace": ns})
    assert inside.json()["data"]["data"] == {"provider": "powerdns"}
    outside = bao.api("GET", "certs/data/certbot/dns/x")
    assert outside.status_code in (403, 404)


def test_missing_mount_is_one_clear_error(vault_env, monkeypatch):
    monkeypatch.setenv("KVAULT_MOUNT", "nosuchmount")
    result = cli("list")
    assert result.exit_code == 1
    assert "KV mount 'nosuchmount' does not exist" in result.output
    assert "KVAULT_MOUNT" in result.output and "--vault-mount" not in result.output
    with pytest.raises(VaultNotFound):
        _ = VaultClient(VaultSettings.from_env()).kv_version


def _faults_then(upstream: str, status: int, faults: int) -> Callable[[Request], Answer]:
    """Answer the first ``faults`` requests with ``status``, then forward to a real Vault."""
    count = itertools.count(1)

    def answer(request: Request) -> Answer:
        if next(count) <= faults:
            return Answer(status, b'{"errors":[]}', {"Content-Type": "application/json"})
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        r = requests.request(request.method, upstream + request.path, data=request.body,
                             headers=headers, timeout=10)
        return Answer(r.status_code, r.content, {"Content-Type": "application/json"})

    return answer


@pytest.mark.parametrize("status", [502, 503, 429])
def test_transient_errors_are_retried(bao, vault_env, status):
    with HttpStub(_faults_then(bao.addr, status, faults=2)) as proxy:
        client = VaultClient(VaultSettings.from_env(addr=proxy.url))
        client.login()  # two faults, then the real answer
        assert len(proxy.requests) == 3
        client.write(f"{vault_env['KVAULT_PREFIX']}/x", {"a": "1"})
        assert client.read(f"{vault_env['KVAULT_PREFIX']}/x").data == {"a": "1"}


def test_retries_are_bounded(bao, vault_env):
    with HttpStub(_faults_then(bao.addr, 502, faults=10**6)) as proxy:
        settings = VaultSettings.from_env(addr=proxy.url)
        t0 = time.monotonic()
        with pytest.raises(VaultError) as err:
            VaultClient(settings).login()
        assert len(proxy.requests) == settings.retries + 1
        assert time.monotonic() - t0 < 10
        assert "root" not in str(err.value)


def test_unreachable_is_bounded_and_clear(vault_env):
    settings = VaultSettings.from_env(addr=f"http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(VaultUnreachable, match="Cannot reach Vault at http://127.0.0.1:"):
        VaultClient(settings).login()
    assert time.monotonic() - t0 < 10


def test_no_secret_in_debug_logs(bao, vault_env, caplog):
    """Even at DEBUG, neither the token nor a secret value reaches a log."""
    import logging

    caplog.set_level(logging.DEBUG)
    client = VaultClient(VaultSettings.from_env())
    client.write(f"{vault_env['KVAULT_PREFIX']}/secret", {"v": "TOPSECRETVALUE"})
    assert client.read(f"{vault_env['KVAULT_PREFIX']}/secret").data["v"] == "TOPSECRETVALUE"
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "TOPSECRETVALUE" not in text
    assert "X-Vault-Token" not in text
    token = bao.api("POST", "auth/token/create", {"policies": ["root"], "ttl": "5m"}).json()[
        "auth"]["client_token"]
    VaultClient(VaultSettings.from_env(token=token)).read(f"{vault_env['KVAULT_PREFIX']}/x")
    assert token not in "\n".join(r.getMessage() for r in caplog.records)


def _make_pki(d: Path) -> dict[str, str]:
    """A CA, a server cert for 127.0.0.1 and a client cert, as PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          # Python 3.13 verifies X.509 strictly: a CA needs its key identifier and
          # usage, a leaf the issuer's key identifier.
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    files = {"ca": d / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who, usage, san in (
            ("server", ExtendedKeyUsageOID.SERVER_AUTH,
             x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress")
                                                         .ip_address("127.0.0.1"))])),
            ("client", ExtendedKeyUsageOID.CLIENT_AUTH,
             x509.SubjectAlternativeName([x509.DNSName("client.example.com")]))):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, who)]))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(san, critical=False)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        files[who] = d / f"{who}.pem"
        files[who].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{who}_key"] = d / f"{who}-key.pem"
        files[f"{who}_key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return {k: str(v) for k, v in files.items()}


def test_client_certificate(tmp_path, vault_env, monkeypatch):
    """VAULT_CLIENT_CERT/KEY against a listener that requires a client certificate."""
    pki = _make_pki(tmp_path)
    mtls_port = free_port()
    (tmp_path / "mtls.hcl").write_text(f'''
listener "tcp" {{
  address = "127.0.0.1:{mtls_port}"
  tls_cert_file = "{pki['server']}"
  tls_key_file = "{pki['server_key']}"
  tls_client_ca_file = "{pki['ca']}"
  tls_require_and_verify_client_cert = true
}}
''')
    bao = servers.start_openbao_dev(tmp_path, config=tmp_path / "mtls.hcl")
    try:
        monkeypatch.setenv("VAULT_ADDR", f"https://127.0.0.1:{mtls_port}")
        monkeypatch.setenv("VAULT_CACERT", pki["ca"])
        refused = cli("status")
        assert refused.exit_code == 1, refused.output
        assert "refused our TLS client certificate (or wants one); set VAULT_CLIENT_CERT" in \
            refused.output
        assert "Traceback" not in refused.output
        monkeypatch.setenv("VAULT_CLIENT_CERT", pki["client"])
        monkeypatch.setenv("VAULT_CLIENT_KEY", pki["client_key"])
        ok = cli("status", "--json")
        assert ok.exit_code == 0, ok.output
        assert '"kv_version": 2' in ok.output
    finally:
        bao.stop()


def test_redirect_to_a_dead_leader_is_named(vault_env):
    """During a crash failover a standby answers 307 to the old leader's address; the
    error must say so instead of blaming VAULT_ADDR (a redirecting stand-in for the
    standby: the failover itself is exercised on a real raft cluster in test_ha)."""
    dead = free_port()

    def redirect(request: Request) -> Answer:
        return Answer(307, headers={"Location": f"http://127.0.0.1:{dead}{request.path}"})

    with HttpStub(redirect) as standby:
        # Retried until KVAULT_HA_DEADLINE (a new leader may be elected meanwhile).
        with pytest.raises(VaultUnreachable, match=f"sent us to its leader at 127.0.0.1:{dead}"
                           r", which does not answer, and no new leader answered within 1s "
                           r"\(KVAULT_HA_DEADLINE\)"):
            VaultClient(VaultSettings.from_env(addr=standby.url, ha_deadline=1.0)).login()


def test_plain_reads_skip_requests_and_the_rest_is_mapped_as_before(bao, vault_env,
                                                                   monkeypatch):
    """A pull's bulk reads (a plain 200 or 404 from Vault) go straight to the kept-alive
    pool; a read Vault refuses takes the full way and fails as before."""
    prefix = vault_env["KVAULT_PREFIX"]
    client = VaultClient(VaultSettings.from_env())
    client.write(f"{prefix}/a b%c", {"v": "1"})
    client.write(f"{prefix}/gone", {"v": "2"})
    client.delete(f"{prefix}/gone")
    through_requests: list[str] = []
    send = requests.Session.send

    def counted(self, request, **kwargs):  # type: ignore[no-untyped-def]
        through_requests.append(f"{request.method} {request.url}")
        return send(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", counted)
    entry = client.read(f"{prefix}/a b%c")  # quoted on the way, as hvac quotes
    assert entry is not None and entry.data == {"v": "1"} and entry.version == 1
    assert client.read(f"{prefix}/gone") is None  # deleted: 404 with its metadata
    assert client.read(f"{prefix}/never") is None
    assert through_requests == []

    # A token that sees the mount but may not read x: Vault answers 403.
    token = token_with_policy(
        bao, f"{prefix}-other", f'path "secret/data/{prefix}/other" {{ capabilities = ["read"] }}')
    with pytest.raises(VaultPermissionDenied, match=f"needs read on secret/data/{prefix}/x "):
        VaultClient(VaultSettings.from_env(token=token)).read(f"{prefix}/x")
    assert [r for r in through_requests if f"/v1/secret/data/{prefix}/x" in r]  # the full way
