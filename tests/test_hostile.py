"""Records in Vault are data, never code: what a Vault writer cannot make a renewer do.

Anyone who may write ``certificates/*`` (every renewer's policy) writes the
renewal confs that every other renewer pulls. These tests plant hostile values
in real records (copied from the session's golden lineages into a per-test
prefix) and run the real ``certbot-kvault pull``/``renew`` against OpenBao and
Pebble.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import configobj
import pytest
from helpers import Golden, fresh_dirs, golden_env, kv_version, kvault, record, seed, walk
from servers import Bao
from stubs import Answer, HttpStub

HOOKS = ("pre_hook", "post_hook", "deploy_hook", "renew_hook", "manual_auth_hook",
         "manual_cleanup_hook")
CONNECTION = ("kvault_vault_addr", "kvault_vault_namespace", "kvault_vault_cacert",
              "kvault_mount", "kvault_prefix")


def _plant(bao: Bao, prefix: str, name: str, top: dict[str, str] | None = None,
           **params: Any) -> None:
    """Rewrite the lineage's `renewal` field in Vault, as any renewer's token may."""
    data = record(bao, prefix, f"certificates/{name}")
    assert data is not None
    conf = configobj.ConfigObj(data["renewal"].splitlines())
    for key, value in (top or {}).items():
        assert key in conf.scalars, key  # replaced in place: top-level keys precede sections
        conf[key] = value
    conf["renewalparams"].update(params)
    data["renewal"] = "\n".join(conf.write()) + "\n"
    r = bao.api("POST", f"secret/data/{prefix}/certificates/{name}", json={"data": data})
    assert r.status_code == 200, r.text


def _local_params(root: Path, name: str) -> dict[str, Any]:
    conf = configobj.ConfigObj(str(root / "config" / "renewal" / f"{name}.conf"),
                               encoding="utf-8")
    params: dict[str, Any] = conf["renewalparams"].dict()
    return params


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: lineage ")]


def _named(line: str) -> set[str]:
    """The keys a warning line names."""
    listed = line.split("ignored from Vault's renewal conf: ", 1)[1].split(" (hooks and", 1)[0]
    return {k.strip() for k in listed.split(",")}


def _tree_listing(root: Path) -> set[str]:
    return {str(Path(d, n).relative_to(root)) for d, dirs, files in os.walk(root)
            for n in dirs + files}


@pytest.fixture
def listener() -> Iterator[HttpStub]:
    """An HTTP listener that records every request it gets (a Vault impostor)."""
    with HttpStub(lambda request: Answer(500)) as impostor:
        yield impostor


def _markers(tmp_path: Path) -> dict[str, str]:
    return {hook: f"touch {tmp_path / ('pwned-' + hook)}" for hook in HOOKS}


# ---- the reproduction: hooks planted in Vault run on another renewer -----------------


def test_vault_hooks_do_not_run_on_renew(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                         tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    _plant(bao, prefix, "due", **_markers(tmp_path))
    before = kv_version(bao, prefix, "certificates/due")
    root, args = fresh_dirs(tmp_path)

    proc = kvault("renew", *args, "--", "--force-renewal", env=golden_env(bao, golden, prefix))

    assert "renewed: due" in proc.stdout, proc.stdout + proc.stderr
    assert kv_version(bao, prefix, "certificates/due") == before + 1
    assert sorted(p.name for p in tmp_path.glob("pwned-*")) == []
    [line] = _warnings(proc.stderr)
    assert line.startswith("warning: lineage due: ignored from Vault's renewal conf: ")
    assert line.endswith("(hooks and paths run only with --trust-vault-hooks; "
                         "Vault settings never)")
    assert _named(line) == set(HOOKS)
    assert not set(HOOKS) & set(_local_params(root, "due"))


def test_trusted_vault_hooks_run(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                 tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    _plant(bao, prefix, "due", kvault_vault_addr="http://127.0.0.1:9", **_markers(tmp_path))
    env = golden_env(bao, golden, prefix)

    # The variable on pull: hooks kept, the Vault address still not.
    pull_root, pull_args = fresh_dirs(tmp_path, "pulled")
    proc = kvault("pull", *pull_args, env={**env, "KVAULT_TRUST_VAULT_HOOKS": "1"})
    params = _local_params(pull_root, "due")
    assert {h: params.get(h) for h in HOOKS} == _markers(tmp_path)
    assert "kvault_vault_addr" not in params
    assert [_named(w) for w in _warnings(proc.stderr)] == [{"kvault_vault_addr"}]

    # The flag on renew: certbot runs them.
    root, args = fresh_dirs(tmp_path)
    proc = kvault("renew", *args, "--trust-vault-hooks", "--", "--force-renewal", env=env)
    assert "renewed: due" in proc.stdout, proc.stdout + proc.stderr
    # renew_hook is the name certbot saves --deploy-hook under; it wins over deploy_hook.
    for hook in ("pre_hook", "renew_hook", "post_hook"):
        assert (tmp_path / f"pwned-{hook}").exists(), (hook, proc.stderr)


def test_run_leaves_vault_hooks_of_untouched_lineages(bao: Bao, golden: Golden,
                                                      vault_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    """A machine that does not trust Vault's hooks neither runs them nor erases them from
    the lineages it did not renew (for the machines that do trust them)."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due", "calm"])
    hook = f"touch {tmp_path / 'pwned'}"
    for name in ("due", "calm"):
        _plant(bao, prefix, name, pre_hook=hook, kvault_vault_addr="http://127.0.0.1:9")
    due, calm = (kv_version(bao, prefix, f"certificates/{n}") for n in ("due", "calm"))
    root, args = fresh_dirs(tmp_path)
    env = golden_env(bao, golden, prefix)

    kvault("run", *args, "--", "renew", "--force-renewal", "--cert-name", "due", env=env)

    assert not (tmp_path / "pwned").exists()
    assert kv_version(bao, prefix, "certificates/due") == due + 1
    assert kv_version(bao, prefix, "certificates/calm") == calm
    vault_conf = record(bao, prefix, "certificates/calm")["renewal"]  # type: ignore[index]
    assert f"pre_hook = {hook}" in vault_conf
    assert kvault("push", *args, env=env).stdout.startswith("0 pushed, ")


