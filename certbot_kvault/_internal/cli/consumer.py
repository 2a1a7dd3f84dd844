"""``certbot-kvault list``, ``show``, ``export`` and ``rm``: the lineages in Vault, for the
people and apps that consume the certificates (no config dir needed).
"""
from __future__ import annotations

import json
import time
from typing import Any, Optional

import click

from certbot_kvault._internal import export
from certbot_kvault._internal.cli.common import Context, common_options, note_pending, progress_bar
from certbot_kvault._internal.records import LineageRecord, validate_name
from certbot_kvault._internal.schedule import LineageStatus, read_fleet, with_state
from certbot_kvault._internal.timefmt import floor_time


@click.command("list")
@common_options(tree=False, json_opt=True, config_dir=True)
def list_(ctx: Context) -> None:
    """NAME  SUBJECT  EXPIRATION  AUTO_RENEWABLE  NEXT_RENEWAL  FAILURES, from Vault alone.

    NEXT_RENEWAL is when certbot's rule makes the lineage due (`now` when it
    is; the end of a failure backoff when that is later); FAILURES counts the
    renewals that failed in a row (`?` when this token may not read the
    renewal memory, e.g. with the reader policy).
    """
    note_pending(ctx)
    layout = ctx.layout
    rows: list[dict[str, Any]] = []
    with progress_bar(ctx, "list") as tick:
        fleet = read_fleet(layout, layout.list_lineages(), ctx.workers, progress=tick)
    for name, status in sorted(fleet.items()):
        d = status.entry.data
        domains = d.get("domains") or []
        row = {"name": name, "subject": domains[0] if domains else None,
               "domains": domains, "not_after": d.get("not_after"),
               "auto_renewable": bool(d.get("auto_renewable", True)),
               "version": d.get("version")}
        row.update(status.as_json())
        rows.append(row)
    if ctx.json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    table = [("NAME", "SUBJECT", "EXPIRATION", "AUTO_RENEWABLE", "NEXT_RENEWAL", "FAILURES")]
    for r in rows:
        status = fleet[r["name"]]
        table.append((r["name"], r["subject"] or "-", r["not_after"] or "-",
                      "yes" if r["auto_renewable"] else "no", _next(status),
                      "?" if status.state_error else str(status.failures)))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    for line in table:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())


def _next(status: LineageStatus) -> str:
    if status.backoff_until is not None:
        return f"{floor_time(status.backoff_until)} (backoff)"
    if status.due:
        return "now"
    when = status.next_renewal
    return "never (autorenew off)" if when is None else floor_time(when)


@click.command()
@click.argument("name")
@common_options(tree=False, json_opt=True, config_dir=True)
def show(ctx: Context, name: str) -> None:
    """One lineage: subject, alt names, validity, serial, key type (never the key)."""
    note_pending(ctx)
    layout = ctx.layout
    where = layout.where("certificates", name)
    entry = layout.read_lineage_raw(validate_name(name))
    if entry is None:
        raise click.ClickException(f"No lineage {name} in Vault ({where}).")
    record = LineageRecord.from_kv(name, entry, where)
    status = with_state(layout, name, entry, time.time())
    info = record.info
    assert info is not None
    out = {"name": name, "subject": info.domains[0] if info.domains else None,
           "domains": info.domains, "not_before": info.not_before,
           "not_after": info.not_after, "serial": info.serial, "key_type": info.key_type,
           "auto_renewable": record.auto_renewable, "version": record.version,
           "updated_at": record.updated_at, **status.as_json()}
    if ctx.json:
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    for key in ("name", "subject", "domains", "not_before", "not_after", "serial", "key_type",
                "auto_renewable", "version", "updated_at"):
        value = out[key]
        click.echo(f"{key}: {', '.join(value) if isinstance(value, list) else value}")
    for key, value in _renewal_lines(status):
        click.echo(f"{key}: {value}")


def _renewal_lines(status: LineageStatus) -> list[tuple[str, str]]:
    """What ``show`` says about the lineage's renewal, in certbot's words."""
    lines = [("next_renewal", _next(status)), ("renewal_rule", status.decision.describe())]
    st = status.state
    if st is None:
        lines.append(("failures", "unknown: this token may not read the renewal memory"
                      if status.state_error else "0"))
        return lines
    lines.append(("failures", str(st.failures)))
    for key, value in (("last_error", st.last_error), ("last_attempt", st.last_attempt),
                       ("last_success", st.last_success)):
        if value is not None:
            lines.append((key, value if isinstance(value, str) else floor_time(value)))
    if st.ari_start is not None and st.ari_end is not None and st.serial == status.serial:
        lines.append(("ari_window", f"{floor_time(st.ari_start)} .. {floor_time(st.ari_end)}"))
    if st.ari_next_check is not None and st.serial == status.serial:
        lines.append(("ari_next_check", floor_time(st.ari_next_check)))
    return lines


@click.command("export")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Write the files here (formats pem and bundle)")
@click.option("--format", "fmt", type=click.Choice(export.FORMATS), default="pem",
              show_default=True, help="pem: cert/chain/fullchain/privkey.pem; bundle: "
                                      "NAME.pem = key + full chain; env: SSL_CERT_<NAME>_* "
                                      "lines on stdout for eval/source")
@common_options(tree=False)
def export_(ctx: Context, name: str, directory: Optional[str], fmt: str) -> None:
    """Write one lineage from Vault for an app (init-container style), or print env lines.

    \b
    certbot-kvault export example.com --dir /certs
    certbot-kvault export example.com --dir /certs --format bundle
    eval "$(certbot-kvault export example.com --format env)"
    """
    if fmt != "env" and not directory:
        raise click.ClickException(f"--format {fmt} writes files: pass --dir DIR.")
    record = ctx.layout.load_lineage(validate_name(name))
    if record is None:
        raise click.ClickException(f"No lineage {name} in Vault "
                                   f"({ctx.layout.where('certificates', name)}).")
    if fmt == "env":
        for line in export.env_lines(record):
            click.echo(line)
        return
    assert directory is not None
    for path in export.export_files(record, directory, fmt):
        click.echo(f"wrote: {path}")


@click.command()
@click.argument("name")
@click.option("--purge", is_flag=True, help="Delete all versions and metadata (KV v2)")
@common_options(tree=False)
def rm(ctx: Context, name: str, purge: bool) -> None:
    """Delete a lineage and its renewal memory from Vault (the latest version; all of
    them with --purge)."""
    layout = ctx.layout
    if layout.read_lineage_raw(validate_name(name)) is None and not purge:
        raise click.ClickException(f"No lineage {name} in Vault "
                                   f"({layout.where('certificates', name)}).")
    # The memory first: a token that may not delete it stops before the certificate
    # goes, and a lineage issued again later under this name starts with no failures.
    had_state = layout.load_state(name) is not None
    layout.delete_state(name, purge=purge)
    layout.delete_lineage(name, purge=purge)
    suffix = " (all versions)" if purge else ""
    click.echo(f"deleted: {layout.where('certificates', name)}{suffix}")
    if had_state:
        click.echo(f"deleted: {layout.where('state', name)}{suffix}")
