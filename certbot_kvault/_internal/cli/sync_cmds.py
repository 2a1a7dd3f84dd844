"""``certbot-kvault pull``, ``push``, ``import`` and ``deploy-hook``: the config dir and Vault.

Thin click commands over sync.py; ``deploy-hook`` is what certbot runs after
every issuance or renewal (the hook that pull/import/the plugin install).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Optional

import click
from certbot import errors

from certbot_kvault._internal import migrate, pending, sync
from certbot_kvault._internal.cli.common import (
    DEFAULT_CONFIG_DIR,
    Context,
    common_options,
    print_report,
    progress_bar,
    trust_option,
)
from certbot_kvault._internal.errors import VaultError
from certbot_kvault._internal.executables import kvault_bin
from certbot_kvault._internal.records import validate_name
from certbot_kvault._internal.redact import one_line as _one_line
from certbot_kvault._internal.settings import SETTING_OPTIONS
from certbot_kvault._internal.tree import Tree
from certbot_kvault._internal.vault import VaultClient


@click.command()
@click.argument("names", nargs=-1)
@trust_option
@common_options(json_opt=True)
def pull(ctx: Context, names: tuple[str, ...]) -> None:
    """Rebuild the certbot config dir from Vault (all lineages, or NAMES, and all accounts)."""
    for n in names:
        validate_name(n)
    ctx.finish_pending()
    with progress_bar(ctx, "pull") as tick:
        report = sync.pull(ctx.tree, ctx.layout, list(names) or None, workers=ctx.workers,
                           kvault_bin=kvault_bin(), progress=tick)
    print_report(ctx, report, "pulled")


@click.command()
@click.argument("names", nargs=-1)
@common_options(json_opt=True)
def push(ctx: Context, names: tuple[str, ...]) -> None:
    """Write local lineages (all, or NAMES) and accounts to Vault; only what changed."""
    for n in names:
        validate_name(n)
    report = ctx.finish_pending()
    with progress_bar(ctx, "push") as tick:
        report.merge(sync.push(ctx.tree, ctx.layout, list(names) or None, workers=ctx.workers,
                               progress=tick))
    print_report(ctx, report, "pushed")


@click.command("import")
@click.option("--from", "source", type=click.Choice(migrate.SOURCES), default=None,
              help="Import another tool's layout in Vault instead of a config dir")
@click.option("--path", "path", metavar="MOUNT/PATH",
              help="Where that layout is (default: epages secret/lets-encrypt, "
                   "certbot-vault-installer kv/letsencrypt)")
@click.option("--server", default=migrate.LETSENCRYPT, show_default=True, metavar="URL",
              help="The ACME directory of the imported account and lineages")
@click.option("--dns", "dns_entry", metavar="NAME",
              help="Our DNS entry (certbot-kvault dns) the imported lineages renew with "
                   "(default: the migrated DNSimple token, else standalone http-01)")
@click.option("--account", "account", metavar="ID",
              help="Our ACME account for a layout without one (default: the only one on "
                   "--server)")
@click.option("--dry-run", is_flag=True, help="Say what would be written; write nothing")
@click.option("--force", is_flag=True, help="Replace records of ours that differ")
@common_options(json_opt=True)
def import_(ctx: Context, source: Optional[str], path: Optional[str], server: str,
            dns_entry: Optional[str], account: Optional[str], dry_run: bool,
            force: bool) -> None:
    """Migrate a certbot config dir, or another tool's layout in Vault, into Vault.

    A config dir (--config-dir) is pushed and gets the deploy hook; with --from,
    another tool's records are read (never changed) and written in our layout.
    """
    if source is not None:
        _import_from(ctx, source, path or migrate.DEFAULT_PATHS[source],
                     migrate.Options(server=server, dns=dns_entry, account=account),
                     dry_run=dry_run, force=force)
        return
    if path or dry_run or force or dns_entry or account:
        raise click.UsageError("--path, --dns, --account, --dry-run and --force go with "
                               "--from.")
    tree = ctx.tree
    if not os.path.isdir(tree.config_dir):
        raise click.ClickException(f"{tree.config_dir} does not exist; pass --config-dir.")
    with progress_bar(ctx, "import") as tick:
        report = sync.push(tree, ctx.layout, workers=ctx.workers, progress=tick)
    hook = tree.install_hook(kvault_bin())
    if not ctx.json:
        click.echo(f"deploy hook: {hook}")
    print_report(ctx, report, "imported")


def _import_from(ctx: Context, source: str, path: str, opts: migrate.Options, *,
                 dry_run: bool, force: bool) -> None:
    mount, _ = migrate.split_path(path)
    theirs = VaultClient(dataclasses.replace(ctx.settings, mount=mount))
    try:
        plan = migrate.read(source, theirs, path, ctx.layout, opts, workers=ctx.workers)
    finally:
        theirs.close()
    with progress_bar(ctx, "import") as tick:
        report = migrate.apply(ctx.layout, plan, force=force, dry_run=dry_run, progress=tick)
    if dry_run and not ctx.json:
        written = set(report.written)
        for item in plan.items:
            if item.item in written:
                click.echo(f"would write {item.where} (from {item.source}): {item.summary}")
    print_report(ctx, report, "to write (dry run)" if dry_run else "imported")


@click.command("deploy-hook")
@common_options()
def deploy_hook(ctx: Context) -> None:
    """Push $RENEWED_LINEAGE to Vault (what certbot's deploy hook runs).

    On failure it leaves a pending mark that the next certbot-kvault command
    completes, and says what to run.
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
    try:
        report = ctx.finish_pending()
        report.merge(sync.push(tree, ctx.layout, [name], workers=ctx.workers))
        failures = report.failed
    except (errors.Error, VaultError) as e:
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
    path = tree.renewal_conf_path(name)
    if not os.path.exists(path):
        return
    import configobj

    params = configobj.ConfigObj(path, encoding="utf-8").get("renewalparams", {})
    overrides = {}
    for option, field in SETTING_OPTIONS.items():
        value = params.get(f"kvault_{option.replace('-', '_')}")
        if value:
            overrides[field] = value
    if overrides:
        env_set = {f for f, var in ctx.settings.ENV.items() if os.environ.get(var)}
        for field, value in overrides.items():
            if field not in env_set:
                setattr(ctx.settings, field, value)