# ---- Vault connection settings: the token never goes elsewhere ------------------------


def test_planted_vault_settings_get_no_token(bao: Bao, golden: Golden,
                                             vault_env: dict[str, str], tmp_path: Path,
                                             listener: HttpStub) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    # kvault as the installer: certbot then starts the plugin on renewal, and the
    # plugin reads its connection settings from the conf.
    _plant(bao, prefix, "due", installer="kvault", kvault_vault_addr=listener.url,
           kvault_vault_namespace="evil", kvault_vault_cacert=str(tmp_path / "evil-ca.pem"),
           kvault_mount="evil-mount", kvault_prefix="evil-prefix")
    before = kv_version(bao, prefix, "certificates/due")
    root, args = fresh_dirs(tmp_path)

    proc = kvault("renew", *args, "--trust-vault-hooks", "--", "--force-renewal",
                  env=golden_env(bao, golden, prefix), check=False)

    assert listener.seen == []
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "renewed: due" in proc.stdout, proc.stdout + proc.stderr
    assert kv_version(bao, prefix, "certificates/due") > before
    assert not any("evil" in p for p in walk(bao, prefix))
    [line] = _warnings(proc.stderr)
    assert _named(line) == set(CONNECTION)
    params = _local_params(root, "due")
    assert params["installer"] == "kvault"
    assert not set(CONNECTION) & set(params)


# ---- a catalogue of hostile values: nothing lands outside the config dir ------------------


