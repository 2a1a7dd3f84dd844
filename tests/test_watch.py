"""`export --watch` / `--once` / `--exec` against the real OpenBao: new versions pushed by
another process picked up, one reload per version, Vault gone for a while, SIGTERM, the
atomic switch of a directory's file set, bad input."""
from __future__ import annotations

import datetime
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import (
    KVAULT,
    Golden,
    golden_env,
    kvault,
    layout_from_env,
    load_policy,
    one_line_error,
    record,
    seed,
    snapshot,
    token_with_policy,
)
from servers import Bao
from stubs import TcpFaultProxy

from certbot_kvault._internal.apps import export
from certbot_kvault._internal.apps.export import OWNER_FILE
from certbot_kvault._internal.apps.watch import DATA, Watcher, write_set

WAIT = 30.0  # only how long a wait may take before the test fails; nothing asserts timing


def _until(cond: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _put(bao: Bao, prefix: str, name: str, data: dict[str, Any], mount: str = "secret") -> None:
    """Write certificates/<name> as another process (a renewer's push) would."""
    path = f"{mount}/data/{prefix}/certificates/{name}" if mount == "secret" \
        else f"{mount}/{prefix}/certificates/{name}"
    r = bao.api("POST", path, json={"data": data} if mount == "secret" else data)
    assert r.status_code in (200, 204), r.text


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text()
    except OSError:
        return None


@pytest.fixture
def watcher(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Starts `certbot-kvault export ... ` in the background (stdout/stderr in tmp_path/out,
    err); kills what is still running at the end."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
        out = open(tmp_path / "out", "w")  # noqa: SIM115 - closed with the process
        err = open(tmp_path / "err", "w")  # noqa: SIM115
        proc = subprocess.Popen([KVAULT, "export", *args], env=env, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, text=True)
        out.close()
        err.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_watch_follows_new_versions_and_reloads_once_each(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: Path,
        watcher: Callable[..., subprocess.Popen[str]]) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    due = record(bao, golden.prefix, "certificates/due")
    calm = record(bao, golden.prefix, "certificates/calm")
    assert due and calm
    d, log = tmp_path / "certs", tmp_path / "reloads"
    proc = watcher("due", "--dir", str(d), "--watch", "--interval", "1",
                   "--exec", f"sh -c 'echo $KVAULT_LINEAGE $KVAULT_VERSION $KVAULT_DIR >> {log}'",
                   env=golden_env(bao, golden, prefix))
    _until(lambda: _read(d / "cert.pem") == due["cert"], "the first write")
    # Written into an empty directory: no app to reload yet.
    assert not log.exists()
    assert os.readlink(d / "privkey.pem") == f"{DATA}/privkey.pem"
    assert os.stat(d / "privkey.pem").st_mode & 0o777 == 0o600
    assert os.stat(d / "cert.pem").st_mode & 0o777 == 0o644

    expected = []
    for version, data in enumerate((calm, due), start=2):
        _put(bao, prefix, "due", {**data, "version": version})  # another process renews
        expected.append(f"due {version} {d}")  # the certificate's version, as `show` says
        cert, key = data["cert"], data["privkey"]
        _until(lambda: _read(d / "cert.pem") == cert  # noqa: B023
               and _read(d / "privkey.pem") == key, "the new version's files")  # noqa: B023
        _until(lambda: (_read(log) or "").splitlines() == expected, "the reload")
    assert (d / "fullchain.pem").read_text() == due["fullchain"]
    # One version dir is left: older ones go after each switch.
    versions = [e for e in os.listdir(d) if e.startswith("..") and e not in (DATA, OWNER_FILE)]
    assert len(versions) == 1, versions

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=WAIT) == 0
    assert log.read_text().splitlines() == expected  # exactly once per new version
    out = (tmp_path / "out").read_text()
    assert out.count("wrote: due version") == 3, out
    assert (tmp_path / "err").read_text() == ""


def test_watch_survives_vault_gone_for_a_while(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: Path,
        watcher: Callable[..., subprocess.Popen[str]]) -> None:
    """Vault refuses every connection for OUTAGE seconds (a proxy in front of the real
    OpenBao) while a renewal lands in it: the files stay, one line says so, one says it
    is back, and the renewal pushed during the outage is then written."""
    outage = 30.0
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    due = record(bao, golden.prefix, "certificates/due")
    calm = record(bao, golden.prefix, "certificates/calm")
    assert due and calm
    d, log = tmp_path / "certs", tmp_path / "reloads"
    proxy = TcpFaultProxy(bao.port)
    try:
        env = golden_env(bao, golden, prefix, VAULT_ADDR=f"http://127.0.0.1:{proxy.port}",
                         KVAULT_WATCH_INTERVAL="1")
        proc = watcher("due", "--dir", str(d), "--watch",
                       "--exec", f"sh -c 'echo $KVAULT_VERSION >> {log}'", env=env)
        _until(lambda: _read(d / "cert.pem") == due["cert"], "the first write")
        before = snapshot(d)
        proxy.refuse_for(outage)
        err = tmp_path / "err"
        _until(lambda: "unreachable" in (_read(err) or "") or "Cannot reach" in
               (_read(err) or ""), "the outage line")
        # Meanwhile an init container's --once fails with one line and writes nothing.
        once = kvault("export", "due", "--dir", str(tmp_path / "init"), "--once", env=env,
                      check=False)
        assert one_line_error(once).startswith(
            f"error: Cannot reach Vault at http://127.0.0.1:{proxy.port} ")
        assert not (tmp_path / "init").exists()
        version = 2
        _put(bao, prefix, "due", {**calm, "version": version})  # straight to OpenBao
        assert snapshot(d) == before  # the app's files do not change while Vault is gone
        _until(lambda: _read(d / "cert.pem") == calm["cert"], "the write after the outage",
               timeout=outage + WAIT)
        _until(lambda: _read(log) == f"{version}\n", "the reload")
        assert (d / "privkey.pem").read_text() == calm["privkey"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0
    finally:
        proxy.stop()
    lines = (tmp_path / "err").read_text().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("watch: Cannot reach") and "the files stay" in lines[0]
    assert lines[1] == "watch: Vault answers again"
    assert log.read_text() == f"{version}\n"


def _pairs(n: int) -> list[tuple[str, str]]:
    """n distinct (certificate PEM, key PEM) pairs, self-signed, made here."""
    out = []
    now = datetime.datetime.now(datetime.timezone.utc)
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"v{i}.example.com")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(i + 1)
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .sign(key, hashes.SHA256()))
        out.append((cert.public_bytes(serialization.Encoding.PEM).decode(),
                    key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode()))
    return out


