"""Which lock a renewer takes and which lineages it may renew under it.

``renew`` takes a lease lock first (see lock.py):

- without ``--due-within``: the global lock ``renew``, then everything is
  pulled and certbot decides what is due. Lineages that a ``--due-within``
  renewer holds (``lineage-<name>`` locks) are left to it.
- with ``--due-within DAYS``: one read per lineage (in parallel) finds those
  whose ``not_after`` falls inside the window; of those, each renewer takes
  the ``lineage-<name>`` locks it can get and renews only those, so several
  renewers (a Kubernetes Job with parallelism, several regions) share the
  work. A full run holding ``renew`` makes them wait (or exit 0).

A renewer that cannot get the lock within ``--lock-wait`` seconds exits 0
with one line saying who holds it and until when. One that waited and then
got the lock skips the lineages that the previous holder renewed meanwhile
(Vault's ``updated_at`` at or after the holder's ``acquired_at``), so even
``-- --force-renewal`` orders each certificate once.

The answer is a :class:`Plan`; the locks taken stay with the caller's
:class:`~certbot_kvault._internal.lock.Locks`. Nothing here prints: skips and
waits go to the caller's ``notify``.
"""
from __future__ import annotations

import dataclasses
import math
import posixpath
import random
import time
from typing import Any, Callable, Optional, Sequence

from certbot_kvault._internal import sync
from certbot_kvault._internal.layout import Layout
from certbot_kvault._internal.lock import (
    GLOBAL_LOCK,
    LINEAGE_LOCK_PREFIX,
    LockInfo,
    Locks,
    lineage_lock,
)
from certbot_kvault._internal.metrics import Metrics
from certbot_kvault._internal.settings import as_bool
from certbot_kvault._internal.timefmt import parse_time
from certbot_kvault._internal.vault import KVEntry

Notify = Callable[[str], None]


def _days_left(not_after: Any, now: float) -> Optional[float]:
    ts = parse_time(not_after)
    return None if ts is None else round((ts - now) / 86400, 3)


@dataclasses.dataclass
class Plan:
    """What this renewer may renew: ``names`` None = all of Vault; ``skip`` = exit 0 saying it."""

    names: Optional[list[str]] = None
    excluded: set[str] = dataclasses.field(default_factory=set)
    only: bool = False          # renew nothing but ``names`` (per-lineage locks)
    skip: Optional[str] = None
    locked_out: bool = False    # skipped because another renewer holds a lock


def read_all(layout: Layout, names: Sequence[str], workers: int) -> dict[str, KVEntry]:
    """The raw Vault entries of these lineages (in parallel); missing ones are left out."""
    out = {}
    for name, entry in sync.parallel(names, layout.read_lineage_raw, workers):
        if entry is not None:
            out[name] = entry
    return out


def busy_lineages(locks: Locks, workers: int) -> dict[str, LockInfo]:
    """Lineages whose lineage-<name> lock another renewer holds right now."""
    folder = posixpath.dirname(locks.path(GLOBAL_LOCK))
    keys = [k for k in locks.vault.list_keys(folder)
            if k.startswith(LINEAGE_LOCK_PREFIX) and not k.endswith("/")]
    busy = {}
    for key, info in sync.parallel(keys, locks.held_by_other, workers):
        if info is not None:
            busy[key[len(LINEAGE_LOCK_PREFIX):]] = info
    return busy


def _waiting_note(what: str, wait: float,
                  notify: Notify) -> tuple[Callable[[LockInfo], None], list[LockInfo]]:
    """An ``on_wait`` callback that says once that we wait, and the holders it saw."""
    told: list[LockInfo] = []
    started = time.time()

    def note(holder: LockInfo) -> None:
        if not told:
            if holder.acquired_at is None:
                # Holder unknown (it released before we could read it): count
                # what was renewed since we started asking as its work.
                holder = dataclasses.replace(holder, acquired_at=started)
            told.append(holder)
            notify(f"renew: {what} is {holder.describe()}; waiting up to {wait:g}s")
    return note, told