def _catalogue(tmp_path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    evil = tmp_path / "evil"
    top = {"archive_dir": "../../../evil-archive", "cert": "/etc/passwd",
           "privkey": str(evil / "privkey.pem")}
    params: dict[str, Any] = {
        # code
        "pre_hook": f"touch {evil}-pre", "installer": "nginx",
        "nginx_ctl": f"touch {evil}-ctl",
        # machine paths
        "config_dir": str(evil / "config"), "work_dir": str(evil / "work"),
        "logs_dir": str(evil / "logs"), "webroot_path": str(evil / "webroot"),
        "webroot_map": {"www.example.com": str(evil / "map")},
        "dns_rfc2136_credentials": str(evil / "creds.ini"), "csr": str(evil / "csr.pem"),
        "key_path": str(evil / "key.pem"), "fullchain_path": str(evil / "fullchain.pem"),
        # Vault connection
        "kvault_vault_addr": "http://127.0.0.1:9", "kvault_mount": "evil",
        # invalid
        "server": f"file://{evil}/directory", "account": "../../../evil",
    }
    return top, params


CODE_AND_PATHS = {"pre_hook", "installer", "nginx_ctl", "webroot_path", "webroot_map",
                  "dns_rfc2136_credentials", "csr", "key_path", "fullchain_path"}
NEVER = {"kvault_vault_addr", "kvault_mount", "server (invalid)", "account (invalid)"}


@pytest.mark.parametrize("trusted", [False, True], ids=["default", "trust-vault-hooks"])
def test_hostile_renewal_conf_on_pull(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                      tmp_path: Path, trusted: bool) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due", "calm"])
    top, params = _catalogue(tmp_path)
    _plant(bao, prefix, "due", top, **params)
    root, args = fresh_dirs(tmp_path)
    listing = _tree_listing(tmp_path)

    flags = ["--trust-vault-hooks"] if trusted else []
    proc = kvault("pull", "--json", *flags, *args, env=golden_env(bao, golden, prefix))

    new = _tree_listing(tmp_path) - listing
    assert new and all(p.startswith(os.path.join("run", "config") + os.sep) for p in new), \
        sorted(p for p in new if not p.startswith(os.path.join("run", "config")))
    assert not (tmp_path / "evil").exists()
    report = json.loads(proc.stdout)
    assert report["failed"] == [] and "lineage calm" in report["written"]
    dropped = NEVER if trusted else NEVER | CODE_AND_PATHS
    [line] = report["warnings"]
    assert line.startswith("warning: lineage due: ")
    assert _named(line) == dropped
    assert _warnings(proc.stderr) == [line]

    conf = configobj.ConfigObj(str(root / "config" / "renewal" / "due.conf"),
                               encoding="utf-8")
    local = conf["renewalparams"]
    assert not {k.split(" ")[0] for k in dropped} & set(local)
    config = root / "config"
    assert conf["archive_dir"] == str(config / "archive" / "due")
    assert conf["cert"] == str(config / "live" / "due" / "cert.pem")
    assert conf["privkey"] == str(config / "live" / "due" / "privkey.pem")
    assert local["config_dir"] == str(config)
    assert local["work_dir"] == str(root / "work")
    assert local["logs_dir"] == str(root / "logs")
    if trusted:
        assert {k: local[k] for k in CODE_AND_PATHS} == \
            {k: params[k] for k in CODE_AND_PATHS}


def test_key_names_reach_the_terminal_escaped(bao: Bao, golden: Golden,
                                              vault_env: dict[str, str],
                                              tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    _plant(bao, prefix, "due", **{"x\x1b]0;owned\x07\x1b[2J_hook": "true"})
    root, args = fresh_dirs(tmp_path)

    proc = kvault("pull", *args, env=golden_env(bao, golden, prefix))

    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    [line] = _warnings(proc.stderr)
    assert _named(line) == {"'x\\x1b]0;owned\\x07\\x1b[2J_hook'"}
    assert not any(k.endswith("_hook") for k in _local_params(root, "due"))


def test_local_settings_survive_pull(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                     tmp_path: Path) -> None:
    """What Vault may not set stays as this machine has it; only real drops are named."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    env = golden_env(bao, golden, prefix)
    root, args = fresh_dirs(tmp_path)
    kvault("pull", *args, env=env)
    conf_path = root / "config" / "renewal" / "due.conf"
    conf = configobj.ConfigObj(str(conf_path), encoding="utf-8")
    conf["renewalparams"].update({
        "pre_hook": "echo local-pre", "post_hook": "echo local-post",
        "deploy_hook": "echo same-here", "kvault_vault_addr": bao.addr})
    conf.write()
    _plant(bao, prefix, "due", pre_hook=f"touch {tmp_path}/pwned",
           deploy_hook="echo same-here", kvault_vault_addr="http://127.0.0.1:9")

    proc = kvault("pull", *args, env=env)

    params = _local_params(root, "due")
    assert params["pre_hook"] == "echo local-pre"        # not clobbered by Vault's
    assert params["post_hook"] == "echo local-post"      # kept though Vault has none
    assert params["deploy_hook"] == "echo same-here"
    assert params["kvault_vault_addr"] == bao.addr
    # Vault's deploy_hook is this machine's own value: nothing was ignored there.
    assert [_named(w) for w in _warnings(proc.stderr)] == [{"pre_hook", "kvault_vault_addr"}]

    # Pushing is as before: this machine's conf goes to Vault as it is.
    assert re.search(r"^1 pushed, ", kvault("push", *args, env=env).stdout, re.M)
    vault_conf = record(bao, prefix, "certificates/due")["renewal"]  # type: ignore[index]
    assert "pre_hook = echo local-pre" in vault_conf
    assert "post_hook = echo local-post" in vault_conf


# ---- other values pull turns into paths ----------------------------------------------------


def test_account_server_must_be_http(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                     tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, [])
    [path, *_] = list(walk(bao, f"{prefix}/accounts"))
    data = record(bao, prefix, f"accounts/{path}")
    assert data is not None and data["server"].startswith("https://")
    # Same accounts/<host>/<path> dir, so only the scheme gives it away.
    data["server"] = "ftp://" + data["server"][len("https://"):]
    r = bao.api("POST", f"secret/data/{prefix}/accounts/{path}", json={"data": data})
    assert r.status_code == 200, r.text
    root, args = fresh_dirs(tmp_path)

    proc = kvault("pull", *args, env=golden_env(bao, golden, prefix), check=False)

    assert proc.returncode == 1
    [line] = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert f"secret/{prefix}/accounts/{path}: 'server' must be the http(s) URL" in line
    assert not (root / "config" / "accounts" / path).exists()


def test_huge_archive_version_fails_alone(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                          tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due", "calm"])
    data = record(bao, prefix, "certificates/due")
    assert data is not None
    data["version"] = "1" + "0" * 300  # an archive file name the filesystem refuses
    r = bao.api("POST", f"secret/data/{prefix}/certificates/due", json={"data": data})
    assert r.status_code == 200, r.text
    root, args = fresh_dirs(tmp_path)

    proc = kvault("pull", "--workers", "1", *args, env=golden_env(bao, golden, prefix),
                  check=False)

    assert proc.returncode == 1
    assert f"error: lineage due: secret/{prefix}/certificates/due: 'version' must be an " \
           "archive number" in proc.stderr, proc.stderr
    assert (root / "config" / "renewal" / "calm.conf").exists()
    assert not (root / "config" / "archive" / "due").exists()


# ---- found by the generated records (test_generated.py), one example each ---------------


@pytest.mark.parametrize("bad", ["x\\y", "-x", "l" * 241 + ".com"], ids=["backslash", "dash",
                                                                          "too-long"])
def test_a_key_that_is_no_lineage_name_is_left_out(bao: Bao, golden: Golden,
                                                   vault_env: dict[str, str], tmp_path: Path,
                                                   bad: str) -> None:
    """A key below certificates/ that no lineage may be named made `list` and `renew` end
    for the whole fleet ("Error: Invalid lineage name ..."): it is one warning there, one
    error line in `pull`, and every other lineage is listed, decided and pulled."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    calm = record(bao, prefix, "certificates/calm")
    r = bao.api("POST", f"secret/data/{prefix}/certificates/{urllib.parse.quote(bad, safe='')}",
                json={"data": calm})
    assert r.status_code == 200, r.text
    env = golden_env(bao, golden, prefix)

    listed = kvault("list", "--json", env=env)
    assert [row["name"] for row in json.loads(listed.stdout)] == ["calm"]
    [line] = listed.stderr.splitlines()
    assert line.startswith(f"warning: secret/{prefix}/certificates: Invalid lineage name ")
    assert line.endswith("; not listed") and repr(bad)[:50] in line

    root, args = fresh_dirs(tmp_path)
    renewed = kvault("renew", *args, "--no-ari", env=env)
    assert renewed.stdout.startswith("renew: nothing is due (1 lineages checked"), renewed.stdout
    assert renewed.stderr.splitlines() == [line.replace("; not listed", "; left out")]

    pulled = kvault("pull", *args, env=env, check=False)
    assert pulled.returncode == 1
    [error] = pulled.stderr.splitlines()
    assert error.startswith("error: lineage ") and "Invalid lineage name" in error
    assert (root / "config" / "renewal" / "calm.conf").exists()


def test_show_with_an_updated_at_of_another_type(bao: Bao, golden: Golden,
                                                 vault_env: dict[str, str]) -> None:
    """`updated_at` was printed as it came: a list made `show` end in "error: unexpected
    TypeError", a text with a line break broke its lines. Only a time is shown."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    env = golden_env(bao, golden, prefix)
    calm = record(bao, prefix, "certificates/calm")
    assert calm is not None
    for planted, shown in (([True], "None"), ("\n2030-01-01T00:00:00Z", "2030-01-01T00:00:00Z"),
                           ({"at": 1}, "None")):
        r = bao.api("POST", f"secret/data/{prefix}/certificates/calm",
                    json={"data": {**calm, "updated_at": planted}})
        assert r.status_code == 200, r.text
        proc = kvault("show", "calm", env=env)
        assert f"\nupdated_at: {shown}\n" in proc.stdout, proc.stdout
        assert proc.stderr == ""
        as_json = json.loads(kvault("show", "calm", "--json", env=env).stdout)
        assert as_json["updated_at"] == (None if shown == "None" else shown)


def _escaped_names_pems() -> dict[str, str]:
    """A certificate and key whose subject and DNS name hold terminal escapes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    evil = "evil\x1b]0;pwned\x07\x1b[2J.example.com"
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, evil)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=89))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(evil)]), critical=False)
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    privkey = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return {"cert": cert, "chain": cert, "fullchain": cert + cert, "privkey": privkey}


