"""The certbot-kvault image (docker/Dockerfile), built and run with podman as users run it.

No container registry is reachable from the test machines, so the official
``certbot/certbot:vX`` base (the Dockerfile's default ``FROM``) is replaced by a
stand-in with the same contract, made from Debian's packages and the package index
only (``standin``):

- ``debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates
  bookworm``, without apt's caches, docs and locales;
- certbot in the image's Python: a venv at ``/opt/certbot`` with ``certbot==X``, X the
  version of the Dockerfile's default base;
- as the official image: ``PATH`` with ``/opt/certbot/bin`` first (certbot and pip),
  ``ENTRYPOINT ["certbot"]``, ``VOLUME /etc/letsencrypt /var/lib/letsencrypt``,
  ``WORKDIR /opt/certbot``, user root.

The host's CA bundle replaces the stand-in's before pip runs: where the network
re-signs TLS (these machines), pip then works in the chroot and in ``podman build``.

Podman keeps its images in storage of its own under the cache dir
(``KVAULT_IMAGE_CACHE``, default ``~/.cache/certbot-kvault``), so other users of
podman on the machine are not disturbed. The stand-in stays there between runs (its
root filesystem as a tar beside it), keyed by the certbot version and ``RECIPE``;
made from nothing it takes about a minute (more on a busy machine). Each test
session builds the Dockerfile once into a tag of its own and removes it at the end. A
file lock serialises the builds of concurrent sessions; their containers share the
storage, which podman locks itself.

Storage driver: overlay where the kernel mounts it (a container starts in a fraction
of a second), else vfs (every container copies the whole image: seconds);
``KVAULT_PODMAN_DRIVER`` forces one. Runtime runc (crun refuses some hosts' hybrid
cgroups); builds with ``--isolation chroot``; containers with ``--network host`` (the
test servers listen on 127.0.0.1) and explicit ulimits (podman's defaults fail
``setrlimit`` on these machines).

``python tests/image.py`` builds (or finds) the stand-in and an image of this tree,
tagged ``localhost/certbot-kvault:dev``, and prints the podman command to run it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "docker" / "Dockerfile"
CACHE = Path(os.environ.get("KVAULT_IMAGE_CACHE")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
             / "certbot-kvault")
# Bump when the stand-in's recipe changes: a cached stand-in of another recipe is rebuilt.
RECIPE = "1"
RECIPE_LABEL = "io.github.certbot-kvault.standin-recipe"
TEST_REPO = "localhost/certbot-kvault-test"
# Tool -> the Debian package that brings it (scripts/setup.sh installs them).
TOOLS = {"podman": "podman", "runc": "runc", "debootstrap": "debootstrap", "chroot": "coreutils",
         "tar": "tar"}
RUN_FLAGS = ("--network", "host", "--ulimit", "nofile=1024:1024",
             "--ulimit", "nproc=4096:4096")
# What the official image sets (certbot's tools/docker/core/Dockerfile), given to
# `podman import --change`.
STANDIN_CHANGES = (
    "ENV PATH=/opt/certbot/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    'ENTRYPOINT ["certbot"]',
    'VOLUME ["/etc/letsencrypt", "/var/lib/letsencrypt"]',
    "WORKDIR /opt/certbot",
    "EXPOSE 80",
    "EXPOSE 443",
)
# A session image older than this is a crashed session's: removed before a build.
STALE = datetime.timedelta(hours=12)


class ImageError(Exception):
    """Why the image cannot be built or run here, in one line."""


def log(msg: str) -> None:
    print(f"[image] {msg}", file=sys.stderr, flush=True)


def check_host() -> None:
    """Every tool the image tests need, and root (debootstrap, chroot, podman's storage)."""
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise ImageError(f"error: {tool} not found: the image tests need it "
                             f"(bash scripts/setup.sh installs it: apt-get install {package})")
    if os.geteuid() != 0:
        raise ImageError("error: the image tests need root (debootstrap, chroot and podman's "
                         "own storage): run them as root, as scripts/test.sh in CI does")


def certbot_version() -> str:
    """X of the Dockerfile's default base, ``certbot/certbot:vX``."""
    m = re.search(r"^ARG CERTBOT_IMAGE=certbot/certbot:v(\S+)$", DOCKERFILE.read_text(),
                  re.MULTILINE)
    if not m:
        raise ImageError(f"error: no `ARG CERTBOT_IMAGE=certbot/certbot:vX` in {DOCKERFILE}")
    return m.group(1)


def host_ca_bundle() -> Path:
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt",
                      ssl.get_default_verify_paths().cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ImageError("error: no CA bundle on this host for pip in the stand-in "
                     "(/etc/ssl/certs/ca-certificates.crt; set SSL_CERT_FILE)")


def overlay_mounts() -> bool:
    """Can this kernel mount overlay here (not on every host: some roots are overlays)?"""
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="overlay-probe-") as tmp:
        dirs = [Path(tmp, d) for d in ("lower", "upper", "work", "merged")]
        for d in dirs:
            d.mkdir()
        lower, upper, work, merged = dirs
        proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                               f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)],
                              capture_output=True)
        if proc.returncode != 0:
            return False
        subprocess.run(["umount", str(merged)], check=True)
        return True


