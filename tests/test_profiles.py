"""ACME profiles through Vault: what certbot >= 4 keeps in a renewal conf as
``preferred_profile``/``required_profile`` survives push, pull and a stateless renewal,
and an older certbot pulling such a lineage is told, once per run.

Debian's Pebble 2.4 advertises no profiles in its directory. certbot 5.8 asks for a
*preferred* profile only when the directory lists it (``client.py``, ``_get_order_and_
authorizations``), so ``--preferred-profile shortlived`` orders without one and renews
here as it would at a CA that lacks the profile. A *required* profile is sent as is.
"""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any

import certbot
import configobj
import pytest
from helpers import (
    Golden,
    fresh_dirs,
    golden_env,
    kv_version,
    kvault,
    orders,
    record,
    seed,
)
from servers import Bao, Pebble

from certbot_kvault._internal.tree.portable import (
    certbot_supports_profiles,
    kept_profiles,
    profiles_ignored_warning,
)

ISSUE = ("--agree-tos", "--register-unsafely-without-email")
needs_profiles = pytest.mark.skipif(not certbot_supports_profiles(),
                                    reason="certbot < 4.0 has no --preferred-profile")


def _params(conf_path: Path) -> dict[str, str]:
    return dict(configobj.ConfigObj(str(conf_path), encoding="utf-8")["renewalparams"])


def _new_order_payloads(root: Path) -> list[dict[str, Any]]:
    """The newOrder bodies certbot sent, from its debug log in ``root``."""
    log = (root / "logs" / "letsencrypt.log").read_text()
    bodies = [ast.literal_eval(line) for line in log.splitlines()
              if line.startswith("b'{") and '"identifiers"' in line]
    return [json.loads(b) for b in bodies]


def _with_pebble_ca(pebble: Pebble) -> dict[str, str]:
    return {**os.environ, "REQUESTS_CA_BUNDLE": pebble.ca_bundle}


