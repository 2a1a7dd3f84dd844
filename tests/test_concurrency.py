"""Concurrent writers of the same records (real OpenBao dev server, no mocks).

A check-and-set write that loses to a writer who saved exactly the same content
is not a failure: both meant the same thing. Anything else keeps the rules a lost
race always had (never overwrite a newer version, a fenced lineage is refused).
"""
from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

import configobj
import pytest
from helpers import KVAULT, Golden, fresh_dirs, golden_env, kv_version, kvault, record, seed
from servers import Bao

from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.store.records import AccountRecord, LineageRecord
from certbot_kvault._internal.sync.push import push
from certbot_kvault._internal.tree.storage import Dirs, Tree
from certbot_kvault._internal.vault.client import VaultClient
from certbot_kvault._internal.vault.errors import VaultConflict
from certbot_kvault._internal.vault.settings import VaultSettings

FLEET = 30          # lineages pushed by every racer
RACERS = 10         # concurrent `certbot-kvault push` processes
ROUNDS = 20
CHANGED = FLEET     # lineages whose renewal conf changes each round


def _prefix(what: str) -> str:
    return f"race-{what}-{secrets.token_hex(3)}"


def _fleet(bao: Bao, golden: Golden, prefix: str, n: int) -> list[str]:
    """The golden `calm` lineage copied under n names (plus the accounts)."""
    seed(bao, golden, prefix, [])
    r = bao.api("GET", f"secret/data/{golden.prefix}/certificates/calm")
    assert r.status_code == 200, r.text
    data = r.json()["data"]["data"]
    names = [f"c{i:03d}" for i in range(n)]
    for name in names:
        w = bao.api("POST", f"secret/data/{prefix}/certificates/{name}", json={"data": data})
        assert w.status_code == 200, w.text
    return names


def _bump(config: Path, name: str, days: int) -> None:
    path = config / "renewal" / f"{name}.conf"
    conf = configobj.ConfigObj(str(path), encoding="utf-8")
    conf["renew_before_expiry"] = f"{days} days"
    conf.write()


