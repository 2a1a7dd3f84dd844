"""examples/: parsed, checked against the real CLI, and run as far as this machine allows.

Each example's certbot-kvault commands are run against the real OpenBao with
the example's own environment and auth method (Vault's address, prefix and the
directories pointed at test locations): the CronJob through docker/entrypoint.sh
with Kubernetes auth (stub TokenReview API), the GitLab and GitHub jobs' shell
steps with JWT auth (GitHub's ID-token endpoint stubbed too), the systemd
unit's ExecStart with AppRole. Vault holds one lineage that is not due, so each
run is a complete, quick, stateless renew.
"""
from __future__ import annotations

import configparser
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import click
import pytest
import yaml
from helpers import (
    KVAULT,
    Golden,
    TokenReviewStub,
    approle,
    enable_auth,
    kv_version,
    load_policy,
    locks_held,
    pub_pem,
    scrubbed_env,
    seed,
)
from servers import Bao
from stubs import Answer, HttpStub, Request

from certbot_kvault._internal.cli import main
from certbot_kvault._internal.settings import VaultSettings

ROOT = Path(__file__).resolve().parent.parent
EX = ROOT / "examples"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
K8S = EX / "kubernetes" / "cronjob.yaml"
GITLAB = EX / "gitlab-ci" / ".gitlab-ci.yml"
GITHUB = EX / "github-actions" / "renew-certificates.yml"
UNIT = EX / "systemd" / "certbot-kvault-renew.service"
TIMER = EX / "systemd" / "certbot-kvault-renew.timer"
ENVFILE = EX / "systemd" / "certbot-kvault.env"
VENV_BIN = os.path.dirname(sys.executable)



# ---- what the CLI offers ------------------------------------------------------------------


def subcommands() -> dict[str, click.Command]:
    """Every subcommand, loaded (the group imports a subcommand's module on first use)."""
    ctx = click.Context(main)
    return {name: cmd for name in main.list_commands(ctx)
            if (cmd := main.get_command(ctx, name)) is not None}


def known_env_vars() -> set[str]:
    names = set(VaultSettings().ENV.values())
    for cmd in subcommands().values():
        for p in cmd.params:
            env = getattr(p, "envvar", None)
            if isinstance(env, str):
                names.add(env)
            elif env:
                names.update(env)
    # Read by docker/entrypoint.sh.
    names.update({"KVAULT_BIN", "KVAULT_WORK_DIR", "KVAULT_LOGS_DIR"})
    return names


def options_of(subcommand: str) -> set[str]:
    """Every option `certbot-kvault SUBCOMMAND --help` shows (the real console script)."""
    proc = subprocess.run([KVAULT, subcommand, "--help"], capture_output=True, text=True,
                          check=True)
    options = proc.stdout.split("\nOptions:\n", 1)[1]  # not the examples in the docstring
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", options))


def kvault_commands(script: str) -> list[list[str]]:
    """argv of every `certbot-kvault ...` in a shell snippet (continuations joined)."""
    text = script.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        for i, w in enumerate(words):
            # A command word: first on the line or after exec (not `pip install certbot-kvault`).
            if os.path.basename(w) == "certbot-kvault" and (i == 0 or words[i - 1] == "exec"):
                out.append(words[i + 1:])
                break
    return out


def check_command(argv: list[str]) -> None:
    assert argv, "certbot-kvault without a subcommand"
    sub = argv[0]
    assert sub in subcommands(), f"no such subcommand: {sub}"
    allowed = options_of(sub)
    for word in argv[1:]:
        if word == "--":
            break
        if word.startswith("--"):
            assert word.split("=", 1)[0] in allowed, f"certbot-kvault {sub} has no {word}"


# ---- the examples, parsed -------------------------------------------------------------------


def k8s_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(K8S.read_text()) if d]


def cronjob_container() -> dict[str, Any]:
    cron = next(d for d in k8s_docs() if d["kind"] == "CronJob")
    return dict(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])


def gitlab_job() -> dict[str, Any]:
    doc = yaml.safe_load(GITLAB.read_text())
    return dict(doc["renew-certificates"])


def github_job() -> dict[str, Any]:
    doc = yaml.safe_load(GITHUB.read_text())
    return dict(doc["jobs"]["renew"])


def unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(path.read_text())
    return cp


