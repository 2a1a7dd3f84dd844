"""`renew` attempts exactly the lineages certbot would, as the ACME server sees it.

Pebble: synthetic lineages of 6, 45, 64 and 90 days, each just before and just
after certbot's point (1/2 of the lifetime under 10 days, else 2/3), one whose
``renew_before_expiry`` alone makes it due and one past its point with
``autorenew = False``. ``certbot-kvault renew`` from an empty dir must make
Pebble validate exactly the due names, and plain ``certbot renew`` over a pull
of the same lineages exactly the same names: that is certbot's own set.

OpenBao's PKI ACME issuing 2.5-minute certificates through ``-a kvault``
(DNS-01 via PowerDNS): a fresh certificate is left alone, one past half its
lifetime is renewed.

No ARI-capable ACME server can be installed here: Debian's Pebble 2.4 and
OpenBao's PKI ACME offer no ``renewalInfo``, so these runs exercise the
fallback rules (``renew_before_expiry``, then the lifetime).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import certbot
import pytest
from cryptography import x509
from helpers import (
    ZONE,
    ThrowawayCA,
    certonly_args,
    fresh_dirs,
    kv_version,
    kvault,
    pdns_entry,
    pebble_log_mark,
    record,
    renewal_conf,
    resolver_opt,
    scrubbed_env,
    validated_names,
)
from servers import Bao, BaoAcme, Pebble, PowerDNS, certbot_executable, run_certbot

from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.store.records import LineageRecord
from certbot_kvault._internal.vault.client import VaultClient
from certbot_kvault._internal.vault.settings import VaultSettings

DAY = 86400.0
# How far before or after certbot's point the synthetic certificates sit: far
# more than a run takes, so no lineage crosses its point during the test.
MARGIN = 2 * 3600.0


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    lifetime_days: float
    age: float                      # seconds since not_before, now
    due: bool                       # what certbot's rule says
    renew_before_expiry: Optional[str] = None
    autorenew: bool = True

    @property
    def domain(self) -> str:
        return f"{self.name}.{ZONE}"


def lifetime_point(lifetime: float) -> float:
    """Seconds after not_before at which certbot's lifetime rule makes a lineage due."""
    return lifetime / 2 if lifetime < 10 * DAY else lifetime * 2 / 3


def _cases() -> list[Case]:
    out = []
    for days in (6, 45, 64, 90):
        point = lifetime_point(days * DAY)
        out.append(Case(f"life{days}-young", days, point - MARGIN, due=False))
        out.append(Case(f"life{days}-old", days, point + MARGIN, due=True))
    # 35 days left < 40: due by renew_before_expiry, though the lifetime rule
    # (60 days of 90) would not be there yet.
    out.append(Case("rbe40", 90, 55 * DAY, due=True, renew_before_expiry="40 days"))
    out.append(Case("autorenew-off", 90, 75 * DAY, due=False, autorenew=False))
    return out


CASES = _cases()

def synthetic_lineage(case: Case, ca: ThrowawayCA, *, account: str, pebble: Pebble,
                      now: float) -> LineageRecord:
    """A lineage as ``push`` would store it, its certificate signed by the test CA."""
    renewal = renewal_conf(
        case.name, account=account, server=pebble.directory_url, http_port=pebble.http_port,
        top=(f"renew_before_expiry = {case.renew_before_expiry}\n"
             if case.renew_before_expiry else ""),
        extra="" if case.autorenew else "autorenew = False\n", version=certbot.__version__)
    not_before = datetime.datetime.fromtimestamp(now - case.age, datetime.timezone.utc)
    return ca.lineage(case.name, case.domain, not_before,
                      datetime.timedelta(days=case.lifetime_days), renewal,
                      auto_renewable=case.autorenew)


def _layout(bao: Bao, prefix: str) -> Layout:
    return Layout(VaultClient(VaultSettings.from_env(
        {}, addr=bao.addr, token=bao.token, mount="secret", prefix=prefix)))


# --------------------------------------------------------------------------- OpenBao PKI ACME
#
# One certificate, issued when the module starts. The fresh check runs first;
# the Pebble test then runs while the clock moves towards half the
# certificate's lifetime, so the module waits only for what is left.


@dataclasses.dataclass
class ShortLived:
    prefix: str
    domain: str
    env: dict[str, str]
    serial: str
    half: float       # not_before + 1/2 of the lifetime: certbot's point under 10 days


def _cert_times(pem: str) -> tuple[float, float]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return (cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp())


NAME = "short"


