"""One ``certbot-kvault renew`` run as Prometheus textfile metrics.

node_exporter's textfile collector reads the file that ``--metrics-file``
names; it is written atomically (temp file + rename) at the end of every run,
including runs that fail or find the lock taken. Per lineage (every lineage
the run read from Vault, not only those it renewed): days to expiry, the next
renewal time certbot's rule gives (or the end of a failure backoff), the
consecutive failures and whether it is in backoff, so an alert can fire on a
lineage that keeps failing long before it expires.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Iterable, Optional, Protocol

from certbot_kvault._internal.tree.files import atomic_write


class Observed(Protocol):
    """What the metrics read of a lineage (status.LineageStatus)."""

    name: str
    now: float
    not_after: Optional[float]

    @property
    def next_renewal(self) -> Optional[float]: ...

    @property
    def backoff_until(self) -> Optional[float]: ...

    @property
    def failures(self) -> int: ...


@dataclasses.dataclass
class Metrics:
    """One renew run, as Prometheus textfile metrics (node_exporter's textfile collector)."""

    started: float
    renewed: int = 0
    failed: int = 0
    checked: int = 0
    skipped: int = 0
    exit_code: int = 0
    state_errors: int = 0
    days_to_expiry: dict[str, float] = dataclasses.field(default_factory=dict)
    next_renewal: dict[str, float] = dataclasses.field(default_factory=dict)
    failures: dict[str, int] = dataclasses.field(default_factory=dict)
    backoff: dict[str, float] = dataclasses.field(default_factory=dict)

    def observe(self, lineages: Iterable[Observed]) -> None:
        """Take (or update) the per-lineage figures."""
        for st in lineages:
            if st.not_after is not None:
                self.days_to_expiry[st.name] = round((st.not_after - st.now) / 86400, 3)
            if st.next_renewal is not None:
                self.next_renewal[st.name] = st.next_renewal
            self.failures[st.name] = st.failures
            self.backoff[st.name] = st.backoff_until or 0

    def text(self) -> str:
        now = time.time()
        out: list[str] = []

        def gauge(name: str, help_text: str, value: float,
                  labels: Optional[dict[str, str]] = None, header: bool = True) -> None:
            if header:
                out.append(f"# HELP certbot_kvault_{name} {help_text}")
                out.append(f"# TYPE certbot_kvault_{name} gauge")
            lbl = ""
            if labels:
                lbl = "{" + ",".join(f'{k}="{_escape_label(v)}"'
                                     for k, v in sorted(labels.items())) + "}"
            out.append(f"certbot_kvault_{name}{lbl} {_num(value)}")

        gauge("renew_last_run_timestamp_seconds", "When the last renew run ended.", now)
        gauge("renew_seconds", "How long the last renew run took.", now - self.started)
        gauge("renew_exit_code", "Exit code of the last renew run (0 = success).",
              self.exit_code)
        gauge("renew_renewed", "Lineages renewed and saved to Vault by the last run.",
              self.renewed)
        gauge("renew_failed", "Lineages whose renewal or save to Vault failed in the last run.",
              self.failed)
        gauge("renew_checked", "Lineages the last run looked at.", self.checked)
        gauge("renew_skipped_locked", "1 if the last run did nothing because another renewer "
              "held the lock.", self.skipped)
        gauge("renew_state_errors", "Lineages whose renewal memory (failures, backoff) the "
              "last run could not save to Vault.", self.state_errors)
        per_lineage = (
            ("certificate_days_to_expiry", "Days until the lineage's certificate expires.",
             self.days_to_expiry),
            ("certificate_next_renewal_timestamp_seconds", "When the lineage is due for "
             "renewal (certbot's rule; the end of a failure backoff if later).",
             self.next_renewal),
            ("renewal_consecutive_failures", "Renewal attempts of the lineage that failed in "
             "a row (0 after a success).", self.failures),
            ("renewal_backoff_until_timestamp_seconds", "Until when the lineage is in failure "
             "backoff (0 = not in backoff).", self.backoff),
        )
        for metric, help_text, values in per_lineage:
            first = True
            for name, value in sorted(values.items()):
                gauge(metric, help_text, value, {"lineage": name}, header=first)
                first = False
        return "\n".join(out) + "\n"

    def write(self, path: str) -> None:
        """Atomically (temp file + rename), so the collector never reads half a file."""
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        atomic_write(path, self.text().encode("utf-8"), 0o644)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}"
