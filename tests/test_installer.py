"""The installer half of the kvault plugin, driven by real certbot runs."""
from __future__ import annotations

import os
from pathlib import Path

from helpers import KVAULT, kvault, layout_from_env

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
    assert kvault("push", "--config-dir", certbot_dirs.config_dir).stdout.startswith("0 pushed, ")


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


def test_installer_fails_early_when_vault_is_down(vault_env, certbot, certbot_dirs, pebble,
                                                  monkeypatch):
    """-i kvault with Vault down: certbot stops before ordering, with one clear line
    (certbot would quietly drop a plugin whose prepare() raised a PluginError)."""
    from servers import free_port

    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{free_port()}")
    proc = certbot("certonly", "-a", "standalone", "-i", "kvault", "--http-01-port",
                   str(pebble.http_port), *ISSUE, "-d", "down.example.com", check=False)
    assert proc.returncode != 0
    assert "kvault: Cannot reach Vault at http://127.0.0.1:" in proc.stderr
    assert "Retrying" not in proc.stderr and "Traceback" not in proc.stderr
    assert not Path(certbot_dirs.config_dir, "live", "down.example.com").exists()


def test_other_plugins_unaffected_when_vault_is_down(vault_env, certbot, certbot_dirs, pebble,
                                                     monkeypatch):
    """An installed kvault must not break certbot runs that do not use it."""
    from servers import free_port

    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{free_port()}")
    certbot("certonly", "--standalone", "--http-01-port", str(pebble.http_port), *ISSUE,
            "-d", "plain.example.com")
    assert certbot("plugins", "--prepare").returncode == 0  # not chosen: Vault not asked
    assert "* kvault" in certbot("plugins").stdout


def test_hook_failure_after_issuance_leaves_pending_mark(vault_env, certbot, certbot_dirs,
                                                         pebble, bao, monkeypatch):
    """Vault fine for the plugin but not for the deploy hook: certbot exits 0 (its rule
    for hooks), the hook says so loudly and leaves a pending mark; the installer's
    restart() (same run) or the next certbot-kvault command completes the push."""
    import certbot as certbot_pkg
    from servers import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    # The hook inherits certbot's env; KVAULT_BIN lets us wrap it with a dead VAULT_ADDR.
    wrapper = Path(certbot_dirs.work_dir) / "kvault-dead-vault"
    wrapper.write_text(f"#!/bin/sh\nVAULT_ADDR={dead} exec {KVAULT} \"$@\"\n")
    wrapper.chmod(0o755)
    proc = certbot("certonly", "-a", "standalone", "-i", "kvault", "--http-01-port",
                   str(pebble.http_port), *ISSUE, "-d", "late.example.com",
                   env={"KVAULT_BIN": str(wrapper)}, check=False)
    layout = layout_from_env()
    pending = Path(certbot_dirs.config_dir, "kvault", "pending", "late.example.com")
    assert proc.returncode == 0, proc.stderr
    if int(certbot_pkg.__version__.split(".")[0]) >= 3:
        # certbot >= 3 runs renewal-hooks/deploy on a new certonly issuance
        # (2.x only on renewals; there restart() alone does the push).
        assert "lineage late.example.com was NOT saved to Vault" in proc.stderr
    assert layout.load_lineage("late.example.com") is not None
    kvault("push", "--config-dir", certbot_dirs.config_dir)
    assert not pending.exists()


def _hook(certbot_dirs) -> Path:
    return Path(certbot_dirs.config_dir, "renewal-hooks", "deploy", "00-update-vault.sh")


