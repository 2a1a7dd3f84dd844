"""What this config dir last synced with Vault: ``<config-dir>/kvault/synced.json``.

So that a push of an unchanged fleet reads nothing back. For each lineage and
account that a pull or push left equal on both sides, the manifest keeps the KV
version Vault held then (KV v2; none on KV v1) and a SHA-256 fingerprint of the
content as it was on disk. A push skips what still has that fingerprint, and
writes what differs with check-and-set against the recorded version, so a
change someone else made in Vault meanwhile is caught (sync/push.py).

A lineage's fingerprint covers everything ``Tree.read_lineage`` reads: the
renewal conf's bytes, the ``live/`` links' targets and every file of its
archive dir (contents, never modification times). A conf whose paths are not
the ones pull writes (``portable.has_paths``) has no fingerprint: the
files it names could be anywhere, so that lineage is always read back; nor has
a lineage just pulled whose conf holds a setting of this machine's own
(``trust.holds_untrusted``). An account's is its record as push sends it.

A Vault restored from an older snapshot holds lower KV versions than the
manifest. A pull compares each record it reads; a push, which reads nothing of
an unchanged lineage, first asks the KV version of the newest record this dir
synced (``newest``: the one written last here, or pulled with the latest
``updated_at``): lower than recorded, Vault went back, and the push compares
every record as with no manifest, writing back what this dir holds newer
(check-and-set against Vault's current version). Nothing is silently
``unchanged``, and the way out is a push.

The file holds hashes and version numbers only (no key, no token), is written
atomically with mode 0600, and belongs to one Vault address, namespace, mount
and prefix (itself kept as a hash): a manifest that is missing, unreadable,
malformed or of another Vault counts as empty, and push then reads every
record back as it did before there was one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable, Optional

from certbot_kvault._internal.store.records import (
    AccountRecord,
    RecordError,
    validate_name,
)
from certbot_kvault._internal.store.timefmt import parse_time
from certbot_kvault._internal.tree import confs, portable, trust
from certbot_kvault._internal.tree.files import atomic_write, make_dirs
from certbot_kvault._internal.tree.storage import Tree, Written
from certbot_kvault._internal.vault.client import KVEntry
from certbot_kvault._internal.vault.errors import VaultPermissionDenied
from certbot_kvault._internal.vault.settings import VaultSettings

if TYPE_CHECKING:
    from certbot_kvault._internal.store.layout import Layout

logger = logging.getLogger(__name__)

MANIFEST = os.path.join("kvault", "synced.json")
FORMAT = 1
LINEAGES, ACCOUNTS = "lineages", "accounts"
_HEX = frozenset("0123456789abcdef")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One record as last synced: Vault's KV version then, and the local content's hash."""

    version: Optional[int]
    fingerprint: str


def vault_id(settings: VaultSettings) -> str:
    """Which KV tree a manifest is about (a hash: the address may hold a user name)."""
    what = [settings.addr.rstrip("/"), settings.namespace or "", settings.mount,
            settings.prefix]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()


def account_key(server_path: str, account_id: str) -> str:
    return f"{server_path}/{account_id}"


def account_fingerprint(record: AccountRecord) -> str:
    return hashlib.sha256(json.dumps(record.to_kv(), sort_keys=True).encode()).hexdigest()


def check_and_set(known: Optional[Entry], read: Optional[KVEntry]) -> Optional[int]:
    """What a push writes a changed record against: the KV version last synced while
    Vault holds the record (so a change made there since is a lost race), else the
    version just read (0: must not exist; also when Vault went back below the one
    synced: what it holds now is what the write replaces)."""
    if read is None:
        return 0
    if known is None or known.version is None or went_back(known, read):
        return read.version
    return known.version


def went_back(known: Optional[Entry], read: Optional[KVEntry]) -> bool:
    """Whether Vault holds a lower KV version of a record than this dir last synced."""
    return (known is not None and known.version is not None and read is not None
            and read.version is not None and read.version < known.version)


def went_back_line(where: str, now: Optional[int], synced: int) -> str:
    """The start of what pull and push say when Vault went back in time."""
    return (f"Vault went back in time: {where} is at KV version {now}, this config dir last "
            f"synced version {synced} (restored from an older snapshot, or deleted and "
            "written again?)")


def _when(value: object) -> Optional[float]:
    """A record's ``updated_at`` as a timestamp, no later than now (None if unusable)."""
    try:
        when = parse_time(value)
    except (ValueError, OverflowError):
        return None
    return None if when is None else min(when, time.time())