def _target(d: Path) -> Optional[str]:
    try:
        return os.readlink(d / DATA)
    except OSError:
        return None


def test_switch_never_shows_a_cert_with_another_versions_key(tmp_path: Path) -> None:
    """An app reading cert.pem then privkey.pem while versions are switched in: whenever
    no switch happened between its two reads, they belong together."""
    pairs = _pairs(25)
    key_of = dict(pairs)
    d = tmp_path / "certs"
    write_set(str(d), [("cert.pem", pairs[0][0], 0o644), ("privkey.pem", pairs[0][1], 0o600)])
    stop = threading.Event()
    seen = {"checked": 0, "mismatched": 0}

    def reader() -> None:
        while not stop.is_set():
            first = _target(d)
            cert, key = _read(d / "cert.pem"), _read(d / "privkey.pem")
            if _target(d) != first:
                # Switched between the reads (an app re-reads then), or the version dir
                # was removed under a read that began before the switch.
                continue
            seen["checked"] += 1
            if cert is None or key_of.get(cert) != key:
                seen["mismatched"] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for cert, key in pairs[1:]:
            checked = seen["checked"]
            changed, had_set = write_set(
                str(d), [("cert.pem", cert, 0o644), ("privkey.pem", key, 0o600)])
            assert changed and had_set
            _until(lambda: seen["checked"] > checked + 2, "the reader")  # noqa: B023
    finally:
        stop.set()
        thread.join()
    assert seen["mismatched"] == 0, seen
    assert (d / "cert.pem").read_text() == pairs[-1][0]
    assert sorted(os.listdir(d)) == sorted(
        [DATA, "cert.pem", "privkey.pem", os.readlink(d / DATA)])
    # The same content again: nothing is touched.
    assert write_set(str(d), [("cert.pem", pairs[-1][0], 0o644),
                              ("privkey.pem", pairs[-1][1], 0o600)]) == (False, True)


