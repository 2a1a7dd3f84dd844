"""Saving what certbot renewed or issued: the fenced push, tried again through a Vault
outage and never past a stop's grace, and a pending mark for what is not saved.

In a container the new certificate exists nowhere else, so a push that finds
Vault unreachable, sealed or failing is tried again for ``--push-retry-for``
seconds, still under the lock; a stop (stopping.py) cuts that to the rest of
its ``--stop-grace``, and an urgent one abandons the push. A lineage not saved
gets what certbot's deploy hook would have left (it stands down under
``renew``/``run``): a pending mark (pending.py) that the next certbot-kvault
command with this config dir completes, and one line naming it and the
command that finishes it. Nothing here prints but through ``notify``.
"""
from __future__ import annotations

import random
import time
from typing import Callable, Optional

from certbot import errors

from certbot_kvault._internal.renew.runner import Notify
from certbot_kvault._internal.renew.stopping import SAVE, StopNow, Stopping
from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.sync.jobs import Report
from certbot_kvault._internal.sync.push import push
from certbot_kvault._internal.tree import pending
from certbot_kvault._internal.tree.storage import Tree
from certbot_kvault._internal.vault.errors import is_transient

DEFAULT_PUSH_RETRY_FOR = 300
_MAX_BACKOFF = 10.0


def save(tree: Tree, layout: Layout, names: Optional[list[str]], workers: int,
         retry_for: float, notify: Notify, stop: Stopping, expected: dict[str, int],
         at_stake: Optional[list[str]] = None) -> Report:
    """The fenced push of what certbot changed, within the grace when stopping; an urgent
    stop abandons it, and what it was to save keeps a pending mark."""
    try:
        with stop.phase(SAVE):
            return push_until_saved(tree, layout, names, at_stake=at_stake, workers=workers,
                                    retry_for=retry_for, notify=notify, expected=expected,
                                    stop=stop)
    except StopNow:
        stake = list(names or []) if at_stake is None else at_stake
        return not_saved(tree, layout, Report(), stake, stop.not_saved_reason())


def push_until_saved(tree: Tree, layout: Layout, names: Optional[list[str]], *,
                     at_stake: Optional[list[str]] = None, workers: int, retry_for: float,
                     notify: Notify, expected: Optional[dict[str, int]] = None,
                     sleep: Callable[[float], None] = time.sleep,
                     clock: Callable[[], float] = time.monotonic,
                     stop: Optional[Stopping] = None) -> Report:
    """``push``, tried again while Vault is unreachable, sealed or answering 5xx.

    Only while something renewed here is at stake (``at_stake``, default
    ``names``): a container's new certificate exists nowhere else. Pauses grow
    1, 2, 4 ... up to 10 s, with jitter, for at most ``retry_for`` seconds (and
    never past a ``stop``'s grace, should one come); then each lineage at stake
    is reported failed and left with a pending mark that the next
    certbot-kvault command with this config dir completes.
    """
    stake = list(names or []) if at_stake is None else at_stake
    deadline = clock() + max(0.0, retry_for)
    delay = 1.0
    while True:
        try:
            report = push(tree, layout, names, workers=workers, expected=expected)
        except errors.Error as e:
            if not stake:
                raise
            left, flag = deadline - clock(), "--push-retry-for"
            if stop is not None and stop.remaining() < left:
                left, flag = stop.remaining(), "--stop-grace"
            if not is_transient(e) or left <= 0:
                return not_saved(tree, layout, Report(), stake, str(e))
            pause = min(left, delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
            what = ", ".join(stake[:5]) + (f" and {len(stake) - 5} more" if len(stake) > 5
                                           else "")
            notify(f"warning: saving {what} to Vault failed ({e}); trying again "
                   f"in {pause:.1f}s, for {left:.0f}s more ({flag})")
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
            not_saved(tree, layout, report, [name], reasons[item])
        return report


def not_saved(tree: Tree, layout: Layout, report: Report, names: list[str],
               reason: str) -> Report:
    """Each lineage failed in ``report``, saying so, with a pending mark."""
    for name in names:
        mark = pending.mark(tree, name, reason)
        report.failed.append((f"lineage {name}", f"was NOT saved to Vault at "
                                                 f"{layout.where('certificates', name)} "
                                                 f"({reason}); pending mark at {mark}: run "
                                                 f"`certbot-kvault push --config-dir "
                                                 f"{tree.config_dir} {name}`"))
    return report
