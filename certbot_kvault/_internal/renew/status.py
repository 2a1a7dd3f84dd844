"""Each lineage's renewal as Vault alone tells it: due now or when, and what failed before.

``renew`` decides from this before it pulls anything (so a run costs what is
due, not what exists); ``list``, ``show`` and the metrics file show the same
answers. One :class:`LineageStatus` per lineage joins three things:

- the certificate itself (its PEM's dates and serial: the record's
  ``not_before``/``not_after``/``serial`` fields are only compared with it,
  and a record whose fields disagree is named in one warning) and its renewal
  conf's timing settings (due.py's ``conf_settings``);
- the renewal memory (state.py), when the token may read it (the ``reader``
  policy does not grant it: its ``list`` then shows no failure state); a
  memory that cannot be trusted is named in one warning and left out;
- certbot's rule (due.py) applied to both, the ARI answer included when it is
  about the current certificate, and never later than the lifetime rule's
  point (a remembered ARI time is data from Vault); and due.py's storm guard.

``refresh_ari`` asks the CA (ari.py) about the certificates whose last
answer's Retry-After has passed, and keeps the answer in the memory: one
directory request per CA per run, one renewalInfo request per certificate
at most every Retry-After, none for a lineage in backoff or an expired
certificate, and none when the CA offers no ARI (the lifetime rule applies).

A record whose dates cannot be read is due: pulling it then reports what is
wrong with it, every run, rather than the lineage silently never renewing.
"""
from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence, Union

from certbot_kvault._internal.renew.due import (
    ConfSettings,
    Decision,
    conf_settings,
    decide,
    default_renewal_time,
    storm_guard,
)
from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.store.limits import MAX_CONF_CHARS, MAX_PEM_CHARS, archive_number
from certbot_kvault._internal.store.state import MalformedState, RenewalState
from certbot_kvault._internal.sync import jobs
from certbot_kvault._internal.vault.errors import VaultPermissionDenied

if TYPE_CHECKING:  # ari.py imports acme's client: only `renew` needs it, loaded there
    from certbot_kvault._internal.renew.ari import AriClients
from certbot_kvault._internal.store.timefmt import CLOCK_SKEW, floor_time, parse_time
from certbot_kvault._internal.vault.client import KVEntry

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
    version: int = 0                    # the record's archive version (0: unreadable)
    memory_warning: Optional[str] = None  # why the memory was left out (untrusted)
    record_warning: Optional[str] = None  # the record's fields disagree with its cert

    @property
    def warnings(self) -> list[str]:
        """The lines to print about this lineage's records (one each)."""
        return [w for w in (self.record_warning, self.memory_warning) if w]

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
    def guarded_until(self) -> Optional[float]:
        """Until when the storm guard (due.py) holds the lineage back (None: it does not)."""
        if self.not_before is None or self.not_after is None:
            return None
        last = self.state.last_success if self.state is not None else None
        renewed = self.version >= 2 or (last is not None and last >= self.not_before - CLOCK_SKEW)
        return storm_guard(self.not_before, self.not_after, renewed=renewed, now=self.now)

    @property
    def next_renewal(self) -> Optional[float]:
        """When the next attempt may happen: the rule's time, or the end of a backoff or
        of the storm guard."""
        when = self.decision.when
        if self.decision.due:
            when = self.now if when is None else min(when, self.now)
        for until in (self.backoff_until, self.guarded_until):
            if until is not None and when is not None:
                when = max(when, until)
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
            "renewed_recently_until": ts(self.guarded_until),
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
              state_error: Optional[str] = None,
              settings: Optional[ConfSettings] = None,
              memory_warning: Optional[str] = None) -> LineageStatus:
    """A lineage's status from its raw record (and memory); never raises on bad data.

    ``settings``: the record's conf settings when the caller has them already (parsing
    the conf is most of the cost of a status). ``memory_warning``: why the caller
    left the memory out, kept with the status.
    """
    data = entry.data if isinstance(entry.data, dict) else {}
    renewal = data.get("renewal")
    if settings is None:
        settings = conf_settings(renewal) if isinstance(renewal, str) \
            and len(renewal) <= MAX_CONF_CHARS else ConfSettings()
    not_before, not_after, serial = _from_pem(data.get("cert"))
    status = LineageStatus(name=name, now=now, entry=entry, settings=settings,
                           not_before=not_before, not_after=not_after, serial=serial,
                           state=state, state_error=state_error,
                           version=_version(data.get("version")),
                           memory_warning=memory_warning)
    if not_before is None or not_after is None:
        return status
    differ = [key for key, ours in (("not_before", not_before), ("not_after", not_after))
              if key in data and parse_time(data[key]) != ours]
    if "serial" in data and (not isinstance(data["serial"], str)
                             or data["serial"].strip().lower().lstrip("0") != serial):
        differ.append("serial")
    if differ:
        status.record_warning = (
            f"warning: lineage {name}: the record's {', '.join(differ)} "
            f"{'disagrees' if len(differ) == 1 else 'disagree'} with its certificate "
            f"(not_after {floor_time(not_after)}, serial {serial}); the certificate decides")
    ari_time = state.ari_for(serial) if state is not None else None
    if ari_time is not None:
        # A remembered ARI time is data from Vault: never later than the lifetime rule.
        ari_time = min(ari_time, default_renewal_time(not_before, not_after))
    status.decision = decide(not_before, not_after, settings, ari_time=ari_time, now=now)
    return status


