"""Every Vault-side error names its real cause (real OpenBao, no mocks).

- a 403 is told apart: token invalid/expired, token valid but its policy
  lacks a capability (named with its path), KV mount really missing;
- `status` reports what a restricted token can and cannot do;
- something at VAULT_ADDR that is not Vault, and an unset VAULT_ADDR, are
  said in one line;
- a policy denial costs no fresh machine login, and a machine login's token
  is revoked when the command ends;
- URL query secrets (DNS provider API keys) reach no error text or log.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from helpers import (
    ThrowawayCA,
    approle,
    certonly_args,
    error_line,
    kvault,
    live_login_tokens,
    load_policy,
    one_line_error,
    pdns_entry,
    renewal_conf,
    resolver_opt,
    scrubbed_env,
    secret_id_uses_left,
    token_with_policy,
)
from servers import Bao, PowerDNS, listening
from stubs import Answer, HttpStub

from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.vault.client import VaultClient
from certbot_kvault._internal.vault.errors import (
    VaultAuthError,
    VaultNotAnAPI,
    VaultPermissionDenied,
)
from certbot_kvault._internal.vault.redact import redact
from certbot_kvault._internal.vault.settings import DEFAULT_ADDR, VaultSettings


def _policy_rw(prefix: str) -> str:
    return (f'path "secret/data/{prefix}/*" {{ capabilities = ["read"] }}\n'
            f'path "secret/metadata/{prefix}/*" {{ capabilities = ["list"] }}\n')


def _seed(bao: Bao, prefix: str, names: list[str]) -> None:
    """Lineages that list, show and pull take (made by a CA of the test's own)."""
    ca = ThrowawayCA()
    now = datetime.datetime.now(datetime.timezone.utc)
    for name in names:
        record = ca.lineage(name, name, now, datetime.timedelta(days=90), renewal_conf(name))
        r = bao.api("POST", f"secret/data/{prefix}/certificates/{name}",
                    {"data": record.to_kv()})
        assert r.status_code == 200, r.text


# ---- 1. a 403 told apart -------------------------------------------------------------------


def test_token_without_rights_on_the_mount_is_a_permission(vault_env: dict[str, str], bao: Bao,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    token = token_with_policy(bao, f"elsewhere-{prefix}",
                              'path "other/data/*" { capabilities = ["read"] }')
    monkeypatch.setenv("VAULT_TOKEN", token)
    err = one_line_error(kvault("list", check=False))
    assert f"permission denied: needs read on secret/data/{prefix}/*" in err
    assert "--vault-mount" not in err and "invalid or expired" not in err
    assert token not in err


@pytest.mark.parametrize("how", ["deny-lookup-self", "no-default-policy"])
def test_token_that_may_not_look_itself_up_is_valid(how: str, vault_env: dict[str, str],
                                                    bao: Bao, monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    _seed(bao, prefix, ["a.example.com"])
    name = f"{how}-{prefix}"
    policy = _policy_rw(prefix)
    if how == "deny-lookup-self":
        policy += 'path "auth/token/lookup-self" { capabilities = ["deny"] }\n'
        token = token_with_policy(bao, name, policy)
    else:
        assert bao.api("PUT", f"sys/policies/acl/{name}", {"policy": policy}).status_code == 204
        r = bao.api("POST", "auth/token/create",
                    {"policies": [name], "ttl": "5m", "no_default_policy": True})
        token = r.json()["auth"]["client_token"]
    assert bao.api("GET", "auth/token/lookup-self", token=token).status_code == 403
    monkeypatch.setenv("VAULT_TOKEN", token)
    proc = kvault("list", check=False)
    assert proc.returncode == 0, proc.stderr
    assert "a.example.com" in proc.stdout

    # status: the report, with what could not be determined, instead of an abort.
    proc = kvault("status", "--json", check=False)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["kv_version"] == 2
    assert "permission denied: needs read on auth/token/lookup-self" in \
        status["unknown"]["token"]
    if how == "deny-lookup-self":
        caps = status["capabilities"]
        assert caps["certificates (data)"] == ["read"]
        assert caps["certificates (list)"] == ["list"]
    else:  # no default policy: not even sys/capabilities-self
        assert "sys/capabilities-self" in status["unknown"]["capabilities"]


def test_status_shows_deny_per_path(vault_env: dict[str, str], bao: Bao,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    policy = (_policy_rw(prefix)
              + f'path "secret/data/{prefix}/dns/*" {{ capabilities = ["deny"] }}\n')
    monkeypatch.setenv("VAULT_TOKEN", token_with_policy(bao, f"deny-dns-{prefix}", policy))
    proc = kvault("status", check=False)
    assert proc.returncode == 0, proc.stderr
    assert "  dns (data): deny" in proc.stdout
    assert "  certificates (data): read" in proc.stdout
    assert "unknown" not in proc.stdout

    # No right at all below the mount: the whole report, then one line and exit 1.
    monkeypatch.setenv("VAULT_TOKEN", token_with_policy(
        bao, f"nothing-{prefix}", 'path "other/data/*" { capabilities = ["read"] }'))
    proc = kvault("status", check=False)
    assert proc.returncode == 1
    assert "  certificates (data): deny" in proc.stdout
    assert "  certificates (KV v1): deny" in proc.stdout
    assert "kv_version: permission denied" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_vault_client_kinds(vault_env: dict[str, str], bao: Bao) -> None:
    """The same classification seen from the library: each failure its own class."""
    prefix = vault_env["KVAULT_PREFIX"]
    policy = _policy_rw(prefix) + 'path "auth/token/lookup-self" { capabilities = ["deny"] }\n'
    token = token_with_policy(bao, f"kinds-{prefix}", policy)
    denied = VaultClient(VaultSettings.from_env(token=token))
    assert denied.read(f"{prefix}/x") is None
    with pytest.raises(VaultPermissionDenied,
                       match=f"needs create/update on secret/data/{prefix}/x"):
        denied.write(f"{prefix}/x", {"a": "1"})
    assert bao.api("POST", "auth/token/revoke", {"token": token}).status_code == 204
    with pytest.raises(VaultAuthError, match=re.escape(
            f"Vault at {bao.addr} stopped taking the token in VAULT_TOKEN during this run: "
            "it was revoked, or expired (it may not look itself up, so its TTL is unknown)")):
        denied.read(f"{prefix}/x")


def test_token_expired_or_revoked_during_a_run(vault_env: dict[str, str], bao: Bao) -> None:
    """Vault answers an expired token as it answers one that never existed; a token this
    run looked up before is told apart: its TTL ran out, or it was revoked before."""
    prefix = vault_env["KVAULT_PREFIX"]

    def token(ttl: str) -> str:
        r = bao.api("POST", "auth/token/create", {"ttl": ttl, "renewable": False})
        assert r.status_code == 200, r.text
        value: str = r.json()["auth"]["client_token"]
        return value

    short, long = token("3s"), token("1h")
    clients = {t: VaultClient(VaultSettings.from_env(token=t)) for t in (short, long)}
    for client in clients.values():
        assert client.read(f"{prefix}/x") is None  # logged in: lookup-self gave the TTL
    assert bao.api("POST", "auth/token/revoke", {"token": long}).status_code == 204
    with pytest.raises(VaultAuthError, match=re.escape(
            f"Vault at {bao.addr} stopped taking the token in VAULT_TOKEN during this run, ")
            + r"\d+s before its TTL would have ended: it was revoked; set VAULT_TOKEN"):
        clients[long].read(f"{prefix}/x")
    time.sleep(3.5)
    with pytest.raises(VaultAuthError, match=r"The token in VAULT_TOKEN expired during this "
                       r"run \(its TTL of [0-3]s ran out, and it is not renewable\); give a "
                       "token with a longer TTL"):
        clients[short].read(f"{prefix}/x")


# ---- 3. not Vault at VAULT_ADDR, 4. VAULT_ADDR unset -----------------------------------------


def _not_vault(status: int, content_type: str, body: bytes) -> HttpStub:
    """Answers every request with one fixed body (a web page, another API's JSON)."""
    return HttpStub(lambda request: Answer(status, body, {"Content-Type": content_type}))


@pytest.fixture
def not_vault(request: pytest.FixtureRequest) -> Iterator[HttpStub]:
    with _not_vault(*request.param) as server:
        yield server


@pytest.mark.parametrize("not_vault,expect", [
    ((200, "text/html; charset=utf-8", b"<html><body>It works!</body></html>"),
     "(HTTP 200, text/html)"),
    ((404, "text/html", b"<html>Not Found</html>"), "(HTTP 404, text/html)"),
    ((200, "application/json", b'{"hello": "world"}'), "(HTTP 200, application/json)"),
    ((200, "text/plain", b"ok"), "(HTTP 200, text/plain)"),
], indirect=["not_vault"])
def test_not_a_vault_api_is_one_line(not_vault: HttpStub, expect: str,
                                     vault_env: dict[str, str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_ADDR", not_vault.url)
    for command in ("list", "status"):
        err = one_line_error(kvault(command, check=False))
        assert f"The server at {not_vault.url} does not look like a Vault API {expect}" in err
        assert "check VAULT_ADDR" in err
    # A 404 page is not "no such secret".
    client = VaultClient(VaultSettings.from_env())
    with pytest.raises(VaultNotAnAPI):
        client.read(f"{vault_env['KVAULT_PREFIX']}/x")


def test_unset_vault_addr_is_named(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if listening(8200):
        pytest.skip("something listens on the default Vault port here")
    monkeypatch.setenv("VAULT_TOKEN", "s.unused")
    for command in ("list", "status"):
        err = one_line_error(kvault(command, check=False))
        assert f"Cannot reach Vault at {DEFAULT_ADDR} (the default address, used because " \
               "VAULT_ADDR is not set)" in err
    # Set explicitly, the same address is not called a default.
    monkeypatch.setenv("VAULT_ADDR", DEFAULT_ADDR)
    err = one_line_error(kvault("list", check=False))
    assert "Cannot reach Vault at" in err and "VAULT_ADDR is not set" not in err


# ---- 5. no login per denial, 6. machine tokens revoked ---------------------------------------


def test_policy_denials_cost_no_logins(vault_env: dict[str, str], bao: Bao) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    names = [f"n{i}.example.com" for i in range(6)]
    _seed(bao, prefix, names)
    # May list the lineages, not read them: every item is a 403.
    policy = f"listonly-{prefix}"
    assert bao.api("PUT", f"sys/policies/acl/{policy}", {
        "policy": f'path "secret/metadata/{prefix}/*" {{ capabilities = ["list"] }}'}
    ).status_code == 204
    creds = approle(bao, policy, secret_id_num_uses=10)
    assert secret_id_uses_left(bao, creds) == 10
    env = scrubbed_env(VAULT_ADDR=bao.addr, KVAULT_PREFIX=prefix, **creds)
    proc = kvault("list", "--workers", "4", env=env, check=False)
    err = one_line_error(proc)
    assert f"permission denied: needs read on secret/data/{prefix}/certificates/n" in err
    assert secret_id_uses_left(bao, creds) == 9  # one login for the whole command


def test_machine_login_token_is_revoked_at_exit(vault_env: dict[str, str], bao: Bao) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    _seed(bao, prefix, ["a.example.com"])
    creds = approle(bao, load_policy(bao, "renewer", prefix), secret_id_num_uses=5)
    env = scrubbed_env(VAULT_ADDR=bao.addr, KVAULT_PREFIX=prefix, **creds)
    proc = kvault("list", env=env)
    assert "a.example.com" in proc.stdout
    assert secret_id_uses_left(bao, creds) == 4  # it did log in
    assert live_login_tokens(bao, creds["KVAULT_APPROLE_MOUNT"]) == 0
    # A failing command revokes too.
    proc = kvault("show", "missing.example.com", env=env, check=False)
    assert proc.returncode == 1
    assert live_login_tokens(bao, creds["KVAULT_APPROLE_MOUNT"]) == 0

    # A token the user gave is never revoked.
    token = token_with_policy(bao, f"user-{prefix}", _policy_rw(prefix))
    kvault("list", env=scrubbed_env(VAULT_ADDR=bao.addr, KVAULT_PREFIX=prefix,
                                    VAULT_TOKEN=token))
    assert bao.api("POST", "auth/token/lookup", {"token": token}).status_code == 200


def test_plugin_revokes_its_machine_login_at_exit(vault_env: dict[str, str], bao: Bao,
                                                  certbot: Any) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    creds = approle(bao, load_policy(bao, "renewer", prefix), secret_id_num_uses=5)
    env = scrubbed_env(VAULT_ADDR=bao.addr, KVAULT_PREFIX=prefix, **creds)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    # `plugins --init --prepare` runs the plugin's prepare(); `-i kvault` chooses it, so
    # it logs in, checks the KV mount and registers its exit handler.
    proc = certbot("plugins", "--init", "--prepare", "-i", "kvault", env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "kvault" in proc.stdout
    assert secret_id_uses_left(bao, creds) == 4  # the plugin did log in
    assert live_login_tokens(bao, creds["KVAULT_APPROLE_MOUNT"]) == 0


# ---- 7. URL secrets redacted -----------------------------------------------------------------


def test_redact() -> None:
    assert redact("500 for url: http://h:1/x?api_key=S1&b=2 (y)") == \
        "500 for url: http://h:1/x?api_key=REDACTED&b=REDACTED (y)"
    assert redact("Max retries exceeded with url: /a?key=S2") == \
        "Max retries exceeded with url: /a?key=REDACTED"
    assert redact("https://user:pw@host/x") == "https://REDACTED@host/x"
    assert redact("no url here, a = b") == "no url here, a = b"


@pytest.fixture
def failing_api() -> Iterator[HttpStub]:
    with _not_vault(500, "text/plain", b"internal error") as server:
        yield server


def test_provider_url_secret_is_redacted(vault_env: dict[str, str], pdns: PowerDNS,
                                         certbot: Any, certbot_dirs: Any,
                                         failing_api: HttpStub) -> None:
    secret = "SECRET" + secrets.token_hex(8)
    layout = Layout(VaultClient(VaultSettings.from_env()))
    layout.save_dns("pdns", pdns_entry(
        pdns, pdns_server=f"{failing_api.url}/pdns?api_key={secret}&"))
    env = dict(vault_env)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    proc = certbot(*certonly_args("--kvault-dns-resolver", resolver_opt(pdns), "-vv",
                                  domains=("example.com",)), env=env, check=False)
    assert proc.returncode != 0
    line = error_line(proc)  # (with -vv certbot also prints its traceback)
    assert "(HTTP 500)" in line and "api_key=REDACTED" in line, proc.stderr
    logs = "".join(p.read_text() for p in Path(certbot_dirs.logs_dir).glob("*.log*"))
    assert "api_key=REDACTED" in logs  # urllib3's DEBUG request line is there, redacted
    for text in (proc.stdout, proc.stderr, logs):
        assert secret not in text
