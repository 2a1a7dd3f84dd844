"""The consumer side: one lineage from Vault in the form an app expects.

- ``pem``: cert.pem, chain.pem, fullchain.pem and privkey.pem (the names
  certbot's live/ dir uses, so app configs need no change); each name can be
  changed or left out (``Options``: e.g. a Vault PKI setup's cert.pem, key.pem
  and ca-cert.pem), and ``cert_type`` says whether the cert file holds the
  certificate alone (certbot's cert.pem, the default) or the full chain;
- ``bundle``: one NAME.pem with the key followed by the full chain (HAProxy and friends);
- ``env``: ``VAR='value'`` lines for ``eval``/``source``, in our
  ``SSL_CERT_<NAME>_*`` style or in Kontena's (``LE_CERTIFICATE_<name>_*`` and
  ``SSL_CERT_<name>``, for apps leaving Kontena);
- ``k8s-secret``: a ``kubernetes.io/tls`` Secret for ``kubectl apply -f -``, as
  JSON (``json.dumps``, ASCII only: every string escaped by the standard library,
  no quoting rules of ours), which kubectl reads as JSON and any YAML parser as
  YAML; the PEMs base64.

Files are written together (files.write_together): each is staged as a temp
file in the target dir, then all are renamed into place (the key last), so a
failure while writing (an unwritable dir, a full disk) leaves none of the new
files. Keys are 0600 from their first byte, certificates 0644.

A directory belongs to one lineage, named in ``D/..kvault-lineage``
(``claim``): ``export --dir`` (plain, ``--once``, ``--watch``) writes one
lineage's files, and a second lineage exported into the same directory would
replace them, or (``--watch``) switch them away with the directory's whole
file set, and two watchers would take turns every interval. So the first
export into a directory writes the lineage's name into the mark, and an export
of another lineage there is refused, in one line, before a file is touched.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shlex
from typing import Optional

from certbot import errors

from certbot_kvault._internal.store.records import LineageRecord
from certbot_kvault._internal.tree.files import NotAllWritten, make_dirs, staged, write_together

FORMATS = ("pem", "bundle", "env", "k8s-secret")
ENV_STYLES = ("kvault", "kontena")
CERT_TYPES = ("fullchain", "cert")

_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_K8S_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_BAD_FILE_CHARS = re.compile(r"[\x00-\x1f\x7f/\\]")


class ExportError(errors.PluginError):
    """An export that cannot be done as asked; the message says why in one line."""


@dataclasses.dataclass(frozen=True)
class Options:
    """What the app expects. ``None``: the format's own default; an empty file name
    leaves that file out."""

    cert_file: Optional[str] = None
    chain_file: Optional[str] = None
    fullchain_file: Optional[str] = None
    key_file: Optional[str] = None
    bundle_file: Optional[str] = None
    cert_type: Optional[str] = None
    env_style: Optional[str] = None
    secret_name: Optional[str] = None
    namespace: Optional[str] = None
    ca_crt: bool = False
    key_mode: Optional[str] = None   # octal, e.g. 0640: apps that read the key as a group
    key_group: Optional[str] = None  # a group name or id

    @property
    def key_file_mode(self) -> int:
        """The mode of the files that hold the key (the key, a bundle); 0600 by default."""
        return 0o600 if self.key_mode is None else int(self.key_mode, 8)

    @property
    def key_gid(self) -> Optional[int]:
        """The group of the files that hold the key; None: the process's own."""
        if self.key_group is None:
            return None
        if self.key_group.isdigit():
            return int(self.key_group)
        import grp

        try:
            return grp.getgrnam(self.key_group).gr_gid
        except KeyError:
            raise ExportError(f"--key-group {self.key_group!r}: no such group on this "
                              "machine.") from None

    def check(self, fmt: str) -> None:
        """Refuse, in one line naming the flag, what ``fmt`` does not use or a bad name;
        called before anything is read, so a wrong command costs no Vault request."""
        uses = {"pem": {"cert_file", "chain_file", "fullchain_file", "key_file", "cert_type",
                        "key_mode", "key_group"},
                "bundle": {"bundle_file", "cert_type", "key_mode", "key_group"},
                "env": {"env_style", "cert_type"},
                "k8s-secret": {"secret_name", "namespace", "ca_crt", "cert_type"}}[fmt]
        for f in dataclasses.fields(self):
            if getattr(self, f.name) not in (None, False) and f.name not in uses:
                raise ExportError(f"{_flag(f.name)} does not apply to --format {fmt}.")
        if fmt == "env" and self.cert_type and self.env_style != "kontena":
            raise ExportError("--cert-type does not apply to --format env in the kvault style "
                              "(it prints CERT and FULLCHAIN both); it applies to "
                              "--env-style kontena.")
        if fmt == "pem":
            names = [(f, n) for f, n in self._pem_names() if n]
            if not names:
                raise ExportError("Every file name is empty: nothing to write.")
            seen: dict[str, str] = {}
            for field, name in names:
                _check_file_name(name, field)
                if name in seen:
                    raise ExportError(f"{_flag(seen[name])} and {_flag(field)} both name "
                                      f"{name!r}.")
                seen[name] = field
        if self.bundle_file is not None:
            _check_file_name(self.bundle_file, "bundle_file")
        self._check_key_access()
        if self.secret_name is not None and not _is_k8s_name(self.secret_name):
            raise ExportError(f"--secret-name {self.secret_name!r} is not a valid Kubernetes "
                              "name (lower-case letters, digits, '-' and '.', at most 253).")
        if self.namespace is not None and not (len(self.namespace) <= 63
                                               and _K8S_LABEL.match(self.namespace)):
            raise ExportError(f"--namespace {self.namespace!r} is not a valid Kubernetes "
                              "namespace (lower-case letters, digits and '-', at most 63).")

    def _check_key_access(self) -> None:
        if self.key_mode is not None:
            try:
                mode = int(self.key_mode, 8)
            except ValueError:
                mode = -1
            # Owner reads it; the group may (the point of the option); others never.
            if not 0 <= mode <= 0o770 or not mode & 0o400 or mode & 0o007:
                raise ExportError(f"--key-mode {self.key_mode!r} must be an octal mode the "
                                  "owner may read and others may not, e.g. 0640 or 0440.")
        gid = self.key_gid
        if gid is not None and os.geteuid() != 0 and gid not in (os.getegid(),
                                                                  *os.getgroups()):
            # Found now, before any file is written.
            raise ExportError(f"--key-group {self.key_group}: this user is not in that group, "
                              "so it cannot give the key to it (run as root or as a member).")

    def _pem_names(self) -> list[tuple[str, str]]:
        defaults = (("cert_file", "cert.pem"), ("chain_file", "chain.pem"),
                    ("fullchain_file", "fullchain.pem"), ("key_file", "privkey.pem"))
        return [(field, default if getattr(self, field) is None else getattr(self, field))
                for field, default in defaults]


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _check_file_name(name: str, field: str) -> None:
    if not name or name in (".", "..") or _BAD_FILE_CHARS.search(name):
        raise ExportError(f"{_flag(field)} {name!r} must be a file name (no '/', '..' or control "
                          "characters); the directory is --dir.")
    if len(name.encode("utf-8", "surrogateescape")) > 255:
        # Found now rather than at the rename, when other files may be in place already.
        raise ExportError(f"{_flag(field)} is longer than a file name may be (255 bytes).")


