"""The ``certbot-kvault`` command: one thin function per subcommand.

Each subcommand parses, calls the domain code (sync/layout/tree) and prints.
Errors are one line on stderr and exit 1; ``--json`` output is stable.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import sys
from typing import Any, Callable, Optional, TypeVar

import click
from certbot import errors

from certbot_kvault._internal import export, sync
from certbot_kvault._internal.errors import VaultError, VaultPermissionDenied
from certbot_kvault._internal.layout import Layout
from certbot_kvault._internal.records import RecordError, validate_name
from certbot_kvault._internal.redact import one_line as _one_line
from certbot_kvault._internal.settings import SETTING_OPTIONS, VAULT_OPTIONS, VaultSettings
from certbot_kvault._internal.tree import Dirs, Tree
from certbot_kvault._internal.vault import VaultClient

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CONFIG_DIR = "/etc/letsencrypt"
DEFAULT_WORK_DIR = "/var/lib/letsencrypt"
DEFAULT_LOGS_DIR = "/var/log/letsencrypt"


class Context:
    """What every subcommand needs, built lazily (listing needs no config dir)."""

    def __init__(self, opts: dict[str, Any]) -> None:
        self.opts = opts
        overrides = {field: opts.get(field) for _, field, _, _ in VAULT_OPTIONS}
        if opts.get("skip_verify"):
            overrides["skip_verify"] = True
        self.settings = VaultSettings.from_env(**overrides)
        self.workers: int = opts.get("workers") or sync.DEFAULT_WORKERS
        self.json: bool = bool(opts.get("as_json"))
        self._vault: Optional[VaultClient] = None

    @property
    def vault(self) -> VaultClient:
        if self._vault is None:
            self._vault = VaultClient(self.settings, pool_size=max(16, self.workers * 2))
        return self._vault

    @property
    def layout(self) -> Layout:
        return Layout(self.vault)

    def close(self) -> None:
        """Once, when the command ends: a machine login's token is revoked."""
        if self._vault is not None:
            self._vault.close()
            self._vault = None

    @property
    def tree(self) -> Tree:
        return Tree(Dirs(config_dir=self.opts.get("config_dir") or DEFAULT_CONFIG_DIR,
                         work_dir=self.opts.get("work_dir") or DEFAULT_WORK_DIR,
                         logs_dir=self.opts.get("logs_dir") or DEFAULT_LOGS_DIR),
                    trust_vault_hooks=bool(self.opts.get("trust_vault_hooks")))

    def finish_pending(self) -> sync.Report:
        """Every command that touches the tree first completes what a hook left undone."""
        report = sync.finish_pending(self.tree, self.layout, self.workers)
        for item, err in report.failed:
            click.echo(f"pending push of {item} still failing: {err}", err=True)
        return report


def kvault_bin() -> Optional[str]:
    """The certbot-kvault executable the deploy hook should call."""
    beside = os.path.join(os.path.dirname(sys.executable), "certbot-kvault")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("certbot-kvault")


