"""Bad input: one clear line, a non-zero exit, and nothing half-written or lost."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import hvac
import pytest
from helpers import kvault, layout_from_env, one_line_error, snapshot, token_with_policy
from servers import free_port, run_certbot

from certbot_kvault._internal.store.records import RecordError, validate_name


@pytest.fixture(scope="module")
def issued(tmp_path_factory, pebble):
    """Two lineages issued once for the module; tests work on copies."""
    root = tmp_path_factory.mktemp("issued")
    dirs = {k: str(root / k) for k in ("config", "work", "logs")}
    for name in ("one.example.com", "two.example.com"):
        run_certbot(["certonly", "--standalone", "--http-01-port", str(pebble.http_port),
                     "--agree-tos", "--register-unsafely-without-email", "-d", name],
                    config_dir=dirs["config"], work_dir=dirs["work"], logs_dir=dirs["logs"],
                    pebble=pebble)
    return Path(dirs["config"])


@pytest.fixture
def tree(issued, tmp_path):
    config = tmp_path / "config"
    shutil.copytree(issued, config, symlinks=True)
    # Renewal confs hold absolute paths: point the copy's at the copy.
    for conf in config.joinpath("renewal").glob("*.conf"):
        conf.write_text(conf.read_text().replace(str(issued), str(config)))
    return config


def test_unreachable_vault(vault_env, tree, monkeypatch):
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{free_port()}")
    err = one_line_error(kvault("push", "--config-dir", str(tree), check=False))
    assert "Cannot reach Vault at http://127.0.0.1:" in err and len(err.splitlines()) == 1
    err = one_line_error(kvault("pull", "--config-dir", str(tree / "new"), check=False))
    assert "Cannot reach Vault" in err
    assert not (tree / "new").exists()


def test_sealed_vault(vault_env, sealed_bao, tree, monkeypatch):
    monkeypatch.setenv("VAULT_ADDR", sealed_bao.addr)
    monkeypatch.setenv("VAULT_TOKEN", sealed_bao.root_token)
    err = one_line_error(kvault("push", "--config-dir", str(tree), check=False))
    assert "is sealed" in err and "unseal" in err and len(err.splitlines()) == 1
    assert sealed_bao.root_token not in err
    status = kvault("status", check=False)
    assert status.returncode == 1 and "sealed" in status.stderr


def test_token_without_permission(vault_env, bao, tree, monkeypatch):
    prefix = vault_env["KVAULT_PREFIX"]
    # May list and read, not write: push must say which capability on which path.
    policy = (f'path "secret/data/{prefix}/*" {{ capabilities = ["read"] }}\n'
              f'path "secret/metadata/{prefix}/*" {{ capabilities = ["list"] }}\n')
    token = token_with_policy(bao, prefix, policy)
    monkeypatch.setenv("VAULT_TOKEN", token)
    proc = kvault("push", "--config-dir", str(tree), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    # One line per record that could not be written: the account and both lineages.
    err = proc.stderr
    assert [line.split(":", 1)[0] for line in err.splitlines()] == ["error"] * 3, err
    assert (f"permission denied: needs create/update on secret/data/{prefix}/certificates/"
            "one.example.com") in err
    assert token not in err + proc.stdout
    assert layout_from_env().list_lineages() == []


def test_invalid_and_expired_token(vault_env, bao, tree, monkeypatch):
    monkeypatch.setenv("VAULT_TOKEN", "s.not-a-token")
    err = one_line_error(kvault("push", "--config-dir", str(tree), check=False))
    assert err == (f"error: Vault at {bao.addr} does not know the token in VAULT_TOKEN: it was "
                   "never issued, was revoked, or has expired (Vault keeps nothing of an "
                   "expired token, so it cannot say which); set VAULT_TOKEN to a valid token "
                   "(or unset it and run `vault login`).")
    assert "s.not-a-token" not in err
    # One that expired: the same answer from Vault, so the same words.
    r = bao.api("POST", "auth/token/create", {"ttl": "1s", "renewable": False})
    expired = r.json()["auth"]["client_token"]
    time.sleep(2)
    monkeypatch.setenv("VAULT_TOKEN", expired)
    assert one_line_error(kvault("push", "--config-dir", str(tree), check=False)) == err
    assert expired not in err
    monkeypatch.delenv("VAULT_TOKEN")
    err = one_line_error(kvault("status", check=False))
    assert "No Vault credentials" in err and "VAULT_TOKEN" in err
    # ~/.vault-token is read like the vault CLI does.
    Path.home().joinpath(".vault-token").write_text(bao.token + "\n")
    assert kvault("status").returncode == 0


def _push(tree) -> None:
    kvault("push", "--config-dir", str(tree))


def _raw_client(bao) -> hvac.Client:
    return hvac.Client(url=bao.addr, token=bao.token)


def _patch_record(bao, prefix, name, **fields) -> None:
    client = _raw_client(bao)
    path = f"{prefix}/certificates/{name}"
    data = client.secrets.kv.v2.read_secret_version(
        path, mount_point="secret", raise_on_deleted_version=False)["data"]["data"]
    data.update(fields)
    client.secrets.kv.v2.create_or_update_secret(path, secret=data, mount_point="secret")


def test_corrupt_pem_in_vault(vault_env, bao, tree, tmp_path):
    _push(tree)
    _patch_record(bao, vault_env["KVAULT_PREFIX"], "one.example.com",
                  cert="-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    target = tmp_path / "pulled"
    proc = kvault("pull", "--config-dir", str(target), check=False)
    assert proc.returncode == 1
    assert (f"secret/{vault_env['KVAULT_PREFIX']}/certificates/one.example.com: 'cert' is not "
            "a valid PEM certificate") in proc.stderr
    # The good lineage is pulled, the bad one leaves no trace on disk.
    assert (target / "renewal" / "two.example.com.conf").exists()
    assert not (target / "renewal" / "one.example.com.conf").exists()
    assert not (target / "archive" / "one.example.com").exists()


def test_list_flags_what_show_export_and_pull_refuse(vault_env, bao, tree, tmp_path):
    """A corrupt certificate and a key of another lineage: `list` no longer shows them as
    fine while show, export and pull refuse them."""
    _push(tree)
    prefix = vault_env["KVAULT_PREFIX"]
    where = f"secret/{prefix}/certificates"
    other = _raw_client(bao).secrets.kv.v2.read_secret_version(
        f"{prefix}/certificates/two.example.com", mount_point="secret",
        raise_on_deleted_version=False)["data"]["data"]
    _patch_record(bao, prefix, "one.example.com",
                  cert="-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    proc = kvault("list", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:]}
    assert rows["one.example.com"][4] == "CORRUPT" and rows["two.example.com"][4] != "CORRUPT"
    flagged = f"error: lineage one.example.com: {where}/one.example.com: 'cert' is not a " \
              "valid PEM certificate"
    assert proc.stderr.startswith(flagged) and len(proc.stderr.splitlines()) == 1, proc.stderr
    show = one_line_error(kvault("show", "one.example.com", check=False))
    assert show.startswith(f"error: {where}/one.example.com: 'cert' is not a valid PEM")
    # A key that does not match: found too, with --json.
    _patch_record(bao, prefix, "one.example.com", cert=other["cert"],
                  fullchain=other["cert"] + other["chain"])
    proc = kvault("list", "--json", check=False)
    assert proc.returncode == 1
    errors = {r["name"]: r["error"] for r in json.loads(proc.stdout)}
    assert errors == {"one.example.com": f"{where}/one.example.com: 'privkey' does not match "
                                         "the certificate's public key.",
                      "two.example.com": None}


def test_cert_with_unparsable_extension_in_vault(vault_env, bao, tree, tmp_path):
    """A certificate that loads but whose alt names cannot be parsed (certbot reads them
    on every renewal): refused at pull with one line, like a corrupt PEM."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtensionOID, NameOID

    _push(tree)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "one.example.com")])
    now = datetime.datetime.now(datetime.timezone.utc)
    bad = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
           .public_key(key.public_key()).serial_number(7).not_valid_before(now)
           .not_valid_after(now + datetime.timedelta(days=30))
           .add_extension(x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
                                                     b"\x30\x03\x82\x05x"), critical=False)
           .sign(key, hashes.SHA256()))
    cert = bad.public_bytes(serialization.Encoding.PEM).decode()
    chain = (tree / "live" / "one.example.com" / "chain.pem").read_text()
    _patch_record(bao, vault_env["KVAULT_PREFIX"], "one.example.com", cert=cert,
                  fullchain=cert + chain, privkey=key.private_bytes(
                      serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                      serialization.NoEncryption()).decode())
    target = tmp_path / "pulled"
    proc = kvault("pull", "--config-dir", str(target), check=False)
    assert proc.returncode == 1, proc.stderr
    assert ("certificates/one.example.com: 'cert' is not a valid PEM certificate (or its "
            "names or extensions cannot be parsed)") in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (target / "renewal" / "two.example.com.conf").exists()
    assert not (target / "archive" / "one.example.com").exists()


