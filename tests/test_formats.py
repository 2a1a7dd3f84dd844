"""`export` in the forms apps expect, against the real OpenBao: a Kubernetes TLS Secret
(parsed with PyYAML, its base64 data compared with Vault's PEMs), adjustable file names
and which certificate goes in the cert file, Kontena's env names, and bad input (one
line each, nothing written).
"""
from __future__ import annotations

import base64
import grp
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import configobj
import pytest
import yaml
from helpers import (
    Golden,
    fresh_dirs,
    golden_env,
    kv_version,
    kvault,
    one_line_error,
    record,
    seed,
)
from servers import Bao

from certbot_kvault._internal.apps import export
from certbot_kvault._internal.apps.export import OWNER_FILE
from certbot_kvault._internal.store.records import LineageRecord, PemSet


@pytest.fixture
def vault(bao: Bao, golden: Golden, vault_env: dict[str, str]) -> dict[str, Any]:
    """The golden ``calm`` lineage at ``calm`` and at ``shop-1.example.com`` in this test's
    prefix; returns the record as Vault holds it."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    data = record(bao, prefix, "certificates/calm")
    assert data is not None
    put(bao, prefix, "shop-1.example.com", data)
    return data


def put(bao: Bao, prefix: str, name: str, data: dict[str, Any]) -> None:
    r = bao.api("POST", f"secret/data/{prefix}/certificates/{name}", json={"data": data})
    assert r.status_code == 200, r.text


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return kvault("export", *args, check=False)


def files_in(directory: Path) -> dict[str, str]:
    """The files an app finds in ``directory`` (not the lineage mark export keeps there)."""
    if not directory.exists():
        return {}
    return {p.name: p.read_text() for p in directory.iterdir() if p.name != OWNER_FILE}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# ---- Kubernetes ------------------------------------------------------------------------


def test_k8s_secret_holds_vaults_pems(vault: dict[str, Any]) -> None:
    proc = kvault("export", "calm", "--format", "k8s-secret", "--namespace", "web",
                  "--ca-crt")
    assert proc.stderr == ""
    doc = yaml.safe_load(proc.stdout)
    assert (doc["apiVersion"], doc["kind"], doc["type"]) == ("v1", "Secret",
                                                             "kubernetes.io/tls")
    meta = doc["metadata"]
    assert (meta["name"], meta["namespace"]) == ("calm", "web")
    assert meta["labels"]["certbot-kvault/lineage"] == "calm"
    assert meta["labels"]["certbot-kvault/version"] == str(vault["version"])
    assert meta["annotations"]["certbot-kvault/not-after"] == vault["not_after"]
    assert doc["data"] == {"tls.crt": b64(vault["fullchain"]), "tls.key": b64(vault["privkey"]),
                           "ca.crt": b64(vault["chain"])}

    # No ca.crt unless asked; the certificate alone in tls.crt with --cert-type cert;
    # the name given.
    doc = yaml.safe_load(kvault("export", "calm", "--format", "k8s-secret", "--cert-type",
                                "cert", "--secret-name", "calm-tls").stdout)
    assert doc["data"] == {"tls.crt": b64(vault["cert"]), "tls.key": b64(vault["privkey"])}
    assert doc["metadata"]["name"] == "calm-tls" and "namespace" not in doc["metadata"]


def test_k8s_names_from_any_lineage_name(bao: Bao, vault: dict[str, Any],
                                         vault_env: dict[str, str]) -> None:
    name = "Café Shop_1..Example.com-"
    put(bao, vault_env["KVAULT_PREFIX"], name, vault)
    doc = yaml.safe_load(kvault("export", name, "--format", "k8s-secret").stdout)
    meta = doc["metadata"]
    assert meta["name"] == "caf-shop-1.example.com"
    assert meta["labels"]["certbot-kvault/lineage"] == "Caf--Shop_1..Example.com"
    assert meta["annotations"]["certbot-kvault/lineage"] == name
    assert doc["data"]["tls.key"] == b64(vault["privkey"])


@pytest.mark.parametrize("text", [
    'say "hi"', "back\\slash", "two\nlines", "tab\there", "café", "line\u2028sep",
    "\U0001f512 lock", "key: value # not a comment", "yes", "null", "0123", "- item", "",
    "\x85\x9f", "'single'", "{a: b}", "&anchor *alias !tag %dir @at `tick`",
])
def test_secret_strings_read_back_as_written(text: str) -> None:
    # The Secret is JSON: kubectl reads it as JSON, YAML parsers as YAML. Every string
    # (here the lineage's name, which only the annotation keeps as it is) reads back
    # as written; a YAML 1.1 parser splits a character beyond U+FFFF into its
    # surrogate pair's two escapes, so PyYAML is asked only about the others.
    record = LineageRecord(name=text, version=1, renewal="", auto_renewable=True,
                           pems=PemSet("cert\n", "chain\n", "full\n", "key\n"))
    secret = export.k8s_secret(record, export.Options(secret_name="s"))
    assert secret.isascii()
    readers = [json.loads] + ([yaml.safe_load] if all(ord(c) <= 0xFFFF for c in text) else [])
    for read in readers:
        assert read(secret)["metadata"]["annotations"]["certbot-kvault/lineage"] == text


@pytest.mark.parametrize(("lineage", "name", "label"), [
    ("example.com", "example.com", "example.com"),
    ("Example.COM-0001", "example.com-0001", "Example.COM-0001"),
    ("_x_.y", "x.y", "x_.y"),
    ("a" * 70, "a" * 70, "a" * 63),
])
def test_k8s_name_and_label_rules(lineage: str, name: str, label: str) -> None:
    assert export.k8s_name(lineage) == name
    assert export.k8s_label_value(lineage) == label


def test_k8s_name_refuses_a_name_with_nothing_usable() -> None:
    with pytest.raises(export.ExportError, match="pass --secret-name"):
        export.k8s_name("___")


# ---- files -----------------------------------------------------------------------------


def test_pki_style_file_names_with_the_full_chain(vault: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "certs"
    proc = kvault("export", "calm", "--dir", str(out), "--cert-type", "fullchain",
                  "--cert-file", "cert.pem", "--key-file", "key.pem", "--chain-file",
                  "ca-cert.pem", "--fullchain-file", "")
    assert "PRIVATE KEY" not in proc.stdout
    assert files_in(out) == {"cert.pem": vault["fullchain"], "key.pem": vault["privkey"],
                             "ca-cert.pem": vault["chain"]}
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (out / "cert.pem").stat().st_mode & 0o777 == 0o644


def test_default_names_hold_what_certbots_live_dir_holds(vault: dict[str, Any],
                                                         tmp_path: Path) -> None:
    out = tmp_path / "certs"
    kvault("export", "calm", "--dir", str(out))
    assert files_in(out) == {"cert.pem": vault["cert"], "chain.pem": vault["chain"],
                             "fullchain.pem": vault["fullchain"],
                             "privkey.pem": vault["privkey"]}


def test_bundle_file_name(vault: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "haproxy"
    kvault("export", "calm", "--dir", str(out), "--format", "bundle", "--bundle-file",
           "site.pem")
    assert files_in(out) == {"site.pem": vault["privkey"] + vault["fullchain"]}
    assert (out / "site.pem").stat().st_mode & 0o777 == 0o600



def test_a_directory_holds_one_lineage(vault: dict[str, Any], tmp_path: Path) -> None:
    """A plain export into another lineage's directory is refused in one line, even for
    a lineage with the very same certificate; the owner exports there again."""
    out = tmp_path / "certs"
    kvault("export", "calm", "--dir", str(out))
    before = {p.name: (p.read_text(), p.stat().st_mtime_ns) for p in out.iterdir()}
    line = one_line_error(run("shop-1.example.com", "--dir", str(out), "--format", "bundle"))
    assert line == (f"error: {out} holds the files of lineage calm (its {OWNER_FILE} "
                    "says so); not writing shop-1.example.com over them: give "
                    "shop-1.example.com a directory of its own (--dir; --dir '/certs/{name}' "
                    "for several), or remove that directory if calm no longer uses it.")
    assert {p.name: (p.read_text(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    assert kvault("export", "calm", "--dir", str(out)).stdout.count("wrote: ") == 4
    assert files_in(out)["privkey.pem"] == vault["privkey"]

# ---- Kontena ---------------------------------------------------------------------------


def sourced(lines: str, *names: str) -> list[str]:
    """The shell's values of ``names`` after sourcing ``lines``."""
    script = lines + "\n" + "".join(f'printf "%s\\0" "${n}"\n' for n in names)
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    return proc.stdout.split("\0")[:-1]