# ---- files ------------------------------------------------------------------------------


def planned_files(record: LineageRecord, fmt: str,
                  opts: Optional[Options] = None) -> list[tuple[str, bytes, int]]:
    """(file name, content, mode) of each file ``fmt`` writes, the key last."""
    opts = opts or Options()
    pems = record.pems
    key_mode = opts.key_file_mode
    if fmt == "bundle":
        cert = pems.cert if opts.cert_type == "cert" else pems.fullchain
        return [(opts.bundle_file or f"{record.name}.pem", _joined(pems.privkey, cert),
                 key_mode)]
    cert = pems.fullchain if opts.cert_type == "fullchain" else pems.cert
    texts = {"cert_file": (cert, 0o644), "chain_file": (pems.chain, 0o644),
             "fullchain_file": (pems.fullchain, 0o644), "key_file": (pems.privkey, key_mode)}
    return [(name, texts[field][0].encode("utf-8"), texts[field][1])
            for field, name in opts._pem_names() if name]


def file_set(record: LineageRecord, fmt: str,
             opts: Optional[Options] = None) -> list[tuple[str, str, int]]:
    """``planned_files`` as text: what ``export --watch`` switches in (watch.py)."""
    return [(name, data.decode("utf-8"), mode) for name, data, mode in
            planned_files(record, fmt, opts)]


def export_files(record: LineageRecord, directory: str, fmt: str,
                 opts: Optional[Options] = None) -> list[str]:
    """Write the lineage's files into ``directory``; returns the paths written."""
    opts = opts or Options()
    files = planned_files(record, fmt, opts)
    directory = os.path.abspath(directory)
    try:
        make_dirs(directory, 0o755)
    except OSError as e:
        raise ExportError(f"Cannot create {directory}: {e.strerror or e}; nothing was "
                          "written.") from None
    gid = opts.key_gid
    # The files that hold the key (the only ones others may not read) get its group.
    together = [(name, data, mode, gid if not mode & 0o007 else None)
                for name, data, mode in files]
    try:
        return write_together(directory, together, before_rename=lambda: claim(
            directory, record.name, [(name, data) for name, data, _ in files]))
    except NotAllWritten as e:
        where = e.filename if isinstance(e.filename, str) else directory
        if os.path.basename(where).startswith(".kvault-"):
            where = directory  # a temp file's name means nothing to the user
        done = ("nothing was written" if e.renamed == 0
                else f"{e.renamed} of {len(files)} written")
        raise ExportError(f"Cannot write {where}: {e.strerror or e.cause}; {done}.") from None


