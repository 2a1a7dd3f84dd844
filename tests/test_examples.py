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

import base64
import configparser
import functools
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
    kubernetes_role,
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
from certbot_kvault._internal.renew.stopping import DEFAULT_GRACE
from certbot_kvault._internal.vault.settings import VaultSettings

ROOT = Path(__file__).resolve().parent.parent
EX = ROOT / "examples"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
K8S = EX / "kubernetes" / "cronjob.yaml"
K8S_APP = EX / "kubernetes" / "app-certificate.yaml"
K8S_SECRET = EX / "kubernetes" / "secret-cronjob.yaml"
# `export` options that the watch change brings; until `export --watch` exists the
# manifests using them are checked for everything else and the tests say what they
# could not check. Once it exists, each of them must too.
WATCH_OPTIONS = frozenset({"--once", "--watch", "--interval", "--exec"})


def pending_watch_options() -> frozenset[str]:
    return WATCH_OPTIONS if "--watch" not in options_of("export") else frozenset()
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


@functools.cache
def options_of(subcommand: str) -> frozenset[str]:
    """Every option `certbot-kvault SUBCOMMAND --help` shows (the real console script)."""
    proc = subprocess.run([KVAULT, subcommand, "--help"], capture_output=True, text=True,
                          check=True)
    options = proc.stdout.split("\nOptions:\n", 1)[1]  # not the examples in the docstring
    return frozenset(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", options))


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


def check_command(argv: list[str], absent_ok: frozenset[str] = frozenset()) -> set[str]:
    """Every option of ``argv`` exists; returns those of ``absent_ok`` that do not (yet)."""
    assert argv, "certbot-kvault without a subcommand"
    sub = argv[0]
    assert sub in subcommands(), f"no such subcommand: {sub}"
    allowed = options_of(sub)
    absent = set()
    for word in argv[1:]:
        if word == "--":
            break
        if word.startswith("--"):
            option = word.split("=", 1)[0]
            if option in absent_ok and option not in allowed:
                absent.add(option)
                continue
            assert option in allowed, f"certbot-kvault {sub} has no {word}"
    return absent


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


def check_vault_login(container: dict[str, Any], volumes: dict[str, Any]) -> None:
    """Kubernetes auth with a projected token for audience vault, never a static token."""
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) <= known_env_vars(), set(env) - known_env_vars()
    assert "KVAULT_K8S_ROLE" in env and "VAULT_TOKEN" not in env
    # The token file KVAULT_K8S_TOKEN_PATH names is the projected token for audience vault.
    token_dir, token_file = os.path.split(env["KVAULT_K8S_TOKEN_PATH"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == token_dir)
    source = volumes[mount["name"]]["projected"]["sources"][0]["serviceAccountToken"]
    assert source["path"] == token_file and source["audience"] == "vault"


def manifest(path: Path) -> dict[str, dict[str, Any]]:
    """kind -> document (one of each kind per example)."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert len(kinds) == len(docs), path
    return kinds


def kvault_argv(container: dict[str, Any]) -> list[str]:
    """The certbot-kvault argv a container runs: through the image's entrypoint, or in
    a shell script (`command: [/bin/sh, -c]`)."""
    args = [str(a) for a in container["args"]]
    if container.get("command") == ["/bin/sh", "-c"]:
        (argv,) = kvault_commands(args[0])
        return argv
    assert args[0] == "certbot-kvault", args
    return args[1:]


def opt(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_kubernetes_app_manifest_is_valid() -> None:
    kinds = manifest(K8S_APP)
    assert set(kinds) == {"ServiceAccount", "Deployment"}
    sa, deploy = kinds["ServiceAccount"], kinds["Deployment"]
    assert deploy["apiVersion"] == "apps/v1"
    assert sa["metadata"]["namespace"] == deploy["metadata"]["namespace"]
    spec = deploy["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"][
        "labels"].items()
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["shareProcessNamespace"] is True  # the sidecar signals nginx
    volumes = {v["name"]: v for v in pod["volumes"]}
    for c in pod["initContainers"] + pod["containers"]:
        for mount in c["volumeMounts"]:
            assert mount["name"] in volumes, mount
    (init,) = pod["initContainers"]
    watch = next(c for c in pod["containers"] if c["name"] == "certificate-watch")
    app = next(c for c in pod["containers"] if c["name"] != "certificate-watch")
    once, watching = kvault_argv(init), kvault_argv(watch)
    assert once[:2] == watching[:2] == ["export", "example.com"]
    assert "--once" in once and "--watch" in watching and "--exec" in watching
    # Both write where the app reads: one memory-backed emptyDir.
    for c, argv in ((init, once), (watch, watching)):
        check_vault_login(c, volumes)
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == opt(argv, "--dir"))
        assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory"
        assert mount["name"] == next(m["name"] for m in app["volumeMounts"]
                                     if m["mountPath"] == "/etc/nginx/certs")


def test_kubernetes_secret_cronjob_is_valid() -> None:
    kinds = manifest(K8S_SECRET)
    assert set(kinds) == {"ServiceAccount", "Role", "RoleBinding", "CronJob"}
    sa, role, binding, cron = (kinds[k] for k in ("ServiceAccount", "Role", "RoleBinding",
                                                  "CronJob"))
    namespace = sa["metadata"]["namespace"]
    assert {d["metadata"]["namespace"] for d in kinds.values()} == {namespace}
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": namespace}]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (export_c,) = pod["initContainers"]
    (apply_c,) = pod["containers"]
    check_vault_login(export_c, volumes)
    argv = kvault_argv(export_c)
    assert argv[:2] == ["export", "example.com"] and opt(argv, "--format") == "k8s-secret"
    assert opt(argv, "--namespace") == namespace
    # kubectl may get and patch exactly the Secret the export names (and create it).
    secret = opt(argv, "--secret-name")
    verbs = {v for rule in role["rules"] if "secrets" in rule["resources"]
             and rule.get("resourceNames", [secret]) == [secret] for v in rule["verbs"]}
    assert {"get", "create", "patch"} <= verbs
    # kubectl applies the file the export wrote, through the same volume.
    out = export_c["args"][0].rsplit(">", 1)[1].strip()
    assert apply_c["args"] == ["kubectl", "apply", "-f", out]
    for c in (export_c, apply_c):
        mount = next(m for m in c["volumeMounts"] if out.startswith(m["mountPath"] + "/"))
        assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory"


def test_kubernetes_commands_exist_in_the_cli() -> None:
    absent: set[str] = set()
    pending = pending_watch_options()
    for path in (K8S_APP, K8S_SECRET):
        for doc in manifest(path).values():
            spec = doc.get("spec", {})
            pod = (spec.get("jobTemplate", {}).get("spec", spec).get("template", {})
                   .get("spec", {}))
            for c in pod.get("initContainers", []) + pod.get("containers", []):
                if "certbot-kvault" in str(c["image"]):
                    absent |= check_command(kvault_argv(c), pending)
    if absent:
        pytest.skip(f"export has no {', '.join(sorted(absent))} yet (the watch change adds "
                    "them); every other option was checked")


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
    check_vault_login(container, volumes)
    # The image's entrypoint receives `certbot-kvault renew ...`.
    args = [str(a) for a in container["args"]]
    assert args[:2] == ["certbot-kvault", "renew"]
    check_command(args[1:])
    # The run's own deadline (and its stop grace) ends before Kubernetes' kills the pod,
    # so what certbot renewed is saved first.
    timeout = float(args[args.index("--timeout") + 1])
    grace = pod.get("terminationGracePeriodSeconds", 30)
    assert timeout + DEFAULT_GRACE < spec["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    assert grace > DEFAULT_GRACE


def test_kubernetes_examples_are_hardened() -> None:
    """Every container of the certbot-kvault image runs as the image does in
    test_image.py: non-root, read-only root, no capabilities, no privilege escalation,
    and what it writes on emptyDir volumes (certbot's three dirs too for a renewer)."""
    seen = 0
    for path in (K8S, K8S_APP, K8S_SECRET):
        for doc in manifest(path).values():
            spec = doc.get("spec", {})
            pod = (spec.get("jobTemplate", {}).get("spec", spec).get("template", {})
                   .get("spec", {}))
            if not pod:
                continue
            volumes = {v["name"]: v for v in pod["volumes"]}
            for c in pod.get("initContainers", []) + pod.get("containers", []):
                if "certbot-kvault" not in str(c["image"]):
                    continue
                seen += 1
                psc, csc = pod["securityContext"], c["securityContext"]
                assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0, (path, psc)
                assert csc["readOnlyRootFilesystem"] is True, (path, c["name"])
                assert csc["allowPrivilegeEscalation"] is False, (path, c["name"])
                assert csc["capabilities"]["drop"] == ["ALL"], (path, c["name"])
                writable = {m["mountPath"] for m in c["volumeMounts"]
                            if "emptyDir" in volumes[m["name"]] and not m.get("readOnly")}
                needed = {"/tmp"}
                if kvault_argv(c)[0] in ("renew", "run"):
                    needed |= {"/etc/letsencrypt", "/var/lib/letsencrypt",
                               "/var/log/letsencrypt"}
                assert needed <= writable, (path, c["name"], needed - writable)
    assert seen == 4  # renew; export in the Secret's CronJob; the app's init and watcher


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


def _kubernetes_env(bao: Bao, token_review: TokenReviewStub, policy: str,
                    container: dict[str, Any], sa: dict[str, Any], prefix: str,
                    root: Path) -> dict[str, str]:
    """The container's env, logging in as the manifest's header says: Kubernetes auth
    (stub TokenReview API), the role bound to the service account ``sa`` (metadata),
    the projected token at the manifest's path under ``root``."""
    env = {e["name"]: str(e["value"]) for e in container["env"]}
    mount = enable_auth(bao, "kubernetes")
    kubernetes_role(bao, token_review, mount, env["KVAULT_K8S_ROLE"], sa, policy)
    token_path = root / env["KVAULT_K8S_TOKEN_PATH"].lstrip("/")
    token_path.parent.mkdir(parents=True)
    token_path.write_text(token_review.service_account_token(sa["namespace"], sa["name"],
                                                             audience="vault"))
    env.update(VAULT_ADDR=bao.addr, KVAULT_PREFIX=prefix, KVAULT_K8S_MOUNT=mount,
               KVAULT_K8S_TOKEN_PATH=str(token_path))
    env.pop("VAULT_CACERT")  # the test server speaks plain http
    return env


def test_run_kubernetes_cronjob(bao: Bao, golden: Golden, calm_vault: tuple[str, str, int],
                                token_review: TokenReviewStub, tmp_path: Path) -> None:
    prefix, policy, version = calm_vault
    container = cronjob_container()
    sa = next(d for d in k8s_docs() if d["kind"] == "ServiceAccount")["metadata"]
    # The Vault side exactly as the manifest's header says; the pod's filesystem, under
    # tmp_path.
    env = _kubernetes_env(bao, token_review, policy, container, sa, prefix, tmp_path)

    def here(path: str) -> str:
        return str(tmp_path / path.lstrip("/"))
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


@pytest.fixture
def example_com(bao: Bao, golden: Golden, vault_env: dict[str, str]) -> tuple[str, str]:
    """The golden ``calm`` lineage as ``example.com`` (the examples' lineage); returns
    (prefix, the reader policy)."""
    prefix = vault_env["KVAULT_PREFIX"]
    r = bao.api("GET", f"secret/data/{golden.prefix}/certificates/calm")
    assert r.status_code == 200, r.text
    w = bao.api("POST", f"secret/data/{prefix}/certificates/example.com",
                json={"data": r.json()["data"]["data"]})
    assert w.status_code == 200, w.text
    return prefix, load_policy(bao, "reader", prefix)


def test_run_kubernetes_secret_export(bao: Bao, example_com: tuple[str, str],
                                      token_review: TokenReviewStub, tmp_path: Path) -> None:
    """The CronJob's export step, logged in as its service account with the reader
    policy: the Secret it writes for kubectl holds Vault's PEMs."""
    prefix, policy = example_com
    kinds = manifest(K8S_SECRET)
    pod = kinds["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["initContainers"]
    env = _kubernetes_env(bao, token_review, policy, container,
                          kinds["ServiceAccount"]["metadata"], prefix, tmp_path)
    script = container["args"][0].replace(" /out/", f" {tmp_path}/")
    proc = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True,
                          timeout=120, env=scrubbed_env(**env, PATH=f"{VENV_BIN}:/usr/bin:/bin"))
    assert proc.returncode == 0, proc.stderr
    secret = yaml.safe_load((tmp_path / "secret.yaml").read_text())
    assert (secret["kind"], secret["type"]) == ("Secret", "kubernetes.io/tls")
    assert secret["metadata"]["name"] == "example-com-tls"
    assert secret["metadata"]["labels"]["certbot-kvault/lineage"] == "example.com"
    data = bao.api("GET", f"secret/data/{prefix}/certificates/example.com").json()["data"]["data"]
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {
        "tls.crt": data["fullchain"], "tls.key": data["privkey"]}


def test_run_kubernetes_app_init_container(bao: Bao, example_com: tuple[str, str],
                                          token_review: TokenReviewStub,
                                          tmp_path: Path) -> None:
    """The app's init container, logged in as its service account with the reader
    policy, writes exactly the two files nginx reads, equal to Vault's PEMs."""
    if pending_watch_options():
        pytest.skip("export has no --once yet (the watch change adds it)")
    prefix, policy = example_com
    kinds = manifest(K8S_APP)
    (container,) = kinds["Deployment"]["spec"]["template"]["spec"]["initContainers"]
    env = _kubernetes_env(bao, token_review, policy, container,
                          kinds["ServiceAccount"]["metadata"], prefix, tmp_path)
    argv = kvault_argv(container)
    certs = tmp_path / opt(argv, "--dir").lstrip("/")
    argv[argv.index("--dir") + 1] = str(certs)
    proc = subprocess.run([KVAULT, *argv], capture_output=True, text=True, timeout=120,
                          env=scrubbed_env(**env))
    assert proc.returncode == 0, proc.stderr
    data = bao.api("GET", f"secret/data/{prefix}/certificates/example.com").json()["data"]["data"]
    # --once writes as --watch does: the files are links into the `..data` version dir.
    assert {p.name: p.read_text() for p in certs.iterdir() if not p.name.startswith("..")} \
        == {"fullchain.pem": data["fullchain"], "privkey.pem": data["privkey"]}
    assert (certs / "privkey.pem").stat().st_mode & 0o777 == 0o600


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
    for path in (K8S, K8S_APP, K8S_SECRET, GITLAB, GITHUB):
        assert str(path.relative_to(EX)) in text
    assert "systemd/" in text and "agent/" in text
    assert click.unstyle(text) == text
