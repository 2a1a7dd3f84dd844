"""Hostile records, generated: Hypothesis writes records into the real OpenBao and drives
``pull``, ``list``, ``show``, ``export``, ``renew`` and the renewal decision over them.

The hand-written hostile cases (test_hostile.py, test_bounds.py, test_conf_data.py)
each plant one value someone thought of. Here Hypothesis generates them: lineage
names (valid and invalid, long, unicode, control characters, dots), PEM fields
(the golden lineages' real PEMs as they are, swapped between fields and lineages,
truncated, corrupted, repeated, huge, of the wrong type; and consistent sets from a
CA of the test's own with odd certificates: validity to 9999 or from 1950, none at all,
control characters and 120 names, IP addresses, small and Ed25519 keys), renewal
confs (hooks, paths into a sentinel dir, ``%(`` templates, duplicate keys, broken
syntax, wild waits, key sizes and ``renew_before_expiry``), timestamps in every field
that holds one (record, renewal memory, lock), accounts under other paths or with
spoiled fields, and every field with values of the wrong type (lists, numbers, nested
dicts). Each case runs in-process (click's runner) against the session's OpenBao:

- no command ends in a traceback or in the last net's ``error: unexpected`` line (a
  traceback caught there is still a bug: a bad record must be a proper one-line
  error), exit status 0 or 1, every line on stderr one line with a word and a colon
  in front (``error:``, ``warning:``, ``note:``), no terminal control character
  from a record in any output;
- a bad record fails alone: the control lineage (the golden ``calm``) is pulled and
  listed in every case;
- nothing is written outside the config dir: the hostile paths point into a sentinel
  dir, and the working dir, ``$HOME`` and the temp dir of the process are sentinels
  too; each case checks every file under them;
- no hang: each command has a watchdog (``HANG_AFTER``, wall time), and a budget of
  CPU time (``COMMAND_CPU``: a small record must not cost minutes of CPU). Not
  Hypothesis's deadline: it counts wall time, which other processes on a loaded
  2-core machine take, and a case it failed is replayed under its tracer, which
  CPython 3.13.0's sys.monitoring turns into a SystemError that hides the cause;
  for the same reason the explain phase is off;
- a renewal memory can make a lineage renew early, never stop it; a lock holds a due
  lineage back only when a holder could have written it.

The runs are derandomized (the same cases on every run, no example database), so a
CI failure reproduces locally. How many cases a run tries is printed in pytest's
terminal summary (conftest.py), even under ``-q``; the README quotes it.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import tempfile
import threading
import time
import types
import urllib.parse
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import yaml
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from helpers import GENERATED_CASES, Golden, record, scrubbed_env, walk
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from servers import Bao

# Imported before any case: the CLI imports acme lazily, and that first import, made
# in-process by a case inside an xdist worker, fails on CPython 3.13.0 with
# "SystemError: error return without exception set" in josepy's module wrapper (not
# seen in the console script's own process, which every other CLI test runs).
import acme.crypto_util  # noqa: E402,F401  isort: skip
from certbot_kvault._internal.cli import main
from certbot_kvault._internal.renew import plan as planner
from certbot_kvault._internal.renew import status as schedule
from certbot_kvault._internal.renew.locks import MAX_TTL, Locks
from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.store.state import BACKOFF_CAP
from certbot_kvault._internal.store.timefmt import CLOCK_SKEW, parse_time
from certbot_kvault._internal.vault.client import VaultClient
from certbot_kvault._internal.vault.settings import VaultSettings

# Cases per property; the README's reliability section quotes their sum. The run on the
# lowest versions (scripts/test.sh) tries a share of them: KVAULT_GENERATED_SHARE.
SHARE = float(os.environ.get("KVAULT_GENERATED_SHARE") or 1)
RECORD_CASES = max(1, round(200 * SHARE))
DECISION_CASES = max(1, round(250 * SHARE))
LOCK_CASES = max(1, round(50 * SHARE))
HANG_AFTER = 60.0      # seconds: a command still running then has hung
COMMAND_CPU = 20.0     # CPU seconds per command (typical commands take 0.05-0.5 s)

PROFILE = settings(derandomize=True, database=None, print_blob=True, deadline=None,
                   phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target,
                           Phase.shrink],
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

PEM_KINDS = ("cert", "chain", "fullchain", "privkey")
CONTROL = "calm"  # the control lineage, pulled and listed in every case


# ---- generated values ---------------------------------------------------------------------

# Values of a time field no renewer writes (some parse, most do not).
ODD_TIMES = [
    "9999-12-31T23:59:59-23:59", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z", "1970-01-01T00:00:00Z", "2024-02-30T00:00:00Z",
    "2024-01-01T00:00:00+25:00", "2024-01-01", "2024-01-01T00:00:00", "2024-01-01T24:00:00Z",
    " 2030-01-01T00:00:00Z ", "2030-01-01T00:00:00.123456789Z", "2030-01-01t00:00:00z",
    "+002030-01-01T00:00:00Z", "now", "tomorrow", "nan", "inf", "-1", "0", "", " ",
    "\x1b[2J2030-01-01T00:00:00Z", "2030-01-01T00:00:00Z" * 5, "9" * 400,
]
# Offsets from now that sit on the bounds (backoff cap, ARI's longest Retry-After,
# a lock's longest lease, the clock skew) and far beyond them.
OFFSETS = [0, 1, 59, 300, 301, 3600, 3900, 3901, 86400, 86400 + 300, 86400 + 301,
           86400 + 601, 30 * 86400, 365 * 86400, 100 * 365 * 86400, 5000 * 365 * 86400]


def _rfc3339(ts: float, style: int) -> str:
    dt = datetime.datetime.fromtimestamp(
        min(max(ts, 0.0), 253402300799.0), tz=datetime.timezone.utc)
    if style == 0:
        return dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    if style == 1:
        return dt.isoformat()
    if style == 2:
        return dt.astimezone(datetime.timezone(datetime.timedelta(hours=-23, minutes=-59))) \
            .isoformat()
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def times(now: float) -> st.SearchStrategy[Any]:
    """What a time field of a record may hold: times near now or far off, in several
    spellings, and values that are no time."""
    offset = st.one_of(st.sampled_from(OFFSETS), st.integers(0, 10**10))
    near = st.builds(lambda sign, off, style: _rfc3339(now + sign * off, style),
                     st.sampled_from([1, -1]), offset, st.integers(0, 3))
    return st.one_of(near, st.sampled_from(ODD_TIMES), json_values())


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON value (what a field of the wrong type may hold)."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63),
                        st.floats(allow_nan=False, allow_infinity=False),
                        st.text(max_size=12))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
        max_leaves=6)


SPECIAL_NAMES = [
    "README", ".certbot.lock", "kvault", "accounts", "renewal", "live", "archive", "...",
    "a..b", "..x", "x..", ".x", "-x", "--help", " x", "x ", "x\n", "x\t", "x\x1b[2J",
    "x\x9b2J", "x\x85", "\u202eexe.txt", "x\u200b", "x\ufeff", "x\u2028y", "CON",
    "x.conf", "~", "%2e%2e", "%(x)s", "x%", "x?y", "x#y", "x;y", "$(id)", "x\\y", "*",
    "x" * 237, "x" * 238, "x" * 300, "é" * 118, "é" * 119, "日本語", "🔒" * 60,
]


def names() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(SPECIAL_NAMES),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1,
                max_size=20),
        st.text(min_size=1, max_size=24),
    ).filter(lambda n: n != CONTROL and "/" not in n)


# Values a renewal conf from Vault may hold for the keys below.
WILD_NUMBERS = ["99999999", "99999999999999999999999", "-1", "0", "1e309", "nan", "inf",
                "0x10", "1_000", "5.5", " 5 ", "", "2047", "2048", "8192", "8193",
                "1" * 400, "600", "601", "1e3"]
INTERVALS = ["100 years", "5000 years", "-5 days", "1e9 days", "30", "0 days",
             "99999999999 seconds", "banana", "30 days 30 days 30 days" * 20]
TEMPLATES = ["%(nope)s", "%(renew_hook)s", "%%(x)s", "x%(", "%(archive_dir)s/x", "%"]


def conf_values(evil: Path, cwd: Path) -> st.SearchStrategy[str]:
    rel = os.path.relpath(evil, cwd)
    paths = [str(evil), str(evil / "x"), f"{evil}/../evil/x", "../" * 8 + rel,
             f"~/{rel}", "/etc", "/tmp", ".", "..", "", "archive/../../../x"]
    urls = ["file:///etc/passwd", "http://127.0.0.1:9/dir", "https://acme.example/dir?x=1",
            ":::", "https://", "http://[::1", f"file://{evil}/dir", "https://a.example/%(x)s"]
    line_breakers = ["'''", '"""', "a\nb = c", "[x]", "x, y, z", '"quoted"', "'",
                     "# not a comment", "a = b = c", "\x00", "\x1b[2J"]
    return st.one_of(st.sampled_from(WILD_NUMBERS), st.sampled_from(INTERVALS),
                     st.sampled_from(TEMPLATES), st.sampled_from(paths), st.sampled_from(urls),
                     st.sampled_from(line_breakers), st.text(max_size=30))


