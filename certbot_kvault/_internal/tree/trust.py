"""What a renewal conf from Vault may decide on this machine.

Anyone who can write ``certificates/*`` (every renewer's policy) writes the
renewal confs that every other renewer pulls, and certbot runs what a renewal
conf says: its hooks as shell commands, its installer against local services,
its paths as files to read and write. So the keys of a pulled conf's
``[renewalparams]`` are sorted here, in one place, into:

- ``code``: what certbot executes (hooks, an installer other than kvault, an
  authenticator that reconfigures a local web server);
- ``machine``: what certbot turns into a local path, binary or service
  setting (webroot, credential files, CSR/key paths, and the options of any
  plugin other than kvault, which this code cannot vouch for);
- ``connection``: kvault's own Vault connection settings, which would make
  the plugin send this machine's token to another Vault;
- ``invalid``: a ``server`` that is not an http(s) URL, an ``account`` that
  is not a valid account id, an ``rsa_key_size`` outside what certbot makes
  (2048 to 8192 bits), a wait (``*_propagation_seconds``,
  ``kvault_propagation_timeout``) that is not a whole number of seconds;
- ``None``: data that only shapes the ACME order.

``code`` and ``machine`` keys are kept only when the operator trusts Vault
with them (``--trust-vault-hooks``); ``connection`` and ``invalid`` keys never.

Waits are data that certbot turns into ``time.sleep`` and deadlines, so a wait
from Vault longer than ``limits.MAX_VAULT_WAIT`` (600 s) is capped there
(renewal_conf.py), unless this machine's own conf of the lineage sets more; a
machine's certbot flags (``-- --kvault-propagation-seconds N``) win over the
conf anyway.
"""
from __future__ import annotations

import urllib.parse
from typing import Any, Optional

from certbot_kvault._internal.store.limits import MAX_RSA_BITS, MIN_RSA_BITS
from certbot_kvault._internal.store.records import RecordError, server_path_for_url, validate_name

CODE = "code"
MACHINE = "machine"
CONNECTION = "connection"
INVALID = "invalid"

TRUSTED_WITH_OPT_IN = (CODE, MACHINE)

# How the screen (renewal_conf.py) names a key dropped for holding a %(...) template.
TEMPLATE_MARK = " (template)"

# certbot's renewal.py CONFIG_ITEMS without the hooks, installer, authenticator and
# the dirs (rewritten from this machine's settings, see renewal_conf.DIR_PARAMS): what
# certbot restores for every lineage and that only shapes the order.
DATA_KEYS = frozenset({
    "user_agent", "server", "account", "http01_address", "preferred_chain", "key_type",
    "elliptic_curve", "preferred_profile", "required_profile", "rsa_key_size", "http01_port",
    "must_staple", "allow_subset_of_names", "reuse_key", "autorenew", "pref_challs",
    "config_dir", "work_dir", "logs_dir",
})

# Paths certbot reads or writes that are not plugin options.
MACHINE_KEYS = frozenset({
    "webroot_path", "webroot_map", "csr", "key_path", "cert_path", "chain_path",
    "fullchain_path",
})

# Authenticators that only answer a challenge (their paths and hooks are
# screened on their own); any other one (nginx, apache, third-party) may
# rewrite and reload local services.
CHALLENGE_ONLY_AUTHENTICATORS = frozenset({"kvault", "standalone", "webroot", "manual"})

# kvault's options that say which Vault the plugin talks to.
CONNECTION_KEYS = frozenset({"kvault_vault_addr", "kvault_vault_namespace",
                             "kvault_vault_cacert", "kvault_mount", "kvault_prefix"})


CAPPED = "capped at"


def is_wait(key: str) -> bool:
    """A plugin's wait in seconds (certbot's dns-* ``propagation_seconds``, ours)."""
    return key.endswith("_propagation_seconds") or key == "kvault_propagation_timeout"


def seconds(value: Any) -> Optional[int]:
    """A whole, non-negative number of seconds as a conf holds it, else None."""
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 12:
        return int(value.strip())
    return None


def _is_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in ("", "None"))


def valid_server_url(value: Any) -> bool:
    """An http(s) ACME directory URL whose accounts dir stays below accounts/."""
    if not isinstance(value, str):
        return False
    parsed = urllib.parse.urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return False
    try:
        server_path_for_url(value)
    except RecordError:
        return False
    return True


def classify(key: str, value: Any) -> Optional[str]:
    """The class of one ``[renewalparams]`` key (None: plain data)."""
    if key in CONNECTION_KEYS or key.startswith("kvault_vault_"):
        return CONNECTION
    if key.endswith("_hook"):
        return CODE
    if key == "installer":
        return None if _is_none(value) or value == "kvault" else CODE
    if key == "authenticator":
        ok = (isinstance(value, str)
              and (value in CHALLENGE_ONLY_AUTHENTICATORS or value.startswith("dns-")))
        return None if ok else CODE
    if key == "server":
        return None if valid_server_url(value) else INVALID
    if key == "account":
        try:
            validate_name(value, "account")
        except RecordError:
            return INVALID
        return None
    if key == "rsa_key_size":
        bits = seconds(value)  # a whole number, as certbot's _restore_int wants
        return None if bits is not None and MIN_RSA_BITS <= bits <= MAX_RSA_BITS else INVALID
    if key in DATA_KEYS:
        return None
    if is_wait(key):
        return None if seconds(value) is not None else INVALID
    if key in MACHINE_KEYS or key.endswith("_credentials") or isinstance(value, dict):
        return MACHINE
    if key.startswith("kvault_") or key.endswith("_propagation_seconds"):
        return None
    # Another plugin's option (nginx_ctl, apache_bin, dns_*_credentials, ...):
    # certbot hands it to that plugin, which may run or open it.
    return MACHINE


def untrusted(key: str, value: Any, trust_vault_hooks: bool) -> bool:
    """Whether a key of Vault's conf must not reach this machine's conf."""
    cls = classify(key, value)
    if cls is None:
        return False
    return not (trust_vault_hooks and cls in TRUSTED_WITH_OPT_IN)


def capped(key: str, limit: int) -> str:
    """How ``warning`` is told that a wait from Vault was capped at ``limit`` seconds."""
    return f"{key} ({CAPPED} {limit} s)"


def warning(name: str, ignored: list[str]) -> str:
    """The one line that tells the operator what of a lineage's conf was not used (and
    which waits were capped, entries made by ``capped``)."""
    # Key names come from Vault too: no terminal escapes reach the operator's screen.
    def shown(keys: list[str]) -> str:
        return ", ".join(k if k.isprintable() else ascii(k) for k in keys)

    caps = [k for k in ignored if f" ({CAPPED} " in k]
    dropped = [k for k in ignored if k not in caps]
    parts = []
    if dropped:
        if all(k.endswith(TEMPLATE_MARK) for k in dropped):
            dropped = [k[:-len(TEMPLATE_MARK)] for k in dropped]
            why = "a %(...) template: certbot would expand it"
        else:
            why = "hooks and paths run only with --trust-vault-hooks; Vault settings never"
        parts.append(f"ignored from Vault's renewal conf: {shown(dropped)} ({why})")
    if caps:
        parts.append(f"waits from Vault's renewal conf capped: {shown(caps)} (this machine's "
                     "own renewal conf or certbot's flags may set more)")
    return f"warning: lineage {name}: {'; '.join(parts)}"
