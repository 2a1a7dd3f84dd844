"""Renewal memory across stateless runs, against real OpenBao and Pebble: a lineage whose
validation fails is remembered in Vault (state/<name>), waits out its backoff without a
single request to the CA, is tried at once with --retry-now, and is forgotten by a success.
Also: nothing due means no certbot and no pull; list/show/metrics tell the same story."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import acme.messages
import pytest
import servers
from helpers import (
    Golden,
    fresh_dirs,
    golden_env,
    kv_version,
    kvault,
    layout_from_env,
    load_policy,
    record,
    seed,
    walk,
)
from servers import Bao
from stubs import Answer, HttpStub, Request

from certbot_kvault._internal.store.state import RenewalState
from certbot_kvault._internal.store.timefmt import parse_time


def _acme_requests(pebble: servers.Pebble) -> int:
    """Every HTTP request Pebble's ACME listener has handled so far (it logs each one)."""
    return pebble.log_path.read_text(errors="replace").count("-> calling handler()")


def _break_validation(bao: Bao, prefix: str, name: str) -> str:
    """Make http-01 fail: certbot listens on a port Pebble's VA does not call."""
    data = record(bao, prefix, f"certificates/{name}")
    assert data is not None and "http01_port" in data["renewal"]
    good = data["renewal"]
    lines = [f"http01_port = {servers.free_port()}" if ln.strip().startswith("http01_port")
             else ln for ln in good.splitlines()]
    _write(bao, prefix, name, {**data, "renewal": "\n".join(lines) + "\n"})
    return good


def _write(bao: Bao, prefix: str, name: str, data: dict[str, Any]) -> None:
    r = bao.api("POST", f"secret/data/{prefix}/certificates/{name}", json={"data": data})
    assert r.status_code == 200, r.text


def _state(bao: Bao, prefix: str, name: str) -> dict[str, Any]:
    data = record(bao, prefix, f"state/{name}")
    assert data is not None, f"no state/{name} in Vault"
    return data