TOP_KEYS = ["renew_before_expiry", "archive_dir", "cert", "privkey", "chain", "fullchain",
            "version", "autorenew"]
PARAM_KEYS = ["kvault_propagation_seconds", "dns_cloudflare_propagation_seconds",
              "kvault_propagation_timeout", "rsa_key_size", "key_type", "elliptic_curve",
              "server", "account", "authenticator", "installer", "autorenew", "pre_hook",
              "deploy_hook", "renew_hook", "manual_auth_hook", "webroot_path", "webroot_map",
              "config_dir", "work_dir", "logs_dir", "kvault_vault_addr", "kvault_prefix",
              "preferred_profile", "required_profile", "http01_port", "reuse_key",
              "dns_rfc2136_credentials", "csr", "key_path", "x_hook", "x\x1b[2J"]


@st.composite
def renewal_confs(draw: st.DrawFn, base: str, evil: Path, cwd: Path) -> Any:
    """A lineage's ``renewal`` field: the golden conf with generated lines inserted,
    or something else entirely."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.one_of(st.text(max_size=200), json_values(),
                              st.sampled_from(["", " ", "[", "[renewalparams", "= x",
                                               "x" * (64 * 1024 + 1)])))
    lines = base.splitlines()
    split = lines.index("[renewalparams]") if "[renewalparams]" in lines else len(lines)
    top, params = lines[:split], lines[split:]
    values = conf_values(evil, cwd)
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.one_of(st.sampled_from(TOP_KEYS), st.text(max_size=10)))
        top.insert(draw(st.integers(0, len(top))), f"{key} = {draw(values)}")
    for _ in range(draw(st.integers(0, 6))):
        key = draw(st.one_of(st.sampled_from(PARAM_KEYS), st.text(max_size=10)))
        params.insert(draw(st.integers(1, max(1, len(params)))), f"{key} = {draw(values)}")
    if draw(st.integers(0, 4)) == 0 and len(params) > 1:  # a duplicate key
        params.append(draw(st.sampled_from(params[1:])))
    extra = draw(st.lists(st.sampled_from(
        ["[renewalparams]", "[[nested]]", "[", "x = '''", "]", "[renewalparams_extra]",
         "x = 1", "\ufeffx = 1", "\r"]), max_size=2))
    return "\n".join(top + params + extra) + draw(st.sampled_from(["\n", "", "\n\n"]))


class Sets:
    """PEM material: the golden lineages' records and a catalogue of odd but consistent
    certificate sets (made once: keys cost)."""

    def __init__(self, golden: dict[str, dict[str, Any]],
                 accounts: dict[str, dict[str, Any]]) -> None:
        self.golden = golden
        self.accounts = accounts  # path below accounts/ -> record
        self.odd = _odd_sets()


def _odd_sets() -> list[dict[str, str]]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "generated odd CA")])
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    day = datetime.timedelta(days=1)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - 400 * day).not_valid_after(now + 400 * day)
          .sign(ca_key, hashes.SHA256()))
    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()

    def one(key: Any, start: datetime.datetime, end: datetime.datetime,
            cn: Optional[str] = "odd.example.com", sans: Optional[list[x509.GeneralName]] = None,
            serial: int = 12345) -> dict[str, str]:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
                   .public_key(key.public_key()).serial_number(serial)
                   .not_valid_before(start).not_valid_after(end))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256()).public_bytes(
            serialization.Encoding.PEM).decode()
        privkey = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        return {"cert": cert, "chain": ca_pem, "fullchain": cert + ca_pem, "privkey": privkey}

    k = ec.generate_private_key(ec.SECP256R1())
    far = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)
    old = datetime.datetime(1950, 1, 1, tzinfo=datetime.timezone.utc)
    dns = [x509.DNSName("odd.example.com")]
    return [
        one(k, now - day, far, sans=dns),                            # valid to 9999
        one(k, old, old + 90 * day, sans=dns),                       # from 1950, long expired
        one(k, now - day, now + day, sans=dns),                      # two days
        one(k, now - 10 * day, now - 10 * day, sans=dns),            # no lifetime at all
        one(k, now - day, now + 90 * day, cn="evil\x1b]0;x\x07\x1b[2J.example.com",
            sans=[x509.DNSName(f"n{i}\x1b[2J.example.com") for i in range(120)]),
        one(k, now - day, now + 90 * day, cn=None,
            sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                  x509.IPAddress(ipaddress.ip_address("::1"))]),
        one(k, now - day, now + 90 * day, cn=None),                  # no name at all
        one(k, now - day, now + 90 * day, sans=dns, serial=2**159 - 1),
        one(rsa.generate_private_key(65537, 1024), now - day, now + 90 * day,  # noqa: S505
            sans=dns),
        one(ed25519.Ed25519PrivateKey.generate(), now - day, now + 90 * day, sans=dns),
        one(ec.generate_private_key(ec.SECP256K1()), now - day, now + 90 * day, sans=dns),
    ]


def pem_values(sets: Sets, kind: str) -> st.SearchStrategy[Any]:
    golden = [r[kind] for r in sets.golden.values()]
    anything = [r[k] for r in sets.golden.values() for k in PEM_KINDS] + \
        [s[k] for s in sets.odd for k in PEM_KINDS]
    return st.one_of(
        st.sampled_from(golden),
        st.sampled_from(anything),                                      # swapped
        st.builds(lambda p, n: p[:n], st.sampled_from(golden), st.integers(0, 3000)),
        st.builds(lambda p, junk: p + junk, st.sampled_from(golden), st.text(max_size=20)),
        st.builds(lambda p, i, c: p[:i] + c + p[i + 1:], st.sampled_from(golden),
                  st.integers(30, 600), st.sampled_from("A/+=-\n\x00é")),  # one byte off
        st.builds(lambda p, n: p * n, st.sampled_from(golden), st.integers(2, 40)),
        st.sampled_from(["", "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
                         "-----BEGIN CERTIFICATE-----\n" + "A" * 70000 + "\n"
                         "-----END CERTIFICATE-----\n", "x" * (320 * 1024 + 1)]),
        st.text(max_size=40),
        json_values(),
    )


FOCUS = ("name", "pems", "odd certificate", "conf", "fields", "archive", "everything")


@st.composite
def lineage_records(draw: st.DrawFn, sets: Sets, evil: Path, cwd: Path,
                    now: float) -> dict[str, Any]:
    """A certificates/<name> record: a golden record with one kind of hostility (its
    name alone, its PEMs, an odd certificate, its conf, its other fields, its archive),
    or with all of them at once."""
    base_name = draw(st.sampled_from(sorted(sets.golden)))
    data = dict(sets.golden[base_name])
    focus = draw(st.sampled_from(FOCUS))
    every = focus == "everything"

    def some(kind: str, odds: int) -> bool:
        """Whether to spoil this part: always in its focus, now and then in "everything"."""
        return focus == kind or (every and draw(st.integers(0, odds)) == 0)

    if some("odd certificate", 3):
        data.update(draw(st.sampled_from(sets.odd)))
    if some("conf", 1):
        data["renewal"] = draw(renewal_confs(sets.golden[base_name]["renewal"], evil, cwd))
    if some("pems", 1):
        for kind in draw(st.lists(st.sampled_from(PEM_KINDS), min_size=1, unique=True)):
            data[kind] = draw(pem_values(sets, kind))
    if some("archive", 3):
        archive, version = draw(archives(sets))
        data["archive"] = archive
        if version is not None:
            data["version"] = version
    if some("fields", 0):
        fields: dict[str, st.SearchStrategy[Any]] = {
            "version": st.one_of(st.integers(-5, 12), st.sampled_from(
                [10**6, 10**6 + 1, 2**63, "1", "01", " 1", "1e3", "9" * 400, 1.5, True]),
                json_values()),
            "domains": json_values(),
            "not_before": times(now), "not_after": times(now), "updated_at": times(now),
            "serial": st.one_of(st.sampled_from(["0", "00", "-1", "x" * 100, ""]),
                                json_values()),
            "key_type": json_values(),
            "auto_renewable": json_values(),
            "issued": st.one_of(json_values(), st.fixed_dictionaries({}, optional={
                "acme_server": json_values(), "host": st.text(max_size=300),
                "at": times(now), "certbot": st.sampled_from(["\x1b[2J", "x" * 1000]),
                "dns": st.lists(st.dictionaries(st.sampled_from(["domain", "via", "txt"]),
                                                st.text(max_size=20)), max_size=3)})),
        }
        for key in draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, unique=True)):
            data[key] = draw(fields[key])
        for key in draw(st.lists(st.sampled_from(sorted(data)), max_size=1)):
            del data[key]
        if draw(st.booleans()):
            data[draw(st.text(max_size=10))] = draw(json_values())
    return data


@st.composite
def archives(draw: st.DrawFn, sets: Sets) -> tuple[Any, Optional[int]]:
    """The ``archive`` field: earlier versions by number (valid, odd, too many, text), and
    the record's version to go with it (None: unchanged)."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(json_values()), None
    if kind == 1:
        golden = dict(draw(st.sampled_from(list(sets.golden.values()))))
        return json.dumps({"1": {k: golden[k] for k in PEM_KINDS}}), 2
    if kind == 2:  # many versions of one key: up to one more than kept
        one = {k: sets.golden[CONTROL][k] for k in PEM_KINDS}
        many = draw(st.sampled_from([1, 2, 30, 1001]))
        return {str(n): one for n in range(1, many + 1)}, many + 1
    out: dict[str, Any] = {}
    for _ in range(draw(st.integers(1, 3))):
        number = draw(st.one_of(st.integers(-2, 5).map(str), st.sampled_from(
            ["01", "1e2", "x", "", "9" * 100, "1000001"])))
        pick = draw(st.integers(0, 2))
        if pick == 0:
            out[number] = {k: sets.golden[CONTROL][k] for k in PEM_KINDS}
        elif pick == 1:
            out[number] = {k: draw(pem_values(sets, k)) for k in draw(
                st.lists(st.sampled_from(PEM_KINDS), unique=True))}
        else:
            out[number] = draw(json_values())
    return out, draw(st.sampled_from([None, 2, 6, 10**6]))


