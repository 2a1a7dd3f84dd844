"""pytest fixtures: real OpenBao (dev, sealed, raft), PowerDNS, Pebble and certbot
(servers.py), the ``golden`` lineages and the Kubernetes TokenReview stub (helpers.py).
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import image as built_images  # noqa: E402
import servers  # noqa: E402
from helpers import (  # noqa: E402
    GENERATED_CASES,
    SCRUB_NAMES,
    SCRUB_PREFIXES,
    Golden,
    TokenReviewStub,
    dir_args,
    issue_lineage,
    kvault,
    make_always_due,
    scrubbed_env,
)
from servers import Bao, BaoAcme, Pebble, PowerDNS, RaftCluster  # noqa: E402

# --------------------------------------------------------------------------- order

# Under pytest-xdist (scripts/test.sh: ``-n 4 --dist loadfile --no-loadscope-reorder``)
# each file runs whole on one worker (its module fixtures once), files handed out in
# collection order. The slowest go first, so that none is left running alone at the
# end; measured on the 2-core machine, slowest first (README, Development, says why).
SLOW_FIRST = ("test_concurrency.py", "test_ha.py", "test_installer.py", "test_stop.py",
              "test_bounds.py", "test_fencing.py", "test_due_ages.py", "test_image.py",
              "test_migrate.py", "test_hostile.py", "test_watch.py", "test_renew.py",
              "test_dns.py", "test_memory.py", "test_roundtrip.py", "test_interrupted.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker collects the same order
        rank = {name: i for i, name in enumerate(SLOW_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    """A dev OpenBao (root token ``root``, KV v2 at ``secret/``), shared by the session."""
    server = servers.start_openbao_dev(tmp_path_factory.mktemp("bao"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kv1_mount(bao: Bao) -> str:
    """A KV v1 mount named ``kv1`` on the session ``bao``."""
    r = bao.api("POST", "sys/mounts/kv1", json={"type": "kv", "options": {"version": "1"}})
    assert r.status_code in (200, 204), r.text
    return "kv1"


@pytest.fixture(scope="session")
def sealed_bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    """An initialised but sealed OpenBao (``.unseal_keys``, ``.root_token``, ``.unseal()``)."""
    server = servers.start_openbao_sealed(tmp_path_factory.mktemp("sealed-bao"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pdns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PowerDNS]:
    """PowerDNS with zone ``example.com`` (apex, ns1 and ``*`` -> 127.0.0.1)."""
    server = servers.start_powerdns(tmp_path_factory.mktemp("pdns"), zones=("example.com",))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory, pdns: PowerDNS) -> Iterator[Pebble]:
    """Pebble resolving every name through ``pdns``. Shared: accounts persist across tests."""
    server = servers.start_pebble(tmp_path_factory.mktemp("pebble"), pdns.dns_port)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def bao_acme(bao: Bao, pdns: PowerDNS) -> BaoAcme:
    """The session ``bao`` as an ACME CA too (PKI mount ``pki-acme``, DNS-01 via ``pdns``),
    issuing certificates that live 2.5 minutes."""
    return servers.enable_openbao_acme(bao, pdns.dns_port)


@pytest.fixture(scope="session")
def pebble_factory(
    tmp_path_factory: pytest.TempPathFactory, pdns: PowerDNS
) -> Iterator[Callable[..., Pebble]]:
    """Start extra Pebbles, e.g. ``pebble_factory(cert_validity_seconds=120)`` for due certs.

    Each one is stopped at the end of the session.
    """
    started: list[Pebble] = []

    def make(*, cert_validity_seconds: Optional[int] = None) -> Pebble:
        p = servers.start_pebble(tmp_path_factory.mktemp("pebble-x"), pdns.dns_port,
                                 cert_validity_seconds=cert_validity_seconds)
        started.append(p)
        return p

    try:
        yield make
    finally:
        for p in started:
            p.stop()


def _start_raft(workdir: Path, what: str) -> RaftCluster:
    cluster = servers.start_openbao_raft_cluster(workdir)
    print(f"{what}: 3-node OpenBao raft cluster ready in {cluster.startup_seconds:.2f}s")
    return cluster


@pytest.fixture(scope="session")
def raft(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftCluster]:
    """A 3-node OpenBao raft cluster (KV v2 at ``secret/``), shared by the non-destructive
    tests; each test works below its own KVAULT_PREFIX."""
    cluster = _start_raft(tmp_path_factory.mktemp("raft"), "session")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def raft_solo(tmp_path: Path) -> Iterator[RaftCluster]:
    """A cluster of its own, for a test that stops nodes."""
    cluster = _start_raft(tmp_path / "raft-solo", "function")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def token_review(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenReviewStub]:
    """A stub Kubernetes TokenReview API for Vault's kubernetes auth method."""
    stub = TokenReviewStub(tmp_path_factory.mktemp("k8s-api"))
    try:
        yield stub
    finally:
        stub.stop()


