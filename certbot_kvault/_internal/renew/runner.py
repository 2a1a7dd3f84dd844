"""certbot as a child process: found, given our directories, streamed, stopped, read.

``run`` and ``renew`` run certbot with the same ``--config-dir``/``--work-dir``/
``--logs-dir`` as certbot-kvault itself, so arguments that name other
directories are refused. certbot is told that its parent pushes
(``KVAULT_PARENT_PUSH``), so the deploy hook and the kvault plugin leave the
push to the caller (flows.py says why). Its output goes to the caller's
``stream`` (and ``stream_err``) as it comes, newlines included. A stop
(stopping.py: a signal, the run's ``--timeout``) is passed on to it, and to
the hooks it runs: without a terminal it runs in a process group of its own,
so a signal reaches it once, from us. What failed is read from its exit
status and its renewal summary. Nothing here prints; errors are
``certbot.errors.Error``.

Which ACME account certbot uses, when the config dir holds several for one CA:
certbot picks one by itself only when there is one for its server; with several
it asks ("Please choose an account"), which a job without a terminal answers
with an error. Two cases reach that question:

- ``certbot renew`` restores each lineage's account from its renewal conf,
  except when ``--server`` is on its command line (certbot then treats the
  account as the user's to give, too): ``renew`` therefore names each
  lineage's own account with ``--account`` when the user's ``--server`` is
  the one the lineage's conf names (``accounts_to_name``);
- any command that orders, revokes or manages an account without
  ``--account`` (``run -- certonly ...``): ``run`` says, before certbot
  starts, which accounts there are and to pass ``--account``
  (``account_ambiguity``).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from typing import Callable, Optional, Sequence

from certbot import errors

from certbot_kvault._internal.renew.stopping import Stopping
from certbot_kvault._internal.store.records import RecordError, server_path_for_url
from certbot_kvault._internal.tree import pending
from certbot_kvault._internal.tree.storage import Tree, executable

Notify = Callable[[str], None]

DIR_FLAGS = ("--config-dir", "--work-dir", "--logs-dir")
# certbot's renewal summary (stdout or stderr, depending on the case and version).
_FAILURE_RE = re.compile(r"/live/([^/\s]+)/fullchain\.pem \(failure\)")
_PARSEFAIL_RE = re.compile(r"/renewal/([^/\s]+)\.conf \(parsefail\)")
# certbot's log line for each failed lineage (renewal.py: "Failed to renew ... with error").
_REASON_RE = re.compile(r"Failed to renew certificate (\S+) with error: (.*)")
# Where certbot's next message starts: the lines of an error (often its cause, e.g.
# the setting that "Missing command line flag or config entry" names) come before.
_NEXT_MESSAGE_RE = re.compile(
    r"^(Failed to renew certificate |All renewals |The following |(- )+-|Processing |"
    r"Renewing |Saving debug log|Ask for help|\d+ renew failure|Congratulations|"
    r"Hook |Running |Waiting |Cleaning up)")
_REASON_LINES = 8
# A line of certbot's renewal summary ("  .../fullchain.pem (failure)"): not an error's.
_SUMMARY_RE = re.compile(r"\.(pem|conf) \((success|failure|skipped|parsefail)\)$")

LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"

# certbot's subcommands (cli/helpful.py VERBS) that load an account without a
# lineage's conf to say which, and so ask when there are several.
_ASKING_VERBS = ("run", "certonly", "revoke", "update_account", "show_account", "unregister")
_VERBS = (*_ASKING_VERBS, "auth", "everything", "install", "plugins", "register", "renew",
          "rollback", "certificates", "delete", "enhance", "reconfigure")
# Flags that point certbot at Let's Encrypt's staging CA when --server is not given.
_STAGING_FLAGS = ("--staging", "--test-cert", "--dry-run")


class CertbotNotFound(errors.Error):
    """No certbot executable next to this Python nor on PATH."""


class BadCertbotArgs(errors.Error):
    """The arguments for certbot would make it use other directories than ours."""



def certbot_bin() -> str:
    """The certbot next to this Python (same virtualenv / image), else the one on PATH."""
    found = executable("certbot")
    if not found:
        raise CertbotNotFound("certbot not found: install it next to certbot-kvault "
                              "(same virtualenv) or put it on PATH.")
    return found


def check_certbot_args(args: Sequence[str]) -> list[str]:
    """The arguments for certbot, refused if they name certbot's directories."""
    for arg in args:
        for flag in DIR_FLAGS:
            if arg == flag or arg.startswith(flag + "="):
                raise BadCertbotArgs(
                    f"Pass {flag} to certbot-kvault (before --), not to certbot: both must use "
                    "the same directories.")
    return list(args)


def dir_args(tree: Tree) -> list[str]:
    d = tree.dirs
    return ["--config-dir", tree.config_dir, "--work-dir", os.path.abspath(d.work_dir),
            "--logs-dir", os.path.abspath(d.logs_dir)]


# ---- which account certbot uses -------------------------------------------------------


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