@st.composite
def accounts(draw: st.DrawFn, sets: Sets) -> tuple[str, dict[str, Any]]:
    """An accounts/<server>/<id> record: a golden account under another path or id, or
    with fields swapped, spoiled or of the wrong type."""
    path, data = draw(st.sampled_from(sorted(sets.accounts.items())))
    server_path, account_id = path.rsplit("/", 1)
    data = dict(data)
    if draw(st.booleans()):
        account_id = draw(st.one_of(names(), st.just(account_id.upper())))
    if draw(st.booleans()):
        server_path = draw(st.sampled_from(["127.0.0.1/dir", "x..y/dir", "a/./b", "h:1/%2e",
                                            server_path + "/more", "\u00e9/dir"]))
    for key in draw(st.lists(st.sampled_from(["meta", "private_key", "regr", "server"]),
                             unique=True)):
        data[key] = draw(st.one_of(
            json_values(), st.sampled_from([v for d in sets.accounts.values()
                                            for v in d.values() if isinstance(v, str)]),
            st.sampled_from(["file:///etc/passwd", "ftp://" + server_path, "{}", "[]",
                             '{"kty": "RSA"}', "x" * 100000])))
    return f"{server_path}/{account_id}", data


def memories(now: float, serials: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A state/<name> record (the renewal memory)."""
    t = times(now)
    return st.fixed_dictionaries({}, optional={
        "last_attempt": t, "last_success": t, "next_attempt": t, "ari_window_start": t,
        "ari_window_end": t, "ari_renewal_time": t, "ari_next_check": t, "updated_at": t,
        "consecutive_failures": st.one_of(st.integers(-1, 40), st.sampled_from(
            [10**6, 10**6 + 1, 2**64, "3", "9" * 20, 2.5, True]), json_values()),
        "last_error": st.one_of(st.text(max_size=50), st.sampled_from(
            ["x" * 5000, "a\x1b[2Jb\nc", "token=hvs.s3cr3t"]), json_values()),
        "serial": st.one_of(st.sampled_from(serials), json_values()),
        "ari_explanation_url": st.one_of(st.text(max_size=20), json_values()),
    })


def locks(now: float) -> st.SearchStrategy[dict[str, Any]]:
    """A locks/<name> record."""
    t = times(now)
    return st.fixed_dictionaries({}, optional={
        "owner": st.one_of(st.text(max_size=20), st.sampled_from(
            ["", "x" * 5000, "evil\x1b[2J\x07", "host:1:abc"]), json_values()),
        "expires_at": t, "acquired_at": t, "extra": json_values()})


# ---- the harness ----------------------------------------------------------------------------


class Hung(BaseException):
    """A command ran past HANG_AFTER (not an Exception: nothing may swallow it)."""


def _hung(signum: int, frame: Optional[types.FrameType]) -> None:
    raise Hung(f"a command still ran after {HANG_AFTER:g}s")


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        return CliRunner()


class Harness:
    """One property's sentinels, Vault access and command runner."""

    def __init__(self, bao: Bao, golden: Golden, root: Path) -> None:
        self.bao = bao
        self.golden = golden
        self.root = root
        self.cwd, self.home, self.tmp, self.evil = (root / n for n in ("cwd", "home", "tmp",
                                                                        "evil"))
        for d in (self.cwd, self.home, self.tmp):
            d.mkdir()
        self.case = root / "case"
        self.prefix = ""
        self.env: dict[str, Optional[str]] = {}
        self.sets: Optional[Sets] = None

    # -- Vault ----------------------------------------------------------------

    def new_prefix(self) -> str:
        self.prefix = f"hyp-{secrets.token_hex(5)}"
        self.env = {**{k: None for k in os.environ if k.startswith(("VAULT_", "KVAULT_",
                                                                      "BAO_"))},
                    **scrubbed_env(), "VAULT_ADDR": self.bao.addr,
                    "VAULT_TOKEN": self.bao.token, "KVAULT_PREFIX": self.prefix,
                    "HOME": str(self.home), "TMPDIR": str(self.tmp)}
        return self.prefix

    def put(self, folder: str, name: str, data: Any) -> bool:
        """Write a record as any Vault writer may; False when Vault refuses the path.
        (An account's ``name`` is ``server/path/id``: its slashes stay.)"""
        quoted = urllib.parse.quote(name, safe="/" if folder == "accounts" else "")
        r = self.bao.api("POST", f"secret/data/{self.prefix}/{folder}/{quoted}",
                         json={"data": data})
        if r.status_code in (400, 404, 405, 307, 301):
            return False
        assert r.status_code == 200, r.text
        return True

    def seed_control(self) -> None:
        assert self.sets is not None
        assert self.put("certificates", CONTROL, self.sets.golden[CONTROL])

    def layout(self) -> Layout:
        return Layout(VaultClient(VaultSettings.from_env(
            {}, addr=self.bao.addr, token=self.bao.token, prefix=self.prefix)))

    # -- commands -------------------------------------------------------------

    def fresh_case(self) -> list[str]:
        """New config, work and logs dirs; the sentinels emptied (a case that wrote there
        failed already: the next one starts clean)."""
        for top in (self.case, self.evil):
            if top.exists():
                shutil.rmtree(top)
        for top in (self.cwd, self.home, self.tmp):
            shutil.rmtree(top)
            top.mkdir()
        dirs = [self.case / n for n in ("config", "work", "logs")]
        for d in dirs:
            d.mkdir(parents=True)
        return ["--config-dir", str(dirs[0]), "--work-dir", str(dirs[1]),
                "--logs-dir", str(dirs[2])]

    def run(self, *args: str) -> Result:
        """The CLI in-process, with a watchdog; checked for what no command may print."""
        previous = signal.signal(signal.SIGUSR1, _hung)
        timer = threading.Timer(HANG_AFTER, os.kill, (os.getpid(), signal.SIGUSR1))
        timer.start()
        cpu = time.process_time()
        try:
            result = runner().invoke(main, list(args), env=self.env, catch_exceptions=False)
        finally:
            timer.cancel()
            signal.signal(signal.SIGUSR1, previous)
        cpu = time.process_time() - cpu
        assert cpu < COMMAND_CPU, f"certbot-kvault {' '.join(args)!r} took {cpu:.1f} s of CPU"
        check_output(result, args)
        return result

    def assert_nothing_outside(self) -> None:
        """Nothing in the sentinels; in the case dir, only the config dir has files."""
        config = self.case / "config"
        made = {config, self.case / "work", self.case / "logs"}  # by fresh_case, empty
        export = self.case / "export"  # `export --dir`'s, for the app
        stray = []
        for top in (self.cwd, self.home, self.tmp, self.evil, self.case):
            for dirpath, dirs, files in os.walk(top):
                for n in dirs + files:
                    path = Path(dirpath, n)
                    if path not in made and path != export and config not in path.parents \
                            and export not in path.parents:
                        stray.append(str(path))
        assert not stray, f"written outside the config dir: {sorted(stray)[:10]}"
        assert sorted(p.name for p in self.root.iterdir()) == \
            sorted(n for n in ("case", "cwd", "home", "tmp") if (self.root / n).exists())


STDERR_WORDS = ("error:", "warning:", "note:", "renew:", "pending push of")


def check_output(result: Result, args: tuple[str, ...]) -> None:
    what = f"certbot-kvault {' '.join(args)!r}: exit {result.exit_code}\n" \
           f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}"
    assert result.exit_code in (0, 1), what
    for text in (result.stdout, result.stderr):
        assert "Traceback" not in text, what
        assert "error: unexpected" not in text, what
        # A record's terminal escapes are shown escaped (or never shown).
        assert not [c for c in text if (ord(c) < 0x20 and c not in "\n") or
                    0x7f <= ord(c) < 0xa0], what
    for line in result.stderr.splitlines():
        assert line.startswith(STDERR_WORDS), what


