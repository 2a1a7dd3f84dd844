"""policies/*.hcl loaded into OpenBao: a token holding only one of them can do its job, no more."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import (
    POLICIES,
    Golden,
    fresh_dirs,
    golden_env,
    kv_version,
    kvault,
    load_policy,
    locks_held,
    record,
    seed,
)
from servers import Bao

from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.store.state import RenewalState
from certbot_kvault._internal.vault.client import VaultClient
from certbot_kvault._internal.vault.errors import VaultPermissionDenied
from certbot_kvault._internal.vault.settings import VaultSettings


def _token(bao: Bao, policy: str) -> str:
    r = bao.api("POST", "auth/token/create",
                json={"policies": [policy], "no_default_policy": True, "ttl": "10m"})
    assert r.status_code == 200, r.text
    token: str = r.json()["auth"]["client_token"]
    return token


def test_every_policy_file_is_tested() -> None:
    assert sorted(p.stem for p in POLICIES.glob("*.hcl")) == sorted(KINDS)


KINDS = ["renewer", "reader", "dns-entry", "dns-all"]


@pytest.mark.parametrize("kind", KINDS)
def test_policy_files_are_for_secret_certbot(kind: str) -> None:
    text = (POLICIES / f"{kind}.hcl").read_text()
    paths = [line.split('"')[1] for line in text.splitlines() if line.startswith("path ")]
    assert paths
    for p in paths:
        assert p.startswith(("secret/data/certbot/", "secret/metadata/certbot/",
                             "sys/internal/ui/mounts/secret", "auth/token/lookup-self",
                             "auth/token/renew-self", "sys/capabilities-self")), p
    assert "sudo" not in text and '"*"' not in text


def test_renewer_policy(bao: Bao, golden: Golden, vault_env: dict[str, str],
                        tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due", "calm"])
    bao.api("POST", f"secret/data/{prefix}/dns/pdns",
            json={"data": {"provider": "powerdns", "auth_token": "t"}})
    token = _token(bao, load_policy(bao, "renewer", prefix))
    env = golden_env(bao, golden, prefix, token)
    before = kv_version(bao, prefix, "certificates/due")

    # pull + renew lock + write back, with a short lock TTL so the keeper renews it too.
    _, args = fresh_dirs(tmp_path)
    proc = kvault("renew", *args, "--lock-ttl", "2", env=env)
    assert "renewed: due" in proc.stdout
    assert kv_version(bao, prefix, "certificates/due") == before + 1
    assert not locks_held(bao, prefix)
    # --due-within lists the per-lineage locks and takes them.
    proc = kvault("renew", *args, "--due-within", "3650", "--", "--cert-name", "calm", env=env)
    assert proc.returncode == 0
    # push is allowed (and writes nothing when nothing changed).
    proc = kvault("push", *args, env=env)
    assert " 0 failed" in proc.stdout

    layout = Layout(VaultClient(VaultSettings.from_env(
        {"VAULT_ADDR": bao.addr, "VAULT_TOKEN": token, "KVAULT_PREFIX": prefix})))
    # DNS credentials are another policy's (dns-entry.hcl, dns-all.hcl): names only here.
    assert layout.list_dns() == ["pdns"]
    with pytest.raises(VaultPermissionDenied):
        layout.load_dns("pdns")
    with pytest.raises(VaultPermissionDenied, match="needs create/update on"):
        layout.save_dns("pdns", {"provider": "x"})
    # Renewal memory (state/<lineage>): written and read back, twice (create, then update).
    memory = RenewalState()
    for _ in range(2):
        memory.failed("validation failed", time.time(), 90 * 86400)
        layout.save_state("calm", memory)
    remembered = layout.load_state("calm")
    assert remembered is not None and remembered.failures == 2
    assert remembered.last_error == "validation failed"
    # No deleting certificates.
    calm = kv_version(bao, prefix, "certificates/calm")
    proc = kvault("rm", "calm", env=env, check=False)
    assert proc.returncode == 1 and "permission denied" in proc.stderr
    assert kv_version(bao, prefix, "certificates/calm") == calm
    assert record(bao, prefix, "certificates/calm") is not None


def test_reader_policy(bao: Bao, golden: Golden, vault_env: dict[str, str],
                       tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    # A renewer left renewal memory that the reader may not read: list/show work without it.
    w = bao.api("POST", f"secret/data/{prefix}/state/calm",
                json={"data": RenewalState(failures=1, last_error="x").to_kv()})
    assert w.status_code == 200, w.text
    token = _token(bao, load_policy(bao, "reader", prefix))
    env = golden_env(bao, golden, prefix, token)
    rows = json.loads(kvault("list", "--json", env=env).stdout)
    assert [r["name"] for r in rows] == ["calm"]
    shown = json.loads(kvault("show", "calm", "--json", env=env).stdout)
    assert shown["subject"] == golden.domains["calm"]

    # It cannot push: a config dir made by a renewer is refused (accounts and certificates).
    _, args = fresh_dirs(tmp_path)
    root_env = golden_env(bao, golden, prefix, bao.token)
    kvault("pull", *args, env=root_env)
    before = kv_version(bao, prefix, "certificates/calm")
    proc = kvault("push", *args, env=env, check=False)
    assert proc.returncode == 1
    assert "permission denied" in proc.stderr
    layout = Layout(VaultClient(VaultSettings.from_env(
        {"VAULT_ADDR": bao.addr, "VAULT_TOKEN": token, "KVAULT_PREFIX": prefix})))
    record = layout.load_lineage("calm")
    assert record is not None
    with pytest.raises(VaultPermissionDenied):
        layout.save_lineage(record, cas=record.kv_version)
    assert kv_version(bao, prefix, "certificates/calm") == before
    # Nor read accounts, DNS credentials, locks or renewal memory, nor renew.
    with pytest.raises(VaultPermissionDenied):
        layout.load_dns("pdns")
    with pytest.raises(VaultPermissionDenied):
        layout.load_state("calm")
    proc = kvault("renew", *args, env=env, check=False)
    assert proc.returncode == 1 and "permission denied" in proc.stderr


def test_reader_token_status_and_list_explain_themselves(bao: Bao, golden: Golden,
                                                         vault_env: dict[str, str]) -> None:
    """A reader token made with -no-default-policy: `status` knows its capabilities
    (reader.hcl grants sys/capabilities-self, as `default` does), and `list` says once
    why FAILURES is `?`."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm", "due"])
    token = _token(bao, load_policy(bao, "reader", prefix))
    env = golden_env(bao, golden, prefix, token)
    status = json.loads(kvault("status", "--json", env=env).stdout)
    assert "unknown" not in status, status["unknown"]
    assert status["capabilities"]["certificates (data)"] == ["read"]
    assert status["capabilities"]["state (data)"] == ["deny"]
    listed = kvault("list", env=env)
    assert [line.split()[-1] for line in listed.stdout.splitlines()[1:]] == ["?", "?"]
    assert listed.stderr.splitlines() == [
        "note: FAILURES is ? because this token may not read the renewal memory (permission "
        f"denied: needs read on secret/data/{prefix}/state/calm ({'Vault at ' + bao.addr}); "
        "grant it in the token's policy (see policies/ in the certbot-kvault docs).)"]
    # rm is an operator's: what the reader lacks for it is delete, not read.
    versions = kv_version(bao, prefix, "certificates/calm")
    err = kvault("rm", "calm", env=env, check=False)
    assert err.returncode == 1 and err.stderr == (
        f"error: permission denied: rm needs delete on secret/data/{prefix}/state/calm and "
        f"secret/data/{prefix}/certificates/calm (and read on the first) (Vault at {bao.addr})"
        "; policies/reader.hcl and renewer.hcl grant no delete: use an operator's token.\n")
    assert kv_version(bao, prefix, "certificates/calm") == versions
    assert record(bao, prefix, "certificates/calm") is not None


