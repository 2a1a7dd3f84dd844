"""The per-item work of pull, push and the renewal planner: a bounded thread pool and
the report of what each item did.

``outcome`` runs one item's work: a bad record, a refused path or a local file
error (ENOSPC, EROFS, EACCES...) fails that item alone, in one line; a Vault
that is down, sealed or refuses the token (``FATAL``), or answers 5xx, stops the
whole run.

``parallel`` keeps at most twice the workers' number of items in flight, so a
fleet of 10 000 lineages costs time in proportion but no more memory;
``prefetched`` runs only the reads there and hands each result to the caller's
thread; ``Report`` collects, item by item, what was written, unchanged or
failed (``run_reports``/``run_reports_fetched``: one report over all items).
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
from typing import Callable, Collection, Generator, Generic, Iterable, Iterator, Optional, TypeVar

import requests
from certbot import errors

from certbot_kvault._internal.store.records import RecordError
from certbot_kvault._internal.vault.errors import (
    VaultAuthError,
    VaultError,
    VaultNotFound,
    VaultSealed,
    VaultUnreachable,
    VaultUnsupported,
    is_transient,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# Enough requests in flight to hide a remote Vault's round trips (+10 ms each: a
# pull of 1000 lineages took 1.4x its loopback time with 8, 1.1x with 16; a push
# 1.7x and 1.1x). Since pull, list and push do their CPU and file work in one
# thread and only the Vault requests in the pool, 16 cost nothing on loopback.
DEFAULT_WORKERS = 16

Tick = Optional[Callable[[int, int], None]]  # progress(done, total) after each item


@dataclasses.dataclass
class Report:
    """What a pull or push did, item by item (items are 'lineage NAME' / 'account ID')."""

    # pull: the KV version of each lineage as pulled (KV v2), for a fenced push.
    versions: dict[str, int] = dataclasses.field(default_factory=dict)
    # push: lineages refused because Vault changed after the pull (also in failed).
    fenced: list[str] = dataclasses.field(default_factory=list)
    written: list[str] = dataclasses.field(default_factory=list)
    unchanged: list[str] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    # One line per lineage whose renewal conf from Vault was not used whole
    # (trust.py); the caller prints them.
    warnings: list[str] = dataclasses.field(default_factory=list)

    def merge(self, other: Report) -> Report:
        self.versions.update(other.versions)
        self.fenced += other.fenced
        self.written += other.written
        self.unchanged += other.unchanged
        self.failed += other.failed
        self.warnings += other.warnings
        return self

    @property
    def ok(self) -> bool:
        return not self.failed

    def done(self, kind: str) -> list[str]:
        """The names of the items of ``kind`` ('lineage') written or found unchanged."""
        return [i.split(" ", 1)[1] for i in self.written + self.unchanged
                if i.startswith(kind + " ")]

    def as_dict(self) -> dict[str, object]:
        return {"written": self.written, "unchanged": self.unchanged,
                "failed": [{"item": i, "error": e} for i, e in self.failed],
                "warnings": self.warnings}


# Errors that mean "Vault as a whole is not usable": stop at once.
FATAL = (VaultUnreachable, VaultSealed, VaultAuthError, VaultNotFound, VaultUnsupported)


def outcome(item: str, fn: Callable[[], Optional[bool]]) -> Report:
    """One item's work: True written, False unchanged; a bad record or a local OSError fails it."""
    report = Report()
    try:
        changed = fn()
    except FATAL:
        raise
    except (RecordError, VaultError, errors.PluginError, OSError) as e:  # TreeError too
        if is_transient(e) or isinstance(e, requests.RequestException):
            raise  # Vault itself answers 5xx: as FATAL, for the caller to retry
        logger.debug("%s failed: %s", item, e)
        report.failed.append((item, describe(e) if isinstance(e, OSError) else str(e)))
        return report
    (report.written if changed else report.unchanged).append(item)
    return report


def describe(e: OSError) -> str:
    """A local file error as one line: the system's reason and the file."""
    reason = e.strerror or " ".join(str(e).split()) or type(e).__name__
    return f"{reason}: {e.filename}" if e.filename else reason


class Fetched(Generic[R]):
    """What a worker read for one item, or the error it met, handed to the caller's thread."""

    __slots__ = ("_error", "_value")

    def __init__(self, fetch: Callable[[T], R], item: T) -> None:
        self._value: Optional[R] = None
        self._error: Optional[Exception] = None
        try:
            self._value = fetch(item)
        except Exception as e:  # noqa: BLE001 - raised again by get(), in the caller's thread
            self._error = e

    def get(self) -> R:
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


@contextlib.contextmanager
def prefetched(items: Iterable[T], fetch: Callable[[T], R],
               workers: int) -> Iterator[Iterator[tuple[T, Fetched[R]]]]:
    """fetch over items in the pool, each result handed, in order, to the caller's thread.

    For work that is mostly waiting (Vault reads) followed by work that is mostly CPU
    and file system calls (checks, tree writes): the workers hide the network's
    latency, and the CPU part runs in one thread. Run in the workers, every one of a
    tree write's many short system calls hands the interpreter's lock to another
    thread and back: on loopback, 8 workers made a pull of 1000 lineages 1.6 times
    slower than one (bench/README.md).

    A context manager: when the caller stops early (its own error, or one it raised
    from ``Fetched.get``), the reads not started are dropped and the running ones
    waited for before it goes on; none runs on behind its back (say, after the
    command revoked its token).
    """
    results = parallel(items, lambda item: Fetched(fetch, item), workers)
    try:
        yield results
    finally:
        results.close()


def parallel(items: Iterable[T], fn: Callable[[T], R],
             workers: int) -> Generator[tuple[T, R], None, None]:
    """fn over items in a pool, keeping at most 2*workers in flight (flat memory).

    One worker runs inline: no thread can start while the interpreter exits,
    which is when the plugin's exit handler pushes.
    """
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    window = max(1, workers) * 2
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: collections.deque[tuple[T, concurrent.futures.Future[R]]] = collections.deque()
        try:
            for item in items:
                pending.append((item, pool.submit(fn, item)))
                if len(pending) >= window:
                    head, fut = pending.popleft()
                    yield head, fut.result()
            while pending:
                head, fut = pending.popleft()
                yield head, fut.result()
        finally:
            for _, fut in pending:
                fut.cancel()


def run_reports(items: Iterable[T], work: Callable[[T], Report], workers: int,
                progress: Tick = None, total: Optional[int] = None) -> Report:
    """work over items in the pool (parallel), each item's report merged into one.

    ``items`` is iterated in the caller's thread, as the pool takes them: a
    generator that does an item's local (CPU and file) work there keeps it out
    of the workers (see prefetched). ``total``: for the progress of such one.
    """
    if total is None:
        total = len(items) if isinstance(items, Collection) else 0
    return _merged((part for _, part in parallel(items, work, workers)), progress, total)


def run_reports_fetched(items: Iterable[T], fetch: Callable[[T], R],
                        apply: Callable[[T, Fetched[R]], Report], workers: int,
                        progress: Tick = None) -> Report:
    """As run_reports, the reads in the pool and the rest in this thread (prefetched)."""
    total = len(items) if isinstance(items, Collection) else 0
    with prefetched(items, fetch, workers) as results:
        return _merged((apply(item, fetched) for item, fetched in results), progress, total)


def _merged(parts: Iterable[Report], progress: Tick, total: int) -> Report:
    report = Report()
    for done, part in enumerate(parts, 1):
        report.merge(part)
        if progress is not None:
            progress(done, total)
    return report
