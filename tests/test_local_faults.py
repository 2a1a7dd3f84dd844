"""A fault of this machine (a file where a directory should be, a name the filesystem
refuses, a conf that cannot be read) fails the lineage it hits, alone, in one line:
every other lineage is pulled or pushed, and the sync manifest is saved.

Real OpenBao and the real console script. The tests run as root, so a mode bit
cannot make a directory unwritable: a regular file where a lineage's archive dir
should be makes every write into it fail (ENOTDIR), as a full or read-only disk
would fail the writes of that lineage.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import Golden, fresh_dirs, golden_env, kv_version, kvault, record, seed
from servers import Bao

from certbot_kvault._internal.store.records import RecordError, validate_name

NAMES = ["due", "calm", "short"]
LONG = "l" * 241 + ".com"            # 245 characters: certbot takes it, our files would not fit
LONGEST = "m" * 233 + ".com"        # 237 bytes: the longest name that fits


def _copy(bao: Bao, prefix: str, source: str, name: str) -> None:
    data = record(bao, prefix, f"certificates/{source}")
    assert data is not None
    r = bao.api("POST", f"secret/data/{prefix}/certificates/{name}", json={"data": data})
    assert r.status_code == 200, r.text


def _lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [ln for ln in stderr.splitlines() if ln.strip()]


def _synced(config: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((config / "kvault" / "synced.json").read_text())
    return doc


def test_name_bound_counts_bytes() -> None:
    from certbot_kvault._internal.store.records import MAX_NAME_BYTES

    assert MAX_NAME_BYTES == 237  # 255 - len(".NAME-0001..kvault-new" - NAME)
    assert validate_name(LONGEST) == LONGEST
    for name in (LONGEST + "x", LONG, "é" * 119):  # 119 x 2 bytes = 238
        with pytest.raises(RecordError, match="longer than 237 bytes"):
            validate_name(name)
    assert validate_name("é" * 118)


def test_pull_fault_fails_one_lineage(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                      tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, NAMES)
    _copy(bao, prefix, "calm", LONG)
    _copy(bao, prefix, "calm", LONGEST)
    root, args = fresh_dirs(tmp_path)
    config = root / "config"
    (config / "archive").mkdir(parents=True)
    (config / "archive" / "short").write_text("not a directory\n")

    proc = kvault("pull", "--workers", "1", *args, env=golden_env(bao, golden, prefix),
                  check=False)

    assert proc.returncode == 1
    lines = _lines(proc.stderr)
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith(f"error: lineage {LONG}: Invalid lineage name '{LONG}': it is "
                               "longer than 237 bytes"), lines[0]
    assert lines[1] == ("error: lineage short: Not a directory: "
                        f"{config / 'archive' / 'short' / 'cert1.pem'}"), lines[1]
    assert proc.stdout.splitlines()[-1].endswith(" 2 failed"), proc.stdout
    pulled = {p.name[:-len(".conf")] for p in (config / "renewal").glob("*.conf")}
    assert pulled == {"due", "calm", LONGEST}
    assert not any(LONG in p for p in os.listdir(config / "live"))
    synced = _synced(config)["lineages"]
    assert set(synced) == {"due", "calm", LONGEST}


def test_push_and_import_fault_fails_one_lineage(bao: Bao, golden: Golden,
                                                 vault_env: dict[str, str],
                                                 tmp_path: Path) -> None:
    """A conf that is not UTF-8, one with duplicate keys, a name too long for our files:
    one line each, the rest pushed."""
    source = f"{vault_env['KVAULT_PREFIX']}-src"
    seed(bao, golden, source, NAMES)
    root, args = fresh_dirs(tmp_path)
    kvault("pull", *args, env=golden_env(bao, golden, source))
    renewal = root / "config" / "renewal"
    (renewal / "due.conf").write_bytes((renewal / "due.conf").read_bytes() + b"# \xff\xfe\n")
    calm = (renewal / "calm.conf").read_text()
    (renewal / "calm.conf").write_text(calm.replace("[renewalparams]\n",
                                                    "[renewalparams]\nkey_type = rsa\n"))
    (renewal / f"{LONG}.conf").write_text((renewal / "short.conf").read_text())
    prefix = vault_env["KVAULT_PREFIX"]
    env = golden_env(bao, golden, prefix)

    for command in ("import", "push"):
        proc = kvault(command, *args, env=env, check=False)
        assert proc.returncode == 1, proc.stdout
        lines = _lines(proc.stderr)
        assert len(lines) == 3, proc.stderr
        assert lines[0].startswith(f"error: lineage calm: Renewal conf {renewal / 'calm.conf'} "
                                   "cannot be parsed (Duplicate keyword name at line "), lines
        assert lines[1].startswith(f"error: lineage due: Renewal conf {renewal / 'due.conf'} "
                                   "cannot be parsed (not UTF-8"), lines
        assert lines[2].startswith(f"error: lineage {LONG}: Invalid lineage name"), lines
        assert kv_version(bao, prefix, "certificates/short") == 1
        assert kv_version(bao, prefix, "certificates/due") == 0
    assert set(_synced(root / "config")["lineages"]) == {"short"}


def test_deploy_hook_with_a_malformed_conf_leaves_a_pending_mark(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    root, args = fresh_dirs(tmp_path)
    env = golden_env(bao, golden, prefix)
    kvault("pull", *args, env=env)
    conf = root / "config" / "renewal" / "calm.conf"
    conf.write_text(conf.read_text().replace("[renewalparams]\n",
                                             "[renewalparams]\nkvault_mount = a\n"
                                             "kvault_mount = b\n"))

    proc = kvault("deploy-hook", *args, env={**env, "RENEWED_LINEAGE": str(
        root / "config" / "live" / "calm")}, check=False)

    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "lineage calm was NOT saved to Vault." in proc.stderr, proc.stderr
    assert f"Renewal conf {conf} cannot be parsed (Duplicate keyword name at line " \
        in proc.stderr
    mark = root / "config" / "kvault" / "pending" / "calm"
    assert json.loads(mark.read_text())["lineage"] == "calm"
