"""`renew` and `run` stopped by a signal or their --timeout, against real OpenBao and Pebble:
certbot gets the stop, what it renewed is saved (fenced, within --stop-grace), the locks
are released, one line per lineage, exit non-zero; a second signal stops at once and
leaves pending marks that the next `push` completes."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from helpers import (
    KVAULT,
    Golden,
    fresh_dirs,
    golden_env,
    kv_version,
    kvault,
    locks_held,
    record,
    seed,
    signal_tree,
)
from servers import Bao
from stubs import TcpFaultProxy

from certbot_kvault._internal.renew.locks import Locks
from certbot_kvault._internal.renew.runner import certbot_failures
from certbot_kvault._internal.renew.stopping import PREPARE, SAVE, StopNow, Stopping
from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.vault.client import VaultClient
from certbot_kvault._internal.vault.settings import VaultSettings


def _pending(root: Path) -> list[str]:
    d = root / "config" / "kvault" / "pending"
    return sorted(os.listdir(d)) if d.exists() else []


def _hook(tmp_path: Path, lineage: str, action: str) -> str:
    """A certbot --deploy-hook that runs ``action`` once certbot renewed ``lineage``
    (certbot renews lineages in name order: calm, then due)."""
    path = tmp_path / f"hook-{lineage}.sh"
    path.write_text(f'#!/bin/sh\ncase "$RENEWED_LINEAGE" in */{lineage}) {action};; esac\n')
    path.chmod(0o755)
    return str(path)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(path: Path, proc: subprocess.Popen[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, "certbot-kvault ended before the hook ran"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@contextlib.contextmanager
def _background(args: list[str], env: dict[str, str], tmp_path: Path
                ) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    """certbot-kvault ARGS in the background, its stdout and stderr in files."""
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([KVAULT, *args], env=env, stdout=o, stderr=e, text=True,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc, out, err
    finally:
        if proc.poll() is None:
            signal_tree(proc.pid, signal.SIGKILL)
            proc.wait()


def test_sigterm_after_certbot_renewed_saves_both(bao: Bao, golden: Golden,
                                                  vault_env: dict[str, str],
                                                  tmp_path: Path) -> None:
    """The case of the issue: two lineages renewed, then SIGTERM (sent by the deploy hook
    of the second): both certificates are in Vault when the process exits."""
    sig = signal.SIGTERM
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm", "due"])
    before = {n: kv_version(bao, prefix, f"certificates/{n}") for n in ("calm", "due")}
    root, args = fresh_dirs(tmp_path)
    metrics = tmp_path / "m.prom"
    sent = tmp_path / "sent"
    hook = _hook(tmp_path, "due", f'date +%s.%N > {sent}; kill -TERM "$KVAULT_PARENT_PUSH"')
    proc = kvault("renew", *args, "--metrics-file", str(metrics), "--", "--force-renewal",
                  "--deploy-hook", hook, env=golden_env(bao, golden, prefix), check=False,
                  timeout=120)
    print(f"SIGTERM after two renewals to exit: {time.time() - float(sent.read_text()):.2f}s")
    assert proc.returncode == 128 + sig, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    for name in ("calm", "due"):
        assert kv_version(bao, prefix, f"certificates/{name}") == before[name] + 1
        saved = record(bao, prefix, f"certificates/{name}")
        assert saved is not None and saved["version"] == 2
        assert saved["cert"] == (root / "config" / "live" / name / "cert.pem").read_text()
        assert f"renewed: {name} (version 2, saved to Vault)" in proc.stdout
    assert f"renew: stopped by {sig.name}; 2 renewed and saved to Vault, 0 renewed and NOT " \
           f"saved; locks released (exit {128 + sig})" in proc.stderr
    assert not locks_held(bao, prefix)
    assert _pending(root) == []
    text = metrics.read_text()
    assert f"certbot_kvault_renew_exit_code {128 + sig}\n" in text
    assert "certbot_kvault_renew_renewed 2\n" in text


def test_sigterm_while_certbot_runs(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                    tmp_path: Path) -> None:
    """SIGTERM while certbot sits in a slow deploy hook after renewing the first lineage:
    certbot and its hook get it (certbot 5.8 goes on with the next lineage until the
    SIGINT that follows), and every lineage it renewed is saved, no other; one it did
    not finish is not counted as failed."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm", "due"])
    before = {n: kv_version(bao, prefix, f"certificates/{n}") for n in ("calm", "due")}
    root, args = fresh_dirs(tmp_path)
    in_hook, hook_pid = tmp_path / "in-hook", tmp_path / "hook-pid"
    hook = _hook(tmp_path, "calm", f"echo $$ > {hook_pid}; touch {in_hook}; exec sleep 300")
    with _background(["renew", *args, "--", "--force-renewal", "--deploy-hook", hook],
                     golden_env(bao, golden, prefix), tmp_path) as (proc, out, err):
        _wait_for(in_hook, proc)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        print(f"SIGTERM to exit, certbot in a hook: {time.monotonic() - t0:.2f}s")
    stdout, stderr = out.read_text(), err.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, (stdout, stderr)
    assert "Traceback" not in stderr
    # The hook (certbot's child) got the signal too: it is not left sleeping.
    assert not _alive(int(hook_pid.read_text()))
    renewed = [n for n in ("calm", "due")
               if os.readlink(root / "config" / "live" / n / "cert.pem").endswith("2.pem")]
    assert "calm" in renewed
    for name in ("calm", "due"):
        saved = record(bao, prefix, f"certificates/{name}")
        assert saved is not None
        assert saved["cert"] == (root / "config" / "live" / name / "cert.pem").read_text()
        if name in renewed:
            assert saved["version"] == 2
            assert f"renewed: {name} (version 2, saved to Vault)" in stdout
        else:  # certbot stopped before it: Vault untouched, not counted as a failure
            assert kv_version(bao, prefix, f"certificates/{name}") == before[name]
            assert record(bao, prefix, f"state/{name}") is None
    assert f"renew: {len(renewed)} renewed, 0 failed, 2 due, 2 checked" in stdout
    assert f"{len(renewed)} renewed and saved to Vault, 0 renewed and NOT saved" in stderr
    assert not locks_held(bao, prefix)
    assert _pending(root) == []


