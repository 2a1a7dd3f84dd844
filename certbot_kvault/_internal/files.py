"""Writing files the way certbot does: atomic writes with a mode, directories with modes.

Every file is written to a temp file and renamed into place, so a reader
never sees half of one; a private key can take the group and group/other bits
of the key before it (certbot's ``compute_private_key_mode`` and
``copy_ownership_and_apply_mode``); directories get exactly the mode asked,
parents included, without touching the process umask (safe in worker
threads). Also: "is this file already right" and an atomic symlink swap.
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional

from certbot.compat import filesystem


def atomic_write(path: str, data: bytes, mode: int, like: Optional[str] = None) -> None:
    """Write via a temp file and a rename; ``like``: a private key to take the group and
    group/other bits from (certbot's rule for a new version of a key)."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".kvault-", suffix=".tmp")
    try:
        # No fsync, as certbot's storage: the rename keeps readers from ever
        # seeing half a file, and the tree is a cache that `pull` rebuilds.
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if like is not None:
            # Before the rename, so the key never shows with other permissions.
            # Neither call touches the process umask (safe in worker threads).
            try:
                filesystem.copy_ownership_and_apply_mode(
                    like, tmp, filesystem.compute_private_key_mode(like, mode),
                    copy_user=False, copy_group=True)
            except FileNotFoundError:
                like = None  # removed meanwhile: nothing to follow
        if like is None:
            filesystem.chmod(tmp, mode)
        filesystem.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_symlink(target: str, path: str) -> None:
    """Point ``path`` at ``target`` by renaming a fresh link over it."""
    tmp = os.path.join(os.path.dirname(path), f".kvault-{os.path.basename(path)}.lnk")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def current_umask() -> int:
    """The process umask, read without changing it for long."""
    # Read once, before any worker thread exists: umask is process-wide, and
    # certbot's own filesystem.makedirs flips it, which is why it is not used
    # here (parallel pulls would create files with each other's modes).
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def make_dirs(path: str, mode: int) -> None:
    """Create path and missing parents, each with exactly ``mode`` (as certbot's makedirs)."""
    missing = []
    p = path
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            continue  # another worker made it
        os.chmod(d, mode)


def same_file(path: str, data: bytes, mode: Optional[int]) -> bool:
    """Is ``path`` a file holding ``data`` (and, unless ``mode`` is None, with that mode)?"""
    try:
        st = os.lstat(path)
        if mode is not None and (st.st_mode & 0o7777) != mode:
            return False
        with open(path, "rb") as f:
            return f.read() == data
    except OSError:
        return False
