"""What every ``certbot-kvault`` subcommand shares: the Vault and config-dir options, the
:class:`Context` they build, and the report printing.

The command modules beside this one import it; it imports none of them.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, TypeVar

import click
from certbot import errors

from certbot_kvault._internal.cli import META_LOGS_DIR, META_VERBOSE
from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.store.records import RecordError
from certbot_kvault._internal.sync.jobs import DEFAULT_WORKERS, Report, Tick
from certbot_kvault._internal.vault.client import VaultClient
from certbot_kvault._internal.vault.errors import VaultError
from certbot_kvault._internal.vault.redact import one_line as _one_line
from certbot_kvault._internal.vault.settings import VAULT_OPTIONS, VaultSettings

if TYPE_CHECKING:  # the config dir's modules load when a command uses it: not for `list`
    from certbot_kvault._internal.tree.dirlock import DirLock
    from certbot_kvault._internal.tree.storage import Tree

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
        self.workers: int = opts.get("workers") or DEFAULT_WORKERS
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
        from certbot_kvault._internal.tree.storage import Dirs, Tree

        return Tree(Dirs(config_dir=self.opts.get("config_dir") or DEFAULT_CONFIG_DIR,
                         work_dir=self.opts.get("work_dir") or DEFAULT_WORK_DIR,
                         logs_dir=self.opts.get("logs_dir") or DEFAULT_LOGS_DIR),
                    trust_vault_hooks=bool(self.opts.get("trust_vault_hooks")))

    def dir_lock(self, create: bool = False) -> DirLock:
        """certbot's lock on the config dir (dirlock.py), not taken yet; ``create``: make
        the dir to lock it (pull, renew, run)."""
        from certbot_kvault._internal.tree.dirlock import DEFAULT_WAIT, DirLock

        wait = self.opts.get("dir_lock_wait")
        return DirLock(self.opts.get("config_dir") or DEFAULT_CONFIG_DIR,
                       DEFAULT_WAIT if wait is None else wait,
                       notify=lambda line: click.echo(line, err=True), create=create)

    def finish_pending(self) -> Report:
        """Every command that touches the tree first completes what a hook left undone."""
        from certbot_kvault._internal.sync.push import finish_pending

        report = finish_pending(self.tree, self.layout, self.workers)
        for item, err in report.failed:
            click.echo(f"pending push of {item} still failing: {err}", err=True)
        return report



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
            # For the group's last net (cli/__init__.py): where a traceback goes.
            meta = click.get_current_context().meta
            meta[META_LOGS_DIR] = ctx.opts.get("logs_dir")
            meta[META_VERBOSE] = ctx.opts.get("verbose", 0)
            try:
                return fn(ctx, **kwargs)
            except (errors.Error, VaultError, RecordError) as e:
                raise click.ClickException(_one_line(e)) from None
            except OSError as e:
                if isinstance(e, BrokenPipeError):
                    raise  # the reader went away: the group's net (cli/__init__.py)
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
                                   default=DEFAULT_WORKERS, show_default=True,
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


def dir_lock_option(fn: F) -> F:
    """--dir-lock-wait, for the commands that take certbot's lock on the config dir."""
    return click.option(
        "--dir-lock-wait", "o_dir_lock_wait", type=click.FloatRange(min=0), default=10.0,
        show_default=True, envvar="KVAULT_DIR_LOCK_WAIT", metavar="SECONDS",
        help="How long to wait for certbot's lock on the config dir (<config-dir>/"
             ".certbot.lock: a certbot or certbot-kvault working there) before giving up "
             "[KVAULT_DIR_LOCK_WAIT]")(fn)


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


def note_pending(ctx: Context) -> list[str]:
    """Lineages whose push a deploy hook left pending here; one note on stderr if any.

    Read-only: the Vault-only commands say what is missing, they do not push.
    """
    from certbot_kvault._internal.tree import pending

    tree = ctx.tree
    try:
        names = pending.owed(tree)
    except OSError as e:
        # An unreadable config dir (another user's /etc/letsencrypt) must not
        # stop a command that only needs Vault.
        logging.getLogger(__name__).debug("pending marks not readable: %s", e)
        return []
    if names:
        click.echo(f"note: {len(names)} lineage(s) renewed here are not in Vault yet "
                   f"({', '.join(names)}): run certbot-kvault push --config-dir "
                   f"{tree.config_dir}", err=True)
    return names


@contextlib.contextmanager
def progress_bar(ctx: Context, label: str) -> Iterator[Tick]:
    """A ``progress(done, total)`` drawing click's bar on stderr when it is a terminal;
    None (nothing drawn) for --json, -v (which prints per item) and pipes."""
    if ctx.json or ctx.opts.get("verbose") or not sys.stderr.isatty():
        yield None
        return
    bars: list[Any] = []  # made at the first tick, which knows the total

    def tick(done: int, total: int) -> None:
        if not bars:
            bars.append(click.progressbar(length=max(total, done), label=label,
                                          file=sys.stderr).__enter__())
        bars[0].update(done - bars[0].pos)

    try:
        yield tick
    finally:
        for bar in bars:
            bar.__exit__(None, None, None)


def print_report(ctx: Context, report: Report, verb: str) -> None:
    if ctx.json:
        click.echo(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    else:
        if ctx.opts.get("verbose"):  # a fleet's pull is one line, not one per lineage
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