def test_certificate_names_and_pems_with_control_characters_are_refused(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: Path) -> None:
    """A certificate whose names hold terminal escapes reached the terminal through `show`
    (subject, domains) and `export --format env`; a PEM with control characters after
    its END line parsed and went into the files and env lines. No CA issues either:
    refused in one line, like any other record no CA makes."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm", "due"])
    env = golden_env(bao, golden, prefix)
    calm = record(bao, prefix, "certificates/calm")
    due = record(bao, prefix, "certificates/due")
    assert calm is not None and due is not None
    for path, data in (("calm", {**calm, **_escaped_names_pems()}),
                       ("due", {**due, "fullchain": due["fullchain"] + "\x1b[2J\x1f"})):
        r = bao.api("POST", f"secret/data/{prefix}/certificates/{path}", json={"data": data})
        assert r.status_code == 200, r.text

    for name, why in (("calm", "a name in its certificate holds characters that are not "
                               "printable; no CA issues such a name."),
                      ("due", "'fullchain' holds characters no PEM has (control characters "
                              "or non-ASCII).")):
        for args in (["show", name], ["export", name, "--format", "env"]):
            proc = kvault(*args, env=env, check=False)
            assert proc.returncode == 1 and proc.stdout == ""
            assert proc.stderr == f"error: secret/{prefix}/certificates/{name}: {why}\n"
    root, args = fresh_dirs(tmp_path)
    pulled = kvault("pull", *args, env=env, check=False)
    assert pulled.returncode == 1 and "\x1b" not in pulled.stderr
    assert len(pulled.stderr.splitlines()) == 2, pulled.stderr
    assert not (root / "config" / "live" / "calm").exists()


def _bit_string_name_pems() -> dict[str, str]:
    """A certificate whose subject and issuer CN are DER BIT STRINGs: it loads, and reading
    its names raises TypeError (what one flipped byte of a golden PEM gave)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "\x00bits.example.com")])
    der = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
           .public_key(key.public_key()).serial_number(7).not_valid_before(now)
           .not_valid_after(now + datetime.timedelta(days=90)).sign(key, hashes.SHA256())
           .public_bytes(serialization.Encoding.DER))
    cn_utf8 = bytes([0x06, 0x03, 0x55, 0x04, 0x03, 0x0C])  # OID 2.5.4.3, then UTF8String
    assert der.count(cn_utf8) == 2
    cert = x509.load_der_x509_certificate(der.replace(cn_utf8, cn_utf8[:-1] + b"\x03"))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    privkey = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return {"cert": pem, "chain": pem, "fullchain": pem + pem, "privkey": privkey}


def test_a_certificate_whose_names_cannot_be_read_is_refused(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: Path) -> None:
    """It loaded and passed the checks; reading its names raised TypeError: `show` ended in
    "error: unexpected TypeError: oid must be X500_UNIQUE_IDENTIFIER for BitString type."."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm", "due"])
    calm = record(bao, prefix, "certificates/calm")
    assert calm is not None
    r = bao.api("POST", f"secret/data/{prefix}/certificates/calm",
                json={"data": {**calm, **_bit_string_name_pems()}})
    assert r.status_code == 200, r.text
    env = golden_env(bao, golden, prefix)
    why = (f"error: secret/{prefix}/certificates/calm: 'cert' is not a valid PEM certificate "
           "(or its names or extensions cannot be parsed).\n")
    for args in (["show", "calm"], ["show", "calm", "--json"], ["export", "calm", "--format",
                                                                "env"]):
        proc = kvault(*args, env=env, check=False)
        assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", why)
    root, args = fresh_dirs(tmp_path)
    pulled = kvault("pull", *args, env=env, check=False)
    assert pulled.returncode == 1
    assert pulled.stderr == "error: lineage calm: " + why[len("error: "):]
    assert (root / "config" / "renewal" / "due.conf").exists()