def plan_all(layout: Layout, locks: Locks, lock_wait: float, workers: int,
             notify: Notify) -> Plan:
    """Global lock; everything in Vault except what others hold or just renewed."""
    note, seen = _waiting_note("the lock", lock_wait, notify)
    holder = locks.acquire(GLOBAL_LOCK, wait=lock_wait, on_wait=note)
    if holder is not None:
        return Plan(skip=f"renew: another renewer is at work, not renewing now: the lock is "
                         f"{holder.describe()}.", locked_out=True)
    plan = Plan()
    busy = busy_lineages(locks, workers)
    for name, info in sorted(busy.items()):
        notify(f"renew: skipping {name}: its lock is {info.describe()}")
    plan.excluded |= set(busy)
    if seen:
        # We waited: leave alone what the previous holder renewed in the meantime.
        since = [h.acquired_at for h in seen if h.acquired_at is not None]
        cutoff = min(since) if since else time.time()
        entries = read_all(layout, layout.list_lineages(), workers)
        recent = {n for n, e in entries.items()
                  if (parse_time(e.data.get("updated_at")) or 0) >= math.floor(cutoff)}
        for name in sorted(recent - plan.excluded):
            notify(f"renew: skipping {name}: renewed by another renewer while we waited")
        plan.excluded |= recent
    if plan.excluded:
        plan.names = [n for n in layout.list_lineages() if n not in plan.excluded]
    return plan


def plan_due(layout: Layout, locks: Locks, lock_wait: float, due_within: float,
             metrics: Metrics, workers: int, notify: Notify) -> Plan:
    """Per-lineage locks on the lineages that expire within the window."""
    now = time.time()
    entries = read_all(layout, layout.list_lineages(), workers)
    metrics.checked = len(entries)
    window_end = now + due_within * 86400
    due = []
    for name, entry in entries.items():
        d = entry.data
        days = _days_left(d.get("not_after"), now)
        if days is not None:
            metrics.days_to_expiry[name] = days
        not_after = parse_time(d.get("not_after"))
        renewable = as_bool(d.get("auto_renewable", True))
        if renewable and (not_after is None or not_after <= window_end):
            due.append(name)
    if not due:
        return Plan(names=[], skip=f"renew: nothing expires within {due_within:g} days "
                                   f"({len(entries)} lineages checked).")
    deadline = time.monotonic() + lock_wait
    note, _seen = _waiting_note("a full renewal run holds the lock, which", lock_wait, notify)
    while True:
        random.shuffle(due)  # concurrent renewers start on different lineages
        taken: list[str] = []
        busy: dict[str, LockInfo] = {}
        for name in due:
            holder = locks.try_acquire(lineage_lock(name))
            if holder is None:
                taken.append(name)
            else:
                busy[name] = holder
        # Lineage locks first, then the global one: a full run that takes
        # `renew` after this check sees our lineage locks.
        full_run = locks.held_by_other(GLOBAL_LOCK)
        if full_run is None:
            break
        for name in taken:
            locks.release(lineage_lock(name))
        if time.monotonic() >= deadline:
            return Plan(skip=f"renew: a full renewal run is at work, not renewing now: the "
                             f"lock is {full_run.describe()}.", locked_out=True)
        note(full_run)
        time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
    for name, info in sorted(busy.items()):
        notify(f"renew: skipping {name}: its lock is {info.describe()}")
    if not taken:
        example = next(iter(sorted(busy.items())))
        return Plan(skip=f"renew: all {len(due)} lineages due within {due_within:g} days are "
                         f"being renewed by other renewers (e.g. {example[0]}: "
                         f"{example[1].describe()}).", locked_out=True)
    # Someone may have renewed one between our read and our lock: re-read.
    fresh = read_all(layout, taken, workers)
    names = []
    for name in taken:
        before, after = entries.get(name), fresh.get(name)
        if after is None or before is None or \
                after.data.get("updated_at") != before.data.get("updated_at"):
            locks.release(lineage_lock(name))
            notify(f"renew: skipping {name}: renewed by another renewer meanwhile")
            continue
        names.append(name)
    return Plan(names=sorted(names), excluded=set(entries) - set(names), only=True)
