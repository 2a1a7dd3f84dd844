"""Fixtures for the stateless-renewal tests (a pytest plugin: ``pytest_plugins``).

- ``golden`` (session): real lineages issued once into their own Vault prefix;
  tests copy what they need with ``renew_helpers.seed`` (see renew_helpers.py).
- ``token_review`` (module): a stub Kubernetes TokenReview API for Vault's
  kubernetes auth method.
"""
from __future__ import annotations

import secrets
from pathlib import Path
from typing import Callable, Iterator

import pytest
from renew_helpers import (
    Golden,
    TokenReviewStub,
    dir_args,
    issue_lineage,
    make_always_due,
    run_kvault,
    scrubbed_env,
)
from servers import Bao, Pebble


@pytest.fixture(scope="session")
def golden(bao: Bao, pebble: Pebble, pebble_factory: Callable[..., Pebble],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Golden]:
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
    run_kvault(["push", *args], env)
    yield Golden(prefix=prefix, ca_bundle=str(bundle), pebble=pebble, pebble2=pebble2,
                 domains=domains)



@pytest.fixture(scope="module")
def token_review(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenReviewStub]:
    stub = TokenReviewStub(tmp_path_factory.mktemp("k8s-api"))
    try:
        yield stub
    finally:
        stub.stop()
