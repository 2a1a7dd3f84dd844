"""One writer per config dir: certbot's own lock, ``<config-dir>/.certbot.lock``.

certbot takes an exclusive ``fcntl.lockf`` on that file for as long as it runs
(``certbot.util.lock_dir_until_exit``, which keeps it until the process exits),
so a host's ``certbot renew`` timer and ``certbot-kvault pull``, or two pulls,
would otherwise write one tree at the same time. ``pull``, ``push``, ``import``,
``renew`` and ``run`` take the same lock the same way (certbot's lock class is
private, so it is mirrored here: open with ``O_CREAT``, ``lockf`` without
blocking, check that the file is still the one locked, remove it on release).
A busy lock is tried again for ``wait`` seconds; then one line says who holds it.

``renew`` and ``run`` start certbot, which takes this very lock and gives up at
once if it is held: they hold it while they pull and push, and hand it over for
certbot's run (``released``). A command that runs under a certbot holding the
lock (its deploy hook, ``--deploy-hook "certbot-kvault push"``) is inside that
certbot's turn: it finds its ancestor holding the lock and goes on without it,
instead of waiting for a lock that is released only when it is done.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import sys
import time
from typing import Callable, Iterator, Optional

from certbot import errors

from certbot_kvault._internal.tree.files import make_dirs

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: certbot locks another way
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOCK_FILE = ".certbot.lock"
DEFAULT_WAIT = 10.0
# After certbot's run, the lock is taken back for the push; something else may have
# taken it meanwhile (a host's certbot). The certificates certbot just renewed exist
# nowhere else in a container: wait longer, then push without the lock, saying so.
RETAKE_WAIT = 120.0
_POLL = 0.2
# The lock files this process holds (by real path).
_TAKEN: set[str] = set()


class DirLockBusy(errors.Error):
    """The config dir's lock stayed held by another process for the whole wait."""


def _holder(fd: int) -> Optional[int]:
    """The pid holding a conflicting lock on ``fd``'s file (Linux, 64-bit), else None."""
    if fcntl is None or not sys.platform.startswith("linux") or struct.calcsize("l") != 8:
        return None
    # struct flock {short l_type, l_whence; off_t l_start, l_len; pid_t l_pid;} + padding
    query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    except OSError:
        return None
    kind, _, _, _, pid = struct.unpack("hhqqi4x", answer)
    return pid if kind != fcntl.F_UNLCK and pid > 0 else None


def _ancestors() -> set[int]:
    """This process's parent, its parent, ... (from /proc; just the parent elsewhere)."""
    found = {os.getppid()}
    pid = os.getppid()
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            # pid (comm) state ppid ...: comm may hold spaces and parentheses.
            pid = int(stat[stat.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            break
        found.add(pid)
    return found


class DirLock:
    """certbot's lock on one config dir (None: no dir, nothing to lock).

    ``notify`` gets one line when the lock is busy and this waits for it. A lock taken
    is held until ``release`` (or the end of a ``with`` block).
    """

    def __init__(self, config_dir: Optional[str], wait: float = DEFAULT_WAIT,
                 notify: Optional[Callable[[str], None]] = None, create: bool = False) -> None:
        self.config_dir = config_dir
        self.create = create  # make the config dir (as certbot does) to lock it
        self.path = os.path.join(config_dir, LOCK_FILE) if config_dir else None
        self.wait = wait
        self.notify = notify
        self._fd: Optional[int] = None
        self.inherited: Optional[int] = None  # the certbot we run under, which holds it

    @property
    def held(self) -> bool:
        return self._fd is not None or self.inherited is not None

    def acquire(self, wait: Optional[float] = None) -> None:
        """Take the lock (no-op if held), trying for ``wait`` seconds (default: the
        instance's); DirLockBusy when another process keeps it."""
        if self.held or self.path is None or fcntl is None:
            return
        key = os.path.realpath(self.path)
        if key in _TAKEN:
            # This process holds it already (POSIX locks are per process, and closing
            # any descriptor of the file would drop it): nothing to take, nor to release.
            self.inherited = os.getpid()
            return
        if self.create:
            make_dirs(os.path.dirname(self.path), 0o755)
        elif not os.path.isdir(os.path.dirname(self.path)):
            return  # nothing there to read or protect
        wait = self.wait if wait is None else wait
        deadline = time.monotonic() + wait
        told = False
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            except OSError as e:
                if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    # A dir this user may only read (push from another user's tree):
                    # certbot could not run here either; what we write fails on its own.
                    logger.debug("not locking %s: %s", self.path, e)
                    return
                raise
            holder = self._try(fd)
            if holder is None:
                _TAKEN.add(key)
                return
            if holder < 0:
                continue  # locked a file its holder had just removed: open it again
            if holder in _ancestors() or (not holder and os.environ.get("RENEWED_LINEAGE")):
                # Run by the certbot that holds it (a deploy hook): its turn is ours.
                logger.debug("%s is held by %s, which runs this process", self.path,
                             holder or "certbot")
                self.inherited = holder
                return
            left = deadline - time.monotonic()
            who = f"pid {holder}" if holder else "another process"
            if left <= 0:
                raise DirLockBusy(
                    f"{self.config_dir} is in use: certbot's lock {self.path} is held by "
                    f"{who} (certbot, or certbot-kvault); waited {wait:g}s "
                    "(--dir-lock-wait): run again when it is done.")
            if not told and self.notify is not None:
                self.notify(f"note: waiting up to {wait:g}s for {self.path}, held by {who}")
                told = True
            time.sleep(min(_POLL, left))

    def _try(self, fd: int) -> Optional[int]:
        """None once ``fd`` holds the lock (kept); else the holder's pid (0: unknown;
        -1: the file was replaced meanwhile). ``fd`` is closed unless kept."""
        assert fcntl is not None and self.path is not None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            busy = e.errno in (errno.EACCES, errno.EAGAIN)
            holder = _holder(fd) if busy else None
            os.close(fd)
            if not busy:
                raise
            return holder or 0
        # As certbot: the holder before us removed the file when it let go, so the
        # one we locked may no longer be the one others open.
        try:
            same = os.path.samestat(os.stat(self.path), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return -1
        self._fd = fd
        return None

    def release(self) -> None:
        """Let it go (certbot's way: remove the file, then close)."""
        self.inherited = None
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        assert self.path is not None
        _TAKEN.discard(os.path.realpath(self.path))
        try:
            os.remove(self.path)
        except OSError as e:
            logger.debug("could not remove %s: %s", self.path, e)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def released(self, hurry: Callable[[], bool] = lambda: False) -> Iterator[None]:
        """Let certbot (a child, which takes this lock itself) have it, then take it back;
        ``hurry()`` true then (a run being stopped): only if it is free at once."""
        if self._fd is None:
            yield
            return
        self.release()
        try:
            yield
        except BaseException:
            # Stopping (a signal, an error): take it back if free, never wait for it.
            with contextlib.suppress(DirLockBusy, OSError):
                self.acquire(0)
            raise
        try:
            self.acquire(0 if hurry() else max(self.wait, RETAKE_WAIT))
        except DirLockBusy:
            if self.notify is not None:
                self.notify(f"warning: {self.path} stayed held by another process after "
                            "certbot's run; saving what certbot did without it")

    def __enter__(self) -> DirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
