"""A push that knows what the last sync left (``<config-dir>/kvault/synced.json``).

Real OpenBao dev server; the requests are counted by a TCP proxy in front of it
(stubs.TcpFaultProxy), so whatever path the code takes, a read of a certificate
record shows. A lineage unchanged since the last pull or push is not read; a
changed one is written with check-and-set against the KV version last synced;
a missing or corrupt manifest means reading back, as before there was one.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import configobj
from helpers import Golden, fresh_dirs, golden_env, kv_version, kvault, record, seed
from servers import Bao
from stubs import TcpFaultProxy

NAMES = ["due", "calm", "short"]


def _reads(proxy: TcpFaultProxy, prefix: str, mount: str = "secret/data") -> list[str]:
    """The lineages whose record was read through the proxy (a request that urllib3
    sent again on a fresh connection counts once)."""
    path = f"GET /v1/{mount}/{prefix}/certificates/"
    return sorted({r[len(path):] for r in proxy.seen if r.startswith(path)})


def _tally(stdout: str) -> tuple[int, int, int]:
    """(pushed, unchanged, failed) from push's last line (accounts count too)."""
    pushed, unchanged, failed = (int(w) for w in stdout.splitlines()[-1].split()[::2])
    return pushed, unchanged, failed


def _bump(config: Path, name: str, days: int) -> None:
    path = config / "renewal" / f"{name}.conf"
    conf = configobj.ConfigObj(str(path), encoding="utf-8")
    conf["renew_before_expiry"] = f"{days} days"
    conf.write()


def test_second_push_reads_no_certificate_record(bao: Bao, golden: Golden,
                                                 vault_env: dict[str, str],
                                                 tmp_path: Path) -> None:
    source = f"{vault_env['KVAULT_PREFIX']}-src"
    seed(bao, golden, source, NAMES)
    root, args = fresh_dirs(tmp_path)
    kvault("pull", *args, env=golden_env(bao, golden, source))
    prefix = vault_env["KVAULT_PREFIX"]
    proxy = TcpFaultProxy(bao.port)
    env = golden_env(bao, golden, prefix, VAULT_ADDR=f"http://127.0.0.1:{proxy.port}")
    try:
        first = kvault("push", "-v", *args, env=env)
        assert all(f"pushed: lineage {n}\n" in first.stdout for n in NAMES), first.stdout
        accounts = first.stdout.count("pushed: account ")
        assert accounts and _tally(first.stdout) == (3 + accounts, 0, 0)
        assert _reads(proxy, prefix) == sorted(NAMES), proxy.seen
        proxy.seen.clear()

        second = kvault("push", "-v", *args, env=env)
        assert _tally(second.stdout) == (0, 3 + accounts, 0), second.stdout
        assert _reads(proxy, prefix) == [], proxy.seen
        assert not [r for r in proxy.seen if r.startswith(("POST", "PUT"))
                    and "/certificates/" in r], proxy.seen

        # A record gone from Vault (purged, or a Vault rebuilt empty) is pushed again.
        bao.api("DELETE", f"secret/metadata/{prefix}/certificates/calm")
        proxy.seen.clear()
        third = kvault("push", "-v", *args, env=env)
        assert "pushed: lineage calm\n" in third.stdout, third.stdout
        assert _tally(third.stdout) == (1, 2 + accounts, 0), third.stdout
        assert _reads(proxy, prefix) == ["calm"]
    finally:
        proxy.stop()
    manifest = root / "config" / "kvault" / "synced.json"
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o600
    text = manifest.read_text()
    assert "PRIVATE KEY" not in text and "BEGIN" not in text and bao.token not in text
    assert prefix not in text  # which Vault and prefix it is about: a hash


def test_pull_then_push_reads_nothing(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                      tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, NAMES)
    _, args = fresh_dirs(tmp_path)
    proxy = TcpFaultProxy(bao.port)
    env = golden_env(bao, golden, prefix, VAULT_ADDR=f"http://127.0.0.1:{proxy.port}")
    try:
        kvault("pull", *args, env=env)
        proxy.seen.clear()
        pushed = kvault("push", "-v", *args, env=env)
        assert _tally(pushed.stdout)[::2] == (0, 0), pushed.stdout
        assert "lineage" not in pushed.stdout
        assert _reads(proxy, prefix) == [], proxy.seen
        # Nor an account record: they are as pulled too.
        assert not [r for r in proxy.seen if r.startswith(f"GET /v1/secret/data/{prefix}/")]
    finally:
        proxy.stop()


