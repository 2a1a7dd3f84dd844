"""Lease locks in Vault KV v2, so that several renewers never order the same certificate twice.

A lock is the secret ``<prefix>/locks/<name>`` with two fields::

    owner        who holds it ("host:pid:random", unique per process)
    expires_at   RFC 3339 UTC; past that instant anyone may take the lock over
    acquired_at  RFC 3339 UTC, when the holder took it (an extension of the lock
                 fields in docs/DESIGN.md: a renewer that waited skips what the
                 holder renewed since)

Every change is a KV v2 check-and-set write, so of two renewers racing for a
lock exactly one wins:

- take a free lock: write with ``cas=0`` (the secret must not exist);
- take over a stale lock (``expires_at`` in the past): write with ``cas`` = the
  version just read, so of two renewers that both saw it stale, one wins;
- keep it: a daemon thread rewrites ``expires_at`` every ttl/3, again with
  ``cas`` = the version we wrote last (a lost CAS means the lock was taken
  over, and the holder is told through :attr:`Locks.lost`);
- release it: write a released record (no owner, ``expires_at`` in the
  past) with ``cas`` = the version we hold. One atomic step: if the lock was
  taken over meanwhile, the version moved on and the write is refused, so we
  never free someone else's lock. The next taker overwrites the released
  record with ``cas`` = its version, as it does a stale one.

Every read and write of a lock goes to the HA cluster's active node
(``VaultClient.at_leader``): a standby that answers reads itself (OpenBao's
default) would show a lock as it was a moment ago, so a renewer could miss
a lock another one just took through another node, or name a former
holder as the winner of a race it lost. Writes reach the active node anyway
(standbys forward them), so check-and-set is decided there.

The design follows caddy-vault-storage: ``cas=0`` to create, an expiry
inside the entry, a loser that retries after a pause. Clocks: ``expires_at``
is compared with this machine's clock, so renewers' clocks must agree to
well within the TTL (NTP does that).

A lock is data from Vault like any record (``LockInfo``, the record as read): a
holder writes an ``expires_at`` at most its ``--lock-ttl`` ahead (``MAX_TTL`` at
most), so one further out than that plus ``CLOCK_SKEW``, or one that is no time at
all, was written by no holder: it is stale (``implausible``), taken over at once,
with one line naming the lock and its owner (a planted ``9999-12-31`` must not stop
every renewal while each run exits 0). Values from the record are printed escaped.

KV v1 has no check-and-set: locking there would be a race, so :class:`Locks`
refuses it with a sentence saying locking needs KV v2.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
import random
import secrets
import socket
import threading
import time
from typing import Any, Callable, Optional

from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.store.records import RecordError
from certbot_kvault._internal.store.timefmt import CLOCK_SKEW, floor_time, format_time, parse_time
from certbot_kvault._internal.vault.client import VaultClient
from certbot_kvault._internal.vault.errors import VaultConflict, VaultError, VaultUnsupported
from certbot_kvault._internal.vault.redact import printable

logger = logging.getLogger(__name__)

DEFAULT_TTL = 300
MIN_TTL = 2
MAX_TTL = 3600  # renewed every TTL/3: a longer lease only stalls the fleet after a crash


@dataclasses.dataclass
class LockInfo:
    """A lock as read from Vault."""

    name: str
    path: str
    owner: str
    expires_at: Optional[float]
    version: Optional[int]
    acquired_at: Optional[float] = None
    bad_expiry: Optional[str] = None   # the expires_at text, when it is no time at all

    @property
    def released(self) -> bool:
        """A record its holder released (no owner): free, kept only for its version."""
        return not self.owner

    def expired(self, now: Optional[float] = None) -> bool:
        # A released lock is free whatever expiry it shows, and one without a readable
        # expiry is garbage: anyone may take either.
        when = time.time() if now is None else now
        return self.released or self.expires_at is None or self.expires_at <= when \
            or self.implausible(when)

    def implausible(self, now: float) -> bool:
        """Held, with an expiry no holder writes: beyond the longest lease, or no time."""
        return not self.released and (self.bad_expiry is not None if self.expires_at is None
                                       else self.expires_at > now + MAX_TTL + CLOCK_SKEW)

    def stale_line(self) -> str:
        until = printable(self.bad_expiry or format_time(self.expires_at or 0), 64)
        return (f"warning: lock {self.name} ({self.path}) held by {printable(self.owner, 100)} "
                f"expires at {until}, more than the longest lock lease ({MAX_TTL} s) ahead or "
                "no time at all: taken as stale (a clock far off, or a planted lock)")

    @classmethod
    def from_entry(cls, name: str, path: str, data: dict[str, Any],
                   version: Optional[int]) -> LockInfo:
        """The lock as its record in Vault says (never raises: anyone may have written it)."""
        raw = data.get("expires_at")
        expires_at = parse_time(raw)
        return cls(name=name, path=path, owner=str(data.get("owner") or ""),
                   expires_at=expires_at, version=version,
                   acquired_at=parse_time(data.get("acquired_at")),
                   bad_expiry=None if expires_at is not None or not raw else str(raw))

    def describe(self) -> str:
        until = format_time(self.expires_at) if self.expires_at is not None else "?"
        return f"held by {printable(self.owner, 100) or '?'} until {until} ({self.path})"


GLOBAL_LOCK = "renew"
LINEAGE_LOCK_PREFIX = "lineage-"

_PROCESS_OWNER: Optional[str] = None
# What a released lock holds: no owner, an expiry long past.
_RELEASED = {"owner": "", "expires_at": "1970-01-01T00:00:00Z", "acquired_at": ""}


def process_owner() -> str:
    """This process's lock owner id: host name, pid and a random part (pids get reused)."""
    global _PROCESS_OWNER
    if _PROCESS_OWNER is None:
        host = (socket.gethostname() or "unknown-host").split(".")[0]
        _PROCESS_OWNER = f"{host}:{os.getpid()}:{secrets.token_hex(3)}"
    return _PROCESS_OWNER


