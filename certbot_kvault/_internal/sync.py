"""Moving certbot state between the config dir and Vault.

pull: Vault -> layout -> tree.  push: tree -> layout -> Vault. Both work lineage by
lineage in a bounded thread pool over the client's kept-alive connections, holding at
most a window of records in memory: 10 000 lineages cost time in proportion, not memory.

A bad record (corrupt PEM, key/cert mismatch, hostile name, lost check-and-set race,
denied path) fails alone and is reported; a Vault that is down, sealed or refuses our
token stops the whole run at the first request. Nothing is ever half-written: a lineage
is one Vault secret, and on disk its renewal conf is written last.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Collection, Optional

import requests
from certbot import errors

from certbot_kvault._internal import confs, issued, pending, renewal_conf, trust
from certbot_kvault._internal.errors import (
    VaultAuthError,
    VaultConflict,
    VaultError,
    VaultNotFound,
    VaultSealed,
    VaultUnreachable,
    VaultUnsupported,
    is_transient,
    lost_race,
)
from certbot_kvault._internal.files import describe
from certbot_kvault._internal.jobs import DEFAULT_WORKERS as DEFAULT_WORKERS
from certbot_kvault._internal.jobs import Fetched, run_reports, run_reports_fetched
from certbot_kvault._internal.jobs import Report as Report
from certbot_kvault._internal.jobs import Tick as Tick
from certbot_kvault._internal.jobs import parallel as parallel
from certbot_kvault._internal.layout import Layout
from certbot_kvault._internal.records import (
    AccountRecord,
    LineageRecord,
    RecordError,
    server_path_for_url,
    validate_name,
)
from certbot_kvault._internal.synced import (
    ACCOUNTS,
    LINEAGES,
    Listed,
    Manifest,
    account_fingerprint,
    account_key,
    as_pulled,
    check_and_set,
    lineage_fingerprint,
)
from certbot_kvault._internal.tree import Tree, TreeError, Written
from certbot_kvault._internal.vault import KVEntry

logger = logging.getLogger(__name__)

# Errors that mean "Vault as a whole is not usable": stop at once.
FATAL = (VaultUnreachable, VaultSealed, VaultAuthError, VaultNotFound, VaultUnsupported)


def _outcome(item: str, fn: Callable[[], Optional[bool]]) -> Report:
    """One item's work: True written, False unchanged; a bad record or a local OSError fails it."""
    report = Report()
    try:
        changed = fn()
    except FATAL:
        raise
    except (RecordError, TreeError, VaultError, errors.PluginError, OSError) as e:
        if is_transient(e) or isinstance(e, requests.RequestException):
            raise  # Vault itself answers 5xx: as FATAL, for the caller to retry
        logger.debug("%s failed: %s", item, e)
        report.failed.append((item, describe(e) if isinstance(e, OSError) else str(e)))
        return report
    (report.written if changed else report.unchanged).append(item)
    return report


# ---- pull ------------------------------------------------------------------


def pull(tree: Tree, layout: Layout, names: Optional[list[str]] = None,
         workers: int = DEFAULT_WORKERS, kvault_bin: Optional[str] = None,
         accounts: bool = True, used_accounts_only: bool = False, progress: Tick = None) -> Report:
    """Rebuild the config dir from Vault: accounts, then the named (or all) lineages.

    ``used_accounts_only``: pull only the accounts the pulled lineages' renewal
    confs name (renewing), since with several accounts for one server and
    ``--server`` on certbot's command line certbot asks which one to use.
    """
    layout.vault.login()  # once, before the workers: a refused login stops everything
    tree.ensure_base()
    tree.remove_leftovers()  # before the workers, whose temp files it would take
    report = Report()
    manifest = Manifest(tree, layout.vault.settings)
    if accounts and not used_accounts_only:
        report.merge(run_reports((f"{s}\0{i}" for s, i in layout.list_accounts()),
                                 lambda key: _pull_account(tree, layout, *key.split("\0"),
                                                           manifest=manifest), workers))
    wanted = names if names is not None else layout.list_lineages()
    asking = renewal_conf.profile_asks()  # one warning for all lineages, not one each
    report.merge(run_reports_fetched(
        wanted, layout.read_lineage_raw,
        lambda name, entry: _pull_lineage(tree, layout, name, entry, manifest, asking),
        workers, progress))
    if asking:
        report.warnings.append(renewal_conf.profiles_ignored_warning(asking))
    if accounts and used_accounts_only:
        used = _used_accounts(tree, report.done("lineage"))
        if used is None:  # a lineage without account/server: certbot may need any of them
            used = {(s, i): [] for s, i in layout.list_accounts()}
        users = {f"{s}\0{i}": (s, i, lineages) for (s, i), lineages in used.items()}

        def pull_used(key: str) -> Report:
            server_path, account_id, lineages = users[key]
            return _pull_account(tree, layout, server_path, account_id, used_by=lineages,
                                 manifest=manifest)

        report.merge(run_reports(sorted(users), pull_used, workers))
    report.warnings += filter(None, [manifest.save()])
    tree.install_hook(kvault_bin)
    return report


