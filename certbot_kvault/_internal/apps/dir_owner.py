"""Which lineage an export directory belongs to: ``D/..kvault-lineage``.

``export --dir`` (plain, ``--once``, ``--watch``) writes one lineage's files;
a second lineage exported into the same directory would replace them, or
(``--watch``) switch them away with the directory's whole file set, and two
watchers would take turns every interval. So the first export into a
directory writes the lineage's name into the mark, and an export of another
lineage there is refused, in one line, before a file is touched.
"""
from __future__ import annotations

import os
import re
import tempfile
from typing import Optional

from certbot import errors
from certbot.compat import filesystem


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
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".kvault-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(name.encode("utf-8") + b"\n")
        filesystem.chmod(tmp, 0o644)
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

