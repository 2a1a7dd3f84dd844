"""DNS-01 with the least power: alias mode, an entry per zone, `dns check`, and the record of
how each certificate version was issued. Real OpenBao, Pebble and two PowerDNS, no mocks.

Two PowerDNS with an API key each:

- ``val`` serves the validation zone ``acme.example.net`` and ``example.org``;
- ``front`` serves ``example.com``, and answers val's zones too, read from val's
  database (``servers.start_powerdns(also_serve=...)``). Pebble asks ``front``
  (it asks one server), which follows ``_acme-challenge.www.example.com CNAME
  x.acme.example.net`` into val's zone, as a public resolver would.

val's key cannot write ``example.com`` (val has no such zone). front's key could
write val's zones through front's API (PowerDNS keys are server-wide), so which
credential wrote a record is read from each server's API request log
(``log_api=True``), and "nothing written" from the absence of any PATCH there.
What this cannot show: a provider whose API keys are scoped per zone on one
server (PowerDNS has none); two servers stand in for two scoped keys.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import servers
from helpers import (
    error_line,
    fresh_dirs,
    golden_env,
    kvault,
    layout_from_env,
    load_policy,
    one_line_error,
    orders,
    pdns_entry,
    record,
    scrubbed_env,
    seed,
)
from servers import Bao, Pebble, PowerDNS

from certbot_kvault._internal.dns import challenge as dns01
from certbot_kvault._internal.dns import entries as kvault_dns
from certbot_kvault._internal.dns import propagation
from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.store.limits import clean_issued

VAL_ZONE = "acme.example.net"


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def val(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PowerDNS]:
    server = servers.start_powerdns(tmp_path_factory.mktemp("pdns-val"),
                                    zones=(VAL_ZONE, "example.org"), log_api=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, val: PowerDNS) -> Iterator[PowerDNS]:
    server = servers.start_powerdns(tmp_path_factory.mktemp("pdns-front"),
                                    zones=("example.com",), also_serve=[val], log_api=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory, front: PowerDNS) -> Iterator[Pebble]:
    """A Pebble that asks ``front`` for every DNS-01 record."""
    server = servers.start_pebble(tmp_path_factory.mktemp("pebble-front"), front.dns_port)
    try:
        yield server
    finally:
        server.stop()


def rrset(pdns: PowerDNS, zone: str, name: str, rtype: str, content: str) -> None:
    """The operator's set-up, through ``pdns``'s own API."""
    body = {"rrsets": [{"name": name.rstrip(".") + ".", "type": rtype, "ttl": 1,
                        "changetype": "REPLACE",
                        "records": [{"content": content, "disabled": False}]}]}
    r = pdns.api("PATCH", f"zones/{zone}.", json=body)
    assert r.status_code == 204, r.text


def patches(pdns: PowerDNS, since: int) -> list[str]:
    return [r.split("/zones/", 1)[1] for r in pdns.api_requests(since) if r.startswith("PATCH")]


def txt_anywhere(*dns_servers: PowerDNS) -> list[str]:
    """Every TXT rrset in every zone these servers' APIs show."""
    out = []
    for pdns in dns_servers:
        for zone in pdns.zones():
            for rr in pdns.api("GET", f"zones/{zone}.").json().get("rrsets", []):
                if rr["type"] == "TXT":
                    out.append(rr["name"])
    return out


def entry(pdns: PowerDNS, *zones: str, **override: str) -> dict[str, Any]:
    out: dict[str, Any] = pdns_entry(pdns, **override)
    if zones:
        out["zones"] = list(zones)
    return out


def resolver(pdns: PowerDNS) -> str:
    return f"127.0.0.1:{pdns.dns_port}"


def token(bao: Bao, display_name: str, policies: list[str]) -> str:
    r = bao.api("POST", "auth/token/create", json={
        "policies": policies, "display_name": display_name, "ttl": "20m",
        "no_default_policy": policies != ["root"]})
    assert r.status_code == 200, r.text
    return str(r.json()["auth"]["client_token"])


def env_for(vault_env: dict[str, str], ca: Pebble, vault_token: str) -> dict[str, str]:
    return scrubbed_env(**{**vault_env, "VAULT_TOKEN": vault_token,
                           "REQUESTS_CA_BUNDLE": ca.ca_bundle,
                           "PATH": os.path.dirname(sys.executable) + os.pathsep
                           + os.environ.get("PATH", "")})


