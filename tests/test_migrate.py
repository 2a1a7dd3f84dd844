"""`certbot-kvault import --from`: other tools' layouts in Vault become ours, theirs untouched.

The ePages layout is written with the real `bao` CLI exactly as the ePages scripts
write it (`bao kv put PATH @FILE.json` for the account's JSON files, `cert=@...` for
the PEMs), from a real Pebble account and certificate; the certbot-vault-installer
layout as that plugin writes it (one KV v2 secret per name: `crt`, `privkey`,
`chain`). Then our records are pulled and renewed against Pebble.

Also here: pull/push print one summary line (per item only with -v), and a progress
bar on a terminal.
"""
from __future__ import annotations

import json
import os
import pty
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from helpers import (
    KVAULT,
    fresh_dirs,
    issue_lineage,
    kv_version,
    kvault,
    one_line_error,
    pdns_entry,
    record,
    resolver_opt,
    scrubbed_env,
    walk,
)
from servers import Bao, Pebble, PowerDNS, run_certbot

from certbot_kvault._internal.store.records import (
    RecordError,
    account_id_for_key,
    account_key_json,
    server_path_for_url,
)


class Issued:
    """A real Pebble account and certificates, as certbot left them on disk."""

    def __init__(self, root: Path, pebble: Pebble) -> None:
        self.config = root / "config"
        accounts = list((self.config / "accounts").glob("*/*/*"))
        assert len(accounts) == 1, accounts
        self.account_dir = accounts[0]
        self.account_id = self.account_dir.name
        self.pebble = pebble

    def live(self, name: str) -> Path:
        return self.config / "live" / name


@pytest.fixture(scope="module")
def issued(pebble: Pebble, tmp_path_factory: pytest.TempPathFactory) -> Issued:
    root = tmp_path_factory.mktemp("other-tool")
    env = scrubbed_env()
    issue_lineage(pebble, root, "mig.example.com", "mig.example.com", env)
    issue_lineage(pebble, root, "two", "two.example.com", env)
    return Issued(root, pebble)