def test_key_not_matching_cert(vault_env, bao, tree, tmp_path):
    _push(tree)
    other_key = (tree / "live" / "two.example.com" / "privkey.pem").read_text()
    _patch_record(bao, vault_env["KVAULT_PREFIX"], "one.example.com", privkey=other_key)
    proc = kvault("pull", "--config-dir", str(tmp_path / "p"), "one.example.com", check=False)
    assert proc.returncode == 1 and "does not match the certificate" in proc.stderr
    assert "PRIVATE KEY" not in proc.stderr + proc.stdout
    assert not (tmp_path / "p" / "archive" / "one.example.com").exists()

    # The same mismatch on disk is refused by push, and Vault keeps what it had.
    layout = layout_from_env()
    before = layout.read_lineage_raw("two.example.com")
    key_one = (tree / "live" / "one.example.com" / "privkey.pem").resolve()
    key_two = (tree / "live" / "two.example.com" / "privkey.pem").resolve()
    key_two.write_text(key_one.read_text())
    (tree / "renewal" / "two.example.com.conf").write_text(
        (tree / "renewal" / "two.example.com.conf").read_text() + "\n# touched\n")
    proc = kvault("push", "--config-dir", str(tree), "two.example.com", check=False)
    assert proc.returncode == 1 and "does not match the certificate" in proc.stderr
    assert layout.read_lineage_raw("two.example.com").version == before.version


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "", "x\ny", "-rf"])
def test_hostile_lineage_names_refused(name):
    with pytest.raises(RecordError):
        validate_name(name)


