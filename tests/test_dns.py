"""DNS-01 through the kvault authenticator: real OpenBao, PowerDNS and Pebble, no mocks.

Unit level: the provider entry, NS/SOA discovery and the TXT poller against
PowerDNS. End to end: certbot certonly/renew with ``-a kvault``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import stubs
from helpers import (
    ZONE,
    certonly_args,
    cli,
    error_line,
    kvault,
    layout_from_env,
    pdns_entry,
    resolver_opt,
)
from servers import Pebble, PowerDNS, run_certbot

from certbot_kvault._internal.dns import entries as kvault_dns
from certbot_kvault._internal.dns import propagation
from certbot_kvault._internal.store.layout import Layout

CHALLENGE = f"_acme-challenge.{ZONE}"


# --------------------------------------------------------------------------- helpers


def set_txt(pdns: PowerDNS, name: str, values: list[str]) -> None:
    """Replace (or with no values delete) the TXT rrset at ``name`` through the API."""
    fq = name.rstrip(".") + "."
    rrset: dict[str, Any] = {"name": fq, "type": "TXT", "ttl": 1}
    if values:
        rrset.update(changetype="REPLACE",
                     records=[{"content": f'"{v}"', "disabled": False} for v in values])
    else:
        rrset["changetype"] = "DELETE"
    r = pdns.api("PATCH", f"zones/{ZONE}.", json={"rrsets": [rrset]})
    assert r.status_code == 204, r.text


def pdns_ns(pdns: PowerDNS) -> propagation.NameServer:
    return propagation.NameServer("pdns", "127.0.0.1", pdns.dns_port)


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    assert "ConnectionError" not in out, out
    assert "Public Suffix" not in out, out


@pytest.fixture
def kv_env(vault_env: dict[str, str]) -> dict[str, str]:
    """The env certbot runs with: Vault settings, and this venv's bin first on PATH.

    tldextract is deliberately *not* pinned offline here: the plugin itself must keep
    lexicon's Public Suffix List fetch off the network and out of the output.
    """
    env = dict(vault_env)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return env


@pytest.fixture
def layout(vault_env: dict[str, str]) -> Layout:
    return layout_from_env()


@pytest.fixture
def pdns_in_vault(layout: Layout, pdns: PowerDNS) -> str:
    layout.save_dns("pdns", pdns_entry(pdns))
    return "pdns"


# --------------------------------------------------------------------------- unit level


def test_parse_server() -> None:
    assert propagation.parse_server("127.0.0.1:5353") == propagation.NameServer(
        "127.0.0.1", "127.0.0.1", 5353)
    assert propagation.parse_server("192.0.2.1").port == 53
    assert propagation.parse_server("[::1]:5300") == propagation.NameServer("::1", "::1", 5300)
    assert propagation.parse_server("::1").port == 53
    assert propagation.parse_server("localhost:53").address in ("127.0.0.1", "::1")
    for bad in ("127.0.0.1:0", "127.0.0.1:x", ":53", "[::1]:99999"):
        with pytest.raises(kvault_dns.DNSError, match="HOST\\[:PORT\\]"):
            propagation.parse_server(bad)


def test_find_authoritative_against_pdns(pdns: PowerDNS) -> None:
    resolver = propagation.make_resolver(pdns_ns(pdns))
    zone, servers = propagation.find_authoritative(CHALLENGE, resolver, port=pdns.dns_port)
    assert zone == ZONE
    assert servers == [propagation.NameServer("ns1.example.com", "127.0.0.1", pdns.dns_port)]
    # A deeper, non-existent name walks up to the same zone.
    zone, _ = propagation.find_authoritative(f"_acme-challenge.a.b.{ZONE}", resolver,
                                             port=pdns.dns_port)
    assert zone == ZONE


def test_find_authoritative_unknown_zone(pdns: PowerDNS) -> None:
    resolver = propagation.make_resolver(pdns_ns(pdns), lifetime=3)
    with pytest.raises(kvault_dns.DNSError) as e:
        propagation.find_authoritative("_acme-challenge.example.org", resolver,
                                       port=pdns.dns_port)
    msg = str(e.value)
    assert "\n" not in msg and "--kvault-dns-resolver" in msg and "example.org" in msg


def test_propagation_waits_about_as_long_as_the_delay(pdns: PowerDNS) -> None:
    """The record appears 1.5 s after the poller starts; the poller sees it soon after."""
    name = f"_delay-{secrets.token_hex(4)}.{ZONE}"
    values = {"first-" + secrets.token_hex(8), "second-" + secrets.token_hex(8)}
    resolver = propagation.make_resolver(pdns_ns(pdns))
    _, servers = propagation.find_authoritative(name, resolver, port=pdns.dns_port)
    delay = 1.5
    timer = threading.Timer(delay, set_txt, args=(pdns, name, sorted(values)))
    try:
        t0 = time.monotonic()
        timer.start()
        waited = propagation.wait_for_txt({name: values}, {name: servers}, timeout=20)
        total = time.monotonic() - t0
    finally:
        timer.cancel()
        set_txt(pdns, name, [])
    print(f"\n[measure] TXT appeared after {delay:.1f} s; propagation check returned after "
          f"{waited:.2f} s")
    assert delay <= waited <= delay * 1.25 + propagation.POLL_MIN_INTERVAL + 0.3
    assert total < delay + 1.0


def test_propagation_needs_every_value(pdns: PowerDNS) -> None:
    """Two values at one name (wildcard + apex): one alone is not enough."""
    name = f"_two-{secrets.token_hex(4)}.{ZONE}"
    set_txt(pdns, name, ["a-value"])
    try:
        t0 = time.monotonic()
        with pytest.raises(propagation.PropagationTimeout) as e:
            propagation.wait_for_txt({name: {"a-value", "b-value"}},
                                     {name: [pdns_ns(pdns)]}, timeout=1.0)
        assert 1.0 <= time.monotonic() - t0 < 2.0
        msg = str(e.value)
        assert "\n" not in msg and "1 of 2 value(s) missing" in msg
        assert "--kvault-propagation-timeout" in msg
        set_txt(pdns, name, ["a-value", "b-value"])
        assert propagation.wait_for_txt({name: {"a-value", "b-value"}},
                                        {name: [pdns_ns(pdns)]}, timeout=5) < 0.5
    finally:
        set_txt(pdns, name, [])


def test_query_txt_dead_server_is_an_error_not_an_empty_answer() -> None:
    import servers

    dead = propagation.NameServer("dead", "127.0.0.1", servers.free_udp_tcp_port())
    with pytest.raises(kvault_dns.DNSError, match="dead"):
        propagation.query_txt(dead, CHALLENGE, timeout=0.5)


def test_lexicon_config_and_entry(pdns: PowerDNS) -> None:
    entry = kvault_dns.DnsEntry.from_record("pdns", pdns_entry(pdns), "secret/x/dns/pdns")
    assert pdns.api_key not in repr(entry)
    config = kvault_dns.lexicon_config(entry, ZONE, 60)
    assert config.resolve("lexicon:provider_name") == "powerdns"
    assert config.resolve("lexicon:delegated") == ZONE
    assert config.resolve("lexicon:powerdns:auth_token") == pdns.api_key
    with pytest.raises(kvault_dns.DNSError, match="Did you mean powerdns"):
        kvault_dns.check_provider("powerdnz", "dns/x")
    with pytest.raises(kvault_dns.DNSError, match="auth_token, pdns_disable_notify"):
        kvault_dns.check_options("powerdns", {"api_key": "x"}, "dns/x")


def test_lexicon_provider_discovery_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """dns-lexicon has no public provider discovery; its private one must still work with the
    installed lexicon, and a lexicon that moved it must be named, not silently worked around."""
    providers = kvault_dns.available_providers()
    options = kvault_dns.provider_option_names("powerdns") or []
    assert providers.get("powerdns") is True and "auth_token" in options, (
        "dns-lexicon changed lexicon._private.discovery (find_providers/load_provider_module) "
        f"or its providers' parsers: powerdns={providers.get('powerdns')}, options={options}")
    monkeypatch.setitem(sys.modules, "lexicon._private.discovery", None)
    with pytest.raises(kvault_dns.DNSError,
                       match=r"dns-lexicon \S+ has no lexicon\._private\.discovery\."):
        kvault_dns.check_provider("powerdns", "dns/x")
    assert kvault_dns.provider_option_names("powerdns") is None


def test_load_entry_default_and_errors(layout: Layout, pdns: PowerDNS) -> None:
    with pytest.raises(kvault_dns.DNSError, match="No DNS provider entry in Vault"):
        kvault_dns.load_entry(layout, None)
    layout.save_dns("only", pdns_entry(pdns))
    assert kvault_dns.load_entry(layout, None).name == "only"
    layout.save_dns("second", pdns_entry(pdns))
    with pytest.raises(kvault_dns.DNSError, match="choose one with --kvault-dns"):
        kvault_dns.load_entry(layout, None)
    with pytest.raises(kvault_dns.DNSError, match="dns add nope"):
        kvault_dns.load_entry(layout, "nope")
    layout.save_dns("noprov", {"auth_token": "x"})
    with pytest.raises(kvault_dns.DNSError, match="no 'provider' field"):
        kvault_dns.load_entry(layout, "noprov")


def test_quiet_tldextract_keeps_psl_fetch_failures_out_of_the_log(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pdns: PowerDNS,
        caplog: pytest.LogCaptureFixture) -> None:
    """Even with a (failing, local) PSL URL set by the user, no warning or traceback shows."""
    import servers
    from lexicon.client import Client

    dead = servers.free_port()
    monkeypatch.setenv("TLDEXTRACT_CACHE_PATH", str(tmp_path / "tld"))
    monkeypatch.setenv("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", f"http://127.0.0.1:{dead}/psl")
    entry = kvault_dns.DnsEntry.from_record("pdns", pdns_entry(pdns), "dns/pdns")
    caplog.set_level("DEBUG")
    caplog.set_level("DEBUG", logger="tldextract")  # other code may have raised its level
    with kvault_dns.quiet_tldextract():
        Client(kvault_dns.lexicon_config(entry, ZONE, 60))
    assert os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] == f"http://127.0.0.1:{dead}/psl"
    tld = [r for r in caplog.records if r.name.startswith("tldextract")]
    assert tld, "expected tldextract to try the local URL"
    assert all(r.levelno == logging.DEBUG and r.exc_info is None for r in tld)


# --------------------------------------------------------------------------- CLI


def test_cli_dns_add_list_rm(vault_env: dict[str, str], pdns: PowerDNS,
                             tmp_path: Path) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text(pdns.api_key + "\n")
    r = cli("dns", "add", "pdns", "--provider", "powerdns",
            "--option", f"auth_token=@{secret_file}", "--option", f"pdns-server={pdns.api_url}",
            "--option", "pdns_server_id=localhost")
    assert r.exit_code == 0, r.output
    assert pdns.api_key not in r.output
    assert "auth_token, pdns_server, pdns_server_id" in r.output
    assert layout_from_env().load_dns("pdns") == pdns_entry(pdns)

    r = cli("dns", "add", "pdns", "--provider", "powerdns", "--option", "auth_token=other")
    assert r.exit_code == 1 and "already exists; pass --force" in r.output
    assert layout_from_env().load_dns("pdns") == pdns_entry(pdns)

    r = cli("dns", "add", "bad", "--provider", "powerdnz", "--option", "auth_token=sekrit")
    assert r.exit_code == 1 and r.output == (
        "error: Unknown DNS provider 'powerdnz' (--provider): it must be a dns-lexicon "
        "provider name, e.g. powerdns, cloudflare, route53. Did you mean powerdns?\n")
    assert "sekrit" not in r.output and "--force" not in r.output  # nothing to replace
    r = cli("dns", "add", "bad", "--provider", "powerdns", "--option", "api_key=sekrit")
    assert r.exit_code == 1 and "has no option api_key" in r.output
    assert "sekrit" not in r.output
    r = cli("dns", "add", "bad", "--provider", "powerdns", "--option", "novalue")
    assert r.exit_code == 2 and "KEY=VALUE" in r.output

    r = cli("dns", "add", "cf", "--provider", "cloudflare", "--option", "auth_token=cfsecret")
    assert r.exit_code == 0, r.output
    r = cli("dns", "list")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == ["NAME", "PROVIDER", "ZONES", "OPTIONS"]
    assert lines[1].split() == ["cf", "cloudflare", "-", "auth_token"]
    assert lines[2].split() == ["pdns", "powerdns", "-", "auth_token,pdns_server,pdns_server_id"]
    assert pdns.api_key not in r.output and "cfsecret" not in r.output
    r = cli("dns", "list", "--json")
    assert json.loads(r.output) == [
        {"name": "cf", "provider": "cloudflare", "zones": [], "options": ["auth_token"]},
        {"name": "pdns", "provider": "powerdns", "zones": [],
         "options": ["auth_token", "pdns_server", "pdns_server_id"]}]

    (tmp_path / "new").write_text("new\n")
    r = cli("dns", "add", "cf", "--provider", "cloudflare", "--option",
            f"auth_token=@{tmp_path / 'new'}", "--force", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["options"] == ["auth_token"]
    assert "new" not in r.output.replace('"name"', "")
    assert layout_from_env().load_dns("cf") == {"provider": "cloudflare", "auth_token": "new"}

    r = cli("dns", "rm", "cf")
    assert r.exit_code == 0 and "deleted" in r.output
    assert layout_from_env().load_dns("cf") is None
    r = cli("dns", "rm", "cf")
    assert r.exit_code == 1 and "No DNS provider entry" in r.output


def test_cli_dns_add_real_subprocess_never_echoes(vault_env: dict[str, str],
                                                   pdns: PowerDNS) -> None:
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "certbot-kvault"), "dns", "add", "p2",
         "--provider", "powerdns", "--option", "auth_token=@-",
         "--option", f"pdns_server={pdns.api_url}", "-vv"],
        input=pdns.api_key + "\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert pdns.api_key not in proc.stdout + proc.stderr
    assert layout_from_env().load_dns("p2")["auth_token"] == pdns.api_key  # type: ignore[index]


# --------------------------------------------------------------------------- end to end


def _assert_vault_holds_lineage(layout: Layout, name: str = ZONE) -> dict[str, Any]:
    entry = layout.read_lineage_raw(name)
    assert entry is not None, f"no certificates/{name} in Vault"
    d = entry.data
    assert sorted(d["domains"]) == sorted([ZONE, f"*.{ZONE}"])
    assert d["not_after"].endswith("Z")
    assert d["auto_renewable"] is True
    assert list(layout.list_accounts()), "no account in Vault"
    return d


def test_certonly_wildcard_and_apex_then_renew_from_pulled_tree(
        kv_env: dict[str, str], pdns_in_vault: str, pdns: PowerDNS, pebble: Pebble,
        certbot: Any, certbot_dirs: Any, layout: Layout, tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = certbot(*certonly_args("--kvault-dns-resolver", resolver_opt(pdns)), env=kv_env)
    issued = time.monotonic() - t0
    print(f"\n[measure] certbot certonly -a kvault (example.com + *.example.com, DNS-01 "
          f"via PowerDNS, Pebble): {issued:.2f} s end to end")
    no_traceback(proc)
    log = (certbot_dirs.logs_dir / "letsencrypt.log").read_text()
    waited = re.search(r"DNS records answered by every server after ([0-9.]+) s", log)
    assert waited, "no propagation line in letsencrypt.log"
    print(f"[measure] of which the propagation check waited {waited.group(1)} s "
          "(both TXT values at _acme-challenge.example.com)")
    assert pdns.txt_records(CHALLENGE) == []
    record = _assert_vault_holds_lineage(layout)
    assert record["version"] in (1, "1")
    renewal = record["renewal"]
    assert "authenticator = kvault" in renewal
    assert "kvault_dns = pdns" in renewal
    assert f"kvault_dns_resolver = {resolver_opt(pdns)}" in renewal
    assert pdns.api_key not in renewal

    # A fresh machine: pull the tree from Vault and renew with DNS-01, no file of ours.
    fresh = tmp_path / "fresh"
    dirs = {k: fresh / k for k in ("config", "work", "logs")}
    kvault("pull", "--config-dir", str(dirs["config"]), "--work-dir", str(dirs["work"]),
           "--logs-dir", str(dirs["logs"]), env={**os.environ, **kv_env})
    t0 = time.monotonic()
    proc = run_certbot(["renew", "--force-renewal"], config_dir=dirs["config"],
                       work_dir=dirs["work"], logs_dir=dirs["logs"], pebble=pebble,
                       env=kv_env)
    renewed = time.monotonic() - t0
    print(f"[measure] certbot renew --force-renewal from a pulled tree: {renewed:.2f} s")
    no_traceback(proc)
    assert "Congratulations, all renewals succeeded" in proc.stdout + proc.stderr
    assert pdns.txt_records(CHALLENGE) == []
    after = layout.read_lineage_raw(ZONE)
    assert after is not None and int(after.data["version"]) == 2
    assert after.data["serial"] != record["serial"]
    # No credentials landed on disk anywhere in the pulled tree.
    for path in dirs["config"].rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert pdns.api_key not in path.read_text(errors="replace"), path


def test_certonly_default_entry_and_single_name(kv_env: dict[str, str], pdns_in_vault: str,
                                                pdns: PowerDNS, certbot: Any,
                                                certbot_dirs: Any, layout: Layout) -> None:
    """No --kvault-dns: the only dns/ entry is used; -a kvault wires the deploy hook."""
    name = f"www-{secrets.token_hex(3)}.{ZONE}"
    proc = certbot(*certonly_args("--kvault-dns-resolver", resolver_opt(pdns), dns=None,
                                  domains=(name,)), env=kv_env)
    no_traceback(proc)
    assert layout.read_lineage_raw(name) is not None
    assert (certbot_dirs.config_dir / "renewal-hooks" / "deploy" / "00-update-vault.sh"
            ).exists()
    assert pdns.txt_records(f"_acme-challenge.{name}") == []


def _menu_certonly(certbot_dirs: Any, pebble: Pebble, env: dict[str, str], choice: str,
                   *args: str) -> subprocess.CompletedProcess[str]:
    """certbot certonly answering its interactive authenticator menu with plugin ``choice``.

    servers.run_certbot always passes --non-interactive, which forbids the menu.
    """
    import servers

    argv = [servers.certbot_executable(), "certonly", "--force-interactive",
            *certbot_dirs.args(), "--server", pebble.directory_url, "--agree-tos",
            "--register-unsafely-without-email", *args]
    full_env = dict(os.environ, **env, REQUESTS_CA_BUNDLE=pebble.ca_bundle)
    menu = subprocess.run(argv, input="c\n", capture_output=True, text=True, env=full_env,
                          timeout=120).stdout
    entries = re.findall(r"^(\d+): (.*?)(?=^\d+: |^- - -)", menu, re.M | re.S)
    numbers = [n for n, text in entries if text.rstrip().endswith(f"({choice})")]
    assert len(numbers) == 1, menu
    proc = subprocess.run(argv, input=f"{numbers[0]}\n", capture_output=True, text=True,
                          env=full_env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_interactive_menu_wires_only_the_chosen_kvault(
        kv_env: dict[str, str], pdns_in_vault: str, pdns: PowerDNS, pebble: Pebble,
        certbot_dirs: Any, layout: Layout) -> None:
    """certbot prepares every plugin before it shows the menu: picking standalone leaves
    no hook; picking kvault (after prepare()) still wires the hook and reaches Vault."""
    hook = certbot_dirs.config_dir / "renewal-hooks" / "deploy" / "00-update-vault.sh"
    _menu_certonly(certbot_dirs, pebble, kv_env, "standalone", "--http-01-port",
                   str(pebble.http_port), "-d", f"menu-http.{ZONE}")
    assert not hook.exists()
    assert layout.list_lineages() == []
    name = f"menu-dns.{ZONE}"
    _menu_certonly(certbot_dirs, pebble, kv_env, "kvault", "-d", name,
                   "--kvault-dns-resolver", resolver_opt(pdns))
    assert hook.exists()
    assert layout.list_lineages() == [name]
    assert pdns.txt_records(f"_acme-challenge.{name}") == []


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", ["unknown-provider", "missing-entry", "wrong-key",
                                  "zone-not-hosted", "propagation-timeout"])
def test_bad_input_is_one_clear_line(case: str, kv_env: dict[str, str], pdns: PowerDNS,
                                     certbot: Any, layout: Layout) -> None:
    import servers

    layout.save_dns("pdns", pdns_entry(pdns))
    extra = ["--kvault-dns-resolver", resolver_opt(pdns)]
    dns_name, domains = "pdns", (ZONE,)
    if case == "unknown-provider":
        layout.save_dns("pdns", pdns_entry(pdns, provider="powerdnz"))
        expect = ["Unknown DNS provider 'powerdnz'", "Did you mean powerdns",
                  "certbot-kvault dns add pdns --provider"]
    elif case == "missing-entry":
        dns_name = "nope"
        expect = [f"No DNS provider entry {layout.where('dns', 'nope')}",
                  "certbot-kvault dns add nope"]
    elif case == "wrong-key":
        layout.save_dns("pdns", pdns_entry(pdns, auth_token="wrong-" + secrets.token_hex(4)))
        expect = ["wrong API key/credentials", f"check {layout.where('dns', 'pdns')}"]
    elif case == "zone-not-hosted":
        domains = ("example.org",)
        expect = ["hosts no zone for _acme-challenge.example.org", "--kvault-dns NAME"]
    else:
        dead = servers.free_udp_tcp_port()
        extra = ["--kvault-dns-resolver", f"127.0.0.1:{dead}",
                 "--kvault-propagation-timeout", "2"]
        expect = ["DNS propagation timed out after 2 s", "--kvault-propagation-timeout"]
    t0 = time.monotonic()
    proc = certbot(*certonly_args(*extra, dns=dns_name, domains=domains), env=kv_env,
                   check=False)
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    no_traceback(proc)
    line = error_line(proc)
    print(f"\n[{case}] {line}")
    for text in expect:
        assert text in line, proc.stderr
    assert pdns.api_key not in proc.stdout + proc.stderr
    # Whatever was created is gone again (cleanup also runs when the run fails).
    assert pdns.txt_records(CHALLENGE) == []
    if case == "propagation-timeout":
        assert 2 <= elapsed < 15


# --------------------------------------------------------------------------- Vault down


@pytest.mark.skipif(
    tuple(int(p) for p in __import__("certbot").__version__.split(".")[:2]) < (5, 3),
    reason="certbot < 5.3 runs renewal-hooks/deploy only on renewals, and this test stops "
           "Vault from such a hook; there the plugin's exit handler pushes instead "
           "(test_installer covers it)")
def test_vault_down_at_deploy_time_leaves_pending_mark(
        kv_env: dict[str, str], pdns_in_vault: str, pdns: PowerDNS, bao: Any,
        certbot: Any, certbot_dirs: Any, layout: Layout) -> None:
    """Vault goes away between issuance and the deploy hook: certbot exits 0, warns loudly,
    leaves a pending mark, and the next `certbot-kvault push` finishes the upload.

    certbot runs renewal-hooks/deploy/* in name order, so a hook named before
    00-update-vault.sh kills the TCP proxy certbot uses to reach Vault (a process, for
    the hook to kill by PID).
    """
    proxy = subprocess.Popen([sys.executable, stubs.__file__, str(bao.port)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert proxy.stdout is not None
        port = int(proxy.stdout.readline())
        hooks = certbot_dirs.config_dir / "renewal-hooks" / "deploy"
        hooks.mkdir(parents=True)
        stopper = hooks / "00-00-stop-vault.sh"
        stopper.write_text(f"#!/bin/sh\nkill {proxy.pid}\n")
        stopper.chmod(0o755)
        env = dict(kv_env, VAULT_ADDR=f"http://127.0.0.1:{port}")
        proc = certbot(*certonly_args("--kvault-dns-resolver", resolver_opt(pdns)), env=env)
        proxy.wait(timeout=10)
    finally:
        if proxy.poll() is None:
            proxy.kill()
            proxy.wait()
    assert proc.returncode == 0
    out = proc.stdout + proc.stderr
    assert "lineage example.com was NOT saved to Vault" in out, out
    assert "certbot-kvault push" in out
    pending = certbot_dirs.config_dir / "kvault" / "pending"
    assert sorted(p.name for p in pending.iterdir()) == [ZONE]
    assert layout.read_lineage_raw(ZONE) is None
    assert pdns.txt_records(CHALLENGE) == []

    # Vault is back (the same server, reached directly): the next push completes it.
    r = kvault("push", "-v", *certbot_dirs.args(), env={**os.environ, **kv_env})
    assert "pushed: lineage example.com" in r.stdout, r.stdout
    _assert_vault_holds_lineage(layout)
    assert not list(pending.iterdir())


def test_cli_dns_add_warns_of_an_inline_secret(vault_env: dict[str, str], pdns: PowerDNS,
                                                tmp_path: Path) -> None:
    """A secret-looking --option given inline is saved, with one warning on stderr naming
    its key (never its value) and the way to keep it out of history and `ps`; from a file
    or stdin, no warning."""
    exe = os.path.join(os.path.dirname(sys.executable), "certbot-kvault")

    def add(*options: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        args = [exe, "dns", "add", "p3", "--provider", "powerdns", "--force"]
        for option in options:
            args += ["--option", option]
        return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=60,
                              check=True)

    proc = add(f"auth_token={pdns.api_key}", f"pdns_server={pdns.api_url}",
               "pdns_server_id=localhost")
    assert proc.stderr == (
        "warning: --option auth_token: given inline, a secret stays in the shell's history and "
        "shows in `ps` while this runs; pass it as KEY=@FILE (a file) or KEY=@- (stdin) "
        "instead.\n")
    assert pdns.api_key not in proc.stdout + proc.stderr
    assert layout_from_env().load_dns("p3") == pdns_entry(pdns, pdns_server_id="localhost")
    secret_file = tmp_path / "token"
    secret_file.write_text(pdns.api_key)
    for given, stdin in ((f"@{secret_file}", ""), ("@-", pdns.api_key + "\n")):
        proc = add(f"auth_token={given}", f"pdns_server={pdns.api_url}", stdin=stdin)
        assert proc.stderr == "", given
    assert "warning: --option auth_token: given inline" in \
        add("auth_token=@@literal", f"pdns_server={pdns.api_url}").stderr