def count(prop: str) -> None:
    GENERATED_CASES[prop] = GENERATED_CASES.get(prop, 0) + 1


@pytest.fixture(scope="module")
def material(bao: Bao, golden: Golden) -> Sets:
    """The golden lineages' records and the odd certificate sets, made once."""
    base = {name: record(bao, golden.prefix, f"certificates/{name}")
            for name in ("calm", "due", "short")}
    accounts = {p: record(bao, golden.prefix, f"accounts/{p}")
                for p in walk(bao, f"{golden.prefix}/accounts")}
    return Sets({k: v for k, v in base.items() if v is not None},
                {k: v for k, v in accounts.items() if v is not None})


@pytest.fixture
def sentinels(bao: Bao, golden: Golden, material: Sets, tmp_path: Path) -> Iterator[Harness]:
    """A property's Harness; the process's working dir and temp dir are its sentinels
    while it runs."""
    h = Harness(bao, golden, tmp_path)
    h.sets = material
    old_cwd, old_tmp = os.getcwd(), tempfile.tempdir
    os.chdir(h.cwd)
    tempfile.tempdir = str(h.tmp)
    try:
        yield h
    finally:
        os.chdir(old_cwd)
        tempfile.tempdir = old_tmp


# ---- the properties -------------------------------------------------------------------------