def certonly(ca: Pebble, root: Path, env: dict[str, str], *args: str,
             check: bool = True) -> Any:
    dirs = {k: root / k for k in ("config", "work", "logs")}
    return servers.run_certbot(
        ["certonly", "-a", "kvault", "--agree-tos", "--register-unsafely-without-email",
         *args], config_dir=dirs["config"], work_dir=dirs["work"], logs_dir=dirs["logs"],
        pebble=ca, env=env, check=check)


@pytest.fixture
def layout(vault_env: dict[str, str]) -> Layout:
    return layout_from_env()


# --------------------------------------------------------------------------- CNAMEs


def test_follow_cnames_at_the_authoritative_server(front: PowerDNS) -> None:
    tag = secrets.token_hex(3)
    ns = [propagation.NameServer("front", "127.0.0.1", front.dns_port)]

    def chain(name: str) -> list[str]:
        found, unasked = propagation.follow_cnames(name, lambda _: ns)
        assert unasked is None
        return found

    plain = f"_acme-challenge.plain-{tag}.example.com"
    assert chain(plain) == [plain]  # the zone's wildcard A is no alias
    one = f"_acme-challenge.one-{tag}.example.com"
    rrset(front, "example.com", one, "CNAME", f"one-{tag}.{VAL_ZONE}.")
    assert chain(one) == [one, f"one-{tag}.{VAL_ZONE}"]
    two = f"_acme-challenge.two-{tag}.example.com"
    rrset(front, "example.com", two, "CNAME", f"hop-{tag}.example.com.")
    rrset(front, "example.com", f"hop-{tag}.example.com", "CNAME", f"two-{tag}.{VAL_ZONE}.")
    assert chain(two) == [two, f"hop-{tag}.example.com", f"two-{tag}.{VAL_ZONE}"]

    loop = f"_acme-challenge.loop-{tag}.example.com"
    rrset(front, "example.com", loop, "CNAME", f"la-{tag}.example.com.")
    rrset(front, "example.com", f"la-{tag}.example.com", "CNAME", f"lb-{tag}.{VAL_ZONE}.")
    rrset(front, VAL_ZONE, f"lb-{tag}.{VAL_ZONE}", "CNAME", f"la-{tag}.example.com.")
    with pytest.raises(kvault_dns.DNSError, match="^CNAME loop: ") as e:
        propagation.follow_cnames(loop, lambda _: ns)
    assert f"la-{tag}.example.com -> lb-{tag}.{VAL_ZONE} -> la-{tag}" in str(e.value)

    long = f"_acme-challenge.long-{tag}.example.com"
    hops = [f"h{i}-{tag}.example.com" for i in range(propagation.MAX_CNAME_CHAIN + 1)]
    for here, there in zip([long, *hops], hops):
        rrset(front, "example.com", here, "CNAME", there + ".")
    with pytest.raises(kvault_dns.DNSError, match="CNAME chain longer than 8 from") as e:
        propagation.follow_cnames(long, lambda _: ns)
    assert "\n" not in str(e.value)
    # The same chain one hop shorter is followed to its end.
    assert chain(hops[0])[-1] == hops[-1]

    dead = [propagation.NameServer("dead", "127.0.0.1", servers.free_udp_tcp_port())]
    found, unasked = propagation.follow_cnames(plain, lambda _: dead)
    assert found == [plain] and unasked and "cannot ask whether" in unasked


# --------------------------------------------------------------------------- entries