def test_sigterm_during_an_order_is_not_a_failure(bao: Bao, golden: Golden,
                                                  vault_env: dict[str, str],
                                                  tmp_path: Path) -> None:
    """SIGTERM while certbot waits for its (manual) auth hook: certbot breaks the order
    off; nothing to save, and the lineage gets no failure nor backoff in Vault."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    before = record(bao, prefix, "certificates/due")
    root, args = fresh_dirs(tmp_path)
    in_hook = tmp_path / "in-hook"
    hook = tmp_path / "auth-hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {in_hook}\nexec sleep 300\n")
    hook.chmod(0o755)
    with _background(["renew", *args, "--", "--authenticator", "manual",
                      "--manual-auth-hook", str(hook), "--preferred-challenges", "http"],
                     golden_env(bao, golden, prefix), tmp_path) as (proc, out, err):
        _wait_for(in_hook, proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    stdout, stderr = out.read_text(), err.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, (stdout, stderr)
    assert "Traceback" not in stderr
    assert "renew: 0 renewed, 0 failed, 1 due, 1 checked" in stdout, (stdout, stderr)
    assert "0 renewed and saved to Vault, 0 renewed and NOT saved" in stderr
    assert record(bao, prefix, "certificates/due") == before
    assert record(bao, prefix, "state/due") is None
    assert os.readlink(root / "config" / "live" / "due" / "cert.pem").endswith("1.pem")
    assert not locks_held(bao, prefix)
    assert _pending(root) == []


def test_second_signal_stops_at_once_and_push_completes(bao: Bao, golden: Golden,
                                                        vault_env: dict[str, str],
                                                        tmp_path: Path) -> None:
    """Vault goes away right after certbot renewed both; the first SIGTERM finds the save
    retrying within --stop-grace 60, the second ends the run at once: both lineages named
    NOT saved, with pending marks; nothing half-written in Vault; `push` completes them."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm", "due"])
    before = {n: record(bao, prefix, f"certificates/{n}") for n in ("calm", "due")}
    root, args = fresh_dirs(tmp_path)
    proxy = TcpFaultProxy(bao.port)
    renewed, down = tmp_path / "renewed", tmp_path / "vault-down"

    def cut_vault() -> None:
        while not renewed.exists():
            time.sleep(0.02)
        proxy.refuse_for(600)
        down.touch()

    threading.Thread(target=cut_vault, daemon=True).start()
    hook = _hook(tmp_path, "due", f"touch {renewed}; while [ ! -e {down} ]; do sleep 0.05; done")
    env = golden_env(bao, golden, prefix, VAULT_ADDR=f"http://127.0.0.1:{proxy.port}")
    try:
        with _background(["renew", *args, "--stop-grace", "60", "--lock-ttl", "10", "--",
                          "--force-renewal", "--deploy-hook", hook], env,
                         tmp_path) as (proc, out, err):
            _wait_until(err, "to Vault failed", proc)
            proc.send_signal(signal.SIGTERM)
            _wait_until(err, "(--stop-grace)", proc)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            took = time.monotonic() - t0
            print(f"second SIGTERM to exit, Vault down: {took:.2f}s")
    finally:
        proxy.stop()
    stdout, stderr = out.read_text(), err.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, (stdout, stderr)
    assert "Traceback" not in stderr
    assert took < 30, stderr  # at once: not the 60 s of grace that were left
    for name in ("calm", "due"):
        line = [ln for ln in stderr.splitlines() if ln.startswith(f"error: lineage {name}: ")]
        assert len(line) == 1, stderr
        assert f"was NOT saved to Vault at secret/{prefix}/certificates/{name} (stopped by " \
               "SIGTERM; a second signal ended the run before it was saved); pending mark " \
               f"at {root}/config/kvault/pending/{name}: run `certbot-kvault push " \
               f"--config-dir {root}/config {name}`" in line[0]
        # Vault holds the old certificate whole, not a mix.
        assert record(bao, prefix, f"certificates/{name}") == before[name]
    assert "0 renewed and saved to Vault, 2 renewed and NOT saved" in stderr
    assert _pending(root) == ["calm", "due"]
    # Vault is back (reached directly): the next push saves both.
    kvault("push", *args, env=golden_env(bao, golden, prefix))
    assert _pending(root) == []
    for name in ("calm", "due"):
        saved = record(bao, prefix, f"certificates/{name}")
        assert saved is not None and saved["version"] == 2
        assert saved["cert"] == (root / "config" / "live" / name / "cert.pem").read_text()


