"""Several ACME accounts on one CA: `renew` (with and without `-- --server`, with
`--lineage-locks`) renews each lineage with its own account, and `run` never lets
certbot ask which one to use (real OpenBao and Pebble)."""
from __future__ import annotations

import configobj
import servers
from helpers import (
    Golden,
    fresh_dirs,
    golden_env,
    kv_version,
    kvault,
    orders,
    record,
    seed,
    walk,
)
from servers import Bao


def _accounts(bao: Bao, prefix: str, server: str = "") -> list[str]:
    """The account ids in Vault (of one server path, e.g. ``127.0.0.1:PORT/dir``)."""
    return sorted(p.rsplit("/", 1)[1] for p in walk(bao, f"{prefix}/accounts")
                  if p.startswith(server))


def _second_account(bao: Bao, golden: Golden, prefix: str, tmp_path: object,
                    env: dict[str, str]) -> str:
    """Register another account on the session Pebble and push it; its id."""
    before = _accounts(bao, prefix)
    reg, reg_args = fresh_dirs(tmp_path, "register")  # type: ignore[arg-type]
    servers.run_certbot(["register", "--register-unsafely-without-email", "--agree-tos"],
                        config_dir=reg / "config", work_dir=reg / "work",
                        logs_dir=reg / "logs", pebble=golden.pebble, env=env)
    kvault("push", *reg_args, env=env)
    (new,) = set(_accounts(bao, prefix)) - set(before)
    return new


def _conf_account(bao: Bao, prefix: str, name: str) -> str:
    data = record(bao, prefix, f"certificates/{name}")
    assert data is not None
    account: str = configobj.ConfigObj(data["renewal"].splitlines())["renewalparams"]["account"]
    return account


def test_lineages_of_two_accounts_renew_with_and_without_server(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: object) -> None:
    """The README's demo pattern `renew -- --server URL`, with lineages of two accounts
    on one Pebble: certbot leaves the account to the user when --server is given, and
    would ask "Please choose an account"; every lineage fails into backoff then."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due", "calm"])
    env = golden_env(bao, golden, prefix)
    first = _conf_account(bao, prefix, "due")
    second = _second_account(bao, golden, prefix, tmp_path, env)
    calm = record(bao, prefix, "certificates/calm")
    assert calm is not None
    calm["renewal"] = calm["renewal"].replace(f"account = {first}", f"account = {second}")
    assert bao.api("POST", f"secret/data/{prefix}/certificates/calm",
                   json={"data": calm}).status_code == 200
    server = ["--server", golden.pebble.directory_url]
    for run, flags in enumerate(([], ["--lineage-locks"], [])):
        versions = {n: kv_version(bao, prefix, f"certificates/{n}") for n in ("due", "calm")}
        placed = orders(golden.pebble)
        _, args = fresh_dirs(tmp_path, f"renew{run}")
        # As the issue ran it (--force-renewal: each run renews both again).
        extra = ["--", "--force-renewal", *(server if run < 2 else [])]
        proc = kvault("renew", *args, *flags, *extra, env=env, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "choose an account" not in proc.stdout + proc.stderr
        assert "renew: 2 renewed, 0 failed, 2 due, 2 checked" in proc.stdout, proc.stdout
        assert orders(golden.pebble) == placed + 2
        for name in versions:
            assert kv_version(bao, prefix, f"certificates/{name}") == versions[name] + 1
            state = record(bao, prefix, f"state/{name}")
            assert state is not None and state["consecutive_failures"] == 0
        # Each renewed with its own account: certbot writes the one it used into the conf.
        assert (_conf_account(bao, prefix, "due"), _conf_account(bao, prefix, "calm")) \
            == (first, second)


def test_run_with_several_accounts_says_to_pass_account(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: object) -> None:
    """`run -- certonly` pulls every account: with two on the CA, certbot would prompt and
    end in "An unexpected error occurred: EOFError". One line names them, certbot is not
    run; with --account it issues with that account."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    env = golden_env(bao, golden, prefix)
    second = _second_account(bao, golden, prefix, tmp_path, env)
    ids = _accounts(bao, prefix, f"127.0.0.1:{golden.pebble.port}/dir/")
    assert len(ids) == 2 and second in ids
    certonly = ["certonly", "--standalone", "--http-01-port", str(golden.pebble.http_port),
                "-d", "two.example.com", "--server", golden.pebble.directory_url]
    placed = orders(golden.pebble)
    _, args = fresh_dirs(tmp_path, "ambiguous")
    proc = kvault("run", *args, "--", *certonly, env=env, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "EOFError" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [
        f"error: 2 ACME accounts for {golden.pebble.directory_url} are in Vault "
        f"({', '.join(ids)}) and certbot would ask which one to use: pass --account ID to "
        "certbot (after --)."], proc.stderr
    assert orders(golden.pebble) == placed
    assert record(bao, prefix, "certificates/two.example.com") is None

    _, args = fresh_dirs(tmp_path, "named")
    kvault("run", *args, "--", *certonly, "--account", second, env=env)
    assert _conf_account(bao, prefix, "two.example.com") == second


def test_remembered_failure_keeps_the_line_that_names_the_cause(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: object) -> None:
    """certbot's error spans lines ("Missing command line flag or config entry for this
    setting:", then the setting): the memory keeps them, as one line."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    env = golden_env(bao, golden, prefix)
    first = _conf_account(bao, prefix, "due")
    _second_account(bao, golden, prefix, tmp_path, env)
    due = record(bao, prefix, "certificates/due")
    assert due is not None
    # A conf naming no account: certbot has two to choose from on this server.
    due["renewal"] = due["renewal"].replace(f"account = {first}\n", "")
    assert bao.api("POST", f"secret/data/{prefix}/certificates/due",
                   json={"data": due}).status_code == 200
    _, args = fresh_dirs(tmp_path, "renew")
    proc = kvault("renew", *args, env=env, check=False)
    assert "renew: 0 renewed, 1 failed" in proc.stdout, proc.stdout + proc.stderr
    state = record(bao, prefix, "state/due")
    assert state is not None and state["consecutive_failures"] == 1
    error = state["last_error"]
    assert error.startswith("Missing command line flag or config entry for this setting: "
                            "Please choose an account Choices: ["), error
    assert "\n" not in error and len(error) <= 300
    shown = kvault("show", "due", env=env).stdout
    assert f"last_error: {error}\n" in shown
