"""``certbot-kvault list``, ``show``, ``export`` and ``rm``: the lineages in Vault, for the
people and apps that consume the certificates (no config dir needed).
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from typing import Any, Optional

import click

from certbot_kvault._internal.apps import export
from certbot_kvault._internal.apps import watch as watch_mod
from certbot_kvault._internal.cli.common import (
    Context,
    common_options,
    note_pending,
    progress_bar,
)
from certbot_kvault._internal.renew.status import LineageStatus, read_fleet, with_state
from certbot_kvault._internal.store.records import LineageRecord, RecordError, validate_name
from certbot_kvault._internal.store.state import MalformedState
from certbot_kvault._internal.store.timefmt import floor_time
from certbot_kvault._internal.vault.errors import VaultPermissionDenied


@click.command("list")
@common_options(tree=False, json_opt=True, config_dir=True)
def list_(ctx: Context) -> None:
    """NAME  SUBJECT  EXPIRATION  AUTO_RENEWABLE  NEXT_RENEWAL  FAILURES, from Vault alone.

    NEXT_RENEWAL is when certbot's rule makes the lineage due (`now` when it
    is; the end of a failure backoff when that is later); FAILURES counts the
    renewals that failed in a row (`?` when this token may not read the
    renewal memory, e.g. with the reader policy). A record that show, export
    and pull would refuse (a corrupt certificate, a key that does not match it)
    says `CORRUPT` there, with one line on stderr, and the exit status is 1.
    """
    note_pending(ctx)
    layout = ctx.layout
    rows: list[dict[str, Any]] = []
    names, bad = layout.lineage_names()
    for reason in bad:
        click.echo(f"warning: {reason}; not listed", err=True)
    with progress_bar(ctx, "list") as tick:
        fleet = read_fleet(layout, names, ctx.workers, progress=tick)
    for name, status in sorted(fleet.items()):
        for warning in status.warnings:
            click.echo(warning, err=True)
        d = status.entry.data
        domains = d.get("domains") or []
        if not isinstance(domains, list) or not all(isinstance(n, str) for n in domains):
            # A record's fields are data anyone who may write it chose: this one is not
            # what push writes (the PEM has the names: `show` reads them from there).
            click.echo(f"warning: lineage {name}: {layout.where('certificates', name)}: "
                       "'domains' is not a list of names; shown without them", err=True)
            domains = []
        # The certificate's own expiry, not the record's field (renew/status.py).
        expires = None if status.not_after is None else floor_time(status.not_after)
        row = {"name": name, "subject": domains[0] if domains else None,
               "domains": domains, "not_after": expires,
               "auto_renewable": bool(d.get("auto_renewable", True)),
               "version": d.get("version"),
               "error": _flaw(name, status, layout.where("certificates", name))}
        row.update(status.as_json())
        rows.append(row)
    if ctx.json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
    else:
        _table(rows, fleet)
    for r in rows:
        if r["error"]:
            click.echo(f"error: lineage {r['name']}: {r['error']}", err=True)
    denied = next((s.state_error for s in fleet.values() if s.state_error), None)
    if denied and not ctx.json:  # --json has it per lineage (state_error)
        click.echo(f"note: FAILURES is ? because this token may not read the renewal "
                   f"memory ({denied})", err=True)
    if any(r["error"] for r in rows):
        sys.exit(1)


def _flaw(name: str, status: LineageStatus, where: str) -> Optional[str]:
    """What show, export and pull would refuse in a record (they read it the same way)."""
    try:
        LineageRecord.from_kv(name, status.entry, where)
    except RecordError as e:
        return str(e)
    return None


def _table(rows: list[dict[str, Any]], fleet: dict[str, LineageStatus]) -> None:
    table = [("NAME", "SUBJECT", "EXPIRATION", "AUTO_RENEWABLE", "NEXT_RENEWAL", "FAILURES")]
    for r in rows:
        status = fleet[r["name"]]
        # SUBJECT is a record's field: whoever may write it could plant terminal
        # escapes, shown escaped here (--json escapes them itself).
        table.append((r["name"], _printable(r["subject"] or "-"),
                      _printable(r["not_after"] or "-"),
                      "yes" if r["auto_renewable"] else "no",
                      "CORRUPT" if r["error"] else _next(status),
                      "?" if status.state_error else str(status.failures)))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    for line in table:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())


def _printable(value: object) -> str:
    text = str(value)
    return text if text.isprintable() else ascii(text)[1:-1]


def _next(status: LineageStatus) -> str:
    if status.backoff_until is not None:
        return f"{floor_time(status.backoff_until)} (backoff)"
    if status.due and status.guarded_until is not None:
        return f"{floor_time(status.guarded_until)} (renewed recently)"
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
    for line in status.warnings:
        click.echo(line, err=True)
    info = record.info
    assert info is not None
    out = {"name": name, "subject": info.domains[0] if info.domains else None,
           "domains": info.domains, "not_before": info.not_before,
           "not_after": info.not_after, "serial": info.serial, "key_type": info.key_type,
           "auto_renewable": record.auto_renewable, "version": record.version,
           "kv_version": record.kv_version, "updated_at": record.updated_at,
           **status.as_json(), "issued": record.issued}
    if ctx.json:
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    # Two numbers: users mean the first (export, env lines, the Secret, KVAULT_VERSION).
    notes = {"version": f" (the certificate's: certbot's cert{record.version}.pem)",
             "kv_version": " (Vault's version of the record: a renewal conf pushed alone "
                           "adds one too)"}
    for key in ("name", "subject", "domains", "not_before", "not_after", "serial", "key_type",
                "auto_renewable", "version", "kv_version", "updated_at"):
        value = out[key]
        if key == "kv_version" and value is None:
            continue  # KV v1 keeps no versions
        click.echo(f"{key}: {', '.join(value) if isinstance(value, list) else value}"
                   f"{notes.get(key, '')}")
    from certbot_kvault._internal.sync import issued  # show's alone: `list` never needs it

    for key, value in _renewal_lines(status) + issued.lines(record.issued):
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


def _shape_options(fn: Any) -> Any:
    """The options that shape the output for an app (export.Options)."""
    opts = [
        click.option("--cert-type", type=click.Choice(export.CERT_TYPES),
                     help="What the certificate slot holds: the certificate alone or the full "
                          "chain [pem: cert; bundle, k8s-secret, env kontena: fullchain]"),
        click.option("--cert-file", help="pem: name of the cert file [cert.pem]; '' leaves it "
                                         "out (same for the three below)"),
        click.option("--chain-file", help="pem: name of the chain file [chain.pem]"),
        click.option("--fullchain-file", help="pem: name of the full-chain file "
                                              "[fullchain.pem]"),
        click.option("--key-file", help="pem: name of the key file [privkey.pem]"),
        click.option("--bundle-file", help="bundle: name of the bundle file [NAME.pem]"),
        click.option("--env-style", type=click.Choice(export.ENV_STYLES),
                     help="env: kvault (SSL_CERT_<NAME>_*, the default) or kontena "
                          "(LE_CERTIFICATE_<name>_{PRIVATE_KEY,CERTIFICATE,BUNDLE} and "
                          "SSL_CERT_<name>, as Kontena named them)"),
        click.option("--secret-name", help="k8s-secret: the Secret's name [the lineage name "
                                           "made a valid Kubernetes name]"),
        click.option("--namespace", help="k8s-secret: the Secret's namespace [kubectl's]"),
        click.option("--ca-crt", is_flag=True, help="k8s-secret: add ca.crt (the chain)"),
        click.option("--key-mode", metavar="MODE",
                     help="pem, bundle: the octal mode of the file(s) holding the key, e.g. "
                          "0640 for an app that reads it as a group [0600]"),
        click.option("--key-group", metavar="GROUP",
                     help="pem, bundle: the group (name or id) of the file(s) holding the key "
                          "[the user's]"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@click.command("export")
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Write the files here (formats pem and bundle); {name} in it stands "
                   "for each lineage's name (needed with several)")
@click.option("--format", "fmt", type=click.Choice(export.FORMATS), default="pem",
              show_default=True, help="pem: cert/chain/fullchain/privkey.pem; bundle: "
                                      "NAME.pem = key + full chain; env: SSL_CERT_<NAME>_* "
                                      "lines on stdout for eval/source; k8s-secret: a "
                                      "kubernetes.io/tls Secret on stdout for kubectl apply -f -")
@click.option("--watch", is_flag=True, help="Keep the files current: poll Vault every "
              "--interval seconds and switch each new version in at once (..data link)")
@click.option("--once", is_flag=True, help="Write the files as --watch does and exit; "
              "non-zero when any could not be written (init containers)")
@click.option("--interval", type=click.FloatRange(min=1), metavar="SECONDS",
              default=watch_mod.DEFAULT_INTERVAL,
              show_default=True, envvar="KVAULT_WATCH_INTERVAL",
              help="Seconds between polls with --watch, +-10% jitter [KVAULT_WATCH_INTERVAL]")
@click.option("--exec", "exec_cmd", metavar="CMD",
              help="With --watch/--once: run CMD (split as a shell would, run without one) "
                   "after a new version replaced older files; env KVAULT_LINEAGE, "
                   "KVAULT_VERSION, KVAULT_DIR, and ours without VAULT_*, BAO_* and "
                   "KVAULT_* (Vault's settings and credentials)")
@click.option("--exec-env", "exec_env", metavar="NAME", multiple=True,
              help="Pass the variable NAME to --exec's command although it is one of "
                   "VAULT_*, BAO_*, KVAULT_*; repeat")
@_shape_options
@common_options(tree=False)
def export_(ctx: Context, names: tuple[str, ...], directory: Optional[str], fmt: str,
            watch: bool, once: bool, interval: float, exec_cmd: Optional[str],
            exec_env: tuple[str, ...], **shape: Any) -> None:
    """Write lineages from Vault for an app, or print env lines or a Kubernetes Secret.

    Init-container style by default (--once: as --watch writes, then exit);
    with --watch the files are kept current (sidecar style).

    \b
    certbot-kvault export example.com --dir /certs
    certbot-kvault export example.com --dir /certs --format bundle
    certbot-kvault export example.com --dir /certs --cert-type fullchain \\
        --cert-file cert.pem --key-file key.pem --chain-file ca-cert.pem --fullchain-file ''
    eval "$(certbot-kvault export example.com --format env)"
    eval "$(certbot-kvault export example.com --format env --env-style kontena)"
    certbot-kvault export example.com --format k8s-secret --namespace web | kubectl apply -f -
    certbot-kvault export a.example b.example --dir '/certs/{name}' --watch \\
        --exec 'nginx -s reload'
    """
    options = export.Options(**shape)
    options.check(fmt)
    if fmt not in ("env", "k8s-secret") and not directory:
        raise click.ClickException(f"--format {fmt} writes files: pass --dir DIR.")
    if fmt in ("env", "k8s-secret") and directory and not (watch or once):
        raise click.ClickException(f"--dir does not apply to --format {fmt}, which prints to "
                                   "stdout (redirect it to a file).")
    if fmt in ("env", "k8s-secret") and (watch or once):
        raise click.ClickException("--watch and --once write files: use --format pem or "
                                   "bundle with --dir DIR.")
    if exec_cmd is not None and not (watch or once):
        raise click.ClickException("--exec runs after a version --watch or --once wrote: "
                                   "add --watch or --once.")
    if exec_env and exec_cmd is None:
        raise click.ClickException("--exec-env names what --exec's command gets: add "
                                   "--exec CMD.")
    dirs = watch_mod.target_dirs(list(names), directory) if directory else {}
    if watch or once:
        argv = shlex.split(exec_cmd) if exec_cmd is not None else None
        if argv is not None and not argv:
            raise click.ClickException("--exec is empty: pass the command to run.")
        watcher = watch_mod.Watcher(ctx.layout, dirs,
                                    lambda r: export.file_set(r, fmt, options), _say, argv,
                                    interval, None if once else watch_mod.stop_on_signals(),
                                    exec_env, key_group=options.key_gid)
        sys.exit(watcher.once() if once else watcher.run())
    for name in names:
        record = ctx.layout.load_lineage(validate_name(name))
        if record is None:
            raise click.ClickException(f"No lineage {name} in Vault "
                                       f"({ctx.layout.where('certificates', name)}).")
        if fmt == "env":
            for line in export.env_lines(record, options):
                click.echo(line)
            continue
        if fmt == "k8s-secret":
            if len(names) > 1:
                click.echo("---")
            click.echo(export.k8s_secret(record, options), nl=False)
            continue
        for path in export.export_files(record, dirs[name], fmt, options):
            click.echo(f"wrote: {path}")


def _say(line: str, err: bool = False) -> None:
    click.echo(line, err=err)


@click.command()
@click.argument("name")
@click.option("--purge", is_flag=True, help="Delete all versions and metadata (KV v2)")
@common_options(tree=False)
def rm(ctx: Context, name: str, purge: bool) -> None:
    """Delete a lineage and its renewal memory from Vault (all versions with --purge).

    Without --purge the latest version is deleted (KV v2 keeps the others).
    """
    layout = ctx.layout
    if layout.read_lineage_raw(validate_name(name)) is None and not purge:
        raise click.ClickException(f"No lineage {name} in Vault "
                                   f"({layout.where('certificates', name)}).")
    # The memory first: a token that may not delete it stops before the certificate
    # goes, and a lineage issued again later under this name starts with no failures.
    try:
        had_state = layout.load_state(name) is not None
    except VaultPermissionDenied:
        # An application's token (reader.hcl): what it lacks for rm is delete.
        kind = "metadata" if purge else "data"
        paths = " and ".join(layout.vault.api_path(layout.path(area, name), kind)
                             for area in ("state", "certificates"))
        raise click.ClickException(
            f"permission denied: rm needs delete on {paths} (and read on the first) "
            f"({layout.vault.settings.where}); policies/reader.hcl and renewer.hcl grant no "
            "delete: use an operator's token.") from None
    except MalformedState:
        had_state = True  # a broken memory goes with its lineage all the same
    layout.delete_state(name, purge=purge)
    layout.delete_lineage(name, purge=purge)
    suffix = " (all versions)" if purge else ""
    click.echo(f"deleted: {layout.where('certificates', name)}{suffix}")
    if had_state:
        click.echo(f"deleted: {layout.where('state', name)}{suffix}")