def lineage_fingerprint(tree: Tree, name: str, pulled: bool = False,
                        written: Optional[Written] = None) -> Optional[str]:
    """The hash of a lineage as it is on disk now; None if it cannot be told from its
    standard places (then it is never skipped).

    ``pulled``: also None when its conf holds a setting that pull kept from this
    machine's own conf (a hook, say): Vault lacks it, so the two sides differ and
    the next push must compare them. ``written``: what ``Tree.write_lineage`` just
    wrote; when that is the whole lineage (a new archive dir), it is hashed instead of
    read back. Should the disk hold more (an admin's link in live/), the hashes differ
    and the next push compares: a needless read, never a wrong skip.
    """
    archive, live = tree.archive_dir(name), tree.live_dir(name)
    whole = written if written is not None and written.files is not None else None
    try:
        if whole is not None:
            conf = whole.conf
        else:
            with open(tree.renewal_conf_path(name), "rb") as f:
                conf = f.read()
        try:
            parsed = confs.parse_bytes(conf)
        except confs.ConfError:
            return None
        if not portable.has_paths(parsed, archive_dir=archive, live_dir=live) or \
                (pulled and trust.holds_untrusted(parsed, tree.trust_vault_hooks)):
            return None
        if whole is not None and whole.files is not None:
            links = sorted(whole.links.items())
            files = sorted(whole.files.items())
        else:
            with os.scandir(live) as entries:
                links = sorted((e.name, os.readlink(e.path)) for e in entries
                               if e.is_symlink())
            with os.scandir(archive) as entries:
                paths = sorted((e.name, e.path) for e in entries if e.is_file())
            files = []
            for file, path in paths:
                with open(path, "rb") as f:
                    files.append((file, f.read()))
    except OSError:
        return None
    digest = hashlib.sha256()

    def add(*parts: bytes) -> None:
        for part in parts:  # length-prefixed: no two file sets hash alike
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)

    add(b"conf", conf)
    for link, target in links:
        add(b"link", os.fsencode(link), os.fsencode(target))
    for file, data in files:
        add(b"file", os.fsencode(file), data)
    return digest.hexdigest()


