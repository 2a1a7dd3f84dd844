"""One ``certbot-kvault renew`` run as Prometheus textfile metrics.

node_exporter's textfile collector reads the file that ``--metrics-file``
names; it is written atomically (temp file + rename) at the end of every run,
including runs that fail or find the lock taken.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional

from certbot_kvault._internal.files import atomic_write


@dataclasses.dataclass
class Metrics:
    """One renew run, as Prometheus textfile metrics (node_exporter's textfile collector)."""

    started: float
    renewed: int = 0
    failed: int = 0
    checked: int = 0
    skipped: int = 0
    exit_code: int = 0
    days_to_expiry: dict[str, float] = dataclasses.field(default_factory=dict)

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
        first = True
        for name, days in sorted(self.days_to_expiry.items()):
            gauge("certificate_days_to_expiry", "Days until the lineage's certificate expires.",
                  days, {"lineage": name}, header=first)
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