def _joined(*pems: str) -> bytes:
    """PEM texts one after another, each ending with a newline (a PEM without one
    would run into the next's BEGIN line)."""
    return "".join(p if p.endswith("\n") else p + "\n" for p in pems).encode("utf-8")


# ---- the directory's lineage ------------------------------------------------------------


class DirTaken(errors.Error):
    """The directory holds another lineage's files; one line naming it and the way out."""


# The lineage whose files a directory holds, one line, written by the first export there.
# '..' first, as the `..data` link and its version dirs: not a file of the app's.
OWNER_FILE = "..kvault-lineage"
DATA_LINK = "..data"  # the link to the current file set of `export --watch` (watch.py)
_MAX_READ = 1 << 20   # a marker or certificate file larger than this is not ours


def claim(directory: str, name: str, files: list[tuple[str, bytes]]) -> None:
    """Make ``directory`` lineage ``name``'s before ``files`` (name, content) go in.

    A directory belongs to one lineage, named in its ``OWNER_FILE``: another
    lineage's export there is refused (DirTaken), so its files are never
    replaced or switched away. A directory without the mark (a new one, or
    one an older certbot-kvault wrote) is taken unless a certificate file this
    export would replace (a file of the same name, or the current ``..data``
    set) names other domains than ``name``'s certificate: then it is another
    lineage's too. The mark is created whole or not at all (a hard link of a
    complete temp file), so of two exports starting at once one owns the dir.
    """
    marker = os.path.join(directory, OWNER_FILE)
    for _ in range(3):
        owner = _owner(marker)
        if owner == name:
            return
        if owner is not None:
            raise DirTaken(
                f"{directory} holds the files of lineage {_shown(owner)} (its {OWNER_FILE} "
                f"says so); not writing {name} over them: give {name} a directory of its own "
                "(--dir; --dir '/certs/{name}' for several), or remove that directory if "
                f"{_shown(owner)} no longer uses it.")
        _refuse_foreign_files(directory, name, files)
        if _create_marker(directory, marker, name):
            return
    raise DirTaken(f"{marker} keeps changing: another export is claiming {directory}; "
                      "give each lineage a directory of its own (--dir).")


def _owner(marker: str) -> Optional[str]:
    """The lineage the mark names; None when there is none (or it is empty)."""
    try:
        fd = os.open(marker, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        text = f.read(_MAX_READ).decode("utf-8", "replace").strip()
    return text or None


def _shown(owner: str) -> str:
    return owner if owner.isprintable() else ascii(owner)


def _create_marker(directory: str, marker: str, name: str) -> bool:
    """Write the mark naming ``name`` if none exists; False when another was first."""
    tmp = staged(directory, name.encode("utf-8") + b"\n", 0o644, meant=marker)
    try:
        try:
            os.link(tmp, marker)
        except FileExistsError:
            if _owner(marker) is not None:
                return False
            os.replace(tmp, marker)  # an empty mark (a write cut short): ours now
        return True
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _refuse_foreign_files(directory: str, name: str, files: list[tuple[str, bytes]]) -> None:
    """Refuse an unmarked directory whose certificates, that this export would replace,
    are for other names than ``name``'s own certificate."""
    ours = next((n for _, data in files if (n := _cert_names(data)) is not None), None)
    if ours is None:
        return
    data_dir = os.path.join(directory, DATA_LINK)
    paths = [os.path.join(directory, fname) for fname, _ in files]
    if os.path.isdir(data_dir):
        paths += [os.path.join(data_dir, e) for e in sorted(os.listdir(data_dir))]
    for path in paths:
        try:
            with open(path, "rb") as f:
                theirs = _cert_names(f.read(_MAX_READ))
        except OSError:
            continue  # absent, a directory, unreadable: nothing of a lineage to keep
        if theirs is not None and theirs != ours:
            raise DirTaken(
                f"{path} holds a certificate for {', '.join(_shown(n) for n in sorted(theirs))}, "
                f"not for {name}'s names, and {directory} has no {OWNER_FILE} (an older "
                f"certbot-kvault or another tool wrote it); not writing {name} over it: "
                f"give {name} a directory of its own (--dir), or remove those files if they "
                "are no longer used.")


_CERT_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----")


def _cert_names(data: bytes) -> Optional[frozenset[str]]:
    """The DNS and IP names of the first certificate in ``data``; None without one, or
    when it names none (a CA's certificate: chain.pem)."""
    from cryptography import x509

    match = _CERT_PEM.search(data)
    if match is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(match.group(0))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    names = frozenset([*san.get_values_for_type(x509.DNSName),
                       *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))])
    return names or None


