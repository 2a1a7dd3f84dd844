"""Pending marks: pushes that certbot's deploy hook (or the plugin) could not do.

certbot only warns when a deploy hook fails, so a push that found Vault
unusable leaves ``<config-dir>/kvault/pending/NAME``; every command that
touches the tree completes those first (``push.finish_pending``), and the
Vault-only commands mention them. Here too: the banner such a failure prints,
how a certbot started by ``certbot-kvault renew``/``run`` knows that its
parent pushes (``KVAULT_PARENT_PUSH``), so the hook stands down, and which
lineages the hook pushes at all (``kept_in_vault``).
"""
from __future__ import annotations

import datetime
import json
import os
from typing import Optional

from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.store.records import RecordError, validate_name
from certbot_kvault._internal.tree import confs
from certbot_kvault._internal.tree.files import atomic_write
from certbot_kvault._internal.tree.manifest import LINEAGES, Manifest
from certbot_kvault._internal.tree.storage import Tree

PENDING_DIR = os.path.join("kvault", "pending")
# Set on a certbot that `certbot-kvault renew`/`run` starts (to that process's
# pid): the deploy hook and the plugin leave the push to it, so that its
# fenced push at the end is the only one.
PARENT_PUSH_ENV = "KVAULT_PARENT_PUSH"
KVAULT_PLUGIN = "kvault"  # the plugin's name in a renewal conf (setup's entry point)


def parent_pushes() -> Optional[int]:
    """The pid of the `certbot-kvault renew`/`run` that started this certbot, if it still
    runs: it pushes when certbot is done, so a hook or the plugin must not push first."""
    try:
        pid = int(os.environ.get(PARENT_PUSH_ENV, ""))
        if pid <= 0:  # kill(0 or -N) would signal a process group
            return None
        os.kill(pid, 0)
    except PermissionError:
        pass  # it runs, as another user
    except (ValueError, ProcessLookupError, OverflowError):
        return None
    return pid


def loud_failure(*lines: str) -> str:
    """The banner for a push that failed where certbot only warns (hooks, exit)."""
    bar = "*" * 72
    return "\n".join([bar, *(f"certbot-kvault: {line}" for line in lines), bar, ""])


def _pending_dir(tree: Tree) -> str:
    return os.path.join(tree.config_dir, PENDING_DIR)


def mark(tree: Tree, name: str, reason: str) -> str:
    """Leave ``<config>/kvault/pending/NAME`` saying why the push failed; its path."""
    validate_name(name)
    d = _pending_dir(tree)
    os.makedirs(d, mode=0o700, exist_ok=True)
    path = os.path.join(d, name)
    body = {"lineage": name, "reason": reason,
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    atomic_write(path, json.dumps(body).encode(), 0o600)
    return path


def names(tree: Tree) -> list[str]:
    """Lineages with a pending mark here (whether or not they still exist)."""
    d = _pending_dir(tree)
    if not os.path.isdir(d):
        return []
    return sorted(n for n in os.listdir(d) if not n.startswith("."))


def owed(tree: Tree) -> list[str]:
    """Marked lineages that still exist here: a mark whose lineage is gone is owed nothing."""
    out = []
    for name in names(tree):
        try:
            if os.path.exists(tree.renewal_conf_path(name)):
                out.append(name)
        except RecordError:
            continue  # not a lineage name: not a mark we wrote
    return out


def clear(tree: Tree, name: str) -> None:
    try:
        os.unlink(os.path.join(_pending_dir(tree), name))
    except FileNotFoundError:
        pass


def kept_in_vault(tree: Tree, layout: Layout, name: str) -> bool:
    """Whether lineage ``name`` is one the deploy hook pushes: it belongs in Vault.

    Yes when this dir last synced it with Vault (synced.json), a push of it is
    pending here, its renewal conf names kvault as authenticator or installer,
    or Vault holds it (asked last; a VaultError when it cannot be). A lineage
    certbot made on this machine for itself, in a config dir that also holds
    Vault's (e.g. ``certbot certonly --standalone``), is none of these: pushed,
    its key would be readable with every reader token of the fleet.
    """
    if Manifest(tree, layout.vault.settings).get(LINEAGES, name) is not None:
        return True
    if name in names(tree) or _names_kvault(tree.renewal_conf_path(name)):
        return True
    return layout.read_lineage_raw(name) is not None


def _names_kvault(conf_path: str) -> bool:
    try:
        # Read as data (confs.py); a conf certbot cannot parse names nothing.
        params = confs.parse_file(conf_path).get("renewalparams")
    except (OSError, confs.ConfError):
        return False
    if not isinstance(params, dict):
        return False
    return KVAULT_PLUGIN in (params.get("authenticator"), params.get("installer"))