@dataclasses.dataclass(frozen=True)
class Podman:
    """podman with its own storage (one per driver) under the cache dir."""

    driver: str

    @property
    def home(self) -> Path:
        return CACHE / f"podman-{self.driver}"

    def argv(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.home / "root"), "--runroot", str(self.home / "run"),
                "--tmpdir", str(self.home / "tmp"), "--storage-driver", self.driver,
                "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                *args]

    def __call__(self, *args: str, check: bool = True, timeout: float = 600,
                 env: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL,
                              env=dict(os.environ if env is None else env))
        if check and proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or [""])[-1]
            raise ImageError(f"error: podman {' '.join(args[:2])} exited {proc.returncode}: "
                             f"{tail}")
        return proc

    def image_exists(self, ref: str) -> bool:
        return self("image", "exists", ref, check=False).returncode == 0

    def inspect(self, ref: str) -> dict[str, object]:
        data = json.loads(self("image", "inspect", ref).stdout)
        return dict(data[0])


def podman() -> Podman:
    forced = os.environ.get("KVAULT_PODMAN_DRIVER")
    if forced:
        if forced not in ("overlay", "vfs"):
            raise ImageError(f"error: KVAULT_PODMAN_DRIVER={forced}: overlay or vfs")
        return Podman(forced)
    return Podman("overlay" if overlay_mounts() else "vfs")


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    """One build at a time on this machine (concurrent test sessions share the cache)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "build.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(argv: Sequence[str], what: str, timeout: float = 900,
         env: Optional[Mapping[str, str]] = None) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=None if env is None else dict(env))
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [""]
        raise ImageError(f"error: {what} exited {proc.returncode}: {tail[0]}")


def standin(p: Podman, version: str) -> tuple[str, float]:
    """``localhost/certbot-standin:vVERSION`` in ``p``'s storage; (tag, seconds spent).

    Its root filesystem is kept as a tar in the cache dir too, so another storage
    (the other driver, or a storage wiped) imports it again without a debootstrap.
    """
    tag = f"localhost/certbot-standin:v{version}"
    if p.image_exists(tag):
        labels = p.inspect(tag).get("Labels") or {}
        if isinstance(labels, dict) and labels.get(RECIPE_LABEL) == RECIPE:
            return tag, 0.0
    t0 = time.monotonic()
    tar = CACHE / f"standin-{version}-r{RECIPE}.tar"
    if not tar.exists():
        make_standin_tar(version, tar)
    changes = [*STANDIN_CHANGES, f"LABEL {RECIPE_LABEL}={RECIPE}"]
    p("import", *[a for c in changes for a in ("--change", c)], str(tar), tag)
    return tag, time.monotonic() - t0


def make_standin_tar(version: str, tar: Path) -> None:
    """The stand-in's root filesystem: Debian's minimal bootstrap, certbot in a venv."""
    log(f"making the certbot {version} stand-in: debootstrap bookworm, then pip install "
        f"certbot=={version}")
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="standin-") as tmp:
        root = Path(tmp, "root")
        _run(["debootstrap", "--variant=minbase",
              "--include=python3,python3-venv,ca-certificates", "bookworm", str(root)],
             "debootstrap")
        shutil.copyfile(host_ca_bundle(), root / "etc/ssl/certs/ca-certificates.crt")
        chroot_env = {"PATH": "/opt/certbot/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                      "HOME": "/root", "LANG": "C.UTF-8"}
        _run(["chroot", str(root), "/usr/bin/python3", "-m", "venv", "/opt/certbot"],
             "python3 -m venv", env=chroot_env)
        _run(["chroot", str(root), "/opt/certbot/bin/pip", "install", "--no-cache-dir",
              "--disable-pip-version-check", f"certbot=={version}"],
             f"pip install certbot=={version} (in the chroot)", env=chroot_env)
        for junk in ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                     "usr/share/locale", "usr/share/info"):
            shutil.rmtree(root / junk, ignore_errors=True)
        partial = Path(tmp, "root.tar")
        _run(["tar", "-C", str(root), "-cf", str(partial), "."], "tar")
        os.replace(partial, tar)


def remove_stale(p: Podman) -> None:
    """Session images of crashed sessions (older than STALE), and their containers."""
    out = p("images", "--format", "json", "--filter", f"reference={TEST_REPO}").stdout
    now = datetime.datetime.now(datetime.timezone.utc)
    for img in json.loads(out or "[]"):
        created = datetime.datetime.fromtimestamp(int(img.get("Created", 0)),
                                                  datetime.timezone.utc)
        if now - created > STALE:
            p("rmi", "--force", img["Id"], check=False)


@dataclasses.dataclass
class Image:
    """An image of this tree, built on the stand-in; ``run`` starts it as users do."""

    podman: Podman
    tag: str
    base: str
    standin_seconds: float
    build_seconds: float

    def run_argv(self, *args: str, env: Sequence[str] = (),
                 volumes: Sequence[tuple[str, str]] = (), flags: Sequence[str] = (),
                 name: Optional[str] = None, rm: bool = True) -> list[str]:
        """``podman run`` of this image: ``env`` names passed with ``-e NAME`` (their
        values come from podman's own environment, as ``docker run -e VAULT_TOKEN``);
        ``volumes`` (host, "container[:ro]")."""
        argv = ["run", *RUN_FLAGS, "--name", name or f"ckt-{secrets.token_hex(4)}",
                "--label", "certbot-kvault-test=1"]
        if rm:
            argv.append("--rm")
        for e in env:
            argv += ["-e", e]
        for host, inside in volumes:
            argv += ["-v", f"{host}:{inside}"]
        return self.podman.argv(*argv, *flags, self.tag, *args)

    def run(self, *args: str, env: Optional[Mapping[str, str]] = None,
            volumes: Sequence[tuple[str, str]] = (), flags: Sequence[str] = (),
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run to the end; ``env``: the container's variables (nothing else is passed)."""
        env = dict(env or {})
        outer = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
        return subprocess.run(self.run_argv(*args, env=sorted(env), volumes=volumes,
                                            flags=flags),
                              env={**outer, **env}, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def size(self) -> int:
        return int(str(self.podman.inspect(self.tag)["Size"]))

    def remove(self) -> None:
        self.podman("rmi", "--force", self.tag, check=False)

    def describe(self) -> str:
        standin = (f"made in {self.standin_seconds:.0f} s" if self.standin_seconds
                   else "cached")
        return (f"{self.tag} on {self.base} ({standin}), podman build "
                f"{self.build_seconds:.1f} s, {self.podman.driver} storage")


# The images this process built (the test summary names them).
BUILT: list[Image] = []


def build(tag: Optional[str] = None) -> Image:
    """The stand-in (cached) and an image of this tree on it, under the build lock."""
    check_host()
    p = podman()
    for sub in ("root", "run", "tmp"):
        (p.home / sub).mkdir(parents=True, exist_ok=True)
    tag = tag or f"{TEST_REPO}:{os.getpid()}-{secrets.token_hex(3)}"
    with build_lock():
        previous = str(p.inspect(tag)["Id"]) if p.image_exists(tag) else None
        remove_stale(p)
        base, standin_seconds = standin(p, certbot_version())
        t0 = time.monotonic()
        # --layers=false: one layer for the Dockerfile's steps, no cached intermediates
        # (vfs copies the whole image for every layer).
        p("build", "--layers=false", "--isolation", "chroot", "--network", "host",
          "--build-arg", f"CERTBOT_IMAGE={base}", "-f", str(DOCKERFILE), "-t", tag, str(REPO))
        build_seconds = time.monotonic() - t0
        if previous and previous != p.inspect(tag)["Id"]:
            p("rmi", previous, check=False)  # the image this tag named before, now untagged
        # The build stage's image (the empty dir), and any other untagged leftover: no
        # build runs meanwhile (the lock), and a tagged image's parents are kept.
        p("image", "prune", "--force", check=False)
    image = Image(p, tag, base, standin_seconds, build_seconds)
    BUILT.append(image)
    return image


def main() -> int:
    try:
        image = build("localhost/certbot-kvault:dev")
    except ImageError as e:
        print(e, file=sys.stderr)
        return 1
    print(image.describe())
    print("run it with:", " ".join(image.podman.argv("run", "--rm", *RUN_FLAGS, image.tag)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
