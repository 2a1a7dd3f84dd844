"""Renewal confs are read as data, never as templates.

configobj expands ``%(name)s`` in every value it hands out unless told not to, and
certbot itself reads renewal confs that way. A renewal conf in Vault is written by
any renewer's token, so a ``%(`` in one of its values must neither stop a run (a
missing name raises on first access) nor reach a conf on disk (certbot would expand
it). Real OpenBao, Pebble and the real console script; records copied from the
session's golden lineages and edited as any writer of ``certificates/*`` could.
"""
from __future__ import annotations

import json
from pathlib import Path

from helpers import Golden, fresh_dirs, golden_env, kv_version, kvault, record, seed
from servers import Bao

NAMES = ["due", "calm", "short"]


def _edit_conf(bao: Bao, prefix: str, name: str, old: str, new: str) -> None:
    """Replace text in the lineage's `renewal` field in Vault (plain text: no configobj
    on the test's side either)."""
    data = record(bao, prefix, f"certificates/{name}")
    assert data is not None and old in data["renewal"], old
    data["renewal"] = data["renewal"].replace(old, new, 1)
    r = bao.api("POST", f"secret/data/{prefix}/certificates/{name}", json={"data": data})
    assert r.status_code == 200, r.text


def _add_param(bao: Bao, prefix: str, name: str, line: str) -> None:
    _edit_conf(bao, prefix, name, "[renewalparams]\n", f"[renewalparams]\n{line}\n")


def _no_traceback(proc: object) -> None:
    out = getattr(proc, "stdout", "") + getattr(proc, "stderr", "")
    assert "Traceback" not in out, out


def test_template_in_a_value_is_dropped_with_one_warning(bao: Bao, golden: Golden,
                                                         vault_env: dict[str, str],
                                                         tmp_path: Path) -> None:
    """`autorenew = %(nope)s`: list, pull and renew run as usual; the key is dropped
    from that lineage with one warning, the others are untouched."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, NAMES)
    _add_param(bao, prefix, "due", "autorenew = %(nope)s")
    env = golden_env(bao, golden, prefix)

    listed = kvault("list", "--json", env=env)
    _no_traceback(listed)
    assert sorted(r["name"] for r in json.loads(listed.stdout)) == sorted(NAMES)

    root, args = fresh_dirs(tmp_path, "pulled")
    pulled = kvault("pull", *args, env=env)
    _no_traceback(pulled)
    assert pulled.stdout.splitlines()[-1].endswith(" 0 failed"), pulled.stdout
    warnings = [ln for ln in pulled.stderr.splitlines() if ln.strip()]
    assert warnings == ["warning: lineage due: ignored from Vault's renewal conf: autorenew "
                        "(a %(...) template: certbot would expand it)"], pulled.stderr
    for name in NAMES:
        conf = (root / "config" / "renewal" / f"{name}.conf").read_text()
        assert "%(" not in conf, conf
    assert "autorenew" not in (root / "config" / "renewal" / "due.conf").read_text()

    before = kv_version(bao, prefix, "certificates/due")
    root, args = fresh_dirs(tmp_path, "renewer")
    renewed = kvault("renew", *args, env=env, check=False)
    _no_traceback(renewed)
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    assert "renewed: due" in renewed.stdout, renewed.stdout + renewed.stderr
    assert kv_version(bao, prefix, "certificates/due") == before + 1
    assert "%(" not in (root / "config" / "renewal" / "due.conf").read_text()


def test_template_in_a_key_certbot_needs_fails_that_lineage_alone(bao: Bao, golden: Golden,
                                                                  vault_env: dict[str, str],
                                                                  tmp_path: Path) -> None:
    """`server` holding `%(renew_hook)s` would make certbot (which expands templates when
    it reads a conf) see another server, or fail to parse the lineage: that lineage is
    refused in one line before anything of it is written; the others are pulled."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, NAMES)
    data = record(bao, prefix, "certificates/due")
    assert data is not None
    server = next(ln for ln in data["renewal"].splitlines() if ln.startswith("server = "))
    _edit_conf(bao, prefix, "due", server + "\n", server + "%(renew_hook)s\n")
    _add_param(bao, prefix, "due", "renew_hook = /evil")
    root, args = fresh_dirs(tmp_path)

    proc = kvault("pull", *args, env=golden_env(bao, golden, prefix), check=False)

    _no_traceback(proc)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: lineage due: secret/{prefix}/certificates/due: its renewal "
                     "conf's 'server' holds a %(...) template, which certbot would expand: not "
                     "pulled; fix the record"], proc.stderr
    config = root / "config"
    assert not (config / "renewal" / "due.conf").exists()
    assert not (config / "archive" / "due").exists()
    assert {p.name for p in (config / "renewal").iterdir()} == {"calm.conf", "short.conf"}


def test_unparsable_conf_in_vault_fails_that_lineage_alone(bao: Bao, golden: Golden,
                                                           vault_env: dict[str, str],
                                                           tmp_path: Path) -> None:
    """Duplicate keys (a configobj error): one line for that lineage, in list too it is
    no traceback, and the others are pulled."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, NAMES)
    _add_param(bao, prefix, "calm", "key_type = rsa\nkey_type = ecdsa")
    env = golden_env(bao, golden, prefix)

    listed = kvault("list", env=env)
    _no_traceback(listed)
    assert {ln.split()[0] for ln in listed.stdout.splitlines()[1:]} == set(NAMES)

    root, args = fresh_dirs(tmp_path)
    proc = kvault("pull", *args, env=env, check=False)
    _no_traceback(proc)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith(f"error: lineage calm: secret/{prefix}/certificates/calm: its "
                           "renewal conf cannot be parsed (Duplicate keyword name at line "), line
    assert {p.name for p in (root / "config" / "renewal").iterdir()} == \
        {"due.conf", "short.conf"}


def test_domains_of_the_wrong_type_is_one_warning(bao: Bao, golden: Golden,
                                                  vault_env: dict[str, str]) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, NAMES)
    data = record(bao, prefix, "certificates/calm")
    assert data is not None
    data["domains"] = {"a": "b"}
    r = bao.api("POST", f"secret/data/{prefix}/certificates/calm", json={"data": data})
    assert r.status_code == 200, r.text
    env = golden_env(bao, golden, prefix)

    for args in (["list"], ["list", "--json"]):
        proc = kvault(*args, env=env)
        _no_traceback(proc)
        assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [
            f"warning: lineage calm: secret/{prefix}/certificates/calm: 'domains' is not a "
            "list of names; shown without them"], proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == set(NAMES)
    assert rows["calm"]["domains"] == [] and rows["calm"]["subject"] is None
    assert rows["due"]["subject"] == "www.example.com"