def lineage_lock(name: str) -> str:
    return LINEAGE_LOCK_PREFIX + name


@dataclasses.dataclass
class _Held:
    version: int
    expires_at: float
    acquired_at: float


class Locks:
    """The lease locks this process holds, kept alive by one daemon thread.

    Use as a context manager: every lock still held is released on exit.
    """

    def __init__(self, layout: Layout, ttl: float = DEFAULT_TTL, owner: Optional[str] = None,
                 clock: Callable[[], float] = time.time,
                 notify: Optional[Callable[[str], None]] = None) -> None:
        if not MIN_TTL <= ttl <= MAX_TTL:
            raise ValueError(f"lock TTL must be from {MIN_TTL} to {MAX_TTL} seconds")
        vault = layout.vault
        if vault.kv_version != 2:
            raise VaultUnsupported(
                f"Locking needs a KV v2 mount (check-and-set), but '{vault.mount}' is KV v1: "
                "run `renew` against a KV v2 mount (KVAULT_MOUNT / --mount), or use "
                "`certbot-kvault run -- renew` where a single scheduler guarantees one renewer.")
        self.layout = layout
        self.vault = vault
        self.ttl = float(ttl)
        self.owner = owner or process_owner()
        self._clock = clock
        self._notify = notify or (lambda line: logger.warning("%s", line))  # stale_line()
        self._held: dict[str, _Held] = {}
        self._lost: dict[str, str] = {}
        self._mutex = threading.Lock()
        # Serialises renew() and release() so a release never races a renewal
        # of the same lock (which would leave it orphaned until it expires).
        self._io = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ---- reading ------------------------------------------------------------

    def path(self, name: str) -> str:
        return self.layout.lock_path(name)

    def where(self, name: str) -> str:
        return self.vault.api_path(self.path(name))

    def read(self, name: str) -> Optional[LockInfo]:
        """The lock as it is in Vault now (None if free, released included)."""
        info = self._read_any(name)
        if info is None or info.released:
            return None
        return info

    def _read_any(self, name: str) -> Optional[LockInfo]:
        """The lock record, a released one included (its version is what a taker CASes on)."""
        with self.vault.at_leader():
            entry = self.vault.read(self.path(name))
        if entry is None:
            return None
        return LockInfo.from_entry(name, self.where(name), entry.data, entry.version)

    def _stale(self, info: LockInfo, now: float) -> bool:
        """Whether another's lock may be taken over now (an implausible one is said)."""
        if info.implausible(now):
            self._notify(info.stale_line())
        return info.expired(now)

    def names(self) -> list[str]:
        """The names of the lock records in Vault (released ones included); a key that is
        no valid lock name (anyone may write below locks/) is no lock of ours."""
        folder = posixpath.dirname(self.path(GLOBAL_LOCK))
        with self.vault.at_leader():
            keys = self.vault.list_keys(folder)
        return [k for k in keys if not k.endswith("/") and _valid(self.layout, k)]

    def held_by_other(self, name: str) -> Optional[LockInfo]:
        """The lock if someone else holds it (not expired), else None."""
        info = self.read(name)
        if info is None or info.owner == self.owner or self._stale(info, self._clock()):
            return None
        return info

    # ---- taking ---------------------------------------------------------------

    def _record(self, expires_at: float, acquired_at: float) -> dict[str, str]:
        return {"owner": self.owner, "expires_at": format_time(expires_at),
                "acquired_at": floor_time(acquired_at)}

    def try_acquire(self, name: str) -> Optional[LockInfo]:
        """Take ``name`` if free or stale. None on success, else who holds it."""
        with self.vault.at_leader():
            return self._try_acquire(name)

    def _try_acquire(self, name: str) -> Optional[LockInfo]:
        path = self.path(name)
        now = self._clock()
        info = self._read_any(name)
        if info is not None and info.owner != self.owner and not self._stale(info, now):
            return info
        if info is None:
            cas = 0
        else:
            cas = int(info.version or 0)
            if info.owner != self.owner and not info.released:
                logger.info("Taking over the stale lock %s (was %s)", name, info.describe())
        expires_at = now + self.ttl
        try:
            version = self.vault.write(path, self._record(expires_at, now), cas=cas)
        except VaultConflict:
            if info is None:
                # cas=0 failed although the read found nothing: either a racer
                # created it just now, or a soft-deleted version (`kv delete`)
                # is in the way. Only the second case is ours to fix.
                version = self._write_over_tombstone(name, expires_at, now)
                if version is None:
                    return self._winner(name)
            else:
                return self._winner(name)
        with self._mutex:
            self._held[name] = _Held(version=int(version or 0), expires_at=expires_at,
                                     acquired_at=now)
            self._lost.pop(name, None)
        self._start_keeper()
        logger.debug("Took lock %s until %s", name, format_time(expires_at))
        return None

    def _winner(self, name: str) -> LockInfo:
        """Who beat us to the lock. Where reads cannot be sent to the active node
        (see session.py), a standby may not have the winner's record yet (a lost
        check-and-set answer carries no X-Vault-Index to wait for), so look again
        for a moment before calling the holder unknown."""
        deadline = time.monotonic() + 2.0
        while True:
            info = self.read(name)
            if info is not None or time.monotonic() >= deadline:
                return info or self._unknown_holder(name)
            time.sleep(0.1)

    def _unknown_holder(self, name: str) -> LockInfo:
        # Lost a race to a holder that released again before we could read it.
        return LockInfo(name=name, path=self.where(name), owner="another renewer",
                        expires_at=self._clock(), version=None)

    def _write_over_tombstone(self, name: str, expires_at: float,
                              now: float) -> Optional[int]:
        """cas=0 lost but nothing readable: CAS against the deleted version, if that is it."""
        path = self.path(name)
        if self.vault.read(path) is not None:
            return None  # a racer created it: it is theirs
        current = _metadata_version(self.vault, path)
        if not current:
            return None
        try:
            return self.vault.write(path, self._record(expires_at, now), cas=current)
        except VaultConflict:
            return None

    def acquire(self, name: str, wait: float, pause: Optional[float] = None,
                on_wait: Optional[Callable[[LockInfo], None]] = None) -> Optional[LockInfo]:
        """Take ``name``, retrying for up to ``wait`` seconds.

        Returns None once held, or the holder as last seen when giving up.
        ``on_wait`` is called once, with the holder, when we first have to wait.
        """
        deadline = time.monotonic() + max(0.0, wait)
        base_pause = pause if pause is not None else min(5.0, max(0.5, self.ttl / 10))
        told = False
        while True:
            holder = self.try_acquire(name)
            if holder is None:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return holder
            if not told and on_wait is not None:
                on_wait(holder)
                told = True
            # Sleep a jittered pause, but never past the holder's expiry by much
            # nor past our deadline.
            delay = base_pause * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not crypto
            if holder.expires_at is not None:
                delay = min(delay, max(0.05, holder.expires_at - self._clock() + 0.05))
            time.sleep(max(0.05, min(delay, remaining)))

    # ---- keeping ------------------------------------------------------------

    def held(self) -> list[str]:
        with self._mutex:
            return sorted(self._held)

    def holds(self, name: str) -> bool:
        with self._mutex:
            return name in self._held

    @property
    def lost(self) -> dict[str, str]:
        """Locks taken from us while we held them: name -> why."""
        with self._mutex:
            return dict(self._lost)

    def _start_keeper(self) -> None:
        with self._mutex:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._keep, name="kvault-lock-keeper",
                                            daemon=True)
            self._thread.start()

    def _keep(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            for name in self.held():
                if self._stop.is_set():
                    return
                self.renew(name)

    def renew(self, name: str) -> bool:
        """Push ``name``'s expiry out by one TTL (check-and-set). False if it was lost."""
        with self._io, self.vault.at_leader():
            return self._renew(name)

    def _renew(self, name: str) -> bool:
        with self._mutex:
            held = self._held.get(name)
        if held is None:
            return False
        now = self._clock()
        expires_at = now + self.ttl
        try:
            version = self.vault.write(self.path(name),
                                       self._record(expires_at, held.acquired_at),
                                       cas=held.version)
        except VaultConflict:
            info = None
            try:
                info = self.read(name)
            except VaultError:
                pass
            why = info.describe() if info is not None else \
                f"free again ({self.where(name)}), released or deleted by someone else"
            self._mark_lost(name, f"lock {name} was taken over: now {why}")
            return False
        except VaultError as e:
            # Vault unreachable for a moment: try again next tick, unless the
            # lease has run out meanwhile (then anyone may have taken it).
            if now >= held.expires_at:
                self._mark_lost(name, f"lock {name} expired while Vault could not be "
                                      f"reached ({e})")
                return False
            logger.warning("Could not renew lock %s (%s); retrying", name, e)
            return True
        with self._mutex:
            if name in self._held:
                self._held[name] = _Held(version=int(version or 0), expires_at=expires_at,
                                         acquired_at=held.acquired_at)
        logger.debug("Renewed lock %s until %s", name, format_time(expires_at))
        return True

    def _mark_lost(self, name: str, why: str) -> None:
        logger.warning("%s", why)
        with self._mutex:
            self._held.pop(name, None)
            self._lost[name] = why

    # ---- releasing ------------------------------------------------------------

    def release(self, name: str) -> bool:
        """Mark ``name`` released if we still hold it (check-and-set). True if released."""
        with self._io, self.vault.at_leader():
            return self._release(name)

    def _release(self, name: str) -> bool:
        with self._mutex:
            held = self._held.pop(name, None)
        if held is None:
            return False
        try:
            self.vault.write(self.path(name), _RELEASED, cas=held.version)
        except VaultConflict:
            logger.warning("Lock %s was no longer ours at release (taken over)", name)
            return False
        except VaultError as e:
            logger.warning("Could not release lock %s (%s); it expires at %s", name, e,
                           format_time(held.expires_at))
            return False
        logger.debug("Released lock %s", name)
        return True

    def release_all(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.vault.settings.timeout + 5)
        for name in self.held():
            self.release(name)

    def __enter__(self) -> Locks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release_all()


def _valid(layout: Layout, name: str) -> bool:
    try:
        layout.lock_path(name)
    except RecordError:
        return False
    return True


def _metadata_version(vault: VaultClient, path: str) -> Optional[int]:
    """current_version from the secret's KV v2 metadata; None when unreadable."""
    try:
        return vault.current_version(path)
    except VaultError:
        return None
