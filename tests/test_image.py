"""The image (docker/Dockerfile), built once per session and run with podman as users run
it, against the real OpenBao, Pebble and PowerDNS on loopback (image.py says how it is
built without a registry, and with which podman flags).

Each test starts containers of the session's image: the default command (stateless
renew), ``certonly -a kvault`` through the entrypoint, ``certbot-kvault list``, an
AppRole login, a Vault that cannot be reached, the Kubernetes CronJob example under its
own securityContext, and ``podman stop`` in the middle of a renewal. A missing tool
(podman, runc, debootstrap) fails them with one line naming it; they never skip.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import image as image_mod
import pytest
import servers
import yaml
from helpers import (
    Golden,
    TokenReviewStub,
    approle,
    kubernetes_role,
    kv_version,
    layout_from_env,
    live_login_tokens,
    load_policy,
    locks_held,
    one_line_error,
    orders,
    pdns_entry,
    record,
    resolver_opt,
    secret_id_uses_left,
    seed,
)
from servers import Bao, Pebble, PowerDNS

K8S = image_mod.REPO / "examples" / "kubernetes" / "cronjob.yaml"
# Where the containers find the Pebbles' CA (Pebble's listener is the test rig's own).
PEBBLE_CA = "/etc/kvault-test/pebble-ca.pem"
# The hardened `docker run` of README.md and docker/Dockerfile: read-only root, no
# capabilities, the base image's two volumes and tmpfs for the rest.
HARDENED = ("--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--tmpfs", "/var/log/letsencrypt", "--tmpfs", "/tmp")


@pytest.fixture(scope="session")
def image() -> Iterator[image_mod.Image]:
    """docker/Dockerfile built on the stand-in base, once per session; removed at the end."""
    error = None
    try:
        built = image_mod.build()
    except image_mod.ImageError as e:
        error = str(e)
    if error:
        pytest.fail(error, pytrace=False)
    try:
        yield built
    finally:
        built.remove()


def vault_vars(bao: Bao, prefix: str, **extra: str) -> dict[str, str]:
    """The container's environment for the session Vault, as `docker run -e` gives it."""
    return {"VAULT_ADDR": bao.addr, "VAULT_TOKEN": bao.token, "KVAULT_PREFIX": prefix,
            "REQUESTS_CA_BUNDLE": PEBBLE_CA, **extra}


def ca_mount(golden: Golden) -> tuple[str, str]:
    return golden.ca_bundle, f"{PEBBLE_CA}:ro"


def lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def writable_dir(path: Path) -> Path:
    """A host dir any container user may write (kubelet makes an emptyDir 0777 too)."""
    path.mkdir(parents=True)
    path.chmod(0o777)
    return path


# ---- the image as built -----------------------------------------------------------------


def test_image_runs_as_nobody_and_can_write_its_dirs(image: image_mod.Image) -> None:
    config = image.podman.inspect(image.tag)["Config"]
    assert isinstance(config, dict)
    assert config["User"] == "65534:65534"
    assert config["Entrypoint"] == ["/usr/local/bin/certbot-kvault-entrypoint"]
    assert config["Cmd"] == ["certbot-kvault", "renew"]
    # A plain run (no volume given): the user, and the three dirs certbot writes, as the
    # official base's VOLUMEs make them.
    proc = ok(image.run("-c", "id -u; for d in /etc/letsencrypt /var/lib/letsencrypt "
                              "/var/log/letsencrypt; do touch $d/probe || exit 1; done",
                        flags=["--entrypoint", "/bin/sh"]))
    assert proc.stdout.split() == ["65534"]


# ---- the default command, certonly, list --------------------------------------------------


def test_image_default_command_renews_statelessly(image: image_mod.Image, bao: Bao,
                                                   golden: Golden,
                                                   vault_env: dict[str, str]) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    calm = kv_version(bao, prefix, "certificates/calm")
    # Nothing due: one line, exit 0, nothing written.
    proc = ok(image.run(env=vault_vars(bao, prefix), volumes=[ca_mount(golden)]))
    (line,) = lines(proc)
    assert "nothing is due" in line, line
    assert kv_version(bao, prefix, "certificates/calm") == calm

    # Due: renewed by a container that starts empty, and saved as the next version.
    seed(bao, golden, prefix, ["due"])
    due = kv_version(bao, prefix, "certificates/due")
    proc = ok(image.run(env=vault_vars(bao, prefix), volumes=[ca_mount(golden)]))
    assert "renewed: due" in proc.stdout, proc.stdout
    assert kv_version(bao, prefix, "certificates/due") == due + 1
    assert kv_version(bao, prefix, "certificates/calm") == calm
    assert locks_held(bao, prefix) == []