def test_generated_lineage_records(sentinels: Harness) -> None:
    """pull (twice), list and show (table and --json) and export (files, env, Secret) over a
    generated record and memory beside the control lineage."""
    h = sentinels
    assert h.sets is not None
    now = time.time()
    serials = [schedule.status_of(n, _entry(r), now).serial or "" for n, r in
               h.sets.golden.items()]

    @settings(PROFILE, max_examples=RECORD_CASES)
    @given(name=names(), data=lineage_records(h.sets, h.evil, h.cwd, now),
           memory=st.one_of(st.none(), memories(now, serials)),
           account=st.one_of(st.none(), accounts(h.sets)), trust=st.booleans())
    def prop(name: str, data: dict[str, Any], memory: Optional[dict[str, Any]],
             account: Optional[tuple[str, dict[str, Any]]], trust: bool) -> None:
        h.new_prefix()
        h.seed_control()
        assume(h.put("certificates", name, data))  # a name Vault refuses cannot be planted
        count("pull, list, show, export")
        if memory is not None:
            h.put("state", name, memory)
        if account is not None:
            h.put("accounts", *account)
        args = h.fresh_case() + (["--trust-vault-hooks"] if trust else [])

        for _ in range(2):  # the second finds the tree as the first left it
            pulled = h.run("pull", "--json", *args)
            report = json.loads(pulled.stdout)
            assert f"lineage {CONTROL}" in report["written"] + report["unchanged"], \
                pulled.stdout
            assert (pulled.exit_code == 1) == bool(report["failed"]), pulled.stdout
            h.assert_nothing_outside()

        listed = h.run("list", "--json")
        rows = {row["name"]: row for row in json.loads(listed.stdout)}
        assert CONTROL in rows and not rows[CONTROL]["in_backoff"], listed.stdout
        # Exit 1 only for a record that show, export and pull refuse (named in its row).
        assert rows[CONTROL]["error"] is None, listed.stdout
        assert listed.exit_code == int(any(r["error"] for r in rows.values())), listed.stderr
        table = h.run("list")
        assert table.exit_code == listed.exit_code, table.stderr
        assert f"\n{CONTROL} " in table.stdout, table.stdout
        for extra in ([], ["--json"]):
            shown = h.run("show", *extra, "--", name)
            if shown.exit_code:
                assert len(shown.stderr.splitlines()) == 1, shown.stderr
            elif extra:
                json.loads(shown.stdout)

        exported = h.run("export", "--dir", str(h.case / "export"), "--once", "--", name)
        env = h.run("export", "--format", "env", "--", name)
        for word in shlex.split(env.stdout):  # assignments only, as a shell reads them
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*=.*", word, re.S), env.stdout
        secret = h.run("export", "--format", "k8s-secret", "--", name)
        if secret.exit_code == 0:
            assert yaml.safe_load(secret.stdout)["kind"] == "Secret"
        assert exported.exit_code == env.exit_code, (exported.stderr, env.stderr)
        h.assert_nothing_outside()

    prop()


