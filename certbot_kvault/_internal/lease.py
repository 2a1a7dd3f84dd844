"""A lock record as read from Vault (``locks/<name>``), and the bounds of a lease.

lock.py takes, keeps and releases locks; this is what one says: who holds it,
until when, and whether any holder could have written that. A lock is data
from Vault like any record: a holder writes an ``expires_at`` at most its
``--lock-ttl`` ahead (``MAX_TTL`` at most), so one further out than that plus
``CLOCK_SKEW``, or one that is no time at all, is stale (``implausible``): it
may be taken over at once, and the renewer says so in one line naming the
lock and its owner (a planted ``9999-12-31`` must not stop every renewal while
each run exits 0). Values from the record are printed escaped.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

from certbot_kvault._internal.redact import printable
from certbot_kvault._internal.timefmt import CLOCK_SKEW, format_time, parse_time

DEFAULT_TTL = 300
MIN_TTL = 2
MAX_TTL = 3600  # renewed every TTL/3: a longer lease only stalls the fleet after a crash


@dataclasses.dataclass
class LockInfo:
    """A lock as read from Vault."""

    name: str
    path: str
    owner: str
    expires_at: Optional[float]
    version: Optional[int]
    acquired_at: Optional[float] = None
    bad_expiry: Optional[str] = None   # the expires_at text, when it is no time at all

    @property
    def released(self) -> bool:
        """A record its holder released (no owner): free, kept only for its version."""
        return not self.owner

    def expired(self, now: Optional[float] = None) -> bool:
        # A released lock is free whatever expiry it shows, and one without a readable
        # expiry is garbage: anyone may take either.
        when = time.time() if now is None else now
        return self.released or self.expires_at is None or self.expires_at <= when \
            or self.implausible(when)

    def implausible(self, now: float) -> bool:
        """Held, with an expiry no holder writes: beyond the longest lease, or no time."""
        return not self.released and (self.bad_expiry is not None if self.expires_at is None
                                       else self.expires_at > now + MAX_TTL + CLOCK_SKEW)

    def stale_line(self) -> str:
        until = printable(self.bad_expiry or format_time(self.expires_at or 0), 64)
        return (f"warning: lock {self.name} ({self.path}) held by {printable(self.owner, 100)} "
                f"expires at {until}, more than the longest lock lease ({MAX_TTL} s) ahead or "
                "no time at all: taken as stale (a clock far off, or a planted lock)")

    @classmethod
    def from_entry(cls, name: str, path: str, data: dict[str, Any],
                   version: Optional[int]) -> LockInfo:
        """The lock as its record in Vault says (never raises: anyone may have written it)."""
        raw = data.get("expires_at")
        expires_at = parse_time(raw)
        return cls(name=name, path=path, owner=str(data.get("owner") or ""),
                   expires_at=expires_at, version=version,
                   acquired_at=parse_time(data.get("acquired_at")),
                   bad_expiry=None if expires_at is not None or not raw else str(raw))

    def describe(self) -> str:
        until = format_time(self.expires_at) if self.expires_at is not None else "?"
        return f"held by {printable(self.owner, 100) or '?'} until {until} ({self.path})"
