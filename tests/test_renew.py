"""`certbot-kvault renew` and `run`: stateless certbot runs against real OpenBao and Pebble."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    KVAULT,
    Golden,
    fresh_dirs,
    golden_env,
    kv_version,
    kvault,
    locks_held,
    orders,
    record,
    seed,
    signal_tree,
)
from servers import Bao

from certbot_kvault._internal.renew.locks import Locks
from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.store.timefmt import format_time
from certbot_kvault._internal.vault.client import VaultClient
from certbot_kvault._internal.vault.settings import VaultSettings


def test_stateless_renew_from_empty_dir(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                        tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due", "calm"])
    due_before = kv_version(bao, prefix, "certificates/due")
    calm_before = kv_version(bao, prefix, "certificates/calm")
    orders_before = orders(golden.pebble)
    root, args = fresh_dirs(tmp_path)
    assert not any((root / "config").iterdir())
    metrics = tmp_path / "metrics" / "renew.prom"

    t0 = time.monotonic()
    proc = kvault("renew", *args, "--metrics-file", str(metrics),
                  env=golden_env(bao, golden, prefix))
    took = time.monotonic() - t0
    print(f"renew from an empty dir took {took:.2f}s")
    assert "renewed: due" in proc.stdout, proc.stdout

    assert kv_version(bao, prefix, "certificates/due") == due_before + 1
    assert record(bao, prefix, "certificates/due")["version"] == 2  # type: ignore[index]
    # Not due: left alone, nothing written to Vault (not even certbot's ARI hint).
    assert kv_version(bao, prefix, "certificates/calm") == calm_before
    assert orders(golden.pebble) == orders_before + 1
    # The lock is gone.
    assert not locks_held(bao, prefix)

    text = metrics.read_text()
    assert "certbot_kvault_renew_renewed 1\n" in text
    assert "certbot_kvault_renew_failed 0\n" in text
    assert "certbot_kvault_renew_exit_code 0\n" in text
    assert 'certbot_kvault_certificate_days_to_expiry{lineage="calm"}' in text
    assert "# TYPE certbot_kvault_renew_seconds gauge" in text

    # A second stateless run finds nothing due except `due` (always due by its conf);
    # `calm` still untouched.
    root2, args2 = fresh_dirs(tmp_path, "again")
    kvault("renew", *args2, "--", "--cert-name", "calm", env=golden_env(bao, golden, prefix))
    assert kv_version(bao, prefix, "certificates/calm") == calm_before


def test_two_renewers_one_order(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    before = kv_version(bao, prefix, "certificates/due")
    orders_before = orders(golden.pebble)
    env = golden_env(bao, golden, prefix)
    procs = []
    for i in range(2):
        _, args = fresh_dirs(tmp_path, f"r{i}")
        # --force-renewal too: even then the one that waited must not order again.
        procs.append(subprocess.Popen(
            [KVAULT, "renew", *args, "--lock-wait", "60", "--", "--force-renewal"], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL))
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, (out, err)
    assert kv_version(bao, prefix, "certificates/due") == before + 1
    assert orders(golden.pebble) == orders_before + 1
    renewed = [o for o, _ in outs if "renewed: due" in o]
    assert len(renewed) == 1, outs
    waited = [e for _, e in outs if "waiting up to 60s" in e]
    assert len(waited) == 1, outs
    assert "skipping due: renewed by another renewer while we waited" in waited[0]


def test_loser_exits_zero_saying_who_holds_the_lock(bao: Bao, golden: Golden,
                                                    vault_env: dict[str, str],
                                                    tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    holder = Locks(Layout(VaultClient(VaultSettings.from_env())), ttl=60,
                   owner="other-host:4242:abc")
    assert holder.try_acquire("renew") is None
    try:
        _, args = fresh_dirs(tmp_path)
        metrics = tmp_path / "m.prom"
        t0 = time.monotonic()
        proc = kvault("renew", *args, "--lock-wait", "1", "--metrics-file", str(metrics),
                      env=golden_env(bao, golden, prefix))
        assert 0.9 < time.monotonic() - t0 < 10
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 1, proc.stdout
        assert "held by other-host:4242:abc until " in lines[0]
        assert f"secret/data/{prefix}/locks/renew" in lines[0]
        assert "certbot_kvault_renew_skipped_locked 1" in metrics.read_text()
        # Nothing was pulled.
        assert not (tmp_path / "run" / "config" / "renewal").exists()
    finally:
        holder.release_all()


def test_killed_renewer_lock_taken_over_after_expiry(bao: Bao, golden: Golden,
                                                     vault_env: dict[str, str],
                                                     tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    before = kv_version(bao, prefix, "certificates/due")
    env = golden_env(bao, golden, prefix)
    _, args = fresh_dirs(tmp_path, "victim")
    victim = subprocess.Popen([KVAULT, "renew", *args, "--lock-ttl", "3"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while bao.api("GET", f"secret/data/{prefix}/locks/renew").status_code != 200:
            assert time.monotonic() < deadline, "the renewer never took the lock"
            assert victim.poll() is None
            time.sleep(0.02)
    finally:
        signal_tree(victim.pid, signal.SIGKILL)  # certbot too, if it had started
        victim.wait(10)
    stale = record(bao, prefix, "locks/renew")
    assert stale is not None  # SIGKILL: no release

    _, args2 = fresh_dirs(tmp_path, "next")
    t0 = time.monotonic()
    proc = kvault("renew", *args2, "--lock-wait", "30", "--lock-ttl", "3", env=env)
    print(f"took over after {time.monotonic() - t0:.2f}s")
    assert "waiting up to 30s" in proc.stderr
    assert stale["owner"] in proc.stderr
    assert "renewed: due" in proc.stdout
    assert kv_version(bao, prefix, "certificates/due") == before + 1
    assert not locks_held(bao, prefix)


def test_due_within_pulls_only_what_is_due(bao: Bao, golden: Golden,
                                           vault_env: dict[str, str], tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["short", "calm"])
    short_before = kv_version(bao, prefix, "certificates/short")
    calm_before = kv_version(bao, prefix, "certificates/calm")
    root, args = fresh_dirs(tmp_path)
    metrics = tmp_path / "m.prom"
    env = golden_env(bao, golden, prefix)
    # Nothing within one hour: no lock, no pull, exit 0.
    proc = kvault("renew", *args, "--due-within", "0.04", env=env)
    assert "nothing expires within 0.04 days (2 lineages checked)" in proc.stdout
    assert not (root / "config" / "renewal").exists()

    proc = kvault("renew", *args, "--due-within", "10", "--metrics-file", str(metrics), "--",
                  "--force-renewal", env=env)
    assert "renewed: short" in proc.stdout, proc.stdout
    assert sorted(os.listdir(root / "config" / "renewal")) == ["short.conf"]
    assert kv_version(bao, prefix, "certificates/short") == short_before + 1
    assert kv_version(bao, prefix, "certificates/calm") == calm_before
    text = metrics.read_text()
    assert "certbot_kvault_renew_checked 2" in text
    assert 'certificate_days_to_expiry{lineage="calm"}' in text
    assert "certbot_kvault_renew_renewed 1" in text
    assert not locks_held(bao, prefix)


def test_due_within_skips_lineages_other_renewers_hold(bao: Bao, golden: Golden,
                                                       vault_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["short"])
    other = Locks(Layout(VaultClient(VaultSettings.from_env())), ttl=60, owner="pod-2")
    assert other.try_acquire("lineage-short") is None
    try:
        _, args = fresh_dirs(tmp_path)
        proc = kvault("renew", *args, "--due-within", "10", env=golden_env(bao, golden, prefix))
        assert "being renewed by other renewers" in proc.stdout
        assert "held by pod-2" in proc.stdout
        # A full run meanwhile leaves `short` to its holder, too.
        proc = kvault("renew", *args, env=golden_env(bao, golden, prefix))
        assert "skipping short: its lock is held by pod-2" in proc.stderr
        assert not (tmp_path / "run" / "config" / "renewal" / "short.conf").exists()
    finally:
        other.release_all()


def test_renew_on_kv1_says_locking_needs_kv2(bao: Bao, golden: Golden, kv1_mount: str,
                                             vault_env: dict[str, str], tmp_path: Path) -> None:
    _, args = fresh_dirs(tmp_path)
    proc = kvault("renew", *args, "--mount", kv1_mount,
                  env=golden_env(bao, golden, vault_env["KVAULT_PREFIX"]), check=False)
    assert proc.returncode == 1
    assert "Locking needs a KV v2 mount" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_renew_refuses_dir_flags_for_certbot(bao: Bao, golden: Golden,
                                             vault_env: dict[str, str], tmp_path: Path) -> None:
    _, args = fresh_dirs(tmp_path)
    proc = kvault("renew", *args, "--", "--config-dir", "/tmp/elsewhere",
                  env=golden_env(bao, golden, vault_env["KVAULT_PREFIX"]), check=False)
    assert proc.returncode == 1
    assert "Pass --config-dir to certbot-kvault (before --)" in proc.stderr


def test_certbot_failure_propagates(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                    tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    # certbot reads its arguments only when it runs, i.e. when something is due.
    seed(bao, golden, prefix, ["due"])
    _, args = fresh_dirs(tmp_path)
    proc = kvault("renew", *args, "--", "--no-such-certbot-flag",
                  env=golden_env(bao, golden, prefix), check=False)
    assert proc.returncode == 2  # argparse's usage error, from certbot
    assert not locks_held(bao, prefix)


def test_run_issues_and_pushes(bao: Bao, golden: Golden, vault_env: dict[str, str],
                               tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    env = golden_env(bao, golden, prefix)
    root, args = fresh_dirs(tmp_path)
    calm_before = kv_version(bao, prefix, "certificates/calm")
    proc = kvault("run", *args, "--", "certonly", "--standalone", "--http-01-port",
                  str(golden.pebble.http_port), "-d", "run.example.com", "--server",
                  golden.pebble.directory_url, "--non-interactive", env=env)
    entry = record(bao, prefix, "certificates/run.example.com")
    assert entry is not None and entry["domains"] == ["run.example.com"]
    # The existing account was pulled and reused: still one account, no -0001 lineage.
    accounts = bao.api("LIST", f"secret/metadata/{prefix}/accounts/127.0.0.1:"
                               f"{golden.pebble.port}/dir").json()["data"]["keys"]
    golden_accounts = bao.api("LIST", f"secret/metadata/{golden.prefix}/accounts/127.0.0.1:"
                                      f"{golden.pebble.port}/dir").json()["data"]["keys"]
    assert accounts == golden_accounts
    assert kv_version(bao, prefix, "certificates/calm") == calm_before

    # From another empty dir, `run -- certificates` sees both lineages from Vault.
    _, args2 = fresh_dirs(tmp_path, "list")
    proc = kvault("run", *args2, "--", "certificates", env=env)
    assert "Certificate Name: calm" in proc.stdout
    assert "Certificate Name: run.example.com" in proc.stdout


def test_run_exits_nonzero_when_vault_refuses_the_push(bao: Bao, golden: Golden,
                                                       vault_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    policy = f"""
