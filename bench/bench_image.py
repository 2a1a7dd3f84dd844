"""The image's cost: its size, and `renew` with nothing due run as a container against
the same command outside it.

- size: the image (docker/Dockerfile, built by tests/image.py on the stand-in for
  certbot/certbot), the stand-in base, and what certbot-kvault adds to it;
- N lineages (100, then 1000), none due (synthetic, as bench_perf.py seeds them), in a
  dev OpenBao on loopback; each run starts from nothing:
  (a) `podman run --rm IMAGE` (the default command, `certbot-kvault renew`), timed from
      the podman command's start to its exit: container set-up, the image's Python,
      the renew, teardown;
  (b) `certbot-kvault renew --config-dir EMPTY ...` from this virtualenv;
  (c) for reference, `podman run --rm --entrypoint /bin/true IMAGE`: the container alone.

RUNS of each, interleaved; medians and the ratio a/b are printed, never asserted.
Each renew must say "nothing is due (N lineages checked": otherwise the exit status is 1.

Run: .venv/bin/python bench/bench_image.py [--n 100 1000] [--runs 5]
"""
from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

import image as image_mod  # noqa: E402
from bench_perf import env_for, pem_sets, seed  # noqa: E402
from helpers import KVAULT, dir_args  # noqa: E402
from servers import start_openbao_dev  # noqa: E402

from certbot_kvault._internal.store.layout import Layout  # noqa: E402
from certbot_kvault._internal.vault.client import VaultClient  # noqa: E402
from certbot_kvault._internal.vault.settings import VaultSettings  # noqa: E402


def timed(argv: list[str], env: dict[str, str], expect: str, problems: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    took = time.perf_counter() - t0
    if proc.returncode != 0 or expect not in proc.stdout:
        problems.append(f"{' '.join(argv[-3:])}: exit {proc.returncode}: "
                        f"{(proc.stdout + proc.stderr).strip()[-300:]}")
    return took


def mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--runs", type=int, default=5)
    opts = ap.parse_args()

    image = image_mod.build()
    problems: list[str] = []
    rows: list[tuple[str, float, float, float]] = []
    work = Path(tempfile.mkdtemp(prefix="bench-image-"))
    bao = start_openbao_dev(work / "bao")
    try:
        size, base = image.size(), int(str(image.podman.inspect(image.base)["Size"]))
        print(f"image {image.tag} ({image.podman.driver} storage; built in "
              f"{image.build_seconds:.1f} s): {mb(size)}; the stand-in base {mb(base)}; "
              f"certbot-kvault adds {mb(size - base)}")
        pems = pem_sets(64)
        for n in opts.n:
            prefix = f"bench-image-{n}-{secrets.token_hex(3)}"
            env = env_for(bao.addr, bao.token, prefix)
            seed(Layout(VaultClient(VaultSettings.from_env(env))), n, pems)
            expect = f"nothing is due ({n} lineages checked"
            outer = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
            names = ("VAULT_ADDR", "VAULT_TOKEN", "KVAULT_MOUNT", "KVAULT_PREFIX")
            inside = image.run_argv(env=names)
            bare = image.run_argv(flags=["--entrypoint", "/bin/true"])
            a: list[float] = []
            b: list[float] = []
            c: list[float] = []
            for i in range(opts.runs):
                a.append(timed(inside, {**outer, **{k: env[k] for k in names}}, expect,
                               problems))
                b.append(timed([KVAULT, "renew", *dir_args(work / f"run-{n}-{i}")], env,
                               expect, problems))
                c.append(timed(bare, outer, "", problems))
            ma, mb_, mc = (statistics.median(x) for x in (a, b, c))
            rows.append((f"renew, {n} lineages, none due", ma, mb_, mc))
            print(f"{n} lineages: container {ma:.2f} s, outside {mb_:.2f} s "
                  f"(ratio {ma / mb_:.2f}); an empty container {mc:.2f} s")
    finally:
        bao.stop()
        image.remove()
    print(f"\n{'':34} {'container':>9} {'outside':>8} {'ratio':>6} {'empty container':>16}")
    for what, ma, mb_, mc in rows:
        print(f"{what:34} {ma:8.2f}s {mb_:7.2f}s {ma / mb_:6.2f} {mc:15.2f}s")
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
