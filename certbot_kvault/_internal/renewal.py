"""Stateless certbot runs against Vault: what ``run`` and ``renew`` do.

Both start from whatever the config dir holds (usually nothing: a fresh
container or CI job), rebuild it from Vault, run certbot with the same
``--config-dir``/``--work-dir``/``--logs-dir``, and push the result back.

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

``renew`` pushes only lineages whose certificate or renewal settings changed:
the ARI hint (``[acme_renewal_info]``) that certbot 5 writes into every
renewal conf it looks at is not a change worth a new Vault version per
lineage per run (a stateless renewer simply asks the CA's ARI endpoint again).

A renewer paused past its lease (SIGSTOP, a frozen VM) resumes as if nothing
happened, though another may have taken its lock over and renewed: so its
push is a check-and-set against the KV versions it pulled (a fence), never
against what it reads just before writing, and certbot's deploy hook, which
would push unfenced, stands down (``KVAULT_PARENT_PUSH``). A push that finds
Vault unreachable, sealed or failing is tried again for ``--push-retry-for``
seconds, still under the lock: in a container the new certificate exists
nowhere else.

Nothing here prints: the caller passes ``say`` (one result line, stdout),
``notify`` (progress, skips and errors, stderr) and ``stream`` (certbot's own
output, as it comes, newlines included). Errors are ``certbot.errors.Error``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import posixpath
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from typing import Any, Callable, Iterator, Optional, Sequence

import configobj
from certbot import errors

from certbot_kvault._internal import sync
from certbot_kvault._internal.layout import Layout, LineageRecord, RecordError, validate_name
from certbot_kvault._internal.lock import (
    GLOBAL_LOCK,
    LINEAGE_LOCK_PREFIX,
    LockInfo,
    Locks,
    lineage_lock,
)
from certbot_kvault._internal.metrics import Metrics
from certbot_kvault._internal.timefmt import parse_time
from certbot_kvault._internal.tree import Tree
from certbot_kvault._internal.vault import KVEntry, is_transient

Notify = Callable[[str], None]
State = tuple[Optional[int], Optional[str]]

DIR_FLAGS = ("--config-dir", "--work-dir", "--logs-dir")
# certbot's renewal summary (stdout or stderr, depending on the case and version).
_FAILURE_RE = re.compile(r"/live/([^/\s]+)/fullchain\.pem \(failure\)")
_PARSEFAIL_RE = re.compile(r"/renewal/([^/\s]+)\.conf \(parsefail\)")
DEFAULT_PUSH_RETRY_FOR = 300
_MAX_BACKOFF = 10.0


class CertbotNotFound(errors.Error):
    """No certbot executable next to this Python nor on PATH."""


class BadCertbotArgs(errors.Error):
    """The arguments for certbot would make it use other directories than ours."""


class PullFailed(errors.Error):
    """Some records could not be pulled, so running certbot is not safe."""


# ---- certbot as a child process ---------------------------------------------------


def certbot_bin() -> str:
    """The certbot next to this Python (same virtualenv / image), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "certbot")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("certbot")
    if not found:
        raise CertbotNotFound("certbot not found: install it next to certbot-kvault "
                              "(same virtualenv) or put it on PATH.")
    return found


def check_certbot_args(args: Sequence[str]) -> list[str]:
    """The arguments for certbot, refused if they name certbot's directories."""
    for arg in args:
        for flag in DIR_FLAGS:
            if arg == flag or arg.startswith(flag + "="):
                raise BadCertbotArgs(
                    f"Pass {flag} to certbot-kvault (before --), not to certbot: both must use "
                    "the same directories.")
    return list(args)


def _dir_args(tree: Tree) -> list[str]:
    d = tree.dirs
    return ["--config-dir", tree.config_dir, "--work-dir", os.path.abspath(d.work_dir),
            "--logs-dir", os.path.abspath(d.logs_dir)]


