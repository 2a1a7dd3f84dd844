"""What the commands that do not run certbot load when they start.

``--help`` and ``list`` must not import certbot's CLI machinery, its ACME
client and messages (josepy) or cryptography's X.509: they never parse a PEM
nor talk ACME, and loading those is most of a slow start. Checked in a fresh
interpreter that runs the real console entry point and reports ``sys.modules``
at exit. ``list`` runs against the real OpenBao dev server.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner
from helpers import scrubbed_env

from certbot_kvault._internal.cli import main

# Not one of these, nor anything below them.
HEAVY = ("certbot._internal.main", "certbot._internal.cli", "certbot._internal.plugins",
         "acme", "josepy", "cryptography.x509", "lexicon", "dns")


def _modules_loaded(args: list[str], env: dict[str, str], tmp_path: Path) -> list[str]:
    """Run ``certbot-kvault ARGS`` in a fresh interpreter: the modules it had at exit."""
    out = tmp_path / "modules.txt"
    code = ("import atexit, sys\n"
            f"atexit.register(lambda: open({str(out)!r}, 'w').write('\\n'.join(sys.modules)))\n"
            "from certbot_kvault._internal.cli import main\n"
            f"sys.argv = ['certbot-kvault', *{args!r}]\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return out.read_text().split("\n")


def _heavy(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_help_loads_nothing_heavy(tmp_path: Path) -> None:
    modules = _modules_loaded(["--help"], scrubbed_env(), tmp_path)
    assert _heavy(modules) == []
    assert "hvac" not in modules  # nor a Vault client: it talks to no Vault


def test_list_loads_nothing_heavy(vault_env: dict[str, str], tmp_path: Path) -> None:
    env = scrubbed_env(**vault_env, KVAULT_CONFIG_DIR=str(tmp_path / "none"))
    modules = _modules_loaded(["list"], env, tmp_path)
    assert "hvac" in modules  # it did talk to Vault
    assert _heavy(modules) == []


def test_listing_is_the_commands_own() -> None:
    """``--help`` lists each subcommand from a table, without importing it: the table
    must say what the subcommand itself says."""
    from certbot_kvault._internal.cli import COMMANDS

    ctx = click.Context(main)
    eager = click.Group("certbot-kvault", help=main.help)
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        assert command is not None, name
        assert (command.help or "").splitlines()[0] == COMMANDS[name][2], name
        eager.add_command(command, name)
    runner = CliRunner()
    lazy_help = runner.invoke(main, ["--help"]).output
    eager_help = runner.invoke(eager, ["--help"]).output
    assert lazy_help.split("Commands:")[1] == eager_help.split("Commands:")[1]
    assert "push " in lazy_help and "list " in lazy_help
