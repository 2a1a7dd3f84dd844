"""Keeping an app's certificate files current: ``export --watch`` and ``--once``.

Polling is cheap: on KV v2 one metadata read per lineage and interval (its
``current_version``), the record itself only when that changed; on KV v1 (no
metadata) the record, compared by archive version and serial.

Each directory gets its whole file set switched at once, the way
Kubernetes' AtomicWriter updates a mounted Secret: a version's files are
written into a new hidden dir ``D/..<UTC time>.<random>``, the symlink
``D/..data`` is switched to it with one rename, and the names apps open are
links through it (``D/privkey.pem -> ..data/privkey.pem``). The directory
never holds a new cert next to an old key (an app that opens the cert before a
switch and the key after it still gets two versions: it reads them again on
the reload that follows).
Plain files an earlier ``export --dir`` wrote are adopted first (hard-linked
into a version dir), so turning them into links changes no content. A
directory belongs to one lineage (export.claim): a watch into
another lineage's is refused before anything of it is switched away, so two
watchers never fight over one directory.

What runs ``--exec`` (a reload): a write that changed the files of a
directory that already held a set. The command's environment is ours
without the Vault settings and credentials (``settings.without_vault_env``;
``--exec-env NAME`` passes one on). Not the first write into an empty
directory (the app reads the files when it starts), not a new KV version
whose files are the same (a renewal conf pushed alone); the directory's
own content is the memory, so a restarted watcher does not reload again.

Nothing here prints: lines go to the caller's ``say``.
"""
from __future__ import annotations

import dataclasses
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Callable, Optional, Sequence, Union

from certbot import errors

from certbot_kvault._internal.apps.export import DATA_LINK, DirTaken, claim
from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.store.records import LineageRecord, RecordError
from certbot_kvault._internal.tree.files import create_file, make_dirs, remove_tree
from certbot_kvault._internal.vault.errors import VaultError, VaultPermissionDenied, is_transient
from certbot_kvault._internal.vault.redact import one_line
from certbot_kvault._internal.vault.settings import without_vault_env

DEFAULT_INTERVAL = 300.0
DATA = DATA_LINK
_DATA_TMP = "..data_tmp"
# The version dirs and links this module makes, so cleaning up never touches an app's own.
_OURS = re.compile(r"^\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\.[A-Za-z0-9_]+$")
_LINK_TMP = ".kvault-link-"
NAME_FIELD = "{name}"

# (file name, content, mode) of each file a lineage is exported as.
FileSpec = tuple[str, str, int]
Say = Callable[..., None]
Mark = Union[int, tuple[int, str]]


class WatchError(errors.Error):
    """A watch that cannot start or a file set that cannot be written; one line."""


class Stop:
    """Set from a signal handler, so a plain flag: an ``Event.set`` there could wait
    for a lock the interrupted main thread holds."""

    def __init__(self) -> None:
        self.requested = False

    def set(self) -> None:
        self.requested = True

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less once a stop is requested."""
        end = time.monotonic() + seconds
        while not self.requested:
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.2))


def target_dirs(names: list[str], directory: str) -> dict[str, str]:
    """Each lineage's directory: ``directory`` with ``{name}`` replaced."""
    if len(names) > 1 and NAME_FIELD not in directory:
        raise WatchError(f"{len(names)} lineages need one directory each: put {NAME_FIELD} "
                         f"in --dir (e.g. --dir /certs/{NAME_FIELD}).")
    return {n: directory.replace(NAME_FIELD, n) for n in names}


# ---- one directory's file set, switched at once ----------------------------------


def current_set(directory: str) -> Optional[dict[str, tuple[bytes, int]]]:
    """What ``D/..data`` holds (name -> content, mode); None when D has no set yet."""
    data = os.path.join(directory, DATA)
    if not os.path.isdir(data):
        return None
    out = {}
    for entry in os.listdir(data):
        path = os.path.join(data, entry)
        with open(path, "rb") as f:
            out[entry] = (f.read(), os.stat(path).st_mode & 0o7777)
    return out


def _links_right(directory: str, names: list[str]) -> bool:
    return all(os.path.islink(os.path.join(directory, n))
               and os.readlink(os.path.join(directory, n)) == f"{DATA}/{n}" for n in names)