def common_options(tree: bool = True, json_opt: bool = False,
                   config_dir: bool = False) -> Callable[[F], F]:
    """Vault (and config-dir) options on every subcommand, read from the env like vault's.

    ``config_dir`` without ``tree``: only --config-dir, for the Vault-only
    commands that still report what this machine has left to push.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            opts = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("o_")}
            ctx = Context({k[2:]: v for k, v in opts.items()})
            _setup_logging(ctx.opts.get("verbose", 0))
            try:
                return fn(ctx, **kwargs)
            except (errors.Error, VaultError, RecordError) as e:
                raise click.ClickException(_one_line(e)) from None
            except OSError as e:
                raise click.ClickException(
                    f"{e.strerror or e}: {e.filename or ''}".strip(": ")) from None
            finally:
                ctx.close()

        params = []
        for flag, field, env, help_text in VAULT_OPTIONS:
            params.append(click.option(flag, f"o_{field}", envvar=env, help=help_text,
                                       show_envvar=False))
        params.append(click.option("--vault-skip-verify", "o_skip_verify", is_flag=True,
                                   default=False, help="Do not verify Vault's TLS certificate "
                                                       "[VAULT_SKIP_VERIFY]"))
        params.append(click.option("--workers", "o_workers", type=click.IntRange(1, 64),
                                   default=sync.DEFAULT_WORKERS, show_default=True,
                                   help="Parallel Vault requests"))
        params.append(click.option("-v", "--verbose", "o_verbose", count=True,
                                   help="More logging (-vv for debug)"))
        if tree or config_dir:
            params.append(
                click.option("--config-dir", "o_config_dir", default=DEFAULT_CONFIG_DIR,
                             show_default=True, envvar="KVAULT_CONFIG_DIR",
                             type=click.Path(file_okay=False), help="certbot's config dir"))
        if tree:
            params += [
                click.option("--work-dir", "o_work_dir", default=DEFAULT_WORK_DIR,
                             show_default=True, envvar="KVAULT_WORK_DIR",
                             type=click.Path(file_okay=False), help="certbot's work dir"),
                click.option("--logs-dir", "o_logs_dir", default=DEFAULT_LOGS_DIR,
                             show_default=True, envvar="KVAULT_LOGS_DIR",
                             type=click.Path(file_okay=False), help="certbot's logs dir"),
            ]
        if json_opt:
            params.append(click.option("--json", "o_as_json", is_flag=True,
                                       help="Machine-readable output"))
        for p in reversed(params):
            wrapper = p(wrapper)
        return wrapper  # type: ignore[return-value]

    return decorate


def trust_option(fn: F) -> F:
    """--trust-vault-hooks, for the commands that pull (pull, renew, run)."""
    return click.option(
        "--trust-vault-hooks", "o_trust_vault_hooks", is_flag=True, default=False,
        envvar="KVAULT_TRUST_VAULT_HOOKS",
        help="Use the hooks, installer and local paths of the renewal confs pulled from "
             "Vault (dropped otherwise). Risk: anyone who can write certificates/* in Vault "
             "can then run commands on this machine. [KVAULT_TRUST_VAULT_HOOKS]")(fn)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if not verbose else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    # urllib3 warns on every retry and hvac/tldextract chatter; the user gets
    # our one-line error instead (-vv shows it all; URLs only, never headers).
    for noisy in ("urllib3", "hvac", "tldextract", "filelock"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose > 1 else logging.ERROR)


def _note_pending(ctx: Context) -> list[str]:
    """Lineages whose push a deploy hook left pending here; one note on stderr if any.

    Read-only: the Vault-only commands say what is missing, they do not push.
    """
    tree = ctx.tree
    try:
        marks = sync.pending(tree)
    except OSError as e:
        # An unreadable config dir (another user's /etc/letsencrypt) must not
        # stop a command that only needs Vault.
        logging.getLogger(__name__).debug("pending marks not readable: %s", e)
        return []
    names = []
    for n in marks:
        try:
            # As finish_pending: a mark whose lineage is gone from here is not pending.
            if os.path.exists(tree.renewal_conf_path(n)):
                names.append(n)
        except RecordError:
            continue
    if names:
        click.echo(f"note: {len(names)} lineage(s) renewed here are not in Vault yet "
                   f"({', '.join(names)}): run certbot-kvault push --config-dir "
                   f"{tree.config_dir}", err=True)
    return names


def _print_report(ctx: Context, report: sync.Report, verb: str) -> None:
    if ctx.json:
        click.echo(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    else:
        for item in report.written:
            click.echo(f"{verb}: {item}")
        click.echo(f"{len(report.written)} {verb}, {len(report.unchanged)} unchanged, "
                   f"{len(report.failed)} failed")
    for line in report.warnings:
        click.echo(line, err=True)
    for item, err in report.failed:
        click.echo(f"error: {item}: {err}", err=True)
    if not report.ok:
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="certbot-kvault")
def main() -> None:
    """Keep certbot's state (accounts, certificates, renewal settings) in Vault.

    Vault settings come from the same variables as the vault CLI (VAULT_ADDR,
    VAULT_TOKEN or ~/.vault-token, VAULT_NAMESPACE, VAULT_CACERT, ...), plus
    KVAULT_MOUNT and KVAULT_PREFIX. See `certbot-kvault COMMAND --help`.
    """


@main.command()
@click.argument("names", nargs=-1)
@trust_option
@common_options(json_opt=True)
def pull(ctx: Context, names: tuple[str, ...]) -> None:
    """Rebuild the certbot config dir from Vault (all lineages, or NAMES, and all accounts)."""
    for n in names:
        validate_name(n)
    ctx.finish_pending()
    report = sync.pull(ctx.tree, ctx.layout, list(names) or None, workers=ctx.workers,
                       kvault_bin=kvault_bin())
    _print_report(ctx, report, "pulled")


@main.command()
@click.argument("names", nargs=-1)
@common_options(json_opt=True)
def push(ctx: Context, names: tuple[str, ...]) -> None:
    """Write local lineages (all, or NAMES) and accounts to Vault; only what changed."""
    for n in names:
        validate_name(n)
    report = ctx.finish_pending()
    report.merge(sync.push(ctx.tree, ctx.layout, list(names) or None, workers=ctx.workers))
    _print_report(ctx, report, "pushed")


@main.command("import")
@common_options(json_opt=True)
def import_(ctx: Context) -> None:
    """Migrate an existing certbot config dir into Vault and wire the deploy hook."""
    tree = ctx.tree
    if not os.path.isdir(tree.config_dir):
        raise click.ClickException(f"{tree.config_dir} does not exist; pass --config-dir.")
    report = sync.push(tree, ctx.layout, workers=ctx.workers)
    hook = tree.install_hook(kvault_bin())
    if not ctx.json:
        click.echo(f"deploy hook: {hook}")
    _print_report(ctx, report, "imported")


@main.command("deploy-hook")
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
    parent = sync.parent_pushes()
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
        mark = sync.mark_pending(tree, name, reason)
        click.echo(sync.loud_failure(
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


@main.command()
@common_options(tree=False, json_opt=True, config_dir=True)
def status(ctx: Context) -> None:
    """Can we reach Vault, who are we, which mount and KV version, what may we do.

    A check the token may not make is reported under `unknown` and the others
    still run; the exit status is 1 when the KV mount cannot be used.
    """
    pending = _note_pending(ctx)
    vault = ctx.vault
    health = vault.health()
    out: dict[str, Any] = {
        "vault_addr": ctx.settings.addr,
        "namespace": ctx.settings.namespace,
        "server_version": health.get("version"),
        "initialized": health.get("initialized"),
        "sealed": health.get("sealed"),
        "standby": health.get("standby"),
        "auth_method": ctx.settings.auth_method,
    }
    if ctx.json:
        out["pending"] = pending
    if health.get("sealed") or not health.get("initialized", True):
        _emit_status(ctx, out)
        raise click.ClickException(f"Vault at {ctx.settings.addr} is sealed or not initialized; "
                                   "unseal it and run again.")
    vault.login()
    unknown: dict[str, str] = {}
    try:
        out["token"] = vault.whoami()
    except VaultPermissionDenied as e:
        unknown["token"] = _one_line(e)
    out["mount"] = ctx.settings.mount
    out["prefix"] = ctx.settings.prefix
    fatal: Optional[VaultError] = None
    try:
        out["kv_version"] = vault.kv_version
    except VaultError as e:
        unknown["kv_version"] = _one_line(e)
        fatal = e
    kv, mount, layout = out.get("kv_version"), ctx.settings.mount, ctx.layout
    paths = {}
    for area in ("certificates", "accounts", "dns", "locks"):
        rel = layout.path(area, "*")
        if kv == 1:
            paths[f"{area} (data)"] = f"{mount}/{rel}"
            continue
        paths[f"{area} (data)"] = f"{mount}/data/{rel}"
        paths[f"{area} (list)"] = f"{mount}/metadata/{rel}"
        if kv is None:  # unknown: the spelling a KV v1 policy would use, too
            paths[f"{area} (KV v1)"] = f"{mount}/{rel}"
    try:
        caps = vault.capabilities(list(paths.values()))
        out["capabilities"] = {label: caps.get(path, []) for label, path in paths.items()}
    except VaultPermissionDenied as e:
        unknown["capabilities"] = _one_line(e)
    if unknown:
        out["unknown"] = unknown
    _emit_status(ctx, out)
    if fatal is not None:
        raise click.ClickException(_one_line(fatal))


def _emit_status(ctx: Context, out: dict[str, Any]) -> None:
    if ctx.json:
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    for key, value in out.items():
        if isinstance(value, dict):
            click.echo(f"{key}:")
            for k, v in value.items():
                click.echo(f"  {k}: {', '.join(v) if isinstance(v, list) else v}")
        else:
            click.echo(f"{key}: {value}")


@main.command("list")
@common_options(tree=False, json_opt=True, config_dir=True)
def list_(ctx: Context) -> None:
    """NAME  SUBJECT  EXPIRATION  AUTO_RENEWABLE, from Vault alone."""
    _note_pending(ctx)
    layout = ctx.layout
    rows = []
    for name, entry in sync.parallel(layout.list_lineages(), layout.read_lineage_raw,
                                     ctx.workers):
        if entry is None:
            continue
        d = entry.data
        domains = d.get("domains") or []
        rows.append({"name": name, "subject": domains[0] if domains else None,
                     "domains": domains, "not_after": d.get("not_after"),
                     "auto_renewable": bool(d.get("auto_renewable", True)),
                     "version": d.get("version")})
    if ctx.json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    table = [("NAME", "SUBJECT", "EXPIRATION", "AUTO_RENEWABLE")] + [
        (r["name"], r["subject"] or "-", r["not_after"] or "-",
         "yes" if r["auto_renewable"] else "no") for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(4)]
    for row in table:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


@main.command()
@click.argument("name")
@common_options(tree=False, json_opt=True, config_dir=True)
def show(ctx: Context, name: str) -> None:
    """One lineage: subject, alt names, validity, serial, key type (never the key)."""
    _note_pending(ctx)
    record = ctx.layout.load_lineage(validate_name(name))
    if record is None:
        raise click.ClickException(f"No lineage {name} in Vault "
                                   f"({ctx.layout.where('certificates', name)}).")
    info = record.info
    assert info is not None
    out = {"name": name, "subject": info.domains[0] if info.domains else None,
           "domains": info.domains, "not_before": info.not_before,
           "not_after": info.not_after, "serial": info.serial, "key_type": info.key_type,
           "auto_renewable": record.auto_renewable, "version": record.version,
           "updated_at": record.updated_at}
    if ctx.json:
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    for key in ("name", "subject", "domains", "not_before", "not_after", "serial", "key_type",
                "auto_renewable", "version", "updated_at"):
        value = out[key]
        click.echo(f"{key}: {', '.join(value) if isinstance(value, list) else value}")


@main.command("export")
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


@main.command()
@click.argument("name")
@click.option("--purge", is_flag=True, help="Delete all versions and metadata (KV v2)")
@common_options(tree=False)
def rm(ctx: Context, name: str, purge: bool) -> None:
    """Delete a lineage from Vault (the latest version; all of them with --purge)."""
    layout = ctx.layout
    if layout.read_lineage_raw(validate_name(name)) is None and not purge:
        raise click.ClickException(f"No lineage {name} in Vault "
                                   f"({layout.where('certificates', name)}).")
    layout.delete_lineage(name, purge=purge)
    click.echo(f"deleted: {layout.where('certificates', name)}"
               + (" (all versions)" if purge else ""))


def run() -> None:  # pragma: no cover - console entry for `python -m`
    main(prog_name="certbot-kvault")


# Subcommand groups that live in their own modules register on `main` when
# imported (after main and common_options exist, so no import cycle bites).
from certbot_kvault._internal import cli_dns, cli_renew  # noqa: E402,F401
