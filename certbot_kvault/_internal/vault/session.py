"""The HTTP session under :class:`~certbot_kvault._internal.vault.VaultClient`.

It owns how bytes reach Vault: TLS (VAULT_CACERT/CAPATH, client
certificates, VAULT_SKIP_VERIFY), retries with backoff on connection errors
and 429/5xx answers, the HA consistency index that makes a standby answer
only once it has our latest write, the check that each answer is Vault's,
and silencing urllib3's per-retry warnings for Vault routes (the final
error is reported once, in our words).
"""
from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import random
import threading
import time
import urllib.parse
from typing import Any, Iterator, Mapping, Optional, Union

import requests
import requests.adapters
import requests.utils
import urllib3
from urllib3.util.retry import Retry

from certbot_kvault._internal.vault.errors import VAULT_KEYS, check_vault_answer
from certbot_kvault._internal.vault.settings import VaultSettings


class _QuietVaultRetries(logging.Filter):
    """Drop urllib3's per-retry warnings for Vault routes (/v1/...): the final
    error is reported once, in our words. Other clients' retries still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Retrying"):
            return True
        # The rendered line: the redaction filter may already have folded the args in.
        return not record.getMessage().rsplit(": ", 1)[-1].startswith("/v1/")


logging.getLogger("urllib3.connectionpool").addFilter(_QuietVaultRetries())


class _ConsistencyIndex:
    """Client-controlled consistency on HA clusters (OpenBao's ``X-Vault-Index``).

    Standbys answer reads from their own, slightly lagging copy. Every answer
    carries the storage index it reflects; sending the newest one we have seen
    back makes a standby answer only once it has caught up, or forward to the
    leader (``X-Vault-Inconsistent: forward-active-node``). So a read
    after our own write, or after a lost check-and-set race against another
    renewer (whose answer carries the leader's newer index), sees that write.
    Servers that send no index get none back.

    Requests that must see what the active node holds *now*, whatever this
    process wrote before (the lease locks: :meth:`at_leader`), send an index
    no standby can have reached (the largest, in the cluster's own form), so
    a standby hands them to the active node, which answers every request
    itself. That needs the cluster's id, taken from an index in OpenBao's
    form (base64 of a JSON ``{"cluster", "value"}``; the KV mount lookup
    that comes first carries one, on a standby too). A server whose index
    has another form (Vault Enterprise's) or that sends none (Vault's
    standbys, which forward every request; a single node) gets nothing more.
    """

    def __init__(self, session: requests.Session) -> None:
        self._session = session
        self._lock = threading.Lock()
        self._value = -1
        self._cluster: Optional[str] = None
        self._here = threading.local()

    def seen(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.note(response.headers)

    def note(self, headers: Mapping[str, str]) -> None:
        header = headers.get("X-Vault-Index")
        if not header:
            return
        value, cluster = _index_fields(header)
        with self._lock:
            if cluster is not None:
                self._cluster = cluster
            if value >= self._value:
                self._value = value
                self._session.headers["X-Vault-Index"] = header
                # A standby that has not caught up forwards to the leader
                # rather than answering 429 (it can lag seconds under load).
                self._session.headers["X-Vault-Inconsistent"] = "forward-active-node"

    @contextlib.contextmanager
    def at_leader(self) -> Iterator[None]:
        """This thread's requests, inside, are answered by the active node."""
        self._here.depth = getattr(self._here, "depth", 0) + 1
        try:
            yield
        finally:
            self._here.depth -= 1

    def leader_headers(self) -> dict[str, str]:
        """What sends this thread's request to the active node: inside :meth:`at_leader`
        on a cluster whose index form we know; else nothing."""
        if not getattr(self._here, "depth", 0):
            return {}
        with self._lock:
            cluster = self._cluster
        if cluster is None:
            return {}
        unseen = json.dumps({"cluster": cluster, "value": str(_UNSEEN_INDEX)},
                            separators=(",", ":"))
        return {"X-Vault-Index": base64.b64encode(unseen.encode()).decode("ascii"),
                "X-Vault-Inconsistent": "forward-active-node"}


# The largest storage index OpenBao parses (a uint64): no node ever reaches it. (One
# that does not parse would count as seen, and the standby would answer itself.)
_UNSEEN_INDEX = 2 ** 64 - 1


def _index_fields(header: str) -> tuple[int, Optional[str]]:
    """(value, cluster id) of an ``X-Vault-Index`` in OpenBao's form; (0, None) when it
    is opaque to us (still the newest we have seen)."""
    try:
        padded = header + "=" * (-len(header) % 4)
        fields = json.loads(base64.urlsafe_b64decode(padded))  # either alphabet
        value = int(fields["value"])
    except (ValueError, KeyError, TypeError):
        return 0, None
    cluster = fields.get("cluster")
    if not isinstance(cluster, str) or not cluster or value >= _UNSEEN_INDEX:
        return value, None
    return value, cluster


class VaultSession(requests.Session):
    """A session that adds :meth:`_ConsistencyIndex.leader_headers` to each request
    made inside ``at_leader`` (per thread: the lock keeper runs beside bulk reads)."""

    index: _ConsistencyIndex

    def request(self, method: Union[str, bytes], url: Union[str, bytes],
                *args: Any, **kwargs: Any) -> requests.Response:
        extra = self.index.leader_headers()
        if extra:
            kwargs["headers"] = {**(kwargs.get("headers") or {}), **extra}
        return super().request(method, url, *args, **kwargs)


class LeaderWait:
    """Bounded backoff while an HA cluster has no leader that answers.

    urllib3's retries span a few seconds; an election after a leader is lost
    (SIGKILL, a dead VM) can take longer. The caller retries the whole request
    against VAULT_ADDR, which redirects to the new leader once one is elected,
    until ``deadline`` seconds after the first failure.
    """

    def __init__(self, deadline: float) -> None:
        self._total = deadline
        self._until: Optional[float] = None
        self._pause = 0.1

    def again(self) -> bool:
        """Sleep before the next try and return True, or False once past the deadline."""
        now = time.monotonic()
        if self._until is None:
            self._until = now + self._total
        left = self._until - now
        if left <= 0:
            return False
        time.sleep(min(left, self._pause * random.uniform(0.5, 1.0)))  # noqa: S311 - jitter
        self._pause = min(2.0, self._pause * 2)
        return True


class DirectReads:
    """GETs straight on the session's own kept-alive urllib3 pool, for bulk KV reads.

    On a near Vault, requests and hvac cost more per read than the HTTP itself
    (preparing the request, merging settings, hooks, building a Response): a
    pull of a fleet spent half its time there. Same connections, TLS settings,
    token, namespace and consistency index as the session; only a plain answer
    is taken here, a Vault JSON object with status 200 or 404. Anything else
    (a redirect to the leader, an error, a page that is not Vault's, a dropped
    connection, a proxy) gives None: the caller then makes the same request
    through hvac, which retries, follows and maps every error as before.
    """

    def __init__(self, session: requests.Session, settings: VaultSettings,
                 index: _ConsistencyIndex) -> None:
        self._session = session
        self._settings = settings
        self._index = index
        self._base = urllib.parse.urlsplit(settings.addr).path.rstrip("/")
        self._timeout = urllib3.Timeout(connect=settings.timeout, read=settings.timeout)
        self._pool: Optional[urllib3.HTTPConnectionPool] = None

    def _connection_pool(self) -> Optional[urllib3.HTTPConnectionPool]:
        session, addr = self._session, self._settings.addr
        adapter = session.get_adapter(addr)
        get_pool = getattr(adapter, "get_connection_with_tls_context", None)
        if session.proxies or get_pool is None or not isinstance(
                adapter, requests.adapters.HTTPAdapter):
            return None  # requests < 2.32.2 or a proxy: always the full way
        pool: urllib3.HTTPConnectionPool = get_pool(
            requests.Request("GET", addr).prepare(), session.verify, None, session.cert)
        adapter.cert_verify(  # type: ignore[no-untyped-call] # as adapter.send does
            pool, addr, session.verify, session.cert)
        return pool

    def get(self, route: str, token: Optional[str]) -> Optional[tuple[int, dict[str, Any]]]:
        """(status, answer) of GET ``route`` (``/v1/...``, quoted here as hvac does) if
        Vault answered 200 or 404 with its JSON; None when the full way must ask."""
        while "//" in route:
            route = route.replace("//", "/")
        headers = {k: v for k, v in self._session.headers.items() if isinstance(v, str)}
        headers.update(self._index.leader_headers())
        headers["X-Vault-Request"] = "true"
        if token:
            headers["X-Vault-Token"] = token
        if self._settings.namespace:
            headers["X-Vault-Namespace"] = self._settings.namespace
        try:
            pool = self._pool = self._pool or self._connection_pool()
            if pool is None:
                return None
            resp = pool.urlopen("GET", self._base + urllib.parse.quote(route),
                                headers=headers, retries=False, redirect=False,
                                timeout=self._timeout, assert_same_host=False)
        except (urllib3.exceptions.HTTPError, OSError, ValueError, RuntimeError):
            self._pool = None  # asked afresh next time; this one goes the full way
            return None
        kind = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        if resp.status not in (200, 404) or "json" not in kind:
            return None
        try:
            answer = json.loads(resp.data)
        except ValueError:
            return None
        if not isinstance(answer, dict) or not VAULT_KEYS & answer.keys():
            return None
        self._index.note(resp.headers)
        return resp.status, answer


def make_session(settings: VaultSettings,
                 pool_size: int) -> tuple[VaultSession, DirectReads]:
    """The session hvac uses, and the direct way for bulk reads on its pool. Both send
    a thread's requests to the active node inside ``session.index.at_leader()``."""
    session = VaultSession()
    session.hooks["response"].append(check_vault_answer)
    index = session.index = _ConsistencyIndex(session)
    session.hooks["response"].append(index.seen)
    # Connection errors are retried for every method (nothing reached Vault);
    # 5xx/429 answers too, with backoff (503 included: a raft cluster answers
    # it while electing a leader; a sealed Vault costs a few seconds more).
    # A retried CAS write that had in fact landed surfaces as a conflict,
    # which VaultClient.write resolves by reading back.
    retry = Retry(
        total=settings.retries,
        connect=settings.retries,
        read=settings.retries,
        status=settings.retries,
        backoff_factor=0.2,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=None,
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    adapter = requests.adapters.HTTPAdapter(
        max_retries=retry, pool_connections=4, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # requests would re-read proxy and CA variables from the environment on
    # every request (a third of a loopback request's time): read them once.
    session.proxies = requests.utils.get_environ_proxies(settings.addr)
    session.trust_env = False
    # hvac ignores its own verify= when given a session: set it here.
    if settings.skip_verify:
        session.verify = False
    elif settings.cacert:
        session.verify = settings.cacert
    elif settings.capath:
        session.verify = settings.capath
    else:
        session.verify = (os.environ.get("REQUESTS_CA_BUNDLE")
                          or os.environ.get("CURL_CA_BUNDLE") or True)
    if settings.client_cert:
        session.cert = (settings.client_cert, settings.client_key) \
            if settings.client_key else settings.client_cert
    return session, DirectReads(session, settings, index)