@pytest.fixture(scope="module")
def short_lived(bao: Bao, bao_acme: BaoAcme, pdns: PowerDNS,
                tmp_path_factory: pytest.TempPathFactory) -> ShortLived:
    """certbot certonly -a kvault (DNS-01 via PowerDNS) at OpenBao's ACME: 2.5-minute cert."""
    prefix = f"t-short-lived-{secrets.token_hex(3)}"
    domain = f"{prefix}.{ZONE}"
    env = scrubbed_env(VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.token, KVAULT_PREFIX=prefix,
                       PATH=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get("PATH", ""))
    _layout(bao, prefix).save_dns("pdns", pdns_entry(pdns))
    _, args = fresh_dirs(tmp_path_factory.mktemp("short-lived"), "issue")
    argv = [certbot_executable(), *certonly_args("--kvault-dns-resolver", resolver_opt(pdns),
                                                 "--cert-name", NAME, domains=(domain,)),
            "--server", bao_acme.directory_url, "--non-interactive", *args]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = record(bao, prefix, f"certificates/{NAME}")
    assert first is not None, proc.stdout + proc.stderr
    not_before, not_after = _cert_times(first["cert"])
    return ShortLived(prefix, domain, env, first["serial"],
                      half=not_before + (not_after - not_before) / 2)


def test_fresh_short_lived_is_not_renewed(bao: Bao, bao_acme: BaoAcme,
                                          short_lived: ShortLived, tmp_path: Path) -> None:
    """Before half its lifetime: the next stateless run makes the CA issue nothing."""
    issued = bao_acme.issued(short_lived.domain)
    version = kv_version(bao, short_lived.prefix, f"certificates/{NAME}")
    _, args = fresh_dirs(tmp_path)
    proc = kvault("renew", *args, env=short_lived.env)
    if time.time() >= short_lived.half:
        pytest.skip("this machine took until past the certificate's half-life before the "
                    "renew run ended: nothing left to observe")
    assert bao_acme.issued(short_lived.domain) == issued, proc.stdout + proc.stderr
    assert kv_version(bao, short_lived.prefix, f"certificates/{NAME}") == version


def test_renew_orders_exactly_what_certbot_would(bao: Bao, pebble: Pebble,
                                                 vault_env: dict[str, str],
                                                 tmp_path: Path) -> None:
    """Observed at Pebble: `certbot-kvault renew` == plain `certbot renew` == the expected set."""
    ours, plain = vault_env["KVAULT_PREFIX"], vault_env["KVAULT_PREFIX"] + "-plain"

    def env(prefix: str) -> dict[str, str]:
        return scrubbed_env(VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.token, KVAULT_PREFIX=prefix,
                            REQUESTS_CA_BUNDLE=pebble.ca_bundle)

    # One real Pebble account, registered by certbot and pushed to both prefixes.
    root, args = fresh_dirs(tmp_path, "account")
    run_certbot(["register", "--agree-tos", "--register-unsafely-without-email"],
                config_dir=root / "config", work_dir=root / "work", logs_dir=root / "logs",
                pebble=pebble)
    (account,) = [p.name for p in (root / "config" / "accounts").glob("*/*/*")]
    ca = ThrowawayCA("certbot-kvault ages test CA")
    now = time.time()
    for prefix in (ours, plain):
        kvault("push", *args, env=env(prefix))
        layout = _layout(bao, prefix)
        for case in CASES:
            layout.save_lineage(synthetic_lineage(case, ca, account=account, pebble=pebble,
                                                  now=now))
    expected = sorted(c.domain for c in CASES if c.due)

    mark = pebble_log_mark(pebble)
    t0 = time.monotonic()
    _, args = fresh_dirs(tmp_path, "kvault")
    proc = kvault("renew", *args, env=env(ours))
    print(f"\n[measure] certbot-kvault renew over {len(CASES)} lineages, "
          f"{len(expected)} due: {time.monotonic() - t0:.1f} s")
    assert validated_names(pebble, mark) == expected, proc.stdout + proc.stderr
    for case in CASES:
        assert kv_version(bao, ours, f"certificates/{case.name}") == (2 if case.due else 1), \
            case.name

    # The same lineages, untouched, pulled and renewed by certbot alone.
    root, args = fresh_dirs(tmp_path, "plain")
    kvault("pull", *args, env=env(plain))
    mark = pebble_log_mark(pebble)
    t0 = time.monotonic()
    run_certbot(["renew"], config_dir=root / "config", work_dir=root / "work",
                logs_dir=root / "logs", pebble=pebble)
    print(f"[measure] plain certbot renew over the same pulled tree: "
          f"{time.monotonic() - t0:.1f} s")
    assert validated_names(pebble, mark) == expected


def test_short_lived_past_half_life_is_renewed_once(bao: Bao, bao_acme: BaoAcme,
                                                    short_lived: ShortLived,
                                                    tmp_path: Path) -> None:
    """Past 1/2 of its lifetime (certbot's rule under 10 days): one new certificate."""
    issued = bao_acme.issued(short_lived.domain)
    version = kv_version(bao, short_lived.prefix, f"certificates/{NAME}")
    time.sleep(max(0.0, short_lived.half + 2 - time.time()))
    _, args = fresh_dirs(tmp_path)
    proc = kvault("renew", *args, env=short_lived.env)
    assert len(bao_acme.issued(short_lived.domain)) == len(issued) + 1, \
        proc.stdout + proc.stderr
    assert kv_version(bao, short_lived.prefix, f"certificates/{NAME}") == version + 1
    second = record(bao, short_lived.prefix, f"certificates/{NAME}")
    assert second is not None and second["serial"] != short_lived.serial
