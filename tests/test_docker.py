"""docker/: the Dockerfile is linted, and the entrypoint is run on the host like the container.

test_image.py builds the image and runs it with podman. Here, without a container,
the entrypoint (a POSIX sh script) runs under /bin/sh (dash on Debian, as strict as
the image's busybox ash) with PATH pointing at this virtualenv, where the image has
certbot and certbot-kvault next to its Python.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Golden, kv_version, record, scrubbed_env
from servers import Bao

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
VENV_BIN = os.path.dirname(sys.executable)



def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    assert not current, "dangling line continuation"
    return out


def test_dockerfile_hadolint() -> None:
    hadolint = shutil.which("hadolint") or os.path.join(VENV_BIN, "hadolint")
    assert os.path.exists(hadolint), \
        "hadolint not found: install the test extras (pip install -e '.[test]')"
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_parses_and_is_consistent() -> None:
    ins = _instructions()
    known = {"ARG", "FROM", "LABEL", "COPY", "RUN", "ENV", "ENTRYPOINT", "CMD", "WORKDIR",
             "USER"}
    assert {w for w, _ in ins} <= known
    assert ins[0][0] in ("ARG", "FROM")
    froms = [a for w, a in ins if w == "FROM"]
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for w, a in ins if w == "ARG" and "=" in a}
    image = froms[0].replace("${CERTBOT_IMAGE}", args.get("CERTBOT_IMAGE", ""))
    assert image.startswith("certbot/certbot:v"), image  # the official image, pinned

    # Every COPY source exists in the repository (the build context is the repo root)
    # and .dockerignore lets it through; COPY --from copies from the empty stage.
    allowed = [ln[1:] for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.startswith("!")]
    for word, rest in ins:
        if word != "COPY" or "--from=empty" in rest:
            continue
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        for src in parts[:-1]:
            if src == "README.md" and not (ROOT / src).exists():
                continue  # written by the docs issue; pyproject needs it too
            assert (ROOT / src).exists(), f"COPY source {src} missing"
            assert src in allowed, f"COPY source {src} is not let through .dockerignore"

    # ENTRYPOINT (exec form) is the script the Dockerfile copies in; CMD is renew.
    entry = json.loads(next(a for w, a in ins if w == "ENTRYPOINT"))
    copied = [shlex.split(a) for w, a in ins if w == "COPY" and "docker/entrypoint.sh" in a]
    assert copied and copied[0][-1] == entry[0]
    assert "--chmod=0755" in copied[0]
    assert json.loads(next(a for w, a in ins if w == "CMD")) == ["certbot-kvault", "renew"]
    # Not root, by number (what Kubernetes' runAsNonRoot can check).
    (user,) = [a for w, a in ins if w == "USER"]
    assert all(part.isdigit() and int(part) != 0 for part in user.split(":")), user
    env = " ".join(a for w, a in ins if w == "ENV")
    assert "KVAULT_CONFIG_DIR=/etc/letsencrypt" in env
    run = " ".join(a for w, a in ins if w == "RUN")
    assert "pip install --no-cache-dir /src/certbot-kvault" in run


def test_entrypoint_is_posix_sh() -> None:
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert os.access(ENTRYPOINT, os.X_OK)
    for bashism in ("[[", "function ", "$'", "local ", "pipefail", "<<<"):
        assert bashism not in text, bashism
    shells = [s for s in ("/bin/sh", shutil.which("dash"), shutil.which("busybox")) if s]
    for sh in shells:
        argv = [sh, "sh", "-n", str(ENTRYPOINT)] if sh.endswith("busybox") else \
            [sh, "-n", str(ENTRYPOINT)]
        proc = subprocess.run(argv, capture_output=True, text=True)
        assert proc.returncode == 0, (sh, proc.stderr)


class Container:
    """The entrypoint with the image's environment, on this host."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env

    def wipe(self) -> None:
        """A fresh container: nothing on disk."""
        for sub in ("etc-letsencrypt", "var-lib", "var-log"):
            shutil.rmtree(self.root / sub, ignore_errors=True)

    def run(self, *args: str, direct: bool = False) -> subprocess.CompletedProcess[str]:
        argv = [str(ENTRYPOINT), *args] if direct else ["/bin/sh", str(ENTRYPOINT), *args]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=180,
                              stdin=subprocess.DEVNULL)


@pytest.fixture
def container(bao: Bao, golden: Golden, vault_env: dict[str, str],
              tmp_path: Path) -> Container:
    env = scrubbed_env(
        VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.token, KVAULT_PREFIX=vault_env["KVAULT_PREFIX"],
        REQUESTS_CA_BUNDLE=golden.ca_bundle,
        KVAULT_CONFIG_DIR=str(tmp_path / "etc-letsencrypt"),
        KVAULT_WORK_DIR=str(tmp_path / "var-lib"), KVAULT_LOGS_DIR=str(tmp_path / "var-log"),
        PATH=f"{VENV_BIN}:/usr/bin:/bin", HOME=str(tmp_path))
    return Container(tmp_path, env)


def test_entrypoint_like_the_container(container: Container, bao: Bao, golden: Golden,
                                       vault_env: dict[str, str]) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    pebble = golden.pebble
    # docker run IMAGE certonly ...: pull (nothing yet) -> certbot -> push.
    proc = container.run("certonly", "--standalone", "--http-01-port", str(pebble.http_port),
                         "-d", "docker.example.com", "--server", pebble.directory_url,
                         "--agree-tos", "--register-unsafely-without-email",
                         "--non-interactive")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    entry = record(bao, prefix, "certificates/docker.example.com")
    assert entry is not None and entry["version"] == 1
    assert bao.api("LIST", f"secret/metadata/{prefix}/accounts").status_code == 200

    # The next container starts empty: docker run IMAGE certbot-kvault renew -- --force-renewal
    container.wipe()
    proc = container.run("certbot-kvault", "renew", "--", "--force-renewal", direct=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "renewed: docker.example.com" in proc.stdout
    assert record(bao, prefix, "certificates/docker.example.com")["version"] == 2  # type: ignore[index]
    assert (container.root / "etc-letsencrypt" / "live" / "docker.example.com").is_dir()

    # docker run IMAGE (no arguments) = certbot-kvault renew: nothing due, nothing written.
    container.wipe()
    version = kv_version(bao, prefix, "certificates/docker.example.com")
    proc = container.run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nothing is due" in proc.stdout
    assert kv_version(bao, prefix, "certificates/docker.example.com") == version

    # docker run IMAGE certbot certificates: certbot sees Vault's lineages in an empty dir.
    container.wipe()
    proc = container.run("certbot", "certificates")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Certificate Name: docker.example.com" in proc.stdout

    # Other certbot-kvault subcommands pass straight through.
    proc = container.run("certbot-kvault", "list", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)[0]["name"] == "docker.example.com"


def test_entrypoint_exit_statuses(container: Container) -> None:
    # certbot's own failure status comes back unchanged.
    proc = container.run("--no-such-certbot-flag")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    # Vault refusing us: certbot is not run, non-zero, one clear line.
    container.wipe()
    container.env["VAULT_TOKEN"] = "not-a-token"
    proc = container.run("certificates")
    assert proc.returncode == 1
    assert "does not know the token in VAULT_TOKEN" in proc.stderr
    assert "not-a-token" not in proc.stderr
    assert not (container.root / "var-log" / "letsencrypt.log").exists()  # certbot never ran
