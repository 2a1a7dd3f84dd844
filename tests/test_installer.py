"""The installer half of the kvault plugin, driven by real certbot runs."""
from __future__ import annotations

import os
from pathlib import Path

from kvault_helpers import kvault, layout_from_env

ISSUE = ("--agree-tos", "--register-unsafely-without-email")


def test_certonly_with_kvault_installer_stores_lineage(vault_env, certbot, certbot_dirs,
                                                       pebble):
    proc = certbot("certonly", "-a", "standalone", "-i", "kvault", "--http-01-port",
                   str(pebble.http_port), *ISSUE, "-d", "inst.example.com")
    hook = Path(certbot_dirs.config_dir, "renewal-hooks", "deploy", "00-update-vault.sh")
    assert hook.exists() and os.access(hook, os.X_OK)
    assert "Hook 'deploy-hook' ran with error" not in proc.stderr, proc.stderr
    layout = layout_from_env()
    record = layout.load_lineage("inst.example.com")
    assert record is not None and record.version == 1
    assert record.info is not None and record.info.domains == ["inst.example.com"]
    assert record.auto_renewable is True
    assert "installer = kvault" in record.renewal
    assert len(list(layout.list_accounts())) == 1
    # Nothing left to push: the hook already did it all.
    assert "0 pushed" in kvault("push", "--config-dir", certbot_dirs.config_dir).stdout


def test_install_command_calls_deploy_cert(vault_env, certbot, certbot_dirs, pebble):
    certbot("certonly", "--standalone", "--http-01-port", str(pebble.http_port), *ISSUE,
            "-d", "a.example.com", "-d", "b.example.com")
    layout = layout_from_env()
    assert layout.list_lineages() == []
    certbot("install", "-i", "kvault", "--cert-name", "a.example.com")
    record = layout.load_lineage("a.example.com")
    assert record is not None and record.info is not None
    assert record.info.domains == ["a.example.com", "b.example.com"]
    # certbot calls deploy_cert once per domain; the lineage is written once.
    assert layout.read_lineage_raw("a.example.com").version == 1


def test_kvault_plugin_options_reach_the_hook(vault_env, certbot, certbot_dirs, pebble,
                                              monkeypatch):
    """--kvault-prefix given to certbot is saved in the renewal conf and honoured by the
    deploy hook (which gets no options of its own)."""
    prefix = vault_env["KVAULT_PREFIX"] + "-opt"
    monkeypatch.delenv("KVAULT_PREFIX")
    certbot("certonly", "-a", "standalone", "-i", "kvault", "--http-01-port",
            str(pebble.http_port), *ISSUE, "-d", "opt.example.com", "--kvault-prefix", prefix)
    assert layout_from_env(prefix=prefix).list_lineages() == ["opt.example.com"]
    assert layout_from_env().list_lineages() == []


def test_installer_with_vault_down_warns_loudly_and_leaves_pending(
        vault_env, certbot, certbot_dirs, pebble, monkeypatch):
    """certbot drops a failing installer on certonly and still issues: the deploy hook
    (installed before the Vault check) must then say so loudly and leave a pending
    mark that the next certbot-kvault command completes."""
    from servers import free_port

    good_addr = os.environ["VAULT_ADDR"]
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{free_port()}")
    proc = certbot("certonly", "-a", "standalone", "-i", "kvault", "--http-01-port",
                   str(pebble.http_port), *ISSUE, "-d", "down.example.com", check=False)
    assert proc.returncode == 0  # certbot's rule: a failing deploy hook only warns
    assert "lineage down.example.com was NOT saved to Vault" in proc.stderr
    assert "certbot-kvault push" in proc.stderr
    assert "Retrying" not in proc.stderr
    pending = Path(certbot_dirs.config_dir, "kvault", "pending", "down.example.com")
    assert pending.exists()

    monkeypatch.setenv("VAULT_ADDR", good_addr)
    kvault("pull", "--config-dir", certbot_dirs.config_dir)
    assert not pending.exists()
    assert layout_from_env().load_lineage("down.example.com") is not None