def _wait_until(path: Path, text: str, proc: subprocess.Popen[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while text not in path.read_text():
        assert proc.poll() is None, path.read_text()
        assert time.monotonic() < deadline, path.read_text()
        time.sleep(0.05)


def test_timeout_stops_a_hanging_certbot_and_saves(bao: Bao, golden: Golden,
                                                   vault_env: dict[str, str],
                                                   tmp_path: Path) -> None:
    """`--timeout 20`, certbot hangs in a deploy hook after renewing: the run ends within
    the timeout plus the grace, with the certificate saved, the lock released, one line."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    before = kv_version(bao, prefix, "certificates/due")
    root, args = fresh_dirs(tmp_path)
    hook_pid = tmp_path / "hook-pid"
    t0 = time.monotonic()
    hook = _hook(tmp_path, "due", f"echo $$ > {hook_pid}; exec sleep 600")
    proc = kvault("renew", *args, "--timeout", "20", "--", "--deploy-hook", hook,
                  env=golden_env(bao, golden, prefix), check=False, timeout=120)
    took = time.monotonic() - t0
    print(f"renew with --timeout 20 and a hanging certbot took {took:.2f}s")
    assert took < 20 + 8 + 10, proc.stderr  # the timeout, the default grace, start-up
    assert proc.returncode == 124, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "--timeout" in ln]
    assert lines == ["error: renew: stopped: --timeout 20s (KVAULT_TIMEOUT) ran out; 1 renewed "
                     "and saved to Vault, 0 renewed and NOT saved; locks released (exit 124)"]
    assert kv_version(bao, prefix, "certificates/due") == before + 1
    assert "renewed: due (version 2, saved to Vault)" in proc.stdout
    assert not locks_held(bao, prefix)
    assert not _alive(int(hook_pid.read_text()))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_run_signal_pushes_what_certbot_renewed(bao: Bao, golden: Golden,
                                                vault_env: dict[str, str], tmp_path: Path,
                                                sig: signal.Signals) -> None:
    """`run`: the signal reaches certbot (here from its deploy hook, after the renewal);
    what it renewed is pushed, exit 128 + the signal."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    before = kv_version(bao, prefix, "certificates/due")
    root, args = fresh_dirs(tmp_path)
    hook = _hook(tmp_path, "due", f'kill -{sig.name[3:]} "$KVAULT_PARENT_PUSH"')
    proc = kvault("run", *args, "--", "renew", "--force-renewal", "--cert-name", "due",
                  "--deploy-hook", hook, env=golden_env(bao, golden, prefix), check=False,
                  timeout=120)
    assert proc.returncode == 128 + sig, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "pushed: lineage due" in proc.stdout
    assert f"run: stopped by {sig.name}; 1 pushed, 0 lineage(s) NOT saved (exit {128 + sig})" \
        in proc.stderr
    assert kv_version(bao, prefix, "certificates/due") == before + 1
    saved = record(bao, prefix, "certificates/due")
    assert saved is not None
    assert saved["cert"] == (root / "config" / "live" / "due" / "cert.pem").read_text()
    assert _pending(root) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_before_certbot_starts(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                      tmp_path: Path, sig: signal.Signals) -> None:
    """Waiting for another renewer's lock: a signal ends the run there, nothing pulled."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    holder = Locks(Layout(VaultClient(VaultSettings.from_env())), ttl=120,
                   owner="other-host:4242:abc")
    assert holder.try_acquire("renew") is None
    root, args = fresh_dirs(tmp_path)
    try:
        with _background(["renew", *args, "--lock-wait", "100"],
                         golden_env(bao, golden, prefix), tmp_path) as (proc, out, err):
            _wait_until(err, "waiting up to 100s", proc)
            proc.send_signal(sig)
            proc.wait(timeout=30)
    finally:
        holder.release_all()
    stderr = err.read_text()
    assert proc.returncode == 128 + sig, (out.read_text(), stderr)
    assert "Traceback" not in stderr
    assert f"renew: stopped by {sig.name}; before certbot started: nothing renewed; locks " \
           f"released (exit {128 + sig})" in stderr
    assert not (root / "config" / "renewal").exists()
    assert not locks_held(bao, prefix)


def test_help_documents_stop_options() -> None:
    for command in ("renew", "run"):
        text = subprocess.run([KVAULT, command, "--help"], capture_output=True, text=True,
                              check=True).stdout
        for flag in ("--stop-grace", "KVAULT_STOP_GRACE", "--timeout", "KVAULT_TIMEOUT"):
            assert flag in text, (command, flag)


# ---- the stop itself, in this process (real signals to ourselves, real timer) -----------


def test_a_stop_unwinds_only_where_nothing_is_to_save() -> None:
    """Before certbot (PREPARE) a signal unwinds at once; while saving (SAVE) it does not,
    and the grace running out does (SIGALRM), once; the handlers are put back after."""
    before = signal.getsignal(signal.SIGTERM)
    stop = Stopping(grace=0.5, timeout=3600)
    with stop.handling():
        with pytest.raises(StopNow), stop.phase(PREPARE):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
    assert stop.exit_code == 128 + signal.SIGTERM and not stop.urgent

    stop = Stopping(grace=0.5, timeout=3600)
    with stop.handling():
        t0 = time.monotonic()
        with pytest.raises(StopNow), stop.phase(SAVE):
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.1)  # the first signal: the save goes on
            assert stop.stopping and not stop.urgent and 0 < stop.remaining() <= 0.5
            time.sleep(30)   # until the grace runs out
        took = time.monotonic() - t0
        os.kill(os.getpid(), signal.SIGHUP)  # after the unwinding: recorded, not raised
        time.sleep(0.05)
    assert took < 10
    assert stop.urgent and stop.grace_ran_out and stop.exit_code == 128 + signal.SIGHUP
    assert "--stop-grace 0.5s (KVAULT_STOP_GRACE) ran out" in stop.not_saved_reason()
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_second_signal_while_saving_unwinds() -> None:
    stop = Stopping(grace=60, timeout=3600)
    with stop.handling(), pytest.raises(StopNow), stop.phase(SAVE):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)
    assert stop.urgent and not stop.grace_ran_out
    assert stop.not_saved_reason() == ("stopped by SIGINT; a second signal ended the run "
                                       "before it was saved")


def test_the_timeout_stops_a_run_like_a_signal() -> None:
    stop = Stopping(grace=5, timeout=0.3)
    with stop.handling(), pytest.raises(StopNow), stop.phase(PREPARE):
        time.sleep(30)
    assert stop.timed_out and stop.signum is None and stop.exit_code == 124
    assert stop.why() == "stopped: --timeout 0.3s (KVAULT_TIMEOUT) ran out"


def test_a_stopped_certbot_fails_only_what_it_said_failed() -> None:
    """After a stop, certbot's summary is unreliable (it may never come, and calls a
    lineage its own signal handler broke off a failure): its reasoned failure lines
    count, and with one certbot per lineage every certbot before the last."""
    output = ("Failed to renew certificate a with error: the CA said no\n"
              "Failed to renew certificate b with error: \n"
              "  /etc/letsencrypt/live/b/fullchain.pem (failure)\n")
    asked = ["a", "b", "c"]
    assert certbot_failures(-15, {}, output, asked, set(), stopped=True) == {"a"}
    # Not stopped: the summary is what counts.
    assert certbot_failures(1, {}, output, asked, set(), stopped=False) == {"b"}
    # Not stopped and nothing named: every lineage not renewed counts.
    assert certbot_failures(1, {}, "", asked, {"a"}) == {"b", "c"}
    assert certbot_failures(-15, {"a": 1, "b": 0, "c": -15}, "", asked, set(),
                            stopped=True) == {"a"}