def _from_pem(pem: object) -> tuple[Optional[float], Optional[float], Optional[str]]:
    """(not_before, not_after, serial in lowercase hex) of the record's certificate."""
    if not isinstance(pem, str) or len(pem) > MAX_PEM_CHARS["cert"]:
        return None, None, None
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
        return (cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp(),
                format(cert.serial_number, "x"))
    except ValueError:  # UnicodeEncodeError included
        return None, None, None


def _version(value: object) -> int:
    """The record's archive version (0 when it is not one)."""
    try:
        return archive_number(value)
    except ValueError:
        return 0


def with_state(layout: Layout, name: str, entry: KVEntry, now: float,
               denied: Optional[list[str]] = None,
               settings: Optional[ConfSettings] = None) -> LineageStatus:
    """A lineage's status with its memory read from Vault, if this token may read it.

    ``denied`` collects the first permission denial, so that a reader token
    is told once rather than asked for every lineage.
    """
    state, error, warning = _memory(layout, name, [] if denied is None else denied, now)
    return status_of(name, entry, now, state, error, settings, warning)


Memory = tuple[Optional[RenewalState], Optional[str], Optional[str]]


def _memory(layout: Layout, name: str, denied: list[str], now: float) -> Memory:
    """A lineage's memory, or why this token cannot read it (asked once: see with_state),
    and the warning for a memory that cannot be trusted (left out)."""
    if denied:
        return None, denied[0], None
    try:
        return layout.load_state(name, now), None, None
    except VaultPermissionDenied as e:
        denied.append(str(e))
        return None, str(e), None
    except MalformedState as e:
        return None, None, (f"warning: lineage {name}: its renewal memory is ignored: {e}; "
                            "its certificate alone decides, and the next attempt rewrites it")


def read_fleet(layout: Layout, names: Sequence[str], workers: int, *,
               with_memory: Union[bool, Callable[[LineageStatus], bool]] = True,
               now: Optional[float] = None, progress: jobs.Tick = None
               ) -> dict[str, LineageStatus]:
    """Every named lineage's status (in parallel); lineages gone from Vault are left out.

    ``with_memory`` may be a test on the status without memory: only the
    lineages it passes cost a second read.
    """
    when = time.time() if now is None else now
    denied: list[str] = []

    def one(name: str) -> Optional[LineageStatus]:
        entry = layout.read_lineage_raw(name)
        if entry is None:
            return None
        bare = status_of(name, entry, when)
        if not (with_memory(bare) if callable(with_memory) else with_memory):
            return bare
        return with_state(layout, name, entry, when, denied, bare.settings)

    def reads(name: str) -> tuple[Optional[KVEntry], Memory]:
        entry = layout.read_lineage_raw(name)
        if entry is None or not with_memory:
            return entry, (None, None, None)
        return entry, _memory(layout, name, denied, when)

    def from_reads(name: str, fetched: jobs.Fetched[tuple[Optional[KVEntry], Memory]]
                   ) -> Optional[LineageStatus]:
        entry, (state, error, warning) = fetched.get()
        return None if entry is None else status_of(name, entry, when, state, error,
                                                    memory_warning=warning)

    out = {}

    def collect(statuses: Iterator[tuple[str, Optional[LineageStatus]]]) -> None:
        for done, (name, status) in enumerate(statuses, 1):
            if status is not None:
                out[name] = status
            if progress is not None:
                progress(done, len(names))

    if callable(with_memory):
        collect(jobs.parallel(names, one, workers))
    else:
        # Whether the memory is read known up front: the reads in the pool, the
        # statuses (conf parsing: the CPU) in this thread (jobs.prefetched).
        with jobs.prefetched(names, reads, workers) as results:
            collect((name, from_reads(name, fetched)) for name, fetched in results)
    if denied:
        for status in out.values():
            if status.state is None and status.state_error is None:
                status.state_error = denied[0]
    return out


