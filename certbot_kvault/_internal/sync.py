"""Moving certbot state between the config dir and Vault.

pull: Vault -> layout -> tree.  push: tree -> layout -> Vault.

Both work lineage by lineage in a bounded thread pool over the client's
kept-alive connections, holding at most a window of records in memory, so
a fleet of 10 000 lineages costs time in proportion but no more memory.

A record that is bad (corrupt PEM, key/cert mismatch, hostile name, lost
check-and-set race, denied path) fails alone and is reported; a Vault that is
down, sealed or refuses our token stops the whole run at the first request.
Nothing is ever half-written: a lineage is one Vault secret, and on disk its
renewal conf is written last.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import json
import logging
import os
from typing import Callable, Iterable, Iterator, Optional, TypeVar

from certbot import errors

from certbot_kvault._internal import trust
from certbot_kvault._internal.errors import (
    VaultAuthError,
    VaultError,
    VaultNotFound,
    VaultSealed,
    VaultUnreachable,
    VaultUnsupported,
)
from certbot_kvault._internal.layout import (
    AccountRecord,
    Layout,
    LineageRecord,
    RecordError,
    validate_name,
)
from certbot_kvault._internal.tree import Tree, TreeError, _atomic_write

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# Errors that mean "Vault as a whole is not usable": stop at once.
FATAL = (VaultUnreachable, VaultSealed, VaultAuthError, VaultNotFound, VaultUnsupported)

DEFAULT_WORKERS = 8
PENDING_DIR = os.path.join("kvault", "pending")


@dataclasses.dataclass
class Report:
    """What a pull or push did, item by item (items are 'lineage NAME' / 'account ID')."""

    written: list[str] = dataclasses.field(default_factory=list)
    unchanged: list[str] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    # One line per lineage whose renewal conf from Vault was not used whole
    # (trust.py); the caller prints them.
    warnings: list[str] = dataclasses.field(default_factory=list)

    def merge(self, other: Report) -> Report:
        self.written += other.written
        self.unchanged += other.unchanged
        self.failed += other.failed
        self.warnings += other.warnings
        return self

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, object]:
        return {"written": self.written, "unchanged": self.unchanged,
                "failed": [{"item": i, "error": e} for i, e in self.failed],
                "warnings": self.warnings}


def parallel(items: Iterable[T], fn: Callable[[T], R], workers: int) -> Iterator[tuple[T, R]]:
    """fn over items in a pool, keeping at most 2*workers in flight (flat memory).

    One worker runs inline: no thread can start while the interpreter exits,
    which is when the plugin's exit handler pushes.
    """
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    window = max(1, workers) * 2
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: collections.deque[tuple[T, concurrent.futures.Future[R]]] = collections.deque()
        try:
            for item in items:
                pending.append((item, pool.submit(fn, item)))
                if len(pending) >= window:
                    head, fut = pending.popleft()
                    yield head, fut.result()
            while pending:
                head, fut = pending.popleft()
                yield head, fut.result()
        finally:
            for _, fut in pending:
                fut.cancel()


def _outcome(item: str, fn: Callable[[], Optional[bool]]) -> Report:
    """Run one item's work: True written, False unchanged; record-level errors are kept."""
    report = Report()
    try:
        changed = fn()
    except FATAL:
        raise
    except (RecordError, TreeError, VaultError, errors.PluginError) as e:
        logger.debug("%s failed: %s", item, e)
        report.failed.append((item, str(e)))
        return report
    (report.written if changed else report.unchanged).append(item)
    return report


def _run(items: Iterable[str], work: Callable[[str], Report], workers: int) -> Report:
    report = Report()
    for _, part in parallel(items, work, workers):
        report.merge(part)
    return report


# ---- pull ------------------------------------------------------------------


def pull(tree: Tree, layout: Layout, names: Optional[list[str]] = None,
         workers: int = DEFAULT_WORKERS, kvault_bin: Optional[str] = None,
         accounts: bool = True) -> Report:
    """Rebuild the config dir from Vault: accounts, then the named (or all) lineages."""
    layout.vault.login()  # once, before the workers: a refused login stops everything
    tree.ensure_base()
    report = Report()
    if accounts:
        report.merge(_run((f"{s}\0{i}" for s, i in layout.list_accounts()),
                          lambda key: _pull_account(tree, layout, *key.split("\0")), workers))
    wanted = names if names is not None else layout.list_lineages()
    report.merge(_run(wanted, lambda name: _pull_lineage(tree, layout, name), workers))
    tree.install_hook(kvault_bin)
    return report


def _pull_account(tree: Tree, layout: Layout, server_path: str, account_id: str) -> Report:
    def work() -> bool:
        record = layout.load_account(server_path, account_id)
        if record is None:
            raise RecordError(f"{layout.where('accounts', server_path, account_id)} vanished "
                              "while pulling.")
        tree.write_account(record)
        return True

    return _outcome(f"account {account_id}", work)