def test_image_certonly_then_list_from_a_fresh_container(
        image: image_mod.Image, bao: Bao, golden: Golden, pebble: Pebble, pdns: PowerDNS,
        vault_env: dict[str, str]) -> None:
    """`docker run IMAGE certonly -a kvault ...` (hardened): pull (the account), certbot,
    push."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, [])  # the accounts only
    layout_from_env().save_dns("pdns", pdns_entry(pdns))
    accounts = bao.api("LIST", f"secret/metadata/{prefix}/accounts").json()["data"]["keys"]
    before = orders(pebble)
    domain = f"img-{secrets.token_hex(3)}.example.com"
    proc = ok(image.run(
        "certonly", "-a", "kvault", "--kvault-dns", "pdns", "--kvault-dns-resolver",
        resolver_opt(pdns), "-d", domain, "--server", pebble.directory_url,
        "--agree-tos", "--register-unsafely-without-email", "--non-interactive",
        env=vault_vars(bao, prefix), volumes=[ca_mount(golden)], flags=HARDENED))
    assert orders(pebble) == before + 1
    saved = record(bao, prefix, f"certificates/{domain}")
    assert saved is not None, proc.stdout + proc.stderr
    assert int(saved["version"]) == 1 and "authenticator = kvault" in saved["renewal"]
    # certbot used the account pulled from Vault: no second one was registered.
    assert bao.api("LIST", f"secret/metadata/{prefix}/accounts").json()["data"][
        "keys"] == accounts

    # Another container, empty again, lists what Vault holds.
    proc = ok(image.run("certbot-kvault", "list", env=vault_vars(bao, prefix)))
    assert domain in proc.stdout, proc.stdout


# ---- logins and errors --------------------------------------------------------------------


def test_image_approle_login_leaves_no_token(image: image_mod.Image, bao: Bao,
                                             golden: Golden,
                                             vault_env: dict[str, str]) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    creds = approle(bao, load_policy(bao, "renewer", prefix), secret_id_num_uses=5)
    env = vault_vars(bao, prefix, **creds)
    del env["VAULT_TOKEN"]
    proc = ok(image.run(env=env, volumes=[ca_mount(golden)]))
    assert "nothing is due" in proc.stdout
    assert secret_id_uses_left(bao, creds) == 4  # it logged in, once
    assert live_login_tokens(bao, creds["KVAULT_APPROLE_MOUNT"]) == 0  # and revoked it


def test_image_unreachable_vault_is_one_line(image: image_mod.Image, bao: Bao) -> None:
    addr = f"http://127.0.0.1:{servers.free_port()}"
    proc = image.run(env={"VAULT_ADDR": addr, "VAULT_TOKEN": bao.token})
    assert proc.returncode != 0
    err = one_line_error(proc)
    assert proc.stdout.strip() == "", proc.stdout
    assert f"Cannot reach Vault at {addr}" in err and "VAULT_ADDR" in err, err
    assert bao.token not in err


# ---- the Kubernetes CronJob example, under its own securityContext -------------------------


@pytest.fixture(scope="module")
def tls_bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    """A Vault of the CronJob's own, over TLS (its VAULT_CACERT is used), its KV prefix
    the manifest's."""
    server = servers.start_openbao_dev(tmp_path_factory.mktemp("bao-tls"), tls=True)
    try:
        yield server
    finally:
        server.stop()