def test_kontena_env_names(vault: dict[str, Any]) -> None:
    proc = kvault("export", "shop-1.example.com", "--format", "env", "--env-style", "kontena")
    base = "LE_CERTIFICATE_shop_1_example_com"
    names = [f"{base}_PRIVATE_KEY", f"{base}_CERTIFICATE", f"{base}_BUNDLE",
             "SSL_CERT_shop_1_example_com"]
    assert re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)='", proc.stdout, re.MULTILINE) == names
    bundle = vault["fullchain"] + vault["privkey"]  # certificate first: Kontena's LB wants it
    assert sourced(proc.stdout, *names) == [vault["privkey"], vault["fullchain"], bundle,
                                            bundle]

    cert_only = kvault("export", "shop-1.example.com", "--format", "env", "--env-style",
                       "kontena", "--cert-type", "cert").stdout
    assert sourced(cert_only, f"{base}_CERTIFICATE", f"{base}_BUNDLE") == [
        vault["cert"], vault["cert"] + vault["privkey"]]


# ---- bad input -------------------------------------------------------------------------


def test_unknown_lineage(vault: dict[str, Any], vault_env: dict[str, str],
                         tmp_path: Path) -> None:
    for fmt in ("k8s-secret", "pem"):
        where = ["--dir", str(tmp_path / "out")] if fmt == "pem" else []
        proc = run("nope.example.com", "--format", fmt, *where)
        line = one_line_error(proc)
        assert f"No lineage nope.example.com in Vault (secret/{vault_env['KVAULT_PREFIX']}"\
               "/certificates/nope.example.com)" in line, line
        assert proc.stdout == "" and not (tmp_path / "out").exists()


