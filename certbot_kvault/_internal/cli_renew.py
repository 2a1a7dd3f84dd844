"""`certbot-kvault run` and `certbot-kvault renew`: stateless certbot runs against Vault.

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
import tempfile
import time
import types
from typing import Any, Iterator, Optional, Sequence

import click
import configobj

from certbot_kvault._internal import sync
from certbot_kvault._internal.cli import Context, common_options, kvault_bin, main
from certbot_kvault._internal.layout import Layout, LineageRecord, RecordError, validate_name
from certbot_kvault._internal.lock import (
    DEFAULT_TTL,
    GLOBAL_LOCK,
    LINEAGE_LOCK_PREFIX,
    MIN_TTL,
    LockInfo,
    Locks,
    lineage_lock,
    parse_time,
)
from certbot_kvault._internal.tree import Tree
from certbot_kvault._internal.vault import KVEntry

DIR_FLAGS = ("--config-dir", "--work-dir", "--logs-dir")
_FAILURE_RE = re.compile(r"/live/([^/\s]+)/fullchain\.pem \(failure\)")


# ---- certbot as a child process ---------------------------------------------------


def certbot_bin() -> str:
    """The certbot next to this Python (same virtualenv / image), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "certbot")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("certbot")
    if not found:
        raise click.ClickException("certbot not found: install it next to certbot-kvault "
                                   "(same virtualenv) or put it on PATH.")
    return found


def _check_certbot_args(args: Sequence[str]) -> list[str]:
    for arg in args:
        for flag in DIR_FLAGS:
            if arg == flag or arg.startswith(flag + "="):
                raise click.ClickException(
                    f"Pass {flag} to certbot-kvault (before --), not to certbot: both must use "
                    "the same directories.")
    return list(args)


def _dir_args(tree: Tree) -> list[str]:
    d = tree.dirs
    return ["--config-dir", tree.config_dir, "--work-dir", os.path.abspath(d.work_dir),
            "--logs-dir", os.path.abspath(d.logs_dir)]


