"""certbot-kvault against a 3-node OpenBao raft cluster (real servers, no mocks).

Standbys forward writes to the active node; renewers on different nodes share one
lock; a client on a surviving node carries on when the leader goes away.
"""
from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import configobj
import pytest
from helpers import (
    KVAULT,
    Golden,
    fresh_dirs,
    kv_version,
    kvault,
    locks_held,
    orders,
    scrubbed_env,
    seed,
    snapshot,
    walk,
)
from servers import Bao, RaftCluster

from certbot_kvault._internal.renew.locks import GLOBAL_LOCK, Locks, lineage_lock
from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.sync.pull import pull
from certbot_kvault._internal.tree.storage import Dirs, Tree
from certbot_kvault._internal.vault.client import VaultClient
from certbot_kvault._internal.vault.errors import VaultError
from certbot_kvault._internal.vault.settings import VaultSettings


def _prefix(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:30]
    return f"ha-{name}-{secrets.token_hex(3)}"


def _env(node: Bao, cluster: RaftCluster, prefix: str, golden: Optional[Golden] = None,
         **extra: str) -> dict[str, str]:
    env = scrubbed_env(VAULT_ADDR=node.addr, VAULT_TOKEN=cluster.root_token,
                       KVAULT_PREFIX=prefix, KVAULT_MOUNT="secret", **extra)
    if golden is not None:
        env["REQUESTS_CA_BUNDLE"] = golden.ca_bundle
    return env


# --------------------------------------------------------------------------- the tests


def test_cluster_shape(raft: RaftCluster) -> None:
    servers_ = raft.raft_servers()
    assert len(servers_) == 3 and all(s["voter"] for s in servers_), servers_
    codes = sorted(raft.health_codes().values())
    assert codes == [200, 429, 429], codes
    assert all(n.addr.startswith("http://127.0.0.1:") for n in raft.nodes)


