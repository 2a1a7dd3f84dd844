"""Writing files the way certbot does: atomic writes with a mode, directories with modes.

The one atomic writer of the package (the config dir, export directories,
``export --watch``'s file sets, the manifest, metrics, marks and notes): every
file is first complete in a private temp file beside it (``staged``: mode, and
group, set before anyone could read it), then renamed into place
(``atomic_write``; ``write_together`` renames several only once all are
staged, so a failure leaves none of them), so a reader never sees half of one.
A private key can take the group and group/other bits of the key before it
(certbot's ``compute_private_key_mode`` and ``copy_ownership_and_apply_mode``);
directories get exactly the mode asked, parents included, without touching the
process umask (safe in worker threads). Also: "is this file already right", a
new file in a directory no reader knows yet (``create_file``), and a directory
of links replaced as a whole (``replace_links``), so no reader sees half of
them switched.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import stat
from typing import Callable, Optional

from certbot.compat import filesystem


def _temp_file(directory: str) -> tuple[int, str]:
    """A new private (0600) temp file (a name ``_TEMP_RE`` matches), opened for writing:
    mkstemp and a file object cost more than the write itself in a pull of a fleet."""
    for _ in range(100):
        tmp = os.path.join(directory, f".kvault-{os.urandom(4).hex()}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "No usable temporary file name found", directory)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def staged(directory: str, data: bytes, mode: int, *, group: Optional[int] = None,
           like: Optional[str] = None, meant: Optional[str] = None) -> str:
    """A complete private temp file in ``directory`` holding ``data``, with ``mode`` (and
    ``group``), or with the group and group/other bits of the private key ``like``
    (certbot's rule for a new version of a key): ready to be renamed or linked into
    place. An error names ``meant`` (the file it is for), never the temp file."""
    try:
        fd, tmp = _temp_file(directory)
    except OSError as e:  # the file meant, not a random temp name, in what the user is told
        raise OSError(e.errno, e.strerror, meant or directory) from None
    try:
        # No fsync, as certbot's storage: the rename keeps readers from ever
        # seeing half a file, and what is written here (the tree, an export) is a
        # copy of Vault's that the next `pull` or `export` writes again.
        try:
            if group is not None:
                os.fchown(fd, -1, group)
            _write_all(fd, data)
            if like is None:
                os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
        finally:
            os.close(fd)
        if like is not None:
            # Before the rename, so the key never shows with other permissions.
            # Neither call touches the process umask (safe in worker threads).
            try:
                filesystem.copy_ownership_and_apply_mode(
                    like, tmp, filesystem.compute_private_key_mode(like, mode),
                    copy_user=False, copy_group=True)
            except FileNotFoundError:
                os.chmod(tmp, mode)  # removed meanwhile: nothing to follow
    except BaseException as e:
        _unlink(tmp)
        if isinstance(e, OSError) and e.filename == tmp:
            raise OSError(e.errno, e.strerror, meant or directory) from None
        raise
    return tmp


def _unlink(path: str) -> None:
    if os.path.lexists(path):
        os.unlink(path)


def atomic_write(path: str, data: bytes, mode: int, like: Optional[str] = None) -> None:
    """Write via a temp file and a rename; ``like``: a private key to take the group and
    group/other bits from (certbot's rule for a new version of a key)."""
    tmp = staged(os.path.dirname(path), data, mode, like=like, meant=path)
    try:
        filesystem.replace(tmp, path)
    except BaseException as e:
        _unlink(tmp)
        if isinstance(e, OSError) and e.filename == tmp:
            raise OSError(e.errno, e.strerror, path) from None
        raise


class NotAllWritten(OSError):
    """``write_together`` failed; ``renamed`` of its files were in place by then (the
    error names the file meant, or the directory)."""

    def __init__(self, cause: OSError, renamed: int) -> None:
        super().__init__(cause.errno, cause.strerror, cause.filename)
        self.cause = cause  # its text, for an OSError without errno and strerror
        self.renamed = renamed


def write_together(directory: str, files: list[tuple[str, bytes, int, Optional[int]]],
                   before_rename: Optional[Callable[[], None]] = None) -> list[str]:
    """Write ``files`` (name, content, mode, group or None) into ``directory`` together:
    each is staged first, and only once all are (and ``before_rename`` has not
    raised) are they renamed into place, in order; their paths. A failure while
    staging leaves none of them (NotAllWritten with ``renamed`` 0)."""
    staged_files: list[tuple[str, str]] = []
    renamed = 0
    try:
        for name, data, mode, group in files:
            path = os.path.join(directory, name)
            if os.path.isdir(path) and not os.path.islink(path):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            # A temp file that cannot be made is the directory's fault, not the file's.
            staged_files.append((staged(directory, data, mode, group=group, meant=directory),
                                 path))
        if before_rename is not None:
            before_rename()
        for tmp, path in staged_files:
            filesystem.replace(tmp, path)
            renamed += 1
    except BaseException as e:
        for tmp, _ in staged_files[renamed:]:
            _unlink(tmp)
        if isinstance(e, OSError):
            raise NotAllWritten(e, renamed) from None
        raise
    return [path for _, path in staged_files]


def create_file(path: str, data: bytes, mode: int, group: Optional[int] = None) -> None:
    """Write a new file in place (it must not exist), private until its ``mode`` (and
    ``group``) is set: for a directory no reader knows of yet, where a temp file and a
    rename buy nothing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if group is not None:
            os.fchown(fd, -1, group)
        _write_all(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


# certbot's storage.py: what a new live/ dir holds besides the links, and the name of
# an archive file (kind and version).
LIVE_README = (
    "This directory contains your keys and certificates.\n\n"
    "`{prefix}privkey.pem`  : the private key for your certificate.\n"
    "`{prefix}fullchain.pem`: the certificate file used in most server software.\n"
    "`{prefix}chain.pem`    : used for OCSP stapling in Nginx >=1.3.7.\n"
    "`{prefix}cert.pem`     : will break many server configurations, and "
    "should not be used\n"
    "                 without reading further documentation (see link below).\n\n"
    "WARNING: DO NOT MOVE OR RENAME THESE FILES!\n"
    "         Certbot expects these files to remain in this location in order\n"
    "         to function properly!\n\n"
    "We recommend not moving these files. For more information, see the Certbot\n"
    "User Guide at https://certbot.eff.org/docs/using.html#where-are-my-"
    "certificates.\n")

ARCHIVE_FILE_RE = re.compile(r"^(cert|chain|fullchain|privkey)(\d+)\.pem$")


def key_to_follow(archive: str, version: int) -> Optional[str]:
    """The private key whose group and group/other bits ``privkey<version>.pem`` takes.

    As certbot's ``save_successor``: the previous version's key. The file
    itself when it is being rewritten, else the nearest earlier version on
    disk; None (plain 0600) when there is none.
    """
    try:
        entries = os.listdir(archive)
    except OSError:
        return None
    found = []
    for entry in entries:
        m = ARCHIVE_FILE_RE.match(entry)
        if m and m.group(1) == "privkey" and int(m.group(2)) <= version:
            found.append((int(m.group(2)), entry))
    if not found:
        return None
    return os.path.join(archive, max(found)[1])


# renameat2(2) flags and the "relative to the cwd" dir fd (linux/fs.h, fcntl.h).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
# Kernels, libcs or filesystems that cannot exchange: take the two-rename way.
_NO_EXCHANGE = (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)
# atomic_write's temp files: 8 random characters between prefix and suffix (mkstemp's
# alphabet, which older pulls used; ours are hex).
_TEMP_RE = re.compile(r"^\.kvault-[a-z0-9_]{8}\.tmp$")


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the platform cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError, TypeError):  # TypeError: no CDLL(None) (Windows)
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), b)


def replace_dir(new: str, path: str, old: str) -> None:
    """Put the directory ``new`` at ``path`` and remove what was there.

    Where the kernel can exchange two paths, readers of ``path`` see the old
    directory or the new one, never a mix. Elsewhere ``path`` is briefly absent
    (renamed to ``old`` first): a kill then leaves no directory, never a mixed
    one. ``old`` must not exist; a leftover ``new``/``old`` from a killed call is
    the caller's to remove (``remove_tree``).
    """
    if not os.path.lexists(path):
        os.rename(new, path)
        return
    if _exchange(new, path):
        remove_tree(new)
        return
    os.rename(path, old)
    os.rename(new, path)
    remove_tree(old)


def remove_tree(path: str) -> None:
    """Remove a directory tree (or a file or link) if it exists."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def replace_links(path: str, targets: dict[str, str], new: str, old: str, readme: bytes,
                  dir_mode: int, file_mode: int) -> bool:
    """Make ``path`` a directory whose links ``name -> target`` are ``targets``, switched
    all at once: built in ``new`` (with whatever else ``path`` held, and ``readme`` as
    README if it held none), then swapped in (``replace_dir``). Leftover ``new``/``old``
    dirs of a killed call are removed first; links already right are left alone (False)."""
    if os.path.exists(os.path.join(path, "README")) and all(
            os.path.islink(os.path.join(path, link))
            and os.readlink(os.path.join(path, link)) == target
            for link, target in targets.items()):
        return False
    for leftover in (new, old):
        remove_tree(leftover)
    os.mkdir(new, dir_mode)
    if os.path.isdir(path):
        # Keep the mode an admin gave the directory.
        os.chmod(new, os.stat(path).st_mode & 0o7777)
        _carry_over(path, new, skip=set(targets))
    else:
        os.chmod(new, dir_mode)
    for link, target in targets.items():
        os.symlink(target, os.path.join(new, link))
    if not os.path.lexists(os.path.join(new, "README")):
        # ``new`` is ours alone until it is swapped in: no temp file needed.
        create_file(os.path.join(new, "README"), readme, file_mode)
    replace_dir(new, path, old)
    return True


def _carry_over(src: str, dst: str, skip: set[str]) -> None:
    """Put what ``src`` holds besides ``skip`` (certbot's README, anything an admin
    added) into ``dst``: files hard-linked (same inode, owner and mode), links
    remade, directories copied."""
    for entry in os.listdir(src):
        if entry in skip or entry.startswith(".kvault-"):
            continue
        a, b = os.path.join(src, entry), os.path.join(dst, entry)
        if os.path.islink(a):
            os.symlink(os.readlink(a), b)
        elif os.path.isdir(a):
            shutil.copytree(a, b, symlinks=True)
        else:
            try:
                os.link(a, b)
            except OSError:
                shutil.copy2(a, b)


def remove_temp_files(directory: str) -> None:
    """Remove the temp files of ``atomic_write`` that a kill left in ``directory``."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        path = os.path.join(directory, entry)
        if _TEMP_RE.match(entry) and os.path.isfile(path) and not os.path.islink(path):
            os.unlink(path)


def current_umask() -> int:
    """The process umask, read without changing it for long."""
    # Read once, before any worker thread exists: umask is process-wide, and
    # certbot's own filesystem.makedirs flips it, which is why it is not used
    # here (parallel pulls would create files with each other's modes).
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def make_dirs(path: str, mode: int) -> bool:
    """Create path and missing parents, each with exactly ``mode`` (as certbot's makedirs);
    whether ``path`` itself was created here (so it is empty)."""
    missing = []
    p = path
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    created = False
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            created = False
            continue  # another worker made it
        os.chmod(d, mode)
        created = True
    return created


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
