"""pull: Vault -> layout -> records -> tree, lineage by lineage.

The reads run in a bounded thread pool over the client's kept-alive
connections, each read record handed in order to the calling thread, which
checks it and writes it (jobs.py): a fleet of 10 000 lineages costs time in
proportion, not memory. A bad record (corrupt PEM, key/cert mismatch, hostile
name, denied path) fails alone and is reported; a Vault that is down, sealed or
refuses our token stops the whole run at the first request. On disk a
lineage's renewal conf is written last, so certbot never sees half of one.
Each lineage pulled whole goes into the manifest (manifest.py) for the next push.
"""
from __future__ import annotations

from typing import Collection, Optional

from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.store.records import LineageRecord, RecordError, server_path_for_url
from certbot_kvault._internal.sync.jobs import (
    DEFAULT_WORKERS,
    Fetched,
    Report,
    Tick,
    outcome,
    run_reports,
    run_reports_fetched,
)
from certbot_kvault._internal.tree import portable, trust
from certbot_kvault._internal.tree.manifest import (
    ACCOUNTS,
    LINEAGES,
    Manifest,
    account_fingerprint,
    account_key,
    lineage_fingerprint,
)
from certbot_kvault._internal.tree.storage import Tree, Written
from certbot_kvault._internal.vault.client import KVEntry


def pull(tree: Tree, layout: Layout, names: Optional[list[str]] = None,
         workers: int = DEFAULT_WORKERS, accounts: bool = True,
         used_accounts_only: bool = False, progress: Tick = None) -> Report:
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
    asking = portable.profile_asks()  # one warning for all lineages, not one each
    report.merge(run_reports_fetched(
        wanted, layout.read_lineage_raw,
        lambda name, entry: _pull_lineage(tree, layout, name, entry, manifest, asking),
        workers, progress))
    if asking:
        report.warnings.append(portable.profiles_ignored_warning(asking))
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
    tree.install_hook()
    return report


def _used_accounts(tree: Tree,
                   names: Collection[str]) -> Optional[dict[tuple[str, str], list[str]]]:
    """(server path, account id) -> the lineages whose renewal conf names it; None if one
    names no account or server."""
    used: dict[tuple[str, str], list[str]] = {}
    for name in sorted(names):
        server, account = tree.conf_account(name)
        if server is None or account is None:
            return None
        try:
            used.setdefault((server_path_for_url(server), account), []).append(name)
        except RecordError:
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

    return outcome(f"account {account_id}", work)


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
        if asking is not None and (profile := portable.profile_asked(record.renewal)):
            asking.append((name, *profile))
        pulled = entry
        return written.changed

    report = outcome(f"lineage {name}", work)
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