def test_failure_backoff_retry_now_and_success(bao: Bao, golden: Golden,
                                               vault_env: dict[str, str], tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    good_conf = _break_validation(bao, prefix, "due")
    cert_version = kv_version(bao, prefix, "certificates/due")
    env = golden_env(bao, golden, prefix)
    metrics = tmp_path / "m.prom"

    # 1. The first run asks the CA, fails, and remembers it.
    _, args = fresh_dirs(tmp_path, "run1")
    before = _acme_requests(golden.pebble)
    t0 = time.time()
    proc = kvault("renew", *args, "--metrics-file", str(metrics), env=env, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert _acme_requests(golden.pebble) > before
    st = _state(bao, prefix, "due")
    assert st["consecutive_failures"] == 1
    assert "\n" not in st["last_error"] and st["last_error"]
    next_attempt = parse_time(st["next_attempt"])
    assert next_attempt is not None and t0 + 3500 < next_attempt < time.time() + 3700
    text = metrics.read_text()
    assert 'certbot_kvault_renewal_consecutive_failures{lineage="due"} 1\n' in text
    assert 'certbot_kvault_renewal_backoff_until_timestamp_seconds{lineage="due"} 0\n' \
        not in text
    # The failure never made a new version of the certificate record.
    assert kv_version(bao, prefix, "certificates/due") == cert_version

    # 2. Within the backoff: skipped with one line, not one request to the CA, no certbot.
    _, args = fresh_dirs(tmp_path, "run2")
    before = _acme_requests(golden.pebble)
    proc = kvault("renew", *args, env=env)
    assert _acme_requests(golden.pebble) == before
    skip = [ln for ln in proc.stderr.splitlines() if "skipping due" in ln]
    assert len(skip) == 1 and "in backoff until" in skip[0] and "--retry-now due" in skip[0]
    assert "Processing" not in proc.stdout
    assert not (tmp_path / "run2" / "config" / "renewal").exists()  # nothing pulled

    # list and show tell the same.
    rows = json.loads(kvault("list", "--json", env=env).stdout)
    row = next(r for r in rows if r["name"] == "due")
    assert row["in_backoff"] and row["state"]["consecutive_failures"] == 1
    assert row["backoff_until"] == st["next_attempt"]
    shown = kvault("show", "due", env=env).stdout
    assert "failures: 1" in shown and "(backoff)" in shown

    # 3. --retry-now tries at once (and fails again: the backoff doubles).
    _, args = fresh_dirs(tmp_path, "run3")
    before = _acme_requests(golden.pebble)
    proc = kvault("renew", *args, "--retry-now", "due", env=env, check=False)
    assert proc.returncode == 1
    assert _acme_requests(golden.pebble) > before
    st = _state(bao, prefix, "due")
    assert st["consecutive_failures"] == 2
    next_attempt = parse_time(st["next_attempt"])
    assert next_attempt is not None and next_attempt > time.time() + 7000

    # 4. Fixed, tried now: renewed, and the failure state is cleared.
    data = record(bao, prefix, "certificates/due")
    assert data is not None
    _write(bao, prefix, "due", {**data, "renewal": good_conf})
    _, args = fresh_dirs(tmp_path, "run4")
    proc = kvault("renew", *args, "--retry-now", "--metrics-file", str(metrics), env=env)
    assert "renewed: due" in proc.stdout, proc.stdout + proc.stderr
    st = _state(bao, prefix, "due")
    assert st["consecutive_failures"] == 0
    assert "last_error" not in st and "next_attempt" not in st and "last_success" in st
    assert 'certbot_kvault_renewal_consecutive_failures{lineage="due"} 0\n' \
        in metrics.read_text()


def test_nothing_due_starts_no_certbot_and_pulls_nothing(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm", "short"])
    root, args = fresh_dirs(tmp_path)
    before = _acme_requests(golden.pebble)
    metrics = tmp_path / "m.prom"
    proc = kvault("renew", *args, "--metrics-file", str(metrics),
                  env=golden_env(bao, golden, prefix))
    assert "renew: nothing is due (2 lineages checked; next: " in proc.stdout, proc.stdout
    assert "Processing" not in proc.stdout
    assert not (root / "config" / "renewal").exists()
    assert not (root / "config" / "accounts").exists()
    # Reading the fleet's due times asks the CA at most for its directory (ARI support).
    assert _acme_requests(golden.pebble) - before <= 2
    text = metrics.read_text()
    for name in ("calm", "short"):
        assert f'certbot_kvault_certificate_next_renewal_timestamp_seconds{{lineage="{name}"}}' \
            in text


def test_reader_lists_without_the_memory(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                         tmp_path: Path) -> None:
    """The reader policy does not grant state/*: list and show still work, saying so."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    bao.api("POST", f"secret/data/{prefix}/state/calm",
            json={"data": {"consecutive_failures": 3}})
    policy = load_policy(bao, "reader", prefix)
    r = bao.api("POST", "auth/token/create", {"policies": [policy], "ttl": "5m"})
    assert r.status_code == 200, r.text
    token = r.json()["auth"]["client_token"]
    env = golden_env(bao, golden, prefix, token=token)
    rows = json.loads(kvault("list", "--json", env=env).stdout)
    assert rows[0]["name"] == "calm" and rows[0]["state"] is None
    assert "permission denied" in rows[0]["state_error"]
    table = kvault("list", env=env).stdout.splitlines()
    assert table[0].split()[-1] == "FAILURES" and table[1].split()[-1] == "?"
    shown = kvault("show", "calm", env=env).stdout
    assert "failures: unknown" in shown
    # The renewer's own view has it.
    rows = json.loads(kvault("list", "--json", env=golden_env(bao, golden, prefix)).stdout)
    assert rows[0]["state"]["consecutive_failures"] == 3


def test_renew_follows_the_cas_ari_window(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                          tmp_path: Path) -> None:
    """ARI through `renew`, against a recorded renewalInfo answer served locally: no
    ARI-capable ACME server can be installed here (Debian's Pebble 2.4 and OpenBao's PKI
    ACME have no renewalInfo), so a stub serves Pebble's own directory plus `renewalInfo`,
    and everything else (nonces, orders, challenges) still goes to the real Pebble."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])   # not due by its lifetime
    env = golden_env(bao, golden, prefix)
    window = {"start": "2020-01-01T00:00:00Z", "end": "2020-01-02T00:00:00Z"}
    directory = golden.pebble.directory()

    def answer(req: Request) -> Answer:
        if req.path == "/dir":
            body = {**directory, "renewalInfo": f"{stub.url}/ari"}
            return Answer(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
        if req.path.startswith("/ari/"):
            body = {"suggestedWindow": dict(window),
                    "explanationURL": "https://example.com/incident"}
            return Answer(200, json.dumps(body).encode(),
                          {"Content-Type": "application/json", "Retry-After": "21600"})
        return Answer(404)

    with HttpStub(answer) as stub:
        # The lineage (and its account, under the server's name) say: this CA.
        server = f"{stub.url}/dir"
        data = record(bao, prefix, "certificates/calm")
        assert data is not None
        conf = [f"server = {server}" if ln.strip().startswith("server =") else ln
                for ln in data["renewal"].splitlines()]
        _write(bao, prefix, "calm", {**data, "renewal": "\n".join(conf) + "\n"})
        for path in walk(bao, f"{prefix}/accounts"):
            acc = record(bao, prefix, f"accounts/{path}")
            assert acc is not None
            r = bao.api("POST", f"secret/data/{prefix}/accounts/127.0.0.1:{stub.port}/dir/"
                                f"{path.rsplit('/', 1)[1]}", json={"data": {**acc,
                                                                          "server": server}})
            assert r.status_code == 200, r.text
        version = kv_version(bao, prefix, "certificates/calm")

        # 1. The CA's window has passed: renewed, though the lifetime rule says not yet.
        _, args = fresh_dirs(tmp_path, "run1")
        proc = kvault("renew", *args, env=env)
        if not hasattr(acme.messages, "RenewalInfo"):
            # certbot 2.7's acme cannot read ARI: said once, the lifetime rule applies.
            assert "nothing is due" in proc.stdout, proc.stdout + proc.stderr
            assert proc.stderr.count("cannot read renewal info") == 1, proc.stderr
            assert not [p for p in stub.seen if "/ari/" in p]
            return
        assert "renewed: calm" in proc.stdout, proc.stdout + proc.stderr
        assert kv_version(bao, prefix, "certificates/calm") == version + 1
        asked = [p for p in stub.seen if "/ari/" in p]
        assert len(asked) == 1

        # 2. For the new certificate the CA suggests a later window (a year from now,
        # before the lifetime rule's point of the 5-year certificate): not due, remembered.
        day = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 365 * 86400))
        after = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 366 * 86400))
        window.update(start=f"{day}T00:00:00Z", end=f"{after}T00:00:00Z")
        _, args = fresh_dirs(tmp_path, "run2")
        proc = kvault("renew", *args, env=env)
        assert "nothing is due" in proc.stdout, proc.stdout + proc.stderr
        asked = [p for p in stub.seen if "/ari/" in p]
        assert len(asked) == 2 and asked[0] != asked[1]   # the new certificate's ID
        st = _state(bao, prefix, "calm")
        assert st["ari_window_start"] == f"{day}T00:00:00Z"
        assert st["serial"] == record(bao, prefix, "certificates/calm")["serial"]  # type: ignore[index]
        next_check = parse_time(st["ari_next_check"])
        assert next_check is not None and next_check > time.time() + 6 * 3600 - 120

        # 3. Within its Retry-After the CA is not asked again (its directory is read once
        # per run: whether it offers ARI decides which memories are worth reading).
        seen = len(stub.requests)
        _, args = fresh_dirs(tmp_path, "run3")
        proc = kvault("renew", *args, env=env)
        assert "nothing is due" in proc.stdout
        assert stub.seen[seen:] == ["GET /dir"]
        row = json.loads(kvault("list", "--json", env=env).stdout)[0]
        assert row["renewal_rule"] == "ari" and row["next_renewal"].startswith(day)


