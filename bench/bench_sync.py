"""Push/pull at fleet scale against a real OpenBao dev server.

Measured as ratios, never as absolute times (machines differ):
  * speed-up: the same push and pull with --workers 8 against --workers 1;
  * memory: peak traced Python memory of a pull of N lineages against N/4
    (flat in N means a ratio near 1, not near 4).

Run: .venv/bin/python bench/bench_sync.py [N] [LATENCY_MS]
(default 400 lineages, 0 ms). With LATENCY_MS, requests go through
bench/latency_proxy.py, which delays each one that long: a Vault across a
network, where the parallel workers earn their keep.
"""
from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers import ThrowawayCA, renewal_conf  # noqa: E402
from servers import free_port, start_openbao_dev  # noqa: E402

from certbot_kvault._internal.store.layout import Layout  # noqa: E402
from certbot_kvault._internal.sync.pull import pull  # noqa: E402
from certbot_kvault._internal.sync.push import push  # noqa: E402
from certbot_kvault._internal.tree.storage import Dirs, Tree  # noqa: E402
from certbot_kvault._internal.vault.client import VaultClient  # noqa: E402
from certbot_kvault._internal.vault.settings import VaultSettings  # noqa: E402


def make_tree(root: Path, n: int) -> Tree:
    """N fresh 90-day lineages written as certbot would, by the tree writer itself."""
    ca = ThrowawayCA("bench CA")
    now = datetime.datetime.now(datetime.timezone.utc)
    tree = Tree(Dirs(str(root / "config"), str(root / "work"), str(root / "logs")))
    for i in range(n):
        name = f"host{i:05d}.example.com"
        tree.write_lineage(ca.lineage(name, name, now, datetime.timedelta(days=90),
                                      renewal_conf(name)))
    return tree


def timed(fn, *args, **kwargs) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    latency = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    work = Path(tempfile.mkdtemp(prefix="kvault-bench-"))
    bao = start_openbao_dev(work)
    addr = bao.addr
    proxy = None
    if latency:
        port = free_port()
        proxy = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("latency_proxy.py")), str(port),
             str(bao.port), str(latency)], stdout=subprocess.PIPE, text=True)
        assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
        addr = f"http://127.0.0.1:{port}"
    try:
        os.environ.pop("REQUESTS_CA_BUNDLE", None)
        tree = make_tree(work, n)

        def layout(prefix: str) -> Layout:
            settings = VaultSettings.from_env({}, addr=addr, token=bao.token,
                                              mount="secret", prefix=prefix)
            return Layout(VaultClient(settings, pool_size=32))

        results = {}
        for workers in (1, 8):
            lay = layout(f"bench-w{workers}")
            results[f"push w{workers}"] = timed(
                push, tree, lay, workers=workers, accounts=False)
            results[f"push again w{workers}"] = timed(
                push, tree, lay, workers=workers, accounts=False)
            dest = Tree(Dirs(str(work / f"pull{workers}"), str(work / "w"), str(work / "l")))
            results[f"pull w{workers}"] = timed(
                pull, dest, lay, workers=workers, accounts=False)

        def peak_pull(count: int) -> int:
            lay = layout("bench-w8")
            names = [f"host{i:05d}.example.com" for i in range(count)]
            dest = Tree(Dirs(str(work / f"mem{count}"), str(work / "w"), str(work / "l")))
            tracemalloc.start()
            pull(dest, lay, names=names, workers=8, accounts=False)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            shutil.rmtree(dest.config_dir)
            return peak

        small, large = peak_pull(n // 4), peak_pull(n)
        print(f"lineages: {n}, added latency per request: {latency:g} ms")
        for k, v in results.items():
            print(f"  {k:16s} {v:7.2f} s  ({n / v:7.0f} lineages/s)")
        print(f"speed-up push (w8 vs w1):       {results['push w1'] / results['push w8']:.2f}x")
        print(f"speed-up pull (w8 vs w1):       {results['pull w1'] / results['pull w8']:.2f}x")
        print(f"second push vs first (w8):      "
              f"{results['push again w8'] / results['push w8']:.2f} (reads only)")
        print(f"peak memory pull N vs N/4:      {large / small:.2f} "
              f"({small / 1e6:.1f} MB vs {large / 1e6:.1f} MB; flat = near 1, linear = 4)")
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait()
        bao.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
