"""jobs.prefetched: the reads in the pool, the rest in the caller's thread, in order, and
nothing left running behind a caller that stopped early (pure Python: no server)."""
from __future__ import annotations

import threading
import time

import pytest

from certbot_kvault._internal.sync import jobs


def test_reads_in_the_pool_the_rest_in_the_callers_thread_in_order() -> None:
    fetched_in: set[str] = set()

    def fetch(i: int) -> int:
        fetched_in.add(threading.current_thread().name)
        time.sleep(0.001 * (i % 3))  # out of order completions
        return i * i

    seen = []
    with jobs.prefetched(range(50), fetch, 4) as results:
        for item, got in results:
            assert threading.current_thread() is threading.main_thread()
            seen.append((item, got.get()))
    assert seen == [(i, i * i) for i in range(50)]
    assert threading.main_thread().name not in fetched_in and fetched_in


def test_one_worker_reads_inline() -> None:
    with jobs.prefetched([1, 2], lambda i: threading.current_thread().name, 1) as results:
        assert [got.get() for _, got in results] == [threading.main_thread().name] * 2


def test_a_read_error_is_raised_by_get_in_the_callers_thread() -> None:
    def fetch(i: int) -> int:
        if i == 3:
            raise KeyError("no such record")
        return i

    out: list[object] = []
    with jobs.prefetched(range(6), fetch, 3) as results:
        for item, got in results:
            try:
                out.append(got.get())
            except KeyError as e:
                out.append(f"error {item}: {e}")
    assert out == [0, 1, 2, "error 3: 'no such record'", 4, 5]


def test_nothing_runs_on_after_the_caller_stops() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def fetch(i: int) -> int:
        with lock:
            started.append(i)
        time.sleep(0.01)
        return i

    with pytest.raises(RuntimeError, match="stop"):
        with jobs.prefetched(range(1000), fetch, 4) as results:
            for item, got in results:
                got.get()
                if item == 2:
                    raise RuntimeError("stop")
    count = len(started)
    assert count <= 3 + 2 * 4  # what was in flight (2 x workers), not the 1000
    time.sleep(0.1)
    assert len(started) == count  # and nothing started after the block