def test_lineage_locks_use_the_same_rule(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                         tmp_path: Path) -> None:
    """--lineage-locks: certbot's rule too; only the due lineage is locked, pulled, renewed."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due", "calm"])
    calm = kv_version(bao, prefix, "certificates/calm")
    root, args = fresh_dirs(tmp_path)
    proc = kvault("renew", *args, "--lineage-locks", env=golden_env(bao, golden, prefix))
    assert "renewed: due" in proc.stdout, proc.stdout + proc.stderr
    assert "renew: 1 renewed, 0 failed, 1 due, 2 checked" in proc.stdout
    assert sorted(p.name for p in (root / "config" / "renewal").iterdir()) == ["due.conf"]
    assert kv_version(bao, prefix, "certificates/calm") == calm
    locks = set(walk(bao, f"{prefix}/locks"))
    assert locks == {"lineage-due"}   # no global lock was taken


def test_memory_on_kv_v1(bao: Bao, golden: Golden, kv1_mount: str, vault_env: dict[str, str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """KV v1 has no metadata to hide the memory in: the record of its own works there."""
    prefix = vault_env["KVAULT_PREFIX"]
    data = record(bao, golden.prefix, "certificates/calm")
    assert data is not None
    r = bao.api("POST", f"{kv1_mount}/{prefix}/certificates/calm", json=data)
    assert r.status_code == 204, r.text
    monkeypatch.setenv("KVAULT_MOUNT", kv1_mount)
    layout = layout_from_env()
    st = RenewalState()
    st.failed("Some challenges have failed.", time.time(), 90 * 86400)
    layout.save_state("calm", st)
    back = layout.load_state("calm")
    assert back is not None and back.failures == 1 and back.in_backoff(time.time())
    env = {**golden_env(bao, golden, prefix), "KVAULT_MOUNT": kv1_mount}
    row = json.loads(kvault("list", "--json", env=env).stdout)[0]
    assert row["name"] == "calm" and row["in_backoff"]
    assert row["state"]["consecutive_failures"] == 1


def test_dry_run_tries_every_lineage_and_remembers_nothing(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: Path) -> None:
    """`renew -- --dry-run` is certbot's: every lineage, backoff ignored, nothing saved."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due", "calm"])
    st = RenewalState()
    st.failed("earlier failure", time.time(), 90 * 86400)
    bao.api("POST", f"secret/data/{prefix}/state/due", json={"data": st.to_kv()})
    versions = {n: kv_version(bao, prefix, f"certificates/{n}") for n in ("due", "calm")}
    state_version = kv_version(bao, prefix, "state/due")
    root, args = fresh_dirs(tmp_path)
    before = _acme_requests(golden.pebble)
    # (certbot's dry run goes to Let's Encrypt's staging CA unless told otherwise)
    proc = kvault("renew", *args, "--", "--dry-run", "--server",
                  golden.pebble.directory_url, env=golden_env(bao, golden, prefix))
    assert "renew: 0 renewed, 0 failed, 2 due, 2 checked" in proc.stdout, proc.stdout
    assert "skipping" not in proc.stderr
    assert _acme_requests(golden.pebble) > before
    assert {n: kv_version(bao, prefix, f"certificates/{n}") for n in versions} == versions
    assert kv_version(bao, prefix, "state/due") == state_version
    assert record(bao, prefix, "state/calm") is None


def test_list_and_show_print_no_terminal_escape_from_vault(
        bao: Bao, golden: Golden, vault_env: dict[str, str]) -> None:
    """Whoever may write a record plants escapes in its domains and in the memory's error."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    data = record(bao, prefix, "certificates/calm")
    assert data is not None
    _write(bao, prefix, "calm", {**data, "domains": ["\x1b]0;pwned\x07calm.example.com"]})
    bao.api("POST", f"secret/data/{prefix}/state/calm",
            json={"data": {"consecutive_failures": 1, "last_error": "\x1b[2J wiped"}})
    env = golden_env(bao, golden, prefix)
    shown = kvault("list", env=env).stdout + kvault("show", "calm", env=env).stdout
    assert "\x1b" not in shown and "\x07" not in shown
    assert "\\x1b]0;pwned\\x07calm.example.com" in shown and "\\x1b[2J wiped" in shown
