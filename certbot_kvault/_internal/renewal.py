"""Stateless certbot runs against Vault: what ``run`` and ``renew`` do.

Both start from whatever the config dir holds (usually nothing: a fresh
container or CI job), rebuild it from Vault, run certbot (runner.py) with the
same ``--config-dir``/``--work-dir``/``--logs-dir``, and push the result back.
``renew`` first decides from Vault alone which lineages are due (certbot's
rule, schedule.py/due.py; failure backoff from state.py), takes its lease
lock(s) and pulls only those lineages and the accounts they use (planner.py);
when nothing is due it starts no certbot at all. Afterwards it remembers each
attempt in the lineage's ``state/`` record, so the next stateless run knows
what failed and when it may try again.

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

import json
import random
import time
from typing import TYPE_CHECKING, Callable, Optional

import configobj
from certbot import errors

from certbot_kvault._internal import pending, sync, synced
from certbot_kvault._internal.errors import is_transient
from certbot_kvault._internal.layout import Layout
from certbot_kvault._internal.lock import GLOBAL_LOCK, Locks, lineage_lock
from certbot_kvault._internal.metrics import Metrics
from certbot_kvault._internal.planner import Rules, plan_all, plan_each
from certbot_kvault._internal.records import LineageRecord, RecordError, validate_name
from certbot_kvault._internal.runner import (
    Notify,
    certbot_failures,
    dir_args,
    failure_reasons,
    run_certbot,
    sigterm_unwinds,
)
from certbot_kvault._internal.schedule import LineageStatus, remember, renewal_fleet
from certbot_kvault._internal.tree import Tree

if TYPE_CHECKING:  # the caller builds the clients (ari.py loads acme's client)
    from certbot_kvault._internal.ari import AriClients

State = tuple[Optional[int], Optional[str]]

DEFAULT_PUSH_RETRY_FOR = 300
_MAX_BACKOFF = 10.0


class PullFailed(errors.Error):
    """Some records could not be pulled, so running certbot is not safe."""


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


# ---- renew -------------------------------------------------------------------------------------


def renew(layout: Layout, tree: Tree, args: list[str], *, workers: int, lock_wait: float,
          lock_ttl: int, rules: Rules, metrics_file: Optional[str],
          finish_pending: Callable[[], sync.Report], kvault_bin: Optional[str],
          say: Notify, notify: Notify, stream: Notify, stream_err: Optional[Notify] = None,
          push_retry_for: float = DEFAULT_PUSH_RETRY_FOR,
          ari: Optional[AriClients] = None) -> int:
    """Decide, lock, pull, ``certbot renew ARGS``, push, remember, unlock; the exit status.

    Metrics go to ``metrics_file`` (if any) however the run ends.
    ``finish_pending`` completes what a deploy hook left undone (under the lock).
    ``stream_err`` gets certbot's stderr as it comes (else certbot writes it itself).
    ``ari`` asks the CAs' ARI (ari.py) before the decision; None: never asked.
    """
    metrics = Metrics(started=time.time())

    def read() -> dict[str, LineageStatus]:
        return renewal_fleet(layout, workers, ari, notify=notify,
                             all_memory=rules.every or rules.due_within is not None)

    code = 1
    try:
        with sigterm_unwinds():
            code = _renew(layout, tree, args, workers, lock_wait, lock_ttl, rules, metrics,
                          finish_pending, kvault_bin, say, notify, stream, stream_err,
                          push_retry_for, read)
    finally:
        metrics.exit_code = code
        if metrics_file:
            metrics.write(metrics_file)
    return code


def _renew(layout: Layout, tree: Tree, args: list[str], workers: int, lock_wait: float,
           lock_ttl: int, rules: Rules, metrics: Metrics,
           finish_pending: Callable[[], sync.Report], kvault_bin: Optional[str],
           say: Notify, notify: Notify, stream: Notify, stream_err: Optional[Notify],
           push_retry_for: float, read: Callable[[], dict[str, LineageStatus]]) -> int:
    with Locks(layout, ttl=lock_ttl, notify=notify) as locks:
        each = rules.lineage_locks or rules.due_within is not None
        plan = (plan_each if each else plan_all)(layout, locks, lock_wait, workers, notify,
                                                 rules, read)
        metrics.checked = len(plan.fleet)
        metrics.observe(plan.fleet.values())
        if plan.skip:
            metrics.skipped = int(plan.locked_out)
            say(plan.skip)
            if plan.locked_out or not locks.holds(GLOBAL_LOCK):
                return 0
            # Nothing due, and this run holds the global lock: a good time to
            # save what an earlier deploy hook on this machine could not.
            finished = finish_pending()
            for item, err in finished.failed:
                notify(f"error: {item}: {err}")
            return 0 if finished.ok else 1

        finished = finish_pending()
        pulled = sync.pull(tree, layout, plan.names, workers=workers, kvault_bin=kvault_bin,
                           used_accounts_only=True)
        for line in pulled.warnings:
            notify(line)
        failed: set[str] = set()
        for item, err in finished.failed + pulled.failed:
            notify(f"error: {item}: {err}")
            if item.startswith("lineage "):
                failed.add(item[len("lineage "):])
        local = tree.lineage_names()
        before = _states(tree)
        chosen = set(plan.names)
        allowed = [n for n in local if n in chosen and n not in failed]
        # The rule was applied above, from Vault: certbot renews exactly this
        # set (its own re-check would ask ARI again and could pick another
        # time in the window). --force-renewal/--dry-run given: certbot's own.
        force = [] if rules.every else ["--force-renewal"]
        rc = 0
        rcs: dict[str, int] = {}
        output = ""
        base = ["renew", "--no-random-sleep-on-renew", *dir_args(tree), *args, *force]
        if allowed and set(allowed) == set(local):
            rc, output = run_certbot(base, stream, stream_err)
        else:
            # The dir holds lineages this renewer may not touch (kept from
            # earlier runs, or held by other renewers): one certbot each.
            for name in allowed:
                rcs[name], one_out = run_certbot([*base, "--cert-name", name], stream,
                                                 stream_err)
                rc = rc or rcs[name]
                output += one_out
        after = _states(tree)
        changed = [n for n in sorted(after) if before.get(n) != after[n]]
        grew = {n for n in changed
                if (after[n][0] or 0) > ((before.get(n) or (0, None))[0] or 0)}
        certbot_failed = certbot_failures(rc, rcs, output, allowed, grew)
        failed |= certbot_failed
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
        if not rules.dry_run:
            outcomes: dict[str, Optional[str]] = {
                n: None for n in allowed if n in grew and n not in pushed.fenced}
            reasons = failure_reasons(output)
            for name in certbot_failed:
                outcomes[name] = reasons.get(name) or "certbot failed to renew it (see its " \
                                                      "output, or letsencrypt.log)"
            metrics.state_errors = remember(layout, plan.fleet, outcomes, workers, notify)
            metrics.observe(plan.fleet[n] for n in outcomes if n in plan.fleet)
        metrics.renewed = len(renewed)
        metrics.failed = len(failed)
        if not pushed.fenced:
            for why in lost.values():
                notify(f"warning: {why}; Vault had not changed since this run pulled, so "
                       "what was renewed here was saved")
    say(f"renew: {len(renewed)} renewed, {len(failed)} failed, {len(allowed)} due, "
        f"{len(plan.fleet)} checked")
    if rc != 0:
        return rc
    if failed or not pushed.ok or not pulled.ok or not finished.ok:
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
        mark = pending.mark(tree, name, reason)
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
        finished = finish_pending()
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
        rc, _ = run_certbot([*args, *extra, *dir_args(tree)], stream)
        after = _states(tree)
        changed = [n for n in sorted(after) if before.get(n) != after[n]]
        pushed = push_until_saved(
            tree, layout, None, at_stake=changed, workers=workers, retry_for=push_retry_for,
            notify=notify,
            expected={n: pulled.versions[n] for n in changed if n in pulled.versions})
        problems = [f"{item}: {err}" for item, err in finished.failed + pushed.failed]
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
        if not (remote.same_content(local) or synced.as_pulled(tree, remote, local)):
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