def _pull_lineage(tree: Tree, layout: Layout, name: str) -> Report:
    warnings: list[str] = []

    def work() -> bool:
        validate_name(name)
        record = layout.load_lineage(name)
        if record is None:
            raise RecordError(f"No lineage {name} in Vault ({layout.where('certificates', name)}"
                              "); see `certbot-kvault list`.")
        local = tree.current_version(name)
        if local is not None and local > record.version:
            # Newer here than in Vault: a renewal that never reached Vault.
            # Pulling would point live/ back at the old certificate.
            raise RecordError(f"Lineage {name} is at version {local} here but {record.version} "
                              f"in Vault: run `certbot-kvault push {name}` first.")
        # Before writing: what was ignored is judged against this machine's old conf.
        ignored = tree.screened_conf(name, record.renewal)[1]
        tree.write_lineage(record)
        if ignored:
            warnings.append(trust.warning(name, ignored))
        return True

    report = _outcome(f"lineage {name}", work)
    report.warnings += warnings
    return report


# ---- push ------------------------------------------------------------------


def push(tree: Tree, layout: Layout, names: Optional[list[str]] = None,
         workers: int = DEFAULT_WORKERS, accounts: bool = True) -> Report:
    """Write local accounts and the named (or all) lineages to Vault; only what changed."""
    layout.vault.login()
    report = Report()
    if accounts:
        urls = tree.server_urls()
        report.merge(_run(
            (f"{s}\0{i}" for s, i in tree.account_dirs()),
            lambda key: _push_account(tree, layout, urls, *key.split("\0")), workers))
    wanted = names if names is not None else tree.lineage_names()
    report.merge(_run(wanted, lambda name: _push_lineage(tree, layout, name), workers))
    for item in report.written + report.unchanged:
        if item.startswith("lineage "):
            clear_pending(tree, item[len("lineage "):])
    return report


def _push_account(tree: Tree, layout: Layout, urls: dict[str, str], server_path: str,
                  account_id: str) -> Report:
    def work() -> bool:
        url = urls.get(server_path) or f"https://{server_path}"
        local = tree.read_account(server_path, account_id, url)
        remote_entry = layout.vault.read(layout._path("accounts", server_path, account_id))
        if remote_entry is not None:
            try:
                remote = AccountRecord.from_kv(server_path, account_id, remote_entry, "")
                if remote.same_content(local):
                    return False
            except RecordError:
                pass  # a damaged record in Vault is replaced by the good local one
        layout.save_account(local, cas=remote_entry.version if remote_entry else 0)
        return True

    return _outcome(f"account {account_id}", work)


def _push_lineage(tree: Tree, layout: Layout, name: str) -> Report:
    def work() -> bool:
        local = tree.read_lineage(validate_name(name))
        entry = layout.read_lineage_raw(name)
        if entry is not None:
            try:
                remote: Optional[LineageRecord] = LineageRecord.from_kv(
                    name, entry, layout.where("certificates", name))
            except RecordError:
                remote = None  # replaced by the good local one
            if remote is not None:
                if remote.same_content(local) or as_pulled(tree, remote, local):
                    return False
                if remote.version > local.version:
                    raise RecordError(
                        f"Vault holds version {remote.version} of {name}, newer than this "
                        f"machine's {local.version}: run `certbot-kvault pull {name}` instead "
                        "of pushing.")
        layout.save_lineage(local, cas=entry.version if entry is not None else 0)
        return True

    return _outcome(f"lineage {name}", work)


def as_pulled(tree: Tree, remote: LineageRecord, local: LineageRecord) -> bool:
    """Whether the local lineage is exactly what pulling ``remote`` gives here, with
    no setting of this machine's own.

    Then only keys that pull does not take from Vault (trust.py) differ, and
    pushing would just erase them from Vault for the machines that trust them.
    """
    if not remote.same_content(dataclasses.replace(local, renewal=remote.renewal)):
        return False
    try:
        with open(tree.renewal_conf_path(remote.name), "rb") as f:
            on_disk = f.read()
        return on_disk == tree.screened_conf(remote.name, remote.renewal, keep_local=False)[0]
    except (OSError, RecordError):
        return False


# ---- pending marks: a push that a deploy hook could not do ---------------------


def loud_failure(*lines: str) -> str:
    """The banner for a push that failed where certbot only warns (hooks, exit)."""
    bar = "*" * 72
    return "\n".join([bar, *(f"certbot-kvault: {line}" for line in lines), bar, ""])


def _pending_dir(tree: Tree) -> str:
    return os.path.join(tree.config_dir, PENDING_DIR)


def mark_pending(tree: Tree, name: str, reason: str) -> str:
    validate_name(name)
    d = _pending_dir(tree)
    os.makedirs(d, mode=0o700, exist_ok=True)
    path = os.path.join(d, name)
    body = {"lineage": name, "reason": reason,
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    _atomic_write(path, json.dumps(body).encode(), 0o600)
    return path


def pending(tree: Tree) -> list[str]:
    d = _pending_dir(tree)
    if not os.path.isdir(d):
        return []
    return sorted(n for n in os.listdir(d) if not n.startswith("."))


def clear_pending(tree: Tree, name: str) -> None:
    try:
        os.unlink(os.path.join(_pending_dir(tree), name))
    except FileNotFoundError:
        pass


def finish_pending(tree: Tree, layout: Layout, workers: int = DEFAULT_WORKERS) -> Report:
    """Complete pushes that a failed deploy hook left behind (lineages that still exist)."""
    names = [n for n in pending(tree) if os.path.exists(tree.renewal_conf_path(n))]
    for gone in set(pending(tree)) - set(names):
        clear_pending(tree, gone)
    if not names:
        return Report()
    logger.info("Completing %d pending push(es): %s", len(names), ", ".join(names))
    return push(tree, layout, names, workers=workers)