def run_certbot(argv: list[str], stream: Notify,
                stream_err: Optional[Notify] = None) -> tuple[int, str]:
    """Run certbot; each line of its stdout goes to ``stream`` as it comes and is returned.

    With ``stream_err`` its stderr goes there as it comes and is returned too
    (after stdout). certbot is told that we push (sync.PARENT_PUSH_ENV), so the
    deploy hook and the plugin leave that to us.
    """
    cmd = [certbot_bin(), *argv]
    env = dict(os.environ)
    env[sync.PARENT_PUSH_ENV] = str(os.getpid())
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE if stream_err else None, text=True,
                            bufsize=1, env=env)
    out: list[str] = []
    err: list[str] = []
    pump: Optional[threading.Thread] = None
    if stream_err is not None:
        assert proc.stderr is not None
        pipe, emit = proc.stderr, stream_err

        def copy_stderr() -> None:
            for line in pipe:
                err.append(line)
                emit(line)

        pump = threading.Thread(target=copy_stderr, name="certbot-stderr", daemon=True)
        pump.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            stream(line)
        rc = proc.wait()
        if pump is not None:
            pump.join()
        return rc, "".join(out + err)
    except BaseException:
        # SIGTERM (turned into SystemExit) or Ctrl-C: stop certbot too, then unwind
        # so the lock is released.
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (docker stop, pod eviction) unwinds like Ctrl-C: locks are released."""
    def handler(signum: int, frame: Optional[types.FrameType]) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---- what changed in a lineage --------------------------------------------------------


def _state(tree: Tree, name: str) -> State:
    """(archive version, renewal conf without the ARI hint) of a local lineage."""
    version = tree.current_version(name)
    try:
        conf = configobj.ConfigObj(tree.renewal_conf_path(name), encoding="utf-8",
                                   file_error=True)
    except (OSError, configobj.ConfigObjError):
        return version, None
    conf.pop("acme_renewal_info", None)
    return version, json.dumps(conf.dict(), sort_keys=True, default=str)


def _states(tree: Tree) -> dict[str, State]:
    return {n: _state(tree, n) for n in tree.lineage_names()}


def _days_left(not_after: Any, now: float) -> Optional[float]:
    ts = parse_time(not_after)
    return None if ts is None else round((ts - now) / 86400, 3)


def _local_not_after(tree: Tree, name: str) -> Optional[float]:
    from cryptography import x509

    try:
        with open(os.path.join(tree.live_dir(name), "cert.pem"), "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        return None
    return cert.not_valid_after_utc.timestamp()


# ---- planning: which lock, which lineages ------------------------------------------------


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
        renewable = d.get("auto_renewable", True)
        if isinstance(renewable, str):
            renewable = renewable.strip().lower() in ("1", "true", "yes", "on")
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


# ---- renew -------------------------------------------------------------------------------------


def renew(layout: Layout, tree: Tree, args: list[str], *, workers: int, lock_wait: float,
          lock_ttl: int, due_within: Optional[float], metrics_file: Optional[str],
          finish_pending: Callable[[], sync.Report], kvault_bin: Optional[str],
          say: Notify, notify: Notify, stream: Notify, stream_err: Optional[Notify] = None,
          push_retry_for: float = DEFAULT_PUSH_RETRY_FOR) -> int:
    """Lock, pull, ``certbot renew ARGS``, push, unlock; the exit status.

    Metrics go to ``metrics_file`` (if any) however the run ends.
    ``finish_pending`` completes what a deploy hook left undone (under the lock).
    ``stream_err`` gets certbot's stderr as it comes (else certbot writes it itself).
    """
    metrics = Metrics(started=time.time())
    code = 1
    try:
        with sigterm_unwinds():
            code = _renew(layout, tree, args, workers, lock_wait, lock_ttl, due_within,
                          metrics, finish_pending, kvault_bin, say, notify, stream,
                          stream_err, push_retry_for)
    finally:
        metrics.exit_code = code
        if metrics_file:
            metrics.write(metrics_file)
    return code


def _certbot_failures(rc: int, rcs: dict[str, int], output: str, asked: Sequence[str],
                      renewed: set[str]) -> set[str]:
    """The lineages certbot was asked to renew and did not renew because something failed.

    ``rcs``: one certbot per lineage, whose exit status says it. One certbot
    for all exits 0 only if every renewal it attempted worked; otherwise its
    summary names the failures (on stdout or stderr), and when it names none
    (it stopped before its summary) no lineage it did not renew is known to be
    fine, so each counts as failed.
    """
    if rcs:
        return {n for n, one_rc in rcs.items() if one_rc != 0 and n not in renewed}
    if rc == 0:
        return set()
    named = set(_FAILURE_RE.findall(output)) | set(_PARSEFAIL_RE.findall(output))
    named &= set(asked)
    return named or set(asked) - renewed


def _renew(layout: Layout, tree: Tree, args: list[str], workers: int, lock_wait: float,
           lock_ttl: int, due_within: Optional[float], metrics: Metrics,
           finish_pending: Callable[[], sync.Report], kvault_bin: Optional[str],
           say: Notify, notify: Notify, stream: Notify, stream_err: Optional[Notify],
           push_retry_for: float) -> int:
    with Locks(layout, ttl=lock_ttl) as locks:
        if due_within is None:
            plan = plan_all(layout, locks, lock_wait, workers, notify)
        else:
            plan = plan_due(layout, locks, lock_wait, due_within, metrics, workers, notify)
        if plan.skip:
            metrics.skipped = int(plan.locked_out)
            say(plan.skip)
            return 0

        pending = finish_pending()
        pulled = sync.pull(tree, layout, plan.names, workers=workers, kvault_bin=kvault_bin,
                           used_accounts_only=True)
        for line in pulled.warnings:
            notify(line)
        failed: set[str] = set()
        for item, err in pending.failed + pulled.failed:
            notify(f"error: {item}: {err}")
            if item.startswith("lineage "):
                failed.add(item[len("lineage "):])
        local = tree.lineage_names()
        if plan.names is None:
            metrics.checked = len(local)
        before = _states(tree)
        # certbot renews every lineage of the config dir: if the dir holds
        # lineages this renewer may not touch (kept from earlier runs, or held
        # by other renewers), name the allowed ones one by one.
        if plan.only:
            allowed = [n for n in local if n in set(plan.names or ()) and n not in failed]
        else:
            allowed = [n for n in local if n not in plan.excluded and n not in failed]
        rc = 0
        rcs: dict[str, int] = {}
        output = ""
        base = ["renew", "--no-random-sleep-on-renew", *_dir_args(tree), *args]
        if not local:
            say("renew: no lineages to renew (Vault holds none).")
        elif set(allowed) == set(local):
            rc, output = run_certbot(base, stream, stream_err)
        else:
            for name in allowed:
                rcs[name], one_out = run_certbot([*base, "--cert-name", name], stream,
                                                 stream_err)
                rc = rc or rcs[name]
                output += one_out
        after = _states(tree)
        changed = [n for n in sorted(after) if before.get(n) != after[n]]
        grew = {n for n in changed
                if (after[n][0] or 0) > ((before.get(n) or (0, None))[0] or 0)}
        failed |= _certbot_failures(rc, rcs, output, allowed, grew)
        pushed = push_until_saved(
            tree, layout, changed, workers=workers, retry_for=push_retry_for, notify=notify,
            expected={n: pulled.versions[n] for n in changed if n in pulled.versions})
        for name in pushed.fenced:
            for lock in (lineage_lock(name), GLOBAL_LOCK):
                if locks.holds(lock):
                    # A renewer that was paused learns now, not at the keeper's
                    # next tick, that its lease was taken over.
                    locks.renew(lock)
        lost = locks.lost
        for item, err in pushed.failed:
            lineage = item[len("lineage "):] if item.startswith("lineage ") else None
            if lineage is not None:
                failed.add(lineage)
            if lineage in pushed.fenced:
                why = lost.get(lineage_lock(lineage)) or lost.get(GLOBAL_LOCK)
                cause = f"this renewer's lock was lost ({why}) and " if why else ""
                notify(f"error: lineage {lineage}: {cause}{err} The certificate renewed here "
                       "was NOT saved to Vault; Vault keeps the other renewer's.")
            else:
                notify(f"error: {item}: {err}")
        _take_back(tree, layout, pushed.fenced, workers, notify)
        renewed = [n for n in changed if n not in failed and n in grew]
        for name in renewed:
            say(f"renewed: {name} (version {after[name][0]}, saved to Vault)")
        now = time.time()
        for name in local:
            ts = _local_not_after(tree, name)
            if ts is not None:
                metrics.days_to_expiry[name] = round((ts - now) / 86400, 3)
        metrics.renewed = len(renewed)
        metrics.failed = len(failed)
        if not pushed.fenced:
            for why in lost.values():
                notify(f"warning: {why}; Vault had not changed since this run pulled, so "
                       "what was renewed here was saved")
    say(f"renew: {len(renewed)} renewed, {len(failed)} failed, {len(allowed)} checked")
    if rc != 0:
        return rc
    if failed or not pushed.ok or not pulled.ok or not pending.ok:
        return 1
    return 0


def _take_back(tree: Tree, layout: Layout, names: list[str], workers: int,
               notify: Notify) -> None:
    """Put Vault's copy of lineages whose push was fenced back on disk, so that a
    later push from this config dir cannot replace it with ours."""
    if not names:
        return
    report = sync.pull(tree, layout, names, workers=workers, accounts=False)
    for item, err in report.failed:
        notify(f"error: {item}: {err}")


def push_until_saved(tree: Tree, layout: Layout, names: Optional[list[str]], *,
                     at_stake: Optional[list[str]] = None, workers: int, retry_for: float,
                     notify: Notify, expected: Optional[dict[str, int]] = None,
                     sleep: Callable[[float], None] = time.sleep,
                     clock: Callable[[], float] = time.monotonic) -> sync.Report:
    """``sync.push``, tried again while Vault is unreachable, sealed or answering 5xx.

    Only while something renewed here is at stake (``at_stake``, default
    ``names``): a container's new certificate exists nowhere else. Pauses grow
    1, 2, 4 ... up to 10 s, with jitter, for at most ``retry_for`` seconds;
    then each lineage at stake is reported failed and left with a pending mark
    that the next certbot-kvault command with this config dir completes.
    """
    stake = list(names or []) if at_stake is None else at_stake
    deadline = clock() + max(0.0, retry_for)
    delay = 1.0
    while True:
        try:
            report = sync.push(tree, layout, names, workers=workers, expected=expected)
        except errors.Error as e:
            if not stake:
                raise
            left = deadline - clock()
            if not is_transient(e) or left <= 0:
                return _not_saved(tree, layout, sync.Report(), stake, str(e))
            pause = min(left, delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
            what = ", ".join(stake[:5]) + (f" and {len(stake) - 5} more" if len(stake) > 5
                                           else "")
            notify(f"warning: saving {what} to Vault failed ({e}); trying again "
                   f"in {pause:.1f}s, for {left:.0f}s more (--push-retry-for)")
            sleep(pause)
            delay = min(_MAX_BACKOFF, delay * 2)
            continue
        # What the deploy hook would have done for a lineage it could not save
        # (it stands down for us): a pending mark. Not for a fenced one: Vault
        # holds another renewer's newer certificate, which must stay.
        reasons = dict(report.failed)
        unsaved = {f"lineage {n}": n for n in stake
                   if f"lineage {n}" in reasons and n not in report.fenced}
        report.failed = [(i, e) for i, e in report.failed if i not in unsaved]
        for item, name in unsaved.items():
            _not_saved(tree, layout, report, [name], reasons[item])
        return report


def _not_saved(tree: Tree, layout: Layout, report: sync.Report, names: list[str],
               reason: str) -> sync.Report:
    """Each lineage failed in ``report``, saying so, with a pending mark."""
    for name in names:
        mark = sync.mark_pending(tree, name, reason)
        report.failed.append((f"lineage {name}", f"was NOT saved to Vault at "
                                                 f"{layout.where('certificates', name)} "
                                                 f"({reason}); pending mark at {mark}: run "
                                                 f"`certbot-kvault push --config-dir "
                                                 f"{tree.config_dir} {name}`"))
    return report


# ---- run ---------------------------------------------------------------------------------------


def run(layout: Layout, tree: Tree, args: list[str], *, workers: int,
        finish_pending: Callable[[], sync.Report], kvault_bin: Optional[str],
        say: Notify, notify: Notify, stream: Notify,
        push_retry_for: float = DEFAULT_PUSH_RETRY_FOR) -> int:
    """Pull, certbot ARGS, push, read back; the exit status.

    Raises PullFailed (certbot not run) if any record could not be pulled.
    """
    with sigterm_unwinds():
        pending = finish_pending()
        pulled = sync.pull(tree, layout, None, workers=workers, kvault_bin=kvault_bin)
        for line in pulled.warnings:
            notify(line)
        for item, err in pulled.failed:
            notify(f"error: {item}: {err}")
        if not pulled.ok:
            raise PullFailed(
                f"Not running certbot: {len(pulled.failed)} record(s) could not be pulled from "
                "Vault (above); certbot could otherwise create duplicate lineages. Fix or "
                "`certbot-kvault rm` them.")
        extra = []
        if args and args[0] == "renew" and "--no-random-sleep-on-renew" not in args:
            # Without a TTY certbot would sleep up to 8 minutes first.
            extra.append("--no-random-sleep-on-renew")
        before = _states(tree)
        rc, _ = run_certbot([*args, *extra, *_dir_args(tree)], stream)
        after = _states(tree)
        changed = [n for n in sorted(after) if before.get(n) != after[n]]
        pushed = push_until_saved(
            tree, layout, None, at_stake=changed, workers=workers, retry_for=push_retry_for,
            notify=notify,
            expected={n: pulled.versions[n] for n in changed if n in pulled.versions})
        problems = [f"{item}: {err}" for item, err in pending.failed + pushed.failed]
        problems += verify(tree, layout, workers)
        _take_back(tree, layout, pushed.fenced, workers, notify)
    for p in problems:
        notify(f"error: {p}")
    if rc != 0:
        return rc
    if problems:
        notify(f"certbot-kvault: Vault does not hold what certbot produced "
               f"({len(problems)} problem(s) above); fix the cause and run "
               f"`certbot-kvault push --config-dir {tree.config_dir}`.")
        return 1
    for item in pushed.written:
        say(f"pushed: {item}")
    return 0


def verify(tree: Tree, layout: Layout, workers: int) -> list[str]:
    """Read back every local lineage and account: does Vault hold exactly this?"""
    problems: list[str] = []

    def check_lineage(name: str) -> Optional[str]:
        try:
            local = tree.read_lineage(validate_name(name))
            remote: Optional[LineageRecord] = layout.load_lineage(name)
        except Exception as e:  # noqa: BLE001 - reported per item
            return f"lineage {name}: {e}"
        if remote is None:
            return f"lineage {name}: not in Vault ({layout.where('certificates', name)})"
        if not (remote.same_content(local) or sync.as_pulled(tree, remote, local)):
            return (f"lineage {name}: Vault holds version {remote.version}, this machine "
                    f"{local.version} (or other content)")
        return None

    for _, problem in sync.parallel(tree.lineage_names(), check_lineage, workers):
        if problem:
            problems.append(problem)
    urls = tree.server_urls()
    for server_path, account_id in tree.account_dirs():
        try:
            url = urls.get(server_path) or f"https://{server_path}"
            local_acc = tree.read_account(server_path, account_id, url)
            remote_acc = layout.load_account(server_path, account_id)
        except (RecordError, Exception) as e:  # noqa: BLE001 - reported per item
            problems.append(f"account {account_id}: {e}")
            continue
        if remote_acc is None or not remote_acc.same_content(local_acc):
            problems.append(f"account {account_id}: Vault does not hold this machine's copy")
    return problems
