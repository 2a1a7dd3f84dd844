"""The consumer side: one lineage from Vault as files or env lines for an app.

``pem`` writes cert.pem, chain.pem, fullchain.pem and privkey.pem (the names
certbot's live/ dir uses, so app configs need no change); ``bundle`` writes
one NAME.pem with the key followed by the full chain (HAProxy and friends).
Files are written atomically; keys are 0600, certificates 0644.
"""
from __future__ import annotations

import os
import re
import shlex

from certbot_kvault._internal.files import atomic_write, make_dirs
from certbot_kvault._internal.records import LineageRecord

FORMATS = ("pem", "bundle", "env")


def file_set(record: LineageRecord, fmt: str) -> list[tuple[str, str, int]]:
    """(file name, content, mode) of each file the lineage is exported as."""
    pems = record.pems
    if fmt == "bundle":
        return [(f"{record.name}.pem", pems.privkey + pems.fullchain, 0o600)]
    return [("cert.pem", pems.cert, 0o644), ("chain.pem", pems.chain, 0o644),
            ("fullchain.pem", pems.fullchain, 0o644), ("privkey.pem", pems.privkey, 0o600)]


def export_files(record: LineageRecord, directory: str, fmt: str) -> list[str]:
    """Write the lineage's files into ``directory``; returns the paths written."""
    make_dirs(os.path.abspath(directory), 0o755)
    written = []
    for fname, text, mode in file_set(record, fmt):
        path = os.path.join(directory, fname)
        atomic_write(path, text.encode("utf-8"), mode)
        written.append(path)
    return written


def env_name(name: str) -> str:
    """SSL_CERT_<NAME>: the lineage name upper-cased, anything else than A-Z0-9 as '_'."""
    return "SSL_CERT_" + re.sub(r"[^A-Z0-9]", "_", name.upper())


def env_lines(record: LineageRecord) -> list[str]:
    """``VAR='value'`` lines for ``eval``/``source`` (PEM values keep their newlines)."""
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
