"""One writer per config dir: certbot's own lock (``<config-dir>/.certbot.lock``).

The lock is taken by certbot's own public helper (``certbot.util.lock_dir_until_exit``)
in a separate process, exactly as a running certbot holds it; real OpenBao and the
real console script, started as processes (POSIX locks are per process).
"""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from helpers import KVAULT, Golden, fresh_dirs, golden_env, kvault, record, seed
from servers import Bao

NAMES = ["due", "calm", "short"]

# Holds the config dir's lock the way certbot does, until its stdin closes; with more
# arguments, first runs them as a child (as certbot runs a deploy hook) and prints
# the child's exit status and output.
HOLDER = r"""
import subprocess, sys
from certbot import util
util.lock_dir_until_exit(sys.argv[1])
if len(sys.argv) > 2:
    child = subprocess.run(sys.argv[2:], capture_output=True, text=True, timeout=120)
    print(child.returncode, child.stdout + child.stderr, flush=True)
print("locked", flush=True)
sys.stdin.read()
"""


class Holder:
    def __init__(self, config: Path, *hook: str, env: dict[str, str] | None = None) -> None:
        config.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(config), *hook],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        assert self.proc.stdout is not None
        lines = []
        for line in self.proc.stdout:
            lines.append(line)
            if line == "locked\n":
                break
        self.said = "".join(lines)
        assert self.said.endswith("locked\n"), self.said

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(30)


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for h in made:
        h.release()


def _stderr_lines(proc: Any) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr
    return [ln for ln in proc.stderr.splitlines() if ln.strip()]


def test_pull_says_who_holds_the_lock(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                      tmp_path: Path, holders: list[Holder]) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, NAMES)
    root, args = fresh_dirs(tmp_path)
    config = root / "config"
    holder = Holder(config)
    holders.append(holder)
    pid = holder.proc.pid

    for command in ("pull", "push"):
        proc = kvault(command, *args, "--dir-lock-wait", "1",
                      env=golden_env(bao, golden, prefix), check=False)
        assert proc.returncode == 1, proc.stdout
        lock = config / ".certbot.lock"
        assert _stderr_lines(proc) == [
            f"note: waiting up to 1s for {lock}, held by pid {pid}",
            f"error: {config} is in use: certbot's lock {lock} is held by pid {pid} (certbot, "
            "or certbot-kvault); waited 1s (--dir-lock-wait): run again when it is done."]
    assert sorted(p.name for p in config.iterdir()) == [".certbot.lock"]


def test_pull_waits_for_the_lock(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                 tmp_path: Path, holders: list[Holder]) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, NAMES)
    root, args = fresh_dirs(tmp_path)
    holder = Holder(root / "config")
    holders.append(holder)
    timer = threading.Timer(2.0, holder.release)
    timer.start()
    try:
        proc = kvault("pull", *args, "--dir-lock-wait", "60",
                      env=golden_env(bao, golden, prefix))
    finally:
        timer.join()
    lines = _stderr_lines(proc)
    assert lines == [f"note: waiting up to 60s for {root / 'config' / '.certbot.lock'}, held "
                     f"by pid {holder.proc.pid}"], proc.stderr
    assert holder.proc.returncode == 0
    assert {p.name for p in (root / "config" / "renewal").iterdir()} == \
        {f"{n}.conf" for n in NAMES}
    # Let go, as certbot lets go: the file is removed.
    assert not (root / "config" / ".certbot.lock").exists()


def test_two_pulls_into_one_dir_both_succeed(bao: Bao, golden: Golden,
                                             vault_env: dict[str, str],
                                             tmp_path: Path) -> None:
    """Without the lock, each pull removes the other's temp files and half-switched
    live/ dirs, and both write the same new archive dirs."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, NAMES)
    fleet = [f"l{i:02d}.example.com" for i in range(40)]
    for i, name in enumerate(fleet):
        data = record(bao, prefix, f"certificates/{NAMES[i % 3]}")
        r = bao.api("POST", f"secret/data/{prefix}/certificates/{name}", json={"data": data})
        assert r.status_code == 200, r.text
    env = golden_env(bao, golden, prefix, KVAULT_DIR_LOCK_WAIT="120")
    for round_ in range(3):
        root, args = fresh_dirs(tmp_path, f"round{round_}")
        procs = [subprocess.Popen([KVAULT, "pull", "--workers", "4", *args], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, out + err
            assert "Traceback" not in err, err
        confs = {p.name for p in (root / "config" / "renewal").iterdir()}
        assert confs == {f"{n}.conf" for n in NAMES + fleet}
        check = kvault("push", *args, "--json", env=env)
        assert '"failed": []' in check.stdout, check.stdout


def test_a_hook_under_the_holder_does_not_wait(bao: Bao, golden: Golden,
                                               vault_env: dict[str, str], tmp_path: Path,
                                               holders: list[Holder]) -> None:
    """certbot runs its deploy hooks while it holds the lock: certbot-kvault run from
    one (``--deploy-hook "certbot-kvault push"``) finds its ancestor holding it and goes
    on, instead of waiting for a lock released only when it is done."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    root, args = fresh_dirs(tmp_path)
    env = golden_env(bao, golden, prefix)
    kvault("pull", *args, env=env)
    holder = Holder(root / "config", "sh", "-c", f"exec {KVAULT} push -v " + " ".join(args)
                    + " --dir-lock-wait 0", env=env)
    holders.append(holder)
    status, _, output = holder.said.partition(" ")
    assert status == "0", output
    assert "Traceback" not in output and "in use" not in output, output
