"""Lease locks against the real OpenBao dev server (KV v2 check-and-set)."""
from __future__ import annotations

import threading
import time
from typing import Any, Optional

import pytest
from helpers import record
from servers import Bao

from certbot_kvault._internal.renew.locks import MAX_TTL, LockInfo, Locks
from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.store.timefmt import CLOCK_SKEW, format_time, parse_time
from certbot_kvault._internal.vault.client import VaultClient
from certbot_kvault._internal.vault.errors import VaultUnsupported
from certbot_kvault._internal.vault.settings import VaultSettings


def _layout(**overrides: str) -> Layout:
    return Layout(VaultClient(VaultSettings.from_env(None, **overrides)))


def _meta(bao: Bao, prefix: str, name: str) -> Optional[dict[str, object]]:
    r = bao.api("GET", f"secret/metadata/{prefix}/locks/{name}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    data: dict[str, object] = r.json()["data"]
    return data


def test_time_format_roundtrip() -> None:
    ts = 1_800_000_000.2
    text = format_time(ts)
    assert text.endswith("Z") and "T" in text
    assert parse_time(text) == 1_800_000_001  # rounded up, never shorter
    assert parse_time("2027-01-01T00:00:00+00:00") == parse_time("2027-01-01T00:00:00Z")
    assert parse_time("garbage") is None and parse_time(None) is None


def test_take_hold_release(bao: Bao, vault_env: dict[str, str]) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    a = Locks(_layout(), ttl=30, owner="a")
    b = Locks(_layout(), ttl=30, owner="b")
    assert a.try_acquire("renew") is None
    lock_record = record(bao, prefix, "locks/renew")
    assert lock_record is not None and lock_record["owner"] == "a"
    expires = parse_time(lock_record["expires_at"])
    assert expires is not None and 25 < expires - time.time() <= 31

    holder = b.try_acquire("renew")
    assert isinstance(holder, LockInfo)
    assert holder.owner == "a"
    assert "held by a until" in holder.describe()
    assert f"secret/data/{prefix}/locks/renew" in holder.describe()

    assert a.release("renew") is True
    # Released with one check-and-set write: no owner, expired; read as free.
    released = record(bao, prefix, "locks/renew")
    assert released is not None and released["owner"] == ""
    assert parse_time(released["expires_at"]) < time.time()  # type: ignore[operator]
    assert _meta(bao, prefix, "renew")["current_version"] == 2  # type: ignore[index]
    assert a.read("renew") is None and b.held_by_other("renew") is None
    assert b.try_acquire("renew") is None       # cas = the released version
    assert record(bao, prefix, "locks/renew")["owner"] == "b"  # type: ignore[index]
    assert _meta(bao, prefix, "renew")["current_version"] == 3  # type: ignore[index]
    b.release_all()
    assert record(bao, prefix, "locks/renew")["owner"] == ""  # type: ignore[index]


def _race(racers: list[Locks]) -> dict[str, Optional[LockInfo]]:
    """Every racer tries the `renew` lock at the same instant; owner -> holder seen."""
    barrier = threading.Barrier(len(racers))
    results: dict[str, Optional[LockInfo]] = {}

    def race(lk: Locks) -> None:
        barrier.wait()
        results[lk.owner] = lk.try_acquire("renew")

    threads = [threading.Thread(target=race, args=(lk,)) for lk in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_exactly_one_of_many_racers_wins(vault_env: dict[str, str]) -> None:
    racers = [Locks(_layout(), ttl=30, owner=f"r{i}") for i in range(8)]
    results = _race(racers)
    winners = [o for o, r in results.items() if r is None]
    assert len(winners) == 1, results
    for owner, holder in results.items():
        if owner != winners[0]:
            assert holder is not None and holder.owner in (winners[0], "another renewer")
    for lk in racers:
        lk.release_all()


def test_stale_lock_taken_over_with_cas(bao: Bao, vault_env: dict[str, str]) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    # A holder that died: its lock is in Vault, with an expiry in the past.
    r = bao.api("POST", f"secret/data/{prefix}/locks/renew",
                json={"data": {"owner": "dead:1:x", "expires_at": format_time(time.time() - 5)}})
    assert r.status_code == 200, r.text
    racers = [Locks(_layout(), ttl=30, owner=f"r{i}") for i in range(4)]
    results = _race(racers)
    winners = [o for o, res in results.items() if res is None]
    assert len(winners) == 1, results
    meta = _meta(bao, prefix, "renew")
    assert meta is not None and meta["current_version"] == 2  # one CAS write over version 1
    for lk in racers:
        lk.release_all()


def test_garbage_lock_is_taken_over(bao: Bao, vault_env: dict[str, str]) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    bao.api("POST", f"secret/data/{prefix}/locks/renew", json={"data": {"owner": "x"}})
    lk = Locks(_layout(), ttl=30, owner="me")
    assert lk.try_acquire("renew") is None
    lk.release_all()


@pytest.mark.parametrize("expires", ["9999-12-31T00:00:00Z", "far-future"])
def test_a_lock_beyond_any_lease_is_stale_and_said(bao: Bao, vault_env: dict[str, str],
                                                    expires: str) -> None:
    """No holder writes an expiry more than MAX_TTL (+ skew) ahead, nor no time at all: a
    planted one is taken over at once, in one line naming the lock and its owner; a lock
    within the longest lease is not."""
    prefix = vault_env["KVAULT_PREFIX"]
    for name, until in (("renew", expires),
                        ("lineage-x", format_time(time.time() + MAX_TTL + 3 * CLOCK_SKEW)),
                        ("lineage-y", format_time(time.time() + MAX_TTL))):
        bao.api("POST", f"secret/data/{prefix}/locks/{name}",
                json={"data": {"owner": f"ghost-{name}:1:\x1b[2J", "expires_at": until}})
    said: list[str] = []
    lk = Locks(_layout(), ttl=30, owner="me", notify=said.append)
    assert lk.held_by_other("lineage-x") is None
    assert lk.try_acquire("renew") is None
    holder = lk.try_acquire("lineage-y")          # a long lease, held by a live renewer
    assert holder is not None and holder.owner.startswith("ghost-lineage-y")
    assert len(said) == 2, said
    assert said[1].startswith(f"warning: lock renew (secret/data/{prefix}/locks/renew) held by "
                              "ghost-renew:1:\\x1b[2J expires at ")
    assert expires in said[1] and "taken as stale" in said[1]
    assert "lock lineage-x " in said[0]
    assert record(bao, prefix, "locks/renew")["owner"] == "me"  # type: ignore[index]
    lk.release_all()
    with pytest.raises(ValueError, match="lock TTL"):
        Locks(_layout(), ttl=MAX_TTL + 1)


def test_soft_deleted_lock_is_free(bao: Bao, vault_env: dict[str, str]) -> None:
    """`vault kv delete` on a lock (what an operator may do) must not block renewers forever."""
    prefix = vault_env["KVAULT_PREFIX"]
    bao.api("POST", f"secret/data/{prefix}/locks/renew",
            json={"data": {"owner": "x", "expires_at": format_time(time.time() + 300)}})
    assert bao.api("DELETE", f"secret/data/{prefix}/locks/renew").status_code == 204
    lk = Locks(_layout(), ttl=30, owner="me")
    assert lk.try_acquire("renew") is None
    assert record(bao, prefix, "locks/renew")["owner"] == "me"  # type: ignore[index]
    lk.release_all()


def test_keeper_renews_and_loser_cannot_take(bao: Bao, vault_env: dict[str, str]) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    a = Locks(_layout(), ttl=2, owner="a")
    b = Locks(_layout(), ttl=2, owner="b")
    assert a.try_acquire("renew") is None
    first = parse_time(record(bao, prefix, "locks/renew")["expires_at"])  # type: ignore[index]
    time.sleep(2.6)  # longer than the TTL: only the keeper keeps it alive
    holder = b.try_acquire("renew")
    assert holder is not None and holder.owner == "a"
    later = parse_time(record(bao, prefix, "locks/renew")["expires_at"])  # type: ignore[index]
    assert later is not None and first is not None and later > first
    meta = _meta(bao, prefix, "renew")
    assert meta is not None and int(str(meta["current_version"])) >= 3
    assert not a.lost
    a.release_all()
    assert record(bao, prefix, "locks/renew")["owner"] == ""  # type: ignore[index]


def test_taken_over_holder_notices_and_does_not_delete(bao: Bao,
                                                       vault_env: dict[str, str]) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    a = Locks(_layout(), ttl=30, owner="a")
    assert a.try_acquire("renew") is None
    # Someone decides a's lease is over (e.g. a was paused longer than the TTL).
    version = _meta(bao, prefix, "renew")["current_version"]  # type: ignore[index]
    r = bao.api("POST", f"secret/data/{prefix}/locks/renew",
                json={"options": {"cas": version},
                      "data": {"owner": "b", "expires_at": format_time(time.time() + 60)}})
    assert r.status_code == 200, r.text
    assert a.renew("renew") is False
    assert "renew" in a.lost and "held by b" in a.lost["renew"]
    a.release_all()
    assert record(bao, prefix, "locks/renew")["owner"] == "b"  # type: ignore[index]


def test_release_never_frees_a_lock_taken_over_meanwhile(bao: Bao,
                                                          vault_env: dict[str, str]) -> None:
    """b takes the lock over at the very moment a releases it (a was paused past its
    TTL and does not know yet): a's release must leave b's lock alone."""
    prefix = vault_env["KVAULT_PREFIX"]
    a = Locks(_layout(), ttl=30, owner="a")
    assert a.try_acquire("renew") is None
    a._stop.set()  # no keeper tick may notice the takeover first

    def b_takes_over() -> None:
        version = _meta(bao, prefix, "renew")["current_version"]  # type: ignore[index]
        r = bao.api("POST", f"secret/data/{prefix}/locks/renew",
                    json={"options": {"cas": version},
                          "data": {"owner": "b", "expires_at": format_time(time.time() + 60)}})
        assert r.status_code == 200, r.text

    # Whatever request a's release sends to Vault, b's takeover lands just before it.
    vault = a.vault
    for method in ("write", "delete"):
        real = getattr(vault, method)

        def first_b(*args: Any, _real: Any = real, **kw: Any) -> Any:
            if str(args[0]).endswith("/locks/renew"):
                b_takes_over()
            return _real(*args, **kw)

        setattr(vault, method, first_b)
    assert a.release("renew") is False
    after = record(bao, prefix, "locks/renew")
    assert after is not None and after["owner"] == "b"


def test_acquire_waits_for_release(vault_env: dict[str, str]) -> None:
    a = Locks(_layout(), ttl=30, owner="a")
    b = Locks(_layout(), ttl=30, owner="b")
    assert a.try_acquire("renew") is None
    seen: list[LockInfo] = []
    threading.Timer(0.8, lambda: a.release("renew")).start()
    t0 = time.monotonic()
    assert b.acquire("renew", wait=10, pause=0.2, on_wait=seen.append) is None
    took = time.monotonic() - t0
    assert 0.7 < took < 3, took
    assert len(seen) == 1 and seen[0].owner == "a"
    b.release_all()


def test_acquire_gives_up_after_wait(vault_env: dict[str, str]) -> None:
    a = Locks(_layout(), ttl=30, owner="a")
    b = Locks(_layout(), ttl=30, owner="b")
    assert a.try_acquire("renew") is None
    t0 = time.monotonic()
    holder = b.acquire("renew", wait=0.6, pause=0.2)
    assert holder is not None and holder.owner == "a"
    assert 0.5 < time.monotonic() - t0 < 2
    assert b.acquire("renew", wait=0) is not None  # --lock-wait 0: one try
    a.release_all()


def test_acquire_takes_over_after_expiry(vault_env: dict[str, str]) -> None:
    dead = Locks(_layout(), ttl=2, owner="dead")
    assert dead.try_acquire("renew") is None
    dead._stop.set()  # the holder freezes: no more renewals, no release
    b = Locks(_layout(), ttl=30, owner="b")
    t0 = time.monotonic()
    assert b.acquire("renew", wait=10, pause=0.3) is None
    assert 0.8 < time.monotonic() - t0 < 5
    b.release_all()


def test_kv1_refused_with_clear_message(vault_env: dict[str, str], kv1_mount: str) -> None:
    with pytest.raises(VaultUnsupported, match="Locking needs a KV v2 mount"):
        Locks(_layout(mount=kv1_mount))


# ---- found by the generated records (test_generated.py) ----------------------------------


def test_a_released_lock_is_free_whatever_its_expiry(bao: Bao, vault_env: dict[str, str]
                                                     ) -> None:
    """A released record (no owner) with an expiry ahead, as any writer may leave one,
    kept every `renew` out ("another renewer is at work ... held by ?"), exit 0."""
    prefix = vault_env["KVAULT_PREFIX"]
    bao.api("POST", f"secret/data/{prefix}/locks/renew",
            json={"data": {"owner": "", "expires_at": format_time(time.time() + 600)}})
    lk = Locks(_layout(), ttl=30, owner="me")
    assert lk.try_acquire("renew") is None
    assert record(bao, prefix, "locks/renew")["owner"] == "me"  # type: ignore[index]
    lk.release_all()


def test_lock_keys_and_the_longest_lineage_name(bao: Bao, vault_env: dict[str, str]) -> None:
    """A key below locks/ that is no lock name (anyone may write one) made every full
    `renew` end in "Error: Invalid lock name"; and a lineage named with the longest name
    a lineage may have (237 bytes) could not be locked ("lineage-" makes it longer)."""
    from certbot_kvault._internal.renew.locks import lineage_lock
    from certbot_kvault._internal.renew.plan import busy_lineages
    from certbot_kvault._internal.store.records import MAX_NAME_BYTES

    prefix = vault_env["KVAULT_PREFIX"]
    until = format_time(time.time() + 600)
    for key in ("lineage-x%5Cy", "lineage-" + "l" * 300, "lineage-held"):
        r = bao.api("POST", f"secret/data/{prefix}/locks/{key}",
                    json={"data": {"owner": "other:1:x", "expires_at": until}})
        assert r.status_code == 200, r.text
    lk = Locks(_layout(), ttl=30, owner="me")
    assert sorted(lk.names()) == ["lineage-held"]
    assert sorted(busy_lineages(lk, 2)) == ["held"]
    longest = "m" * (MAX_NAME_BYTES - 4) + ".com"
    assert lk.try_acquire(lineage_lock(longest)) is None
    assert lk.holds(lineage_lock(longest))
    lk.release_all()
