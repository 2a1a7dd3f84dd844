"""RFC 3339 UTC timestamps, the form Vault records carry them in (``expires_at``, ``not_after``).

The lease locks write and read their expiry and start in this one form (whole
seconds, ``Z`` suffix), and the renewal planner reads the lineages' expiry and
last update with it. ``format_time`` rounds up, so a lease never looks shorter
than it is; ``floor_time`` rounds down, for the instant something started;
``parse_time`` accepts any RFC 3339 offset and answers None for a value that
is missing or malformed rather than raising, since records come from Vault,
where anyone who may write can edit them.
"""
from __future__ import annotations

import datetime
import math
from typing import Optional


def format_time(ts: float) -> str:
    """RFC 3339 UTC, whole seconds, rounded up (a lease never looks shorter than it is)."""
    dt = datetime.datetime.fromtimestamp(math.ceil(ts), tz=datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def floor_time(ts: float) -> str:
    """RFC 3339 UTC, whole seconds, rounded down (when something happened)."""
    dt = datetime.datetime.fromtimestamp(math.floor(ts), tz=datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> Optional[float]:
    """A POSIX timestamp from an RFC 3339 string; None if missing or malformed."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt.timestamp()