def bao_cli(bao: Bao, *args: str) -> None:
    proc = subprocess.run([bao.bin, *args], env=bao.cli_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


def epages_layout(bao: Bao, issued: Issued, base: str, token: str,
                  certificates: dict[str, Path]) -> None:
    """What the ePages scripts write (their README's commands, with `bao` for `vault`)."""
    bao_cli(bao, "kv", "put", f"{base}/lets-encrypt/account/extra_details",
            f"account_id={issued.account_id}")
    for i in ("meta", "private_key", "regr"):
        bao_cli(bao, "kv", "put", f"{base}/lets-encrypt/account/{i}",
                f"@{issued.account_dir / f'{i}.json'}")
    bao_cli(bao, "kv", "put", f"{base}/dnsimple", f"token={token}")
    for domain, live in certificates.items():
        bao_cli(bao, "kv", "put", f"{base}/lets-encrypt/certificates/{domain}",
                f"cert=@{live / 'cert.pem'}", f"chain=@{live / 'chain.pem'}",
                f"privkey=@{live / 'privkey.pem'}")


def theirs(bao: Bao, base: str) -> dict[str, Any]:
    """Every secret below ``base`` (secret/ mount): data and KV version."""
    return {p: (record(bao, base, p), kv_version(bao, base, p)) for p in walk(bao, base)}


def env_for(bao: Bao, prefix: str, pebble: Pebble, **extra: str) -> dict[str, str]:
    return scrubbed_env(VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.token, KVAULT_PREFIX=prefix,
                        REQUESTS_CA_BUNDLE=pebble.ca_bundle, **extra)


@pytest.fixture
def names() -> Iterator[tuple[str, str]]:
    """(a unique base for their layout, a unique prefix for ours)."""
    tag = secrets.token_hex(3)
    yield f"secret/mig-{tag}", f"mig-ours-{tag}"


def test_epages_imports_pulls_and_renews(bao: Bao, issued: Issued, pebble: Pebble,
                                         pdns: PowerDNS, tldextract_offline: Path,
                                         names: tuple[str, str], tmp_path: Path) -> None:
    base, prefix = names
    token = "dnsimple-" + secrets.token_hex(8)
    epages_layout(bao, issued, base, token, {"mig.example.com": issued.live("mig.example.com")})
    before = theirs(bao, base.split("/", 1)[1])
    env = env_for(bao, prefix, pebble)
    kvault("dns", "add", "pdns", "--provider", "powerdns",
           *[f"--option={k}={v}" for k, v in pdns_entry(pdns).items() if k != "provider"],
           env=env)

    proc = kvault("import", "--from", "epages", "--path", f"{base}/lets-encrypt",
                  "--server", pebble.directory_url, "--dns", "pdns", env=env)
    assert "3 imported, 0 unchanged, 0 failed" in proc.stdout, proc.stdout + proc.stderr
    assert token not in proc.stdout + proc.stderr
    assert "warning" not in proc.stderr, proc.stderr

    key_json = (issued.account_dir / "private_key.json").read_text()
    account_id = account_id_for_key(key_json)
    assert account_id == issued.account_id  # certbot's own id: the MD5 of the key
    server_path = server_path_for_url(pebble.directory_url)
    account = record(bao, prefix, f"accounts/{server_path}/{account_id}")
    assert account is not None and account["server"] == pebble.directory_url
    assert json.loads(account["private_key"]) == json.loads(key_json)
    assert json.loads(account["regr"]) == json.loads(
        (issued.account_dir / "regr.json").read_text())
    assert record(bao, prefix, "dns/dnsimple") == {"provider": "dnsimple", "auth_token": token}
    lineage = record(bao, prefix, "certificates/mig.example.com")
    assert lineage is not None and lineage["version"] == 1
    live = issued.live("mig.example.com")
    assert lineage["fullchain"] == (live / "fullchain.pem").read_text()
    assert lineage["privkey"] == (live / "privkey.pem").read_text()
    for line in ("authenticator = kvault", "kvault_dns = pdns", f"account = {account_id}",
                 f"server = {pebble.directory_url}", "archive_dir = archive/mig.example.com"):
        assert line in lineage["renewal"], lineage["renewal"]

    # Again: nothing new, nothing overwritten.
    again = kvault("import", "--from", "epages", "--path", f"{base}/lets-encrypt",
                   "--server", pebble.directory_url, "--dns", "pdns", env=env)
    assert "0 imported, 3 unchanged, 0 failed" in again.stdout, again.stdout

    root, args = fresh_dirs(tmp_path)
    kvault("pull", *args, env=env)
    certs = run_certbot(["certificates"], config_dir=root / "config", work_dir=root / "work",
                        logs_dir=root / "logs", pebble=pebble)
    assert "Certificate Name: mig.example.com" in certs.stdout, certs.stdout
    assert "INVALID" not in certs.stdout

    renew_env = {**env, "PATH": f"{Path(KVAULT).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = kvault("renew", *fresh_dirs(tmp_path, "renewer")[1], "--",
                  "--force-renewal", "--kvault-dns-resolver", resolver_opt(pdns), env=renew_env)
    assert "renewed: mig.example.com" in proc.stdout, proc.stdout + proc.stderr
    renewed = record(bao, prefix, "certificates/mig.example.com")
    assert renewed is not None and renewed["version"] == 2
    assert renewed["serial"] != lineage["serial"]
    assert theirs(bao, base.split("/", 1)[1]) == before  # theirs: untouched


def test_epages_on_kv1(bao: Bao, kv1_mount: str, issued: Issued, pebble: Pebble,
                      names: tuple[str, str]) -> None:
    """The scripts ran against KV v1 mounts too (their `jq .data` variant)."""
    base = f"{kv1_mount}/{names[0].split('/', 1)[1]}"
    prefix = names[1]
    live = issued.live("mig.example.com")
    epages_layout(bao, issued, base, "tok", {"mig.example.com": live})
    env = env_for(bao, prefix, pebble)
    proc = kvault("import", "--from", "epages", "--path", f"{base}/lets-encrypt", env=env)
    assert "3 imported, 0 unchanged, 0 failed" in proc.stdout, proc.stdout + proc.stderr
    lineage = record(bao, prefix, "certificates/mig.example.com")
    assert lineage is not None and lineage["fullchain"] == (live / "fullchain.pem").read_text()
    assert record(bao, prefix, "dns/dnsimple") == {"provider": "dnsimple", "auth_token": "tok"}
    # No --server: Let's Encrypt's, where this (Pebble) account does not live.
    assert "warning: the account's URI (https://127.0.0.1:" in proc.stderr, proc.stderr


def test_installer_layout_one_lineage_per_certificate(bao: Bao, issued: Issued,
                                                      pebble: Pebble, tmp_path: Path) -> None:
    mount = f"kv-{secrets.token_hex(3)}"
    r = bao.api("POST", f"sys/mounts/{mount}", json={"type": "kv", "options": {"version": "2"}})
    assert r.status_code == 204, r.text
    prefix = f"mig-inst-{secrets.token_hex(3)}"
    live = issued.live("two")
    # Without --vault-single the plugin stores the certificate once per name.
    for name in ("two.example.com", "www.two.example.com"):
        bao_cli(bao, "kv", "put", f"{mount}/letsencrypt/{name}", f"crt=@{live / 'cert.pem'}",
                f"privkey=@{live / 'privkey.pem'}", f"chain=@{live / 'chain.pem'}")
    env = env_for(bao, prefix, pebble)

    proc = kvault("import", "--from", "certbot-vault-installer", "--path",
                  f"{mount}/letsencrypt", "--server", pebble.directory_url, env=env)
    assert "1 imported, 0 unchanged, 0 failed" in proc.stdout, proc.stdout + proc.stderr
    assert "no ACME account of ours" in proc.stderr and "standalone" in proc.stderr
    assert list(walk(bao, f"{prefix}/certificates")) == ["two.example.com"]
    lineage = record(bao, prefix, "certificates/two.example.com")
    assert lineage is not None
    assert lineage["cert"] == (live / "cert.pem").read_text()
    assert lineage["fullchain"] == (live / "fullchain.pem").read_text()
    assert "authenticator = standalone" in lineage["renewal"]
    assert "account =" not in lineage["renewal"]

    root, args = fresh_dirs(tmp_path)
    kvault("pull", *args, env=env)
    certs = run_certbot(["certificates"], config_dir=root / "config", work_dir=root / "work",
                        logs_dir=root / "logs", pebble=pebble)
    assert "Certificate Name: two.example.com" in certs.stdout, certs.stdout
    assert "(VALID:" in certs.stdout and "INVALID" not in certs.stdout, certs.stdout

    # The old tool put another certificate there: ours is kept until --force, which
    # makes it the next version and keeps ours in the archive.
    other = issued.live("mig.example.com")
    for name in ("two.example.com", "www.two.example.com"):
        bao_cli(bao, "kv", "put", f"{mount}/letsencrypt/{name}", f"crt=@{other / 'cert.pem'}",
                f"privkey=@{other / 'privkey.pem'}", f"chain=@{other / 'chain.pem'}")
    args = ["import", "--from", "certbot-vault-installer", "--path", f"{mount}/letsencrypt",
            "--server", pebble.directory_url]
    refused = kvault(*args, env=env, check=False)
    assert refused.returncode == 1
    assert [ln for ln in refused.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: lineage two.example.com: secret/{prefix}/certificates/two.example.com exists "
        "with other content; --force replaces it (a lineage as its next version)."]
    assert record(bao, prefix, "certificates/two.example.com") == lineage
    kvault(*args, "--force", env=env)
    forced = record(bao, prefix, "certificates/two.example.com")
    assert forced is not None and forced["version"] == 2
    assert forced["cert"] == (other / "cert.pem").read_text()
    assert forced["archive"]["1"]["cert"] == lineage["cert"]


def test_dry_run_writes_nothing_and_bad_records_fail_alone(
        bao: Bao, issued: Issued, pebble: Pebble, names: tuple[str, str],
        tmp_path: Path) -> None:
    base, prefix = names
    token = "dnsimple-" + secrets.token_hex(8)
    good, other = issued.live("mig.example.com"), issued.live("two")
    bad = tmp_path / "bad"
    for sub, files in {
        "no-chain": {"cert": good / "cert.pem", "privkey": good / "privkey.pem"},
        "corrupt": {"cert": "-----BEGIN CERTIFICATE-----\nnot a cert\n", "chain": good /
                    "chain.pem", "privkey": good / "privkey.pem"},
        "mismatch": {"cert": good / "cert.pem", "chain": good / "chain.pem",
                     "privkey": other / "privkey.pem"},
    }.items():
        (bad / sub).mkdir(parents=True)
        for kind in ("cert", "chain", "privkey"):
            src = files.get(kind)
            if src is not None:
                text = src if isinstance(src, str) else src.read_text()
                (bad / sub / f"{kind}.pem").write_text(text)
    epages_layout(bao, issued, base, token, {"mig.example.com": good})
    for sub in ("corrupt", "mismatch"):
        bao_cli(bao, "kv", "put", f"{base}/lets-encrypt/certificates/{sub}.example.com",
                *[f"{k}=@{bad / sub / f'{k}.pem'}" for k in ("cert", "chain", "privkey")])
    bao_cli(bao, "kv", "put", f"{base}/lets-encrypt/certificates/no-chain.example.com",
            f"cert=@{bad / 'no-chain' / 'cert.pem'}",
            f"privkey=@{bad / 'no-chain' / 'privkey.pem'}")
    env = env_for(bao, prefix, pebble)
    args = ["import", "--from", "epages", "--path", f"{base}/lets-encrypt", "--server",
            pebble.directory_url]

    dry = kvault(*args, "--dry-run", env=env, check=False)
    assert dry.returncode == 1
    assert list(walk(bao, prefix)) == []
    out = dry.stdout + dry.stderr
    assert "PRIVATE KEY" not in out and token not in out
    assert f"would write secret/{prefix}/certificates/mig.example.com" in dry.stdout
    assert f"would write secret/{prefix}/dns/dnsimple" in dry.stdout
    assert "3 to write (dry run), 0 unchanged, 3 failed" in dry.stdout, dry.stdout

    proc = kvault(*args, env=env, check=False)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 3, proc.stderr
    where = f"{base}/lets-encrypt/certificates"
    assert any(f"{where}/no-chain.example.com is missing chain" in e for e in errors), errors
    assert any(f"{where}/corrupt.example.com: 'cert' is not a valid PEM" in e
               for e in errors), errors
    assert any(f"{where}/mismatch.example.com: 'privkey' does not match" in e
               for e in errors), errors
    assert "Traceback" not in proc.stderr
    assert "3 imported, 0 unchanged, 3 failed" in proc.stdout
    assert sorted(walk(bao, f"{prefix}/certificates")) == ["mig.example.com"]


def on_terminal(args: list[str], env: dict[str, str]) -> tuple[str, str]:
    """Run certbot-kvault with stderr on a pseudo-terminal: (stdout, what the terminal got)."""
    master, slave = pty.openpty()
    child = subprocess.Popen([KVAULT, *args], env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    stdout = child.communicate(timeout=60)[0].decode()
    assert child.returncode == 0, seen
    return stdout, seen.decode(errors="replace")


@pytest.fixture
def three(bao: Bao, issued: Issued, pebble: Pebble, names: tuple[str, str]) -> dict[str, str]:
    """Our prefix holding one account and three lineages (imported); its environment."""
    base, prefix = names
    epages_layout(bao, issued, base, "tok", {f"n{i}.example.com": issued.live("mig.example.com")
                                             for i in range(3)})
    env = env_for(bao, prefix, pebble)
    kvault("import", "--from", "epages", "--path", f"{base}/lets-encrypt", env=env)
    return env


def test_pull_and_push_print_one_summary_line(three: dict[str, str], tmp_path: Path) -> None:
    _, args = fresh_dirs(tmp_path)
    quiet = kvault("pull", *args, env=three)
    assert quiet.stdout.splitlines() == ["4 pulled, 0 unchanged, 0 failed"], quiet.stdout
    push = kvault("push", *args, env=three)
    assert push.stdout.splitlines() == ["0 pushed, 4 unchanged, 0 failed"], push.stdout
    _, args = fresh_dirs(tmp_path, "verbose")
    loud = kvault("pull", "-v", *args, env=three)
    assert "pulled: lineage n1.example.com" in loud.stdout, loud.stdout


def test_progress_bar_on_a_terminal(three: dict[str, str], tmp_path: Path) -> None:
    _, args = fresh_dirs(tmp_path)
    stdout, terminal = on_terminal(["pull", *args], three)
    assert "4 pulled, 0 unchanged, 0 failed" in stdout
    assert "pull" in terminal and "100%" in terminal, terminal
    stdout, terminal = on_terminal(["list"], three)
    assert "n2.example.com" in stdout
    assert "list" in terminal and "100%" in terminal, terminal
    # Not on a terminal (and never in --json): no bar.
    assert "100%" not in kvault("pull", *args, env=three).stderr


def test_unusable_path_is_one_line(bao: Bao, pebble: Pebble, names: tuple[str, str]) -> None:
    base, prefix = names
    env = env_for(bao, prefix, pebble)
    proc = kvault("import", "--from", "epages", "--path", f"{base}/nothing", env=env,
                  check=False)
    assert f"Nothing of the epages layout at {base}/nothing" in one_line_error(proc)
    proc = kvault("import", "--from", "certbot-vault-installer", "--path", "no-such-mount/le",
                  env=env, check=False)
    assert "there is no KV mount 'no-such-mount'" in one_line_error(proc)


def test_account_key_as_pem_becomes_certbots_jwk(issued: Issued) -> None:
    key_json = (issued.account_dir / "private_key.json").read_text()
    from josepy.jwk import JWK

    pem = JWK.json_loads(key_json).key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    converted = account_key_json({"private_key": pem}, "secret/x/account/private_key")
    assert account_id_for_key(converted) == issued.account_id
    assert account_key_json(json.loads(key_json), "w") == json.dumps(json.loads(key_json))
    with pytest.raises(RecordError, match="^secret/x/account/private_key: neither a JWK"):
        account_key_json({"private_key": "garbage"}, "secret/x/account/private_key")


def test_epages_account_identical_to_ours_is_unchanged(
        bao: Bao, issued: Issued, pebble: Pebble, names: tuple[str, str],
        tmp_path: Path) -> None:
    """Our account was pushed from certbot's files; ePages' copy of it was put with
    `kv put @meta.json`, so Vault gives its JSON back with sorted keys: the same account."""
    base, prefix = names
    env = env_for(bao, prefix, pebble)
    ours = tmp_path / "ours"
    (ours / "config").mkdir(parents=True)
    shutil.copytree(issued.config / "accounts", ours / "config" / "accounts", symlinks=True)
    kvault("push", "--config-dir", str(ours / "config"), env=env)
    assert [p.rsplit("/", 1)[1] for p in walk(bao, f"{prefix}/accounts")] == [issued.account_id]
    epages_layout(bao, issued, base, "dnsimple-token", {})
    args = ["import", "--from", "epages", "--path", f"{base}/lets-encrypt", "--server",
            pebble.directory_url]
    proc = kvault(*args, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "1 imported, 1 unchanged, 0 failed", proc.stdout
    # Another account's meta there: refused, without a word about lineages.
    meta = json.loads((issued.account_dir / "meta.json").read_text())
    bao_cli(bao, "kv", "put", f"{base}/lets-encrypt/account/meta",
            *[f"{k}={v}" for k, v in {**meta, "creation_host": "elsewhere"}.items()
              if v is not None])
    refused = kvault(*args, env=env, check=False)
    where = f"secret/{prefix}/accounts/{server_path_for_url(pebble.directory_url)}/" \
            f"{issued.account_id}"
    assert [ln for ln in refused.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: account {issued.account_id}: {where} exists with other content; --force "
        "replaces it."], refused.stderr
