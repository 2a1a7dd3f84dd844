"""Renewal confs between machines: portable in Vault, local on disk, screened on the way in.

A lineage's renewal conf goes to Vault with this machine's paths replaced by
config-dir-relative ones and placeholders (``portable_conf``), and comes back
with the pulling machine's paths (``screened_conf``), through trust.py's
screen: what Vault may not decide here keeps the value this machine's own
conf holds. The ACME profile keys
(certbot >= 4.0) are data like any order setting; a certbot older than that
ignores them and deletes them when it rewrites a conf, so pull tells of them
once and push keeps Vault's. Confs are parsed as data (confs.py): a value
holding a ``%(`` template, which certbot would expand, never reaches disk.
Pure text in, text out; reading and writing the confs on disk is storage.py's.
"""
from __future__ import annotations

import io
import itertools
import os
from typing import Any, Optional

import certbot
import configobj

from certbot_kvault._internal.store.records import PEM_KINDS, RecordError
from certbot_kvault._internal.tree import confs, trust

# Keys of a renewal conf that hold this machine's paths, and how Vault keeps
# them portable (relative to the config dir / placeholders).
TOP_PATH_KEYS = ("archive_dir", *PEM_KINDS)
DIR_PARAMS = ("config_dir", "work_dir", "logs_dir")

# ``[renewalparams]`` keys of certbot >= 4.0 (--preferred-profile/--required-profile).
PROFILE_KEYS = ("preferred_profile", "required_profile")
PROFILES_SINCE = (4, 0)


def portable_conf(name: str, conf: configobj.ConfigObj) -> str:
    """The conf with this machine's paths replaced by config-dir-relative ones.

    ``conf`` is a private copy just parsed from disk: it is changed in place.
    """
    portable = conf
    portable["archive_dir"] = f"archive/{name}"
    for kind in PEM_KINDS:
        portable[kind] = f"live/{name}/{kind}.pem"
    params = portable.get("renewalparams")
    if params is not None:
        for key in DIR_PARAMS:
            if key in params:
                params[key] = "{" + key + "}"
    return _conf_text(portable)


def new_conf(name: str, params: dict[str, str]) -> str:
    """A portable conf for a lineage that certbot never wrote here (an import): certbot's
    top keys in its order, then ``params`` as ``[renewalparams]``."""
    conf = configobj.ConfigObj(encoding="utf-8", default_encoding="utf-8", interpolation=False)
    conf["version"] = certbot.__version__
    conf["archive_dir"] = f"archive/{name}"
    for kind in ("cert", "privkey", "chain", "fullchain"):
        conf[kind] = f"live/{name}/{kind}.pem"
    conf["renewalparams"] = params
    conf.comments["renewalparams"] = ["", "# Options used in the renewal process"]
    return _conf_text(conf)


def screened_conf(name: str, portable_text: str, *, archive_dir: str, live_dir: str,
                  dirs: dict[str, str], local: dict[str, Any], trusted: bool,
                  where: str = "") -> tuple[bytes, list[str]]:
    """A portable conf from Vault with this machine's ``archive_dir``, ``live_dir`` and
    ``dirs``, and the keys of Vault's conf that it ignored; ignored keys take their
    value from ``local`` (this machine's ``[renewalparams]`` of the lineage).
    ``where``: the record's Vault path, for the errors."""
    where = where or f"lineage {name} in Vault"
    try:
        conf = confs.parse_text(portable_text)
    except confs.ConfError as e:
        raise RecordError(f"{where}: its renewal conf cannot be parsed ({e}).") from None
    # Whatever paths the record holds are ignored: they are derived from
    # the (validated) name, so a hostile archive_dir cannot steer a write.
    conf["archive_dir"] = archive_dir
    for kind in PEM_KINDS:
        conf[kind] = os.path.join(live_dir, f"{kind}.pem")
    params = conf.get("renewalparams")
    if params is not None:
        for key in DIR_PARAMS:
            if key in params:
                params[key] = os.path.abspath(dirs[key])
    ignored = trust.screen(conf, local, trusted, where)
    return _conf_text(conf).encode("utf-8"), ignored


def _conf_text(conf: configobj.ConfigObj) -> str:
    out = io.BytesIO()
    conf.write(outfile=out)
    return out.getvalue().decode("utf-8")


def certbot_supports_profiles(version: str = certbot.__version__) -> bool:
    """Whether this certbot knows ACME profiles (``4.0.0``, ``4.1.0.dev0`` do)."""
    parts = []
    for part in version.split(".")[:2]:
        digits = "".join(itertools.takewhile(str.isdigit, part))
        parts.append(int(digits or 0))
    return tuple(parts) >= PROFILES_SINCE


def profile_asks() -> Optional[list[tuple[str, str, str]]]:
    """Where a pull collects (lineage, key, value) of confs that ask for a profile; None
    when this certbot knows profiles (nothing to tell then)."""
    return None if certbot_supports_profiles() else []


def profile_asked(portable_text: str) -> Optional[tuple[str, str]]:
    """The first profile key and its value a conf's ``[renewalparams]`` sets, if any."""
    try:
        conf = confs.parse_text(portable_text)
    except confs.ConfError:
        return None
    params = conf.get("renewalparams")
    if not isinstance(params, configobj.Section):
        return None
    for key in PROFILE_KEYS:
        value = params.get(key)
        if isinstance(value, str) and value.strip() and value.strip() != "None" \
                and not confs.templated(value):
            return key, value.strip()
    return None


def kept_profiles(local_text: str, vault_text: str,
                  version: str = certbot.__version__) -> str:
    """The local conf, plus the profile keys Vault's conf of the lineage holds and it lacks,
    when this certbot is older than 4.0.

    Such a certbot deletes the ``[renewalparams]`` keys it does not know when it rewrites
    a conf on renewal; pushing that conf would take the profile from every newer renewer.
    A certbot that knows profiles only leaves one out on purpose, so its conf is kept as is.
    """
    if certbot_supports_profiles(version):
        return local_text
    try:
        local, remote = (confs.parse_text(text) for text in (local_text, vault_text))
    except confs.ConfError:
        return local_text
    theirs, ours = remote.get("renewalparams"), local.get("renewalparams")
    if not isinstance(theirs, configobj.Section) or not isinstance(ours, configobj.Section):
        return local_text
    missing = [k for k in PROFILE_KEYS if k in theirs and k not in ours]
    if not missing:
        return local_text
    for key in missing:
        ours[key] = theirs[key]
    return _conf_text(local)


def profiles_ignored_warning(asking: list[tuple[str, str, str]],
                             version: str = certbot.__version__) -> str:
    """One line for all pulled lineages (name, key, value) whose conf asks for a profile
    that this certbot, older than 4.0, does not know."""
    name, key, value = sorted(asking)[0]
    # Names are validated; the value comes from Vault: no terminal escapes.
    value = value if value.isprintable() else ascii(value)
    return (f"warning: {len(asking)} lineage(s) ask for an ACME profile (e.g. {name}: "
            f"{key} = {value}); certbot {version} ignores profiles, they need certbot >= "
            f"{'.'.join(map(str, PROFILES_SINCE))} (Vault keeps them)")


def has_paths(conf: configobj.ConfigObj, *, archive_dir: str, live_dir: str) -> bool:
    """Whether a conf names exactly the ``archive_dir`` and ``live/`` links that
    ``screened_conf`` gives it."""
    want = {"archive_dir": archive_dir,
            **{kind: os.path.join(live_dir, f"{kind}.pem") for kind in PEM_KINDS}}
    return all(conf.get(key) == path for key, path in want.items())