def test_entry_set_picks_the_longest_zone_then_the_default(val: PowerDNS) -> None:
    def make(name: str, *zones: str) -> kvault_dns.DnsEntry:
        return kvault_dns.DnsEntry.from_record(name, entry(val, *zones), f"x/dns/{name}")

    com, sub = make("com", "example.com"), make("sub", "Sub.Example.COM.")
    legacy = make("legacy")
    assert sub.zones == ("sub.example.com",)
    assert val.api_key not in repr(com) and "example.com" in repr(com)
    picks = kvault_dns.EntrySet(default=legacy, zoned=[com, sub], where="x/dns")
    assert picks.for_name("_acme-challenge.www.example.com").name == "com"
    assert picks.for_name("x.sub.example.com").name == "sub"
    assert picks.for_name("notsub.example.com").name == "com"
    assert picks.for_name("example.org").name == "legacy"
    # No default: one line naming every entry's zones and the fix.
    with pytest.raises(kvault_dns.DNSError) as e:
        kvault_dns.EntrySet(default=None, zoned=[com], where="x/dns").for_name("a.example.org")
    assert str(e.value).startswith("No DNS provider entry in Vault hosts a.example.org")
    assert "com: example.com" in str(e.value) and "--zone" in str(e.value)
    # A default that names its zones serves those only.
    with pytest.raises(kvault_dns.DNSError, match="hosts a.example.org"):
        kvault_dns.EntrySet(default=com, zoned=[com], where="x/dns").for_name("a.example.org")
    for bad in (["ex ample.com"], "a..b", [7], ["x" * 64 + ".com"], ["ok.com"] * 101):
        with pytest.raises(kvault_dns.DNSError, match="'zones'"):
            kvault_dns.parse_zones(bad, "x/dns/bad")
    assert kvault_dns.parse_zones("b.com, a.com a.com", "x") == ("a.com", "b.com")


def test_entries_a_token_may_not_read_are_someone_elses(bao: Bao, vault_env: dict[str, str],
                                                        val: PowerDNS, layout: Layout,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """renewer.hcl lists entry names; dns-entry.hcl reads one entry: the run chooses among
    the entries it may read, and another entry's zones are not its business."""
    prefix = vault_env["KVAULT_PREFIX"]
    layout.save_dns("validation", entry(val, VAL_ZONE))
    layout.save_dns("org", entry(val, "example.org"))
    policies = [load_policy(bao, "renewer", prefix),
                load_policy(bao, "dns-entry", prefix, entry="validation")]
    monkeypatch.setenv("VAULT_TOKEN", token(bao, "scoped", policies))
    scoped = layout_from_env()
    entries = kvault_dns.load_entries(scoped, None)
    assert entries.default is not None and entries.default.name == "validation"
    assert [e.name for e in entries.zoned] == ["validation"]
    with pytest.raises(kvault_dns.DNSError, match="hosts b.example.org"):
        entries.for_name("b.example.org")
    assert sorted(scoped.list_dns()) == ["org", "validation"]


def test_dns_add_zones(vault_env: dict[str, str], val: PowerDNS, layout: Layout) -> None:
    args = ["dns", "add", "val", "--provider", "powerdns", "--option", "auth_token=@-",
            "--option", f"pdns_server={val.api_url}", "--zone", "ACME.example.net.",
            "--zone", "example.org", "--zone", VAL_ZONE]
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "certbot-kvault"),
                           *args], input=val.api_key + "\n", capture_output=True, text=True,
                          env=dict(os.environ), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "zones: acme.example.net, example.org" in proc.stdout
    assert val.api_key not in proc.stdout + proc.stderr
    stored = layout.load_dns("val")
    assert stored is not None and stored["zones"] == [VAL_ZONE, "example.org"]
    listed = kvault("dns", "list").stdout.splitlines()
    assert listed[1].split() == ["val", "powerdns", f"{VAL_ZONE},example.org",
                                 "auth_token,pdns_server"]
    proc = kvault("dns", "add", "bad", "--provider", "powerdns", "--option",
                  f"pdns_server={val.api_url}", "--zone", "bad zone", check=False)
    assert "is not a DNS name" in one_line_error(proc)
    assert layout.load_dns("bad") is None


# --------------------------------------------------------------------------- dns check


