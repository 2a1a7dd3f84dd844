"""`certbot-kvault run` and `certbot-kvault renew`: stateless certbot runs against Vault.

Thin click commands: they parse the options, call renew/flows.py (the flows;
plan.py picks the locks and lineages, runner.py runs certbot; docs/DESIGN.md
explains the design) and print what it reports: results and certbot's output
on stdout, progress and errors on stderr.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional, TypeVar

import click

from certbot_kvault._internal.cli.common import (
    Context,
    common_options,
    dir_lock_option,
    trust_option,
)
from certbot_kvault._internal.renew import flows, runner, saving, stopping
from certbot_kvault._internal.renew.locks import DEFAULT_TTL, MAX_TTL, MIN_TTL
from certbot_kvault._internal.renew.plan import ALL, Rules

F = TypeVar("F", bound=Callable[..., Any])


def _say(message: str) -> None:
    click.echo(message)


def _notify(message: str) -> None:
    click.echo(message, err=True)


def _stream(chunk: str) -> None:
    click.echo(chunk, nl=False)


def _stream_err(chunk: str) -> None:
    click.echo(chunk, nl=False, err=True)


# certbot arguments that make every lineage a candidate, as they do for certbot.
_EVERY = ("--force-renewal", "--renew-by-default", "--dry-run")


def _cert_name(args: list[str]) -> Optional[str]:
    """The lineage ``--cert-name`` names among certbot's arguments (certbot renews one)."""
    name = None
    for i, arg in enumerate(args):
        if arg == "--cert-name" and i + 1 < len(args):
            name = args[i + 1]
        elif arg.startswith("--cert-name="):
            name = arg.split("=", 1)[1]
    return name


def _push_retry_option() -> Callable[[F], F]:
    return click.option(
        "--push-retry-for", type=click.FloatRange(min=0), default=saving.DEFAULT_PUSH_RETRY_FOR,
        show_default=True, envvar="KVAULT_PUSH_RETRY_FOR", metavar="SECONDS",
        help="When Vault is unreachable, sealed or answers 5xx while saving a new "
             "certificate, keep trying (with backoff) this long before giving up "
             "[KVAULT_PUSH_RETRY_FOR]")


def _stop_options(fn: F) -> F:
    """--stop-grace and --timeout: how a run ends on a signal or when it takes too long."""
    fn = click.option(
        "--timeout", type=click.FloatRange(min=1), default=stopping.DEFAULT_TIMEOUT,
        show_default=True, envvar="KVAULT_TIMEOUT", metavar="SECONDS",
        help="Stop the run after this long, as on SIGTERM: certbot gets SIGTERM (then "
             f"SIGINT, and SIGKILL after half of --stop-grace, at most {stopping.KILL_AFTER:g}s), "
             f"what it renewed is saved within --stop-grace, exit {stopping.TIMEOUT_EXIT}. Keep "
             "it below the scheduler's own deadline [KVAULT_TIMEOUT]")(fn)
    return click.option(
        "--stop-grace", type=click.FloatRange(min=0), default=stopping.DEFAULT_GRACE,
        show_default=True, envvar="KVAULT_STOP_GRACE", metavar="SECONDS",
        help="On SIGTERM, SIGINT or SIGHUP (or --timeout): certbot gets the signal, and what "
             "it renewed is saved to Vault within this long (keep it under `docker stop`'s "
             "or the pod's grace period); a second signal stops at once. Exit 128+signal "
             "[KVAULT_STOP_GRACE]")(fn)


@click.command("renew")
@click.option("--lock-wait", type=click.FloatRange(min=0), default=0, show_default=True,
              envvar="KVAULT_LOCK_WAIT", metavar="SECONDS",
              help="How long to wait for another renewer's lock before giving up (exit 0) "
                   "[KVAULT_LOCK_WAIT]")
@click.option("--lock-ttl", type=click.IntRange(min=MIN_TTL, max=MAX_TTL), default=DEFAULT_TTL,
              show_default=True, envvar="KVAULT_LOCK_TTL", metavar="SECONDS",
              help="Lease of the Vault lock; renewed every TTL/3 while we run, taken over "
                   "by others this long after we die [KVAULT_LOCK_TTL]")
@click.option("--due-within", type=click.FloatRange(min=0), default=None,
              envvar="KVAULT_DUE_WITHIN", metavar="DAYS",
              help="Instead of certbot's rule, renew the lineages expiring within DAYS; implies "
                   "--lineage-locks [KVAULT_DUE_WITHIN]")
@click.option("--lineage-locks", is_flag=True, default=False, envvar="KVAULT_LINEAGE_LOCKS",
              help="Lock each due lineage instead of the whole run, so several renewers share "
                   "the work [KVAULT_LINEAGE_LOCKS]")
@click.option("--retry-now", "retry_now", multiple=True, is_flag=False, flag_value=ALL,
              metavar="[NAME]",
              help="Try lineages in failure backoff now: the one named (repeatable), or all "
                   "when no NAME is given")
