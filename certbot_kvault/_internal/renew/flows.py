"""Stateless certbot runs against Vault: what ``run`` and ``renew`` do.

Both start from whatever the config dir holds (usually nothing: a fresh
container or CI job), rebuild it from Vault, run certbot (runner.py) with the
same ``--config-dir``/``--work-dir``/``--logs-dir``, and push the result back.
``renew`` first decides from Vault alone which lineages are due (certbot's
rule, status.py/due.py; failure backoff from state.py), takes its lease
lock(s) and pulls only those lineages and the accounts they use (plan.py);
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
nowhere else (saving.py).

A signal (SIGTERM, SIGINT, SIGHUP) or the run's ``--timeout`` does not lose
what certbot renewed (stopping.py): certbot gets the stop, the flow saves what
it renewed within ``--stop-grace``, fenced as always, with the locks held, then
releases them and exits non-zero (128 + the signal, 124 for the timeout) with
one line per lineage saved or NOT saved. A stop before certbot starts has
nothing to save: the flow ends there.

Nothing here prints: the caller passes ``say`` (one result line, stdout),
``notify`` (progress, skips and errors, stderr) and ``stream`` (certbot's own
output, as it comes, newlines included). Errors are ``certbot.errors.Error``.
"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Callable, Optional

from certbot import errors

from certbot_kvault._internal.renew.locks import GLOBAL_LOCK, Locks, lineage_lock
from certbot_kvault._internal.renew.metrics import Metrics
from certbot_kvault._internal.renew.plan import Rules, plan_all, plan_each
from certbot_kvault._internal.renew.runner import (
    AccountNotChosen,
    Notify,
    account_ambiguity,
    accounts_to_name,
    certbot_failures,
    dir_args,
    failure_reasons,
    run_certbot,
)
from certbot_kvault._internal.renew.saving import DEFAULT_PUSH_RETRY_FOR, save
from certbot_kvault._internal.renew.status import LineageStatus, remember, renewal_fleet
from certbot_kvault._internal.renew.stopping import CERTBOT, PREPARE, SAVE, StopNow, Stopping
from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.store.records import LineageRecord, RecordError, validate_name
from certbot_kvault._internal.sync.jobs import Report, parallel
from certbot_kvault._internal.sync.pull import pull
from certbot_kvault._internal.tree import confs
from certbot_kvault._internal.tree.dirlock import DirLock
from certbot_kvault._internal.tree.storage import Tree

if TYPE_CHECKING:  # the caller builds the clients (ari.py loads acme's client)
    from certbot_kvault._internal.renew.ari import AriClients

State = tuple[Optional[int], Optional[str]]


class PullFailed(errors.Error):
    """Some records could not be pulled, so running certbot is not safe."""


# ---- what changed in a lineage --------------------------------------------------------


def _state(tree: Tree, name: str) -> State:
    """(archive version, renewal conf without the ARI hint) of a local lineage."""
    try:
        version = tree.current_version(name)
        conf = confs.parse_file(tree.renewal_conf_path(name))
    except RecordError:  # not a lineage name certbot-kvault takes: nothing to compare
        return None, None
    except (OSError, confs.ConfError):
        return version, None
    conf.pop("acme_renewal_info", None)
    return version, json.dumps(conf.dict(), sort_keys=True, default=str)


def _states(tree: Tree) -> dict[str, State]:
    return {n: _state(tree, n) for n in tree.lineage_names()}


# ---- renew -------------------------------------------------------------------------------------


def renew(layout: Layout, tree: Tree, args: list[str], *, workers: int, lock_wait: float,
          lock_ttl: int, rules: Rules, metrics_file: Optional[str],
          finish_pending: Callable[[], Report],
          say: Notify, notify: Notify, stream: Notify, stream_err: Optional[Notify] = None,
          push_retry_for: float = DEFAULT_PUSH_RETRY_FOR,
          ari: Optional[AriClients] = None, stop: Optional[Stopping] = None,
          dir_lock: Optional[DirLock] = None) -> int:
    """Decide, lock, pull, ``certbot renew ARGS``, push, remember, unlock; the exit status.

    Metrics go to ``metrics_file`` (if any) however the run ends.
    ``finish_pending`` completes what a deploy hook left undone (under the lock).
    ``stream_err`` gets certbot's stderr as it comes (else certbot writes it itself).
    ``ari`` asks the CAs' ARI (ari.py) before the decision; None: never asked.
    ``stop``: the signals and deadlines of the run (stopping.py; default: the defaults).
    ``dir_lock``: certbot's lock on the config dir, taken before the tree is touched
    and handed to certbot while it runs (the caller releases it).
    """
    metrics = Metrics(started=time.time())
    stop = stop or Stopping()

    def read() -> dict[str, LineageStatus]:
        return renewal_fleet(layout, workers, ari, notify=notify,
                             all_memory=rules.every or rules.due_within is not None)

    code = 1
    with stop.handling():
        try:
            code = _renew(layout, tree, args, workers, lock_wait, lock_ttl, rules, metrics,
                          finish_pending, say, notify, stream, stream_err,
                          push_retry_for, read, stop, dir_lock or DirLock(None))
        except StopNow:  # before certbot started: nothing to save
            code = stop.exit_code
            notify(_stop_line("renew", stop, "before certbot started: nothing renewed; "
                                             "locks released"))
        finally:
            metrics.exit_code = code
            if metrics_file:
                metrics.write(metrics_file)
    return code


def _renew(layout: Layout, tree: Tree, args: list[str], workers: int, lock_wait: float,
           lock_ttl: int, rules: Rules, metrics: Metrics,
           finish_pending: Callable[[], Report],
           say: Notify, notify: Notify, stream: Notify, stream_err: Optional[Notify],
           push_retry_for: float, read: Callable[[], dict[str, LineageStatus]],
           stop: Stopping, dir_lock: DirLock) -> int:
    with Locks(layout, ttl=lock_ttl, notify=notify) as locks:
        with stop.phase(PREPARE):
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
                dir_lock.acquire()
                finished = finish_pending()
                for item, err in finished.failed:
                    notify(f"error: {item}: {err}")
                return 0 if finished.ok else 1

            dir_lock.acquire()
            finished = finish_pending()
            pulled = pull(tree, layout, plan.names, workers=workers, used_accounts_only=True)
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
        # With --server, certbot leaves the account to the user: each lineage's own.
        accounts = accounts_to_name(tree, allowed, args)
        used = sorted(set(accounts.values()))
        with dir_lock.released(lambda: stop.stopping), stop.phase(CERTBOT):  # certbot takes it
            if allowed and set(allowed) == set(local) and (
                    not accounts or (set(accounts) == set(allowed) and len(used) == 1)):
                rc, output = run_certbot([*base, *(["--account", *used] if used else [])],
                                         stream, stream_err, stop)
            else:
                # The dir holds lineages this renewer may not touch (kept from
                # earlier runs, or held by other renewers), or they use several
                # accounts: one certbot each.
                for name in allowed:
                    if stop.stopping:
                        break
                    named = ["--account", accounts[name]] if name in accounts else []
                    rcs[name], one_out = run_certbot([*base, "--cert-name", name, *named],
                                                     stream, stream_err, stop)
                    rc = rc or rcs[name]
                    output += one_out
        after = _states(tree)
        changed = [n for n in sorted(after) if before.get(n) != after[n]]
        grew = {n for n in changed
                if (after[n][0] or 0) > ((before.get(n) or (0, None))[0] or 0)}
        certbot_failed = certbot_failures(rc, rcs, output, allowed, grew, stop.stopping)
        failed |= certbot_failed
        pushed = save(tree, layout, changed, workers, push_retry_for, notify, stop,
                      {n: pulled.versions[n] for n in changed if n in pulled.versions})
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
        renewed = [n for n in changed if n not in failed and n in grew]
        for name in renewed:
            say(f"renewed: {name} (version {after[name][0]}, saved to Vault)")
        metrics.renewed = len(renewed)
        metrics.failed = len(failed)
        try:  # within the grace when stopping: the certificates were saved first
            with stop.phase(SAVE):
                _take_back(tree, layout, pushed.fenced, workers, notify)
                if not rules.dry_run:
                    outcomes: dict[str, Optional[str]] = {
                        n: None for n in allowed if n in grew and n not in pushed.fenced}
                    reasons = failure_reasons(output)
                    for name in certbot_failed:
                        outcomes[name] = reasons.get(name) or "certbot failed to renew it " \
                                                              "(see its output, or letsencrypt.log)"
                    metrics.state_errors = remember(layout, plan.fleet, outcomes, workers,
                                                    notify)
                    metrics.observe(plan.fleet[n] for n in outcomes if n in plan.fleet)
        except StopNow:
            notify(f"warning: {stop.why()}: the renewal memory in Vault was not updated")
        if not pushed.fenced:
            for why in lost.values():
                notify(f"warning: {why}; Vault had not changed since this run pulled, so "
                       "what was renewed here was saved")
    say(f"renew: {len(renewed)} renewed, {len(failed)} failed, {len(allowed)} due, "
        f"{len(plan.fleet)} checked")
    if stop.stopping:
        unsaved = sum(1 for n in grew if n in failed and n not in certbot_failed)
        notify(_stop_line("renew", stop, f"{len(renewed)} renewed and saved to Vault, "
                                         f"{unsaved} renewed and NOT saved; locks released"))
        return stop.exit_code
    if rc != 0:
        return rc
    if failed or not pushed.ok or not pulled.ok or not finished.ok:
        return 1
    return 0


def _stop_line(command: str, stop: Stopping, what: str) -> str:
    """The one line that says how a stopped run ended."""
    prefix = "error: " if stop.timed_out else ""
    return f"{prefix}{command}: {stop.why()}; {what} (exit {stop.exit_code})"


def _take_back(tree: Tree, layout: Layout, names: list[str], workers: int,
               notify: Notify) -> None:
    """Put Vault's copy of lineages whose push was fenced back on disk, so that a
    later push from this config dir cannot replace it with ours."""
    if not names:
        return
    report = pull(tree, layout, names, workers=workers, accounts=False)
    for item, err in report.failed:
        notify(f"error: {item}: {err}")


# ---- run ---------------------------------------------------------------------------------------


def run(layout: Layout, tree: Tree, args: list[str], *, workers: int,
        finish_pending: Callable[[], Report],
        say: Notify, notify: Notify, stream: Notify,
        push_retry_for: float = DEFAULT_PUSH_RETRY_FOR, stop: Optional[Stopping] = None,
        dir_lock: Optional[DirLock] = None) -> int:
    """Pull, certbot ARGS, push, read back; the exit status.

    Raises PullFailed (certbot not run) if any record could not be pulled.
    ``stop``: the signals and deadlines of the run (stopping.py). ``dir_lock``: as for
    ``renew``.
    """
    stop = stop or Stopping()
    dir_lock = dir_lock or DirLock(None)
    with stop.handling():
        try:
            with stop.phase(PREPARE):
                layout.vault.login()  # before the config dir is made to lock it
                dir_lock.acquire()
                finished = finish_pending()
                pulled = pull(tree, layout, None, workers=workers)
            for line in pulled.warnings:
                notify(line)
            for item, err in pulled.failed:
                notify(f"error: {item}: {err}")
            if not pulled.ok:
                raise PullFailed(
                    f"Not running certbot: {len(pulled.failed)} record(s) could not be pulled "
                    "from Vault (above); certbot could otherwise create duplicate lineages. "
                    "Fix or `certbot-kvault rm` them.")
            ambiguous = account_ambiguity(tree, args)
            if ambiguous:
                raise AccountNotChosen(ambiguous)
            extra = []
            if args and args[0] == "renew" and "--no-random-sleep-on-renew" not in args:
                # Without a TTY certbot would sleep up to 8 minutes first.
                extra.append("--no-random-sleep-on-renew")
            before = _states(tree)
            with dir_lock.released(lambda: stop.stopping), stop.phase(CERTBOT):
                rc, _ = run_certbot([*args, *extra, *dir_args(tree)], stream, stop=stop)
        except StopNow:  # raised before certbot started only
            notify(_stop_line("run", stop, "before certbot started: nothing run"))
            return stop.exit_code
        after = _states(tree)
        changed = [n for n in sorted(after) if before.get(n) != after[n]]
        pushed = save(tree, layout, None, workers, push_retry_for, notify, stop,
                      {n: pulled.versions[n] for n in changed if n in pulled.versions},
                      at_stake=changed)
        problems = [f"{item}: {err}" for item, err in finished.failed + pushed.failed]
        try:  # reading back is for a run that was not stopped
            with stop.phase(SAVE):
                if not stop.stopping:
                    problems += verify(tree, layout, workers)
                _take_back(tree, layout, pushed.fenced, workers, notify)
        except StopNow:
            pass
        for p in problems:
            notify(f"error: {p}")
        if stop.stopping:
            for item in pushed.written:
                say(f"pushed: {item}")
            unsaved = sum(1 for item, _ in pushed.failed if item.startswith("lineage "))
            notify(_stop_line("run", stop, f"{len(pushed.written)} pushed, {unsaved} "
                                           "lineage(s) NOT saved"))
            return stop.exit_code
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
        if not (remote.same_content(local) or tree.as_pulled(remote, local)):
            return (f"lineage {name}: Vault holds version {remote.version}, this machine "
                    f"{local.version} (or other content)")
        return None

    for _, problem in parallel(tree.lineage_names(), check_lineage, workers):
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
