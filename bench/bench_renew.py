"""renew's cost when little is due: `certbot-kvault renew` (stateless) against plain
`certbot renew` over the same tree on disk, with real OpenBao, Pebble and PowerDNS.

Two fleets of synthetic lineages (certificates from a throw-away CA, 90-day
lifetime; renewal confs pointing at the real Pebble directory and a real
account registered there; http-01 through certbot's standalone authenticator):

  1. N lineages (default 100), none due (age 10 days). Each side runs RUNS
     times (default 3), interleaved; the median of each side and their ratio
     are reported. Pebble must see no order at all.
  2. BIG lineages (default 1000), DUE of them (default 10) past 2/3 of their
     lifetime (age 70 days). One run each; Pebble must see exactly DUE orders
     per run. Both sides start from the same records: the tree for plain
     certbot is pulled before certbot-kvault renews.

  (a) `certbot-kvault renew --config-dir EMPTY ...`: the whole command, process
      start to exit (lock, pull, certbot, push, unlock), from an empty dir.
  (b) `certbot renew --no-random-sleep-on-renew` over the tree already on disk
      (pulled once beforehand, not timed).

Ratios are printed, never asserted (machines differ); a wrong order count
at Pebble or a failed command makes the exit status 1.

Run: .venv/bin/python bench/bench_renew.py [--n 100] [--big 1000] [--due 10] [--runs 3]
     .venv/bin/python bench/bench_renew.py --quick     # small fleets, well under a minute
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers import (  # noqa: E402
    ZONE,
    ThrowawayCA,
    dir_args,
    kvault,
    orders,
    renewal_conf,
    scrubbed_env,
)
from servers import (  # noqa: E402
    Bao,
    Pebble,
    Server,
    certbot_executable,
    start_openbao_dev,
    start_pebble,
    start_powerdns,
    stop_all,
)

from certbot_kvault._internal.tree.storage import Dirs, Tree  # noqa: E402

LIFETIME = datetime.timedelta(days=90)
AGE_CALM = datetime.timedelta(days=10)   # 80 days left: not due by any rule
AGE_DUE = datetime.timedelta(days=70)    # past 2/3 of 90 days (60): due

# What Pebble logs for each identifier it validates.
VALIDATED = re.compile(r'Identifier\{Type:"dns", Value:"([^"]+)"\}')



class Fleet:
    """Lineages made once on disk (`src`), pushed to their own Vault prefix."""

    def __init__(self, root: Path, prefix: str, names: list[str], due: list[str]) -> None:
        self.root = root
        self.prefix = prefix
        self.names = names
        self.due = due


def certbot(args: list[str], root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """certbot from this venv with ``root``'s three dirs, as certbot-kvault runs it."""
    proc = subprocess.run([certbot_executable(), *args, *dir_args(root)], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"certbot {' '.join(args)} exited {proc.returncode}:\n"
                           f"{proc.stderr[-3000:]}")
    return proc


def register(root: Path, pebble: Pebble, env: dict[str, str]) -> str:
    """A real account at ``pebble`` in ``root``'s config dir; its id."""
    certbot(["register", "--agree-tos", "--register-unsafely-without-email",
             "--server", pebble.directory_url, "--non-interactive"], root, env)
    found = list((root / "config" / "accounts").glob("*/*/*/regr.json"))
    if len(found) != 1:
        raise RuntimeError(f"expected one account under {root}/config/accounts, found {found}")
    return found[0].parent.name