def test_corrupt_record(bao: Bao, golden: Golden, vault: dict[str, Any],
                        vault_env: dict[str, str], tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    other = record(bao, golden.prefix, "certificates/due")
    assert other is not None
    cases = {"garbled": (dict(vault, privkey=vault["privkey"][:60] + vault["privkey"][90:]),
                         "'privkey' is not a valid unencrypted PEM private key"),
             "mismatched": (dict(vault, privkey=other["privkey"]),
                            "'privkey' does not match the certificate's public key"),
             "no-fullchain": ({k: v for k, v in vault.items() if k != "fullchain"},
                              "is missing fullchain")}
    out = tmp_path / "out"
    for name, (data, _) in cases.items():
        put(bao, prefix, name, data)
    for name, fmt in (("garbled", "pem"), ("mismatched", "k8s-secret"),
                      ("mismatched", "env"), ("no-fullchain", "bundle")):
        where = ["--dir", str(out)] if fmt in ("pem", "bundle") else []
        proc = run(name, "--format", fmt, *where)
        line = one_line_error(proc)
        assert f"secret/{prefix}/certificates/{name}" in line and cases[name][1] in line, line
        assert proc.stdout == "" and not out.exists()


def test_unwritable_dir_writes_nothing(vault: dict[str, Any], tmp_path: Path) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("")
    line = one_line_error(run("calm", "--dir", str(afile / "certs")))
    assert line.endswith(f"Cannot create {afile / 'certs'}: Not a directory; nothing was "
                         "written."), line

    # A target the files cannot replace: none of the others is written either.
    out = tmp_path / "out"
    (out / "privkey.pem").mkdir(parents=True)
    line = one_line_error(run("calm", "--dir", str(out)))
    assert f"Cannot write {out / 'privkey.pem'}: Is a directory; nothing was written." in line
    assert os.listdir(out) == ["privkey.pem"]


@pytest.mark.parametrize(("args", "message"), [
    (["--cert-file", "../cert.pem"], "--cert-file '../cert.pem' must be a file name"),
    (["--key-file", "tls/key.pem"], "--key-file 'tls/key.pem' must be a file name"),
    (["--key-file", "k" * 256], "--key-file is longer than a file name may be"),
    (["--cert-file", "fullchain.pem"],
     "--cert-file and --fullchain-file both name 'fullchain.pem'"),
    (["--cert-file", "", "--chain-file", "", "--fullchain-file", "", "--key-file", ""],
     "Every file name is empty"),
    (["--format", "bundle", "--bundle-file", ".."], "--bundle-file '..' must be a file name"),
    (["--format", "bundle", "--key-file", "key.pem"],
     "--key-file does not apply to --format bundle"),
    (["--format", "env", "--secret-name", "x"], "--secret-name does not apply to --format env"),
    (["--format", "env", "--cert-type", "cert"], "--cert-type does not apply to --format env"),
    (["--format", "k8s-secret", "--env-style", "kontena"],
     "--env-style does not apply to --format k8s-secret"),
    (["--format", "k8s-secret", "--secret-name", "Web_TLS"],
     "--secret-name 'Web_TLS' is not a valid Kubernetes name"),
    (["--format", "k8s-secret", "--namespace", "a.b"],
     "--namespace 'a.b' is not a valid Kubernetes namespace"),
    (["--key-mode", "0644"], "--key-mode '0644' must be an octal mode the owner may read "
                             "and others may not, e.g. 0640 or 0440."),
    (["--key-mode", "rw-r-----"], "--key-mode 'rw-r-----' must be an octal mode"),
    (["--key-group", "no-such-group-here"], "--key-group 'no-such-group-here': no such group"),
    (["--format", "env", "--key-mode", "0640"], "--key-mode does not apply to --format env"),
    (["--format", "env"], "--dir does not apply to --format env, which prints to stdout"),
    (["--format", "k8s-secret"], "--dir does not apply to --format k8s-secret"),
])
def test_bad_options(vault: dict[str, Any], tmp_path: Path, args: list[str],
                     message: str) -> None:
    out = tmp_path / "out"
    proc = run("calm", "--dir", str(out), *args)
    assert message in one_line_error(proc)
    assert proc.stdout == "" and not out.exists()


# ---- the key's mode and group ----------------------------------------------------------


def _group() -> int:
    """A group other than ours, as an admin gives a key to (ssl-cert, for nginx)."""
    names = {g.gr_name: g.gr_gid for g in grp.getgrall() if g.gr_gid != os.getgid()}
    return next(names[n] for n in ("ssl-cert", "adm", "nogroup", *sorted(names)) if n in names)


def test_key_mode_and_group(vault: dict[str, Any], tmp_path: Path) -> None:
    """`--key-mode 0640 --key-group G`: apps that read the key as a group, as a pulled
    tree keeps the key's group; plain files, a bundle and --once's file set."""
    gid = _group()
    name = grp.getgrgid(gid).gr_name
    out = tmp_path / "pem"
    kvault("export", "calm", "--dir", str(out), "--key-mode", "0640", "--key-group", name)
    key, cert = (out / "privkey.pem").stat(), (out / "cert.pem").stat()
    assert (key.st_mode & 0o7777, key.st_gid) == (0o640, gid)
    assert (cert.st_mode & 0o7777, cert.st_gid) == (0o644, os.getgid())
    assert (out / "privkey.pem").read_text() == vault["privkey"]

    bundle = tmp_path / "bundle"
    kvault("export", "calm", "--dir", str(bundle), "--format", "bundle", "--key-mode", "0440",
           "--key-group", str(gid))
    st = (bundle / "calm.pem").stat()
    assert (st.st_mode & 0o7777, st.st_gid) == (0o440, gid)

    watched = tmp_path / "watched"
    kvault("export", "calm", "--dir", str(watched), "--once")
    assert (watched / "privkey.pem").stat().st_gid == os.getgid()
    # The same files with the key given to the group: a new set, the key's group set.
    proc = kvault("export", "calm", "--dir", str(watched), "--once", "--key-mode", "0640",
                  "--key-group", name)
    assert proc.stdout.startswith("wrote: calm version 1 to "), proc.stdout
    st = (watched / "privkey.pem").stat()
    assert (st.st_mode & 0o7777, st.st_gid) == (0o640, gid)
    again = kvault("export", "calm", "--dir", str(watched), "--once", "--key-mode", "0640",
                   "--key-group", name)
    assert again.stdout.startswith("current: calm version 1 in "), again.stdout


# ---- one version -----------------------------------------------------------------------


def test_one_version_everywhere_after_a_renewal_and_a_conf_push(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: Path) -> None:
    """The certificate's version (archive number: certbot's certN.pem) is what users see:
    `show` (which names Vault's KV version beside it), `list --json`, export's lines, env
    lines, the Secret's label and KVAULT_VERSION. A renewal makes it 2; a renewal conf
    pushed alone adds a KV version, not a certificate version."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    env = golden_env(bao, golden, prefix)
    certs = tmp_path / "certs"
    kvault("export", "due", "--dir", str(certs), "--once", env=env)
    root, args = fresh_dirs(tmp_path)
    assert "renewed: due (version 2" in kvault("renew", *args, env=env).stdout
    conf_path = root / "config" / "renewal" / "due.conf"
    conf = configobj.ConfigObj(str(conf_path), encoding="utf-8")
    conf["renewalparams"]["key_type"] = "rsa"  # a setting changed, pushed alone
    conf.write()
    assert "1 pushed" in kvault("push", *args, env=env).stdout
    kv = kv_version(bao, prefix, "certificates/due")
    assert kv >= 3 and record(bao, prefix, "certificates/due")["version"] == 2  # type: ignore

    shown = json.loads(kvault("show", "due", "--json", env=env).stdout)
    assert (shown["version"], shown["kv_version"]) == (2, kv)
    text = kvault("show", "due", env=env).stdout
    assert "version: 2 (the certificate's: certbot's cert2.pem)\n" in text
    assert f"kv_version: {kv} (Vault's version of the record" in text
    [row] = json.loads(kvault("list", "--json", env=env).stdout)
    assert row["version"] == 2
    log = tmp_path / "version"
    once = kvault("export", "due", "--dir", str(certs), "--once", "--exec",
                  f"sh -c 'echo $KVAULT_VERSION > {log}'", env=env)
    assert once.stdout == f"wrote: due version 2 to {certs}\n"
    assert log.read_text() == "2\n"
    lines = kvault("export", "due", "--format", "env", env=env).stdout
    assert "SSL_CERT_DUE_VERSION=2\n" in lines
    secret = yaml.safe_load(kvault("export", "due", "--format", "k8s-secret", env=env).stdout)
    assert secret["metadata"]["labels"]["certbot-kvault/version"] == "2"
