"""A `pull` killed at any point leaves every lineage whose renewal conf exists whole (live
cert, chain, fullchain and key of one version), and the next `pull` completes and gives the
tree a clean pull gives; real OpenBao, the real console script, SIGKILL."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from helpers import KVAULT, dir_args, golden_env, kvault, record, seed, snapshot
from servers import Bao, run_certbot

from certbot_kvault._internal.store.records import PEM_KINDS, LineageRecord, PemSet
from certbot_kvault._internal.tree import files
from certbot_kvault._internal.tree.storage import Dirs, Tree, TreeError

GOLDEN = ("due", "calm", "short")  # three different key pairs to cycle through
FLEET = 60          # lineages the tree already has at version 2 (Vault: version 3)
NEW = 6             # lineages only in Vault (a kill may leave them half-written)
ROUNDS = 10
_LINK_RE = re.compile(r"^\.\./\.\./archive/([^/]+)/(cert|chain|fullchain|privkey)(\d+)\.pem$")


def _pems(golden_records: dict[str, dict[str, Any]], lineage: int, version: int) -> dict[str, str]:
    """Version ``version`` of lineage ``lineage``: a golden key pair, another per version."""
    src = golden_records[GOLDEN[(lineage + version) % len(GOLDEN)]]
    return {k: src[k] for k in PEM_KINDS}


def _lineage_data(golden_records: dict[str, dict[str, Any]], lineage: int,
                  version: int) -> dict[str, Any]:
    archive = {str(v): _pems(golden_records, lineage, v) for v in range(1, version)}
    return {**_pems(golden_records, lineage, version), "version": str(version),
            "renewal": golden_records["calm"]["renewal"], "archive": json.dumps(archive)}


def _golden_records(bao: Bao, golden: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for name in GOLDEN:
        rec = record(bao, golden.prefix, f"certificates/{name}")
        assert rec is not None
        out[name] = rec
    return out


def _write(bao: Bao, prefix: str, name: str, data: dict[str, Any]) -> None:
    r = bao.api("POST", f"secret/data/{prefix}/certificates/{name}", json={"data": data})
    assert r.status_code == 200, r.text


def _public(pem: bytes, key: bool) -> bytes:
    pub = load_pem_private_key(pem, None).public_key() if key \
        else x509.load_pem_x509_certificate(pem).public_key()
    return pub.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _whole(config: Path) -> dict[str, int]:
    """name -> live version of every lineage whose renewal conf exists; fails on any lineage
    whose live links point at different versions or whose cert and key do not match."""
    versions = {}
    for conf in sorted((config / "renewal").glob("*.conf")):
        name = conf.name[: -len(".conf")]
        live = config / "live" / name
        seen = set()
        for kind in PEM_KINDS:
            m = _LINK_RE.match(os.readlink(live / f"{kind}.pem"))
            assert m and m.group(1) == name and m.group(2) == kind, (name, kind)
            seen.add(int(m.group(3)))
        assert len(seen) == 1, f"{name}: live links point at versions {sorted(seen)}"
        cert = (live / "cert.pem").read_bytes()
        assert _public(cert, key=False) == _public((live / "privkey.pem").read_bytes(), key=True), \
            f"{name}: live cert and live key do not belong together"
        assert (live / "fullchain.pem").read_bytes().startswith(cert), name
        versions[name] = seen.pop()
    return versions


def _names(n: int, first: int = 0) -> list[str]:
    return [f"f{i:02d}.example.com" for i in range(first, first + n)]


def test_pull_killed_at_random_points(bao: Bao, golden: Any, vault_env: dict[str, str],
                                      tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    env = golden_env(bao, golden, prefix)
    seed(bao, golden, prefix, [])  # the accounts
    records = _golden_records(bao, golden)
    for i, name in enumerate(_names(FLEET)):
        _write(bao, prefix, name, _lineage_data(records, i, 2))
    root = tmp_path / "t"
    args = dir_args(root)
    kvault("pull", *args, env=env)
    pristine = tmp_path / "pristine"
    shutil.copytree(root, pristine, symlinks=True)
    # Now Vault is one version ahead for every lineage, and has a few new ones.
    for i, name in enumerate(_names(FLEET)):
        _write(bao, prefix, name, _lineage_data(records, i, 3))
    for i, name in enumerate(_names(NEW, first=FLEET), start=FLEET):
        _write(bao, prefix, name, _lineage_data(records, i, 1))

    shutil.rmtree(root)
    kvault("pull", *dir_args(root), env=env)
    clean = snapshot(root / "config")

    def reset() -> None:
        shutil.rmtree(root)
        shutil.copytree(pristine, root, symlinks=True)

    # How long one pull takes, startup included: the kills are spread over that.
    reset()
    start = time.monotonic()
    kvault("pull", "--workers", "1", *args, env=env)
    run_time = measured = time.monotonic() - start
    assert snapshot(root / "config") == clean

    rng = random.SystemRandom()
    mid_run = mid_write = leftovers = 0
    for n in range(ROUNDS):
        reset()
        proc = subprocess.Popen([KVAULT, "pull", "--workers", "1", *args], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        started = time.monotonic()
        deadline = started + rng.uniform(0, run_time)
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            mid_run += 1
            proc.send_signal(signal.SIGKILL)
        else:  # faster than measured (a loaded machine measures long): aim lower next time
            run_time = min(run_time, time.monotonic() - started)
        assert proc.wait() in (0, -signal.SIGKILL)
        versions = _whole(root / "config")
        old = {name: v for name, v in versions.items() if name in _names(FLEET)}
        assert len(old) == FLEET  # their confs were there before: still there
        if 0 < sum(v == 3 for v in old.values()) < FLEET:
            mid_write += 1
        if any(".kvault-" in p for p in snapshot(root / "config")):
            leftovers += 1
        if n == ROUNDS - 1:
            # certbot reads a killed pull's tree (leftovers included) without a complaint.
            began = time.monotonic()
            out = run_certbot(["certificates"], config_dir=root / "config",
                              work_dir=root / "work", logs_dir=root / "logs",
                              pebble=golden.pebble, env=env)
            assert "invalid" not in out.stdout + out.stderr, out.stdout + out.stderr
            assert out.stdout.count("Certificate Name:") == len(versions), out.stdout
            print(f"certbot certificates: {time.monotonic() - began:.1f} s")
        kvault("pull", *args, env=env)  # the next pull completes...
        assert snapshot(root / "config") == clean   # ...and leaves what a clean pull leaves
    print(f"pull of {FLEET + NEW} lineages took {measured:.2f} s; of {ROUNDS} kills "
          f"{mid_run} landed mid-run, {ROUNDS - mid_run} after exit, {mid_write} between "
          f"the first and the last lineage's switch, {leftovers} left temp files or dirs")
    assert mid_run > 0  # otherwise the test proved nothing


# ---- deterministic: the kill exactly between two link switches ----------------------------


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even ``except Exception``)."""