def _entry(data: dict[str, Any]) -> Any:
    from certbot_kvault._internal.vault.client import KVEntry

    return KVEntry(dict(data), 1)


def test_generated_renewal_decision(sentinels: Harness) -> None:
    """The decision renew makes (read from Vault: record and memory) and the planner's
    choice under every rule; a memory can make a lineage renew early, never stop it."""
    h = sentinels
    assert h.sets is not None
    now = time.time()
    serials = [schedule.status_of(n, _entry(r), now).serial or "" for n, r in
               h.sets.golden.items()] + [
        schedule.status_of("odd", _entry(s), now).serial or "" for s in h.sets.odd]

    @settings(PROFILE, max_examples=DECISION_CASES)
    @given(name=names(), data=lineage_records(h.sets, h.evil, h.cwd, now),
           memory=st.one_of(st.none(), memories(now, serials)),
           all_memory=st.booleans(), lock=st.one_of(st.none(), locks(now)),
           lock_on=st.sampled_from(["renew", "lineage-NAME", "lineage-due"]))
    def prop(name: str, data: dict[str, Any], memory: Optional[dict[str, Any]],
             all_memory: bool, lock: Optional[dict[str, Any]], lock_on: str) -> None:
        h.new_prefix()
        h.seed_control()
        assert h.put("certificates", "due", h.sets.golden["due"])  # always due
        assume(h.put("certificates", name, data))
        count("renewal decision")
        if memory is not None:
            h.put("state", name, memory)
        if lock is not None:
            h.put("locks", lock_on.replace("NAME", name), lock)
        h.fresh_case()
        layout = h.layout()
        lines: list[str] = []
        fleet = schedule.renewal_fleet(layout, 2, None, all_memory=all_memory,
                                       notify=lines.append)
        assert CONTROL in fleet and not fleet[CONTROL].due
        assert "due" in fleet and fleet["due"].due
        for rules in (planner.Rules(), planner.Rules(every=True),
                      planner.Rules(due_within=30), planner.Rules(retry_now=frozenset("*")),
                      planner.Rules(cert_name=name), planner.Rules(dry_run=True)):
            chosen, _backoff, none = planner.choose(fleet, rules, lines.append)
            assert chosen or none
            assert CONTROL not in chosen or rules.every or rules.due_within is not None
        # The locks renew takes (renew/plan.py) with that fleet, under the planted lock.
        for plan in (planner.plan_all, planner.plan_each):
            with Locks(layout, ttl=30, notify=lines.append) as held:
                planned = plan(layout, held, 0, 2, lines.append,
                               planner.Rules(lineage_locks=plan is planner.plan_each),
                               lambda: fleet)
                owner = held.owner
            assert planned.names or planned.skip
            # `due` is renewed unless a lock holds it back: one a holder could have written,
            # expiring within the longest lease (renew/locks.py, LockInfo).
            if "due" not in planned.names:
                assert lock is not None and lock_on in ("renew", "lineage-due"), planned.skip
                until = parse_time(lock.get("expires_at"))
                assert until is not None and until <= time.time() + MAX_TTL + CLOCK_SKEW, \
                    (lock, planned.skip)
            assert not [p for p in walk(h.bao, f"{h.prefix}/locks")
                        if (record(h.bao, h.prefix, f"locks/{p}") or {}).get("owner") == owner]
        for line in lines:
            assert "\n" not in line and line.startswith(("warning:", "renew:")), line
        st_ = fleet.get(name)
        if st_ is None:
            return
        json.dumps(st_.as_json())
        if st_.not_before is None or st_.not_after is None:
            assert st_.due, "a record whose dates cannot be read is due"
            return
        bare = schedule.status_of(name, st_.entry, st_.now, settings=st_.settings)
        if not st_.settings.autorenew:
            assert st_.next_renewal is None and bare.next_renewal is None
            return
        # What a memory may add: a backoff (at most its cap after an attempt that is not
        # in the future) and the storm guard (a tenth of the lifetime).
        assert bare.next_renewal is not None
        latest = max(bare.next_renewal, st_.now, st_.not_before + max(0.0, st_.lifetime or 0)
                     / 10) + BACKOFF_CAP + 2 * CLOCK_SKEW
        assert st_.next_renewal is not None and st_.next_renewal <= latest, (
            st_.next_renewal, bare.next_renewal, st_.state)

    prop()


def test_generated_lock_records(sentinels: Harness) -> None:
    """``renew`` (not due: certbot never starts) under a generated global lock: a lock
    no holder could have written is taken over with one warning, a live one is named;
    the run releases what it took."""
    h = sentinels
    now = time.time()

    @settings(PROFILE, max_examples=LOCK_CASES)
    @given(lock=locks(now), lineage_locks=st.booleans())
    def prop(lock: dict[str, Any], lineage_locks: bool) -> None:
        count("lock records")
        h.new_prefix()
        h.seed_control()
        h.put("locks", "renew", lock)
        h.put("locks", f"lineage-{CONTROL}", lock)
        planted = record(h.bao, h.prefix, "locks/renew")  # as Vault keeps it (numbers...)
        args = h.fresh_case()
        flags = ["--lineage-locks"] if lineage_locks else []
        result = h.run("renew", "--lock-wait", "0", "--no-ari", *flags, *args)
        assert "renewed:" not in result.stdout, result.stdout
        out = result.stdout + result.stderr
        assert "nothing is due" in out or "another renewer is at work" in out, out
        after = record(h.bao, h.prefix, "locks/renew")
        assert after is not None
        assert after == planted or not after.get("owner"), (planted, after)
        h.assert_nothing_outside()

    prop()