def accounts_to_name(tree: Tree, names: Sequence[str], args: Sequence[str]) -> dict[str, str]:
    """lineage -> the account ``certbot renew ARGS`` must be given with ``--account``: each
    lineage whose conf names an account on the server of ``--server`` (certbot restores
    the conf's account itself without ``--server``, and ``--account`` given is the user's)."""
    server = flag_value(args, "--server")
    if server is None or flag_value(args, "--account") is not None:
        return {}
    out = {}
    for name in names:
        conf_server, account = tree.conf_account(name)
        if account and conf_server and _same_server(conf_server, server):
            out[name] = account
    return out


def _verb(args: Sequence[str]) -> str:
    """certbot's subcommand: the first argument that is one (cli/helpful.py's rule)."""
    for arg in args:
        if arg in _VERBS:
            return {"auth": "certonly", "everything": "run"}.get(arg, arg)
    return "run"


def account_ambiguity(tree: Tree, args: Sequence[str]) -> Optional[str]:
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


# ---- the child process ------------------------------------------------------------------


def run_certbot(argv: list[str], stream: Notify, stream_err: Optional[Notify] = None,
                stop: Optional[Stopping] = None) -> tuple[int, str]:
    """Run certbot; each line of its stdout goes to ``stream`` as it comes and is returned.

    With ``stream_err`` its stderr goes there as it comes and is returned too
    (after stdout). certbot is told that we push (pending.PARENT_PUSH_ENV), so the
    deploy hook and the plugin leave that to us. ``stop`` passes a stop on to it
    (and kills it when that is urgent); it returns once certbot has exited.
    """
    cmd = [certbot_bin(), *argv]
    env = dict(os.environ)
    env[pending.PARENT_PUSH_ENV] = str(os.getpid())
    # With a terminal, certbot may ask questions: it stays in the terminal's
    # (foreground) process group. Without one (containers, cron, CI), a group of
    # its own: a signal for us reaches it only through us, once, hooks included.
    own_group = not _isatty(sys.stdin)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE if stream_err else None, text=True,
                            bufsize=1, env=env, start_new_session=own_group)
    if stop is not None:
        stop.attach(proc, own_group)
    out: list[str] = []
    err: list[str] = []
    pump: Optional[threading.Thread] = None
    if stream_err is not None:
        assert proc.stderr is not None
        pipe, emit = proc.stderr, stream_err

        def copy_stderr() -> None:
            for line in pipe:
                err.append(line)
                emit(line)

        pump = threading.Thread(target=copy_stderr, name="certbot-stderr", daemon=True)
        pump.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            stream(line)
        rc = proc.wait()
        if pump is not None:
            pump.join()
        return rc, "".join(out + err)
    except BaseException:
        # Unwinding for another reason (a stop is passed on, not raised here):
        # certbot must not run on behind our back.
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    finally:
        if stop is not None:
            stop.detach()


def _isatty(stream: object) -> bool:
    try:
        return bool(stream is not None and stream.isatty())  # type: ignore[attr-defined]
    except (OSError, ValueError):
        return False


def certbot_failures(rc: int, rcs: dict[str, int], output: str, asked: Sequence[str],
                     renewed: set[str], stopped: bool = False) -> set[str]:
    """The lineages certbot was asked to renew and did not renew because something failed.

    ``rcs``: one certbot per lineage, whose exit status says it. One certbot
    for all exits 0 only if every renewal it attempted worked; otherwise its
    summary names the failures (on stdout or stderr), and when it names none
    (it stopped before its summary) no lineage it did not renew is known to be
    fine, so each counts as failed.

    ``stopped``: we stopped certbot (a signal, the timeout). Then only what failed
    before the stop counts: the lineages certbot logged a failure with a reason for
    (its summary may never come, and names a lineage its own signal handler broke
    off as a failure too, with an empty reason), and with one certbot per lineage,
    those before the last (which ran into the stop).
    """
    if stopped:
        named = set(failure_reasons(output)) | set(_PARSEFAIL_RE.findall(output))
        named |= {n for n, one_rc in list(rcs.items())[:-1] if one_rc != 0}
        return (named & set(asked)) - renewed
    if rcs:
        return {n for n, one_rc in rcs.items() if one_rc != 0 and n not in renewed}
    if rc == 0:
        return set()
    named = set(_FAILURE_RE.findall(output)) | set(_PARSEFAIL_RE.findall(output))
    named &= set(asked)
    return named or set(asked) - renewed


def failure_reasons(output: str) -> dict[str, str]:
    """certbot's error for each lineage it failed to renew (last one wins), with the lines
    that follow it up to certbot's next message, joined into one line."""
    reasons: dict[str, str] = {}
    lines = output.splitlines()
    for i, line in enumerate(lines):
        found = _REASON_RE.search(line)
        if found is None:
            continue
        parts = [found.group(2)]
        for more in lines[i + 1:i + 1 + _REASON_LINES]:
            if _NEXT_MESSAGE_RE.match(more.strip()) or _SUMMARY_RE.search(more.strip()):
                break
            parts.append(more)
        reason = " ".join(" ".join(parts).split())
        if reason:
            reasons[found.group(1)] = reason
    return reasons
