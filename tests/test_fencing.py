"""`renew` under faults, against real OpenBao and Pebble: a renewer paused past its lease,
Vault gone while saving, renewals that fail, several ACME accounts."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import servers
from helpers import (
    KVAULT,
    Golden,
    fresh_dirs,
    golden_env,
    kv_version,
    kvault,
    locks_held,
    record,
    seed,
    signal_tree,
    walk,
)
from servers import Bao
from stubs import TcpFaultProxy

# Stops the certbot-kvault that runs this certbot ($PPID) and certbot itself: a
# --pre-hook runs after the pull and before the ACME order.
STOP_RENEWER = "kill -STOP $PPID $(awk '/^PPid:/ {print $2}' /proc/$PPID/status)"


def _pending(root: Path) -> list[str]:
    """Pending marks (lineages a push still owes Vault) in a renewer's config dir."""
    d = root / "config" / "kvault" / "pending"
    return sorted(os.listdir(d)) if d.exists() else []


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"



def test_renewer_that_lost_its_lock_saves_nothing(bao: Bao, golden: Golden,
                                                   vault_env: dict[str, str],
                                                   tmp_path: Path) -> None:
    """A is paused (SIGSTOP) after its pull, past --lock-ttl; B takes over and renews;
    A resumes, renews too, and must not replace B's certificate in Vault."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    before = kv_version(bao, prefix, "certificates/due")
    env = golden_env(bao, golden, prefix)
    # B skips what was saved at or after A took the lock (whole seconds): the golden
    # record, pushed moments ago when this test runs first, must look older.
    time.sleep(1.1)
    root_a, args_a = fresh_dirs(tmp_path, "a")
    a = subprocess.Popen([KVAULT, "renew", *args_a, "--lock-ttl", "3", "--",
                          "--pre-hook", STOP_RENEWER], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _stopped(a.pid):
            assert a.poll() is None and time.monotonic() < deadline, a.communicate()
            time.sleep(0.05)
        _, args_b = fresh_dirs(tmp_path, "b")
        b = kvault("renew", *args_b, "--lock-wait", "60", env=env)
        assert "renewed: due" in b.stdout, b.stdout + b.stderr
        saved_by_b = record(bao, prefix, "certificates/due")
        assert kv_version(bao, prefix, "certificates/due") == before + 1
        signal_tree(a.pid, signal.SIGCONT)
        out, err = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            signal_tree(a.pid, signal.SIGKILL)
            a.wait()
    assert a.returncode != 0, (out, err)
    assert record(bao, prefix, "certificates/due") == saved_by_b
    assert kv_version(bao, prefix, "certificates/due") == before + 1
    lines = [line for line in err.splitlines() if "was NOT saved to Vault" in line]
    assert len(lines) == 1, err
    assert "lineage due: this renewer's lock was lost" in lines[0]
    assert f"secret/{prefix}/certificates/due changed in Vault after this run pulled its " \
           f"KV version {before} (now version {before + 1})" in lines[0]
    assert "renew: 0 renewed, 1 failed, 1 due, 1 checked" in out
    # The hook in renewal-hooks/deploy left the push to the renewer.
    assert "not pushing due" in out
    # A's config dir holds B's certificate again and nothing is pending to overwrite it.
    cert = (root_a / "config" / "live" / "due" / "cert.pem").read_text()
    assert saved_by_b is not None and cert == saved_by_b["cert"]
    assert _pending(root_a) == []
    assert not locks_held(bao, prefix)


@contextlib.contextmanager
def _vault_gone_after_renewal(bao: Bao, tmp_path: Path,
                              seconds: float) -> Iterator[tuple[TcpFaultProxy, str]]:
    """A proxy to Vault, and a --deploy-hook (certbot runs it right after renewing) that
    has the proxy refuse every connection for ``seconds`` and returns once it does."""
    proxy = TcpFaultProxy(bao.port)
    trigger, down = tmp_path / "renewed", tmp_path / "vault-down"
    stop = threading.Event()

    def watch() -> None:
        while not trigger.exists():
            if stop.wait(0.02):
                return
        proxy.refuse_for(seconds)
        down.touch()

    threading.Thread(target=watch, daemon=True).start()
    try:
        yield proxy, f"touch {trigger}; while [ ! -e {down} ]; do sleep 0.05; done"
    finally:
        stop.set()
        proxy.stop()
    assert down.exists(), "the deploy hook never ran"


def test_push_waits_for_vault_to_come_back(bao: Bao, golden: Golden,
                                           vault_env: dict[str, str], tmp_path: Path) -> None:
    """Vault refuses connections for 20 s right after certbot renewed: the run keeps the
    new certificate, tries again, and saves it once Vault is back."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    before = kv_version(bao, prefix, "certificates/due")
    root, args = fresh_dirs(tmp_path)
    with _vault_gone_after_renewal(bao, tmp_path, 20) as (proxy, hook):
        env = golden_env(bao, golden, prefix, VAULT_ADDR=f"http://127.0.0.1:{proxy.port}")
        t0 = time.monotonic()
        proc = kvault("renew", *args, "--", "--deploy-hook", hook, env=env, check=False,
                      timeout=300)
        print(f"renew through a 20 s Vault outage took {time.monotonic() - t0:.1f}s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "trying again in" in proc.stderr
    assert "renewed: due" in proc.stdout
    assert kv_version(bao, prefix, "certificates/due") == before + 1
    saved = record(bao, prefix, "certificates/due")
    assert saved is not None
    assert saved["cert"] == (root / "config" / "live" / "due" / "cert.pem").read_text()
    assert _pending(root) == []


def test_push_gives_up_naming_the_lineage(bao: Bao, golden: Golden,
                                          vault_env: dict[str, str], tmp_path: Path) -> None:
    """Vault stays away longer than --push-retry-for: exit non-zero naming the lineage,
    with a pending mark that the next command completes."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    before = kv_version(bao, prefix, "certificates/due")
    root, args = fresh_dirs(tmp_path)
    with _vault_gone_after_renewal(bao, tmp_path, 600) as (proxy, hook):
        env = golden_env(bao, golden, prefix, VAULT_ADDR=f"http://127.0.0.1:{proxy.port}",
                   KVAULT_PUSH_RETRY_FOR="2")
        proc = kvault("renew", *args, "--", "--deploy-hook", hook, env=env, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "was NOT saved to Vault" in line]
    assert len(lines) == 1 and lines[0].startswith("error: lineage due: "), proc.stderr
    assert f"was NOT saved to Vault at secret/{prefix}/certificates/due (" in lines[0]
    assert "certbot-kvault push --config-dir" in lines[0]
    assert "1 failed" in proc.stdout
    assert kv_version(bao, prefix, "certificates/due") == before
    assert _pending(root) == ["due"]
    # Vault is back (reached directly): the next command saves it.
    kvault("push", *args, env=golden_env(bao, golden, prefix))
    assert kv_version(bao, prefix, "certificates/due") == before + 1
    assert _pending(root) == []


def test_every_failed_renewal_is_counted(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                         tmp_path: Path) -> None:
    """The only due lineage cannot validate (its authenticator is `manual` without a hook):
    certbot reports that on stderr; the run still counts it."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    data = record(bao, prefix, "certificates/due")
    assert data is not None and "authenticator = standalone" in data["renewal"]
    data["renewal"] = data["renewal"].replace("authenticator = standalone",
                                              "authenticator = manual")
    r = bao.api("POST", f"secret/data/{prefix}/certificates/due", json={"data": data})
    assert r.status_code == 200, r.text
    before = kv_version(bao, prefix, "certificates/due")
    _, args = fresh_dirs(tmp_path)
    metrics = tmp_path / "m.prom"
    proc = kvault("renew", *args, "--metrics-file", str(metrics),
                  env=golden_env(bao, golden, prefix), check=False)
    assert proc.returncode != 0
    assert "renew: 0 renewed, 1 failed, 1 due, 1 checked" in proc.stdout, proc.stdout
    assert "(failure)" in proc.stderr  # certbot's own summary still reaches the user
    text = metrics.read_text()
    assert "certbot_kvault_renew_failed 1\n" in text
    assert "certbot_kvault_renew_exit_code 0\n" not in text
    assert kv_version(bao, prefix, "certificates/due") == before


def _account_ids(bao: Bao, prefix: str) -> list[str]:
    return sorted(p.rsplit("/", 1)[1] for p in walk(bao, f"{prefix}/accounts"))


def test_renew_pulls_only_the_accounts_its_lineages_use(bao: Bao, golden: Golden,
                                                        vault_env: dict[str, str],
                                                        tmp_path: Path) -> None:
    """Two accounts on the same Pebble directory and `--server` for certbot: certbot would
    ask which account to use; the lineage's own account is the only one pulled."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    env = golden_env(bao, golden, prefix)
    ours = _account_ids(bao, prefix)
    reg, reg_args = fresh_dirs(tmp_path, "register")
    servers.run_certbot(["register", "--register-unsafely-without-email", "--agree-tos"],
                        config_dir=reg / "config", work_dir=reg / "work",
                        logs_dir=reg / "logs", pebble=golden.pebble, env=env)
    kvault("push", *reg_args, env=env)
    assert len(_account_ids(bao, prefix)) == len(ours) + 1
    before = kv_version(bao, prefix, "certificates/due")

    root, args = fresh_dirs(tmp_path)
    proc = kvault("renew", *args, "--", "--server", golden.pebble.directory_url, env=env,
                  check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "renewed: due" in proc.stdout
    assert kv_version(bao, prefix, "certificates/due") == before + 1
    server_dir = root / "config" / "accounts" / f"127.0.0.1:{golden.pebble.port}" / "dir"
    assert len(os.listdir(server_dir)) == 1

    # A lineage whose account is not in Vault: one line saying so.
    for account in _account_ids(bao, prefix):
        for path in walk(bao, f"{prefix}/accounts"):
            if path.endswith(account):
                bao.api("DELETE", f"secret/metadata/{prefix}/accounts/{path}")
    _, args = fresh_dirs(tmp_path, "orphan")
    # (--force-renewal: the lineage was just renewed, the storm guard would hold it back)
    proc = kvault("renew", *args, "--", "--force-renewal", env=env, check=False)
    assert proc.returncode != 0
    said = [line for line in proc.stderr.splitlines() if "not in Vault" in line]
    assert len(said) == 1, proc.stderr
    assert "lineage due uses ACME account " in said[0]
    assert f"secret/{prefix}/accounts/127.0.0.1:{golden.pebble.port}/dir/" in said[0]


def test_failures_from_exit_status_disk_and_summary() -> None:
    from certbot_kvault._internal.renew.runner import certbot_failures

    live = "/etc/letsencrypt/live/{}/fullchain.pem (failure)\n"
    asked = ["a", "b", "c"]
    # One certbot for all: 0 means every attempt worked, whatever the text says.
    assert certbot_failures(0, {}, live.format("a"), asked, set()) == set()
    # Its summary (here from stderr) names the failures; `a` was renewed, `c` not due.
    assert certbot_failures(1, {}, "The following renewals failed:\n" + live.format("b"),
                            asked, {"a"}) == {"b"}
    parsefail = "/etc/letsencrypt/renewal/c.conf (parsefail)\n"
    assert certbot_failures(1, {}, parsefail, asked, set()) == {"c"}
    # Stopped before any summary: nothing it did not renew is known to be fine.
    assert certbot_failures(1, {}, "Traceback ...", asked, {"a"}) == {"b", "c"}
    # One certbot per lineage: each exit status.
    assert certbot_failures(1, {"a": 0, "b": 1, "c": 0}, "", asked, {"a"}) == {"b"}
