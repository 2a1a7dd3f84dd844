"""``certbot-kvault pull``, ``push`` and ``deploy-hook``: the config dir and Vault.

Thin click commands over sync/ (pull.py, push.py); ``deploy-hook`` is what certbot runs after
every issuance or renewal (the hook that pull/import/the plugin install).
"""
from __future__ import annotations

import os
import sys

import click
from certbot import errors

from certbot_kvault._internal.cli.common import (
    DEFAULT_CONFIG_DIR,
    Context,
    common_options,
    dir_lock_option,
    print_report,
    progress_bar,
    trust_option,
)
from certbot_kvault._internal.store.records import validate_name
from certbot_kvault._internal.sync import pull as sync_pull
from certbot_kvault._internal.sync import push as sync_push
from certbot_kvault._internal.tree import confs, pending
from certbot_kvault._internal.tree.storage import Tree
from certbot_kvault._internal.vault.errors import VaultError
from certbot_kvault._internal.vault.redact import one_line as _one_line
from certbot_kvault._internal.vault.settings import SETTING_OPTIONS


@click.command()
@click.argument("names", nargs=-1)
@trust_option
@dir_lock_option
@common_options(json_opt=True)
def pull(ctx: Context, names: tuple[str, ...]) -> None:
    """Rebuild the certbot config dir from Vault (all lineages, or NAMES, and all accounts).

    Holds certbot's lock on the config dir meanwhile, as certbot does.
    """
    for n in names:
        validate_name(n)
    ctx.vault.login()  # a Vault that refuses us leaves no config dir behind
    with ctx.dir_lock(create=True) as lock:
        lock.acquire()
        ctx.finish_pending()
        with progress_bar(ctx, "pull") as tick:
            report = sync_pull.pull(ctx.tree, ctx.layout, list(names) or None,
                                    workers=ctx.workers, progress=tick)
    print_report(ctx, report, "pulled")


@click.command()
@click.argument("names", nargs=-1)
@click.option("--force", is_flag=True,
              help="Compare with Vault whatever kvault/synced.json says, and write what "
                   "differs or is damaged there (check-and-set against the version read): "
                   "repairs a record corrupted in Vault from this machine's files")
@dir_lock_option
@common_options(json_opt=True)
def push(ctx: Context, names: tuple[str, ...], force: bool) -> None:
    """Write local lineages (all, or NAMES) and accounts to Vault; only what changed.

    A lineage unchanged here since the last pull or push is not even read back;
    --force reads it, and rewrites it when Vault's copy differs or is damaged.
    Holds certbot's lock on the config dir meanwhile, as certbot does.
    """
    for n in names:
        validate_name(n)
    with ctx.dir_lock() as lock:
        lock.acquire()
        report = ctx.finish_pending()
        with progress_bar(ctx, "push") as tick:
            report.merge(sync_push.push(ctx.tree, ctx.layout, list(names) or None,
                                        workers=ctx.workers, progress=tick, force=force))
    print_report(ctx, report, "pushed")


@click.command("deploy-hook")
@common_options()
def deploy_hook(ctx: Context) -> None:
    """Push $RENEWED_LINEAGE to Vault (what certbot's deploy hook runs).

    Only a lineage kept in Vault (in Vault already, its renewal conf naming
    kvault, or synced from this dir before); another one is left alone with
    one line (`certbot-kvault push NAME` puts it in Vault). On failure it
    leaves a pending mark that the next certbot-kvault command completes,
    and says what to run.
    """
    live = os.environ.get("RENEWED_LINEAGE")
    if not live:
        raise click.ClickException("RENEWED_LINEAGE is not set: this command is run by certbot "
                                   "as a deploy hook. To push by hand: certbot-kvault push NAME")
    name = validate_name(os.path.basename(os.path.normpath(live)))
    parent = pending.parent_pushes()
    if parent is not None:
        # Its push is checked against what it pulled (a renewer that lost its
        # lock must not overwrite); one from here would not be.
        click.echo(f"deploy hook: not pushing {name}: certbot-kvault (pid {parent}) that "
                   "runs this certbot pushes it when certbot is done.")
        return
    if ctx.opts.get("config_dir") in (None, DEFAULT_CONFIG_DIR):
        ctx.opts["config_dir"] = os.path.dirname(os.path.dirname(os.path.normpath(live)))
    tree = ctx.tree
    _apply_renewal_settings(ctx, tree, name)
    push_by_hand = f"certbot-kvault push --config-dir {tree.config_dir} {name}"
    try:
        kept = pending.kept_in_vault(tree, ctx.layout, name)
    except (errors.Error, VaultError) as e:
        # Nothing here says it is Vault's: not marked pending either, so no later
        # command pushes a lineage that may never have been meant for Vault.
        raise click.ClickException(
            f"deploy hook: not pushing {name}: nothing in {tree.config_dir} says it is kept "
            f"in Vault, and Vault could not be asked ({_one_line(e)}); if it is: "
            f"{push_by_hand}") from None
    if not kept:
        click.echo(f"deploy hook: not pushing {name}: it is not kept in Vault (not at "
                   f"{ctx.layout.where('certificates', name)}, its renewal conf names no "
                   f"kvault plugin, never synced from here); to keep it in Vault: "
                   f"{push_by_hand}")
        return
    try:
        report = ctx.finish_pending()
        report.merge(sync_push.push(tree, ctx.layout, [name], workers=ctx.workers))
        failures = report.failed
    except (errors.Error, VaultError, OSError) as e:
        failures = [(f"lineage {name}", _one_line(e))]
    if failures:
        reason = "; ".join(f"{i}: {e}" for i, e in failures)
        mark = pending.mark(tree, name, reason)
        click.echo(pending.loud_failure(
            f"lineage {name} was NOT saved to Vault.", f"  {reason}",
            f"  A pending mark is at {mark}; fix the cause, then run:",
            f"    certbot-kvault push --config-dir {tree.config_dir} {name}"), err=True, nl=False)
        sys.exit(1)
    for item in report.written:
        click.echo(f"pushed: {item}")


def _apply_renewal_settings(ctx: Context, tree: Tree, name: str) -> None:
    """--kvault-* options saved in the lineage's renewal conf, where the env is silent."""
    try:
        params = confs.parse_file(tree.renewal_conf_path(name)).get("renewalparams", {})
    except (OSError, confs.ConfError):
        return  # the push reads it again, and says what is wrong
    if not isinstance(params, dict):
        return
    overrides = {}
    for option, field in SETTING_OPTIONS.items():
        value = params.get(f"kvault_{option.replace('-', '_')}")
        if value and isinstance(value, str):
            overrides[field] = value
    if overrides:
        env_set = {f for f, var in ctx.settings.ENV.items() if os.environ.get(var)}
        for field, value in overrides.items():
            if field not in env_set:
                setattr(ctx.settings, field, value)
