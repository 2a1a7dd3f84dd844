"""The certbot config dir on disk: read lineages and accounts, write them back.

Writes mirror ``certbot/_internal/storage.py`` and ``account.py`` (which are
private, so they are mirrored rather than imported): the same directory
modes, ``privkey`` 0600 (a new version takes the group and group/other bits
of the key before it, as certbot's ``save_successor``; a key already right is
left alone) and ``private_key.json`` 0400, relative ``live/``
symlinks, ``archive/<name>/<kind>N.pem`` numbering and a renewal conf with
this machine's paths (portable.py turns Vault's portable conf into it).
Every file is written to a temp file and renamed into place (files.py), a
lineage's four ``live/`` links are switched together by replacing the whole
directory, and its renewal conf is written last: certbot only sees a lineage
once its conf exists, so an interrupted pull never shows a half one, nor a
live cert with another version's key.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
from typing import Any, Iterator, Optional

import configobj
from certbot import errors

from certbot_kvault._internal.store.records import (
    PEM_KINDS,
    AccountRecord,
    LineageRecord,
    PemSet,
    RecordError,
    server_path_for_url,
    validate_name,
    validate_server_path,
)
from certbot_kvault._internal.tree import confs, portable
from certbot_kvault._internal.tree.files import (
    ARCHIVE_FILE_RE,
    LIVE_README,
    atomic_write,
    create_file,
    current_umask,
    key_to_follow,
    make_dirs,
    remove_temp_files,
    remove_tree,
    replace_links,
    same_file,
)
from certbot_kvault._internal.vault.settings import as_bool

# storage.py's values
BASE_PRIVKEY_MODE = 0o600
ACCOUNT_KEY_MODE = 0o400
HOOK_NAME = "00-update-vault.sh"
HOOK_SOURCE = os.path.join(os.path.dirname(__file__), "hooks", HOOK_NAME)

_SWITCH_DIR_RE = re.compile(r"^\..+\.\.kvault-(new|old)$")


class TreeError(errors.PluginError):
    """The local config dir is not in a state we can read or write."""


@dataclasses.dataclass
class Dirs:
    config_dir: str
    work_dir: str
    logs_dir: str


def _read_text(path: str, where: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise TreeError(f"Cannot read {path} ({e.strerror}) for {where}.") from None


@dataclasses.dataclass
class Written:
    """What ``write_lineage`` did: the keys of Vault's conf it ignored, and what it wrote
    (the conf; the live links; the archive files, only when the archive dir was new, so
    that they are all it holds): a caller can fingerprint it without reading it back."""

    ignored: list[str]
    conf: bytes
    links: dict[str, str]
    files: Optional[dict[str, bytes]]
    changed: bool = True  # False: every file, link and the conf were right already


class Tree:
    """One certbot config dir."""

    def __init__(self, dirs: Dirs, trust_vault_hooks: bool = False) -> None:
        self.dirs = dirs
        # Whether hooks and machine paths in Vault's renewal confs are used (trust.py).
        self.trust_vault_hooks = trust_vault_hooks
        self.config_dir = os.path.abspath(dirs.config_dir)
        umask = current_umask()
        # What certbot gets from open() and os.mkdir() under this umask.
        self.file_mode = 0o666 & ~umask
        self.dir_mode = 0o777 & ~umask
        self._base_made = False

    # ---- paths --------------------------------------------------------------

    def _p(self, *parts: str) -> str:
        return os.path.join(self.config_dir, *parts)

    def renewal_conf_path(self, name: str) -> str:
        return self._p("renewal", validate_name(name) + ".conf")

    def conf_account(self, name: str) -> tuple[Optional[str], Optional[str]]:
        """(server, account) that a local lineage's renewal conf names (None where it names
        none or cannot be read)."""
        try:
            conf = confs.parse_file(self.renewal_conf_path(name))
        except (OSError, confs.ConfError, RecordError):
            return None, None
        params = conf.get("renewalparams", {})
        server, account = params.get("server"), params.get("account")
        return (server if isinstance(server, str) and server else None,
                account if isinstance(account, str) and account else None)

    def live_dir(self, name: str) -> str:
        return self._p("live", validate_name(name))

    def archive_dir(self, name: str) -> str:
        return self._p("archive", validate_name(name))

    def lineage_for_live_path(self, live_path: str) -> str:
        """The lineage name for ``$RENEWED_LINEAGE`` (``<config>/live/<name>``)."""
        return validate_name(os.path.basename(os.path.normpath(live_path)))

    # ---- lineages: read -------------------------------------------------------

    def lineage_names(self) -> list[str]:
        renewal = self._p("renewal")
        if not os.path.isdir(renewal):
            return []
        names = []
        for entry in sorted(os.listdir(renewal)):
            if entry.endswith(".conf") and not entry.startswith("."):
                names.append(entry[: -len(".conf")])
        return names

    def _load_conf(self, name: str) -> configobj.ConfigObj:
        path = self.renewal_conf_path(name)
        if not os.path.isfile(path):
            raise TreeError(f"No renewal conf for lineage {name} ({path} is missing); "
                            "it is not a certbot lineage here.")
        try:
            return confs.parse_file(path)
        except confs.ConfError as e:
            raise TreeError(f"Renewal conf {path} cannot be parsed ({e}).") from None
        except OSError as e:
            raise TreeError(f"Cannot read {path} ({e.strerror or e}).") from None

    def read_lineage(self, name: str) -> LineageRecord:
        """The lineage as certbot keeps it: current version, earlier ones, portable conf."""
        conf = self._load_conf(name)
        where = f"lineage {name} in {self.config_dir}"
        for key in portable.TOP_PATH_KEYS:
            if key not in conf:
                raise TreeError(f"Renewal conf of {name} has no '{key}'; repair it with "
                                "`certbot certificates` or re-issue.")
        current = None
        for kind in PEM_KINDS:
            link = conf[kind]
            if not isinstance(link, str) or not os.path.islink(link):
                raise TreeError(f"{link} is not a symlink into the archive; {where} is damaged "
                                "(try `certbot update_symlinks`).")
            m = ARCHIVE_FILE_RE.match(os.path.basename(os.readlink(link)))
            if not m:
                raise TreeError(f"{link} points at an unexpected file; {where} is damaged.")
            version = int(m.group(2))
            if current is not None and version != current:
                raise TreeError(f"{where}: live links point at different versions; run "
                                "`certbot update_symlinks` first.")
            current = version
        assert current is not None
        archive = conf["archive_dir"]
        if not isinstance(archive, str):
            raise TreeError(f"{where}: its renewal conf's archive_dir is not one path.")

        def pem_set(n: int) -> PemSet:
            return PemSet(**{k: _read_text(os.path.join(archive, f"{k}{n}.pem"), where)
                             for k in PEM_KINDS})

        pems = pem_set(current)
        older: dict[int, PemSet] = {}
        for n in self._archive_versions(archive):
            if n < current:
                older[n] = pem_set(n)
        params = conf.get("renewalparams", {})
        autorenew = as_bool(params.get("autorenew"), default=True)
        record = LineageRecord(name=name, version=current, pems=pems,
                               renewal=portable.portable_conf(name, conf),
                               auto_renewable=autorenew, archive=older)
        try:
            record.check(where)
        except RecordError as e:
            raise TreeError(str(e)) from None
        return record

    @staticmethod
    def _archive_versions(archive: str) -> list[int]:
        """Versions for which all four files exist (as certbot's available_versions)."""
        try:
            entries = os.listdir(archive)
        except OSError:
            return []
        seen: dict[int, set[str]] = {}
        for entry in entries:
            m = ARCHIVE_FILE_RE.match(entry)
            if m:
                seen.setdefault(int(m.group(2)), set()).add(m.group(1))
        return sorted(n for n, kinds in seen.items() if kinds == set(PEM_KINDS))

    def screened_conf(self, name: str, portable_text: str, keep_local: bool = True,
                      where: str = "") -> tuple[bytes, list[str]]:
        """A portable conf from Vault with this machine's paths (and nothing else's), and
        the keys of Vault's conf that it ignored (see trust.py).

        Ignored keys take the value this machine's own conf of the lineage
        holds, if any (unless not ``keep_local``): a hook the admin set here
        stays here.
        """
        mine = {"config_dir": self.config_dir, "work_dir": self.dirs.work_dir,
                "logs_dir": self.dirs.logs_dir}
        return portable.screened_conf(
            name, portable_text, archive_dir=self.archive_dir(name),
            live_dir=self.live_dir(name), dirs=mine,
            local=self._local_params(name) if keep_local else {},
            trusted=self.trust_vault_hooks, where=where)

    def as_pulled(self, remote: LineageRecord, local: LineageRecord) -> bool:
        """Whether the local lineage is exactly what pulling ``remote`` gives here, with
        no setting of this machine's own.

        Then only keys that pull does not take from Vault (trust.py) differ, and
        pushing would just erase them from Vault for the machines that trust them.
        """
        if not remote.same_content(dataclasses.replace(local, renewal=remote.renewal)):
            return False
        try:
            with open(self.renewal_conf_path(remote.name), "rb") as f:
                on_disk = f.read()
            return on_disk == self.screened_conf(remote.name, remote.renewal,
                                                 keep_local=False)[0]
        except (OSError, RecordError):
            return False

    def _local_params(self, name: str) -> dict[str, Any]:
        """This machine's current ``[renewalparams]`` of a lineage ({} if none or unreadable)."""
        try:
            params = self._load_conf(name).get("renewalparams")
        except TreeError:
            return {}
        return params.dict() if isinstance(params, configobj.Section) else {}

    def fingerprints(self) -> dict[str, tuple[Optional[int], int]]:
        """name -> (live version, renewal conf mtime): a cheap "did certbot touch it"."""
        out: dict[str, tuple[Optional[int], int]] = {}
        for name in self.lineage_names():
            try:
                mtime = os.stat(self.renewal_conf_path(name)).st_mtime_ns
                out[name] = (self.current_version(name), mtime)
            except (OSError, RecordError):
                continue
        return out

    # ---- lineages: write -------------------------------------------------------

    def current_version(self, name: str) -> Optional[int]:
        link = os.path.join(self.live_dir(name), "cert.pem")
        if not os.path.islink(link):
            return None
        m = ARCHIVE_FILE_RE.match(os.path.basename(os.readlink(link)))
        return int(m.group(2)) if m else None

    def write_lineage(self, record: LineageRecord, where: str = "") -> Written:
        """Write a (validated) lineage as certbot would, conf last; with the keys of
        Vault's conf it ignored (judged against this machine's conf before it is
        replaced). ``where``: the record's Vault path, for the errors."""
        name = validate_name(record.name)
        conf_bytes, ignored = self.screened_conf(name, record.renewal, where=where)
        switch_dirs = self._switch_dirs(name)
        self.ensure_base()
        archive = self.archive_dir(name)
        live = self.live_dir(name)
        # A new archive dir is empty, and nothing points into it until live/ is
        # switched and the conf written: its files are written in place.
        fresh = make_dirs(archive, self.dir_mode)
        if not fresh:
            remove_temp_files(archive)
        versions = {**record.archive, record.version: record.pems}
        file_mode = self.file_mode
        files: Optional[dict[str, bytes]] = {} if fresh else None
        changed = fresh
        for n, pems in sorted(versions.items()):
            for kind in PEM_KINDS:
                path = os.path.join(archive, f"{kind}{n}.pem")
                data = getattr(pems, kind).encode("utf-8")
                if files is not None:
                    files[f"{kind}{n}.pem"] = data
                    create_file(path, data, BASE_PRIVKEY_MODE if kind == "privkey" else file_mode)
                elif kind == "privkey":
                    # Whoever reads the key (nginx, postfix through group
                    # ssl-cert) keeps reading it: a right key is left as the
                    # admin set it, a new one follows the one before it.
                    if not same_file(path, data, None):
                        atomic_write(path, data, BASE_PRIVKEY_MODE,
                                      like=key_to_follow(archive, n))
                        changed = True
                elif not same_file(path, data, file_mode):
                    atomic_write(path, data, file_mode)
                    changed = True
        # All four at once: switched one by one, a kill could pair a cert with another key.
        links = {f"{kind}.pem": os.path.relpath(
            os.path.join(archive, f"{kind}{record.version}.pem"), live) for kind in PEM_KINDS}
        changed |= replace_links(live, links, *switch_dirs, dir_mode=self.dir_mode,
                                 file_mode=file_mode, readme=LIVE_README.format(prefix="").encode())
        conf_path = self.renewal_conf_path(name)
        if not same_file(conf_path, conf_bytes, None):
            atomic_write(conf_path, conf_bytes, file_mode)
            changed = True
        return Written(ignored, conf_bytes, links, files, changed)

    def _switch_dirs(self, name: str) -> tuple[str, str]:
        """Where ``live/NAME`` is rebuilt and swapped from (certbot finds lineages by their
        renewal conf, so it never looks there); never a lineage's own live dir."""
        dirs = (f".{name}..kvault-new", f".{name}..kvault-old")
        for d in dirs:
            if os.path.exists(self._p("renewal", d + ".conf")):  # fits: MAX_NAME_BYTES
                raise TreeError(f"Lineage {name} cannot be written here: lineage {d} holds "
                                f"the name of its temporary directory in {self._p('live')}.")
        return self._p("live", dirs[0]), self._p("live", dirs[1])

    def remove_leftovers(self) -> None:
        """Remove what a killed pull left: temp files, half-switched ``live/`` dirs."""
        for sub in ("renewal", "live", os.path.join("renewal-hooks", "deploy")):
            remove_temp_files(self._p(sub))
        for entry in os.listdir(self._p("live")):
            is_lineage = os.path.exists(self._p("renewal", entry + ".conf"))
            if _SWITCH_DIR_RE.match(entry) and not is_lineage:
                remove_tree(self._p("live", entry))

    def ensure_base(self) -> None:
        """The dirs certbot makes on first run, with certbot's modes (checked once per
        Tree: a pull of a fleet writes many lineages into the same base)."""
        if self._base_made:
            return
        make_dirs(self.config_dir, 0o755)
        make_dirs(self._p("renewal"), self.dir_mode)
        for sub in ("archive", "live", "accounts"):
            make_dirs(self._p(sub), 0o700)
        readme = self._p("live", "README")
        if not os.path.exists(readme):
            atomic_write(readme, LIVE_README.format(prefix="[cert name]/").encode(),
                         self.file_mode)
        for hook_dir in ("pre", "deploy", "post"):
            make_dirs(self._p("renewal-hooks", hook_dir), self.dir_mode)
        self._base_made = True

    # ---- accounts ------------------------------------------------------------

    def account_dirs(self) -> Iterator[tuple[str, str]]:
        """(server_path, account_id) of every real account dir (certbot's compat
        symlinks between server dirs are skipped)."""
        base = self._p("accounts")
        if not os.path.isdir(base):
            return
        for root, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(root, d)))
            if "private_key.json" in files:
                rel = os.path.relpath(root, base)
                server_path, account_id = os.path.split(rel)
                if server_path:
                    yield server_path.replace(os.sep, "/"), account_id
                dirs[:] = []

    def read_account(self, server_path: str, account_id: str, server_url: str) -> AccountRecord:
        d = self._p("accounts", validate_server_path(server_path),
                    validate_name(account_id, "account"))
        where = f"account {account_id} in {d}"
        record = AccountRecord(
            server=server_url, account_id=account_id,
            meta=_read_text(os.path.join(d, "meta.json"), where),
            private_key=_read_text(os.path.join(d, "private_key.json"), where),
            regr=_read_text(os.path.join(d, "regr.json"), where))
        try:
            record.check(where)
        except RecordError as e:
            raise TreeError(str(e)) from None
        return record

    def write_account(self, record: AccountRecord) -> bool:
        self.ensure_base()
        # certbot makes the server dirs and the account dir 0700, parents included.
        d = self._p("accounts", record.server_path,
                    validate_name(record.account_id, "account"))
        make_dirs(d, 0o700)
        remove_temp_files(d)
        mode = self.file_mode
        changed = False
        # meta and regr first: certbot loads an account by its key file.
        for fname, text, fmode in (("meta.json", record.meta, mode),
                                   ("regr.json", record.regr, mode),
                                   ("private_key.json", record.private_key, ACCOUNT_KEY_MODE)):
            path = os.path.join(d, fname)
            data = text.encode("utf-8")
            # A key with the right content keeps whatever mode the admin gave it.
            if not same_file(path, data, None if fname == "private_key.json" else fmode):
                atomic_write(path, data, fmode)
                changed = True
        return changed  # False: the three files were right already

    def server_urls(self) -> dict[str, str]:
        """server_path -> directory URL, as the renewal confs name them."""
        urls: dict[str, str] = {}
        for name in self.lineage_names():
            try:
                server = self._load_conf(name).get("renewalparams", {}).get("server")
            except (TreeError, RecordError):  # RecordError: not a valid lineage name
                continue
            if isinstance(server, str) and server:
                try:
                    urls[server_path_for_url(server)] = server
                except RecordError:
                    continue
        return urls

    # ---- the deploy hook ---------------------------------------------------------

    def install_hook(self) -> str:
        """Put the deploy hook in renewal-hooks/deploy (certbot runs it on every issuance),
        calling this certbot-kvault (``kvault_bin``)."""
        self.ensure_base()
        text = _read_text(HOOK_SOURCE, "the packaged deploy hook")
        executable = kvault_bin()
        if executable:
            text = text.replace('KVAULT_BIN_DEFAULT="certbot-kvault"',
                                f'KVAULT_BIN_DEFAULT="{executable}"')
        path = self._p("renewal-hooks", "deploy", HOOK_NAME)
        data = text.encode("utf-8")
        if not same_file(path, data, 0o755):
            atomic_write(path, data, 0o755)
        return path


def executable(name: str) -> Optional[str]:
    """The executable ``name`` beside this Python (a virtualenv's, a container's), else
    the one on PATH: certbot-kvault's for the deploy hook, certbot for the renewers."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    return shutil.which(name)


def kvault_bin() -> Optional[str]:
    """The certbot-kvault executable the deploy hook calls."""
    return executable("certbot-kvault")