def _hardening(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """podman flags for the pod's and the container's securityContext and limits; each
    setting the example must carry is asserted first."""
    psc, csc = pod["securityContext"], container["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0, psc
    assert csc["readOnlyRootFilesystem"] is True, csc
    assert csc["allowPrivilegeEscalation"] is False, csc
    assert csc["capabilities"]["drop"] == ["ALL"], csc
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"  # podman's default profile
    return ["--user", f"{psc['runAsUser']}:{psc['runAsGroup']}",
            "--group-add", str(psc["fsGroup"]),
            # Kubernetes mounts nothing writable that the pod does not declare: no
            # podman tmpfs on /tmp, /var/tmp, /run.
            "--read-only", "--read-only-tmpfs=false",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--memory", container["resources"]["limits"]["memory"].replace("Mi", "m")]


def test_image_runs_the_cronjob_example_hardened(
        image: image_mod.Image, bao: Bao, tls_bao: Bao, golden: Golden,
        token_review: TokenReviewStub, tmp_path: Path) -> None:
    """The CronJob's image arguments, environment names, volumes and securityContext, read
    from examples/kubernetes/cronjob.yaml: a due lineage is renewed and saved, by a
    non-root container with a read-only root and no capabilities."""
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    cron = next(d for d in docs if d["kind"] == "CronJob")
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]
    job = cron["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert "command" not in container  # the image's entrypoint runs the args
    env = {e["name"]: str(e["value"]) for e in container["env"]}

    # Vault as the manifest's header sets it up: the renewer and DNS policies, the
    # kubernetes auth method at its default path, the role bound to the service account.
    prefix = env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due", "calm"], target=tls_bao)
    r = tls_bao.api("POST", "sys/auth/kubernetes", json={"type": "kubernetes"})
    assert r.status_code == 204, r.text
    kubernetes_role(tls_bao, token_review, "kubernetes", env["KVAULT_K8S_ROLE"], sa,
                    load_policy(tls_bao, "renewer", prefix),
                    load_policy(tls_bao, "dns-all", prefix))
    due = kv_version(tls_bao, prefix, "certificates/due")
    calm = kv_version(tls_bao, prefix, "certificates/calm")

    # The pod's volumes, on this host.
    volumes_by_name = {v["name"]: v for v in pod["volumes"]}
    mounts: list[tuple[str, str]] = [ca_mount(golden)]
    emptydirs: dict[str, Path] = {}
    for m in container["volumeMounts"]:
        vol, path = volumes_by_name[m["name"]], m["mountPath"]
        host = tmp_path / m["name"]
        if "emptyDir" in vol:
            emptydirs[path] = writable_dir(host)
        elif "projected" in vol:  # the service account's token for audience vault
            (source,) = vol["projected"]["sources"]
            token = source["serviceAccountToken"]
            host.mkdir()
            (host / token["path"]).write_text(token_review.service_account_token(
                sa["namespace"], sa["name"], audience=token["audience"]))
        elif "configMap" in vol:  # Vault's CA, the file VAULT_CACERT names
            assert vol["configMap"]["name"] == "vault-ca"
            host.mkdir()
            assert tls_bao.ca_cert is not None
            (host / os.path.relpath(env["VAULT_CACERT"], path)).write_text(
                Path(tls_bao.ca_cert).read_text())
        else:
            raise AssertionError(f"a volume the test does not know: {vol}")
        for f in host.rglob("*"):
            f.chmod(0o644)
        mounts.append((str(host), f"{path}:ro" if m.get("readOnly") else path))

    # The cluster's address is the only value changed; REQUESTS_CA_BUNDLE (the test
    # Pebble's CA) the only variable added.
    env.update(VAULT_ADDR=tls_bao.addr, REQUESTS_CA_BUNDLE=PEBBLE_CA)
    reviews = token_review.reviews
    proc = ok(image.run(*[str(a) for a in container["args"]], env=env, volumes=mounts,
                        flags=_hardening(pod, container),
                        timeout=float(job["activeDeadlineSeconds"])))
    assert token_review.reviews > reviews  # logged in with the service account's token
    assert "renewed: due" in proc.stdout, proc.stdout
    assert kv_version(tls_bao, prefix, "certificates/due") == due + 1
    assert kv_version(tls_bao, prefix, "certificates/calm") == calm
    assert locks_held(tls_bao, prefix) == []
    args = [str(a) for a in container["args"]]
    metrics_path = Path(args[args.index("--metrics-file") + 1])
    metrics = (emptydirs[str(metrics_path.parent)] / metrics_path.name).read_text()
    assert 'certbot_kvault_certificate_days_to_expiry{lineage="calm"}' in metrics


# ---- stopped in the middle of a renewal -----------------------------------------------------


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the container exited {proc.returncode} first\n{out}\n{err}")
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.2)


def test_image_stop_mid_renewal_saves_to_vault(image: image_mod.Image, bao: Bao,
                                               golden: Golden, vault_env: dict[str, str],
                                               tmp_path: Path) -> None:
    """`podman stop` (SIGTERM, then SIGKILL after 10 s) once certbot has renewed, while
    its deploy hook still runs: the certificate is in Vault when the container exits.

    certbot defers a SIGTERM until a running hook ends (measured: it then carries on as
    if none came), so the hook is short (3 s): certbot-kvault, PID 1, must wait for
    certbot, save what it renewed and exit non-zero, all within podman's grace."""
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    before = kv_version(bao, prefix, "certificates/due")
    signal_dir = writable_dir(tmp_path / "signal")
    name = f"ckt-stop-{secrets.token_hex(4)}"
    env = vault_vars(bao, prefix)
    argv = image.run_argv(
        "certbot-kvault", "renew", "--", "--force-renewal",
        "--deploy-hook", "touch /signal/renewed; sleep 3",
        env=sorted(env), volumes=[ca_mount(golden), (str(signal_dir), "/signal")], name=name)
    outer = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    proc = subprocess.Popen(argv, env={**outer, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    out: Optional[str] = None
    try:
        _wait_for(signal_dir / "renewed", proc, timeout=120)
        # The entrypoint exec'd: PID 1 is certbot-kvault itself, so the SIGTERM reaches
        # the Python process, not a shell.
        pid = image.podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
        pid1 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        t0 = time.monotonic()
        image.podman("stop", "-t", "10", name, timeout=60)
        stopped = time.monotonic() - t0
        out, err = proc.communicate(timeout=60)
    finally:
        if out is None:
            proc.kill()
            image.podman("rm", "-f", name, check=False)
    assert os.path.basename(pid1[1].decode()) == "certbot-kvault", pid1
    print(f"\n[measure] podman stop mid-renewal: the container exited {stopped:.1f} s after "
          f"the stop, status {proc.returncode}")
    assert proc.returncode != 137, f"killed after the grace\n{out}\n{err}"
    assert proc.returncode != 0, f"the stop came after the run ended\n{out}\n{err}"
    assert kv_version(bao, prefix, "certificates/due") == before + 1, out + err
    assert locks_held(bao, prefix) == []
    assert "due" in out + err