def write_set(directory: str, files: list[FileSpec], owner: Optional[str] = None,
              key_group: Optional[int] = None) -> tuple[bool, bool]:
    """Make ``directory`` hold exactly ``files``; returns (changed, held a set before).

    Already right: nothing is touched. Otherwise the new set is switched in
    whole (see the module docstring); a failure leaves the previous set as it
    was, and what this call made is removed. With ``owner``, the directory must
    be (or become) that lineage's first (``export.claim``). ``key_group``: the key
    files' group.
    """
    directory = os.path.abspath(directory)
    want = {name: (text.encode("utf-8"), mode) for name, text, mode in files}
    make_dirs(directory, 0o755)
    for name in want:
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            raise WatchError(f"{path} is a directory, not a file of lineage certificates; "
                             "remove it or choose another --dir.")
    if owner is not None:
        # Another lineage's directory is refused before anything of it is switched away.
        claim(directory, owner, [(name, data) for name, (data, _) in want.items()])
    before = current_set(directory)
    if before is None and _adopt_plain_files(directory, list(want)):
        before = current_set(directory)
    # The files that hold the key are the only ones others may not read (export.py).
    keys = [name for name, (_, mode) in want.items() if mode & 0o007 == 0]
    if before == want and _links_right(directory, list(want)) and (key_group is None or all(
            os.stat(os.path.join(directory, DATA, k)).st_gid == key_group for k in keys)):
        _clean(directory)
        return False, True
    new = _version_dir(directory)
    try:
        # Certificates first and the key last, each private until its mode (and group) is
        # set: a key is never readable with another file's permissions.
        for name, (data, mode) in sorted(want.items(), key=lambda kv: kv[0] in keys):
            create_file(os.path.join(new, name), data, mode, key_group if name in keys else None)
        _switch(directory, os.path.basename(new))
    except BaseException:
        remove_tree(new)
        raise
    _point_links(directory, list(want))
    _clean(directory)
    return True, before is not None


def _version_dir(directory: str) -> str:
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
    new = tempfile.mkdtemp(prefix=f"..{stamp}.", dir=directory)
    # mkdtemp's 0700 would hide the certificates from the app's user; the key inside
    # keeps its own 0600.
    os.chmod(new, 0o755)  # noqa: S103
    return new


def _switch(directory: str, target: str) -> None:
    """Point ``D/..data`` at ``target`` with one rename."""
    tmp = os.path.join(directory, _DATA_TMP)
    remove_tree(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, os.path.join(directory, DATA))


def _point_links(directory: str, names: list[str]) -> None:
    """``D/name -> ..data/name`` for each name; links to names no longer in the set go."""
    for entry in os.listdir(directory):
        path = os.path.join(directory, entry)
        if entry not in names and os.path.islink(path) \
                and os.readlink(path).startswith(f"{DATA}/"):
            os.unlink(path)
    for name in names:
        path = os.path.join(directory, name)
        if os.path.islink(path) and os.readlink(path) == f"{DATA}/{name}":
            continue
        tmp = os.path.join(directory, f"{_LINK_TMP}{name}")
        remove_tree(tmp)
        os.symlink(f"{DATA}/{name}", tmp)
        os.replace(tmp, path)  # a plain file becomes a link in one step


def _adopt_plain_files(directory: str, names: list[str]) -> bool:
    """Plain files of the set (a plain ``export`` wrote them) become the first version
    dir, so turning them into links changes no content an app reads."""
    plain = [n for n in names if os.path.isfile(os.path.join(directory, n))
             and not os.path.islink(os.path.join(directory, n))]
    if not plain:
        return False
    new = _version_dir(directory)
    try:
        for name in plain:
            src, dst = os.path.join(directory, name), os.path.join(new, name)
            try:
                os.link(src, dst)  # same inode: same content, owner and mode
            except OSError:
                shutil.copy2(src, dst)
        _switch(directory, os.path.basename(new))
    except BaseException:
        remove_tree(new)
        raise
    _point_links(directory, plain)
    return True


def _clean(directory: str) -> None:
    """Remove version dirs ``..data`` does not point at and what a killed write left."""
    try:
        current = os.readlink(os.path.join(directory, DATA))
    except OSError:
        current = None
    for entry in os.listdir(directory):
        if (_OURS.match(entry) and entry != current) or entry == _DATA_TMP \
                or entry.startswith(_LINK_TMP):
            remove_tree(os.path.join(directory, entry))


# ---- the watcher -----------------------------------------------------------------


@dataclasses.dataclass
class Target:
    """One lineage watched into one directory."""

    name: str
    directory: str
    seen: Optional[Mark] = None      # the version whose files the directory holds
    bad: Optional[Mark] = None       # a version that could not be used (said once)
    problem: Optional[str] = None    # the last line said about this lineage