def test_unchosen_plugin_wires_nothing(clean_env, certbot, certbot_dirs, pebble):
    """No Vault configured, kvault never chosen: `certbot plugins --prepare` (which prepares
    every plugin, as the interactive menu does) leaves no hook, so the renewal of another
    plugin's lineage runs no failing hook and leaves no pending mark."""
    assert certbot("plugins", "--prepare").returncode == 0
    assert not _hook(certbot_dirs).exists()
    certbot("certonly", "--standalone", "--http-01-port", str(pebble.http_port), *ISSUE,
            "-d", "unchosen.example.com")
    proc = certbot("renew", "--force-renewal")
    assert "ran with error" not in proc.stderr, proc.stderr
    assert not _hook(certbot_dirs).exists()
    assert not Path(certbot_dirs.config_dir, "kvault").exists()


def test_hook_follows_the_choice(vault_env, certbot, certbot_dirs, pebble):
    """-i kvault wires the hook; `certbot renew` of a lineage whose conf names kvault wires
    it again (certbot restores the installer from the conf before preparing plugins) and
    pushes; `plugins --prepare` alone does not, even with Vault reachable."""
    certbot("certonly", "-a", "standalone", "-i", "kvault", "--http-01-port",
            str(pebble.http_port), *ISSUE, "-d", "chosen.example.com")
    assert _hook(certbot_dirs).exists()
    _hook(certbot_dirs).unlink()
    certbot("renew", "--force-renewal", "--cert-name", "chosen.example.com")
    assert os.access(_hook(certbot_dirs), os.X_OK)
    record = layout_from_env().load_lineage("chosen.example.com")
    assert record is not None and record.version == 2
    _hook(certbot_dirs).unlink()
    certbot("plugins", "--prepare")
    assert not _hook(certbot_dirs).exists()


def test_hook_leaves_a_lineage_that_is_not_vaults(vault_env, certbot, certbot_dirs, pebble,
                                                  monkeypatch):
    """A lineage plain certbot made for this machine, in a config dir whose hook pushes
    Vault's lineages, stays out of Vault when certbot renews it (its key would be readable
    with every reader token), with one line saying how to put it there; Vault unreachable,
    the hook cannot tell and does not push (nor mark it pending). A conf naming kvault
    makes it Vault's."""
    from servers import free_port

    port = str(pebble.http_port)
    certbot("certonly", "-a", "standalone", "-i", "kvault", "--http-01-port", port, *ISSUE,
            "-d", "vaulted.example.com")  # wires the hook
    certbot("certonly", "--standalone", "--http-01-port", port, *ISSUE,
            "-d", "local.example.com")
    proc = certbot("renew", "--force-renewal", "--cert-name", "local.example.com")
    config = certbot_dirs.config_dir
    assert Path(config, "archive", "local.example.com", "cert2.pem").exists()
    layout = layout_from_env()
    assert layout.list_lineages() == ["vaulted.example.com"]
    where = layout.where("certificates", "local.example.com")
    line = (f"deploy hook: not pushing local.example.com: it is not kept in Vault (not at "
            f"{where}, its renewal conf names no kvault plugin, never synced from here); to "
            f"keep it in Vault: certbot-kvault push --config-dir {config} local.example.com")
    assert line in proc.stdout, proc.stdout + proc.stderr
    assert "ran with error" not in proc.stderr, proc.stderr

    hook_env = {**os.environ, "RENEWED_LINEAGE": f"{config}/live/local.example.com"}
    dead = {**hook_env, "VAULT_ADDR": f"http://127.0.0.1:{free_port()}"}
    proc = kvault("deploy-hook", env=dead, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: deploy hook: not pushing local.example.com: nothing "
                                  f"in {config} says it is kept in Vault, and Vault could not "
                                  "be asked (")
    assert proc.stderr.rstrip().endswith(
        f"; if it is: certbot-kvault push --config-dir {config} local.example.com")
    assert not Path(config, "kvault", "pending", "local.example.com").exists()

    conf = Path(config, "renewal", "local.example.com.conf")
    conf.write_text(conf.read_text().replace("[renewalparams]\n",
                                             "[renewalparams]\ninstaller = kvault\n"))
    kvault("deploy-hook", env=hook_env)
    assert layout.list_lineages() == ["local.example.com", "vaulted.example.com"]
