"""Fixtures for the high-availability tests (a pytest plugin: ``pytest_plugins``).

- ``raft`` (session): a 3-node OpenBao raft cluster (KV v2 at ``secret/``), shared by
  the non-destructive tests; each test works below its own KVAULT_PREFIX.
- ``raft_solo`` (function): a cluster of its own for a test that stops nodes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import servers
from servers import RaftCluster


def _start(workdir: Path, what: str) -> RaftCluster:
    cluster = servers.start_openbao_raft_cluster(workdir)
    print(f"{what}: 3-node OpenBao raft cluster ready in {cluster.startup_seconds:.2f}s")
    return cluster


@pytest.fixture(scope="session")
def raft(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftCluster]:
    cluster = _start(tmp_path_factory.mktemp("raft"), "session")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def raft_solo(tmp_path: Path) -> Iterator[RaftCluster]:
    cluster = _start(tmp_path / "raft-solo", "function")
    try:
        yield cluster
    finally:
        cluster.stop()