path "secret/data/{prefix}/*" {{ capabilities = ["read"] }}
path "secret/metadata/{prefix}/*" {{ capabilities = ["list"] }}
"""
    name = f"ro-{prefix}"
    assert bao.api("PUT", f"sys/policies/acl/{name}", json={"policy": policy}).status_code == 204
    token = bao.api("POST", "auth/token/create",
                    json={"policies": [name], "ttl": "5m"}).json()["auth"]["client_token"]
    env = golden_env(bao, golden, prefix)
    env["VAULT_TOKEN"] = token
    root, args = fresh_dirs(tmp_path)
    proc = kvault("run", *args, "--", "certonly", "--standalone", "--http-01-port",
                  str(golden.pebble.http_port), "-d", "ro.example.com", "--server",
                  golden.pebble.directory_url, "--non-interactive", env=env, check=False)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Vault does not hold what certbot produced" in proc.stderr
    assert "permission denied" in proc.stderr
    # `run` says it per lineage and leaves the pending mark, as the deploy hook would.
    assert f"lineage ro.example.com: was NOT saved to Vault at secret/{prefix}/certificates/" \
           "ro.example.com (permission denied" in proc.stderr
    assert os.listdir(root / "config" / "kvault" / "pending") == ["ro.example.com"]
    assert record(bao, prefix, "certificates/ro.example.com") is None


@pytest.mark.parametrize("flag", ["--lock-wait", "--lock-ttl", "--due-within", "--metrics-file",
                                  "--push-retry-for"])
def test_renew_help_documents_options(flag: str) -> None:
    proc = subprocess.run([KVAULT, "renew", "--help"], capture_output=True, text=True,
                          check=True)
    assert flag in proc.stdout


def test_run_help_documents_push_retry() -> None:
    proc = subprocess.run([KVAULT, "run", "--help"], capture_output=True, text=True,
                          check=True)
    assert "--push-retry-for" in proc.stdout and "KVAULT_PUSH_RETRY_FOR" in proc.stdout


def test_lock_record_shape(bao: Bao, vault_env: dict[str, str]) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    lk = Locks(Layout(VaultClient(VaultSettings.from_env())), ttl=30)
    assert lk.try_acquire("renew") is None
    try:
        data = record(bao, prefix, "locks/renew")
        assert data is not None
        assert set(data) == {"owner", "expires_at", "acquired_at"}
        assert data["expires_at"] > format_time(time.time())
    finally:
        lk.release_all()


def test_sigterm_releases_the_lock(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                   tmp_path: Path) -> None:
    """`docker stop` / pod eviction: the renewer stops certbot and releases its lock."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    _, args = fresh_dirs(tmp_path)
    proc = subprocess.Popen([KVAULT, "renew", *args], env=golden_env(bao, golden, prefix),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while bao.api("GET", f"secret/data/{prefix}/locks/renew").status_code != 200:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert not locks_held(bao, prefix)
    assert "Traceback" not in err
