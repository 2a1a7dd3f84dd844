"""RFC 3339 UTC timestamps, the form Vault records carry them in (``expires_at``, ``not_after``).

The lease locks write and read their expiry and start in this one form (whole
seconds, ``Z`` suffix), and the renewal planner reads the lineages' expiry and
last update with it. ``format_time`` rounds up, so a lease never looks shorter
than it is; ``floor_time`` rounds down, for the instant something started.

Reading is total, since records come from Vault, where anyone who may write
can edit them: ``read_time`` answers None for a missing value and raises
:class:`BadTime` (a ValueError) for anything else that is not an RFC 3339 time
from 1970 to 9000 once its offset is applied (``9999-12-31T23:59:59-23:59``
parses, but lies in the year 10000, where no datetime can show it);
``parse_time`` answers None for both. Formatting clamps to the same range, so
no time computed from such a value (an expiry minus ``renew_before_expiry =
5000 years``) can make a command end in a traceback.
"""
from __future__ import annotations

import datetime
import math
from typing import Optional

EARLIEST = 0.0                 # 1970-01-01T00:00:00Z
LATEST = datetime.datetime(9000, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
# How far another machine's clock may run ahead of ours (NTP keeps real ones well within).
CLOCK_SKEW = 300.0
# RFC 3339 with a fraction and an offset is 35 characters; anything much longer is not one.
_MAX_CHARS = 64


class BadTime(ValueError):
    """A value that should be an RFC 3339 time from 1970 to 9000 and is not."""


def _clamped(ts: float) -> float:
    return min(max(ts, EARLIEST), LATEST) if ts == ts else EARLIEST  # NaN: the earliest


def format_time(ts: float) -> str:
    """RFC 3339 UTC, whole seconds, rounded up (a lease never looks shorter than it is)."""
    dt = datetime.datetime.fromtimestamp(math.ceil(_clamped(ts)), tz=datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def floor_time(ts: float) -> str:
    """RFC 3339 UTC, whole seconds, rounded down (when something happened)."""
    dt = datetime.datetime.fromtimestamp(math.floor(_clamped(ts)), tz=datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def read_time(value: object) -> Optional[float]:
    """A POSIX timestamp from an RFC 3339 string; None if missing (None or empty).

    Raises BadTime for any other value that is not such a time from 1970 to 9000.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or len(value) > _MAX_CHARS:
        raise BadTime("not an RFC 3339 time")
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.datetime.fromisoformat(text)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=datetime.timezone.utc)
        ts = dt.timestamp()
    except (ValueError, OverflowError):
        raise BadTime("not an RFC 3339 time") from None
    if not EARLIEST <= ts <= LATEST:
        raise BadTime("a time outside 1970 to 9000")
    return ts


def parse_time(value: object) -> Optional[float]:
    """A POSIX timestamp from an RFC 3339 string; None if missing, malformed or out of range."""
    try:
        return read_time(value)
    except BadTime:
        return None
