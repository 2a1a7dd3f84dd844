"""push: tree -> records -> layout -> Vault, only what changed, fenced under ``renew``.

Each lineage's local half (its fingerprint, reading and checking its files)
runs in the calling thread as the pool takes it, its Vault half (read,
compare, check-and-set write, a lost race told) in a worker (jobs.py). What
the manifest (manifest.py) knows unchanged is not even read; a changed record
is written with check-and-set against the KV version last synced, or, fenced,
against the one this run pulled. A bad record or a lost race fails alone; a
Vault that is down, sealed or refuses our token stops the whole run. A
lineage is one Vault secret, so it never changes by halves.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.store.records import (
    AccountRecord,
    LineageRecord,
    RecordError,
    validate_name,
)
from certbot_kvault._internal.sync import issued
from certbot_kvault._internal.sync.jobs import DEFAULT_WORKERS, Report, Tick, outcome, run_reports
from certbot_kvault._internal.tree import pending, portable
from certbot_kvault._internal.tree.manifest import (
    ACCOUNTS,
    LINEAGES,
    Listed,
    Manifest,
    account_fingerprint,
    account_key,
    check_and_set,
    lineage_fingerprint,
)
from certbot_kvault._internal.tree.storage import Tree
from certbot_kvault._internal.vault.client import KVEntry
from certbot_kvault._internal.vault.errors import VaultConflict, lost_race

logger = logging.getLogger(__name__)


def push(tree: Tree, layout: Layout, names: Optional[list[str]] = None,
         workers: int = DEFAULT_WORKERS, accounts: bool = True, force: bool = False,
         expected: Optional[dict[str, int]] = None, progress: Tick = None) -> Report:
    """Write local accounts and the named (or all) lineages to Vault; only what changed.

    Unchanged since the last pull or push (manifest.py): not even read. Changed: written
    with check-and-set against the KV version last synced (so a change since loses).
    ``force``: the manifest is not asked (each record is read and compared: a repair).

    ``expected`` (lineage -> KV version seen at pull time, ``Report.versions``)
    fences those lineages: the write is a check-and-set against that version,
    not against one read just before writing, so a renewer that lost its lock
    cannot replace what the renewer that took over saved. Such a refusal is in
    ``failed`` and ``fenced``.
    """
    fence = expected or {}
    layout.vault.login()
    report = Report()
    manifest = Manifest(tree, layout.vault.settings, ignored=force)
    report.warnings += manifest.check_newest(layout)  # Vault restored from a snapshot?
    if accounts:
        urls = tree.server_urls()
        listed = Listed(lambda: (account_key(*a) for a in layout.list_accounts()))
        report.merge(run_reports(
            (f"{s}\0{i}" for s, i in tree.account_dirs()),
            lambda key: _push_account(tree, layout, urls, *key.split("\0"),
                                      synced=(manifest, listed)), workers))
    wanted = names if names is not None else tree.lineage_names()
    listed = Listed(layout.list_lineages)
    # Each lineage's local half (fingerprint, reading and checking its files) runs
    # here as the pool takes it, its Vault half in a worker (jobs.run_reports).
    report.merge(run_reports(
        (_LineagePush(tree, layout, name, fence.get(name), (manifest, listed)).local_half()
         for name in wanted), _LineagePush.vault_half, workers, progress, total=len(wanted)))
    report.warnings += filter(None, [manifest.gone_back_line(layout), manifest.save()])
    for item in report.written + report.unchanged:
        if item.startswith("lineage "):
            pending.clear(tree, item[len("lineage "):])
    return report


def _push_account(tree: Tree, layout: Layout, urls: dict[str, str], server_path: str,
                  account_id: str, *, synced: tuple[Manifest, Listed]) -> Report:
    manifest, listed = synced
    key = account_key(server_path, account_id)
    known = manifest.get(ACCOUNTS, key)
    agreed: list[tuple[Optional[int], str]] = []  # (KV version, fingerprint) once equal

    def work() -> bool:
        url = urls.get(server_path) or f"https://{server_path}"
        local = tree.read_account(server_path, account_id, url)
        mine = account_fingerprint(local)
        if known is not None and known.fingerprint == mine and listed(key):
            agreed.append((known.version, mine))
            return False
        remote_entry = layout.vault.read(layout.path("accounts", server_path, account_id))
        if remote_entry is not None:
            try:
                remote = AccountRecord.from_kv(server_path, account_id, remote_entry, "")
                if remote.same_content(local):
                    agreed.append((remote_entry.version, mine))
                    return False
            except RecordError:
                pass  # a damaged record in Vault is replaced by the good local one
        cas = check_and_set(known, remote_entry)
        try:
            agreed.append((layout.save_account(local, cas=cas), mine))
        except VaultConflict:
            # Another pusher of the same account won: fine if it wrote what we hold.
            path = layout.path("accounts", server_path, account_id)
            winner = layout.winner(path, cas)
            if winner is not None:
                try:
                    if AccountRecord.from_kv(server_path, account_id, winner, "") \
                            .same_content(local):
                        agreed.append((winner.version, mine))
                        return False
                except RecordError:
                    pass
            raise lost_race(layout.where("accounts", server_path, account_id), cas,
                            None if winner is None else winner.version) from None
        return True

    report = outcome(f"account {account_id}", work)
    manifest.settle(ACCOUNTS, key, agreed[0] if agreed and report.ok else None)
    return report


class _LineagePush:
    """One lineage's push: ``local_half`` in the caller's thread, then ``vault_half``."""

    def __init__(self, tree: Tree, layout: Layout, name: str, expected: Optional[int],
                 synced: tuple[Manifest, Listed]) -> None:
        self.tree, self.layout, self.name, self.expected = tree, layout, name, expected
        self.manifest, self.listed = synced
        self.known = self.manifest.get(LINEAGES, name)
        self.fenced = False
        self.agreed: list[Optional[int]] = []  # the KV version once both sides are equal
        self.mine: Optional[str] = None  # the fingerprint of what is pushed
        self.local: Optional[LineageRecord] = None
        self.done: Optional[Report] = None  # set when the local half decided it all

    def local_half(self) -> _LineagePush:
        def work() -> bool:
            # Before the lineage is read: a change made after it is never recorded as pushed.
            self.mine = lineage_fingerprint(self.tree, validate_name(self.name))
            known = self.known
            if known is not None and self.mine == known.fingerprint and self.listed(self.name):
                self.agreed.append(known.version)  # unchanged here since the last sync: no read
                return False
            self.local = self.tree.read_lineage(self.name)
            return False  # not told yet: the Vault half decides

        report = outcome(f"lineage {self.name}", work)
        if self.local is None:  # unchanged, or failed here: nothing to ask Vault
            self.done = self._settled(report)
        return self

    def vault_half(self) -> Report:
        if self.done is not None:
            return self.done
        return self._settled(outcome(f"lineage {self.name}", self._write))

    def _settled(self, report: Report) -> Report:
        if self.fenced:
            report.fenced.append(self.name)
        self.manifest.settle(LINEAGES, self.name, (self.agreed[0], self.mine)
                             if self.agreed and report.ok else None, bool(report.written))
        return report

    def _refuse(self, now: str) -> RecordError:
        self.fenced = True
        return RecordError(f"{self.layout.where('certificates', self.name)} changed in Vault "
                           f"after this run pulled its KV version {self.expected} (now {now}): "
                           "not overwriting it.")

    def _write(self) -> bool:
        layout, name, expected, local = self.layout, self.name, self.expected, self.local
        assert local is not None
        entry = layout.read_lineage_raw(name)
        self.manifest.gone_back(name, self.known, entry)
        remote: Optional[LineageRecord] = None
        if entry is not None:
            try:
                remote = LineageRecord.from_kv(name, entry, layout.where("certificates", name))
            except RecordError:
                pass  # replaced by the good local one
            if remote is not None:
                local = dataclasses.replace(local, renewal=portable.kept_profiles(
                    local.renewal, remote.renewal))
                if remote.same_content(local) or self.tree.as_pulled(remote, local):
                    self.agreed.append(entry.version)
                    return False
                if expected is not None and entry.version != expected:
                    raise self._refuse(f"version {entry.version}")
                if remote.version > local.version:
                    raise _newer(remote, local)
        if expected is not None and (entry is None or entry.version != expected):
            raise self._refuse(f"version {entry.version}" if entry is not None else "deleted")
        cas = expected if expected is not None else check_and_set(self.known, entry)
        local = issued.stamp(self.tree.config_dir, layout.vault, local, remote)
        try:
            self.agreed.append(layout.save_lineage(local, cas=cas))
        except VaultConflict:
            # A winner who saved exactly our lineage (updated_at aside) loses
            # nothing of ours, nor of a renewer that took over: fenced or not.
            winner = layout.winner(layout.path("certificates", name), cas)
            remote = _lineage_or_none(layout, name, winner)
            if remote is not None and remote.same_content(local):
                self.agreed.append(remote.kv_version)
                return False
            now = None if winner is None else winner.version
            if expected is not None:
                raise self._refuse(f"version {now}" if now is not None else "deleted") from None
            if remote is not None and remote.version > local.version:
                raise _newer(remote, local) from None
            raise lost_race(layout.where("certificates", name), cas, now) from None
        return True


def _lineage_or_none(layout: Layout, name: str,
                     entry: Optional[KVEntry]) -> Optional[LineageRecord]:
    if entry is None:
        return None
    try:
        return LineageRecord.from_kv(name, entry, layout.where("certificates", name))
    except RecordError:
        return None


def _newer(remote: LineageRecord, local: LineageRecord) -> RecordError:
    return RecordError(
        f"Vault holds version {remote.version} of {local.name}, newer than this machine's "
        f"{local.version}: run `certbot-kvault pull {local.name}` instead of pushing.")


# ---- pending marks -----------------------------------------------------------


def finish_pending(tree: Tree, layout: Layout, workers: int = DEFAULT_WORKERS) -> Report:
    """Complete pushes that a failed deploy hook left behind (lineages that still exist)."""
    names = pending.owed(tree)
    for gone in set(pending.names(tree)) - set(names):
        pending.clear(tree, gone)
    if not names:
        return Report()
    logger.info("Completing %d pending push(es): %s", len(names), ", ".join(names))
    return push(tree, layout, names, workers=workers)