def test_once_and_bad_input(bao: Bao, golden: Golden, vault_env: dict[str, str],
                            tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due", "calm"])
    env = golden_env(bao, golden, prefix)
    where = f"secret/{prefix}/certificates"

    # A plain export's files are adopted: same content, now links through ..data.
    d = tmp_path / "due"
    kvault("export", "due", "--dir", str(d), env=env)
    plain = {n: (d / n).read_text() for n in os.listdir(d) if n != OWNER_FILE}
    proc = kvault("export", "due", "calm", "--dir", str(tmp_path / "{name}"), "--once",
                  "--exec", f"touch {tmp_path / 'reloaded'}", env=env)
    assert proc.stdout.splitlines() == [
        f"current: due version 1 in {d}", f"wrote: calm version 1 to {tmp_path / 'calm'}"]
    assert {n: (d / n).read_text() for n in plain} == plain
    assert all(os.readlink(d / n) == f"{DATA}/{n}" for n in plain)
    assert not (tmp_path / "reloaded").exists()  # nothing changed in what an app reads
    assert (tmp_path / "calm" / "cert.pem").read_text() == \
        record(bao, prefix, "certificates/calm")["cert"]  # type: ignore[index]
    good = snapshot(d)

    def fails(*args: str) -> str:
        return one_line_error(kvault("export", *args, env=env, check=False))

    assert fails("nosuch", "--dir", str(tmp_path / "x"), "--once") == \
        f"error: No lineage nosuch in Vault ({where}/nosuch)."
    assert fails("nosuch", "--dir", str(tmp_path / "x"), "--watch") == \
        f"error: No lineage nosuch in Vault ({where}/nosuch)."
    assert not (tmp_path / "x").exists() or os.listdir(tmp_path / "x") == []
    assert fails("due", "calm", "--dir", str(tmp_path / "both"), "--once") == (
        "error: 2 lineages need one directory each: put {name} in --dir "
        "(e.g. --dir /certs/{name}).")
    assert fails("due", "--dir", str(d), "--exec", "true") == (
        "error: --exec runs after a version --watch or --once wrote: add --watch or "
        "--once.")
    assert fails("due", "--format", "env", "--watch") == (
        "error: --watch and --once write files: use --format pem or bundle with --dir DIR.")
    (tmp_path / "afile").write_text("")
    line = fails("due", "--dir", str(tmp_path / "afile" / "certs"), "--once")
    assert line.startswith("error: cannot write lineage due to ") and "Not a directory" in line

    blocked = tmp_path / "blocked"
    (blocked / "privkey.pem").mkdir(parents=True)
    line = fails("due", "--dir", str(blocked), "--once")
    assert line == (f"error: {blocked / 'privkey.pem'} is a directory, not a file of lineage "
                    "certificates; remove it or choose another --dir.")
    assert os.listdir(blocked) == ["privkey.pem"]  # nothing written

    # A corrupt record (calm's key with due's certificate): one line, the good set stays.
    due, calm = (record(bao, prefix, f"certificates/{n}") for n in ("due", "calm"))
    assert due and calm
    _put(bao, prefix, "due", {**due, "privkey": calm["privkey"]})
    line = fails("due", "--dir", str(d), "--once")
    assert line.startswith(f"error: {where}/due") and "key" in line, line
    assert snapshot(d) == good


def test_kv1_and_reader_policy(bao: Bao, golden: Golden, kv1_mount: str,
                               vault_env: dict[str, str], tmp_path: Path) -> None:
    """KV v1 has no metadata: the record is read and compared by version and serial. On
    KV v2 the shipped reader policy may read the metadata the cheap poll needs."""
    prefix = vault_env["KVAULT_PREFIX"]
    due = record(bao, golden.prefix, "certificates/due")
    calm = record(bao, golden.prefix, "certificates/calm")
    assert due and calm
    _put(bao, prefix, "due", due, mount=kv1_mount)
    said: list[str] = []
    d = tmp_path / "certs"
    w = Watcher(layout_from_env(mount=kv1_mount), {"due": str(d)},
                lambda r: export.file_set(r, "pem"), lambda line, err=False: said.append(line),
                ["sh", "-c", f"echo $KVAULT_VERSION >> {tmp_path / 'log'}; exit 3"])
    assert w.round() == [] and w.round() == []
    _put(bao, prefix, "due", {**calm, "version": 7}, mount=kv1_mount)
    assert w.round() == []
    assert (d / "cert.pem").read_text() == calm["cert"]
    assert (tmp_path / "log").read_text() == "7\n"
    assert said == [f"wrote: due version {due['version']} to {d}", f"wrote: due version 7 to {d}",
                    "error: --exec sh exited 3 for due version 7; the files are written, the "
                    "watch goes on"]
    assert w.round() == [] and len(said) == 3  # never twice for one version

    seed(bao, golden, prefix, ["due"])
    r = bao.api("POST", "auth/token/create", json={
        "policies": [load_policy(bao, "reader", prefix)], "no_default_policy": True,
        "ttl": "5m"})
    token = r.json()["auth"]["client_token"]
    proc = kvault("export", "due", "--dir", str(tmp_path / "v2"), "--once",
                  env=golden_env(bao, golden, prefix, token))
    assert proc.stderr == ""  # no "may not read the metadata" note
    assert (tmp_path / "v2" / "cert.pem").read_text() == due["cert"]


def test_lineage_deleted_or_denied_while_watched(bao: Bao, golden: Golden,
                                                 vault_env: dict[str, str],
                                                 tmp_path: Path) -> None:
    """Mid-watch, a deleted lineage and a policy that no longer lets the token read it are
    one line each (not one per poll); the files stay; the watch goes on and recovers."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    calm = record(bao, golden.prefix, "certificates/calm")
    assert calm
    allow = (f'path "secret/data/{prefix}/certificates/*" {{ capabilities = ["read"] }}\n'
             f'path "secret/metadata/{prefix}/certificates/*" {{ capabilities = ["read"] }}')
    policy = f"watch-{prefix}"
    token = token_with_policy(bao, policy, allow)
    said: list[str] = []
    d = tmp_path / "certs"
    w = Watcher(layout_from_env(token=token), {"due": str(d)},
                lambda r: export.file_set(r, "pem"), lambda line, err=False: said.append(line))
    assert w.round() == []
    good = snapshot(d)
    where = f"secret/{prefix}/certificates/due"

    r = bao.api("DELETE", f"secret/data/{prefix}/certificates/due")
    assert r.status_code == 204, r.text
    assert w.round() == ["due"] and w.round() == ["due"]
    assert snapshot(d) == good
    assert said[1:] == [f"error: No lineage due in Vault ({where})."]
    _put(bao, prefix, "due", calm)
    assert w.round() == []
    assert (d / "cert.pem").read_text() == calm["cert"]
    del said[:]
    good = snapshot(d)

    r = bao.api("PUT", f"sys/policies/acl/{policy}",
                {"policy": f'path "secret/data/{prefix}/other" {{ capabilities = ["read"] }}'})
    assert r.status_code == 204, r.text
    assert w.round() == ["due"] and w.round() == ["due"]
    assert len(said) == 1 and said[0].startswith(
        f"error: permission denied: needs read on secret/data/{where.split('/', 1)[1]}"), said
    assert snapshot(d) == good
    r = bao.api("PUT", f"sys/policies/acl/{policy}", {"policy": allow})
    assert r.status_code == 204, r.text
    assert w.round() == [] and len(said) == 1
    assert w.cheap  # the metadata poll came back: no whole-record reads


def test_a_directory_belongs_to_one_lineage(bao: Bao, golden: Golden,
                                            vault_env: dict[str, str], tmp_path: Path) -> None:
    """A second lineage exported into a directory is refused in one line, with its
    files (and the first's) as they were; the first lineage exports there again. A
    directory an older version wrote (no mark) is taken by the lineage whose
    certificate it holds and refused to another. Of two watchers started on one
    directory, one watches and the other stops at once."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due", "calm"])
    env = golden_env(bao, golden, prefix)
    shared = tmp_path / "shared"
    own = ("--cert-file", "due.crt", "--key-file", "due.key", "--chain-file", "",
           "--fullchain-file", "")
    kvault("export", "due", "--dir", str(shared), "--once", *own, env=env)
    first = snapshot(shared)
    assert (shared / OWNER_FILE).read_text() == "due\n"
    refusal = (f"{shared} holds the files of lineage due (its {OWNER_FILE} says so); "
               "not writing calm over them: give calm a directory of its own (--dir; "
               "--dir '/certs/{name}' for several), or remove that directory if due no "
               "longer uses it.")
    for mode in ("--once", "--watch"):
        proc = kvault("export", "calm", "--dir", str(shared), mode, "--interval", "1",
                      env=env, check=False)
        assert one_line_error(proc) == f"error: {refusal}", mode
        assert snapshot(shared) == first
    assert one_line_error(kvault("export", "calm", "--dir", str(shared), env=env,
                                 check=False)) == f"error: {refusal}"
    assert snapshot(shared) == first
    proc = kvault("export", "due", "--dir", str(shared), "--once", *own, env=env)
    assert proc.stdout.startswith("current: due version 1 in ")
    assert snapshot(shared) == first

    # Written by an older certbot-kvault: no mark.
    legacy = tmp_path / "legacy"
    kvault("export", "due", "--dir", str(legacy), "--once", env=env)
    (legacy / OWNER_FILE).unlink()
    before = snapshot(legacy)
    line = one_line_error(kvault("export", "calm", "--dir", str(legacy), "--once", env=env,
                                 check=False))
    assert line.startswith(f"error: {legacy}/"), line
    assert "holds a certificate for www.example.com, not for calm's names" in line, line
    assert f"not for calm's names, and {legacy} has no {OWNER_FILE}" in line, line
    assert snapshot(legacy) == before
    kvault("export", "due", "--dir", str(legacy), "--once", env=env)
    assert (legacy / OWNER_FILE).read_text() == "due\n"

    # Two watchers on one directory: one owns it, the other stops with the line above.
    both = tmp_path / "both"
    procs = [subprocess.Popen([KVAULT, "export", name, "--dir", str(both), "--watch",
                               "--interval", "1"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
             for name in ("due", "calm")]
    try:
        _until(lambda: any(p.poll() is not None for p in procs), "one watcher to stop")
        time.sleep(2)  # two more polls of the one left: it keeps the directory
        [stopped] = [p for p in procs if p.poll() is not None]
        [running] = [p for p in procs if p.poll() is None]
        owner = (both / OWNER_FILE).read_text().strip()
        other = "calm" if owner == "due" else "due"
        assert running is procs[("due", "calm").index(owner)]
        assert stopped.returncode == 1
        err = stopped.communicate()[1]
        assert err.startswith(f"error: {both} holds the files of lineage {owner} "), err
        assert f"not writing {other} over them" in err and len(err.splitlines()) == 1, err
        assert (both / "cert.pem").read_text() == \
            record(bao, prefix, f"certificates/{owner}")["cert"]  # type: ignore[index]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
            p.communicate(timeout=WAIT)


def test_exec_gets_no_vault_credentials(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                        tmp_path: Path) -> None:
    """--exec's command runs without VAULT_TOKEN and every other Vault setting or login
    credential (VAULT_*, BAO_*, KVAULT_*) in its environment; --exec-env passes one on;
    the app's own variables stay."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    secrets_ = {"VAULT_SECRET_ID": "s.secret-id", "VAULT_ROLE_ID": "", "KVAULT_JWT": "a.jwt.x",
                "BAO_TOKEN": "s.bao", "VAULT_CLIENT_KEY": "/keys/client.key"}
    env = {**golden_env(bao, golden, prefix), **secrets_, "APP_SETTING": "kept"}
    assert env["VAULT_TOKEN"]
    d, dump = tmp_path / "certs", tmp_path / "env"
    kvault("export", "due", "--dir", str(d), "--once", env=env)
    calm = record(bao, golden.prefix, "certificates/calm")
    assert calm
    _put(bao, prefix, "due", calm)  # a new version: --exec runs
    kvault("export", "due", "--dir", str(d), "--once", "--exec-env", "VAULT_ADDR",
           "--exec", f"sh -c 'env > {dump}'", env=env)
    seen = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    leaked = sorted(k for k in seen if k.startswith(("VAULT_", "BAO_", "KVAULT_"))
                    and k not in ("VAULT_ADDR", "KVAULT_LINEAGE", "KVAULT_VERSION",
                                  "KVAULT_DIR"))
    assert not leaked, leaked
    assert "VAULT_TOKEN" not in seen and "s.secret-id" not in dump.read_text()
    assert (seen["VAULT_ADDR"], seen["APP_SETTING"]) == (env["VAULT_ADDR"], "kept")
    assert (seen["KVAULT_LINEAGE"], seen["KVAULT_DIR"]) == ("due", str(d))
    assert one_line_error(kvault("export", "due", "--dir", str(d), "--once", "--exec-env",
                                 "VAULT_ADDR", env=env, check=False)) == (
        "error: --exec-env names what --exec's command gets: add --exec CMD.")
