"""The certbot-kvault subcommands through click's runner (plus the real script where the
environment of a certbot hook matters), against the real OpenBao."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cli, kvault, layout_from_env, token_with_policy
from servers import run_certbot

from certbot_kvault._internal.store.state import RenewalState

ISSUE = ("--agree-tos", "--register-unsafely-without-email")


@pytest.fixture(scope="module")
def issued(tmp_path_factory, pebble):
    root = tmp_path_factory.mktemp("cli-issued")
    dirs = {k: str(root / k) for k in ("config", "work", "logs")}
    run_certbot(["certonly", "--standalone", "--http-01-port", str(pebble.http_port), *ISSUE,
                 "-d", "cli.example.com", "-d", "www.cli.example.com"],
                config_dir=dirs["config"], work_dir=dirs["work"], logs_dir=dirs["logs"],
                pebble=pebble)
    run_certbot(["certonly", "--standalone", "--http-01-port", str(pebble.http_port), *ISSUE,
                 "-d", "ec.cli.example.com", "--key-type", "ecdsa"],
                config_dir=dirs["config"], work_dir=dirs["work"], logs_dir=dirs["logs"],
                pebble=pebble)
    return dirs


@pytest.fixture
def pushed(vault_env, issued):
    result = cli("push", "--config-dir", issued["config"])
    assert result.exit_code == 0, result.output
    return issued


def test_list_table_and_json(pushed):
    result = cli("list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NAME", "SUBJECT", "EXPIRATION", "AUTO_RENEWABLE",
                                "NEXT_RENEWAL", "FAILURES"]
    assert [line.split()[0] for line in lines[1:]] == ["cli.example.com", "ec.cli.example.com"]
    assert lines[1].split()[1] == "cli.example.com" and lines[1].split()[3] == "yes"
    rows = json.loads(cli("list", "--json").output)
    assert [r["name"] for r in rows] == ["cli.example.com", "ec.cli.example.com"]
    assert rows[0]["domains"] == ["cli.example.com", "www.cli.example.com"]
    assert rows[0]["not_after"].endswith("Z") and rows[0]["auto_renewable"] is True
    assert set(rows[0]) == {"name", "subject", "domains", "not_after", "auto_renewable",
                            "version", "error", "due", "renewal_rule", "next_renewal",
                            "in_backoff", "backoff_until", "renewed_recently_until", "state"}
    assert rows[0]["error"] is None
    assert lines[1].split()[-1] == "0" and rows[0]["state"] == {"consecutive_failures": 0}


def test_show_never_prints_the_key(pushed):
    result = cli("show", "ec.cli.example.com", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["key_type"] == "ecdsa" and info["subject"] == "ec.cli.example.com"
    assert info["version"] == 1 and len(info["serial"]) > 8
    text = cli("show", "cli.example.com").output
    assert "domains: cli.example.com, www.cli.example.com" in text
    assert "PRIVATE KEY" not in text + result.output
    missing = cli("show", "nope.example.com")
    assert missing.exit_code == 1 and "No lineage nope.example.com in Vault" in missing.output


def test_rm_and_purge(pushed, vault_env):
    layout = layout_from_env()
    # Renewal memory of a lineage that failed: rm forgets it with the lineage, so a
    # lineage issued again under that name does not start in backoff.
    failing = RenewalState()
    failing.failed("validation failed", time.time(), 90 * 86400)
    layout.save_state("ec.cli.example.com", failing)
    result = cli("rm", "ec.cli.example.com")
    assert result.exit_code == 0, result.output
    assert f"deleted: {layout.where('state', 'ec.cli.example.com')}" in result.output
    assert layout.read_lineage_raw("ec.cli.example.com") is None
    assert layout.load_state("ec.cli.example.com") is None
    # Soft-deleted on KV v2: metadata (the history) is still there until --purge.
    assert "ec.cli.example.com" in layout.vault.list_keys(f"{layout.prefix}/certificates")
    assert "ec.cli.example.com" in layout.vault.list_keys(f"{layout.prefix}/state")
    assert cli("rm", "ec.cli.example.com", "--purge").exit_code == 0
    assert "ec.cli.example.com" not in layout.vault.list_keys(f"{layout.prefix}/certificates")
    assert "ec.cli.example.com" not in layout.vault.list_keys(f"{layout.prefix}/state")
    assert cli("rm", "ec.cli.example.com").exit_code == 1
    # A lineage that never had renewal memory is removed as before.
    result = cli("rm", "cli.example.com")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"deleted: {layout.where('certificates', 'cli.example.com')}"]
    assert cli("rm", "cli.example.com", "--purge").exit_code == 0


def test_status(vault_env, bao, monkeypatch):
    prefix = vault_env["KVAULT_PREFIX"]
    policy = (f'path "secret/data/{prefix}/certificates/*" {{ capabilities = ["read"] }}\n'
              f'path "secret/metadata/{prefix}/certificates/*" {{ capabilities = ["list"] }}\n')
    token = token_with_policy(bao, prefix, policy)
    monkeypatch.setenv("VAULT_TOKEN", token)
    result = cli("status", "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["kv_version"] == 2 and status["mount"] == "secret"
    assert status["sealed"] is False and status["auth_method"] == "token"
    assert prefix in status["token"]["policies"]
    caps = status["capabilities"]
    assert caps["certificates (data)"] == ["read"]
    assert caps["certificates (list)"] == ["list"]
    assert caps["accounts (data)"] == ["deny"]
    assert token not in result.output
    text = cli("status").output
    assert "kv_version: 2" in text and "certificates (data): read" in text
    assert token not in text


def test_push_is_idempotent_and_json(vault_env, issued):
    first = json.loads(cli("push", "--config-dir", issued["config"], "--json").output)
    assert sorted(first["written"])[-2:] == ["lineage cli.example.com",
                                             "lineage ec.cli.example.com"]
    second = json.loads(cli("push", "--config-dir", issued["config"], "--json").output)
    assert second["written"] == [] and len(second["unchanged"]) == 3


def test_import_wires_the_hook(vault_env, issued, tmp_path):
    config = tmp_path / "le"
    shutil.copytree(issued["config"], config, symlinks=True)
    for conf in config.joinpath("renewal").glob("*.conf"):
        conf.write_text(conf.read_text().replace(issued["config"], str(config)))
    result = cli("import", "--config-dir", str(config))
    assert result.exit_code == 0, result.output
    assert "3 imported" in result.output
    hook = config / "renewal-hooks" / "deploy" / "00-update-vault.sh"
    assert os.access(hook, os.X_OK)
    assert layout_from_env().list_lineages() == ["cli.example.com", "ec.cli.example.com"]
    assert cli("import", "--config-dir", str(tmp_path / "missing")).exit_code == 1


def test_deploy_hook_script_pushes_and_marks_pending(vault_env, issued, tmp_path, monkeypatch):
    config = tmp_path / "le"
    shutil.copytree(issued["config"], config, symlinks=True)
    for conf in config.joinpath("renewal").glob("*.conf"):
        # Lineages kept in Vault (as `-i kvault` makes them): the hook pushes only those.
        conf.write_text(conf.read_text().replace(issued["config"], str(config))
                        .replace("[renewalparams]\n", "[renewalparams]\ninstaller = kvault\n"))
    hook = Path(__file__).resolve().parent.parent / "hooks" / "deploy" / "00-update-vault.sh"
    env = dict(os.environ, RENEWED_LINEAGE=str(config / "live" / "cli.example.com"),
               RENEWED_DOMAINS="cli.example.com www.cli.example.com",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(["sh", str(hook)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert layout_from_env().list_lineages() == ["cli.example.com"]

    env["VAULT_TOKEN"] = "s.bogus-token-value"
    env["RENEWED_LINEAGE"] = str(config / "live" / "ec.cli.example.com")
    proc = subprocess.run(["sh", str(hook)], env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "lineage ec.cli.example.com was NOT saved to Vault" in proc.stderr
    assert "s.bogus-token-value" not in proc.stderr
    assert (config / "kvault" / "pending" / "ec.cli.example.com").exists()
    # The next command completes it.
    out = kvault("push", "-v", "--config-dir", str(config), "cli.example.com").stdout
    assert "pushed: lineage ec.cli.example.com" in out
    assert not (config / "kvault" / "pending" / "ec.cli.example.com").exists()


def test_deploy_hook_outside_certbot(vault_env, monkeypatch):
    monkeypatch.delenv("RENEWED_LINEAGE", raising=False)
    result = cli("deploy-hook")
    assert result.exit_code == 1 and "RENEWED_LINEAGE is not set" in result.output


def test_packaged_hook_is_the_repo_hook():
    repo = Path(__file__).resolve().parent.parent
    packaged = repo / "certbot_kvault" / "_internal" / "tree" / "hooks" / "00-update-vault.sh"
    assert (repo / "hooks" / "deploy" / "00-update-vault.sh").read_bytes() == \
        packaged.read_bytes()
    subprocess.run(["sh", "-n", str(packaged)], check=True)


def test_export_pem_bundle_env(pushed, tmp_path):
    out = tmp_path / "certs"
    result = cli("export", "cli.example.com", "--dir", str(out))
    assert result.exit_code == 0, result.output
    live = Path(pushed["config"], "live", "cli.example.com")
    for kind in ("cert", "chain", "fullchain", "privkey"):
        assert (out / f"{kind}.pem").read_text() == (live / f"{kind}.pem").read_text()
    assert (out / "privkey.pem").stat().st_mode & 0o777 == 0o600
    assert (out / "cert.pem").stat().st_mode & 0o777 == 0o644
    assert "PRIVATE KEY" not in result.output

    assert cli("export", "cli.example.com", "--dir", str(out), "--format", "bundle"
               ).exit_code == 0
    bundle = (out / "cli.example.com.pem").read_text()
    assert bundle == (live / "privkey.pem").read_text() + (live / "fullchain.pem").read_text()
    assert (out / "cli.example.com.pem").stat().st_mode & 0o777 == 0o600

    env = cli("export", "cli.example.com", "--format", "env").output
    # The lines are shell: source them and read the values back.
    proc = subprocess.run(
        ["sh", "-c", env + '\nprintf %s "$SSL_CERT_CLI_EXAMPLE_COM_KEY" > "$1"\n'
         'echo "$SSL_CERT_CLI_EXAMPLE_COM_DOMAINS|$SSL_CERT_CLI_EXAMPLE_COM_VERSION"',
         "sh", str(tmp_path / "key.pem")], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "cli.example.com www.cli.example.com|1"
    assert (tmp_path / "key.pem").read_text() == (live / "privkey.pem").read_text()

    assert cli("export", "cli.example.com").exit_code == 1  # files need --dir
    missing = cli("export", "nope.example.com", "--format", "env")
    assert missing.exit_code == 1 and "No lineage nope.example.com" in missing.output
    assert cli("export", "../x", "--dir", str(out)).exit_code == 1


def test_read_only_commands_note_pending_pushes(pushed, tmp_path, monkeypatch):
    """A deploy hook that could not reach Vault left a mark: list/show/status say so on
    stderr (status --json also in "pending"), and push nothing themselves."""
    from certbot_kvault._internal.tree import pending
    from certbot_kvault._internal.tree.storage import Dirs, Tree

    config = tmp_path / "le"
    shutil.copytree(pushed["config"], config, symlinks=True)
    assert "note:" not in kvault("list", "--config-dir", str(config)).stderr
    tree = Tree(Dirs(str(config), str(tmp_path / "work"), str(tmp_path / "logs")))
    pending.mark(tree, "ec.cli.example.com", "Vault unreachable")
    pending.mark(tree, "gone.example.com", "Vault unreachable")  # no lineage here
    note = ("note: 1 lineage(s) renewed here are not in Vault yet (ec.cli.example.com): "
            f"run certbot-kvault push --config-dir {config}")
    for args in (["list"], ["list", "--json"], ["show", "cli.example.com"], ["status"]):
        proc = kvault(*args, "--config-dir", str(config))
        assert proc.stderr.splitlines() == [note], (args, proc.stderr)
    status = json.loads(kvault("status", "--json", "--config-dir", str(config)).stdout)
    assert status["pending"] == ["ec.cli.example.com"]
    proc = kvault("list", "--json", env={**os.environ, "KVAULT_CONFIG_DIR": str(config)})
    assert [r["name"] for r in json.loads(proc.stdout)] == ["cli.example.com",
                                                           "ec.cli.example.com"]
    assert proc.stderr.splitlines() == [note]
    # Most useful when Vault is what is missing: the note comes before the error.
    from servers import free_port

    down = kvault("status", "--config-dir", str(config), check=False,
                  env={**os.environ, "VAULT_ADDR": f"http://127.0.0.1:{free_port()}"})
    assert down.returncode == 1 and down.stderr.splitlines()[0] == note, down.stderr
    assert (config / "kvault" / "pending" / "ec.cli.example.com").exists()  # not pushed

    missing = str(tmp_path / "missing")
    proc = kvault("status", "--json", "--config-dir", missing)
    assert json.loads(proc.stdout)["pending"] == [] and "note:" not in proc.stderr
    assert not os.path.exists(missing)