# ---- env lines --------------------------------------------------------------------------


def env_name(name: str) -> str:
    """SSL_CERT_<NAME>: the lineage name upper-cased, anything else than A-Z0-9 as '_'."""
    return "SSL_CERT_" + re.sub(r"[^A-Z0-9]", "_", name.upper())


def kontena_name(name: str) -> str:
    """<name> as Kontena formed it (``LE_CERTIFICATE_#{domain.gsub('.', '_')}``): the
    name with dots as '_', case kept; a '-' too, which a shell name cannot hold."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def env_lines(record: LineageRecord, opts: Optional[Options] = None) -> list[str]:
    """``VAR='value'`` lines for ``eval``/``source`` (PEM values keep their newlines)."""
    opts = opts or Options()
    if opts.env_style == "kontena":
        return [f"{var}={shlex.quote(value)}" for var, value in kontena_values(record, opts)]
    base = env_name(record.name)
    info = record.info
    values = {
        "CERT": record.pems.cert,
        "CHAIN": record.pems.chain,
        "FULLCHAIN": record.pems.fullchain,
        "KEY": record.pems.privkey,
        "DOMAINS": " ".join(info.domains) if info else "",
        "NOT_AFTER": info.not_after if info else "",
        "VERSION": str(record.version),
    }
    return [f"{base}_{key}={shlex.quote(value)}" for key, value in values.items()]


def kontena_values(record: LineageRecord, opts: Options) -> list[tuple[str, str]]:
    """Kontena's secrets: the certificate (the full chain unless ``cert_type`` is cert,
    Kontena's default), its key, and the bundle certificate-then-key that Kontena's
    load balancer reads from any ``SSL_CERT_*`` variable."""
    name = kontena_name(record.name)
    pems = record.pems
    cert = pems.cert if opts.cert_type == "cert" else pems.fullchain
    bundle = _joined(cert, pems.privkey).decode("utf-8")
    return [(f"LE_CERTIFICATE_{name}_PRIVATE_KEY", pems.privkey),
            (f"LE_CERTIFICATE_{name}_CERTIFICATE", cert),
            (f"LE_CERTIFICATE_{name}_BUNDLE", bundle),
            (f"SSL_CERT_{name}", bundle)]


# ---- Kubernetes -------------------------------------------------------------------------


def _is_k8s_name(name: str) -> bool:
    return len(name) <= 253 and bool(_K8S_NAME.match(name))


def k8s_name(lineage: str) -> str:
    """A DNS-1123 subdomain from a lineage name: lower case, runs of anything else
    than a-z0-9 as '-' inside each dot-separated part, empty parts dropped."""
    parts = (re.sub(r"[^a-z0-9]+", "-", p).strip("-") for p in lineage.lower().split("."))
    name = ".".join(p for p in parts if p)[:253].rstrip(".-")
    if not _is_k8s_name(name):
        raise ExportError(f"Lineage {lineage!r} gives no valid Kubernetes name: pass "
                          "--secret-name.")
    return name


def k8s_label_value(text: str) -> str:
    """A valid label value: at most 63 of A-Za-z0-9 . _ -, alphanumeric at both ends."""
    value = re.sub(r"[^A-Za-z0-9._-]", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def k8s_secret(record: LineageRecord, opts: Optional[Options] = None) -> str:
    """The lineage as a ``kubernetes.io/tls`` Secret (JSON): tls.crt the full chain (the
    certificate alone with cert_type cert), tls.key, and ca.crt the chain if asked."""
    opts = opts or Options()
    pems = record.pems
    cert = pems.cert if opts.cert_type == "cert" else pems.fullchain
    data = {"tls.crt": cert, "tls.key": pems.privkey}
    if opts.ca_crt:
        data["ca.crt"] = pems.chain
    metadata: dict[str, object] = {"name": opts.secret_name or k8s_name(record.name)}
    if opts.namespace:
        metadata["namespace"] = opts.namespace
    metadata["labels"] = {"app.kubernetes.io/managed-by": "certbot-kvault",
                          "certbot-kvault/lineage": k8s_label_value(record.name),
                          "certbot-kvault/version": str(record.version)}
    annotations = {"certbot-kvault/lineage": record.name}
    info = record.info
    if info is not None:
        annotations.update({"certbot-kvault/domains": ",".join(info.domains),
                            "certbot-kvault/not-after": info.not_after})
    metadata["annotations"] = annotations
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": metadata,
              "data": {key: base64.b64encode(text.encode("utf-8")).decode("ascii")
                       for key, text in data.items()}}
    # ensure_ascii: no raw character a YAML reader would take for a line break.
    return json.dumps(secret, indent=2, ensure_ascii=True) + "\n"
