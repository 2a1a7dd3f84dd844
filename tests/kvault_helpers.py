"""Helpers shared by the foundation tests: run certbot-kvault, snapshot a tree."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from click.testing import CliRunner, Result

from certbot_kvault._internal.cli import main
from certbot_kvault._internal.layout import Layout
from certbot_kvault._internal.settings import VaultSettings
from certbot_kvault._internal.vault import VaultClient


def kvault_exe() -> str:
    return os.path.join(os.path.dirname(sys.executable), "certbot-kvault")


def kvault(*args: str, env: Optional[dict[str, str]] = None,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real console script, as users and certbot's hook do."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([kvault_exe(), *args], env=full_env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"certbot-kvault {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def cli(*args: str, env: Optional[dict[str, str]] = None) -> Result:
    """Run the CLI in-process (click's runner) with the current os.environ plus env."""
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def token_with_policy(bao: Any, name: str, policy: str, ttl: str = "5m") -> str:
    """A fresh token holding only ``policy`` (written as ACL policy ``name``)."""
    r = bao.api("PUT", f"sys/policies/acl/{name}", {"policy": policy})
    assert r.status_code in (200, 204), r.text
    r = bao.api("POST", "auth/token/create", {"policies": [name], "ttl": ttl,
                                               "no_default_policy": False})
    assert r.status_code == 200, r.text
    token: str = r.json()["auth"]["client_token"]
    return token


def layout_from_env(**overrides: Any) -> Layout:
    return Layout(VaultClient(VaultSettings.from_env(**overrides)))


def snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry below root: (kind, mode, content or link target)."""
    out: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, "")
            else:
                out[rel] = ("file", mode, path.read_text())
    return out