def _race(args: list[list[str]], env: dict[str, str]) -> list[tuple[int, str, str]]:
    procs = [subprocess.Popen([KVAULT, *a], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
             for a in args]
    outs = [p.communicate(timeout=300) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def test_ten_pushers_of_one_fleet_all_succeed(bao: Bao, golden: Golden,
                                              tmp_path: Path) -> None:
    prefix = _prefix("fleet")
    names = _fleet(bao, golden, prefix, FLEET)
    env = golden_env(bao, golden, prefix)
    dirs = [fresh_dirs(tmp_path, f"r{i}") for i in range(RACERS)]
    pulls = _race([["pull", *a] for _, a in dirs], env)
    assert all(rc == 0 for rc, _, _ in pulls), pulls
    versions = {n: kv_version(bao, prefix, f"certificates/{n}") for n in names}
    assert set(versions.values()) == {1}, versions

    started = time.monotonic()
    outcomes: list[int] = []
    for rnd in range(ROUNDS):
        changed = [names[(rnd * CHANGED + k) % FLEET] for k in range(CHANGED)]
        for root, _ in dirs:
            for name in changed:
                _bump(root / "config", name, 10 + rnd)
        results = _race([["push", "-v", *a] for _, a in dirs], env)
        failed = [(rc, out, err) for rc, out, err in results if rc != 0]
        assert not failed, (rnd, failed[0])
        # Exactly one new version per changed lineage, none for the others.
        for name in names:
            want = versions[name] + (1 if name in changed else 0)
            got = kv_version(bao, prefix, f"certificates/{name}")
            assert got == want, (rnd, name, got, want, results)
            versions[name] = got
        # Racers whose records were identical to the second (updated_at) see
        # their write as landed; the others report the lineage unchanged.
        outcomes.append(sum(out.count(f"pushed: lineage {changed[0]}")
                            for _, out, _ in results))
    elapsed = time.monotonic() - started
    stored = record(bao, prefix, f"certificates/{names[0]}")
    assert stored is not None and "renew_before_expiry" in stored["renewal"]
    print(f"{RACERS} pushers x {ROUNDS} rounds, {FLEET} lineages ({CHANGED} changed per "
          f"round): all exited 0, one KV version per changed lineage per round; "
          f"{elapsed:.1f}s; racers reporting the first changed lineage pushed, per "
          f"round: {outcomes}")


def test_two_pushers_of_one_account_both_succeed(bao: Bao, golden: Golden,
                                                 tmp_path: Path) -> None:
    src = _prefix("acct-src")
    seed(bao, golden, src, [])
    root, args = fresh_dirs(tmp_path, "src")
    kvault("pull", *args, env=golden_env(bao, golden, src))
    accounts = list((root / "config" / "accounts").rglob("regr.json"))
    assert accounts, "the golden prefix holds accounts"
    # Several rounds on fresh prefixes: both processes create the account (cas=0).
    for rnd in range(3):
        prefix = _prefix(f"acct{rnd}")
        copies = []
        for i in range(2):
            dst = tmp_path / f"a{rnd}-{i}"
            shutil.copytree(root, dst, symlinks=True)
            copies.append(["push", "--config-dir", str(dst / "config"), "--work-dir",
                           str(dst / "work"), "--logs-dir", str(dst / "logs")])
        results = _race(copies, golden_env(bao, golden, prefix))
        assert [rc for rc, _, _ in results] == [0, 0], results


# ---- the lost race itself, made certain: a real second writer between read and write ---


class _Racer(Layout):
    """A Layout whose first save is preceded by another writer's save of ``theirs``
    (a real Vault write), so our check-and-set loses for certain."""

    def __init__(self, vault: VaultClient, theirs: Any) -> None:
        super().__init__(vault)
        self.theirs: Optional[Any] = theirs

    def save_lineage(self, record: LineageRecord, cas: Optional[int] = None) -> Optional[int]:
        if self.theirs is not None:
            theirs, self.theirs = self.theirs, None
            Layout.save_lineage(self, theirs(record), cas=cas)
        return super().save_lineage(record, cas=cas)

    def save_account(self, record: AccountRecord, cas: Optional[int] = None) -> None:
        if self.theirs is not None:
            theirs, self.theirs = self.theirs, None
            Layout.save_account(self, theirs(record), cas=cas)
        super().save_account(record, cas=cas)


def _setup(bao: Bao, golden: Golden, tmp_path: Path) -> tuple[str, Tree, VaultClient]:
    prefix = _prefix("one")
    seed(bao, golden, prefix, ["calm"])
    root, args = fresh_dirs(tmp_path, "one")
    kvault("pull", *args, env=golden_env(bao, golden, prefix))
    _bump(root / "config", "calm", 11)
    tree = Tree(Dirs(str(root / "config"), str(root / "work"), str(root / "logs")))
    client = VaultClient(VaultSettings.from_env({}, addr=bao.addr, token=bao.token,
                                                mount="secret", prefix=prefix))
    return prefix, tree, client


def _same(record: LineageRecord) -> LineageRecord:
    # Another writer's save of the same lineage differs only in its timestamp.
    return dataclasses.replace(record, updated_at="2000-01-01T00:00:00Z")


def _other(record: LineageRecord) -> LineageRecord:
    return dataclasses.replace(record, renewal=record.renewal + "\n# theirs\n")


@pytest.mark.parametrize("fenced", [False, True])
def test_lost_race_to_the_same_lineage_is_unchanged(bao: Bao, golden: Golden, tmp_path: Path,
                                                    fenced: bool) -> None:
    prefix, tree, client = _setup(bao, golden, tmp_path)
    report = push(tree, _Racer(client, _same), ["calm"], accounts=False,
                       expected={"calm": 1} if fenced else None)
    assert report.ok and report.unchanged == ["lineage calm"], report
    assert kv_version(bao, prefix, "certificates/calm") == 2
    client.close()


@pytest.mark.parametrize("fenced", [False, True])
def test_lost_race_to_other_content_names_both_versions(bao: Bao, golden: Golden,
                                                        tmp_path: Path, fenced: bool) -> None:
    prefix, tree, client = _setup(bao, golden, tmp_path)
    report = push(tree, _Racer(client, _other), ["calm"], accounts=False,
                       expected={"calm": 1} if fenced else None)
    [(item, error)] = report.failed
    assert item == "lineage calm", report
    where = f"secret/{prefix}/certificates/calm"
    if fenced:
        assert report.fenced == ["calm"]
        assert error == (f"{where} changed in Vault after this run pulled its KV version 1 "
                         "(now version 2): not overwriting it."), error
    else:
        assert error == (f"{where} changed in Vault while we were writing it: we wrote on top "
                         "of KV version 1, Vault now holds KV version 2 with other content; "
                         "run the command again."), error
    stored = record(bao, prefix, "certificates/calm")
    assert stored is not None and stored["renewal"].endswith("# theirs\n")
    assert kv_version(bao, prefix, "certificates/calm") == 2
    client.close()


def test_lost_race_to_another_account_names_both_versions(bao: Bao, golden: Golden,
                                                          tmp_path: Path) -> None:
    src = _prefix("acct")
    seed(bao, golden, src, [])
    root, args = fresh_dirs(tmp_path, "acct")
    kvault("pull", *args, env=golden_env(bao, golden, src))
    tree = Tree(Dirs(str(root / "config"), str(root / "work"), str(root / "logs")))
    prefix = _prefix("acct-new")
    client = VaultClient(VaultSettings.from_env({}, addr=bao.addr, token=bao.token,
                                                mount="secret", prefix=prefix))

    def theirs(record: AccountRecord) -> AccountRecord:
        return dataclasses.replace(record, meta=json.dumps({"theirs": True}))

    report = push(tree, _Racer(client, theirs), [])
    [(item, error)] = report.failed
    account_id = item.split()[-1]
    assert item.startswith("account "), report
    assert error.startswith(f"secret/{prefix}/accounts/"), error
    assert error.endswith(f"/{account_id} changed in Vault while we were writing it: we "
                          "wrote on top of KV version none (new), Vault now holds KV "
                          "version 1 with other content; run the command again."), error
    client.close()


def test_dns_entry_created_once(bao: Bao) -> None:
    """`dns add` saves with cas=0: a second creator of other content cannot replace the
    first one's entry; one of the same content is fine."""
    prefix = _prefix("dns")
    layout = Layout(VaultClient(VaultSettings.from_env(
        {}, addr=bao.addr, token=bao.token, mount="secret", prefix=prefix)))
    entry = {"provider": "powerdns", "auth_token": "first"}
    layout.save_dns("zone", entry, cas=0)
    layout.save_dns("zone", dict(entry), cas=0)
    with pytest.raises(VaultConflict):
        layout.save_dns("zone", {**entry, "auth_token": "second"}, cas=0)
    assert layout.load_dns("zone") == entry
    assert kv_version(bao, prefix, "dns/zone") == 1
    layout.vault.close()
