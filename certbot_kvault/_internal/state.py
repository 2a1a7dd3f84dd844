"""What renewers remember about a lineage between stateless runs.

A container's disk dies with the job, so the memory lives in Vault, in a
record of its own beside the certificate (``state/<lineage>``): writing it
never adds a version to ``certificates/<lineage>`` (whose versions are the
fencing tokens of renew, and what consumers watch), it works the same on KV
v1 and v2, and the ``reader`` policy, which does not grant it, loses nothing
it needs. It holds:

- the last attempt, the last success, the consecutive failures and the last
  error (one line, redacted);
- the next allowed attempt: after ``n`` consecutive failures a lineage waits
  ``1 h * 2**(n-1)``, capped at 24 h and at a tenth of the certificate's
  lifetime (so a 6-day certificate is retried at least every 14.4 h); a
  success clears it;
- the ARI answer for the certificate with ``serial``: the suggested window,
  the renewal time picked in it and when the CA may be asked again.

Records come from Vault, where anyone who may write can edit them: every
field is parsed leniently (a malformed value reads as absent), so a broken
state record can make a lineage renew early, never stop it for good.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

from certbot_kvault._internal.redact import redact
from certbot_kvault._internal.timefmt import floor_time, format_time, parse_time

BACKOFF_BASE = 3600.0
BACKOFF_CAP = 86400.0
MAX_ERROR_CHARS = 300


def backoff_seconds(failures: int, lifetime: Optional[float]) -> float:
    """The wait after ``failures`` consecutive failures (0 after none)."""
    if failures <= 0:
        return 0.0
    delay = BACKOFF_BASE * float(2 ** min(failures - 1, 16))
    cap = BACKOFF_CAP if not lifetime or lifetime <= 0 else min(BACKOFF_CAP, lifetime / 10)
    return min(delay, cap)


def one_line(text: str) -> str:
    """An error as one short, secret-free line, safe to print.

    It is read back from Vault, where anyone who may write could plant terminal
    escapes: characters that are not printable are shown escaped.
    """
    line = redact(" ".join(str(text).split()))
    line = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in line)
    return line if len(line) <= MAX_ERROR_CHARS else line[:MAX_ERROR_CHARS - 1] + "…"


@dataclasses.dataclass
class RenewalState:
    """state/<lineage>; timestamps are POSIX seconds (RFC 3339 in Vault)."""

    last_attempt: Optional[float] = None
    last_success: Optional[float] = None
    failures: int = 0
    last_error: Optional[str] = None
    next_attempt: Optional[float] = None
    serial: Optional[str] = None          # the certificate the ARI fields are about
    ari_start: Optional[float] = None
    ari_end: Optional[float] = None
    ari_time: Optional[float] = None      # the renewal time picked in the window
    ari_next_check: Optional[float] = None
    ari_explanation: Optional[str] = None
    kv_version: Optional[int] = None      # not stored: the version read

    # ---- what the planner asks --------------------------------------------

    def in_backoff(self, now: float) -> bool:
        return self.failures > 0 and self.next_attempt is not None and now < self.next_attempt

    def ari_for(self, serial: Optional[str]) -> Optional[float]:
        """The ARI renewal time if it is about this certificate."""
        if serial is None or self.serial != serial:
            return None
        return self.ari_time

    def ari_check_due(self, serial: Optional[str], now: float) -> bool:
        """May the CA be asked about this certificate now (its last Retry-After passed)?"""
        if serial is None or self.serial != serial or self.ari_next_check is None:
            return True
        return now >= self.ari_next_check

    # ---- what a renewal run records ---------------------------------------

    def failed(self, error: str, now: float, lifetime: Optional[float]) -> None:
        self.last_attempt = now
        self.failures += 1
        self.last_error = one_line(error)
        self.next_attempt = now + backoff_seconds(self.failures, lifetime)

    def succeeded(self, now: float) -> None:
        self.last_attempt = now
        self.last_success = now
        self.failures = 0
        self.last_error = None
        self.next_attempt = None
        # The ARI answer was about the certificate just replaced.
        self.serial = self.ari_start = self.ari_end = self.ari_time = None
        self.ari_next_check = self.ari_explanation = None

    def ari_answer(self, serial: str, start: Optional[float], end: Optional[float],
                   picked: Optional[float], next_check: float,
                   explanation: Optional[str] = None) -> None:
        self.serial = serial
        self.ari_start, self.ari_end, self.ari_time = start, end, picked
        self.ari_next_check = next_check
        self.ari_explanation = explanation

    # ---- Vault form ---------------------------------------------------------

    def to_kv(self) -> dict[str, Any]:
        def ts(value: Optional[float]) -> Optional[str]:
            return None if value is None else format_time(value)

        data: dict[str, Any] = {
            "last_attempt": None if self.last_attempt is None else floor_time(self.last_attempt),
            "last_success": None if self.last_success is None else floor_time(self.last_success),
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
            "next_attempt": ts(self.next_attempt),
            "serial": self.serial,
            "ari_window_start": ts(self.ari_start),
            "ari_window_end": ts(self.ari_end),
            "ari_renewal_time": ts(self.ari_time),
            "ari_next_check": ts(self.ari_next_check),
            "ari_explanation_url": self.ari_explanation,
            "updated_at": floor_time(time.time()),
        }
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_kv(cls, data: dict[str, Any], kv_version: Optional[int] = None) -> RenewalState:
        try:
            failures = max(0, int(data.get("consecutive_failures") or 0))
        except (TypeError, ValueError):
            failures = 0

        def text(key: str) -> Optional[str]:
            value = data.get(key)
            return value if isinstance(value, str) and value else None

        error = text("last_error")
        return cls(
            last_attempt=parse_time(data.get("last_attempt")),
            last_success=parse_time(data.get("last_success")),
            failures=failures,
            last_error=None if error is None else one_line(error),
            next_attempt=parse_time(data.get("next_attempt")),
            serial=text("serial"),
            ari_start=parse_time(data.get("ari_window_start")),
            ari_end=parse_time(data.get("ari_window_end")),
            ari_time=parse_time(data.get("ari_renewal_time")),
            ari_next_check=parse_time(data.get("ari_next_check")),
            ari_explanation=text("ari_explanation_url"),
            kv_version=kv_version)

    def as_json(self) -> dict[str, Any]:
        """For ``list``/``show --json``: the Vault form without ``updated_at``."""
        out = self.to_kv()
        out.pop("updated_at", None)
        out["consecutive_failures"] = self.failures
        return out
