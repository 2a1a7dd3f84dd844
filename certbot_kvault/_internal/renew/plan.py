"""Which lock a renewer takes and which lineages it renews under it.

First the rule (due.py, through status.py): every lineage's record and
renewal memory is read from Vault and certbot's own rule says which are due;
``--due-within DAYS`` replaces the rule by a window on ``not_after``; certbot
arguments ``--force-renewal`` or ``--dry-run`` make every lineage a candidate
(as they do for certbot) unless ``--due-within`` is given, ``--cert-name``
narrows to one. A due lineage in
failure backoff (state.py) is skipped with one line, unless ``--retry-now``
names it (or all). A lineage renewed less than a tenth of its lifetime ago
(the storm guard, status.py) is skipped with one line, unless certbot's
``--force-renewal`` is given. Only what is left is pulled and renewed; when
nothing is left, certbot is not started at all.

Then the locks (locks.py):

- by default the global lock ``renew``; lineages that a per-lineage renewer
  holds (``lineage-<name>`` locks) are left to it;
- with ``--lineage-locks`` (or ``--due-within``) the ``lineage-<name>`` lock of
  each chosen lineage that it can get, so several renewers (a Kubernetes Job
  with parallelism, several regions) share the work. A full run holding
  ``renew`` makes them wait (or exit 0).

A renewer that cannot get the lock within ``--lock-wait`` seconds exits 0
with one line saying who holds it and until when. One that waited and then
got the lock skips the lineages that the previous holder renewed meanwhile
(Vault's ``updated_at`` at or after the holder's ``acquired_at``), so even
``-- --force-renewal`` orders each certificate once.

The answer is a :class:`Plan`; the locks taken stay with the caller's
:class:`~certbot_kvault._internal.renew.locks.Locks`. Nothing here prints: skips and
waits go to the caller's ``notify``.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from typing import Callable, Optional, Sequence

from certbot_kvault._internal.renew.locks import (
    GLOBAL_LOCK,
    LINEAGE_LOCK_PREFIX,
    LockInfo,
    Locks,
    lineage_lock,
)
from certbot_kvault._internal.renew.status import LineageStatus
from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.store.timefmt import floor_time, parse_time
from certbot_kvault._internal.sync.jobs import parallel
from certbot_kvault._internal.vault.client import KVEntry

Notify = Callable[[str], None]
Fleet = dict[str, LineageStatus]
# Reads the fleet the rule decides on (status.renewal_fleet, as the caller wants it).
ReadFleet = Callable[[], Fleet]

ALL = "*"


@dataclasses.dataclass
class Rules:
    """How this run picks its lineages (from the command line)."""

    due_within: Optional[float] = None
    lineage_locks: bool = False
    retry_now: frozenset[str] = frozenset()   # names, or ALL
    every: bool = False        # certbot's --force-renewal / --dry-run: all are candidates
    dry_run: bool = False      # asks the staging CA, saves nothing: backoff does not apply
    cert_name: Optional[str] = None

    def retries(self, name: str) -> bool:
        return ALL in self.retry_now or name in self.retry_now


@dataclasses.dataclass
class Plan:
    """What this renewer renews: ``names``; ``skip`` = exit 0 saying it."""

    names: list[str] = dataclasses.field(default_factory=list)
    fleet: Fleet = dataclasses.field(default_factory=dict)
    excluded: set[str] = dataclasses.field(default_factory=set)
    backoff: list[str] = dataclasses.field(default_factory=list)
    skip: Optional[str] = None
    locked_out: bool = False    # skipped because another renewer holds a lock


def choose(fleet: Fleet, rules: Rules, notify: Notify,
           excluded: Optional[set[str]] = None) -> tuple[list[str], list[str], Optional[str]]:
    """(lineages to renew, lineages skipped in backoff, the line to say when none)."""
    names: list[str] = []
    backoff: list[str] = []
    guarded: list[str] = []
    considered = [st for n, st in sorted(fleet.items())
                  if n not in (excluded or ()) and rules.cert_name in (None, n)]
    for st in considered:
        if rules.due_within is not None:
            end = st.now + rules.due_within * 86400
            wanted = st.settings.autorenew and (st.not_after is None or st.not_after <= end)
        elif rules.every:
            wanted = True
        else:
            wanted = st.due
        if not wanted:
            continue
        if not rules.every and st.guarded_until is not None:
            # The storm guard (status.py): only certbot's --force-renewal lifts it.
            notify(_guard_line(st))
            guarded.append(st.name)
            continue
        if st.in_backoff() and not rules.dry_run and not rules.retries(st.name):
            notify(st.backoff_line())
            backoff.append(st.name)
            continue
        names.append(st.name)
    if names:
        return names, backoff, None
    if rules.cert_name is not None and rules.cert_name not in fleet:
        return [], backoff, f"renew: no lineage {rules.cert_name} in Vault."
    if rules.due_within is not None:
        what = f"nothing expires within {rules.due_within:g} days"
    else:
        what = "nothing is due"
    held = []
    if backoff:
        held.append(f"failure backoff ({len(backoff)} in backoff)")
    if guarded:
        held.append(f"the storm guard ({len(guarded)} renewed too recently)")
    if held:
        what += " outside " + " and ".join(held)
    upcoming = [(st.next_renewal, st.name) for st in considered
                if st.next_renewal is not None and st.name not in backoff]
    nxt = ""
    if upcoming and rules.due_within is None:
        when, name = min(upcoming)
        nxt = f"; next: {name} at {floor_time(when)}"
    return [], backoff, f"renew: {what} ({len(considered)} lineages checked{nxt})."


def _guard_line(st: LineageStatus) -> str:
    """The one line a renewer prints when the storm guard holds ``st`` back."""
    assert st.guarded_until is not None and st.not_before is not None and st.lifetime
    return (f"renew: skipping {st.name}: renewed at {floor_time(st.not_before)} (its "
            f"certificate's start), less than a tenth of its lifetime "
            f"({st.lifetime / 86400:.4g} days) ago, although {st.decision.describe()}; it may "
            f"renew from {floor_time(st.guarded_until)} (`certbot-kvault renew -- "
            f"--force-renewal --cert-name {st.name}` renews it now)")


def read_all(layout: Layout, names: Sequence[str], workers: int) -> dict[str, KVEntry]:
    """The raw Vault entries of these lineages (in parallel); missing ones are left out."""
    out = {}
    for name, entry in parallel(names, layout.read_lineage_raw, workers):
        if entry is not None:
            out[name] = entry
    return out


def busy_lineages(locks: Locks, workers: int) -> dict[str, LockInfo]:
    """Lineages whose lineage-<name> lock another renewer holds right now."""
    keys = [k for k in locks.names() if k.startswith(LINEAGE_LOCK_PREFIX)]
    busy = {}
    for key, info in parallel(keys, locks.held_by_other, workers):
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
             notify: Notify, rules: Rules, read: ReadFleet) -> Plan:
    """Global lock; the chosen lineages except what others hold or just renewed."""
    note, seen = _waiting_note("the lock", lock_wait, notify)
    holder = locks.acquire(GLOBAL_LOCK, wait=lock_wait, on_wait=note)
    if holder is not None:
        return Plan(skip=f"renew: another renewer is at work, not renewing now: the lock is "
                         f"{holder.describe()}.", locked_out=True)
    excluded: set[str] = set()
    busy = busy_lineages(locks, workers)
    for name, info in sorted(busy.items()):
        notify(f"renew: skipping {name}: its lock is {info.describe()}")
    excluded |= set(busy)
    fleet = read()
    if seen:
        # We waited: leave alone what the previous holder renewed in the meantime.
        since = [h.acquired_at for h in seen if h.acquired_at is not None]
        cutoff = min(since) if since else time.time()
        recent = {n for n, st in fleet.items()
                  if (parse_time(st.entry.data.get("updated_at")) or 0) >= math.floor(cutoff)}
        for name in sorted(recent - excluded):
            notify(f"renew: skipping {name}: renewed by another renewer while we waited")
        excluded |= recent
    names, backoff, none = choose(fleet, rules, notify, excluded)
    return Plan(names=names, fleet=fleet, excluded=excluded, backoff=backoff, skip=none)


def plan_each(layout: Layout, locks: Locks, lock_wait: float, workers: int,
              notify: Notify, rules: Rules, read: ReadFleet) -> Plan:
    """Per-lineage locks on the chosen lineages."""
    fleet = read()
    due, backoff, none = choose(fleet, rules, notify)
    if none is not None:
        return Plan(fleet=fleet, backoff=backoff, skip=none)
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
            return Plan(fleet=fleet, skip=f"renew: a full renewal run is at work, not renewing "
                                          f"now: the lock is {full_run.describe()}.",
                        locked_out=True)
        note(full_run)
        time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
    for name, info in sorted(busy.items()):
        notify(f"renew: skipping {name}: its lock is {info.describe()}")
    if not taken:
        example = next(iter(sorted(busy.items())))
        return Plan(fleet=fleet, skip=f"renew: all {len(due)} lineages due are being renewed "
                                      f"by other renewers (e.g. {example[0]}: "
                                      f"{example[1].describe()}).", locked_out=True)
    # Someone may have renewed one between our read and our lock: re-read.
    fresh = read_all(layout, taken, workers)
    names = []
    for name in taken:
        before, after = fleet[name].entry, fresh.get(name)
        if after is None or after.data.get("updated_at") != before.data.get("updated_at"):
            locks.release(lineage_lock(name))
            notify(f"renew: skipping {name}: renewed by another renewer meanwhile")
            continue
        names.append(name)
    return Plan(names=sorted(names), fleet=fleet, excluded=set(fleet) - set(names),
                backoff=backoff)
