"""Each lineage's renewal as Vault alone tells it: due now or when, and what failed before.

``renew`` decides from this before it pulls anything (so a run costs what is
due, not what exists); ``list``, ``show`` and the metrics file show the same
answers. One :class:`LineageStatus` per lineage joins three things:

- the certificate record (``not_before``/``not_after``/``serial`` fields, or
  the PEM itself when a field is missing or malformed) and its renewal conf's
  timing settings (due.py's ``conf_settings``);
- the renewal memory (state.py), when the token may read it (the ``reader``
  policy does not grant it: its ``list`` then shows no failure state);
- certbot's rule (due.py) applied to both, the ARI answer included when it is
  about the current certificate.

A record whose dates cannot be read is due: pulling it then reports what is
wrong with it, every run, rather than the lineage silently never renewing.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional, Sequence

from certbot_kvault._internal import sync
from certbot_kvault._internal.due import ConfSettings, Decision, conf_settings, decide
from certbot_kvault._internal.errors import VaultPermissionDenied
from certbot_kvault._internal.layout import Layout
from certbot_kvault._internal.state import RenewalState
from certbot_kvault._internal.timefmt import floor_time, parse_time
from certbot_kvault._internal.vault import KVEntry

UNREADABLE = "unreadable record"


@dataclasses.dataclass
class LineageStatus:
    """One lineage, as read from Vault at ``now``."""

    name: str
    now: float
    entry: KVEntry
    settings: ConfSettings
    not_before: Optional[float]
    not_after: Optional[float]
    serial: Optional[str]
    state: Optional[RenewalState] = None
    state_error: Optional[str] = None   # why the memory could not be read
    decision: Decision = Decision(True, None, UNREADABLE)

    @property
    def lifetime(self) -> Optional[float]:
        if self.not_before is None or self.not_after is None:
            return None
        return self.not_after - self.not_before

    @property
    def failures(self) -> int:
        return self.state.failures if self.state is not None else 0

    @property
    def due(self) -> bool:
        return self.decision.due

    def in_backoff(self) -> bool:
        return self.state is not None and self.state.in_backoff(self.now)

    @property
    def backoff_until(self) -> Optional[float]:
        return self.state.next_attempt if self.state is not None and self.in_backoff() else None

    @property
    def next_renewal(self) -> Optional[float]:
        """When the next attempt may happen: the rule's time, or the end of a backoff."""
        when = self.decision.when
        if self.decision.due:
            when = self.now if when is None else min(when, self.now)
        until = self.backoff_until
        if until is not None and when is not None:
            return max(when, until)
        return when

    def cert_pem(self) -> str:
        value = self.entry.data.get("cert")
        return value if isinstance(value, str) else ""

    def backoff_line(self) -> str:
        """The one line a renewer prints when it skips this lineage."""
        st = self.state
        assert st is not None and st.next_attempt is not None
        error = f"; last error: {st.last_error}" if st.last_error else ""
        return (f"renew: skipping {self.name}: in backoff until {floor_time(st.next_attempt)} "
                f"after {st.failures} consecutive failure(s){error}; "
                f"`certbot-kvault renew --retry-now {self.name}` tries now")

    def as_json(self) -> dict[str, Any]:
        """The renewal part of ``list``/``show --json``."""
        def ts(value: Optional[float]) -> Optional[str]:
            return None if value is None else floor_time(value)

        out: dict[str, Any] = {
            "due": self.decision.due,
            "renewal_rule": self.decision.reason,
            "next_renewal": ts(self.next_renewal),
            "in_backoff": self.in_backoff(),
            "backoff_until": ts(self.backoff_until),
        }
        if self.state is not None:
            out["state"] = self.state.as_json()
        elif self.state_error is not None:
            out["state"] = None
            out["state_error"] = self.state_error
        else:
            out["state"] = {"consecutive_failures": 0}
        return out


def status_of(name: str, entry: KVEntry, now: float, state: Optional[RenewalState] = None,
              state_error: Optional[str] = None) -> LineageStatus:
    """A lineage's status from its raw record (and memory); never raises on bad data."""
    data = entry.data if isinstance(entry.data, dict) else {}
    renewal = data.get("renewal")
    settings = conf_settings(renewal) if isinstance(renewal, str) else ConfSettings()
    not_before = parse_time(data.get("not_before"))
    not_after = parse_time(data.get("not_after"))
    serial = data.get("serial") if isinstance(data.get("serial"), str) else None
    if not_before is None or not_after is None:
        not_before, not_after, serial = _from_pem(data.get("cert"), serial)
    status = LineageStatus(name=name, now=now, entry=entry, settings=settings,
                           not_before=not_before, not_after=not_after, serial=serial,
                           state=state, state_error=state_error)
    if not_before is None or not_after is None:
        return status
    ari_time = state.ari_for(serial) if state is not None else None
    if ari_time is not None and now >= not_after:
        ari_time = min(ari_time, not_after)  # never ask ARI about an expired certificate
    status.decision = decide(not_before, not_after, settings, ari_time=ari_time, now=now)
    return status


def _from_pem(pem: object, serial: Optional[str]) -> tuple[Optional[float], Optional[float],
                                                          Optional[str]]:
    if not isinstance(pem, str):
        return None, None, serial
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except ValueError:
        return None, None, serial
    return (cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp(),
            serial or format(cert.serial_number, "x"))


def with_state(layout: Layout, name: str, entry: KVEntry, now: float,
               denied: Optional[list[str]] = None) -> LineageStatus:
    """A lineage's status with its memory read from Vault, if this token may read it.

    ``denied`` collects the first permission denial, so that a reader token
    is told once rather than asked for every lineage.
    """
    denied = [] if denied is None else denied
    if denied:
        return status_of(name, entry, now, None, denied[0])
    try:
        state = layout.load_state(name)
    except VaultPermissionDenied as e:
        denied.append(str(e))
        return status_of(name, entry, now, None, str(e))
    return status_of(name, entry, now, state)


def read_fleet(layout: Layout, names: Sequence[str], workers: int, *,
               with_memory: bool = True, now: Optional[float] = None) -> dict[str, LineageStatus]:
    """Every named lineage's status (in parallel); lineages gone from Vault are left out."""
    when = time.time() if now is None else now
    denied: list[str] = []

    def one(name: str) -> Optional[LineageStatus]:
        entry = layout.read_lineage_raw(name)
        if entry is None:
            return None
        if not with_memory:
            return status_of(name, entry, when)
        return with_state(layout, name, entry, when, denied)

    out = {}
    for name, status in sync.parallel(names, one, workers):
        if status is not None:
            out[name] = status
    if denied:
        for status in out.values():
            if status.state is None and status.state_error is None:
                status.state_error = denied[0]
    return out