@needs_profiles
def test_preferred_profile_survives_vault_and_a_stateless_renewal(
        bao: Bao, vault_env: dict[str, str], certbot, certbot_dirs, pebble: Pebble,
        tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    port = str(pebble.http_port)
    # Through the plugin's own push (-i kvault) and through `certbot-kvault push`.
    certbot("certonly", "-a", "standalone", "-i", "kvault", "--http-01-port", port, *ISSUE,
            "-d", "prof-plugin.example.com", "--preferred-profile", "shortlived")
    certbot("certonly", "--standalone", "--http-01-port", port, *ISSUE,
            "-d", "prof-push.example.com", "--preferred-profile", "shortlived")
    kvault("push", "--config-dir", str(certbot_dirs.config_dir))
    names = ["prof-plugin.example.com", "prof-push.example.com"]
    for name in names:
        assert "preferred_profile = shortlived" in record(bao, prefix, f"certificates/{name}"
                                                          )["renewal"]  # type: ignore[index]
        issued = record(bao, prefix, f"certificates/{name}")["issued"]  # type: ignore[index]
        assert (issued["profile"], issued["profile_asked_as"]) == ("shortlived",
                                                                   "preferred_profile")
    assert "profile: shortlived (asked as preferred_profile)" in kvault("show", names[0]).stdout

    root, args = fresh_dirs(tmp_path, "pulled")
    proc = kvault("pull", *args)
    assert "warning" not in proc.stderr, proc.stderr
    for name in names:
        assert _params(root / "config" / "renewal" / f"{name}.conf")["preferred_profile"] \
            == "shortlived"

    before = {n: kv_version(bao, prefix, f"certificates/{n}") for n in names}
    orders_before = orders(pebble)
    proc = kvault("renew", *args, "--", "--force-renewal", env=_with_pebble_ca(pebble))
    assert "renew: 2 renewed, 0 failed" in proc.stdout, proc.stdout
    assert orders(pebble) == orders_before + 2
    # The fallback: Pebble lists no profiles, so certbot's orders named none.
    orders_sent = _new_order_payloads(root)
    assert len(orders_sent) == 2 and not any("profile" in p for p in orders_sent), orders_sent
    for name in names:
        assert kv_version(bao, prefix, f"certificates/{name}") == before[name] + 1
        after = record(bao, prefix, f"certificates/{name}")
        assert after is not None and after["version"] == 2
        assert "preferred_profile = shortlived" in after["renewal"], after["renewal"]


@needs_profiles
def test_required_profile_survives_vault(bao: Bao, vault_env: dict[str, str], certbot,
                                         certbot_dirs, pebble: Pebble,
                                         tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    name = "prof-required.example.com"
    certbot("certonly", "--standalone", "--http-01-port", str(pebble.http_port), *ISSUE,
            "-d", name)
    conf_path = Path(certbot_dirs.config_dir) / "renewal" / f"{name}.conf"
    conf = configobj.ConfigObj(str(conf_path), encoding="utf-8")
    conf["renewalparams"]["required_profile"] = "shortlived"
    conf.write()
    kvault("push", "--config-dir", str(certbot_dirs.config_dir))
    assert "required_profile = shortlived" in record(bao, prefix, f"certificates/{name}"
                                                     )["renewal"]  # type: ignore[index]

    root, args = fresh_dirs(tmp_path, "pulled")
    proc = kvault("pull", *args)
    assert "warning" not in proc.stderr, proc.stderr
    assert _params(root / "config" / "renewal" / f"{name}.conf")["required_profile"] \
        == "shortlived"

    # Pebble 2.4 ignores an order's profile field, so the renewal half runs here too:
    # the profile from Vault's conf reached the stateless certbot's order.
    before = kv_version(bao, prefix, f"certificates/{name}")
    proc = kvault("renew", *args, "--", "--force-renewal", env=_with_pebble_ca(pebble))
    assert "renew: 1 renewed, 0 failed" in proc.stdout, proc.stdout
    assert [p.get("profile") for p in _new_order_payloads(root)] == ["shortlived"]
    assert kv_version(bao, prefix, f"certificates/{name}") == before + 1
    assert "required_profile = shortlived" in record(bao, prefix, f"certificates/{name}"
                                                     )["renewal"]  # type: ignore[index]


def _ask_for_profile(bao: Bao, prefix: str, name: str, line: str) -> None:
    """Add ``line`` to the ``[renewalparams]`` of lineage ``name``'s conf in Vault."""
    data = record(bao, prefix, f"certificates/{name}")
    assert data is not None and "[renewalparams]\n" in data["renewal"]
    data["renewal"] = data["renewal"].replace("[renewalparams]\n", f"[renewalparams]\n{line}\n")
    r = bao.api("POST", f"secret/data/{prefix}/certificates/{name}", json={"data": data})
    assert r.status_code == 200, r.text


def test_pull_tells_an_old_certbot_once_that_profiles_are_ignored(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: Path) -> None:
    """Runs on every certbot: on certbot >= 4 no such warning; on an older one (the min
    venv's 2.7.4) one line for all lineages, and the keys stay for a newer renewer."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due", "calm", "short"])
    _ask_for_profile(bao, prefix, "due", "preferred_profile = shortlived")
    _ask_for_profile(bao, prefix, "calm", "required_profile = classic")
    root, args = fresh_dirs(tmp_path)
    proc = kvault("pull", *args, env=golden_env(bao, golden, prefix))

    told = [ln for ln in proc.stderr.splitlines() if "profile" in ln]
    if certbot_supports_profiles():
        assert told == [], proc.stderr
    else:
        assert told == [
            "warning: 2 lineage(s) ask for an ACME profile (e.g. calm: required_profile = "
            f"classic); certbot {certbot.__version__} ignores profiles, they need certbot "
            ">= 4.0 (Vault keeps them)"], proc.stderr
        as_json = json.loads(kvault("pull", *args, "--json",
                                    env=golden_env(bao, golden, prefix)).stdout)
        assert [w for w in as_json["warnings"] if "profile" in w] == told
    # Pulled as they are: nothing dropped, so a newer certbot renewing from Vault keeps them.
    assert _params(root / "config" / "renewal" / "due.conf")["preferred_profile"] \
        == "shortlived"
    assert _params(root / "config" / "renewal" / "calm.conf")["required_profile"] == "classic"
    assert not any(k.endswith("_profile")
                   for k in _params(root / "config" / "renewal" / "short.conf"))


def test_a_renewal_by_any_certbot_keeps_the_profile_in_vault(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: Path) -> None:
    """certbot < 4 deletes the conf keys it does not know when it renews: the push must
    not take the profile from Vault, where a newer renewer needs it."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    _ask_for_profile(bao, prefix, "due", "preferred_profile = shortlived")
    before = kv_version(bao, prefix, "certificates/due")
    _, args = fresh_dirs(tmp_path)
    proc = kvault("renew", *args, env=golden_env(bao, golden, prefix))
    assert "renewed: due" in proc.stdout, proc.stdout
    after = record(bao, prefix, "certificates/due")
    assert kv_version(bao, prefix, "certificates/due") == before + 1
    assert after is not None and after["version"] == 2
    assert "preferred_profile = shortlived" in after["renewal"], after["renewal"]


CONF = "version = 2.7.4\narchive_dir = archive/x\n\n[renewalparams]\nkey_type = ecdsa\n"


@pytest.mark.parametrize("version,knows", [("2.7.4", False), ("3.3.0", False),
                                           ("4.0.0", True), ("4.1.0.dev0", True),
                                           ("5.8.0", True), ("10.0", True)])
def test_which_certbots_know_profiles(version: str, knows: bool) -> None:
    assert certbot_supports_profiles(version) is knows


def test_only_an_old_certbot_gets_vaults_profile_back() -> None:
    vault = CONF + "preferred_profile = shortlived\nrequired_profile = tlsserver\n"
    kept = kept_profiles(CONF, vault, version="2.7.4")
    assert "preferred_profile = shortlived" in kept and "required_profile = tlsserver" in kept
    # A conf that names its own profile keeps it; one without a section is left alone.
    own = CONF + "preferred_profile = classic\n"
    assert "preferred_profile = classic" in kept_profiles(own, vault, version="2.7.4")
    assert kept_profiles("version = 2.7.4\n", vault, version="2.7.4") == "version = 2.7.4\n"
    # certbot >= 4 knows the keys: what its conf lacks, it left out, so push it as it is.
    assert kept_profiles(CONF, vault, version="5.8.0") == CONF


def test_the_warning_escapes_a_value_from_vault() -> None:
    line = profiles_ignored_warning([("b", "preferred_profile", "x"),
                                     ("a", "required_profile", "\x1b[2Jevil")], "2.7.4")
    assert line.isprintable() and "e.g. a: required_profile = '\\x1b[2Jevil'" in line
    assert line.startswith("warning: 2 lineage(s) ask for an ACME profile")