@click.option("--ari/--no-ari", default=True, show_default=True, envvar="KVAULT_ARI",
              help="Ask each CA's ACME Renewal Info (RFC 9773) when its Retry-After allows, and "
                   "follow its window [KVAULT_ARI]")
@click.option("--metrics-file", type=click.Path(dir_okay=False), default=None,
              envvar="KVAULT_METRICS_FILE", metavar="FILE",
              help="Write Prometheus textfile metrics here [KVAULT_METRICS_FILE]")
@_push_retry_option()
@_stop_options
@click.argument("certbot_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- CERTBOT-ARGS]")
@trust_option
@dir_lock_option
@common_options()
def renew(ctx: Context, lock_wait: float, lock_ttl: int, due_within: Optional[float],
          lineage_locks: bool, retry_now: tuple[str, ...], ari: bool,
          metrics_file: Optional[str], push_retry_for: float, stop_grace: float,
          timeout: float, certbot_args: tuple[str, ...]) -> None:
    """Decide what is due from Vault, lock, pull it, `certbot renew`, push, unlock.

    Starts from an empty --config-dir as well as from a full one; Vault is the
    source of truth. certbot's own rule (ARI window, else renew_before_expiry,
    else 2/3 of the lifetime, 1/2 under 10 days) picks the lineages; only they
    and their accounts are pulled, and certbot runs only if one is due. A
    lineage whose renewal failed waits (1 h, doubling, at most 24 h) before the
    next try; --retry-now overrides. Arguments after -- go to `certbot renew`:

    \b
    certbot-kvault renew
    certbot-kvault renew --lineage-locks --metrics-file /var/lib/node-exporter/kvault.prom
    certbot-kvault renew --retry-now example.com
    certbot-kvault renew -- --force-renewal --cert-name example.com

    A second renewer that cannot get the lock within --lock-wait exits 0 and
    says who holds it and until when. A renewer that lost its lock (paused past
    --lock-ttl) saves nothing over what the one that took over saved. SIGTERM,
    SIGINT or SIGHUP (docker stop, a pod evicted), or --timeout: certbot is
    stopped, what it renewed is saved within --stop-grace, the locks released,
    one line per lineage saved or NOT saved (then it has a pending mark). Exit
    status: 128+N on signal N, 124 on --timeout, certbot's if it failed, 1 if a
    renewal failed or Vault could not be updated, else 0.
    """
    args = runner.check_certbot_args(certbot_args)
    from certbot_kvault._internal.renew.ari import AriClients  # acme's client: only renew needs it

    rules = Rules(due_within=due_within, lineage_locks=lineage_locks,
                  retry_now=frozenset(v or ALL for v in retry_now),
                  every=any(a in _EVERY for a in args), dry_run="--dry-run" in args,
                  cert_name=_cert_name(args))
    with ctx.dir_lock(create=True) as dir_lock:
        code = flows.renew(
            ctx.layout, ctx.tree, args, workers=ctx.workers, lock_wait=lock_wait,
            lock_ttl=lock_ttl, rules=rules, metrics_file=metrics_file,
            finish_pending=ctx.finish_pending,
            say=_say, notify=_notify, stream=_stream, stream_err=_stream_err,
            push_retry_for=push_retry_for, ari=AriClients() if ari else None,
            stop=stopping.Stopping(grace=stop_grace, timeout=timeout), dir_lock=dir_lock)
    sys.exit(code)


@click.command("run")
@click.argument("certbot_args", nargs=-1, required=True, type=click.UNPROCESSED,
                metavar="-- CERTBOT-ARGS")
@_push_retry_option()
@_stop_options
@trust_option
@dir_lock_option
@common_options()
def run_(ctx: Context, push_retry_for: float, stop_grace: float, timeout: float,
         certbot_args: tuple[str, ...]) -> None:
    """Pull, run certbot with CERTBOT-ARGS, push; fail unless Vault then holds the result.

    \b
    certbot-kvault run -- certonly -a kvault --kvault-dns NAME -d example.com
    certbot-kvault run -- certificates

    certbot gets the same --config-dir/--work-dir/--logs-dir. On SIGTERM,
    SIGINT or SIGHUP, or at --timeout, certbot is stopped and what it produced
    is pushed within --stop-grace. Exit status: 128+N on signal N, 124 on
    --timeout, certbot's if it failed, 1 if Vault does not hold what certbot
    produced (a push failed, or reading it back differs), else 0.
    """
    args = runner.check_certbot_args(certbot_args)
    with ctx.dir_lock(create=True) as dir_lock:
        code = flows.run(ctx.layout, ctx.tree, args, workers=ctx.workers,
                           finish_pending=ctx.finish_pending,
                           say=_say, notify=_notify, stream=_stream,
                           push_retry_for=push_retry_for,
                           stop=stopping.Stopping(grace=stop_grace, timeout=timeout),
                           dir_lock=dir_lock)
    if code:
        sys.exit(code)
