"""A Vault that went back in time: restored from a snapshot older than what this config
dir last synced (``kvault/synced.json``). Its KV versions are then below the manifest's,
and this dir may hold the only copy of what Vault lost.

`push` must not call it ``unchanged`` (it skips what its manifest says is synced), and
`pull` must not replace this dir's newer copy with Vault's older one: each says so in
one line, and a push writes the lost change back (check-and-set against what Vault
holds now). Real OpenBao: a real raft snapshot taken and restored on a one-node raft
server, and on the dev server a record deleted and written again from an older copy
(its KV versions start again at 1, as after a restore).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import configobj
import pytest
import requests
import servers
from helpers import (
    POLICIES,
    Golden,
    fresh_dirs,
    golden_env,
    kv_version,
    kvault,
    record,
    seed,
    token_with_policy,
)
from servers import Bao, RaftCluster


def _bump(config: Path, name: str, days: int) -> None:
    path = config / "renewal" / f"{name}.conf"
    conf = configobj.ConfigObj(str(path), encoding="utf-8", interpolation=False)
    conf["renew_before_expiry"] = f"{days} days"
    conf.write()


def _rewind(bao: Bao, prefix: str, name: str, data: dict[str, Any]) -> None:
    """What a restore does to one record: its later versions gone, an older one current."""
    r = bao.api("DELETE", f"secret/metadata/{prefix}/certificates/{name}")
    assert r.status_code == 204, r.text
    r = bao.api("POST", f"secret/data/{prefix}/certificates/{name}", json={"data": data})
    assert r.status_code == 200, r.text


def _lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [ln for ln in stderr.splitlines() if ln.strip()]


def _went_back(prefix: str, now: int, synced: int) -> str:
    return (f"Vault went back in time: secret/{prefix}/certificates/calm is at KV version "
            f"{now}, this config dir last synced version {synced} (restored from an older "
            "snapshot, or deleted and written again?)")


def _synced_then_rewound(bao: Bao, golden: Golden, prefix: str,
                         tmp_path: Path) -> tuple[Path, list[str], dict[str, str]]:
    """A dir that pulled, changed calm's conf and pushed it (KV version 2); then Vault
    put back at calm's version 1 as a restored snapshot would. (root, dir args, env)."""
    seed(bao, golden, prefix, ["calm", "due"])
    old = record(bao, prefix, "certificates/calm")
    assert old is not None
    root, args = fresh_dirs(tmp_path)
    env = golden_env(bao, golden, prefix)
    kvault("pull", *args, env=env)
    _bump(root / "config", "calm", 11)
    kvault("push", *args, env=env)
    assert kv_version(bao, prefix, "certificates/calm") == 2
    _rewind(bao, prefix, "calm", old)
    return root, args, env


def test_push_writes_back_what_vault_lost(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                          tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    root, args, env = _synced_then_rewound(bao, golden, prefix, tmp_path)
    # A renewer's token (policies/renewer.hcl) may read the version it compares.
    renewer = golden_env(bao, golden, prefix, token_with_policy(
        bao, f"renewer-{prefix}", (POLICIES / "renewer.hcl").read_text().replace(
            "/certbot/", f"/{prefix}/")))

    proc = kvault("push", "-v", *args, env=renewer)

    assert "pushed: lineage calm\n" in proc.stdout, proc.stdout
    assert _lines(proc.stderr) == [
        f"warning: {_went_back(prefix, 1, 2)}: this push compares every record with Vault and "
        "writes back what this dir holds newer"]
    stored = record(bao, prefix, "certificates/calm")
    assert stored is not None and "renew_before_expiry = 11 days" in stored["renewal"]
    assert kv_version(bao, prefix, "certificates/calm") == 2
    # Back in step: the next push has nothing to say, nor to write.
    again = kvault("push", "-v", *args, env=env)
    assert _lines(again.stderr) == [] and "pushed:" not in again.stdout, again.stdout


def test_pull_keeps_what_vault_lost(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                    tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    root, args, env = _synced_then_rewound(bao, golden, prefix, tmp_path)
    conf = root / "config" / "renewal" / "calm.conf"

    for _ in range(2):  # told once, it is still kept
        proc = kvault("pull", *args, env=env, check=False)
        assert proc.returncode == 1, proc.stdout
        assert _lines(proc.stderr) == [
            f"error: lineage calm: {_went_back(prefix, 1, 2)}: this dir's copy is kept; "
            "`certbot-kvault push calm` writes it back to Vault."]
        assert "renew_before_expiry = 11 days" in conf.read_text()

    # The way out it names.
    pushed = kvault("push", "-v", *args, "calm", env=env)
    assert "pushed: lineage calm\n" in pushed.stdout, pushed.stdout
    assert len(_lines(pushed.stderr)) == 1 and "went back in time" in pushed.stderr
    pulled = kvault("pull", *args, env=env)
    assert _lines(pulled.stderr) == [] and pulled.stdout.endswith(" 0 failed\n")
    stored = record(bao, prefix, "certificates/calm")
    assert stored is not None and "renew_before_expiry = 11 days" in stored["renewal"]


@pytest.fixture
def raft_one(tmp_path: Path) -> Iterator[RaftCluster]:
    """A one-node raft OpenBao of the test's own: its snapshot is restored."""
    cluster = servers.start_openbao_raft_cluster(tmp_path / "raft", nodes=1)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_restored_raft_snapshot(raft_one: RaftCluster, bao: Bao, golden: Golden,
                                tmp_path: Path) -> None:
    """The real thing: `push` after a snapshot restore on integrated storage."""
    node = raft_one.leader()
    prefix = "restored"
    seed(bao, golden, prefix, ["calm", "due"], target=node)
    root, args = fresh_dirs(tmp_path)
    env = golden_env(bao, golden, prefix, VAULT_ADDR=node.addr, VAULT_TOKEN=raft_one.root_token)
    kvault("pull", *args, env=env)
    snap = node.api("GET", "sys/storage/raft/snapshot")
    assert snap.status_code == 200, snap.text
    _bump(root / "config", "calm", 11)
    kvault("push", *args, env=env)
    assert kv_version(node, prefix, "certificates/calm") == 2

    r = requests.post(f"{node.addr}/v1/sys/storage/raft/snapshot", data=snap.content,
                      headers={"X-Vault-Token": raft_one.root_token}, timeout=30)
    assert r.status_code in (200, 204), r.text
    leader = raft_one.wait_for_leader()
    assert kv_version(leader, prefix, "certificates/calm") == 1

    proc = kvault("pull", *args, env=env, check=False)
    assert proc.returncode == 1
    assert _lines(proc.stderr) == [
        f"error: lineage calm: {_went_back(prefix, 1, 2)}: this dir's copy is kept; "
        "`certbot-kvault push calm` writes it back to Vault."]
    proc = kvault("push", "-v", *args, env=env)
    assert "pushed: lineage calm\n" in proc.stdout, proc.stdout
    assert len(_lines(proc.stderr)) == 1 and "went back in time" in proc.stderr
    assert kv_version(leader, prefix, "certificates/calm") == 2
