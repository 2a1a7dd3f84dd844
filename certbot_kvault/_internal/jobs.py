"""The per-item work of pull, push and the renewal planner: a bounded thread pool and
the report of what each item did.

``parallel`` keeps at most twice the workers' number of items in flight, so a
fleet of 10 000 lineages costs time in proportion but no more memory;
``Report`` collects, item by item, what was written, unchanged or failed.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
from typing import Callable, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_WORKERS = 8

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

    def as_dict(self) -> dict[str, object]:
        return {"written": self.written, "unchanged": self.unchanged,
                "failed": [{"item": i, "error": e} for i, e in self.failed],
                "warnings": self.warnings}


def parallel(items: Iterable[T], fn: Callable[[T], R], workers: int) -> Iterator[tuple[T, R]]:
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
