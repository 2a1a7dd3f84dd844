"""What a renewal conf from Vault may decide on this machine: the one screen.

Anyone who can write ``certificates/*`` (every renewer's policy) writes the
renewal confs that every other renewer pulls, and certbot runs what a renewal
conf says: its hooks as shell commands, its installer against local services,
its paths as files to read and write. ``screen`` takes out of a pulled conf
(parsed once, as data: confs.py) what it may not decide here, and everything
that asks the same question asks it here: the pull's localised conf
(portable.py), whether a conf on disk holds a setting of this machine's own
(``holds_untrusted``, for the manifest), whether a lineage on disk is just
what a pull gives (``Tree.as_pulled``). First every value holding a ``%(...)``
template, which certbot would expand (the lineage is refused when that value
is one of ``NEEDED_PARAMS``); then the keys of ``[renewalparams]``, sorted into:

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

What a dropped key held on this machine's own conf of the lineage stays.
Waits are data that certbot turns into ``time.sleep`` and deadlines, so a wait
from Vault longer than ``limits.MAX_VAULT_WAIT`` (600 s) is capped, unless this
machine's own conf of the lineage sets more; a machine's certbot flags
(``-- --kvault-propagation-seconds N``) win over the conf anyway.
"""
from __future__ import annotations

import urllib.parse
from typing import Any, Optional

import configobj

from certbot_kvault._internal.store.limits import MAX_RSA_BITS, MAX_VAULT_WAIT, MIN_RSA_BITS
from certbot_kvault._internal.store.records import RecordError, server_path_for_url, validate_name
from certbot_kvault._internal.tree import confs

CODE = "code"
MACHINE = "machine"
CONNECTION = "connection"
INVALID = "invalid"

TRUSTED_WITH_OPT_IN = (CODE, MACHINE)

# How the screen names a key dropped for holding a %(...) template.
TEMPLATE_MARK = " (template)"

# ``[renewalparams]`` keys certbot cannot renew right without: dropped (a template), they
# would make it use another CA or account, or no plugin; the lineage is refused instead.
NEEDED_PARAMS = ("server", "account", "authenticator")

# certbot's renewal.py CONFIG_ITEMS without the hooks, installer, authenticator and
# the dirs (rewritten from this machine's settings, see portable.DIR_PARAMS): what
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


def screen(conf: configobj.ConfigObj, local: dict[str, Any], trusted: bool,
           where: str) -> list[str]:
    """Take out of ``conf`` (Vault's, parsed as data) what it may not decide here; the
    keys it ignored, as ``warning`` names them. What Vault may not set keeps
    ``local``'s value (this machine's ``[renewalparams]`` of the lineage).
    RecordError (naming ``where``) when a value certbot needs holds a template."""
    templates = confs.drop_templates(conf)
    for key in NEEDED_PARAMS:
        if ("renewalparams", key) in templates:
            raise RecordError(f"{where}: its renewal conf's '{key}' holds a %(...) template, "
                              "which certbot would expand: not pulled; fix the record")
    # Named as the keys of [renewalparams] are below: bare.
    ignored = [".".join(p[1:] if p[0] == "renewalparams" else p) + TEMPLATE_MARK
               for p in templates]
    params = conf.get("renewalparams")
    if not isinstance(params, configobj.Section):
        return ignored
    # The keys dropped for a template: this machine keeps its own.
    dropped: dict[str, Any] = dict.fromkeys(
        p[1] for p in templates if p[0] == "renewalparams" and len(p) == 2)
    for key in list(params):
        value = params[key]
        if not untrusted(key, value, trusted):
            continue
        dropped[key] = params.pop(key)
        if local.get(key) == value:
            continue  # this machine's own setting, pushed earlier: nothing ignored
        ignored.append(f"{key} (invalid)" if classify(key, value) == INVALID else key)
    # What Vault may not set is this machine's to keep.
    for key, value in local.items():
        if key in dropped or untrusted(key, value, trusted):
            params[key] = value
    # A wait from Vault is capped, unless this machine's own conf waits longer.
    for key in [k for k in params if is_wait(k) and k not in dropped]:
        wait = seconds(params[key])
        limit = max(MAX_VAULT_WAIT, seconds(local.get(key)) or 0)
        if wait is not None and wait > limit:
            params[key] = str(limit)
            ignored.append(capped(key, limit))
    return ignored


def holds_untrusted(conf: configobj.ConfigObj, trusted: bool) -> bool:
    """Whether a conf's ``[renewalparams]`` holds a key that ``screen`` keeps from this
    machine's own conf rather than Vault's (then the two differ)."""
    params = conf.get("renewalparams")
    return isinstance(params, configobj.Section) and any(
        untrusted(key, params[key], trusted) for key in params)


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
