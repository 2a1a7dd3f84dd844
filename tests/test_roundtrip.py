"""The foundation's promise, end to end on real OpenBao + Pebble + certbot:
issue, push, lose the config dir, pull, and certbot carries on as if nothing
happened (same lineage, same account, renewals pushed by the hook)."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import hvac
import pytest
from helpers import kvault, layout_from_env, snapshot
from servers import run_certbot

ISSUE = ("--agree-tos", "--register-unsafely-without-email")


def standalone(pebble, *names: str, extra: tuple[str, ...] = ()) -> list[str]:
    args = ["certonly", "--standalone", "--http-01-port", str(pebble.http_port), *ISSUE]
    for n in names:
        args += ["-d", n]
    return args + list(extra)


def expiry_lines(text: str) -> list[str]:
    return sorted(line.strip() for line in text.splitlines()
                  if "Certificate Name:" in line or "Expiry Date:" in line)


def test_issue_push_wipe_pull_renew(vault_env, certbot, certbot_dirs, pebble, tmp_path):
    dirs = certbot_dirs
    certbot(*standalone(pebble, "www.example.com"))
    before = certbot("certificates").stdout
    [account_dir] = [d for d in Path(dirs.config_dir, "accounts").rglob("private_key.json")]
    account_id = account_dir.parent.name

    out = kvault("push", "--config-dir", dirs.config_dir).stdout
    assert "2 pushed, 0 unchanged, 0 failed" in out, out
    layout = layout_from_env()
    assert layout.list_lineages() == ["www.example.com"]
    assert [a for _, a in layout.list_accounts()] == [account_id]
    record = layout.load_lineage("www.example.com")
    assert record is not None and record.version == 1
    assert record.info is not None and record.info.domains == ["www.example.com"]
    assert "/" + os.path.basename(dirs.config_dir) not in record.renewal  # portable

    # The job's container dies: only Vault is left. Rebuild somewhere else.
    shutil.rmtree(dirs.config_dir)
    new_config = str(tmp_path / "elsewhere" / "letsencrypt")
    kvault("pull", "--config-dir", new_config, "--work-dir", dirs.work_dir,
           "--logs-dir", dirs.logs_dir)

    def cb(*args: str, check: bool = True):
        return run_certbot(args, config_dir=new_config, work_dir=dirs.work_dir,
                           logs_dir=dirs.logs_dir, pebble=pebble, check=check)

    after = cb("certificates").stdout
    assert expiry_lines(after) == expiry_lines(before), (before, after)
    assert new_config in after  # this machine's paths, not the writer's
    dry = cb("renew", "--dry-run")
    assert "all simulated renewals succeeded" in (dry.stdout + dry.stderr).lower()

    renewed = cb("renew", "--force-renewal")
    log = renewed.stdout + renewed.stderr
    assert "Account registered" not in log and "registered" not in log.lower(), log
    accounts = list(Path(new_config, "accounts").rglob("private_key.json"))
    assert [p.parent.name for p in accounts] == [account_id]
    # The deploy hook (installed by pull) pushed the renewal.
    record2 = layout.load_lineage("www.example.com")
    assert record2 is not None and record2.version == 2
    live_cert = Path(new_config, "live", "www.example.com", "cert.pem").read_text()
    assert record2.pems.cert == live_cert
    assert record2.pems.cert != record.pems.cert
    assert set(record2.archive) == {1}


def _issue_three(certbot, pebble, pebble_factory, dirs):
    certbot(*standalone(pebble, "sans.example.com", "alt1.example.com", "alt2.example.com",
                        extra=("--key-type", "rsa")))
    certbot(*standalone(pebble, "ec.example.com", extra=("--key-type", "ecdsa",
                                                          "--elliptic-curve", "secp384r1")))
    certbot(*standalone(pebble, "hist.example.com"))
    for _ in range(2):
        certbot("renew", "--cert-name", "hist.example.com", "--force-renewal")
    # A second account, on a second ACME server.
    other = pebble_factory()
    run_certbot(["register", *ISSUE], config_dir=dirs.config_dir, work_dir=dirs.work_dir,
                logs_dir=dirs.logs_dir, pebble=other)


def test_roundtrip_tree_is_identical(vault_env, certbot, certbot_dirs, pebble, pebble_factory):
    dirs = certbot_dirs
    _issue_three(certbot, pebble, pebble_factory, dirs)
    config = Path(dirs.config_dir)
    assert len(list(config.joinpath("accounts").rglob("private_key.json"))) == 2
    assert sorted(p.name for p in config.joinpath("archive", "hist.example.com").iterdir()) == \
        sorted(f"{k}{n}.pem" for k in ("cert", "chain", "fullchain", "privkey")
               for n in (1, 2, 3))

    kvault("push", "--config-dir", dirs.config_dir)
    original = snapshot(config)
    shutil.rmtree(config)
    kvault("pull", "--config-dir", dirs.config_dir, "--work-dir", dirs.work_dir,
           "--logs-dir", dirs.logs_dir)
    pulled = snapshot(config)
    added = {k for k in set(pulled) - set(original)}
    assert added == {"renewal-hooks/deploy/00-update-vault.sh"}, added  # pull installs it
    assert set(original) - set(pulled) == set()
    # The sync manifest's "newest" says what this dir synced last and when: a push
    # knows when it wrote (to the fraction of a second), a pull only the records'
    # updated_at (whole seconds). The rest of it is the same.
    for tree in (original, pulled):
        kind, mode, text = tree["kvault/synced.json"]
        tree["kvault/synced.json"] = (kind, mode, json.dumps(
            {k: v for k, v in json.loads(text).items() if k != "newest"}))
    diffs = {k: (original[k], pulled[k]) for k in original if original[k] != pulled[k]}
    assert diffs == {}, diffs
    assert pulled["archive/hist.example.com/privkey3.pem"][1] == 0o600
    accounts = [k for k in pulled if k.endswith("private_key.json")]
    assert {pulled[k][1] for k in accounts} == {0o400}
    assert pulled["live/hist.example.com/cert.pem"] == ("link", 0,
                                                        "../../archive/hist.example.com/cert3.pem")
    certbot("certificates")

    # A second push changes nothing in Vault.
    layout = layout_from_env()
    versions = {n: layout.read_lineage_raw(n).version for n in layout.list_lineages()}
    out = kvault("push", "--config-dir", dirs.config_dir).stdout
    assert re.search(r"^0 pushed, 5 unchanged, 0 failed$", out, re.M), out
    assert {n: layout.read_lineage_raw(n).version for n in layout.list_lineages()} == versions


def test_kv_v1_mount_and_prefix(vault_env, kv1_mount, certbot, certbot_dirs, pebble,
                                monkeypatch, bao):
    monkeypatch.setenv("KVAULT_MOUNT", kv1_mount)
    monkeypatch.setenv("KVAULT_PREFIX", "teams/a/" + vault_env["KVAULT_PREFIX"])
    certbot(*standalone(pebble, "v1.example.com"))
    kvault("push", "--config-dir", certbot_dirs.config_dir)
    client = hvac.Client(url=bao.addr, token=bao.token)
    prefix = "teams/a/" + vault_env["KVAULT_PREFIX"]
    raw = client.secrets.kv.v1.read_secret(f"{prefix}/certificates/v1.example.com",
                                           mount_point=kv1_mount)["data"]
    assert raw["domains"] == ["v1.example.com"] and raw["version"] == 1
    assert "BEGIN" in raw["privkey"]
    before = snapshot(Path(certbot_dirs.config_dir))
    shutil.rmtree(certbot_dirs.config_dir)
    kvault("pull", "--config-dir", certbot_dirs.config_dir, "--work-dir", certbot_dirs.work_dir,
           "--logs-dir", certbot_dirs.logs_dir)
    after = snapshot(Path(certbot_dirs.config_dir))
    after.pop("renewal-hooks/deploy/00-update-vault.sh")
    assert after == before
    out = kvault("push", "--config-dir", certbot_dirs.config_dir).stdout
    assert out.startswith("0 pushed, "), out
    # rm on KV v1, of a lineage with no renewal memory (state/) to forget.
    kvault("rm", "v1.example.com")
    with pytest.raises(hvac.exceptions.InvalidPath):
        client.secrets.kv.v1.read_secret(f"{prefix}/certificates/v1.example.com",
                                         mount_point=kv1_mount)


def test_approle_login(vault_env, bao, certbot, certbot_dirs, pebble, monkeypatch):
    prefix = vault_env["KVAULT_PREFIX"]
    bao.api("POST", "sys/auth/approle", {"type": "approle"}) if "approle/" not in \
        bao.api("GET", "sys/auth").json()["data"] else None
    policy = (f'path "secret/data/{prefix}/*" {{ capabilities = ["create","read","update"] }}\n'
              f'path "secret/metadata/{prefix}/*" {{ capabilities = ["list","read"] }}\n')
    bao.api("PUT", f"sys/policies/acl/{prefix}", {"policy": policy})
    bao.api("POST", f"auth/approle/role/{prefix}", {"token_policies": [prefix],
                                                    "token_ttl": "10m"})
    role_id = bao.api("GET", f"auth/approle/role/{prefix}/role-id").json()["data"]["role_id"]
    secret_id = bao.api("POST", f"auth/approle/role/{prefix}/secret-id").json()["data"][
        "secret_id"]
    certbot(*standalone(pebble, "approle.example.com"))
    monkeypatch.delenv("VAULT_TOKEN")
    env = {**os.environ, "VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id}
    out = kvault("push", "--config-dir", certbot_dirs.config_dir, env=env)
    assert "2 pushed, 0 unchanged, 0 failed" in out.stdout, out.stdout
    status = kvault("status", "--json", env=env).stdout
    assert prefix in status and "approle" in status
    assert secret_id not in out.stdout + out.stderr + status
    bad = kvault("push", "--config-dir", certbot_dirs.config_dir, check=False,
                 env={**os.environ, "VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": "wrong"})
    assert bad.returncode == 1
    assert "refused the AppRole login" in bad.stderr and "wrong" not in bad.stderr
    assert "Vault said: invalid role or secret ID" in bad.stderr
