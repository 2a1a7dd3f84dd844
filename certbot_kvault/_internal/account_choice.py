"""Which ACME account certbot uses, when the config dir holds several for one CA.

certbot picks an account by itself only when there is one for its server;
with several it asks ("Please choose an account"), which a job without a
terminal answers with an error. Two cases reach that question:

- ``certbot renew`` restores each lineage's account from its renewal conf,
  except when ``--server`` is on its command line (certbot then treats the
  account as the user's to give, too): ``renew`` therefore names each
  lineage's own account with ``--account`` when the user's ``--server`` is
  the one the lineage's conf names (``to_name``);
- any command that orders, revokes or manages an account without
  ``--account`` (``run -- certonly ...``): ``run`` says, before certbot
  starts, which accounts there are and to pass ``--account`` (``ambiguity``).

Nothing here talks to Vault: it reads certbot's arguments and the tree.
"""
from __future__ import annotations

from typing import Optional, Sequence

from certbot import errors

from certbot_kvault._internal import confs
from certbot_kvault._internal.records import RecordError, server_path_for_url
from certbot_kvault._internal.tree import Tree

LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"

# certbot's subcommands (cli/helpful.py VERBS) that load an account without a
# lineage's conf to say which, and so ask when there are several.
_ASKING_VERBS = ("run", "certonly", "revoke", "update_account", "show_account", "unregister")
_VERBS = (*_ASKING_VERBS, "auth", "everything", "install", "plugins", "register", "renew",
          "rollback", "certificates", "delete", "enhance", "reconfigure")
# Flags that point certbot at Let's Encrypt's staging CA when --server is not given.
_STAGING_FLAGS = ("--staging", "--test-cert", "--dry-run")


class AccountNotChosen(errors.Error):
    """certbot would have to ask which of several ACME accounts to use."""


def flag_value(args: Sequence[str], flag: str) -> Optional[str]:
    """The value of ``flag`` (``--flag V`` or ``--flag=V``) among certbot's arguments;
    the last one wins, as in argparse."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _same_server(a: str, b: str) -> bool:
    return a.strip().rstrip("/") == b.strip().rstrip("/")


def conf_account(tree: Tree, name: str) -> tuple[Optional[str], Optional[str]]:
    """(server, account) that a local lineage's renewal conf names (None where it names none
    or cannot be read)."""
    try:
        conf = confs.parse_file(tree.renewal_conf_path(name))
    except (OSError, confs.ConfError, RecordError):
        return None, None
    params = conf.get("renewalparams", {})
    server, account = params.get("server"), params.get("account")
    return (server if isinstance(server, str) and server else None,
            account if isinstance(account, str) and account else None)


def to_name(tree: Tree, names: Sequence[str], args: Sequence[str]) -> dict[str, str]:
    """lineage -> the account ``certbot renew ARGS`` must be given with ``--account``: each
    lineage whose conf names an account on the server of ``--server`` (certbot restores
    the conf's account itself without ``--server``, and ``--account`` given is the user's)."""
    server = flag_value(args, "--server")
    if server is None or flag_value(args, "--account") is not None:
        return {}
    out = {}
    for name in names:
        conf_server, account = conf_account(tree, name)
        if account and conf_server and _same_server(conf_server, server):
            out[name] = account
    return out


def _verb(args: Sequence[str]) -> str:
    """certbot's subcommand: the first argument that is one (cli/helpful.py's rule)."""
    for arg in args:
        if arg in _VERBS:
            return {"auth": "certonly", "everything": "run"}.get(arg, arg)
    return "run"


def ambiguity(tree: Tree, args: Sequence[str]) -> Optional[str]:
    """One line when certbot, run with ``args`` on this tree, would have to ask which of
    several accounts on its server to use; None when it would not ask."""
    if flag_value(args, "--account") is not None or "-h" in args or "--help" in args:
        return None
    verb = _verb(args)
    server = flag_value(args, "--server")
    if verb not in _ASKING_VERBS and not (verb == "renew" and server is not None):
        return None
    if verb == "revoke" and flag_value(args, "--key-path") is not None:
        return None  # revoked with the certificate's key: no account
    if server is None:
        server = LETSENCRYPT_STAGING if any(a in _STAGING_FLAGS for a in args) else LETSENCRYPT
    try:
        path = server_path_for_url(server)
    except RecordError:
        return None  # certbot says what is wrong with it
    ids = sorted(i for s, i in tree.account_dirs() if s == path)
    if len(ids) < 2:
        return None
    how = ("; or run `certbot-kvault renew -- --server URL`, which renews each lineage with "
           "its own account" if verb == "renew" else "")
    return (f"{len(ids)} ACME accounts for {server} are in Vault ({', '.join(ids)}) and "
            f"certbot would ask which one to use: pass --account ID to certbot (after --)"
            f"{how}.")
