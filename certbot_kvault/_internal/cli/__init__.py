"""The ``certbot-kvault`` command: one thin function per subcommand.

Each subcommand parses, calls the domain code (the areas below) and prints.
Errors are one line on stderr and exit 1; ``--json`` output is stable.
:mod:`.common` holds the options and context every subcommand shares; each
other module of this package holds the subcommands of one area, and this
one puts them together under the group :func:`main`.

A subcommand's module is imported only when that subcommand runs: ``--help``
and ``list`` must not pay for certbot's ACME stack, cryptography or the renew
machinery they never use (the listing's one-line helps are below, checked
against the commands by the tests).

May import: apps, renew, sync, tree, dns, store, vault (not the plugin).
"""
from __future__ import annotations

import importlib
import io
import os
import re
import sys
from typing import IO, Any, NoReturn, Optional

import click

# name -> (module of this package, attribute, the first line of its help)
COMMANDS = {
    "deploy-hook": ("sync_cmds", "deploy_hook",
                    "Push $RENEWED_LINEAGE to Vault (what certbot's deploy hook runs)."),
    "dns": ("dns", "dns_group",
            "DNS provider entries for the kvault authenticator (Vault: "
            "<mount>/<prefix>/dns/NAME)."),
    "export": ("consumer", "export_", "Write lineages from Vault for an app, or print env "
               "lines or a Kubernetes Secret."),
    "import": ("migrate_cmd", "import_",
               "Migrate a certbot config dir, or another tool's layout in Vault, into Vault."),
    "list": ("consumer", "list_", "NAME  SUBJECT  EXPIRATION  AUTO_RENEWABLE  NEXT_RENEWAL  "
             "FAILURES, from Vault alone."),
    "pull": ("sync_cmds", "pull", "Rebuild the certbot config dir from Vault (all lineages, "
             "or NAMES, and all accounts)."),
    "push": ("sync_cmds", "push", "Write local lineages (all, or NAMES) and accounts to "
             "Vault; only what changed."),
    "renew": ("renew", "renew", "Decide what is due from Vault, lock, pull it, "
              "`certbot renew`, push, unlock."),
    "rm": ("consumer", "rm", "Delete a lineage and its renewal memory from Vault (all "
           "versions with --purge)."),
    "run": ("renew", "run_", "Pull, run certbot with CERTBOT-ARGS, push; fail unless Vault "
            "then holds the result."),
    "show": ("consumer", "show", "One lineage: subject, alt names, validity, serial, key "
             "type (never the key)."),
    "status": ("status", "status", "Can we reach Vault, who are we, which mount and KV "
               "version, what may we do."),
}


# Set by the subcommand's options (common.py) in click's context meta, for the net below.
META_LOGS_DIR = "certbot_kvault.logs_dir"
META_VERBOSE = "certbot_kvault.verbose"
LOG_NAME = "certbot-kvault.log"


class _Lowercase(click.ClickException):
    """A click error shown as certbot-kvault's other lines are, ``error: ...`` (click
    writes "Error:"), usage and hint lines kept."""

    def __init__(self, original: click.ClickException) -> None:
        super().__init__(original.message)
        self.original = original

    def show(self, file: Optional[IO[Any]] = None) -> None:
        shown = io.StringIO()
        self.original.show(shown)
        text = re.sub(r"^Error: ", "error: ", shown.getvalue(), count=1, flags=re.MULTILINE)
        click.echo(text, file=file, err=file is None, nl=False)


class _LowercaseUsage(_Lowercase):
    exit_code = click.UsageError.exit_code


def _lowercase(e: click.ClickException) -> click.ClickException:
    if isinstance(e, _Lowercase):
        return e
    return (_LowercaseUsage if isinstance(e, click.UsageError) else _Lowercase)(e)


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use (see the module's doc), and
    the last net under them all: no traceback reaches a user."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.ClickException as e:
            raise _lowercase(e) from None  # click's own: one line and its exit status
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            # The reader is gone (`| head`): nothing left to say to it, and not an
            # error. Later writes (and Python's flush at exit) go nowhere.
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass  # not a real file (tests' runner): nothing will flush into a pipe
            sys.exit(0)
        except Exception as e:  # noqa: BLE001 - the last net: anything unexpected
            _unexpected(ctx, e)

    def make_context(self, info_name: Optional[str], args: list[str],
                     parent: Optional[click.Context] = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.ClickException as e:
            raise _lowercase(e) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attribute, _ = COMMANDS[cmd_name]
            command = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        # A bare Command shortens a help exactly as the real one would.
        rows = [(name, click.Command(name, help=COMMANDS[name][2]).get_short_help_str(limit))
                for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="certbot-kvault")
def main() -> None:
    """Keep certbot's state (accounts, certificates, renewal settings) in Vault.

    Vault settings come from the same variables as the vault CLI (VAULT_ADDR,
    VAULT_TOKEN or ~/.vault-token, VAULT_NAMESPACE, VAULT_CACERT, ...), plus
    KVAULT_MOUNT and KVAULT_PREFIX. See `certbot-kvault COMMAND --help`.
    """


def _unexpected(ctx: click.Context, e: Exception) -> NoReturn:
    """One line naming a log file that holds the traceback (printed too with -v); exit 1."""
    import traceback

    from certbot_kvault._internal.vault.redact import one_line, redact

    text = redact("".join(traceback.format_exception(type(e), e, e.__traceback__)))
    where = _write_log(ctx.meta.get(META_LOGS_DIR), text)
    if ctx.meta.get(META_VERBOSE):
        click.echo(text, err=True, nl=False)
    details = f"details in {where}" if where else "run with -v for details"
    click.echo(f"error: unexpected {type(e).__name__}: {one_line(e)} ({details})", err=True)
    sys.exit(1)


def _write_log(logs_dir: Optional[str], text: str) -> Optional[str]:
    """Append ``text`` to the logs dir's log, else to a new private temp file; its path."""
    import tempfile
    import time

    stamp = f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} certbot-kvault {' '.join(sys.argv[1:2])}\n"
    if logs_dir:
        path = os.path.join(os.path.abspath(logs_dir), LOG_NAME)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8", errors="replace") as f:
                f.write(stamp + text)
            return path
        except OSError:
            pass  # a logs dir this user may not write: a temp file instead
    try:
        fd, path = tempfile.mkstemp(prefix="certbot-kvault-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
            f.write(stamp + text)
        return path
    except OSError:
        return None


def run() -> None:  # pragma: no cover - console entry for `python -m`
    main(prog_name="certbot-kvault")
