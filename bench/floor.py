"""The floors bench_perf.py measures certbot-kvault against: the least a program can do.

``pull``: keep-alive HTTP reads of every lineage secret with plain ``http.client``
(one connection, one request after the other), writing the same tree certbot-kvault
writes: ``archive/NAME/{cert,chain,fullchain,privkey}N.pem`` for every version with
certbot's modes (0644 under umask 022, the key 0600), ``live/NAME/*.pem`` relative
links and a README, and ``renewal/NAME.conf`` with this machine's paths. No
validation, no atomic writes, no error handling: a floor, not a program.

``list``: the same reads of every lineage secret and its renewal memory
(``state/NAME``), printing the table ``certbot-kvault list`` prints (NEXT_RENEWAL
by the lifetime rule, FAILURES from the memory).

Usage: python floor.py pull|list ADDR TOKEN MOUNT PREFIX [CONFIG_DIR]
"""
from __future__ import annotations

import datetime
import http.client
import json
import os
import sys
import time
import urllib.parse
from typing import Any, Optional

KINDS = ("cert", "chain", "fullchain", "privkey")


class Kv:
    def __init__(self, addr: str, token: str, mount: str, prefix: str) -> None:
        url = urllib.parse.urlsplit(addr)
        self.conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80)
        self.headers = {"X-Vault-Token": token}
        self.mount, self.prefix = mount, prefix

    def call(self, method: str, path: str) -> Optional[dict[str, Any]]:
        self.conn.request(method, f"/v1/{self.mount}/{path}", headers=self.headers)
        resp = self.conn.getresponse()
        body = resp.read()
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise SystemExit(f"{method} {path}: HTTP {resp.status}")
        return dict(json.loads(body))

    def names(self) -> list[str]:
        listed = self.call("LIST", f"metadata/{self.prefix}/certificates") or {}
        return sorted(k for k in listed["data"]["keys"] if not k.endswith("/"))

    def read(self, kind: str, name: str) -> Optional[dict[str, Any]]:
        got = self.call("GET", f"data/{self.prefix}/{kind}/{urllib.parse.quote(name, safe='')}")
        return None if got is None else dict(got["data"]["data"])


def write(path: str, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def pull(kv: Kv, config_dir: str) -> None:
    for sub in ("archive", "live"):
        os.makedirs(os.path.join(config_dir, sub), 0o700, exist_ok=True)
    os.makedirs(os.path.join(config_dir, "renewal"), exist_ok=True)
    for name in kv.names():
        d = kv.read("certificates", name)
        assert d is not None
        archive = os.path.join(config_dir, "archive", name)
        live = os.path.join(config_dir, "live", name)
        os.mkdir(archive)
        os.mkdir(live)
        versions = {int(n): p for n, p in (d.get("archive") or {}).items()}
        current = int(d["version"])
        versions[current] = d
        for n, pems in versions.items():
            for kind in KINDS:
                write(os.path.join(archive, f"{kind}{n}.pem"), pems[kind],
                      0o600 if kind == "privkey" else 0o644)
        for kind in KINDS:
            os.symlink(f"../../archive/{name}/{kind}{current}.pem",
                       os.path.join(live, f"{kind}.pem"))
        write(os.path.join(live, "README"), "This directory contains your keys.\n", 0o644)
        conf = []
        for line in d["renewal"].splitlines():
            key = line.split("=", 1)[0].strip()
            if key == "archive_dir":
                line = f"archive_dir = {archive}"
            elif key in KINDS:
                line = f"{key} = {live}/{key}.pem"
            conf.append(line)
        write(os.path.join(config_dir, "renewal", f"{name}.conf"), "\n".join(conf) + "\n",
              0o644)


def when(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def stamp(ts: float) -> str:
    return datetime.datetime.fromtimestamp(int(ts), datetime.timezone.utc) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")


def list_(kv: Kv) -> None:
    now = time.time()
    table = [("NAME", "SUBJECT", "EXPIRATION", "AUTO_RENEWABLE", "NEXT_RENEWAL", "FAILURES")]
    for name in kv.names():
        d = kv.read("certificates", name)
        if d is None:
            continue
        state = kv.read("state", name) or {}
        start, end = when(d["not_before"]), when(d["not_after"])
        lifetime = end - start
        due_at = end - lifetime / (2 if lifetime < 10 * 86400 else 3)
        auto = bool(d.get("auto_renewable", True))
        table.append((name, (d.get("domains") or ["-"])[0], d["not_after"],
                      "yes" if auto else "no",
                      "now" if due_at <= now else stamp(due_at),
                      str(state.get("consecutive_failures", 0))))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    out = sys.stdout
    for row in table:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")


def main() -> None:
    what, addr, token, mount, prefix = sys.argv[1:6]
    kv = Kv(addr, token, mount, prefix)
    if what == "pull":
        pull(kv, sys.argv[6])
    else:
        list_(kv)


if __name__ == "__main__":
    main()