def test_dns_check(vault_env: dict[str, str], val: PowerDNS, front: PowerDNS,
                   layout: Layout) -> None:
    tag = secrets.token_hex(3)
    name, target = f"chk-{tag}.example.com", f"chk-{tag}.{VAL_ZONE}"
    rrset(front, "example.com", f"_acme-challenge.{name}", "CNAME", target + ".")
    layout.save_dns("validation", entry(val, VAL_ZONE))
    layout.save_dns("wrongkey", entry(val, VAL_ZONE, auth_token="wrong-" + tag))
    layout.save_dns("nozones", entry(val))  # val's account hosts no example.com
    check = ["dns", "check", "--dns-resolver", resolver(front), "--propagation-timeout", "3"]
    before = txt_anywhere(val, front)

    marks = val.log_mark(), front.log_mark()
    proc = kvault(*check, "validation", "--domain", name)
    lines = proc.stdout.splitlines()
    print("\n" + proc.stdout)
    assert [ln.split(":")[0] for ln in lines] == ["alias", "zone", "created", "answered",
                                                   "deleted", "ok"]
    assert lines[0].startswith(f"alias: _acme-challenge.{name} -> {target} (CNAME) (")
    assert f"is in zone {VAL_ZONE} of {layout.where('dns', 'validation')}" in lines[1]
    assert all(ln.endswith(" s)") for ln in lines)
    assert patches(val, marks[0]) == [f"{VAL_ZONE}."] * 2 and not patches(front, marks[1])
    assert val.api_key not in proc.stdout + proc.stderr

    # A wrong key, a zone the account does not host, a server that never answers.
    cases = {
        "wrongkey": ([name], [], "wrong API key/credentials"),
        "nozones": ([f"plain-{tag}.example.com"], [],
                    f"hosts no zone for _acme-challenge.plain-{tag}.example.com"),
        "validation": ([name], ["--dns-alias", f"{name}={target}", "--dns-resolver",
                                f"127.0.0.1:{servers.free_udp_tcp_port()}"],
                       "DNS propagation timed out after 3 s"),
    }
    for entry_name, (names, extra, expect) in cases.items():
        mark = val.log_mark()
        proc = kvault(*check, entry_name, *[a for n in names for a in ("--domain", n)], *extra,
                      check=False)
        line = one_line_error(proc)
        print(f"[{entry_name}] {line}")
        assert proc.returncode == 1 and line.startswith("error: ") and expect in line
        assert "--propagation-timeout" in line or entry_name != "validation"
        assert val.api_key not in proc.stdout + proc.stderr
        writes = patches(val, mark)
        if entry_name == "validation":  # created, then removed after the timeout
            assert writes == [f"{VAL_ZONE}."] * 2 and "deleted: TXT" in proc.stdout
        else:
            assert writes == []
    assert txt_anywhere(val, front) == before


# --------------------------------------------------------------------------- issuance