# --------------------------------------------------------------------------- golden lineages


@pytest.fixture(scope="session")
def golden(bao: Bao, pebble: Pebble, pebble_factory: Callable[..., Pebble],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Golden]:
    """Real lineages issued once into their own Vault prefix (see helpers.py);
    tests copy what they need with ``helpers.seed``."""
    pebble2 = pebble_factory(cert_validity_seconds=2 * 86400)
    root = tmp_path_factory.mktemp("golden")
    bundle = root / "ca-bundle.pem"
    bundle.write_text(Path(pebble.ca_bundle).read_text() + Path(pebble2.ca_bundle).read_text())
    prefix = f"golden-{secrets.token_hex(3)}"
    env = scrubbed_env(VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.token, KVAULT_PREFIX=prefix,
                       REQUESTS_CA_BUNDLE=str(bundle))
    domains = {"due": "www.example.com", "calm": "calm.example.com",
               "short": "short.example.com"}
    args = dir_args(root)
    issue_lineage(pebble, root, "due", domains["due"], env)
    make_always_due(root / "config" / "renewal" / "due.conf")
    issue_lineage(pebble, root, "calm", domains["calm"], env)
    issue_lineage(pebble2, root, "short", domains["short"], env)
    kvault("push", *args, env=env)
    yield Golden(prefix=prefix, ca_bundle=str(bundle), pebble=pebble, pebble2=pebble2,
                 domains=domains)


# --------------------------------------------------------------------------- environment


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40] or "test"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Scrub VAULT_*/KVAULT_*/REQUESTS_CA_BUNDLE from os.environ; HOME -> a fresh tmp dir."""
    for key in list(os.environ):
        if key.startswith(SCRUB_PREFIXES) or key in SCRUB_NAMES:
            monkeypatch.delenv(key, raising=False)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def vault_env(
    bao: Bao, clean_env: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> dict[str, str]:
    """Env for the code under test, also set in os.environ: a unique KVAULT_PREFIX per test."""
    prefix = f"t-{_sanitize(request.node.name)}-{secrets.token_hex(3)}"
    env = {
        "VAULT_ADDR": bao.addr,
        "VAULT_TOKEN": bao.token,
        "KVAULT_PREFIX": prefix,
        "KVAULT_MOUNT": "secret",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture(scope="session")
def _tld_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tldextract-cache")


@pytest.fixture
def tldextract_offline(monkeypatch: pytest.MonkeyPatch, _tld_cache: Path) -> Path:
    """Keep dns-lexicon's tldextract off the network: tmp cache, bundled suffix snapshot.

    ``TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS=""`` (tldextract >= 5.2) disables the fetch.
    Not autouse: tests of the package's own handling of an offline fetch can skip it.
    """
    monkeypatch.setenv("TLDEXTRACT_CACHE_PATH", str(_tld_cache))
    monkeypatch.setenv("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    return _tld_cache


# --------------------------------------------------------------------------- certbot


@dataclass
class CertbotDirs:
    config_dir: Path
    work_dir: Path
    logs_dir: Path

    def args(self) -> list[str]:
        return ["--config-dir", str(self.config_dir), "--work-dir", str(self.work_dir),
                "--logs-dir", str(self.logs_dir)]


@pytest.fixture
def certbot_dirs(tmp_path: Path) -> CertbotDirs:
    """Fresh certbot dirs under tmp_path (config dir exists and is empty)."""
    dirs = CertbotDirs(tmp_path / "config", tmp_path / "work", tmp_path / "logs")
    for d in (dirs.config_dir, dirs.work_dir, dirs.logs_dir):
        d.mkdir(parents=True, exist_ok=True)
    return dirs


CertbotRunner = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def certbot(certbot_dirs: CertbotDirs, pebble: Pebble) -> CertbotRunner:
    """``certbot(*args, env=None, check=True)``: run this venv's certbot against ``pebble``."""

    def run(*args: str, env: Optional[dict[str, str]] = None, check: bool = True,
            **kw: Any) -> subprocess.CompletedProcess[str]:
        return servers.run_certbot(
            list(args), config_dir=certbot_dirs.config_dir, work_dir=certbot_dirs.work_dir,
            logs_dir=certbot_dirs.logs_dir, pebble=pebble, env=env, check=check, **kw)

    return run