def test_hostile_names_on_the_cli(vault_env, tree):
    for cmd in (("pull", "../x"), ("push", "../x"), ("show", "../x"), ("rm", "../x")):
        args = [*cmd, "--config-dir", str(tree)] if cmd[0] in ("pull", "push") else list(cmd)
        err = one_line_error(kvault(*args, check=False))
        assert "Invalid lineage name '../x'" in err


def test_hostile_values_inside_records(vault_env, bao, tree, tmp_path):
    """Traversal through values: a renewal conf's archive_dir, an account's server URL."""
    _push(tree)
    prefix = vault_env["KVAULT_PREFIX"]
    layout = layout_from_env()
    record = layout.read_lineage_raw("one.example.com")
    evil_dir = tmp_path / "evil"
    renewal = record.data["renewal"].replace("archive_dir = archive/one.example.com",
                                             f"archive_dir = {evil_dir}")
    assert renewal != record.data["renewal"]
    _patch_record(bao, prefix, "one.example.com", renewal=renewal)
    target = tmp_path / "pulled"
    kvault("pull", "--config-dir", str(target), "one.example.com")
    assert not evil_dir.exists()
    conf = (target / "renewal" / "one.example.com.conf").read_text()
    assert f"archive_dir = {target / 'archive' / 'one.example.com'}" in conf

    # An account whose server URL climbs out of accounts/.
    [(server_path, account_id)] = list(layout.list_accounts())
    client = _raw_client(bao)
    path = f"{prefix}/accounts/{server_path}/{account_id}"
    data = client.secrets.kv.v2.read_secret_version(
        path, mount_point="secret", raise_on_deleted_version=False)["data"]["data"]
    data["server"] = "https://../../../etc/dir"
    client.secrets.kv.v2.create_or_update_secret(path, secret=data, mount_point="secret")
    proc = kvault("pull", "--config-dir", str(tmp_path / "p2"), check=False)
    assert proc.returncode == 1 and "Invalid ACME server path" in proc.stderr
    assert not (tmp_path / "etc").exists()


def test_missing_renewal_conf(vault_env, tree):
    (tree / "renewal" / "one.example.com.conf").unlink()
    proc = kvault("push", "--config-dir", str(tree), "one.example.com", check=False)
    assert proc.returncode == 1
    assert "No renewal conf for lineage one.example.com" in proc.stderr
    assert layout_from_env().list_lineages() == []


def test_pull_never_rewinds_an_unpushed_renewal(vault_env, tree, pebble):
    _push(tree)
    run_certbot(["renew", "--cert-name", "one.example.com", "--force-renewal"],
                config_dir=str(tree), work_dir=str(tree.parent / "w"),
                logs_dir=str(tree.parent / "l"), pebble=pebble)
    before = snapshot(tree)
    proc = kvault("pull", "--config-dir", str(tree), "one.example.com", check=False)
    assert proc.returncode == 1
    assert "is at version 2 here but 1 in Vault: run `certbot-kvault push" in proc.stderr
    after = snapshot(tree)
    # The hook is reinstalled; the sync manifest forgets the lineage, for push to
    # compare it with Vault (test_synced.py). The lineage itself is untouched.
    kept = ("00-update-vault", "kvault/synced.json")
    assert {k: v for k, v in after.items() if not any(x in k for x in kept)} == \
        {k: v for k, v in before.items() if not any(x in k for x in kept)}


def test_push_refuses_to_overwrite_newer_vault(vault_env, tree, tmp_path, pebble):
    _push(tree)
    other = tmp_path / "other"
    shutil.copytree(tree, other, symlinks=True)
    for conf in other.joinpath("renewal").glob("*.conf"):
        conf.write_text(conf.read_text().replace(str(tree), str(other)))
    run_certbot(["renew", "--cert-name", "one.example.com", "--force-renewal"],
                config_dir=str(other), work_dir=str(tmp_path / "w"),
                logs_dir=str(tmp_path / "l"), pebble=pebble)
    kvault("push", "--config-dir", str(other), "one.example.com")
    # A push sends what changed here since its last sync: this machine changes the
    # lineage too (a lineage unchanged here is not even read, see test_synced.py).
    conf = tree / "renewal" / "one.example.com.conf"
    conf.write_text(conf.read_text() + "\n# changed here\n")
    proc = kvault("push", "--config-dir", str(tree), "--json", check=False)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert [f["item"] for f in report["failed"]] == ["lineage one.example.com"]
    assert "Vault holds version 2 of one.example.com" in report["failed"][0]["error"]
    assert layout_from_env().load_lineage("one.example.com").version == 2
