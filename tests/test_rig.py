"""Self-tests of the rig: every fixture talks to the real server it claims to start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import dns.resolver
import servers
from servers import Bao, Pebble, PowerDNS


def test_bao_dev_kv2_roundtrip(bao: Bao, vault_env: dict[str, str]) -> None:
    path = f"secret/data/{vault_env['KVAULT_PREFIX']}/probe"
    r = bao.api("POST", path, json={"data": {"hello": "world"}})
    assert r.status_code == 200, r.text
    r = bao.api("GET", path)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["data"] == {"hello": "world"}
    # The code under test sees the right environment, and nothing of the machine's.
    assert os.environ["VAULT_ADDR"] == bao.addr
    assert os.environ["KVAULT_MOUNT"] == "secret"
    assert "REQUESTS_CA_BUNDLE" not in os.environ
    assert not (Path(os.environ["HOME"]) / ".vault-token").exists()


def test_vault_env_prefix_is_unique(vault_env: dict[str, str]) -> None:
    assert vault_env["KVAULT_PREFIX"].startswith("t-test-vault-env-prefix-is-unique-")


def test_kv1_mount(bao: Bao, kv1_mount: str) -> None:
    r = bao.api("POST", f"{kv1_mount}/probe", json={"a": "1"})
    assert r.status_code == 204, r.text
    assert bao.api("GET", f"{kv1_mount}/probe").json()["data"] == {"a": "1"}
    # What the package will use to detect the KV version (allowed by the default policy).
    opts = bao.api("GET", f"sys/internal/ui/mounts/{kv1_mount}").json()["data"]["options"]
    assert (opts or {}).get("version", "1") == "1"
    opts = bao.api("GET", "sys/internal/ui/mounts/secret").json()["data"]["options"]
    assert opts["version"] == "2"


def test_sealed_bao_reports_sealed(sealed_bao: Bao) -> None:
    r = sealed_bao.health()
    assert r.status_code == 503
    assert r.json()["sealed"] is True
    assert sealed_bao.unseal_keys and sealed_bao.root_token


def test_pdns_txt_via_lexicon(pdns: PowerDNS, tldextract_offline: Path) -> None:
    from lexicon.client import Client
    from lexicon.config import ConfigResolver

    name = "_acme-challenge.rig.example.com"
    value = "rig-selftest-value"
    config = ConfigResolver().with_dict({
        "provider_name": "powerdns",
        "domain": "example.com",
        "powerdns": {
            "auth_token": pdns.api_key,
            "pdns_server": pdns.api_url,
            "pdns_server_id": pdns.server_id,
        },
    })
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = pdns.dns_port
    resolver.lifetime = 3

    with Client(config) as ops:
        assert ops.create_record("TXT", name, value)
    try:
        assert value in pdns.txt_records(name)
        answer = resolver.resolve(name, "TXT")
        got = [b"".join(r.strings).decode() for r in answer]
        assert got == [value]
    finally:
        with Client(config) as ops:
            ops.delete_record(None, "TXT", name, value)
    assert pdns.txt_records(name) == []
    try:
        resolver.resolve(name, "TXT")
        raise AssertionError("TXT record still served after delete")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        pass
    # Wildcard: HTTP-01 names resolve to loopback.
    assert [r.address for r in resolver.resolve("anything.example.com", "A")] == ["127.0.0.1"]


def test_certbot_issues_from_pebble(
    certbot: Callable[..., Any], certbot_dirs: Any, pebble: Pebble
) -> None:
    certbot("certonly", "--standalone", "--http-01-port", str(pebble.http_port),
            "-d", "www.example.com", "--agree-tos", "--register-unsafely-without-email")
    live = certbot_dirs.config_dir / "live" / "www.example.com"
    assert (live / "cert.pem").is_file()
    assert (live / "privkey.pem").is_file()
    out = certbot("certificates").stdout
    assert "Certificate Name: www.example.com" in out
    # renew (nothing due) takes the same global flags; run_certbot adds no-random-sleep.
    res = certbot("renew")
    assert "not due for renewal" in res.stdout + res.stderr
    # The account lives under the pebble host/path, as certbot names it.
    accounts = certbot_dirs.config_dir / "accounts" / f"127.0.0.1:{pebble.port}" / "dir"
    assert len(list(accounts.iterdir())) == 1


def test_stop_is_idempotent(tmp_path: Path) -> None:
    b = servers.start_openbao_dev(tmp_path)
    b.stop()
    b.stop()
    assert not b.running()