# --------------------------------------------------------------------------- report

# Under pytest-xdist (scripts/test.sh) the image is built and the generated cases run in
# workers: the controller, which prints the summary, gets their records from each
# worker's ``workeroutput``.
_WORKERS_BUILT: list[str] = []


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker
        workeroutput["kvault_built"] = [built.describe() for built in built_images.BUILT]
        workeroutput["kvault_generated"] = dict(GENERATED_CASES)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: no such hook without it (.venv-min)
def pytest_testnodedown(node: Any, error: Any) -> None:
    output = getattr(node, "workeroutput", {})
    _WORKERS_BUILT.extend(output.get("kvault_built", []))
    for what, n in output.get("kvault_generated", {}).items():
        GENERATED_CASES[what] = GENERATED_CASES.get(what, 0) + n


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Even under -q (scripts/test.sh runs the suite quietly): the generated hostile
    records' case count and failures, and the image tests by name, outcome and time."""
    _generated_summary(terminalreporter)
    _image_summary(terminalreporter)


def _generated_summary(terminalreporter: Any) -> None:
    """How many cases the Hypothesis properties (tests/test_generated.py) tried."""
    reports = [r for outcome in ("passed", "failed", "error")
               for r in terminalreporter.stats.get(outcome, [])
               if getattr(r, "nodeid", "").startswith("tests/test_generated.py::")
               and (r.when == "call" or r.outcome != "passed")]
    if not reports:
        return
    failed = sum(1 for r in reports if r.outcome != "passed")
    each = ", ".join(f"{what} {n}" for what, n in GENERATED_CASES.items())
    terminalreporter.write_line(
        f"hypothesis: {sum(GENERATED_CASES.values())} generated cases run ({each}), "
        f"{failed} failures in {len(reports)} properties (derandomized: the same cases "
        f"every run)")


def _image_summary(terminalreporter: Any) -> None:
    """The image tests: the record that this run built the image and ran it."""
    reports = [r for outcome in ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
               for r in terminalreporter.stats.get(outcome, [])
               if getattr(r, "nodeid", "").startswith("tests/test_image.py::")
               and (r.when == "call" or r.outcome != "passed")]
    if not reports:
        return
    terminalreporter.section("the image (tests/test_image.py)")
    for built in [b.describe() for b in built_images.BUILT] + _WORKERS_BUILT:
        terminalreporter.write_line(f"built {built}")
    for r in sorted(reports, key=lambda r: r.nodeid):
        outcome = r.outcome.upper() if r.when == "call" else f"ERROR at {r.when}"
        terminalreporter.write_line(f"{outcome:8} {r.nodeid.split('::', 1)[1]} "
                                    f"({r.duration:.1f} s)")