def test_change_in_vault_after_the_pull_loses_the_race(bao: Bao, golden: Golden,
                                                       vault_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    """Someone changes a lineage in Vault after our pull; our push of a local change is
    refused by check-and-set against the pulled version, and says so as a lost race."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    root, args = fresh_dirs(tmp_path)
    env = golden_env(bao, golden, prefix)
    kvault("pull", *args, env=env)
    theirs = record(bao, prefix, "certificates/calm")
    assert theirs is not None
    theirs["renewal"] += "\n# theirs\n"
    r = bao.api("POST", f"secret/data/{prefix}/certificates/calm", json={"data": theirs})
    assert r.status_code == 200, r.text
    _bump(root / "config", "calm", 11)

    proc = kvault("push", "-v", *args, env=env, check=False)
    assert proc.returncode == 1, proc.stdout
    assert (f"error: lineage calm: secret/{prefix}/certificates/calm changed in Vault while "
            "we were writing it: we wrote on top of KV version 1, Vault now holds KV "
            "version 2 with other content; run the command again.") in proc.stderr
    stored = record(bao, prefix, "certificates/calm")
    assert stored is not None and stored["renewal"].endswith("# theirs\n")
    assert kv_version(bao, prefix, "certificates/calm") == 2

    # Told, the operator runs it again: compared with what Vault holds now, as always.
    again = kvault("push", "-v", *args, env=env)
    assert "pushed: lineage calm\n" in again.stdout, again.stdout
    assert kv_version(bao, prefix, "certificates/calm") == 3


def test_corrupt_or_missing_manifest_reads_back(bao: Bao, golden: Golden,
                                                vault_env: dict[str, str],
                                                tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, NAMES)
    root, args = fresh_dirs(tmp_path)
    kvault("pull", *args, env=golden_env(bao, golden, prefix))
    manifest = root / "config" / "kvault" / "synced.json"
    doc = json.loads(manifest.read_text())
    assert sorted(doc["lineages"]) == sorted(NAMES)

    # A change that keeps the file's size and modification time is still a change.
    conf = root / "config" / "renewal" / "calm.conf"
    before = conf.stat()
    text = conf.read_text()
    assert "key_type = rsa" in text or "key_type = ecdsa" in text
    conf.write_text(text.replace("key_type = rsa", "key_type = RSA")
                    .replace("key_type = ecdsa", "key_type = ECDSA"))
    os.utime(conf, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert conf.stat().st_size == before.st_size

    proxy = TcpFaultProxy(bao.port)
    env = golden_env(bao, golden, prefix, VAULT_ADDR=f"http://127.0.0.1:{proxy.port}")
    try:
        manifest.write_text("{not json")
        pushed = kvault("push", "-v", *args, env=env)
        assert _tally(pushed.stdout)[::2] == (1, 0), pushed.stdout
        assert "pushed: lineage calm\n" in pushed.stdout
        assert _reads(proxy, prefix) == sorted(NAMES)  # read back, as without a manifest

        # Well-formed but wrong: other fingerprints and versions are read back too.
        doc = json.loads(manifest.read_text())
        doc["lineages"] = {n: [1, "0" * 64] for n in doc["lineages"]}
        doc["lineages"]["due"] = "nonsense"
        manifest.write_text(json.dumps(doc))
        proxy.seen.clear()
        again = kvault("push", "-v", *args, env=env)
        assert _tally(again.stdout)[::2] == (0, 0), again.stdout
        assert _reads(proxy, prefix) == sorted(NAMES)

        manifest.unlink()
        proxy.seen.clear()
        kvault("push", "-v", *args, env=env)
        assert _reads(proxy, prefix) == sorted(NAMES)
        # Each of those pushes left a good manifest behind: now nothing is read.
        proxy.seen.clear()
        kvault("push", "-v", *args, env=env)
        assert _reads(proxy, prefix) == []
    finally:
        proxy.stop()
    stored = record(bao, prefix, "certificates/calm")
    assert stored is not None and ("key_type = RSA" in stored["renewal"]
                                   or "key_type = ECDSA" in stored["renewal"])


def test_kv_v1_skips_unchanged_too(bao: Bao, golden: Golden, kv1_mount: str,
                                   vault_env: dict[str, str], tmp_path: Path) -> None:
    """KV v1 has no versions nor check-and-set: an unchanged lineage is skipped the
    same way (a skip writes nothing), a changed one is read back and written."""
    source = f"{vault_env['KVAULT_PREFIX']}-src"
    seed(bao, golden, source, NAMES)
    root, args = fresh_dirs(tmp_path)
    kvault("pull", *args, env=golden_env(bao, golden, source))
    prefix = vault_env["KVAULT_PREFIX"]
    proxy = TcpFaultProxy(bao.port)
    env = golden_env(bao, golden, prefix, VAULT_ADDR=f"http://127.0.0.1:{proxy.port}",
                     KVAULT_MOUNT=kv1_mount)
    try:
        kvault("push", "-v", *args, env=env)
        _bump(root / "config", "calm", 12)
        proxy.seen.clear()
        pushed = kvault("push", "-v", *args, env=env)
        assert "pushed: lineage calm\n" in pushed.stdout and _tally(pushed.stdout)[0] == 1
        assert _reads(proxy, prefix, kv1_mount) == ["calm"]
        proxy.seen.clear()
        again = kvault("push", "-v", *args, env=env)
        assert _tally(again.stdout)[::2] == (0, 0), again.stdout
        assert _reads(proxy, prefix, kv1_mount) == []
    finally:
        proxy.stop()
    doc = json.loads((root / "config" / "kvault" / "synced.json").read_text())
    assert {v[0] for v in doc["lineages"].values()} == {None}  # no versions on KV v1


def _stats(root: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime in ns) of every file and link below root."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_ino,
                                                                       st.st_mtime_ns)
    return out


def test_second_pull_reports_unchanged_and_writes_nothing(bao: Bao, golden: Golden,
                                                          vault_env: dict[str, str],
                                                          tmp_path: Path) -> None:
    """The README's `12 pulled, 988 unchanged`: what a pull did not need to write counts
    as unchanged, like push's, and it is not written (same inode, same mtime)."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, NAMES)
    env = golden_env(bao, golden, prefix)
    root, args = fresh_dirs(tmp_path)
    first = kvault("pull", *args, env=env)
    pulled, unchanged, failed = _tally(first.stdout)
    assert (unchanged, failed) == (0, 0) and pulled > len(NAMES), first.stdout
    before = _stats(root / "config")
    assert any(p.startswith("archive/") for p in before)
    again = kvault("pull", "-v", *args, env=env)
    assert again.stdout.splitlines() == [f"0 pulled, {pulled} unchanged, 0 failed"], again.stdout
    assert _stats(root / "config") == before
    # One lineage changed in Vault: that one is pulled, the rest are not touched.
    _bump(root / "config", "calm", 30)
    kvault("push", *args, env=env)
    _bump(root / "config", "calm", 20)  # Vault's says 30 days: the pull writes it back
    third = kvault("pull", "-v", *args, env=env)
    assert third.stdout.splitlines() == ["pulled: lineage calm",
                                         f"1 pulled, {pulled - 1} unchanged, 0 failed"]
    after = _stats(root / "config")
    # (the manifest: the push and this pull saw a new KV version of calm)
    assert {p for p in after if after[p] != before.get(p)} == {"renewal/calm.conf",
                                                               "kvault/synced.json"}


def test_push_force_repairs_a_record_corrupted_in_vault(bao: Bao, golden: Golden,
                                                        vault_env: dict[str, str],
                                                        tmp_path: Path) -> None:
    """A record damaged in Vault, good files here: `push` trusts the manifest and says
    unchanged; `push --force NAME` compares and rewrites it, with check-and-set against
    the version it read."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm", "due"])
    env = golden_env(bao, golden, prefix)
    _, args = fresh_dirs(tmp_path)
    kvault("pull", *args, env=env)
    good = record(bao, prefix, "certificates/calm")
    assert good is not None
    damaged = {**good, "cert": good["cert"].replace("MII", "XXX", 1)}
    assert bao.api("POST", f"secret/data/{prefix}/certificates/calm",
                   json={"data": damaged}).status_code == 200
    broken = kv_version(bao, prefix, "certificates/calm")
    assert kvault("show", "calm", env=env, check=False).returncode == 1

    plain = json.loads(kvault("push", "--json", *args, "calm", env=env).stdout)
    assert "lineage calm" in plain["unchanged"] and plain["written"] == []
    assert kv_version(bao, prefix, "certificates/calm") == broken

    due = kv_version(bao, prefix, "certificates/due")
    forced = json.loads(kvault("push", "--json", "--force", *args, "calm", env=env).stdout)
    assert forced["written"] == ["lineage calm"] and forced["failed"] == [], forced
    assert kv_version(bao, prefix, "certificates/calm") == broken + 1
    repaired = record(bao, prefix, "certificates/calm")
    assert repaired is not None and repaired["cert"] == good["cert"]
    assert kvault("show", "calm", env=env).returncode == 0
    assert kv_version(bao, prefix, "certificates/due") == due  # not named: not touched
    # Again: Vault holds this machine's lineage now, nothing to write.
    again = json.loads(kvault("push", "--json", "--force", *args, "calm", env=env).stdout)
    assert again["written"] == [] and "lineage calm" in again["unchanged"]
