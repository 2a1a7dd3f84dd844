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

Records come from Vault, where anyone who may write can edit them, so a
record is read whole or not at all: a field of the wrong type, a time that is
not RFC 3339 from 1970 to 9000, an attempt in the future (beyond
``CLOCK_SKEW``), a next attempt further than ``BACKOFF_CAP`` after the last
attempt or an ARI next check further than ``ARI_MAX_RETRY`` from now make
it :class:`MalformedState` (one line, naming the field). The renewer then
decides from the certificate alone and the next attempt writes a sound record:
a broken or planted memory can make a lineage renew early, never stop it.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

from certbot_kvault._internal.store.limits import ARI_MAX_RETRY
from certbot_kvault._internal.store.records import RecordError
from certbot_kvault._internal.store.timefmt import (
    CLOCK_SKEW,
    BadTime,
    floor_time,
    format_time,
    read_time,
)
from certbot_kvault._internal.vault.redact import redact

BACKOFF_BASE = 3600.0
BACKOFF_CAP = 86400.0
MAX_ERROR_CHARS = 300
# Far above any count a renewer writes (one a run), far below what int() finds costly.
MAX_FAILURES = 10**6
# Longer texts than these are nothing a renewer writes (a serial is at most 40 hex
# digits, RFC 5280; an explanation URL is a CA's web page).
_MAX_TEXT = {"serial": 64, "ari_explanation_url": 2048, "last_error": 4096}
_TIMES = {"last_attempt": "last_attempt", "last_success": "last_success",
          "next_attempt": "next_attempt", "ari_window_start": "ari_start",
          "ari_window_end": "ari_end", "ari_renewal_time": "ari_time",
          "ari_next_check": "ari_next_check"}


class MalformedState(RecordError):
    """A state/<lineage> record that cannot be trusted; the message names the field."""


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
    def from_kv(cls, data: dict[str, Any], kv_version: Optional[int] = None,
                now: Optional[float] = None) -> RenewalState:
        """The record read whole, or MalformedState naming the first field that is wrong
        (a field that is absent or null is simply absent)."""
        failures = data.get("consecutive_failures")
        if failures is None:
            failures = 0
        elif isinstance(failures, str) and failures.isdigit() and len(failures) <= 7:
            failures = int(failures)
        if isinstance(failures, bool) or not isinstance(failures, int) \
                or not 0 <= failures <= MAX_FAILURES:
            raise MalformedState(f"consecutive_failures is not a count from 0 to {MAX_FAILURES}")
        texts: dict[str, Optional[str]] = {}
        for key, limit in _MAX_TEXT.items():
            value = data.get(key)
            if value is not None and (not isinstance(value, str) or len(value) > limit):
                raise MalformedState(f"{key} is not a text of at most {limit} characters")
            texts[key] = value or None
        times: dict[str, Optional[float]] = {}
        for key, attr in _TIMES.items():
            try:
                times[attr] = read_time(data.get(key))
            except BadTime:
                raise MalformedState(f"{key} is not an RFC 3339 time from 1970 to 9000") \
                    from None
        error = texts["last_error"]
        state = cls(failures=failures, last_error=None if error is None else one_line(error),
                    serial=texts["serial"], ari_explanation=texts["ari_explanation_url"],
                    kv_version=kv_version, **times)
        state.check(time.time() if now is None else now)
        return state

    def check(self, now: float) -> None:
        """MalformedState unless every time is one a renewer could have written by ``now``."""
        for key in ("last_attempt", "last_success"):
            when = getattr(self, key)
            if when is not None and when > now + CLOCK_SKEW:
                raise MalformedState(f"{key} {floor_time(when)} is in the future")
        if self.next_attempt is not None:
            if self.last_attempt is None:
                raise MalformedState("next_attempt is set without last_attempt")
            if self.next_attempt > self.last_attempt + BACKOFF_CAP + CLOCK_SKEW:
                raise MalformedState(f"next_attempt {floor_time(self.next_attempt)} is more "
                                     f"than the backoff cap ({BACKOFF_CAP / 3600:g} h) after "
                                     f"last_attempt {floor_time(self.last_attempt)}")
        if self.ari_next_check is not None \
                and self.ari_next_check > now + ARI_MAX_RETRY + CLOCK_SKEW:
            raise MalformedState(f"ari_next_check {floor_time(self.ari_next_check)} is more "
                                 f"than the CA's longest Retry-After ({ARI_MAX_RETRY / 3600:g} "
                                 "h) from now")

    def as_json(self) -> dict[str, Any]:
        """For ``list``/``show --json``: the Vault form without ``updated_at``."""
        out = self.to_kv()
        out.pop("updated_at", None)
        out["consecutive_failures"] = self.failures
        return out