def _run_certbot(argv: list[str]) -> tuple[int, str]:
    """Run certbot; its stdout is shown as it comes and also returned (for the summary)."""
    cmd = [certbot_bin(), *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
    out: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            click.echo(line, nl=False)
        return proc.wait(), "".join(out)
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
def _sigterm_unwinds() -> Iterator[None]:
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


def _state(tree: Tree, name: str) -> tuple[Optional[int], Optional[str]]:
    """(archive version, renewal conf without the ARI hint) of a local lineage."""
    version = tree.current_version(name)
    try:
        conf = configobj.ConfigObj(tree.renewal_conf_path(name), encoding="utf-8",
                                   file_error=True)
    except (OSError, configobj.ConfigObjError):
        return version, None
    conf.pop("acme_renewal_info", None)
    return version, json.dumps(conf.dict(), sort_keys=True, default=str)


def _states(tree: Tree) -> dict[str, tuple[Optional[int], Optional[str]]]:
    return {n: _state(tree, n) for n in tree.lineage_names()}


# ---- metrics -------------------------------------------------------------------------------


@dataclasses.dataclass
class Metrics:
    """One renew run, as Prometheus textfile metrics (node_exporter's textfile collector)."""

    started: float
    renewed: int = 0
    failed: int = 0
    checked: int = 0
    skipped: int = 0
    exit_code: int = 0
    days_to_expiry: dict[str, float] = dataclasses.field(default_factory=dict)

    def text(self) -> str:
        now = time.time()
        out: list[str] = []

        def gauge(name: str, help_text: str, value: float,
                  labels: Optional[dict[str, str]] = None, header: bool = True) -> None:
            if header:
                out.append(f"# HELP certbot_kvault_{name} {help_text}")
                out.append(f"# TYPE certbot_kvault_{name} gauge")
            lbl = ""
            if labels:
                lbl = "{" + ",".join(f'{k}="{_escape_label(v)}"'
                                     for k, v in sorted(labels.items())) + "}"
            out.append(f"certbot_kvault_{name}{lbl} {_num(value)}")

        gauge("renew_last_run_timestamp_seconds", "When the last renew run ended.", now)
        gauge("renew_seconds", "How long the last renew run took.", now - self.started)
        gauge("renew_exit_code", "Exit code of the last renew run (0 = success).",
              self.exit_code)
        gauge("renew_renewed", "Lineages renewed and saved to Vault by the last run.",
              self.renewed)
        gauge("renew_failed", "Lineages whose renewal or save to Vault failed in the last run.",
              self.failed)
        gauge("renew_checked", "Lineages the last run looked at.", self.checked)
        gauge("renew_skipped_locked", "1 if the last run did nothing because another renewer "
              "held the lock.", self.skipped)
        first = True
        for name, days in sorted(self.days_to_expiry.items()):
            gauge("certificate_days_to_expiry", "Days until the lineage's certificate expires.",
                  days, {"lineage": name}, header=first)
            first = False
        return "\n".join(out) + "\n"

    def write(self, path: str) -> None:
        """Atomically (temp file + rename), so the collector never reads half a file."""
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".kvault-metrics-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.text())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}"


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


def _read_all(layout: Layout, names: Sequence[str], workers: int) -> dict[str, KVEntry]:
    out = {}
    for name, entry in sync.parallel(names, layout.read_lineage_raw, workers):
        if entry is not None:
            out[name] = entry
    return out


def _busy_lineages(locks: Locks, workers: int) -> dict[str, LockInfo]:
    """Lineages whose lineage-<name> lock another renewer holds right now."""
    folder = posixpath.dirname(locks.path(GLOBAL_LOCK))
    keys = [k for k in locks.vault.list_keys(folder)
            if k.startswith(LINEAGE_LOCK_PREFIX) and not k.endswith("/")]
    busy = {}
    for key, info in sync.parallel(keys, locks.held_by_other, workers):
        if info is not None:
            busy[key[len(LINEAGE_LOCK_PREFIX):]] = info
    return busy


def _waiting_note(what: str, wait: float) -> Any:
    told: list[LockInfo] = []

    def note(holder: LockInfo) -> None:
        if not told:
            told.append(holder)
            click.echo(f"renew: {what} is {holder.describe()}; waiting up to {wait:g}s",
                       err=True)
    return note, told


def _plan_all(ctx: Context, locks: Locks, lock_wait: float) -> Plan:
    """Global lock; everything in Vault except what others hold or just renewed."""
    layout = ctx.layout
    note, seen = _waiting_note("the lock", lock_wait)
    holder = locks.acquire(GLOBAL_LOCK, wait=lock_wait, on_wait=note)
    if holder is not None:
        return Plan(skip=f"renew: another renewer is at work, not renewing now: the lock is "
                         f"{holder.describe()}.", locked_out=True)
    plan = Plan()
    busy = _busy_lineages(locks, ctx.workers)
    for name, info in sorted(busy.items()):
        click.echo(f"renew: skipping {name}: its lock is {info.describe()}", err=True)
    plan.excluded |= set(busy)
    if seen:
        # We waited: leave alone what the previous holder renewed in the meantime.
        since = [h.acquired_at for h in seen if h.acquired_at is not None]
        cutoff = min(since) if since else time.time()
        entries = _read_all(layout, layout.list_lineages(), ctx.workers)
        recent = {n for n, e in entries.items()
                  if (parse_time(e.data.get("updated_at")) or 0) >= math.floor(cutoff)}
        for name in sorted(recent - plan.excluded):
            click.echo(f"renew: skipping {name}: renewed by another renewer while we waited",
                       err=True)
        plan.excluded |= recent
    if plan.excluded:
        plan.names = [n for n in layout.list_lineages() if n not in plan.excluded]
    return plan


def _plan_due(ctx: Context, locks: Locks, lock_wait: float, due_within: float,
              metrics: Metrics) -> Plan:
    """Per-lineage locks on the lineages that expire within the window."""
    layout = ctx.layout
    now = time.time()
    entries = _read_all(layout, layout.list_lineages(), ctx.workers)
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
    note, _seen = _waiting_note("a full renewal run holds the lock, which", lock_wait)
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
        click.echo(f"renew: skipping {name}: its lock is {info.describe()}", err=True)
    if not taken:
        example = next(iter(sorted(busy.items())))
        return Plan(skip=f"renew: all {len(due)} lineages due within {due_within:g} days are "
                         f"being renewed by other renewers (e.g. {example[0]}: "
                         f"{example[1].describe()}).", locked_out=True)
    # Someone may have renewed one between our read and our lock: re-read.
    fresh = _read_all(layout, taken, ctx.workers)
    names = []
    for name in taken:
        before, after = entries.get(name), fresh.get(name)
        if after is None or before is None or \
                after.data.get("updated_at") != before.data.get("updated_at"):
            locks.release(lineage_lock(name))
            click.echo(f"renew: skipping {name}: renewed by another renewer meanwhile",
                       err=True)
            continue
        names.append(name)
    return Plan(names=sorted(names), excluded=set(entries) - set(names), only=True)


# ---- renew -------------------------------------------------------------------------------------


@main.command("renew")
@click.option("--lock-wait", type=click.FloatRange(min=0), default=0, show_default=True,
              envvar="KVAULT_LOCK_WAIT", metavar="SECONDS",
              help="How long to wait for another renewer's lock before giving up (exit 0) "
                   "[KVAULT_LOCK_WAIT]")
@click.option("--lock-ttl", type=click.IntRange(min=MIN_TTL), default=DEFAULT_TTL,
              show_default=True, envvar="KVAULT_LOCK_TTL", metavar="SECONDS",
              help="Lease of the Vault lock; renewed every TTL/3 while we run, taken over "
                   "by others this long after we die [KVAULT_LOCK_TTL]")
@click.option("--due-within", type=click.FloatRange(min=0), default=None,
              envvar="KVAULT_DUE_WITHIN", metavar="DAYS",
              help="Pull only the lineages expiring within DAYS (plus the accounts) and lock "
                   "them one by one, so several renewers share the work [KVAULT_DUE_WITHIN]")
@click.option("--metrics-file", type=click.Path(dir_okay=False), default=None,
              envvar="KVAULT_METRICS_FILE", metavar="FILE",
              help="Write Prometheus textfile metrics here [KVAULT_METRICS_FILE]")
@click.argument("certbot_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- CERTBOT-ARGS]")
@common_options()
def renew(ctx: Context, lock_wait: float, lock_ttl: int, due_within: Optional[float],
          metrics_file: Optional[str], certbot_args: tuple[str, ...]) -> None:
    """Lock, pull, `certbot renew --no-random-sleep-on-renew`, push, unlock.

    Starts from an empty --config-dir as well as from a full one; Vault is the
    source of truth. Arguments after -- go to `certbot renew`:

    \b
    certbot-kvault renew
    certbot-kvault renew --due-within 30 --metrics-file /var/lib/node-exporter/kvault.prom
    certbot-kvault renew -- --force-renewal --cert-name example.com

    A second renewer that cannot get the lock within --lock-wait exits 0 and
    says who holds it and until when. Exit status: certbot's if it failed, 1
    if Vault could not be updated, else 0.
    """
    args = _check_certbot_args(certbot_args)
    metrics = Metrics(started=time.time())
    code = 1
    try:
        with _sigterm_unwinds():
            code = _renew(ctx, args, lock_wait, lock_ttl, due_within, metrics)
    finally:
        metrics.exit_code = code
        if metrics_file:
            metrics.write(metrics_file)
    sys.exit(code)


def _renew(ctx: Context, args: list[str], lock_wait: float, lock_ttl: int,
           due_within: Optional[float], metrics: Metrics) -> int:
    layout, tree = ctx.layout, ctx.tree
    with Locks(layout, ttl=lock_ttl) as locks:
        if due_within is None:
            plan = _plan_all(ctx, locks, lock_wait)
        else:
            plan = _plan_due(ctx, locks, lock_wait, due_within, metrics)
        if plan.skip:
            metrics.skipped = int(plan.locked_out)
            click.echo(plan.skip)
            return 0

        pending = ctx.finish_pending()
        pulled = sync.pull(tree, layout, plan.names, workers=ctx.workers,
                           kvault_bin=kvault_bin())
        failed: set[str] = set()
        for item, err in pending.failed + pulled.failed:
            click.echo(f"error: {item}: {err}", err=True)
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
        output = ""
        base = ["renew", "--no-random-sleep-on-renew", *_dir_args(tree), *args]
        if not local:
            click.echo("renew: no lineages to renew (Vault holds none).")
        elif set(allowed) == set(local):
            rc, output = _run_certbot(base)
        else:
            for name in allowed:
                one_rc, one_out = _run_certbot([*base, "--cert-name", name])
                rc = rc or one_rc
                output += one_out
        failed |= set(_FAILURE_RE.findall(output))
        after = _states(tree)
        changed = [n for n in sorted(after) if before.get(n) != after[n]]
        pushed = sync.push(tree, layout, changed, workers=ctx.workers)
        for item, err in pushed.failed:
            click.echo(f"error: {item}: {err}", err=True)
            if item.startswith("lineage "):
                failed.add(item[len("lineage "):])
        renewed = [n for n in changed if n not in failed and
                   (after[n][0] or 0) > ((before.get(n) or (0, None))[0] or 0)]
        for name in renewed:
            click.echo(f"renewed: {name} (version {after[name][0]}, saved to Vault)")
        now = time.time()
        for name in local:
            ts = _local_not_after(tree, name)
            if ts is not None:
                metrics.days_to_expiry[name] = round((ts - now) / 86400, 3)
        metrics.renewed = len(renewed)
        metrics.failed = len(failed)
        lost = locks.lost
        for why in lost.values():
            click.echo(f"warning: {why}; what was renewed was still saved with check-and-set",
                       err=True)
    click.echo(f"renew: {len(renewed)} renewed, {len(failed)} failed, "
               f"{len(allowed)} checked")
    if rc != 0:
        return rc
    if not pushed.ok or not pulled.ok or not pending.ok:
        return 1
    return 0


# ---- run ---------------------------------------------------------------------------------------


@main.command("run")
@click.argument("certbot_args", nargs=-1, required=True, type=click.UNPROCESSED,
                metavar="-- CERTBOT-ARGS")
@common_options()
def run_(ctx: Context, certbot_args: tuple[str, ...]) -> None:
    """Pull, run certbot with CERTBOT-ARGS, push; fail unless Vault then holds the result.

    \b
    certbot-kvault run -- certonly -a kvault --kvault-dns NAME -d example.com
    certbot-kvault run -- certificates

    certbot gets the same --config-dir/--work-dir/--logs-dir. Exit status:
    certbot's if it failed, 1 if Vault does not hold what certbot produced
    (a push failed, or reading it back differs), else 0.
    """
    args = _check_certbot_args(certbot_args)
    tree, layout = ctx.tree, ctx.layout
    with _sigterm_unwinds():
        pending = ctx.finish_pending()
        pulled = sync.pull(tree, layout, None, workers=ctx.workers, kvault_bin=kvault_bin())
        for item, err in pulled.failed:
            click.echo(f"error: {item}: {err}", err=True)
        if not pulled.ok:
            raise click.ClickException(
                f"Not running certbot: {len(pulled.failed)} record(s) could not be pulled from "
                "Vault (above); certbot could otherwise create duplicate lineages. Fix or "
                "`certbot-kvault rm` them.")
        extra = []
        if args and args[0] == "renew" and "--no-random-sleep-on-renew" not in args:
            # Without a TTY certbot would sleep up to 8 minutes first.
            extra.append("--no-random-sleep-on-renew")
        rc, _ = _run_certbot([*args, *extra, *_dir_args(tree)])
        pushed = sync.push(tree, layout, None, workers=ctx.workers)
        problems = [f"{item}: {err}" for item, err in pending.failed + pushed.failed]
        problems += _verify(tree, layout, ctx.workers)
    for p in problems:
        click.echo(f"error: {p}", err=True)
    if rc != 0:
        sys.exit(rc)
    if problems:
        click.echo(f"certbot-kvault: Vault does not hold what certbot produced "
                   f"({len(problems)} problem(s) above); fix the cause and run "
                   f"`certbot-kvault push --config-dir {tree.config_dir}`.", err=True)
        sys.exit(1)
    for item in pushed.written:
        click.echo(f"pushed: {item}")


def _verify(tree: Tree, layout: Layout, workers: int) -> list[str]:
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
        if not remote.same_content(local):
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
