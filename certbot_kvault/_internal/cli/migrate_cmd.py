"""``certbot-kvault import``: a certbot config dir, or another tool's layout in Vault, into
Vault (its own module: reading other layouts loads certbot's ACME side, which ``pull``
does without).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import click
from click.core import ParameterSource

from certbot_kvault._internal.apps import migrate
from certbot_kvault._internal.cli.common import (
    Context,
    common_options,
    dir_lock_option,
    print_report,
    progress_bar,
)
from certbot_kvault._internal.sync.push import push
from certbot_kvault._internal.vault.client import VaultClient


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
@dir_lock_option
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
        origin = click.get_current_context().get_parameter_source("o_config_dir")
        given = {ParameterSource.COMMANDLINE: "--config-dir ",
                 ParameterSource.ENVIRONMENT: "KVAULT_CONFIG_DIR="}.get(origin) if origin \
            else None
        raise click.ClickException(
            f"{given}{tree.config_dir} does not exist: it is certbot's config dir to import."
            if given else f"{tree.config_dir} (the default) does not exist; pass --config-dir "
                          "(certbot's config dir to import).")
    with ctx.dir_lock() as lock:
        lock.acquire()
        with progress_bar(ctx, "import") as tick:
            report = push(tree, ctx.layout, workers=ctx.workers, progress=tick)
        hook = tree.install_hook()
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