def test_alias_mode_issues_renews_and_records_how(bao: Bao, vault_env: dict[str, str],
                                                  val: PowerDNS, front: PowerDNS, ca: Pebble,
                                                  layout: Layout, tmp_path: Path) -> None:
    """The only entry in Vault hosts acme.example.net; www.example.com's _acme-challenge is
    a CNAME there. certonly issues, then a stateless renew from an empty dir with a token
    that may read that one entry renews the same way; `show` tells how, without secrets."""
    prefix = vault_env["KVAULT_PREFIX"]
    tag = secrets.token_hex(3)
    name, target = f"www-{tag}.example.com", f"www-{tag}.{VAL_ZONE}"
    rrset(front, "example.com", f"_acme-challenge.{name}", "CNAME", target + ".")
    layout.save_dns("validation", entry(val, VAL_ZONE))
    assert "example.com" not in val.zones()
    denied = val.api("PATCH", "zones/example.com.", json={"rrsets": []})
    assert denied.status_code in (404, 422)  # the entry's key cannot write example.com

    issuer = token(bao, "alias-issuer", ["root"])
    marks = val.log_mark(), front.log_mark()
    proc = certonly(ca, tmp_path / "issue", env_for(vault_env, ca, issuer), "-d", name,
                    "--kvault-dns-resolver", resolver(front), "--kvault-dns-check")
    assert "Traceback" not in proc.stderr
    assert f"kvault dns check: alias: _acme-challenge.{name} -> {target} (CNAME)" in proc.stdout
    # The check's record, then the challenge's: each created and deleted, in val's zone.
    assert patches(val, marks[0]) == [f"{VAL_ZONE}."] * 4
    assert patches(front, marks[1]) == []  # example.com never written
    assert val.txt_records(target) == [] and front.txt_records(f"_acme-challenge.{name}") == []
    record = layout.read_lineage_raw(name)
    assert record is not None and "kvault_dns =" not in record.data["renewal"]
    account = record.data["renewal"].split("account = ")[1].split()[0]

    shown = kvault("show", name).stdout
    print("\n" + shown)
    assert (f"dns: {name}: TXT _acme-challenge.{name} -> {target} (CNAME) in zone "
            f"{VAL_ZONE} with entry dns/validation") in shown
    assert "challenge: dns-01" in shown and f"account: {account}" in shown
    assert f"acme_server: {ca.directory_url}" in shown
    assert "vault_token: token-alias-issuer (entity " in shown or \
        "vault_token: token-alias-issuer" in shown
    as_json = json.loads(kvault("show", name, "--json").stdout)["issued"]
    assert as_json["dns"][0]["entry"] == "validation" and as_json["dns"][0]["txt"] == target
    secrets_seen = [val.api_key, front.api_key, issuer, bao.token]
    for text in (shown, json.dumps(as_json), json.dumps(record.data["issued"])):
        assert not [s for s in secrets_seen if s in text]
    assert "private_key" not in json.dumps(as_json) and "BEGIN" not in json.dumps(as_json)

    # Stateless renew: empty dir, a token holding renewer.hcl and this one entry only.
    renewer = token(bao, "alias-renewer", [load_policy(bao, "renewer", prefix),
                                           load_policy(bao, "dns-entry", prefix,
                                                       entry="validation")])
    _, args = fresh_dirs(tmp_path, "renewer")
    marks = val.log_mark(), front.log_mark()
    proc = kvault("renew", *args, "--due-within", "3650", env=env_for(vault_env, ca, renewer))
    assert f"renewed: {name}" in proc.stdout, proc.stdout + proc.stderr
    # --kvault-dns-check came with the renewal conf: checked again, then renewed.
    assert patches(val, marks[0]) == [f"{VAL_ZONE}."] * 4 and patches(front, marks[1]) == []
    assert val.txt_records(target) == []
    renewed = layout.read_lineage_raw(name)
    assert renewed is not None and int(renewed.data["version"]) == 2
    issued = renewed.data["issued"]
    assert issued["vault_display_name"] == "token-alias-renewer"
    assert issued["dns"][0]["entry"] == "validation" and issued["dns"][0]["txt"] == target
    assert renewed.data["serial"] != record.data["serial"]
    # Version 1 still says who issued it (KV v2 keeps per-version data).
    first = bao.api("GET", f"secret/data/{prefix}/certificates/{name}?version=1").json()
    assert first["data"]["data"]["issued"]["vault_display_name"] == "token-alias-issuer"