def test_push_through_one_standby_pull_from_the_other(
        raft: RaftCluster, bao: Bao, golden: Golden, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    prefix = _prefix(request)
    src, dst = raft.standbys()[:2]
    # A real certbot tree: the golden lineages, pulled from the dev server.
    a, a_args = fresh_dirs(tmp_path, "a")
    kvault("pull", *a_args, env=scrubbed_env(VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.token,
                                             KVAULT_PREFIX=golden.prefix))
    names = sorted(p.stem for p in (a / "config" / "renewal").glob("*.conf"))
    assert names == ["calm", "due", "short"], names

    out = kvault("push", *a_args, env=_env(src, raft, prefix)).stdout
    assert "pushed" in out, out
    # The writes went through a standby; the records are on the leader.
    leader = raft.leader()
    assert sorted(walk(leader, f"{prefix}/certificates")) == names
    for name in names:
        assert kv_version(leader, prefix, f"certificates/{name}") == 1
    golden_accounts = sorted(walk(bao, f"{golden.prefix}/accounts"))
    assert sorted(walk(leader, f"{prefix}/accounts")) == golden_accounts

    b, b_args = fresh_dirs(tmp_path, "b")
    kvault("pull", *b_args, env=_env(dst, raft, prefix))
    # The sync manifest names the Vault each dir synced with: here two different nodes.
    before = {k: (kind, mode, text.replace(str(a), str(b)))
              for k, (kind, mode, text) in snapshot(a / "config").items()
              if k != "kvault/synced.json"}
    after = {k: v for k, v in snapshot(b / "config").items() if k != "kvault/synced.json"}
    assert sorted(after) == sorted(before)
    diff = [k for k in before if before[k] != after[k]]
    assert not diff, diff

    listed = kvault("list", env=_env(dst, raft, prefix)).stdout
    for name in names:
        assert name in listed, listed


def test_two_renewers_on_two_nodes_one_order(
        raft: RaftCluster, bao: Bao, golden: Golden, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    prefix = _prefix(request)
    leader = raft.leader()
    seed(bao, golden, prefix, ["due"], target=leader)
    before = kv_version(leader, prefix, "certificates/due")
    orders_before = orders(golden.pebble)
    first, second = raft.nodes[0], raft.nodes[1]  # one of them at least is a standby
    procs = []
    for i, node in enumerate((first, second)):
        _, args = fresh_dirs(tmp_path, f"r{i}")
        procs.append(subprocess.Popen(
            [KVAULT, "renew", *args, "--lock-wait", "60", "--", "--force-renewal"],
            env=_env(node, raft, prefix, golden), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL))
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, (out, err)
        assert "Traceback" not in err, err
    assert kv_version(raft.leader(), prefix, "certificates/due") == before + 1, outs
    assert orders(golden.pebble) == orders_before + 1, outs
    renewed = [o for o, _ in outs if "renewed: due" in o]
    assert len(renewed) == 1, outs
    # The other one waited and then left `due` alone, saying why.
    [(other_out, other_err)] = [(o, e) for o, e in outs if "renewed: due" not in o]
    assert "waiting up to 60s" in other_err, (other_out, other_err)
    assert "skipping due: renewed by another renewer while we waited" in other_err, \
        (other_out, other_err)
    assert not locks_held(raft.leader(), prefix)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_client_survives_leader_loss(raft_solo: RaftCluster, how: str,
                                     request: pytest.FixtureRequest) -> None:
    cluster = raft_solo
    prefix = _prefix(request)
    old = cluster.leader()
    survivor = cluster.standbys()[0]
    client = VaultClient(VaultSettings.from_env(
        {}, addr=survivor.addr, token=cluster.root_token, mount="secret", prefix=prefix))
    path = f"{prefix}/counter"
    assert client.write(path, {"i": 0}) == 1

    log: list[tuple[float, float, str, Any]] = []  # (start, end, kind, detail)
    done = threading.Event()

    def work() -> None:
        i = 0
        while not done.is_set():
            i += 1
            t = time.monotonic()
            try:
                version = client.write(path, {"i": i})
                entry = client.read(path)
                log.append((t, time.monotonic(), "ok", (i, version, entry)))
            except VaultError as e:
                log.append((t, time.monotonic(), "vault-error", e))
            except BaseException:  # noqa: BLE001 - anything else is the failure we look for
                log.append((t, time.monotonic(), "other", traceback.format_exc()))
            time.sleep(0.05)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        time.sleep(0.5)
        t_stop = time.monotonic()
        if how == "SIGTERM":
            old.stop()  # by PID: SIGTERM, SIGKILL after 5 s
        else:
            os.kill(old.pid, signal.SIGKILL)
            old.proc.wait(10)
        new = cluster.wait_for_leader(exclude=old, timeout=30)
        elected = time.monotonic() - t_stop
        # Keep working a while under the new leader.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if sum(1 for s, _, k, _ in log if k == "ok" and s > t_stop + elected) >= 10:
                break
            time.sleep(0.1)
    finally:
        done.set()
        worker.join(30)
    assert not worker.is_alive()

    after = [rec for rec in log if rec[1] > t_stop]
    others = [d for _, _, k, d in after if k == "other"]
    assert not others, others[0]
    errors = [d for _, _, k, d in after if k == "vault-error"]
    # Calls during the election wait for the new leader (KVAULT_HA_DEADLINE).
    assert not errors, sorted({str(e) for e in errors})
    oks = [(s, e, d) for s, e, k, d in after if k == "ok" and s > t_stop]
    assert len(oks) >= 10, log[-5:]
    recovered = min(e for _, e, _ in oks) - t_stop
    longest = max((e - s for s, e, _, _ in after), default=0.0)
    # A standby serves reads itself (OpenBao's default disable_standby_reads=false), but
    # the client sends back the newest X-Vault-Index it saw: every read shows its write.
    stale = [(i, entry.data["i"]) for _, _, (i, _, entry) in oks if entry.data["i"] != i]
    print(f"{how}: leader {old.addr} stopped; new leader {new.addr} after {elected:.2f}s; "
          f"client's first good write+read ended {recovered:.2f}s after the stop; "
          f"slowest call {longest:.2f}s; {len(stale)}/{len(oks)} reads one version behind; "
          f"{len(errors)} call(s) failed: {sorted({str(e) for e in errors})}")
    assert not stale, f"(written, read) pairs of stale reads: {stale}"
    # Every write after the election landed, in order, and reads return our records.
    last_i, last_version, _ = oks[-1][2]
    for _, _, (i, version, entry) in oks:
        assert version is not None and entry is not None
        assert entry.data["i"] == i and entry.version == version
    final = new.api("GET", f"secret/data/{path}")
    assert final.status_code == 200, final.text
    assert final.json()["data"]["data"] == {"i": last_i}
    assert final.json()["data"]["metadata"]["version"] == last_version


def test_pulls_and_lists_through_a_standby_survive_sigkill_of_the_leader(
        raft_solo: RaftCluster, bao: Bao, golden: Golden, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    cluster = raft_solo
    prefix = _prefix(request)
    old = cluster.leader()
    seed(bao, golden, prefix, ["calm", "short"], target=old)
    # One loop through each standby: whichever is not elected stays a standby that
    # redirects to the leader, the dead one first.
    standbys = cluster.standbys()
    log: list[tuple[str, float, float, str]] = []  # (node, start, end, failure or "")
    done = threading.Event()

    def work(node: Bao) -> None:
        root, _ = fresh_dirs(tmp_path, f"loop-{node.addr.rsplit(':', 1)[-1]}")
        tree = Tree(Dirs(str(root / "config"), str(root / "work"), str(root / "logs")))
        layout = Layout(VaultClient(VaultSettings.from_env(
            {}, addr=node.addr, token=cluster.root_token, mount="secret", prefix=prefix)))
        probe = layout.path("probe", node.addr.rsplit(":", 1)[-1])
        i = 0
        while not done.is_set():
            i += 1
            t = time.monotonic()
            try:
                # A write first, as a renewer's push: it goes to the leader, and its
                # newer index makes the pull's reads go there too (forward-active-node).
                layout.vault.write(probe, {"i": str(i)})
                report = pull(tree, layout, workers=2)
                names = layout.list_lineages()
                bad = "" if report.ok and names == ["calm", "short"] else f"{report} {names}"
            except BaseException:  # noqa: BLE001 - any failure is what we count
                bad = traceback.format_exc()
            log.append((node.addr, t, time.monotonic(), bad))
        layout.vault.close()

    workers = [threading.Thread(target=work, args=(n,), daemon=True) for n in standbys]
    for w in workers:
        w.start()
    try:
        time.sleep(1.0)
        t_kill = time.monotonic()
        os.kill(old.pid, signal.SIGKILL)
        old.proc.wait(10)
        new = cluster.wait_for_leader(exclude=old, timeout=30)
        elected = time.monotonic() - t_kill
        until = time.monotonic() + 30
        while time.monotonic() < until:
            if min(sum(1 for a, s, _, bad in log if a == n.addr and not bad
                       and s > t_kill + elected) for n in standbys) >= 5:
                break
            time.sleep(0.1)
    finally:
        done.set()
        for w in workers:
            w.join(60)
    assert not any(w.is_alive() for w in workers)
    failures = [bad for _, _, _, bad in log if bad]
    assert not failures, failures[0]
    [standby] = [n for n in standbys if n.addr != new.addr]
    through = [(s, e) for a, s, e, _ in log if a == standby.addr]
    spanning = [e - s for s, e in through if s <= t_kill <= e]
    assert sum(1 for s, _ in through if s > t_kill + elected) >= 5, log[-3:]
    print(f"SIGKILL of leader {old.addr}: new leader {new.addr} after {elected:.2f}s; "
          f"{len(log)} write+pull+list operations through both standbys, 0 failed; through "
          f"{standby.addr} (still a standby) {len(through)}, the one in flight at the kill "
          f"took {max(spanning, default=0.0):.2f}s")

    # A push through that standby, after the election.
    root, args = fresh_dirs(tmp_path, "push")
    env = _env(standby, cluster, prefix, golden)
    kvault("pull", *args, env=env)
    conf = configobj.ConfigObj(str(root / "config" / "renewal" / "calm.conf"),
                               encoding="utf-8")
    conf["renew_before_expiry"] = "12 days"
    conf.write()
    before = kv_version(new, prefix, "certificates/calm")
    out = kvault("push", "-v", *args, "calm", env=env).stdout
    assert "pushed: lineage calm" in out, out
    assert kv_version(new, prefix, "certificates/calm") == before + 1


def test_no_leader_past_the_deadline_is_one_line(
        raft_solo: RaftCluster, bao: Bao, golden: Golden, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    cluster = raft_solo
    prefix = _prefix(request)
    old = cluster.leader()
    seed(bao, golden, prefix, ["calm"], target=old)
    last, other = cluster.standbys()[:2]
    env = _env(last, cluster, prefix, golden, KVAULT_HA_DEADLINE="3")
    root, args = fresh_dirs(tmp_path, "q")
    kvault("pull", *args, env=env)
    conf = configobj.ConfigObj(str(root / "config" / "renewal" / "calm.conf"),
                               encoding="utf-8")
    conf["renew_before_expiry"] = "13 days"
    conf.write()
    # Two of three nodes gone: no quorum, no leader can be elected.
    for node in (old, other):
        os.kill(node.pid, signal.SIGKILL)
        node.proc.wait(10)
    proc = kvault("push", *args, "calm", env=env, check=False)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    [line] = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "3s (KVAULT_HA_DEADLINE)" in line, line
    print(f"no quorum: {line}")


def _standby_locks(node: Bao, cluster: RaftCluster, prefix: str, owner: str) -> Locks:
    """A renewer's locks through ``node`` (its own client, session and index)."""
    settings = VaultSettings.from_env({}, addr=node.addr, token=cluster.root_token,
                                      prefix=prefix, mount="secret")
    return Locks(Layout(VaultClient(settings)), ttl=60, owner=owner)


def _race(a: Locks, b: Locks, race: str, lineage: str) -> dict[str, Any]:
    """At once: ``a`` as a full run (``race``, then ``renew``, then is ``lineage``
    busy?), ``b`` as a lineage renewer (``race``, then ``lineage``, then is ``renew``
    held?). What each call answered, by name."""
    gate = threading.Barrier(2)
    got: dict[str, Any] = {}

    def full_run() -> None:
        gate.wait()
        got["a_race"] = a.try_acquire(race)
        got["a_global"] = a.try_acquire(GLOBAL_LOCK)
        got["a_sees_lineage"] = a.held_by_other(lineage)

    def lineage_run() -> None:
        gate.wait()
        got["b_race"] = b.try_acquire(race)
        got["b_lineage"] = b.try_acquire(lineage)
        got["b_sees_global"] = b.held_by_other(GLOBAL_LOCK)

    threads = [threading.Thread(target=full_run), threading.Thread(target=lineage_run)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return got


def test_locks_through_two_standbys_see_each_other(
        raft: RaftCluster, request: pytest.FixtureRequest) -> None:
    """Two renewers, one through each standby: of two racing for one lock exactly one
    wins and the loser names it (not the stale holder its standby still shows); a full
    run's `renew` lock and a lineage lock taken at once through the two standbys are
    never both missed, and each renewer reads the other's lock at once. A standby
    answers reads from its own copy, about one write behind right after a write (it
    learns the commit with the next raft message): the lock reads go to the leader."""
    prefix = _prefix(request)
    s1, s2 = raft.standbys()[:2]
    a = _standby_locks(s1, raft, prefix, "renewer-a")
    b = _standby_locks(s2, raft, prefix, "renewer-b")
    leader = raft.leader()
    rounds, stale_holder, unseen = 8, [], []
    for i in range(rounds):
        # One lock both want, held until a moment ago by a renewer that died.
        race = f"race-{i}"
        ghost = leader.api("POST", f"secret/data/{prefix}/locks/{race}", json={"data": {
            "owner": "ghost:1:dead", "expires_at": "2000-01-01T00:00:00Z",
            "acquired_at": "2000-01-01T00:00:00Z"}})
        assert ghost.status_code == 200, ghost.text
        lineage = lineage_lock(f"site-{i}")
        got = _race(a, b, race, lineage)
        # Exactly one took `race`; the loser names the winner, not the dead holder.
        winners = [k for k in ("a_race", "b_race") if got[k] is None]
        assert len(winners) == 1, got
        loser = got["b_race" if winners == ["a_race"] else "a_race"]
        if loser.owner != ("renewer-a" if winners == ["a_race"] else "renewer-b"):
            stale_holder.append((i, loser.owner))
        # Both locks taken (nobody else wants them); a full run that missed the lineage
        # lock and a lineage renewer that missed the full run would both renew it.
        assert got["a_global"] is None and got["b_lineage"] is None, got
        assert got["a_sees_lineage"] is not None or got["b_sees_global"] is not None, got
        # Each reads the other's lock, through its own standby, right away.
        seen_by_a, seen_by_b = a.read(lineage), b.read(GLOBAL_LOCK)
        if seen_by_a is None or seen_by_a.owner != "renewer-b" \
                or seen_by_b is None or seen_by_b.owner != "renewer-a":
            unseen.append((i, seen_by_a and seen_by_a.owner, seen_by_b and seen_by_b.owner))
        assert a.release(GLOBAL_LOCK) and b.release(lineage)
        (a if winners == ["a_race"] else b).release(race)
    a.release_all()
    b.release_all()
    assert not stale_holder, f"the loser named a former holder: {stale_holder}"
    assert not unseen, f"(round, lineage lock as A read it, renew lock as B read it): {unseen}"
    assert not locks_held(leader, prefix)