class Watcher:
    """Polls the lineages of ``targets`` and keeps their directories current.

    ``files`` turns a record into its file set (export.py's formats);
    ``say(line, err=False)`` is how the caller prints.
    """

    def __init__(self, layout: Layout, targets: dict[str, str],
                 files: Callable[[LineageRecord], list[FileSpec]], say: Say,
                 exec_argv: Optional[list[str]] = None, interval: float = DEFAULT_INTERVAL,
                 stop: Optional[Stop] = None, exec_env: Sequence[str] = (),
                 key_group: Optional[int] = None) -> None:
        self.layout = layout
        self.targets = [Target(n, d) for n, d in targets.items()]
        self.files = files
        self.say = say
        self.exec_argv = exec_argv
        self.exec_env = tuple(exec_env)
        self.interval = interval
        self.stop = stop or Stop()
        self.key_group = key_group            # the group of the files that hold the key
        self.down: Optional[str] = None       # Vault's transient failure, said once
        self.cheap = True                     # metadata reads allowed (KV v2)

    def run(self) -> int:
        """Watch until ``stop`` is requested (exit 0). A lineage that cannot be used in the
        first round that reached Vault is a bad input: exit 1. Later, a lineage that
        goes missing, is denied or turns corrupt is said once and watched on."""
        first = True
        backoff = 1.0
        while not self.stop.requested:
            was_down = self.down
            failed = self.round()
            if self.down is not None and was_down is None:
                self.say(f"watch: {self.down.rstrip('.')}; the files stay as they are, "
                         "retrying", err=True)
            elif self.down is None and was_down is not None:
                self.say("watch: Vault answers again", err=True)
            if self.down is None:
                if first and failed:
                    return 1
                first = False
                backoff = 1.0
                wait = self.interval
            else:
                wait = min(backoff, self.interval)
                backoff *= 2
            self.stop.wait(wait * random.uniform(0.9, 1.1))  # noqa: S311 - jitter
        return 0

    def once(self) -> int:
        """One round: 0 when every directory holds its lineage's files, else 1."""
        failed = self.round()
        if self.down is not None:
            self.say(f"error: {self.down}", err=True)
        return 1 if failed or self.down is not None else 0

    def round(self) -> list[str]:
        """Poll each lineage once; returns the names that could not be written. A Vault
        that is down ends the round and is in ``self.down`` (its one line)."""
        failed = []
        self.down = None
        for t in self.targets:
            if self.stop.requested:
                break
            try:
                self._poll(t)
                t.problem = None
            except VaultError as e:
                if is_transient(e):
                    self.down = one_line(e)
                    break
                self._problem(t, one_line(e))
                failed.append(t.name)
            except (RecordError, WatchError, DirTaken) as e:
                self._problem(t, one_line(e))
                failed.append(t.name)
            except OSError as e:
                self._problem(t, f"cannot write lineage {t.name} to {t.directory}: "
                                 f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""))
                failed.append(t.name)
        return failed

    def _problem(self, t: Target, line: str) -> None:
        if line != t.problem:
            self.say(f"error: {line}", err=True)
            t.problem = line

    def _poll(self, t: Target) -> None:
        layout = self.layout
        kv: Optional[int] = None
        record: Optional[LineageRecord] = None
        if layout.versioned and self.cheap:
            try:
                kv = layout.lineage_version(t.name)
            except VaultPermissionDenied:
                record = self._load(t, None)  # denied too: that is the one line
                self.cheap = False
                self.say("note: this token may not read the metadata of "
                         f"{layout.where('certificates', t.name)}: every poll reads the whole "
                         "record (grant read on the certificates' metadata, as "
                         "policies/reader.hcl does)", err=True)
            else:
                if kv is None:
                    raise WatchError(f"No lineage {t.name} in Vault "
                                     f"({layout.where('certificates', t.name)}).")
                if kv in (t.seen, t.bad):
                    return None
        if record is None:
            record = self._load(t, kv)
        mark: Mark = record.kv_version if record.kv_version is not None else (
            record.version, record.info.serial if record.info else "")
        if mark in (t.seen, t.bad):
            return None
        changed, had_set = write_set(t.directory, self.files(record), t.name, self.key_group)
        t.seen = mark
        version = str(record.version)  # the certificate's (archive number), as `show` says
        where_to = os.path.abspath(t.directory)
        if not changed:
            self.say(f"current: {t.name} version {version} in {where_to}")
            return None
        self.say(f"wrote: {t.name} version {version} to {where_to}")
        if had_set and self.exec_argv:
            self._reload(t, version)
        return None

    def _load(self, t: Target, kv: Optional[int]) -> LineageRecord:
        """The record; a corrupt or deleted version ``kv`` is remembered as unusable, so
        it is neither read nor said again."""
        try:
            record = self.layout.load_lineage(t.name)
        except RecordError:
            t.bad = kv
            raise
        if record is None:
            t.bad = kv
            # KV v2 metadata still names the version a delete removed.
            gone = "; its latest version was deleted" if kv is not None else ""
            raise WatchError(f"No lineage {t.name} in Vault "
                             f"({self.layout.where('certificates', t.name)}){gone}.")
        return record

    def _reload(self, t: Target, version: str) -> None:
        assert self.exec_argv is not None
        # The app's command gets no Vault credential nor setting (it has the files),
        # unless named with --exec-env.
        env = dict(without_vault_env(os.environ, self.exec_env), KVAULT_LINEAGE=t.name,
                   KVAULT_VERSION=version, KVAULT_DIR=os.path.abspath(t.directory))
        try:
            rc = subprocess.run(self.exec_argv, env=env, stdin=subprocess.DEVNULL,
                                check=False).returncode
        except OSError as e:
            self.say(f"error: --exec {self.exec_argv[0]} could not run for {t.name} version "
                     f"{version}: {e.strerror or e}", err=True)
            return
        if rc != 0:
            self.say(f"error: --exec {self.exec_argv[0]} exited {rc} for {t.name} version "
                     f"{version}; the files are written, the watch goes on", err=True)


def stop_on_signals() -> Stop:
    """A stop SIGTERM and SIGINT request: the watcher finishes what it writes, then stops."""
    stop = Stop()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop
