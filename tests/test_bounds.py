"""Every duration, time and size that comes from Vault is bounded, and the renewal is
decided from the certificate itself: what a Vault writer (every renewer, every CI job)
can no longer do to the fleet. Real OpenBao and Pebble; records copied from the
session's golden lineages or made with a throw-away CA.

- waits in a pulled renewal conf capped (600 s), an RSA key size out of certbot's
  range dropped;
- a crafted timestamp (``9999-12-31T23:59:59-23:59``: it parses, and lies in the year
  10000) in the renewal memory: ``list``, ``show``, ``renew`` exit normally, one
  warning each;
- a far-future ``next_attempt`` or ARI time: the lineage renews by the lifetime rule;
- a certificate replaced by hand, its record's fields left as they were: decided from
  the certificate, named in a warning, renewed;
- the storm guard: ``renew_before_expiry = 100 years`` renews once, then not again;
- a far-future lock is stale: taken over, said in one line;
- an 8192-bit key in ten archive versions: ``show`` and ``pull`` in seconds; keys
  certbot never makes are refused in one line.
"""
from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import configobj
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from helpers import (
    Golden,
    ThrowawayCA,
    fresh_dirs,
    golden_env,
    kv_version,
    kvault,
    layout_from_env,
    orders,
    record,
    renewal_conf,
    seed,
    walk,
)
from servers import Bao

from certbot_kvault._internal.store.limits import MAX_ARCHIVE_VERSIONS
from certbot_kvault._internal.store.records import (
    LineageRecord,
    PemSet,
    RecordError,
    server_path_for_url,
)
from certbot_kvault._internal.store.timefmt import format_time
from certbot_kvault._internal.tree import trust
from certbot_kvault._internal.tree.portable import screened_conf
from certbot_kvault._internal.vault.client import KVEntry

DAY = 86400.0
CRAFTED = "9999-12-31T23:59:59-23:59"


def _write(bao: Bao, prefix: str, path: str, data: dict[str, Any]) -> None:
    r = bao.api("POST", f"secret/data/{prefix}/{path}", json={"data": data})
    assert r.status_code == 200, r.text


def _warnings(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("warning:")]


def _conf_with(conf_text: str, top: dict[str, str] | None = None, **params: str) -> str:
    conf = configobj.ConfigObj(conf_text.splitlines())
    for key, value in (top or {}).items():
        conf[key] = value
        conf.scalars.remove(key)          # top-level keys precede the sections
        conf.scalars.insert(0, key)
    conf["renewalparams"].update(params)
    return "\n".join(conf.write()) + "\n"


def _pebble_account(bao: Bao, golden: Golden) -> str:
    """The golden account registered at the session Pebble."""
    server = server_path_for_url(golden.pebble.directory_url)
    ids = [p.rsplit("/", 1)[1] for p in walk(bao, f"{golden.prefix}/accounts")
           if p.startswith(server + "/")]
    assert len(ids) == 1, ids
    return ids[0]


def _synthetic(ca: ThrowawayCA, golden: Golden, account: str, name: str,
               lifetime_days: float, age_days: float) -> LineageRecord:
    """A lineage at the session Pebble (standalone http-01), its certificate by ``ca``."""
    conf = renewal_conf(name, account=account, server=golden.pebble.directory_url,
                        http_port=golden.pebble.http_port)
    not_before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
        days=age_days)
    return ca.lineage(name, f"{name}.example.com", not_before,
                      datetime.timedelta(days=lifetime_days), conf)


# ---- waits and sizes in a renewal conf from Vault ---------------------------------------


def test_waits_from_vault_are_capped_and_a_wild_key_size_dropped(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due", "calm"])
    for name, size in (("due", "65536"), ("calm", "4096")):
        data = record(bao, prefix, f"certificates/{name}")
        assert data is not None
        data["renewal"] = _conf_with(data["renewal"], kvault_propagation_seconds="99999999",
                                     kvault_propagation_timeout="99999999",
                                     dns_cloudflare_propagation_seconds="86400",
                                     rsa_key_size=size)
        _write(bao, prefix, f"certificates/{name}", data)
    root, args = fresh_dirs(tmp_path)
    # This machine's own conf of calm waits 900 s: its own setting may go above the cap.
    own = root / "config" / "renewal" / "calm.conf"
    own.parent.mkdir(parents=True)
    own.write_text("version = 5.8.0\n[renewalparams]\nkvault_propagation_seconds = 900\n")

    proc = kvault("pull", *args, env=golden_env(bao, golden, prefix))

    params = {n: configobj.ConfigObj(str(root / "config" / "renewal" / f"{n}.conf"))[
        "renewalparams"] for n in ("due", "calm")}
    assert params["due"]["kvault_propagation_seconds"] == "600"
    assert params["due"]["kvault_propagation_timeout"] == "600"
    assert params["due"]["dns_cloudflare_propagation_seconds"] == "600"
    assert "rsa_key_size" not in params["due"]           # 65536 bits: certbot never makes it
    assert params["calm"]["kvault_propagation_seconds"] == "900"
    assert params["calm"]["kvault_propagation_timeout"] == "600"
    assert params["calm"]["rsa_key_size"] == "4096"
    lines = _warnings(proc.stderr)
    assert len(lines) == 2, proc.stderr                  # one per lineage
    due_line = next(ln for ln in lines if ln.startswith("warning: lineage due: "))
    assert "rsa_key_size (invalid)" in due_line
    assert "kvault_propagation_seconds (capped at 600 s)" in due_line
    assert "dns_cloudflare_propagation_seconds (capped at 600 s)" in due_line


def test_wait_and_key_size_classes() -> None:
    assert trust.classify("kvault_propagation_seconds", "30") is None
    assert trust.classify("dns_ovh_propagation_seconds", "-5") == trust.INVALID
    assert trust.classify("kvault_propagation_timeout", "1e9") == trust.INVALID
    assert trust.classify("rsa_key_size", "8192") is None
    assert trust.classify("rsa_key_size", "1024") == trust.INVALID
    assert trust.classify("rsa_key_size", "8193") == trust.INVALID
    conf = renewal_conf("x", extra="kvault_propagation_seconds = 5000\n")
    text, ignored = screened_conf("x", conf, archive_dir="/a", live_dir="/l",
                                  dirs={}, local={"kvault_propagation_seconds": "7000"},
                                  trusted=False)
    assert b"kvault_propagation_seconds = 5000" in text and not ignored
    text, ignored = screened_conf("x", conf, archive_dir="/a", live_dir="/l",
                                  dirs={}, local={}, trusted=False)
    assert b"kvault_propagation_seconds = 600" in text
    assert ignored == ["kvault_propagation_seconds (capped at 600 s)"]


# ---- times in the renewal memory and in the record ----------------------------------------


def test_crafted_timestamp_is_one_warning_in_list_show_and_renew(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    _write(bao, prefix, "state/due", {"consecutive_failures": 2,
                                      "last_attempt": format_time(time.time() - 60),
                                      "next_attempt": CRAFTED})
    env = golden_env(bao, golden, prefix)

    for argv in (["list"], ["list", "--json"], ["show", "due"]):
        proc = kvault(*argv, env=env)
        assert "Traceback" not in proc.stderr
        lines = _warnings(proc.stderr)
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("warning: lineage due: its renewal memory is ignored: ")
        assert f"secret/{prefix}/state/due" in lines[0] and "next_attempt" in lines[0]
    row = json.loads(kvault("list", "--json", env=env).stdout)[0]
    assert row["due"] and not row["in_backoff"]

    _, args = fresh_dirs(tmp_path)
    proc = kvault("renew", *args, env=env)
    assert "renewed: due" in proc.stdout, proc.stdout + proc.stderr
    assert len(_warnings(proc.stderr)) == 1, proc.stderr
    # The attempt wrote a sound memory over the crafted one.
    state = record(bao, prefix, "state/due")
    assert state is not None and "next_attempt" not in state and state["last_success"]
    assert not _warnings(kvault("list", env=env).stderr)


def test_far_future_backoff_and_ari_times_do_not_stop_a_due_lineage(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: Path) -> None:
    """Both past certbot's lifetime point (2/3 of 90 days); a Vault writer planted a
    backoff 30 days after the last attempt (the cap is 1 day) in one's memory and an ARI
    renewal time in 2999 (with a sound next check) in the other's."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, [])
    account = _pebble_account(bao, golden)
    ca = ThrowawayCA()
    layout = layout_from_env()
    backoff = _synthetic(ca, golden, account, "backoff", 90, 61)
    ari = _synthetic(ca, golden, account, "ari", 90, 61)
    for lineage in (backoff, ari):
        layout.save_lineage(lineage)
    now = time.time()
    _write(bao, prefix, "state/backoff", {"consecutive_failures": 9,
                                          "last_attempt": format_time(now - 60),
                                          "next_attempt": format_time(now + 30 * DAY)})
    assert ari.info is not None
    _write(bao, prefix, "state/ari", {"serial": ari.info.serial,
                                      "ari_window_start": "2999-01-01T00:00:00Z",
                                      "ari_window_end": "2999-01-02T00:00:00Z",
                                      "ari_renewal_time": "2999-01-01T12:00:00Z",
                                      "ari_next_check": format_time(now + 3600)})
    env = golden_env(bao, golden, prefix)
    rows = {r["name"]: r for r in json.loads(kvault("list", "--json", env=env).stdout)}
    assert rows["ari"]["due"] and rows["ari"]["renewal_rule"] == "ari"
    assert rows["backoff"]["due"] and not rows["backoff"]["in_backoff"]

    _, args = fresh_dirs(tmp_path)
    proc = kvault("renew", *args, env=env)
    assert "renewed: ari" in proc.stdout and "renewed: backoff" in proc.stdout, \
        proc.stdout + proc.stderr
    lines = _warnings(proc.stderr)
    assert len(lines) == 1 and "lineage backoff: its renewal memory is ignored" in lines[0] \
        and "backoff cap" in lines[0], proc.stderr


def test_hand_replaced_certificate_with_a_day_left_is_due_and_renews(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: Path) -> None:
    """`kv patch` of cert, chain, fullchain, privkey with a certificate that has one day
    left; the record's not_before, not_after and serial fields still say five years."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    data = record(bao, prefix, "certificates/calm")
    assert data is not None
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=89)
    pems = ThrowawayCA().pems(golden.domains["calm"], start, datetime.timedelta(days=90))
    old_not_after = data["not_after"]
    _write(bao, prefix, "certificates/calm", {**data, **pems.as_dict()})
    env = golden_env(bao, golden, prefix)

    shown = kvault("show", "calm", "--json", env=env)
    out = json.loads(shown.stdout)
    assert out["not_after"] != old_not_after and out["due"], out
    lines = _warnings(shown.stderr)
    assert len(lines) == 1 and lines[0].startswith(
        "warning: lineage calm: the record's not_before, not_after, serial disagree with its "
        "certificate"), shown.stderr
    row = json.loads(kvault("list", "--json", env=env).stdout)[0]
    assert row["not_after"] == out["not_after"] and row["due"]

    version = kv_version(bao, prefix, "certificates/calm")
    _, args = fresh_dirs(tmp_path)
    proc = kvault("renew", *args, env=env)
    assert "renewed: calm" in proc.stdout, proc.stdout + proc.stderr
    assert len(_warnings(proc.stderr)) == 1, proc.stderr
    assert kv_version(bao, prefix, "certificates/calm") == version + 1
    fresh = record(bao, prefix, "certificates/calm")
    assert fresh is not None and fresh["not_after"] > out["not_after"]


def test_storm_guard_renews_once_then_says_why_not(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    data = record(bao, prefix, "certificates/due")
    assert data is not None
    data["renewal"] = _conf_with(data["renewal"], top={"renew_before_expiry": "100 years"})
    _write(bao, prefix, "certificates/due", data)
    env = golden_env(bao, golden, prefix)

    _, args = fresh_dirs(tmp_path, "run0")
    proc = kvault("renew", *args, env=env)
    assert "renewed: due" in proc.stdout, proc.stdout + proc.stderr
    version = kv_version(bao, prefix, "certificates/due")
    ordered = orders(golden.pebble)
    for run in range(1, 4):
        _, args = fresh_dirs(tmp_path, f"run{run}")
        proc = kvault("renew", *args, env=env)
        assert "renew: nothing is due outside the storm guard (1 renewed too recently) (1 " \
            "lineages checked; next: due at " in proc.stdout, proc.stdout + proc.stderr
        why = [ln for ln in proc.stderr.splitlines() if ln.startswith("renew: skipping due")]
        assert len(why) == 1 and "less than a tenth of its lifetime" in why[0] \
            and "it may renew from " in why[0] and "--force-renewal" in why[0], proc.stderr
    assert kv_version(bao, prefix, "certificates/due") == version
    assert orders(golden.pebble) == ordered
    row = json.loads(kvault("list", "--json", env=env).stdout)[0]
    assert row["renewed_recently_until"] and row["next_renewal"] == row["renewed_recently_until"]

    # certbot's --force-renewal lifts it.
    _, args = fresh_dirs(tmp_path, "forced")
    proc = kvault("renew", *args, "--", "--force-renewal", env=env)
    assert "renewed: due" in proc.stdout, proc.stdout + proc.stderr
    assert kv_version(bao, prefix, "certificates/due") == version + 1


# ---- locks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("per_lineage", [False, True])
def test_far_future_lock_is_stale_and_said(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                           tmp_path: Path, per_lineage: bool) -> None:
    """`locks/renew` with expires_at = 9999-12-31 (and, per lineage, its lineage lock in
    2100): the due lineage renews, and one line names each lock and its owner."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    _write(bao, prefix, "locks/renew", {"owner": "ghost:1:abc",
                                        "expires_at": "9999-12-31T00:00:00Z"})
    extra = []
    if per_lineage:
        extra = ["--lineage-locks"]
        _write(bao, prefix, "locks/lineage-due", {"owner": "ghost:2:def",
                                                  "expires_at": "2100-01-01T00:00:00Z"})
    _, args = fresh_dirs(tmp_path)
    proc = kvault("renew", *args, *extra, env=golden_env(bao, golden, prefix))
    assert "renewed: due" in proc.stdout, proc.stdout + proc.stderr
    lines = _warnings(proc.stderr)
    assert any(ln.startswith("warning: lock renew ") and "ghost:1:abc" in ln
               and "9999-12-31T00:00:00Z" in ln and "stale" in ln for ln in lines), proc.stderr
    if per_lineage:
        assert any("lock lineage-due " in ln and "ghost:2:def" in ln for ln in lines), \
            proc.stderr
    assert len(lines) == (2 if per_lineage else 1), proc.stderr


# ---- sizes ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rsa8192() -> rsa.RSAPrivateKey:
    """One 8192-bit key for the session (generating one takes a few seconds)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=8192)


def _pems(ca: ThrowawayCA, domain: str, public: Any, private_pem: str) -> PemSet:
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
            .issuer_name(ca.cert.subject).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=89))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    text = cert.public_bytes(serialization.Encoding.PEM).decode()
    chain = ca.cert.public_bytes(serialization.Encoding.PEM).decode()
    return PemSet(text, chain, text + chain, private_pem)


def _key_pem(key: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _huge_rsa_pem(bits: int) -> tuple[Any, str]:
    """An RSA key of ``bits`` bits in no time: its parts are not primes (nothing checks
    that any more: the key matching the certificate's public key is what counts)."""
    import secrets

    half = bits // 2
    # The two top bits set in both: the product has all ``bits`` bits.
    p = secrets.randbits(half) | (3 << (half - 2)) | 1
    q = secrets.randbits(half) | (3 << (half - 2)) | 1
    public = rsa.RSAPublicNumbers(65537, p * q)
    numbers = rsa.RSAPrivateNumbers(p=p, q=q, d=3, dmp1=1, dmq1=1, iqmp=1,
                                    public_numbers=public)
    key = numbers.private_key(unsafe_skip_rsa_key_validation=True)
    return public.public_key(), _key_pem(key)


def test_big_key_in_ten_archive_versions_costs_seconds_and_wild_keys_fail_alone(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: Path,
        rsa8192: rsa.RSAPrivateKey) -> None:
    """Ten archive versions of one 8192-bit key (as `reuse_key` makes): every version's key
    was loaded with OpenSSL's full RSA check, 4 s each here; now `show` and `pull` take
    seconds. A 16384-bit key and a key on a curve certbot never uses: one line each,
    the other lineages pulled."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    ca = ThrowawayCA()
    layout = layout_from_env()
    private = _key_pem(rsa8192)
    versions = {n: _pems(ca, "big.example.com", rsa8192.public_key(), private)
                for n in range(1, 11)}
    big = LineageRecord(name="big", version=10, pems=versions.pop(10),
                        renewal=renewal_conf("big"), auto_renewable=True, archive=versions)
    layout.save_lineage(big)
    huge_public, huge_private = _huge_rsa_pem(16384)
    curve_key = ec.generate_private_key(ec.SECP256K1())
    wild = {"huge": _pems(ca, "huge.example.com", huge_public, huge_private),
            "k1": _pems(ca, "k1.example.com", curve_key.public_key(), _key_pem(curve_key))}
    for name, pems in wild.items():  # as a Vault writer would: not through our checks
        _write(bao, prefix, f"certificates/{name}", {**pems.as_dict(), "version": 1,
                                                    "renewal": renewal_conf(name)})
    env = golden_env(bao, golden, prefix)

    t0 = time.monotonic()
    shown = kvault("show", "big", env=env)
    took_show = time.monotonic() - t0
    assert "key_type: rsa" in shown.stdout
    root, args = fresh_dirs(tmp_path)
    t0 = time.monotonic()
    proc = kvault("pull", *args, env=env, check=False)
    took_pull = time.monotonic() - t0
    print(f"\n[measure] show: {took_show:.2f} s, pull: {took_pull:.2f} s "
          f"(10 versions of one 8192-bit key)")
    # The issue's bound is "a second or two"; generous here for a shared 2-core machine.
    assert took_show < 15 and took_pull < 15
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2, proc.stderr
    assert any("lineage huge:" in ln and "16384 bits" in ln for ln in errors), proc.stderr
    assert any("lineage k1:" in ln and "secp256k1" in ln for ln in errors), proc.stderr
    assert (root / "config" / "archive" / "big" / "privkey1.pem").exists()
    assert (root / "config" / "live" / "calm" / "cert.pem").exists()


def test_record_sizes_are_bounded_before_parsing() -> None:
    ca = ThrowawayCA()
    pems = ca.pems("x.example.com", datetime.datetime.now(datetime.timezone.utc),
                   datetime.timedelta(days=90))
    base = {**pems.as_dict(), "version": 2, "renewal": renewal_conf("x")}

    def load(**data: Any) -> LineageRecord:
        return LineageRecord.from_kv("x", KVEntry({**base, **data}, 1), "secret/c/x")

    assert load().version == 2
    with pytest.raises(RecordError, match="'cert' is longer than any certbot writes"):
        load(cert=pems.cert + "x" * 70_000)
    with pytest.raises(RecordError, match="'renewal' is longer"):
        load(renewal=renewal_conf("x") + "#" * 70_000)
    many = {str(n): pems.as_dict() for n in range(1, MAX_ARCHIVE_VERSIONS + 2)}
    with pytest.raises(RecordError, match=f"at most {MAX_ARCHIVE_VERSIONS} are kept"):
        load(version=MAX_ARCHIVE_VERSIONS + 5, archive=many)
    with pytest.raises(RecordError, match="larger than any lineage"):
        load(archive={"1": {**pems.as_dict(), "padding": "x" * (33 * 2**20)}})
    with pytest.raises(RecordError, match="'archive' is malformed"):
        load(archive="[" * 100_000)            # deeper than json can go
    with pytest.raises(RecordError, match="'privkey' is not text"):
        load(privkey=["-----BEGIN PRIVATE KEY-----"])
