"""How a ``renew`` or ``run`` ends early: a signal, its ``--timeout``, the stop grace.

SIGTERM (``docker stop``, a pod evicted, a node drained), SIGINT and SIGHUP
must not unwind a run at once: certbot may have renewed certificates that
exist nowhere else yet (a container's disk goes with it). So the first one,
or the run's ``--timeout``, is recorded and passed on to certbot (SIGTERM for
a timeout), which gets SIGINT if it still runs a moment later and SIGKILL a
few seconds later; the flow then saves what certbot renewed, fenced as
always, within ``--stop-grace`` seconds of the stop, and ends non-zero. Before certbot
starts (locks, plan, pull) there is nothing to save: the stop unwinds there
and then (:class:`StopNow`). A second signal, or the grace running out, is
urgent: certbot is killed and the save is abandoned (:class:`StopNow` in
the save phase); what was not saved keeps a pending mark.

The flow says where it is with :meth:`Stopping.phase`; the handlers run in
the main thread (where the flow runs), between two bytecodes, so a blocked
read, sleep or wait is interrupted, and raise only in the phase that wants
it. One timer (SIGALRM, ``setitimer``) serves the run's deadline, certbot's
SIGINT and SIGKILL, and the grace. Nothing here prints.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import time
import types
from typing import Callable, Iterator, Optional

DEFAULT_GRACE = 8            # docker stop waits 10 s before its SIGKILL
DEFAULT_TIMEOUT = 2 * 3600
KILL_AFTER = 5.0             # certbot's time to exit after the signal (at most grace/2);
                             # SIGINT halfway
TIMEOUT_EXIT = 124           # what timeout(1) exits with

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# Phases of a flow: how a stop is taken there.
PREPARE = "prepare"   # nothing to save yet: any stop unwinds
CERTBOT = "certbot"   # certbot gets the signal; the flow goes on to save
SAVE = "save"         # saving within the grace; only an urgent stop unwinds


class StopNow(BaseException):
    """Raised by the handler where the flow must stop now (not an ``Exception``: the
    per-item ``except Exception`` of pull and push must not swallow it)."""


class Stopping:
    """The stop state of one run: installed with :meth:`handling` around the flow."""

    def __init__(self, grace: float = DEFAULT_GRACE, timeout: float = DEFAULT_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = max(0.0, grace)
        self.timeout = timeout
        self.signum: Optional[int] = None
        self.timed_out = False
        self.urgent = False
        self.grace_ran_out = False
        self._clock = clock
        self._run_deadline = math.inf
        self._save_by = math.inf
        self._nudge_at = math.inf
        self._kill_at = math.inf
        self._phase: Optional[str] = None
        self._child: Optional[subprocess.Popen[str]] = None
        self._own_group = False
        self._forwarded = False

    # ---- what the flow asks ---------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.signum is not None or self.timed_out

    def remaining(self) -> float:
        """Seconds left to save in (infinite while not stopping)."""
        return max(0.0, self._save_by - self._clock())

    def why(self) -> str:
        """What stopped the run, in the words of its one line."""
        if self.signum is not None:
            return f"stopped by {signal.Signals(self.signum).name}"
        return f"stopped: --timeout {self.timeout:g}s (KVAULT_TIMEOUT) ran out"

    @property
    def exit_code(self) -> int:
        """128 + the signal's number (the shell's convention), 124 for the timeout."""
        return 128 + self.signum if self.signum is not None else TIMEOUT_EXIT

    def not_saved_reason(self) -> str:
        """Why a lineage certbot renewed was not saved, for its line and pending mark."""
        if self.grace_ran_out:
            return (f"{self.why()}; --stop-grace {self.grace:g}s (KVAULT_STOP_GRACE) ran "
                    "out before it was saved")
        return f"{self.why()}; a second signal ended the run before it was saved"

    # ---- installing -----------------------------------------------------------------

    @contextlib.contextmanager
    def handling(self) -> Iterator[None]:
        """Our handlers for SIGTERM, SIGINT, SIGHUP (and SIGALRM, the timer) meanwhile.

        A signal ignored when we started (``nohup``'s SIGHUP) stays ignored, as certbot
        does it.
        """
        try:
            previous = {s: signal.signal(s, self._on_signal) for s in SIGNALS
                        if signal.getsignal(s) != signal.SIG_IGN}
        except ValueError:  # not the main thread (embedded): signals stay as they are
            yield
            return
        previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_alarm)
        self._run_deadline = self._clock() + self.timeout
        self._arm()
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """The flow is in phase ``name`` meanwhile (PREPARE, CERTBOT, SAVE).

        Entering it raises StopNow when the stop is urgent, or when the flow has
        nothing to save yet (no certbot is to start once a stop came).
        """
        if self.urgent or (self.stopping and name in (PREPARE, CERTBOT)):
            raise StopNow
        self._phase = name
        try:
            yield
        finally:
            self._phase = None

    def attach(self, proc: subprocess.Popen[str], own_group: bool) -> None:
        """certbot has started: it gets the stop (already there, or to come)."""
        self._child, self._own_group, self._forwarded = proc, own_group, False
        if self.stopping:
            self._forward()

    def detach(self) -> None:
        self._child = None
        self._nudge_at = self._kill_at = math.inf
        self._arm()

    # ---- the handlers ----------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Optional[types.FrameType]) -> None:
        if not self.stopping:
            self.signum = signum
            self._begin()
        else:
            self._hurry()

    def _on_alarm(self, signum: int, frame: Optional[types.FrameType]) -> None:
        now = self._clock()
        if not self.stopping and now >= self._run_deadline:
            self.timed_out = True
            self._begin()
            return
        if now >= self._nudge_at:
            self._nudge()
        if now >= self._kill_at:
            self._kill()
        if self.stopping and not self.urgent and now >= self._save_by:
            self.grace_ran_out = True
            self._hurry()
            return
        self._arm()

    def _begin(self) -> None:
        """The first stop: certbot gets it; saving has the grace from now."""
        self._save_by = self._clock() + self.grace
        if self.grace <= 0:
            self._hurry()
            return
        self._forward()
        self._arm()
        if self._phase == PREPARE:
            self._phase = None
            raise StopNow

    def _hurry(self) -> None:
        """A second signal, or the grace ran out: certbot killed, the save abandoned."""
        if self.urgent:
            return
        self.urgent = True
        self._kill()
        self._arm()
        if self._phase in (PREPARE, SAVE):
            self._phase = None  # raised once: the flow's clean-up is not interrupted
            raise StopNow

    # ---- certbot ---------------------------------------------------------------------

    def _forward(self) -> None:
        proc = self._child
        if proc is None or self._forwarded or proc.poll() is not None:
            return
        self._forwarded = True
        sig = signal.SIGTERM if self.signum is None else self.signum
        if self._own_group:
            _signal_group(proc, sig)
        elif sig == signal.SIGTERM:
            # certbot shares our process group only when it may talk to a terminal,
            # and a terminal's Ctrl-C or hangup reaches the whole group already.
            proc.send_signal(sig)
        kill_after = min(KILL_AFTER, self.grace / 2)
        self._kill_at = self._clock() + kill_after
        if sig != signal.SIGINT:
            self._nudge_at = self._clock() + kill_after / 2

    def _nudge(self) -> None:
        """SIGINT to a certbot still running halfway to its SIGKILL. certbot's own handler
        for SIGTERM and SIGHUP (error_handler.py) can stay installed after a renewal and
        swallow the signal (measured with certbot 5.8: it went on to the next lineage);
        SIGINT's KeyboardInterrupt ends its renewal loop, its clean-up included."""
        proc = self._child
        self._nudge_at = math.inf
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)

    def _kill(self) -> None:
        proc = self._child
        self._nudge_at = self._kill_at = math.inf
        if proc is None or proc.poll() is not None:
            return
        if self._own_group:
            _signal_group(proc, signal.SIGKILL)
        else:
            proc.kill()

    def _arm(self) -> None:
        """The timer to the next of: the run's deadline, certbot's SIGINT and SIGKILL, the
        grace."""
        nxt = min(self._nudge_at, self._kill_at)
        if not self.stopping:
            nxt = min(nxt, self._run_deadline)
        elif not self.urgent:
            nxt = min(nxt, self._save_by)
        delay = 0.0 if math.isinf(nxt) else max(0.001, nxt - self._clock())
        try:
            signal.setitimer(signal.ITIMER_REAL, delay)
        except ValueError:  # not the main thread: no timer
            pass


def _signal_group(proc: subprocess.Popen[str], sig: int) -> None:
    """``sig`` to certbot's process group: certbot and the hooks it runs."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