def _record(golden_records: dict[str, dict[str, Any]], name: str, version: int) -> LineageRecord:
    data = _lineage_data(golden_records, 0, version)
    archive = {int(n): PemSet(**p) for n, p in json.loads(data["archive"]).items()}
    return LineageRecord(name=name, version=version, renewal=data["renewal"], archive=archive,
                         auto_renewable=True,
                         pems=PemSet(**{k: data[k] for k in PEM_KINDS}))


def _tree(tmp_path: Path) -> Tree:
    return Tree(Dirs(str(tmp_path / "config"), str(tmp_path / "work"), str(tmp_path / "logs")))


def test_kill_at_the_key_link_leaves_the_old_pair(bao: Bao, golden: Any, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    records = _golden_records(bao, golden)
    tree = _tree(tmp_path)
    tree.write_lineage(_record(records, "a.example.com", 1))
    real_symlink = os.symlink

    def symlink(target: Any, path: Any, *a: Any, **kw: Any) -> None:
        if os.path.basename(str(target)).startswith("privkey"):
            raise Killed()  # the three other links are switched by now
        real_symlink(target, path, *a, **kw)

    monkeypatch.setattr(os, "symlink", symlink)
    with pytest.raises(Killed):
        tree.write_lineage(_record(records, "a.example.com", 2))
    monkeypatch.setattr(os, "symlink", real_symlink)
    config = tmp_path / "config"
    assert _whole(config) == {"a.example.com": 1}

    tree.remove_leftovers()
    tree.write_lineage(_record(records, "a.example.com", 2))
    assert _whole(config) == {"a.example.com": 2}
    assert sorted(os.listdir(config / "live")) == ["README", "a.example.com"]


def test_a_lineage_named_like_a_temp_dir_is_never_removed(bao: Bao, golden: Any,
                                                           tmp_path: Path) -> None:
    records = _golden_records(bao, golden)
    tree = _tree(tmp_path)
    odd = ".d.example.com..kvault-new"  # a valid, if odd, lineage name
    tree.write_lineage(_record(records, odd, 1))
    tree.remove_leftovers()
    assert _whole(tmp_path / "config") == {odd: 1}
    with pytest.raises(TreeError, match=r"lineage \.d\.example\.com\.\.kvault-new holds the "
                       "name of its temporary directory"):
        tree.write_lineage(_record(records, "d.example.com", 1))
    assert _whole(tmp_path / "config") == {odd: 1}
    assert not (tmp_path / "config" / "archive" / "d.example.com").exists()


def _without_exchange(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel or filesystem without renameat2(RENAME_EXCHANGE)."""
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)


@pytest.mark.parametrize("exchange", [True, False])
def test_switch_keeps_certbots_format(bao: Bao, golden: Any, tmp_path: Path, exchange: bool,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if not exchange:
        _without_exchange(monkeypatch)
    records = _golden_records(bao, golden)
    tree = _tree(tmp_path)
    tree.write_lineage(_record(records, "b.example.com", 1))
    live = tmp_path / "config" / "live" / "b.example.com"
    (live / "README").write_text("kept\n")
    (live / "extra").write_text("an admin's file\n")
    # What a pull killed mid-switch and mid-write leaves, for the next one to remove.
    half = tmp_path / "config" / "live" / ".b.example.com..kvault-new"
    half.mkdir()
    (half / "cert.pem").symlink_to("../../archive/b.example.com/cert2.pem")
    temp = tmp_path / "config" / "archive" / "b.example.com" / ".kvault-x1y2z3w4.tmp"
    temp.write_text("half a key")
    tree.write_lineage(_record(records, "b.example.com", 3))
    assert not temp.exists()
    assert sorted(os.listdir(live)) == ["README", "cert.pem", "chain.pem", "extra",
                                        "fullchain.pem", "privkey.pem"]
    assert (live / "README").read_text() == "kept\n"
    assert (live / "extra").read_text() == "an admin's file\n"
    assert _whole(tmp_path / "config") == {"b.example.com": 3}
    assert sorted(os.listdir(tmp_path / "config" / "live")) == ["README", "b.example.com"]


def test_kill_between_the_fallback_renames(bao: Bao, golden: Any, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an exchange the live dir is briefly absent: a kill then leaves no pair at
    all (certbot reports the lineage broken) rather than a mixed one; the next write heals."""
    _without_exchange(monkeypatch)
    records = _golden_records(bao, golden)
    tree = _tree(tmp_path)
    tree.write_lineage(_record(records, "c.example.com", 1))
    real_rename = os.rename
    calls: list[Optional[str]] = []

    def rename(src: Any, dst: Any) -> None:
        calls.append(str(dst))
        if len(calls) == 2:
            raise Killed()
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(Killed):
        tree.write_lineage(_record(records, "c.example.com", 2))
    monkeypatch.setattr(os, "rename", real_rename)
    live = tmp_path / "config" / "live"
    assert not (live / "c.example.com").exists()
    tree.remove_leftovers()
    assert sorted(os.listdir(live)) == ["README"]
    tree.write_lineage(_record(records, "c.example.com", 2))
    assert _whole(tmp_path / "config") == {"c.example.com": 2}


def test_write_together_writes_none_and_keeps_the_cause(tmp_path: Path) -> None:
    """A failure before the renames leaves no file and no temp file, and the error keeps
    its cause's text even when the cause has no errno (export prints it)."""
    def refuse() -> None:
        raise OSError("claimed by another lineage")

    with pytest.raises(files.NotAllWritten) as caught:
        files.write_together(str(tmp_path), [("cert.pem", b"c", 0o644, None),
                                             ("privkey.pem", b"k", 0o600, None)],
                             before_rename=refuse)
    assert caught.value.renamed == 0
    assert str(caught.value.cause) == "claimed by another lineage"
    assert os.listdir(tmp_path) == []