def _used_accounts(tree: Tree,
                   names: Collection[str]) -> Optional[dict[tuple[str, str], list[str]]]:
    """(server path, account id) -> the lineages whose renewal conf names it; None if one
    names no account or server."""
    used: dict[tuple[str, str], list[str]] = {}
    for name in sorted(names):
        try:
            conf = confs.parse_file(tree.renewal_conf_path(name))
            params = conf.get("renewalparams", {})
            account, server = params.get("account"), params.get("server")
            if not (account and server and isinstance(account, str) and isinstance(server, str)):
                return None
            used.setdefault((server_path_for_url(server), account), []).append(name)
        except (OSError, confs.ConfError, RecordError):
            return None
    return used


def _pull_account(tree: Tree, layout: Layout, server_path: str, account_id: str,
                  *, used_by: Optional[list[str]] = None, manifest: Manifest) -> Report:
    def work() -> bool:
        record = layout.load_account(server_path, account_id)
        where = layout.where('accounts', server_path, account_id)
        if record is None and used_by:
            raise RecordError(f"lineage {', '.join(used_by)} uses ACME account {account_id}, "
                              f"which is not in Vault ({where}); its renewal will fail.")
        if record is None:
            raise RecordError(f"{where} vanished while pulling.")
        changed = tree.write_account(record)
        manifest.note(ACCOUNTS, account_key(server_path, account_id), record.kv_version,
                      account_fingerprint(record))
        return changed

    return _outcome(f"account {account_id}", work)


def _pull_lineage(tree: Tree, layout: Layout, name: str, fetched: Fetched[Optional[KVEntry]],
                  manifest: Manifest,
                  asking: Optional[list[tuple[str, str, str]]] = None) -> Report:
    warnings: list[str] = []
    pulled: Optional[KVEntry] = None
    written: Optional[Written] = None

    def work() -> bool:
        nonlocal pulled, written
        entry = fetched.get()
        record = None if entry is None else \
            LineageRecord.from_kv(name, entry, layout.where("certificates", name))
        if record is None or entry is None:
            raise RecordError(f"No lineage {name} in Vault ({layout.where('certificates', name)}"
                              "); see `certbot-kvault list`.")
        if behind := manifest.behind(name, entry, layout.where("certificates", name)):
            raise RecordError(behind)
        local = tree.current_version(name)
        if local is not None and local > record.version:
            # Newer here than in Vault: a renewal that never reached Vault.
            # Pulling would point live/ back at the old certificate.
            raise RecordError(f"Lineage {name} is at version {local} here but {record.version} "
                              f"in Vault: run `certbot-kvault push {name}` first.")
        written = tree.write_lineage(record, layout.where("certificates", name))
        if written.ignored:
            warnings.append(trust.warning(name, written.ignored))
        if asking is not None and (profile := renewal_conf.profile_asked(record.renewal)):
            asking.append((name, *profile))
        pulled = entry
        return written.changed

    report = _outcome(f"lineage {name}", work)
    report.warnings += warnings
    if pulled is not None and pulled.version is not None:
        report.versions[name] = pulled.version
    # A lineage pulled whole is as Vault has it; any other is compared by the next push.
    if written is not None and pulled is not None and not warnings:
        manifest.note(LINEAGES, name, pulled.version, lineage_fingerprint(
            tree, name, pulled=True, written=written), pulled.data.get("updated_at"))
    else:
        manifest.forget(LINEAGES, name)
    return report


# ---- push ------------------------------------------------------------------


def push(tree: Tree, layout: Layout, names: Optional[list[str]] = None,
         workers: int = DEFAULT_WORKERS, accounts: bool = True, force: bool = False,
         expected: Optional[dict[str, int]] = None, progress: Tick = None) -> Report:
    """Write local accounts and the named (or all) lineages to Vault; only what changed.

    Unchanged since the last pull or push (synced.py): not even read. Changed: written
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

    report = _outcome(f"account {account_id}", work)
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

        report = _outcome(f"lineage {self.name}", work)
        if self.local is None:  # unchanged, or failed here: nothing to ask Vault
            self.done = self._settled(report)
        return self

    def vault_half(self) -> Report:
        if self.done is not None:
            return self.done
        return self._settled(_outcome(f"lineage {self.name}", self._write))

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
                local = dataclasses.replace(local, renewal=renewal_conf.kept_profiles(
                    local.renewal, remote.renewal))
                if remote.same_content(local) or as_pulled(self.tree, remote, local):
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
