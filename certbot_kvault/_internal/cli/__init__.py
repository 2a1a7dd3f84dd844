"""The ``certbot-kvault`` command: one thin function per subcommand.

Each subcommand parses, calls the domain code (sync/layout/tree) and prints.
Errors are one line on stderr and exit 1; ``--json`` output is stable.
:mod:`.common` holds the options and context every subcommand shares; each
other module of this package holds the subcommands of one area, and this
one puts them together under the group :func:`main`.
"""
from __future__ import annotations

import click

from certbot_kvault._internal.cli.consumer import export_, list_, rm, show
from certbot_kvault._internal.cli.dns import dns_group
from certbot_kvault._internal.cli.renew import renew, run_
from certbot_kvault._internal.cli.status import status
from certbot_kvault._internal.cli.sync_cmds import deploy_hook, import_, pull, push


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="certbot-kvault")
def main() -> None:
    """Keep certbot's state (accounts, certificates, renewal settings) in Vault.

    Vault settings come from the same variables as the vault CLI (VAULT_ADDR,
    VAULT_TOKEN or ~/.vault-token, VAULT_NAMESPACE, VAULT_CACERT, ...), plus
    KVAULT_MOUNT and KVAULT_PREFIX. See `certbot-kvault COMMAND --help`.
    """


main.add_command(pull)
main.add_command(push)
main.add_command(import_)
main.add_command(deploy_hook)
main.add_command(status)
main.add_command(list_)
main.add_command(show)
main.add_command(export_)
main.add_command(rm)
main.add_command(dns_group)
main.add_command(renew)
main.add_command(run_)


def run() -> None:  # pragma: no cover - console entry for `python -m`
    main(prog_name="certbot-kvault")
