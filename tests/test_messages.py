"""What a newcomer reads when something is off: one `error:` line naming the flag or the
variable that was really given (VAULT_ADDR without a scheme, a namespace that does not
exist, ...), and nothing at all when stdout's reader goes away (real OpenBao)."""
from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest
from helpers import KVAULT, Golden, golden_env, kvault, one_line_error, seed
from servers import Bao


@pytest.mark.parametrize("addr", ["127.0.0.1:8200", "localhost:8200", "ftp://vault.example:21"])
def test_vault_addr_without_http_scheme_is_named(addr: str, clean_env: Path) -> None:
    env = {**os.environ, "VAULT_ADDR": addr, "VAULT_TOKEN": "t"}
    err = one_line_error(kvault("list", env=env, check=False))
    rest = addr.split("://", 1)[-1]
    assert err == (f"error: VAULT_ADDR is '{addr}': Vault's address needs http:// or "
                   f"https:// (e.g. https://{rest}).")
    err = one_line_error(kvault("status", "--vault-addr", addr,
                                env={**env, "VAULT_ADDR": "http://127.0.0.1:1"}, check=False))
    assert err.startswith(f"error: --vault-addr is '{addr}': ")


def test_namespace_that_does_not_exist_is_named(bao: Bao, vault_env: dict[str, str]) -> None:
    name = f"nope-{secrets.token_hex(3)}"
    env = {**os.environ, "VAULT_NAMESPACE": name}
    err = one_line_error(kvault("list", env=env, check=False))
    assert err == (f"error: Namespace '{name}' (VAULT_NAMESPACE) does not exist at {bao.addr}; "
                   f"create it (`vault namespace create {name}`) or set VAULT_NAMESPACE to an "
                   "existing namespace.")
    err = one_line_error(kvault("pull", "--config-dir", os.devnull + "-x",
                                "--vault-namespace", name, env=os.environ, check=False))
    assert f"Namespace '{name}' (--vault-namespace) does not exist" in err


def test_namespace_without_the_mount_and_with_it(bao: Bao, golden: Golden,
                                                 vault_env: dict[str, str]) -> None:
    """OpenBao has namespaces: one that exists but lacks the KV mount is told as such;
    with the mount enabled in it, the namespace is used."""
    name = f"team-{secrets.token_hex(3)}"
    assert bao.api("POST", f"sys/namespaces/{name}", json={}).status_code == 200
    env = {**os.environ, "VAULT_NAMESPACE": name}
    err = one_line_error(kvault("list", env=env, check=False))
    assert err.startswith(f"error: KV mount 'secret' does not exist in namespace '{name}' "
                          f"(VAULT_NAMESPACE) at {bao.addr}; "), err
    r = bao.request("POST", "sys/mounts/secret",
                    headers={"X-Vault-Token": bao.token, "X-Vault-Namespace": name},
                    json={"type": "kv", "options": {"version": "2"}})
    assert r.status_code == 204, r.text
    assert kvault("list", env=env).stdout.splitlines()[1:] == []
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])  # in the root namespace: not seen from the other
    assert "calm" in kvault("list", env=os.environ).stdout
    assert "calm" not in kvault("list", env=env).stdout


def test_errors_say_error_in_lower_case(vault_env: dict[str, str]) -> None:
    """click writes "Error:"; certbot-kvault's lines say "error:" (usage errors too)."""
    err = one_line_error(kvault("export", "x", env=os.environ, check=False))
    assert err == "error: --format pem writes files: pass --dir DIR."
    proc = kvault("list", "--no-such-flag", env=os.environ, check=False)
    assert proc.returncode == 2
    last = proc.stderr.splitlines()[-1]  # click 8.1: "No such option: --no-such-flag"
    assert last.startswith("error: No such option") and "--no-such-flag" in last, last
    assert "Error" not in proc.stderr


def test_closed_stdout_is_not_an_error(bao: Bao, golden: Golden,
                                       vault_env: dict[str, str]) -> None:
    """`show NAME | head -1`: the reader is gone before show writes; no "Error: Broken
    pipe", exit 0."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        proc = subprocess.run([KVAULT, "show", "calm"], stdout=write, stderr=subprocess.PIPE,
                              text=True, env=golden_env(bao, golden, prefix), timeout=60,
                              check=False)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_import_names_the_config_dir_it_was_given(clean_env: Path, tmp_path: Path) -> None:
    env = {**os.environ, "VAULT_ADDR": "http://127.0.0.1:1", "VAULT_TOKEN": "t"}
    missing = tmp_path / "nonexistent"
    err = one_line_error(kvault("import", "--config-dir", str(missing), env=env, check=False))
    assert err == (f"error: --config-dir {missing} does not exist: it is certbot's config dir "
                   "to import.")
    err = one_line_error(kvault("import", env={**env, "KVAULT_CONFIG_DIR": str(missing)},
                                check=False))
    assert err.startswith(f"error: KVAULT_CONFIG_DIR={missing} does not exist")