def test_kubernetes_manifest_is_valid() -> None:
    docs = k8s_docs()
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ServiceAccount", "CronJob"}
    sa, cron = kinds["ServiceAccount"], kinds["CronJob"]
    assert cron["apiVersion"] == "batch/v1" and sa["apiVersion"] == "v1"
    assert sa["metadata"]["namespace"] == cron["metadata"]["namespace"]
    spec = cron["spec"]
    assert len(spec["schedule"].split()) == 5
    assert spec["concurrencyPolicy"] in ("Allow", "Forbid", "Replace")
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    volumes = {v["name"]: v for v in pod["volumes"]}
    container = pod["containers"][0]
    for mount in container["volumeMounts"]:
        assert mount["name"] in volumes, mount
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) <= known_env_vars(), set(env) - known_env_vars()
    assert "KVAULT_K8S_ROLE" in env and "VAULT_TOKEN" not in env
    # The token file KVAULT_K8S_TOKEN_PATH names is the projected token for audience vault.
    token_dir, token_file = os.path.split(env["KVAULT_K8S_TOKEN_PATH"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == token_dir)
    source = volumes[mount["name"]]["projected"]["sources"][0]["serviceAccountToken"]
    assert source["path"] == token_file and source["audience"] == "vault"
    # The image's entrypoint receives `certbot-kvault renew ...`.
    args = [str(a) for a in container["args"]]
    assert args[:2] == ["certbot-kvault", "renew"]
    check_command(args[1:])


def test_gitlab_job_is_valid() -> None:
    job = gitlab_job()
    assert job["image"]["entrypoint"] == [""]  # GitLab runs `script`, not our entrypoint
    token_var = next(iter(job["id_tokens"]))
    assert job["id_tokens"][token_var]["aud"].startswith("https://")
    assert set(job["variables"]) <= known_env_vars()
    assert "KVAULT_JWT_ROLE" in job["variables"]
    script = "\n".join(job["script"])
    assert f'KVAULT_JWT="${token_var}"' in script
    commands = kvault_commands(script)
    assert [c[0] for c in commands] == ["status", "renew"]
    for argv in commands:
        check_command(argv)


def test_github_workflow_is_valid() -> None:
    doc = yaml.safe_load(GITHUB.read_text())
    assert doc["permissions"]["id-token"] == "write"
    on = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as True
    assert "schedule" in on
    job = github_job()
    assert set(job["env"]) <= known_env_vars()
    assert "KVAULT_JWT_ROLE" in job["env"]
    runs = [s["run"] for s in job["steps"] if "run" in s]
    commands = [c for r in runs for c in kvault_commands(r)]
    assert [c[0] for c in commands] == ["renew"]
    for argv in commands:
        check_command(argv)


def test_systemd_units_are_valid() -> None:
    service = unit(UNIT)
    assert service["Service"]["Type"] == "oneshot"
    exec_start = shlex.split(service["Service"]["ExecStart"])
    assert os.path.basename(exec_start[0]) == "certbot-kvault"
    check_command(exec_start[1:])
    timer = unit(TIMER)
    assert timer["Install"]["WantedBy"] == "timers.target"
    analyze = shutil.which("systemd-analyze")
    if analyze:
        proc = subprocess.run([analyze, "calendar", timer["Timer"]["OnCalendar"]],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    env = dict(line.split("=", 1) for line in ENVFILE.read_text().splitlines()
               if line.strip() and not line.startswith("#"))
    assert set(env) <= known_env_vars()


def test_certbot_args_in_examples_are_certbot_options() -> None:
    """Whatever the examples pass after `--` must be a real certbot option."""
    words: list[str] = []
    for argv in (kvault_commands("\n".join(gitlab_job()["script"]))
                 + [c for s in github_job()["steps"] if "run" in s
                    for c in kvault_commands(s["run"])]):
        if "--" in argv:
            words += argv[argv.index("--") + 1:]
    proc = subprocess.run([os.path.join(VENV_BIN, "certbot"), "--help", "all"],
                          capture_output=True, text=True, check=True)
    for w in words:
        if w.startswith("--"):
            assert w.split("=", 1)[0] in proc.stdout, w


# ---- the examples, run -----------------------------------------------------------------------


@pytest.fixture
def calm_vault(bao: Bao, golden: Golden, vault_env: dict[str, str]) -> tuple[str, str, int]:
    """Vault with one lineage, not due; returns (prefix, renewer policy, its KV version)."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    return prefix, load_policy(bao, "renewer", prefix), kv_version(bao, prefix,
                                                                    "certificates/calm")


def _assert_ran(proc: subprocess.CompletedProcess[str], bao: Bao, prefix: str,
                version: int) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert kv_version(bao, prefix, "certificates/calm") == version  # not due: untouched
    assert not locks_held(bao, prefix)


def test_run_kubernetes_cronjob(bao: Bao, golden: Golden, calm_vault: tuple[str, str, int],
                                token_review: TokenReviewStub, tmp_path: Path) -> None:
    prefix, policy, version = calm_vault
    container = cronjob_container()
    env = {e["name"]: str(e["value"]) for e in container["env"]}
    # The Vault side exactly as the manifest's header says.
    mount = enable_auth(bao, "kubernetes")
    r = bao.api("POST", f"auth/{mount}/config", json={
        "kubernetes_host": token_review.url, "kubernetes_ca_cert": token_review.ca.read_text(),
        "token_reviewer_jwt": token_review.service_account_token("kube-system", "reviewer"),
        "disable_local_ca_jwt": True})
    assert r.status_code == 204, r.text
    sa = next(d for d in k8s_docs() if d["kind"] == "ServiceAccount")["metadata"]
    r = bao.api("POST", f"auth/{mount}/role/{env['KVAULT_K8S_ROLE']}", json={
        "bound_service_account_names": [sa["name"]],
        "bound_service_account_namespaces": [sa["namespace"]],
        "audience": "vault", "token_policies": [policy], "token_ttl": "30m"})
    assert r.status_code == 204, r.text
    # The pod's filesystem, under tmp_path.
    def here(path: str) -> str:
        return str(tmp_path / path.lstrip("/"))
    token_path = Path(here(env["KVAULT_K8S_TOKEN_PATH"]))
    token_path.parent.mkdir(parents=True)
    token_path.write_text(token_review.service_account_token(sa["namespace"], sa["name"],
                                                             audience="vault"))
    env.update(VAULT_ADDR=bao.addr, KVAULT_PREFIX=prefix, KVAULT_K8S_MOUNT=mount,
               KVAULT_K8S_TOKEN_PATH=str(token_path))
    env.pop("VAULT_CACERT")  # the test server speaks plain http
    args = [here(a) if a.startswith("/var/log/") else str(a) for a in container["args"]]
    run_env = scrubbed_env(**env, REQUESTS_CA_BUNDLE=golden.ca_bundle,
                           PATH=f"{VENV_BIN}:/usr/bin:/bin",
                           KVAULT_CONFIG_DIR=here("/etc/letsencrypt"),
                           KVAULT_WORK_DIR=here("/var/lib/letsencrypt"),
                           KVAULT_LOGS_DIR=here("/var/log/letsencrypt"))
    proc = subprocess.run(["/bin/sh", str(ENTRYPOINT), *args], env=run_env,
                          capture_output=True, text=True, timeout=120)
    _assert_ran(proc, bao, prefix, version)
    metrics = Path(args[args.index("--metrics-file") + 1]).read_text()
    assert 'certbot_kvault_certificate_days_to_expiry{lineage="calm"}' in metrics


def _jwt_role(bao: Bao, policy: str, mount_name: str, key: Any, role: str,
              bound_claims: dict[str, Any], issuer: str) -> str:
    mount = enable_auth(bao, "jwt")
    r = bao.api("POST", f"auth/{mount}/config",
                json={"jwt_validation_pubkeys": [pub_pem(key)], "bound_issuer": issuer})
    assert r.status_code == 204, r.text
    r = bao.api("POST", f"auth/{mount}/role/{role}", json={
        "role_type": "jwt", "user_claim": "sub", "bound_audiences": ["https://vault.example.com"],
        "bound_claims": bound_claims, "token_policies": [policy], "token_ttl": "30m"})
    assert r.status_code == 204, r.text
    return mount


def _id_token(key: Any, issuer: str, **claims: Any) -> str:
    import jwt as pyjwt

    now = int(time.time())
    return pyjwt.encode({"iss": issuer, "aud": "https://vault.example.com", "iat": now,
                         "nbf": now, "exp": now + 300, **claims}, key, algorithm="RS256")


@pytest.fixture(scope="module")
def ci_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_run_gitlab_job(bao: Bao, golden: Golden, calm_vault: tuple[str, str, int],
                        ci_key: Any, tmp_path: Path) -> None:
    prefix, policy, version = calm_vault
    job = gitlab_job()
    variables = {k: str(v) for k, v in job["variables"].items()}
    issuer = "https://gitlab.example.com"
    mount = _jwt_role(bao, policy, "jwt-gitlab", ci_key, variables["KVAULT_JWT_ROLE"],
                      {"project_path": "platform/certs", "ref": "main",
                       "ref_protected": "true"}, issuer)
    token = _id_token(ci_key, issuer, sub="project_path:platform/certs:ref_type:branch:ref:main",
                      project_path="platform/certs", ref="main", ref_protected="true")
    token_var = next(iter(job["id_tokens"]))
    variables.update(VAULT_ADDR=bao.addr, KVAULT_PREFIX=prefix, KVAULT_JWT_MOUNT=mount)
    env = scrubbed_env(**variables, **{token_var: token}, CI_PROJECT_DIR=str(tmp_path),
                       REQUESTS_CA_BUNDLE=golden.ca_bundle, PATH=f"{VENV_BIN}:/usr/bin:/bin")
    script = "set -e\n" + "\n".join(job["script"])
    proc = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    _assert_ran(proc, bao, prefix, version)
    assert "auth_method: jwt" in proc.stdout
    assert token not in proc.stdout + proc.stderr
    assert (tmp_path / "logs" / "certbot-kvault.prom").exists()  # the job's artifact


class IdTokenStub:
    """GitHub's ACTIONS_ID_TOKEN_REQUEST_URL: a JWT for ?audience=..., given the bearer."""

    def __init__(self, make_token: Any) -> None:
        self.bearer = secrets.token_hex(8)
        self.requests = 0
        self.make_token = make_token
        self.http = HttpStub(self._answer)
        self.url = f"{self.http.url}/token?api-version=2.0"

    def _answer(self, request: Request) -> Answer:
        query = urllib.parse.parse_qs(urllib.parse.urlparse(request.path).query)
        if request.headers.get("Authorization") != f"bearer {self.bearer}":
            return Answer(401)
        self.requests += 1
        body = json.dumps({"value": self.make_token(query["audience"][0])}).encode()
        return Answer(200, body, {"Content-Type": "application/json"})

    def stop(self) -> None:
        self.http.stop()


@pytest.fixture
def id_token_stub(ci_key: Any) -> Iterator[IdTokenStub]:
    issuer = "https://token.actions.githubusercontent.com"

    def make(audience: str) -> str:
        return _id_token(ci_key, issuer, aud=audience,
                         sub="repo:example-org/certs:ref:refs/heads/main",
                         repository="example-org/certs", ref="refs/heads/main")

    stub = IdTokenStub(make)
    try:
        yield stub
    finally:
        stub.stop()


def test_run_github_workflow(bao: Bao, golden: Golden, calm_vault: tuple[str, str, int],
                             ci_key: Any, id_token_stub: IdTokenStub, tmp_path: Path) -> None:
    prefix, policy, version = calm_vault
    job = github_job()
    issuer = "https://token.actions.githubusercontent.com"
    env_block = {k: str(v).replace("${{ runner.temp }}", str(tmp_path))
                 for k, v in job["env"].items()}
    mount = _jwt_role(bao, policy, "jwt-github", ci_key, env_block["KVAULT_JWT_ROLE"],
                      {"repository": "example-org/certs", "ref": "refs/heads/main"}, issuer)
    env_block.update(VAULT_ADDR=bao.addr, KVAULT_PREFIX=prefix, KVAULT_JWT_MOUNT=mount)
    env = scrubbed_env(**env_block, RUNNER_TEMP=str(tmp_path),
                       ACTIONS_ID_TOKEN_REQUEST_URL=id_token_stub.url,
                       ACTIONS_ID_TOKEN_REQUEST_TOKEN=id_token_stub.bearer,
                       REQUESTS_CA_BUNDLE=golden.ca_bundle,
                       PATH=f"{VENV_BIN}:/usr/bin:/bin")
    ran = 0
    for step in job["steps"]:
        run = step.get("run")
        if not run or run.strip().startswith("pip install"):
            continue  # `uses:` actions and the install (the venv is installed already)
        proc = subprocess.run(["bash", "-eo", "pipefail", "-c", run], env=env,
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, (step.get("name"), proc.stdout, proc.stderr)
        ran += 1
    assert ran == 2 and id_token_stub.requests == 1
    assert oct(os.stat(env_block["KVAULT_JWT_FILE"]).st_mode & 0o777) == "0o600"
    _assert_ran(proc, bao, prefix, version)
    assert (tmp_path / "logs" / "certbot-kvault.prom").exists()


def test_run_systemd_service(bao: Bao, golden: Golden, calm_vault: tuple[str, str, int],
                             tmp_path: Path) -> None:
    prefix, policy, version = calm_vault
    creds = approle(bao, policy)
    exec_start = shlex.split(unit(UNIT)["Service"]["ExecStart"])
    # The unit's directories, under tmp_path.
    argv = [KVAULT] + [str(tmp_path / a.lstrip("/")) if a.startswith("/var/") else a
                       for a in exec_start[1:]]
    env_file = dict(line.split("=", 1) for line in ENVFILE.read_text().splitlines()
                    if line.strip() and not line.startswith("#"))
    env_file.update(VAULT_ADDR=bao.addr, KVAULT_PREFIX=prefix, **creds)
    env = scrubbed_env(**env_file, REQUESTS_CA_BUNDLE=golden.ca_bundle)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    _assert_ran(proc, bao, prefix, version)
    assert "nothing is due" in proc.stdout
    metrics = Path(argv[argv.index("--metrics-file") + 1]).read_text()
    assert "certbot_kvault_renew_exit_code 0" in metrics


def test_examples_readme_lists_every_example() -> None:
    text = (EX / "README.md").read_text()
    for path in (K8S, GITLAB, GITHUB):
        assert str(path.relative_to(EX)) in text
    assert "systemd/" in text
    assert click.unstyle(text) == text
