"""`pull` keeps what the machine set on private keys (mode and group), as certbot's storage
does on renewal; real certbot, Pebble and OpenBao."""
from __future__ import annotations

import grp
import os
import stat
from pathlib import Path
from typing import Any

from helpers import cli

ISSUE = ("--agree-tos", "--register-unsafely-without-email")


def _other_group() -> int:
    """An existing group other than root's, as an admin would give a key to (ssl-cert)."""
    groups = {g.gr_name: g.gr_gid for g in grp.getgrall() if g.gr_gid not in (0, os.getgid())}
    for name in ("ssl-cert", "adm", "nogroup"):
        if name in groups:
            return groups[name]
    assert groups, "no non-root group on this machine"
    return sorted(groups.values())[0]


def _pull(root: Path) -> None:
    result = cli("pull", "--config-dir", str(root / "config"), "--work-dir",
                 str(root / "work"), "--logs-dir", str(root / "logs"))
    assert result.exit_code == 0, result.output


def _issue_and_push(certbot: Any, certbot_dirs: Any, pebble: Any, domain: str) -> None:
    certbot("certonly", "--standalone", "--http-01-port", str(pebble.http_port), *ISSUE,
            "-d", domain)
    result = cli("push", "--config-dir", str(certbot_dirs.config_dir))
    assert result.exit_code == 0, result.output


def _admin_shares_key(path: Path, gid: int) -> os.stat_result:
    """What an admin does so nginx/postfix (group ssl-cert) can read the key."""
    os.chown(path, -1, gid)
    path.chmod(0o640)
    return path.stat()


def test_pull_leaves_a_right_key_alone(vault_env: dict[str, str], certbot: Any,
                                       certbot_dirs: Any, pebble: Any, tmp_path: Path) -> None:
    domain = "keep.example.com"
    _issue_and_push(certbot, certbot_dirs, pebble, domain)
    root = tmp_path / "pulled"
    _pull(root)
    gid = _other_group()
    key = root / "config" / "archive" / domain / "privkey1.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = _admin_shares_key(key, gid)
    [account_key] = (root / "config" / "accounts").rglob("private_key.json")
    assert stat.S_IMODE(account_key.stat().st_mode) == 0o400
    account_key.chmod(0o440)
    account_before = account_key.stat()

    _pull(root)
    after = key.stat()
    assert (after.st_ino, stat.S_IMODE(after.st_mode), after.st_gid, after.st_uid) == \
        (before.st_ino, 0o640, gid, before.st_uid)
    account_after = account_key.stat()
    assert (account_after.st_ino, stat.S_IMODE(account_after.st_mode)) == \
        (account_before.st_ino, 0o440)


def test_new_key_version_follows_the_previous_key(vault_env: dict[str, str], certbot: Any,
                                                  certbot_dirs: Any, pebble: Any,
                                                  tmp_path: Path) -> None:
    domain = "follow.example.com"
    _issue_and_push(certbot, certbot_dirs, pebble, domain)
    root = tmp_path / "pulled"
    _pull(root)
    gid = _other_group()
    archive = root / "config" / "archive" / domain
    old = _admin_shares_key(archive / "privkey1.pem", gid)

    # Renewed elsewhere (a new key, version 2 in Vault), then pulled here.
    certbot("renew", "--force-renewal", "--cert-name", domain)
    result = cli("push", "-v", "--config-dir", str(certbot_dirs.config_dir))
    assert result.exit_code == 0 and f"pushed: lineage {domain}" in result.output, \
        result.output
    _pull(root)
    new = (archive / "privkey2.pem").stat()
    assert (stat.S_IMODE(new.st_mode), new.st_gid) == (0o640, gid)
    assert (root / "config" / "live" / domain / "privkey.pem").resolve() == \
        (archive / "privkey2.pem").resolve()
    # The new key is really new (certbot made one), and the old one was not touched.
    assert (archive / "privkey2.pem").read_bytes() != (archive / "privkey1.pem").read_bytes()
    still = (archive / "privkey1.pem").stat()
    assert (still.st_ino, stat.S_IMODE(still.st_mode), still.st_gid) == \
        (old.st_ino, 0o640, gid)
    # Certificates keep certbot's plain mode (what open() gives) and our group.
    umask = os.umask(0o022)
    os.umask(umask)
    cert = (archive / "cert2.pem").stat()
    assert (stat.S_IMODE(cert.st_mode), cert.st_gid) == (0o666 & ~umask, os.getgid())
