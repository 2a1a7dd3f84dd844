"""Unattended logins against OpenBao's real auth methods: JWT, Kubernetes, AppRole.

- JWT: the ``jwt`` auth method with ``jwt_validation_pubkeys`` = a key pair made
  here, a role with ``bound_audiences``, ``bound_claims`` and ``user_claim``
  (what GitLab/GitHub ID tokens are checked against).
- Kubernetes: the ``kubernetes`` auth method validates a service-account token
  by calling the cluster's TokenReview API. A tiny HTTPS stub of that one
  endpoint (in this process, 127.0.0.1, its own CA) answers like the API
  server: authenticated only for the exact token it handed out.
- AppRole, and tokens that expire or are revoked in the middle of a run.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from helpers import (
    Golden,
    TokenReviewStub,
    approle,
    enable_auth,
    fresh_dirs,
    kv_version,
    kvault,
    load_policy,
    locks_held,
    pub_pem,
    scrubbed_env,
    seed,
)
from servers import Bao

from certbot_kvault._internal.renew.locks import Locks
from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.vault.client import VaultClient
from certbot_kvault._internal.vault.errors import VaultAuthError
from certbot_kvault._internal.vault.settings import VaultSettings

AUDIENCE = "https://vault.example.com"


def _status(env: dict[str, str], check: bool = True) -> Any:
    proc = kvault("status", "--json", env=env, check=check)
    return json.loads(proc.stdout) if proc.returncode == 0 else proc


def _assert_renewer_rights(status: Any, policy: str) -> None:
    assert policy in status["token"]["policies"]
    caps = status["capabilities"]
    assert set(caps["certificates (data)"]) >= {"create", "read", "update"}
    assert "delete" not in caps["certificates (data)"]
    assert "list" in caps["locks (list)"]


# ---- JWT ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _ci_jwt(key: rsa.RSAPrivateKey, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": "https://gitlab.example.com", "sub": "project_path:platform/certs:ref:main",
            "aud": AUDIENCE, "iat": now, "nbf": now - 5, "exp": now + 300,
            "project_path": "platform/certs", "ref": "main"}
    body.update(claims)
    return pyjwt.encode(body, key, algorithm="RS256")


@pytest.fixture
def jwt_role(bao: Bao, vault_env: dict[str, str], rsa_key: rsa.RSAPrivateKey) -> dict[str, str]:
    policy = load_policy(bao, "renewer", vault_env["KVAULT_PREFIX"])
    mount = enable_auth(bao, "jwt")
    r = bao.api("POST", f"auth/{mount}/config",
                json={"jwt_validation_pubkeys": [pub_pem(rsa_key)],
                      "bound_issuer": "https://gitlab.example.com"})
    assert r.status_code == 204, r.text
    r = bao.api("POST", f"auth/{mount}/role/certbot-renew", json={
        "role_type": "jwt", "bound_audiences": [AUDIENCE], "user_claim": "sub",
        "bound_claims": {"project_path": "platform/certs", "ref": "main"},
        "token_policies": [policy], "token_ttl": "10m"})
    assert r.status_code == 204, r.text
    return {"mount": mount, "policy": policy, "role": "certbot-renew"}


def _jwt_env(bao: Bao, vault_env: dict[str, str], role: dict[str, str],
             **extra: str) -> dict[str, str]:
    return scrubbed_env(VAULT_ADDR=bao.addr, KVAULT_PREFIX=vault_env["KVAULT_PREFIX"],
                        KVAULT_JWT_ROLE=role["role"], KVAULT_JWT_MOUNT=role["mount"], **extra)


def test_jwt_login(bao: Bao, vault_env: dict[str, str], jwt_role: dict[str, str],
                   rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    token = _ci_jwt(rsa_key)
    status = _status(_jwt_env(bao, vault_env, jwt_role, KVAULT_JWT=token))
    assert status["auth_method"] == "jwt"
    _assert_renewer_rights(status, jwt_role["policy"])
    # From a file, as a CI runner or a projected volume provides it.
    token_file = tmp_path / "id_token"
    token_file.write_text(token + "\n")
    status = _status(_jwt_env(bao, vault_env, jwt_role, KVAULT_JWT_FILE=str(token_file)))
    assert jwt_role["policy"] in status["token"]["policies"]


@pytest.mark.parametrize("claims", [
    {"aud": "https://someone-else.example.com"},
    {"project_path": "other/project"},
    {"exp": int(time.time()) - 600, "iat": int(time.time()) - 900, "nbf": int(time.time()) - 900},
], ids=["audience", "bound-claim", "expired"])
def test_jwt_login_refused(bao: Bao, vault_env: dict[str, str], jwt_role: dict[str, str],
                           rsa_key: rsa.RSAPrivateKey, claims: dict[str, Any]) -> None:
    token = _ci_jwt(rsa_key, **claims)
    proc = _status(_jwt_env(bao, vault_env, jwt_role, KVAULT_JWT=token), check=False)
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert f"refused the JWT login (auth/{jwt_role['mount']}, role {jwt_role['role']})" in err
    assert token not in proc.stdout + proc.stderr
    assert token.split(".")[1] not in proc.stdout + proc.stderr


def test_jwt_signed_by_another_key_refused(bao: Bao, vault_env: dict[str, str],
                                           jwt_role: dict[str, str]) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    proc = _status(_jwt_env(bao, vault_env, jwt_role, KVAULT_JWT=_ci_jwt(other)), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


def test_jwt_role_without_token_says_what_to_set(bao: Bao, vault_env: dict[str, str],
                                                 jwt_role: dict[str, str]) -> None:
    proc = _status(_jwt_env(bao, vault_env, jwt_role), check=False)
    assert proc.returncode == 1
    assert "KVAULT_JWT" in proc.stderr


# ---- Kubernetes -----------------------------------------------------------------------------


def test_kubernetes_login(bao: Bao, vault_env: dict[str, str], token_review: TokenReviewStub,
                          tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    policy = load_policy(bao, "renewer", prefix)
    mount = enable_auth(bao, "kubernetes")
    reviewer = token_review.service_account_token("kube-system", "token-reviewer")
    r = bao.api("POST", f"auth/{mount}/config", json={
        "kubernetes_host": token_review.url, "kubernetes_ca_cert": token_review.ca.read_text(),
        "token_reviewer_jwt": reviewer, "disable_local_ca_jwt": True})
    assert r.status_code == 204, r.text
    r = bao.api("POST", f"auth/{mount}/role/certbot-kvault", json={
        "bound_service_account_names": ["certbot-kvault"],
        "bound_service_account_namespaces": ["certs"],
        "token_policies": [policy], "token_ttl": "10m"})
    assert r.status_code == 204, r.text

    sa_token = tmp_path / "token"
    sa_token.write_text(token_review.service_account_token("certs", "certbot-kvault"))
    env = scrubbed_env(VAULT_ADDR=bao.addr, KVAULT_PREFIX=prefix,
                       KVAULT_K8S_ROLE="certbot-kvault", KVAULT_K8S_MOUNT=mount,
                       KVAULT_K8S_TOKEN_PATH=str(sa_token))
    reviews = token_review.reviews
    status = _status(env)
    assert status["auth_method"] == "kubernetes"
    _assert_renewer_rights(status, policy)
    assert token_review.reviews > reviews  # OpenBao really asked the "API server"

    # Another namespace's service account is refused, in one line.
    sa_token.write_text(token_review.service_account_token("default", "certbot-kvault"))
    proc = _status(env, check=False)
    assert proc.returncode == 1
    assert "Kubernetes login" in proc.stderr and "bound service accounts" in proc.stderr
    # No token file: say which variable to set.
    env["KVAULT_K8S_TOKEN_PATH"] = str(tmp_path / "missing")
    proc = _status(env, check=False)
    assert proc.returncode == 1 and "KVAULT_K8S_TOKEN_PATH" in proc.stderr


# ---- AppRole and token lifetime -------------------------------------------------------------


def test_approle_login(bao: Bao, vault_env: dict[str, str]) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    policy = load_policy(bao, "renewer", prefix)
    creds = approle(bao, policy)
    env = scrubbed_env(VAULT_ADDR=bao.addr, KVAULT_PREFIX=prefix, **creds)
    status = _status(env)
    assert status["auth_method"] == "approle"
    _assert_renewer_rights(status, policy)
    env["VAULT_SECRET_ID"] = "00000000-0000-0000-0000-000000000000"
    proc = _status(env, check=False)
    assert proc.returncode == 1
    assert "AppRole login" in proc.stderr and "VAULT_SECRET_ID" in proc.stderr
    assert creds["VAULT_SECRET_ID"] not in proc.stderr


def _client(bao: Bao, prefix: str, creds: dict[str, str]) -> VaultClient:
    settings = VaultSettings.from_env(
        {"VAULT_ADDR": bao.addr, "KVAULT_PREFIX": prefix, **creds})
    return VaultClient(settings)


def test_token_past_its_max_ttl_is_relogged(bao: Bao, vault_env: dict[str, str]) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    policy = load_policy(bao, "renewer", prefix)
    creds = approle(bao, policy, token_ttl="2s", token_max_ttl="2s")
    client = _client(bao, prefix, creds)
    path = f"{prefix}/certificates/probe"
    client.write(path, {"n": 0}, cas=0)
    first = client._hvac.token
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 4.5:  # more than two token lifetimes
        n += 1
        client.write(path, {"n": n})
        assert client.read(path).data == {"n": n}  # type: ignore[union-attr]
        time.sleep(0.3)
    assert client._hvac.token != first  # a fresh login, not an error


def test_renewable_token_is_renewed(bao: Bao, vault_env: dict[str, str]) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    policy = load_policy(bao, "renewer", prefix)
    creds = approle(bao, policy, token_ttl="3s", token_max_ttl="1h")
    client = _client(bao, prefix, creds)
    path = f"{prefix}/certificates/probe"
    client.write(path, {"n": 0})
    first = client._hvac.token
    t0 = time.monotonic()
    while time.monotonic() - t0 < 5:  # past the first 3 s lease
        assert client.read(path) is not None
        time.sleep(0.4)
    assert client._hvac.token == first  # renewed, not replaced
    ttl = bao.api("POST", "auth/token/lookup", json={"token": first}).json()["data"]["ttl"]
    assert ttl > 0


def test_revoked_token_relogs_once_on_403(bao: Bao, vault_env: dict[str, str]) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    policy = load_policy(bao, "renewer", prefix)
    creds = approle(bao, policy)
    client = _client(bao, prefix, creds)
    path = f"{prefix}/certificates/probe"
    client.write(path, {"n": 1})
    first = client._hvac.token
    assert bao.api("POST", "auth/token/revoke", json={"token": first}).status_code == 204
    assert client.read(path).data == {"n": 1}  # type: ignore[union-attr]
    assert client._hvac.token != first


def test_revoked_static_token_is_a_clear_error(bao: Bao, vault_env: dict[str, str]) -> None:
    token = bao.api("POST", "auth/token/create",
                    json={"policies": ["default"], "ttl": "5m"}).json()["auth"]["client_token"]
    client = _client(bao, vault_env["KVAULT_PREFIX"], {"VAULT_TOKEN": token})
    client.login()
    assert bao.api("POST", "auth/token/revoke", json={"token": token}).status_code == 204
    with pytest.raises(VaultAuthError, match="stopped taking the token in VAULT_TOKEN during "
                                             "this run, .* it was revoked") as e:
        client.read(f"{vault_env['KVAULT_PREFIX']}/certificates/x")
    assert token not in str(e.value)


def test_lock_survives_token_turnover(bao: Bao, vault_env: dict[str, str]) -> None:
    """The lock keeper keeps renewing across re-logins (token max TTL < lock hold time)."""
    prefix = vault_env["KVAULT_PREFIX"]
    policy = load_policy(bao, "renewer", prefix)
    creds = approle(bao, policy, token_ttl="2s", token_max_ttl="2s")
    locks = Locks(Layout(_client(bao, prefix, creds)), ttl=2)
    assert locks.try_acquire("renew") is None
    time.sleep(4.5)
    assert not locks.lost
    other = Locks(Layout(_client(bao, prefix, {"VAULT_TOKEN": bao.token})), ttl=2, owner="x")
    assert other.try_acquire("renew") is not None
    locks.release_all()
    assert other.try_acquire("renew") is None
    other.release_all()


def test_renew_end_to_end_with_short_lived_approle_token(bao: Bao, golden: Golden,
                                                         vault_env: dict[str, str],
                                                         tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    before = kv_version(bao, prefix, "certificates/due")
    policy = load_policy(bao, "renewer", prefix)
    creds = approle(bao, policy, token_ttl="2s", token_max_ttl="2s")
    env = scrubbed_env(VAULT_ADDR=bao.addr, KVAULT_PREFIX=prefix,
                       REQUESTS_CA_BUNDLE=golden.ca_bundle, **creds)
    _, args = fresh_dirs(tmp_path)
    proc = kvault("renew", *args, "--lock-ttl", "2", env=env)
    assert "renewed: due" in proc.stdout
    assert kv_version(bao, prefix, "certificates/due") == before + 1
    assert not locks_held(bao, prefix)