def make_fleet(work: Path, label: str, total: int, due: int, pebble: Pebble,
               kv_env: Callable[[str], dict[str, str]], env: dict[str, str]) -> Fleet:
    """``total`` lineages, ``due`` of them due (spread through the fleet), in a fresh
    Vault prefix, written by `certbot-kvault push` as a renewer would have."""
    root = work / label / "src"
    account = register(root, pebble, env)
    names = [f"{label}{i:05d}.{ZONE}" for i in range(total)]
    step = total // due if due else 0
    due_names = [names[i * step + step // 2] for i in range(due)]
    ca = ThrowawayCA("bench renew CA")
    now = datetime.datetime.now(datetime.timezone.utc)
    tree = Tree(Dirs(str(root / "config"), str(root / "work"), str(root / "logs")))
    for name in names:
        age = AGE_DUE if name in due_names else AGE_CALM
        renewal = renewal_conf(name, account=account, server=pebble.directory_url,
                               http_port=pebble.http_port)
        tree.write_lineage(ca.lineage(name, name, now - age, LIFETIME, renewal))
    prefix = f"bench-renew-{label}-{secrets.token_hex(3)}"
    kvault("push", *dir_args(root), env=kv_env(prefix), timeout=3600)
    return Fleet(work / label, prefix, names, due_names)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Bench:
    def __init__(self, work: Path, bao: Bao, pebble: Pebble) -> None:
        self.work = work
        self.bao = bao
        self.pebble = pebble
        self.env = scrubbed_env(REQUESTS_CA_BUNDLE=pebble.ca_bundle)
        self.problems: list[str] = []
        self.rows: list[tuple[str, float, float]] = []

    def kv_env(self, prefix: str) -> dict[str, str]:
        return {**self.env, "VAULT_ADDR": self.bao.addr, "VAULT_TOKEN": self.bao.token,
                "KVAULT_PREFIX": prefix}

    def side_a(self, fleet: Fleet, run: str) -> float:
        """certbot-kvault renew from an empty config dir, process start to exit."""
        root = fleet.root / f"a-{run}"
        args = dir_args(root)
        return timed(lambda: kvault("renew", *args, env=self.kv_env(fleet.prefix),
                                    timeout=3600))

    def side_b(self, root: Path, total: int) -> float:
        """plain certbot renew over a tree already on disk."""
        out: list[subprocess.CompletedProcess[str]] = []
        took = timed(lambda: out.append(
            certbot(["renew", "--no-random-sleep-on-renew"], root, self.env)))
        # Proof that certbot looked at the whole fleet, not at an empty dir.
        # (certbot wraps a long path onto the next line.)
        seen = len(re.findall(r"^Processing\s", out[0].stdout, re.MULTILINE))
        if seen != total:
            self.problems.append(f"certbot renew processed {seen} renewal confs, not {total}")
        return took

    def pulled_tree(self, fleet: Fleet) -> Path:
        """The fleet pulled once, without certbot-kvault's deploy hook: plain certbot."""
        root = fleet.root / "b"
        kvault("pull", *dir_args(root), env=self.kv_env(fleet.prefix), timeout=3600)
        for hook in (root / "config" / "renewal-hooks" / "deploy").glob("*"):
            hook.unlink()
        return root

    def check_orders(self, what: str, log_offset: int, before: int,
                     expected: list[str]) -> None:
        """Orders and validated names at Pebble since ``log_offset``/``before``."""
        got = orders(self.pebble) - before
        with open(self.pebble.log_path, "rb") as f:
            f.seek(log_offset)
            names = sorted(set(VALIDATED.findall(f.read().decode(errors="replace"))))
        ok = got == len(expected) and names == sorted(expected)
        print(f"  at Pebble, {what}: {got} orders, {len(names)} names validated "
              f"(expected {len(expected)}, the due ones) {'ok' if ok else 'WRONG'}")
        if not ok:
            self.problems.append(f"{what}: {got} orders at Pebble for {names}, "
                                 f"expected {len(expected)} for {sorted(expected)}")

    def mark(self) -> tuple[int, int]:
        return self.pebble.log_path.stat().st_size, orders(self.pebble)

    def none_due(self, n: int, runs: int) -> None:
        print(f"[1] {n} lineages, none due, {runs} run(s) per side")
        fleet = make_fleet(self.work, "calm", n, 0, self.pebble, self.kv_env, self.env)
        b_root = self.pulled_tree(fleet)
        a_times: list[float] = []
        b_times: list[float] = []
        floor: list[float] = []
        offset, before = self.mark()
        for r in range(runs):
            a_times.append(self.side_a(fleet, str(r)))
            b_times.append(self.side_b(b_root, n))
            floor.append(timed(lambda: kvault("--help", env=self.env)))
            print(f"  run {r + 1}: certbot-kvault renew {a_times[-1]:7.2f} s, "
                  f"certbot renew {b_times[-1]:7.2f} s, certbot-kvault --help {floor[-1]:5.2f} s")
        self.check_orders(f"all {runs} run(s) of both sides", offset, before, [])
        b_median = statistics.median(b_times)
        self.rows.append((f"{n} lineages, none due (median of {runs})",
                          statistics.median(a_times), b_median))
        # What no change to renew can go below: starting the process at all.
        self.rows.append((f"(floor: `certbot-kvault --help`, median of {runs})",
                          statistics.median(floor), b_median))

    def some_due(self, total: int, due: int) -> None:
        print(f"[2] {total} lineages, {due} due, one run per side")
        fleet = make_fleet(self.work, "mixed", total, due, self.pebble, self.kv_env, self.env)
        b_root = self.pulled_tree(fleet)
        offset, before = self.mark()
        a = self.side_a(fleet, "0")
        self.check_orders("certbot-kvault renew", offset, before, fleet.due)
        offset, before = self.mark()
        b = self.side_b(b_root, total)
        self.check_orders("certbot renew", offset, before, fleet.due)
        print(f"  certbot-kvault renew {a:7.2f} s, certbot renew {b:7.2f} s")
        self.rows.append((f"{total} lineages, {due} due (1 run)", a, b))

    def report(self) -> None:
        print()
        print("| run | certbot-kvault renew (stateless) | certbot renew (tree on disk) "
              "| ratio a/b |")
        print("|---|---|---|---|")
        for label, a, b in self.rows:
            print(f"| {label} | {a:.2f} s | {b:.2f} s | {a / b:.2f} |")


def commit() -> str:
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100, help="lineages of run 1, none due")
    p.add_argument("--big", type=int, default=1000, help="lineages of run 2")
    p.add_argument("--due", type=int, default=10, help="due lineages of run 2")
    p.add_argument("--runs", type=int, default=3, help="runs per side in run 1 (median)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: --n 10 --big 30 --due 2 --runs 1")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.n, opts.big, opts.due, opts.runs = 10, 30, 2, 1
    if not (opts.n >= 1 and opts.runs >= 1 and 1 <= opts.due <= opts.big):
        p.error("need --n >= 1, --runs >= 1 and 1 <= --due <= --big")
    print(f"certbot-kvault at {commit()}, {os.cpu_count()} CPUs")
    work = Path(tempfile.mkdtemp(prefix="kvault-bench-renew-"))
    started: list[Server] = []
    try:
        pdns = start_powerdns(work, zones=(ZONE,))
        started.append(pdns)
        pebble = start_pebble(work, pdns.dns_port)
        started.append(pebble)
        bao = start_openbao_dev(work)
        started.append(bao)
        bench = Bench(work, bao, pebble)
        bench.none_due(opts.n, opts.runs)
        bench.some_due(opts.big, opts.due)
        bench.report()
    finally:
        stop_all(started)
        shutil.rmtree(work, ignore_errors=True)
    for problem in bench.problems:
        print(f"CHECK FAILED: {problem}", file=sys.stderr)
    return 1 if bench.problems else 0


if __name__ == "__main__":
    sys.exit(main())