@pytest.mark.parametrize("case", ["loop", "too-long", "no-entry"])
def test_alias_errors_write_nothing(case: str, vault_env: dict[str, str], bao: Bao,
                                    val: PowerDNS, front: PowerDNS, ca: Pebble, layout: Layout,
                                    tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    name = f"{case}-{tag}.example.com"
    challenge = f"_acme-challenge.{name}"
    layout.save_dns("validation", entry(val, VAL_ZONE))
    if case == "loop":
        rrset(front, "example.com", challenge, "CNAME", f"a-{tag}.{VAL_ZONE}.")
        rrset(front, VAL_ZONE, f"a-{tag}.{VAL_ZONE}", "CNAME", challenge + ".")
        expect = f"CNAME loop: {challenge} -> a-{tag}.{VAL_ZONE} -> {challenge}"
    elif case == "too-long":
        hops = [f"h{i}-{tag}.{VAL_ZONE}" for i in range(propagation.MAX_CNAME_CHAIN + 1)]
        for here, there in zip([challenge, *hops], hops):
            rrset(front, "example.com" if here == challenge else VAL_ZONE, here, "CNAME",
                  there + ".")
        expect = f"CNAME chain longer than 8 from {challenge}"
    else:
        rrset(front, "example.com", challenge, "CNAME", f"x-{tag}.example.org.")
        expect = f"No DNS provider entry in Vault hosts x-{tag}.example.org"
    marks = val.log_mark(), front.log_mark()
    proc = certonly(ca, tmp_path / "run", env_for(vault_env, ca, bao.token), "-d", name,
                    "--kvault-dns-resolver", resolver(front), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    line = error_line(proc)
    print(f"\n[{case}] {line}")
    assert line.startswith("kvault: ") and expect in line
    assert patches(val, marks[0]) == [] and patches(front, marks[1]) == []
    assert layout.list_lineages() == []


def test_one_order_two_zones_two_entries(bao: Bao, vault_env: dict[str, str], val: PowerDNS,
                                         front: PowerDNS, ca: Pebble, layout: Layout,
                                         tmp_path: Path) -> None:
    """a.example.com (front's entry) and b.example.org (val's entry) in one order, no
    --kvault-dns; --kvault-dns-check runs first, then each TXT goes through its own key.
    c.example.com rides along through --kvault-dns-alias into the validation zone. A
    stateless renew from Vault does it all again with no flag."""
    tag = secrets.token_hex(3)
    a, b, c = f"a-{tag}.example.com", f"b-{tag}.example.org", f"c-{tag}.example.com"
    c_target = f"c-{tag}.{VAL_ZONE}"
    rrset(front, "example.com", f"_acme-challenge.{c}", "CNAME", c_target + ".")  # for the CA
    layout.save_dns("com", entry(front, "example.com"))
    layout.save_dns("org", entry(val, "example.org"))
    layout.save_dns("validation", entry(val, VAL_ZONE))
    marks = val.log_mark(), front.log_mark()
    proc = certonly(ca, tmp_path / "issue", env_for(vault_env, ca, bao.token), "-d", a,
                    "-d", b, "-d", c, "--kvault-dns-resolver", resolver(front),
                    "--kvault-dns-check", "--kvault-dns-alias", f"{c}={c_target}")
    out = proc.stdout + proc.stderr
    assert f"kvault dns check: created: TXT _acme-challenge.{a} with " \
           f"{layout.where('dns', 'com')}" in out
    assert f"_acme-challenge.{c} -> {c_target} (--kvault-dns-alias)" in out
    # Each server's API (each key) changed its own zones only: check + real, create + delete.
    expected_val = sorted(["example.org."] * 4 + [f"{VAL_ZONE}."] * 4)
    assert patches(front, marks[1]) == ["example.com."] * 4
    assert sorted(patches(val, marks[0])) == expected_val
    assert [n for n in txt_anywhere(val, front) if tag in n] == []
    record = layout.read_lineage_raw(a)
    assert record is not None and sorted(record.data["domains"]) == sorted([a, b, c])
    assert "kvault_dns_check = True" in record.data["renewal"]
    assert f"kvault_dns_alias = {c}={c_target}" in record.data["renewal"]
    used = {d["domain"]: (d["entry"], d["txt"]) for d in record.data["issued"]["dns"]}
    assert used == {a: ("com", f"_acme-challenge.{a}"), b: ("org", f"_acme-challenge.{b}"),
                    c: ("validation", c_target)}

    # A stateless renew from Vault, no flag: the same entries and alias again.
    _, args = fresh_dirs(tmp_path, "renewer")
    marks = val.log_mark(), front.log_mark()
    proc = kvault("renew", *args, "--due-within", "3650",
                  env=env_for(vault_env, ca, bao.token))
    assert f"renewed: {a}" in proc.stdout, proc.stdout + proc.stderr
    assert patches(front, marks[1]) == ["example.com."] * 4
    assert sorted(patches(val, marks[0])) == expected_val
    renewed = layout.read_lineage_raw(a)
    assert renewed is not None and int(renewed.data["version"]) == 2
    assert {d["domain"]: (d["entry"], d["txt"]) for d in renewed.data["issued"]["dns"]} == used


def test_parse_aliases() -> None:
    assert dns01.parse_aliases("www.Example.com=x.acme.example.net., *.b.com=y.c.net") == {
        "_acme-challenge.www.example.com": "x.acme.example.net",
        "_acme-challenge.b.com": "y.c.net"}
    assert dns01.parse_aliases(None) == {}
    for bad in ("www.example.com", "www.example.com=bad target", "=x.net"):
        with pytest.raises(kvault_dns.DNSError, match="--kvault-dns-alias"):
            dns01.parse_aliases(bad)


def test_dns_check_first_keeps_bad_credentials_from_the_ca(vault_env: dict[str, str],
                                                           bao: Bao, val: PowerDNS,
                                                           front: PowerDNS, ca: Pebble,
                                                           layout: Layout,
                                                           tmp_path: Path) -> None:
    layout.save_dns("validation", entry(val, "example.org", auth_token="wrong"))
    before = orders(ca)
    proc = certonly(ca, tmp_path / "run", env_for(vault_env, ca, bao.token), "-d",
                    f"bad-{secrets.token_hex(3)}.example.org", "--kvault-dns-resolver",
                    resolver(front), "--kvault-dns-check", check=False)
    line = error_line(proc)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--kvault-dns-check failed, nothing was ordered" in line
    assert "wrong API key/credentials" in line
    assert orders(ca) == before


# --------------------------------------------------------------------------- the record


def test_issued_field_is_bounded_data() -> None:
    raw = {"host": "h", "account": "x" * 1000, "evil": "y", "challenge": 7,
           "dns": [{"domain": "a", "entry": "e", "secret": "no"}, "junk"] + [{"zone": "z"}] * 200}
    clean = clean_issued(raw)
    assert clean is not None
    assert clean["host"] == "h" and len(clean["account"]) == 255
    assert "evil" not in clean and "challenge" not in clean
    assert clean["dns"][0] == {"domain": "a", "entry": "e"} and len(clean["dns"]) == 99
    assert clean_issued("not json") is None and clean_issued(["x"]) is None
    assert clean_issued(json.dumps({"host": "h"})) == {"host": "h"}


def test_issued_stays_with_its_version_and_works_on_kv1(bao: Bao, golden: Any, kv1_mount: str,
                                                        vault_env: dict[str, str],
                                                        tmp_path: Path) -> None:
    """A conf-only change (same certificate version) keeps the version's record; a KV v1
    mount keeps it too (for the latest version, all KV v1 has)."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    first = record(bao, prefix, "certificates/calm")
    assert first is not None and first["issued"]["challenge"] == "http-01"
    assert first["issued"]["authenticator"] == "standalone"
    # Another token pushes the conf change: a record made anew would name it.
    env = golden_env(bao, golden, prefix, token(bao, "conf-pusher", ["root"]))
    root, args = fresh_dirs(tmp_path)
    kvault("pull", *args, env=env)
    conf = root / "config" / "renewal" / "calm.conf"
    conf.write_text(conf.read_text().replace("[renewalparams]",
                                             "[renewalparams]\nkvault_dns_check = True"))
    assert "1 pushed" in kvault("push", *args, env=env).stdout
    after = record(bao, prefix, "certificates/calm")
    assert after is not None and "kvault_dns_check = True" in after["renewal"]
    assert after["version"] == first["version"]
    assert after["issued"] == first["issued"]
    assert first["issued"]["vault_display_name"] != "token-conf-pusher"

    pusher = token(bao, "v1-pusher", ["root"])
    v1 = golden_env(bao, golden, prefix, pusher, KVAULT_MOUNT=kv1_mount)
    assert kvault("push", *args, env=v1).stdout.startswith("3 pushed")  # lineage, 2 accounts
    r = bao.api("GET", f"{kv1_mount}/{prefix}/certificates/calm")
    assert r.status_code == 200, r.text
    on_v1 = r.json()["data"]["issued"]
    assert on_v1["challenge"] == "http-01"
    assert on_v1["vault_display_name"] == "token-v1-pusher"
    assert on_v1["account"] == first["issued"]["account"]
    shown = kvault("show", "calm", env=v1).stdout
    assert "challenge: http-01" in shown and "vault_token: token-v1-pusher" in shown
    assert bao.token not in shown and pusher not in shown


def test_notes_newest_per_name_and_a_day_at_most(tmp_path: Path) -> None:
    """What the plugin notes in the config dir and the push reads back (a fake clock)."""
    from certbot_kvault._internal.sync import issued

    config = str(tmp_path)
    old = issued.note(config, [{"domain": "a.example.com", "entry": "old", "txt": "t1"}])
    assert old is not None
    new = issued.note(config, [{"domain": "A.example.com", "entry": "new", "txt": "t2"},
                               {"domain": "b.example.com", "entry": "b", "secret": "x"}])
    assert new is not None and os.stat(new).st_mode & 0o777 == 0o600
    found, host = issued.dns_for(config, ["a.example.com", "b.example.com", "c.example.com"])
    assert [(d["domain"], d["entry"]) for d in found] == [("A.example.com", "new"),
                                                          ("b.example.com", "b")]
    assert host and "secret" not in found[1]
    later = json.loads(Path(new).read_text())["at"] + issued.NOTE_MAX_AGE + 1
    assert issued.dns_for(config, ["a.example.com"], now=later) == ([], None)
    assert not os.path.exists(old) and not os.path.exists(new)