def renewal_fleet(layout: Layout, workers: int, ari: Optional[AriClients], *,
                  all_memory: bool, notify: Callable[[str], None]) -> dict[str, LineageStatus]:
    """What ``renew`` decides on: every lineage, its memory where it can matter, ARI asked.

    The memory of a lineage that is not due by its dates and whose CA offers
    no ARI cannot change the decision (a backoff only holds back a due
    lineage), so it is not read: for a CA without ARI a run reads one record
    per lineage, not two. ``all_memory``: read it anyway (``--due-within``,
    ``--force-renewal``: lineages are chosen by other rules than the dates).
    """
    def matters(st: LineageStatus) -> bool:
        if all_memory or st.due:
            return True
        server = st.settings.server
        return ari is not None and server is not None and ari.supported(server)

    names, bad = layout.lineage_names()
    fleet = read_fleet(layout, names, workers, with_memory=matters)
    lines = refresh_ari(fleet, layout, ari, workers) if ari is not None else []
    lines += [f"warning: {line}; left out" for line in bad]
    for line in lines + [w for _, st in sorted(fleet.items()) for w in st.warnings]:
        notify(line)
    return fleet


def refresh_ari(fleet: dict[str, LineageStatus], layout: Layout, clients: AriClients,
                workers: int) -> list[str]:
    """Ask ARI where allowed, remember the answers, re-decide; the lines to print."""
    from certbot_kvault._internal.renew.ari import AriError

    def askable(st: LineageStatus) -> bool:
        return (st.settings.autorenew and st.settings.server is not None
                and st.serial is not None and st.not_after is not None
                and st.now < st.not_after and st.state_error is None
                and not st.in_backoff()
                and (st.state is None or st.state.ari_check_due(st.serial, st.now)))

    todo = [st for st in fleet.values() if askable(st)]
    servers = sorted({st.settings.server for st in todo if st.settings.server})
    offered = {server for server in servers if clients.supported(server)}
    todo = [st for st in todo if st.settings.server in offered]
    failures: list[str] = []
    unsaved: list[str] = []

    def one(st: LineageStatus) -> Optional[LineageStatus]:
        assert st.settings.server is not None and st.serial is not None
        state = st.state or RenewalState()
        try:
            answer = clients.ask(st.settings.server, st.cert_pem())
        except AriError as e:
            failures.append(f"{st.name}: {e}")
            state.ari_answer(st.serial, None, None, None, e.next_check)
        else:
            if answer is None:
                return None
            state.ari_answer(st.serial, answer.start, answer.end, answer.picked,
                             answer.next_check, answer.explanation)
        try:
            layout.save_state(st.name, state)
        except Exception as e:  # noqa: BLE001 - the answer still counts for this run
            unsaved.append(f"{st.name}: {e}")
        return status_of(st.name, st.entry, st.now, state, settings=st.settings,
                         memory_warning=st.memory_warning)

    for st, fresh in jobs.parallel(todo, one, workers):
        if fresh is not None:
            fleet[st.name] = fresh
    lines = list(dict.fromkeys(clients.notes))
    if failures:
        lines.append(f"warning: ARI could not be asked for {len(failures)} lineage(s) (e.g. "
                     f"{sorted(failures)[0]}); certbot's lifetime rule applies to them until "
                     "the next check in 6 hours")
    if unsaved:
        lines.append(f"warning: the ARI answer of {len(unsaved)} lineage(s) could not be saved "
                     f"to Vault (e.g. {sorted(unsaved)[0]}); it is asked again next run")
    return lines


def remember(layout: Layout, fleet: dict[str, LineageStatus],
             outcomes: dict[str, Optional[str]], workers: int,
             notify: Callable[[str], None]) -> int:
    """Write each attempted lineage's memory: None = renewed, else the failure's line.

    Returns how many could not be written (each said once): the certificate is
    safe either way, but a lineage whose failure is not remembered is tried
    again by the next run.
    """
    now = time.time()

    def one(name: str) -> Optional[str]:
        status = fleet.get(name)
        if status is None:
            return None
        state = status.state or RenewalState()
        error = outcomes[name]
        if error is None:
            state.succeeded(now)
        else:
            state.failed(error, now, status.lifetime)
        status.state = state
        try:
            layout.save_state(name, state)
        except Exception as e:  # noqa: BLE001 - said per lineage, the run goes on
            return str(e)
        return None

    problems = 0
    for name, problem in jobs.parallel(sorted(outcomes), one, workers):
        if problem:
            problems += 1
            notify(f"warning: lineage {name}: its renewal memory was not saved "
                   f"({layout.where('state', name)}): {problem}")
    return problems