class Manifest:
    """The manifest of one config dir for one Vault; safe to use from the push workers."""

    def __init__(self, tree: Tree, settings: VaultSettings, ignored: bool = False) -> None:
        """``ignored``: ``get`` knows nothing (push --force compares everything), while
        what is noted and kept is saved as ever."""
        self.path = os.path.join(tree.config_dir, MANIFEST)
        self._ignored = ignored
        self.vault = vault_id(settings)
        self._entries: dict[str, dict[str, Entry]] = {LINEAGES: {}, ACCOUNTS: {}}
        # (lineage, KV version, when that version was made): the newest this dir knows.
        self._newest: Optional[tuple[str, int, float]] = None
        self._back: list[tuple[str, Optional[int], int]] = []  # (lineage, now, synced)
        self._kept: set[str] = set()  # lineages a pull left alone because Vault went back
        self._changed = False
        self._mutex = threading.Lock()
        try:
            with open(self.path, encoding="utf-8") as f:
                doc = json.load(f)
            if isinstance(doc, dict) and doc.get("format") == FORMAT \
                    and doc.get("vault") == self.vault:
                for kind, entries in self._entries.items():
                    entries.update(_entries(doc.get(kind)))
                self._newest = _newest(doc.get("newest"))
        except (OSError, ValueError) as e:
            if not isinstance(e, FileNotFoundError):
                logger.debug("%s not used (%s): every record is read back", self.path, e)

    def get(self, kind: str, key: str) -> Optional[Entry]:
        if self._ignored:
            return None
        with self._mutex:
            return self._entries[kind].get(key)

    def note(self, kind: str, key: str, version: Optional[int],
             fingerprint: Optional[str], made: object = None) -> None:
        """``key`` is now equal on both sides (Vault at ``version``, made at ``made``: a
        timestamp, or a record's ``updated_at``, if known); no fingerprint: forget it."""
        when = made if isinstance(made, float) else _when(made)
        with self._mutex:
            newest = self._newest
            # The latest made; of two made in the same second, the last by name.
            later = when is not None and (newest is None
                                          or (when, key) >= (newest[2], newest[0]))
            # Another version of the newest one, made at an unknown time: none is known.
            moved = newest is not None and newest[0] == key and newest[1] != version
            if kind == LINEAGES and version is not None and (later or moved):
                new = None if when is None else (key, version, when)
                self._changed = self._changed or new != newest
                self._newest = new
        if fingerprint is None:
            self.forget(kind, key)
            return
        entry = Entry(version, fingerprint)
        with self._mutex:
            if self._entries[kind].get(key) != entry:
                self._entries[kind][key] = entry
                self._changed = True

    def settle(self, kind: str, key: str,
               agreed: Optional[tuple[Optional[int], Optional[str]]],
               wrote: bool = False) -> None:
        """After a push of ``key``: both sides equal at (version, fingerprint), or not
        known to be (None: the next push compares it with Vault); ``wrote``: this push
        made that version, just now (to the fraction of a second: later than whatever
        this dir pulled, which records carry in whole seconds)."""
        if agreed is None:
            self.forget(kind, key)
        else:
            self.note(kind, key, *agreed, made=time.time() if wrote else None)

    def check_newest(self, layout: Layout) -> list[str]:
        """Before a push: is the newest lineage this dir synced at a lower KV version in
        Vault now? Then the manifest is not trusted for this push (every record is
        compared); the warning line to print, if so."""
        if self._newest is None or not layout.versioned:
            return []
        name, synced, _ = self._newest
        try:
            now = layout.lineage_version(name)
        except VaultPermissionDenied:
            # A token that may not read version numbers (a renewer policy older than
            # this check): the lineages this push reads are still compared.
            logger.debug("cannot tell whether Vault went back: no read on %s's metadata", name)
            return []
        if now is None or now >= synced:
            return []  # deleted since (`rm`), or not gone back: nothing to tell
        with self._mutex:
            for entries in self._entries.values():
                entries.clear()
            self._newest = None
            self._changed = True
        return [f"warning: {went_back_line(layout.where('certificates', name), now, synced)}"
                ": this push compares every record with Vault and writes back what this dir "
                "holds newer"]

    def behind(self, key: str, entry: KVEntry, where: str) -> Optional[str]:
        """Why a pull must not take a lineage that Vault holds at a lower KV version than
        this dir synced (None if it may): this dir's copy may be all that is left."""
        known = self.get(LINEAGES, key)
        if not went_back(known, entry):
            return None
        assert known is not None and known.version is not None
        with self._mutex:
            self._kept.add(key)  # a failed pull forgets a lineage; this one stays known
        return (f"{went_back_line(where, entry.version, known.version)}: this dir's copy is "
                f"kept; `certbot-kvault push {key}` writes it back to Vault.")

    def gone_back(self, key: str, known: Optional[Entry], read: Optional[KVEntry]) -> None:
        """Note a lineage that a push read below the KV version synced here, if so."""
        if went_back(known, read):
            assert known is not None and known.version is not None and read is not None
            with self._mutex:
                self._back.append((key, read.version, known.version))

    def gone_back_line(self, layout: Layout) -> Optional[str]:
        """One warning line for the lineages ``gone_back`` noted, if any."""
        if not self._back:
            return None
        key, now, synced = sorted(self._back)[0]
        more = f" ({len(self._back)} lineages)" if len(self._back) > 1 else ""
        return (f"warning: {went_back_line(layout.where('certificates', key), now, synced)}"
                f"{more}: this push wrote back what this dir holds newer")

    def forget(self, kind: str, key: str) -> None:
        with self._mutex:
            if kind == LINEAGES and key in self._kept:
                return
            if self._entries[kind].pop(key, None) is not None:
                self._changed = True

    def save(self) -> Optional[str]:
        """Write it if anything changed; a warning line if it could not be written."""
        with self._mutex:
            if not self._changed:
                return None
            doc: dict[str, object] = {
                "format": FORMAT, "vault": self.vault,
                **{kind: {k: [e.version, e.fingerprint] for k, e in sorted(entries.items())}
                   for kind, entries in self._entries.items()}}
            if self._newest is not None:
                doc["newest"] = list(self._newest)
            self._changed = False
        try:
            make_dirs(os.path.dirname(self.path), 0o700)
            atomic_write(self.path, json.dumps(doc, indent=0).encode(), 0o600)
        except OSError as e:
            return (f"warning: could not record what was synced in {self.path} "
                    f"({e.strerror or e}); the next push reads every record back.")
        return None


def _entries(raw: object) -> dict[str, Entry]:
    """The well-formed entries of one kind; anything else is dropped (read back)."""
    out: dict[str, Entry] = {}
    if not isinstance(raw, dict):
        return out
    for key, value in raw.items():
        if isinstance(key, str) and isinstance(value, list) and len(value) == 2:
            version, fingerprint = value
            if (version is None or (type(version) is int and version > 0)) \
                    and isinstance(fingerprint, str) and len(fingerprint) == 64 \
                    and set(fingerprint) <= _HEX:
                out[key] = Entry(version, fingerprint)
    return out


def _newest(raw: object) -> Optional[tuple[str, int, float]]:
    """The manifest's ``newest``, if well-formed."""
    if not isinstance(raw, list) or len(raw) != 3:
        return None
    name, version, when = raw
    try:
        validate_name(name)
    except RecordError:
        return None
    if type(version) is not int or version < 1 or type(when) not in (int, float):
        return None
    return name, version, float(when)


class Listed:
    """Whether Vault lists a key, asked once per run (one LIST for the whole fleet): a
    record deleted from Vault, or a Vault rebuilt empty, gets this machine's copy again."""

    def __init__(self, keys: Callable[[], Iterable[str]]) -> None:
        self._keys = keys
        self._known: Optional[frozenset[str]] = None
        self._mutex = threading.Lock()

    def __call__(self, key: str) -> bool:
        with self._mutex:
            if self._known is None:
                try:
                    self._known = frozenset(self._keys())
                except VaultPermissionDenied:
                    # A token that may not list: read each record back, as before.
                    self._known = frozenset()
            return key in self._known