def test_dns_policies_give_exactly_their_entries(bao: Bao, vault_env: dict[str, str]) -> None:
    """renewer.hcl + dns-entry.hcl (ENTRY = validation) reads that entry and no other;
    dns-all.hcl reads them all; neither writes one."""
    prefix = vault_env["KVAULT_PREFIX"]
    for name in ("validation", "production"):
        w = bao.api("POST", f"secret/data/{prefix}/dns/{name}",
                    json={"data": {"provider": "powerdns", "auth_token": name}})
        assert w.status_code == 200, w.text
    renewer = load_policy(bao, "renewer", prefix)

    def layout_with(*policies: str) -> Layout:
        r = bao.api("POST", "auth/token/create",
                    json={"policies": list(policies), "no_default_policy": True, "ttl": "5m"})
        assert r.status_code == 200, r.text
        return Layout(VaultClient(VaultSettings.from_env(
            {"VAULT_ADDR": bao.addr, "VAULT_TOKEN": r.json()["auth"]["client_token"],
             "KVAULT_PREFIX": prefix})))

    one = layout_with(renewer, load_policy(bao, "dns-entry", prefix, entry="validation"))
    assert one.list_dns() == ["production", "validation"]
    assert one.load_dns("validation") == {"provider": "powerdns", "auth_token": "validation"}
    with pytest.raises(VaultPermissionDenied, match="dns/production"):
        one.load_dns("production")
    with pytest.raises(VaultPermissionDenied):
        one.save_dns("validation", {"provider": "x"})
    every = layout_with(renewer, load_policy(bao, "dns-all", prefix))
    assert every.load_dns("production") == {"provider": "powerdns", "auth_token": "production"}
    with pytest.raises(VaultPermissionDenied):
        every.save_dns("production", {"provider": "x"})
