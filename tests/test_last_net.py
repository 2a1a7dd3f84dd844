"""No traceback reaches a user: the command group's last net.

Whatever a subcommand did not expect becomes one line naming the log file that holds
the traceback (shown too with -v), exit 1; Ctrl-C is one line and exit 130; a reader
that went away (``| head``) is no error. The unexpected fault is injected in-process
(nothing real fails on purpose any more: each known one is handled where it arises);
the signal and the closed pipe are real, on the real console script.
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import KVAULT, Golden, fresh_dirs, golden_env, seed
from servers import Bao
from test_dir_lock import Holder

from certbot_kvault._internal.cli import main
from certbot_kvault._internal.sync import pull as sync


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("boom at https://dns.example/api?auth_token=s3cr3t\nsecond line")


def test_unexpected_error_is_one_line_naming_the_log(vault_env: dict[str, str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync, "pull", _boom)
    _, args = fresh_dirs(tmp_path)
    log = tmp_path / "run" / "logs" / "certbot-kvault.log"

    result = CliRunner().invoke(main, ["pull", *args], catch_exceptions=False)

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "error: unexpected RuntimeError: boom at https://dns.example/api?auth_token=REDACTED "
        f"second line (details in {log})\n")
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in _boom" in text
    assert "s3cr3t" not in text
    assert os.stat(log).st_mode & 0o777 == 0o600

    verbose = CliRunner().invoke(main, ["pull", "-v", *args], catch_exceptions=False)
    assert verbose.exit_code == 1
    assert "Traceback (most recent call last)" in verbose.stderr
    assert verbose.stderr.splitlines()[-1].startswith("error: unexpected RuntimeError: boom")
    assert "s3cr3t" not in verbose.stderr
    assert log.read_text().count("Traceback") == 2


def test_without_a_logs_dir_the_traceback_goes_to_a_temp_file(
        vault_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from certbot_kvault._internal.cli import consumer

    monkeypatch.setattr(consumer, "read_fleet", _boom)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    result = CliRunner().invoke(main, ["list"], catch_exceptions=False)
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    [made] = list(tmp_path.glob("certbot-kvault-*.log"))
    assert line.endswith(f"(details in {made})")
    assert "Traceback" in made.read_text()


def test_interrupt_is_one_line_and_130(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                       tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    root, args = fresh_dirs(tmp_path)
    holder = Holder(root / "config")
    try:
        proc = subprocess.Popen([KVAULT, "pull", *args, "--dir-lock-wait", "60"],
                                env=golden_env(bao, golden, prefix), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first.startswith("note: waiting up to 60s for "), first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        holder.release()
    assert proc.returncode == 130, out + err
    assert err == "error: interrupted\n"


def test_a_closed_pipe_is_no_error(bao: Bao, golden: Golden, vault_env: dict[str, str]) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm", "due", "short"])
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    try:
        proc = subprocess.run([KVAULT, "list"], env=golden_env(bao, golden, prefix),
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (0, "")
