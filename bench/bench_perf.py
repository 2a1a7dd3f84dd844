"""Every performance figure of certbot-kvault, as ratios, with one command.

One OpenBao dev server on loopback (tests/servers.py), N synthetic lineages
(ECDSA certificates from a throw-away CA, renewal memory for every tenth one)
written straight into Vault, then, each a whole command in its own process:

  * pull N:      `certbot-kvault pull` into an empty dir / `floor.py pull` (same tree);
  * list N:      `certbot-kvault list` / `floor.py list` (the same reads and table);
  * --help:      `certbot-kvault --help` / `python -c "import hvac"`;
  * seed way:    `certbot-kvault pull` / `seed_way.py` (one `bao kv get -field`
                 process per field, as the seed scripts did), that one timed over
                 the first SEED lineages and scaled to N;
  * latency:     `certbot-kvault pull` through bench/latency_proxy.py (+10 ms per
                 request) / the same pull on loopback;
  * workers:     `certbot-kvault pull --workers 1, 4, 8, 32` / the default (16);
  * second push: `sync.push` of an unchanged fleet / the first push of it (in-process,
                 bench_push_start.push_times);
  * peak RSS:    maximum resident size of `certbot-kvault pull` of BIG lineages
                 (getrusage(RUSAGE_CHILDREN) of a wrapper that runs only it).

Each pair runs interleaved RUNS times; the medians are compared. Times are never
asserted; the exit status is 1 only when a command fails or a pulled tree is not
the floor's tree (same files, modes and links).

Run: .venv/bin/python bench/bench_perf.py [--quick] [--n 1000] [--big 11000] [--runs 3]
"""
from __future__ import annotations

import argparse
import datetime
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(BENCH))

from bench_push_start import push_times  # noqa: E402
from helpers import ThrowawayCA, renewal_conf  # noqa: E402
from servers import free_port, start_openbao_dev  # noqa: E402

from certbot_kvault._internal.store.layout import Layout  # noqa: E402
from certbot_kvault._internal.store.records import LineageRecord, PemSet  # noqa: E402
from certbot_kvault._internal.store.state import RenewalState  # noqa: E402
from certbot_kvault._internal.sync.jobs import parallel  # noqa: E402
from certbot_kvault._internal.sync.pull import pull  # noqa: E402
from certbot_kvault._internal.tree.storage import Dirs, Tree  # noqa: E402
from certbot_kvault._internal.vault.client import VaultClient  # noqa: E402
from certbot_kvault._internal.vault.settings import VaultSettings  # noqa: E402

KVAULT = str(Path(sys.executable).with_name("certbot-kvault"))
BAO = str(Path(sys.executable).with_name("bao"))
TMPFS = "/dev/shm"  # noqa: S108 - mkdtemp makes a private dir in it
DISTINCT = 64  # distinct key/certificate pairs, shared round-robin (the names differ)


def pem_sets(count: int) -> list[PemSet]:
    ca = ThrowawayCA("bench CA")
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=10)
    return [ca.pems(f"host{i:05d}.example.com", start, datetime.timedelta(days=90))
            for i in range(count)]


def seed(layout: Layout, n: int, pems: list[PemSet]) -> None:
    """N lineages (each fifth with an earlier archive version), memory for every tenth."""
    def one(i: int) -> None:
        name = f"host{i:05d}.example.com"
        older = {1: pems[(i + 1) % len(pems)]} if i % 5 == 0 else {}
        record = LineageRecord(name=name, version=2 if older else 1, pems=pems[i % len(pems)],
                               renewal=renewal_conf(name), auto_renewable=True,
                               archive=older)
        layout.save_lineage(record)
        if i % 10 == 0:
            layout.save_state(name, RenewalState(failures=1, last_error="bench"))

    for _ in parallel(range(n), one, 8):
        pass


def env_for(addr: str, token: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VAULT_", "KVAULT_", "REQUESTS_CA_BUNDLE"))}
    env.update(VAULT_ADDR=addr, VAULT_TOKEN=token, KVAULT_MOUNT="secret", KVAULT_PREFIX=prefix)
    return env


def run(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args[:3])}...: {proc.stderr.strip()[-500:]}")
    return elapsed


def tree_of(root: Path) -> dict[str, tuple[int, str]]:
    """Every path below the config dir's archive/ and live/ dirs: mode and content/target."""
    out = {}
    for sub in ("archive", "live"):
        for dirpath, _dirs, files in os.walk(root / sub):
            for f in files + _dirs:
                p = Path(dirpath) / f
                st = p.lstat()
                if p.is_symlink():
                    out[str(p.relative_to(root))] = (0, os.readlink(p))
                elif p.is_file() and f != "README":
                    out[str(p.relative_to(root))] = (st.st_mode & 0o7777, p.read_text())
    return out


def peak_rss_kb(args: list[str], env: dict[str, str]) -> int:
    """ru_maxrss (kB on Linux) of the one child a fresh wrapper process runs."""
    wrapper = ("import resource, subprocess, sys\n"
               "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)\n")
    out = subprocess.run([sys.executable, "-c", wrapper, *args], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    if out[1] != "0":
        raise SystemExit(f"failed: {' '.join(args[:3])}")
    return int(out[0])


def cpu_profile(bao_addr: str, token: str, prefix: str, work: Path) -> None:
    """Where a pull's CPU goes, in-process with one worker (no thread switching), against
    the floor's: process time per step, wrapped around the functions that do each step."""
    import collections
    import functools

    sys.path.insert(0, str(BENCH))
    import floor  # noqa: PLC0415 - bench/ is on the path only now

    from certbot_kvault._internal.store import records as records_mod
    from certbot_kvault._internal.sync import pull as pull_mod
    from certbot_kvault._internal.tree import storage as tree_mod
    from certbot_kvault._internal.vault import client as vault_mod

    spent: dict[str, float] = collections.defaultdict(float)

    def wrap(owner: object, name: str, label: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] += time.process_time() - t0
        setattr(owner, name, timed)

    wrap(vault_mod.VaultClient, "read", "KV reads (HTTP + JSON)")
    wrap(records_mod.LineageRecord, "check", "record checks (PEMs parse, key matches)")
    wrap(tree_mod.Tree, "screened_conf", "renewal conf screened (configobj)")
    wrap(tree_mod, "atomic_write", "atomic file writes")
    wrap(tree_mod, "replace_links", "live/ links switched")
    wrap(tree_mod, "create_file", "files written in place (new archive dir)")
    wrap(pull_mod, "lineage_fingerprint", "manifest fingerprint")
    wrap(tree_mod.Tree, "write_lineage", "tree writes, all")
    settings = VaultSettings.from_env({}, addr=bao_addr, token=token, mount="secret",
                                      prefix=prefix)
    layout = Layout(VaultClient(settings))
    dest = work / "profile"
    t0 = time.process_time()
    report = pull(Tree(Dirs(str(dest / "c"), str(dest / "w"), str(dest / "l"))), layout,
                       workers=1, accounts=False)
    total = time.process_time() - t0
    t0 = time.process_time()
    floor.pull(floor.Kv(bao_addr, token, "secret", prefix), str(work / "profile-floor"))
    floor_total = time.process_time() - t0
    n = len(report.written)
    print(f"\nCPU of an in-process pull of {n} lineages, one worker (ms per lineage):")
    for label, sec in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {label:44s} {sec * 1000 / n:6.3f}")
    print(f"  {'whole pull (sync.pull)':44s} {total * 1000 / n:6.3f}")
    print(f"  {'the floor, whole (floor.pull)':44s} {floor_total * 1000 / n:6.3f}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smoke run: 100 / 400 lineages, 1 run")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--big", type=int, default=11000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latency", type=float, default=10.0, help="ms added per request")
    ap.add_argument("--seed", type=int, default=20,
                    help="lineages the seed scripts' way is timed over (then scaled to N)")
    ap.add_argument("--profile", action="store_true",
                    help="also show where an in-process pull's CPU goes, step by step")
    ap.add_argument("--before", metavar="REV",
                    help="also measure the code of this git revision (side by side)")
    ap.add_argument("--tmp", default=TMPFS if os.path.isdir(TMPFS) else None,
                    help="where the trees go (default: tmpfs, so that a disk busy with other "
                         "jobs does not drown both sides in noise)")
    opts = ap.parse_args()
    if opts.quick:
        opts.n, opts.big, opts.runs, opts.seed = 100, 400, 1, 5
    work = Path(tempfile.mkdtemp(prefix="kvault-perf-", dir=opts.tmp))
    bao = start_openbao_dev(work)
    proxy = None
    status = 0
    try:
        settings = VaultSettings.from_env({}, addr=bao.addr, token=bao.token, mount="secret",
                                          prefix="fleet")
        layout = Layout(VaultClient(settings, pool_size=32))
        pems = pem_sets(DISTINCT)
        t0 = time.perf_counter()
        seed(layout, opts.big, pems)
        big_prefix = "fleet"
        if opts.n != opts.big:
            small = Layout(VaultClient(VaultSettings.from_env(
                {}, addr=bao.addr, token=bao.token, mount="secret", prefix="small"),
                pool_size=32))
            seed(small, opts.n, pems)
            prefix = "small"
        else:
            prefix = big_prefix
        print(f"seeded {opts.big} + {opts.n} lineages in {time.perf_counter() - t0:.0f} s",
              flush=True)
        env = env_for(bao.addr, bao.token, prefix)
        before_env = None
        if opts.before:
            # The console script's own dir comes first on sys.path, then PYTHONPATH:
            # the old package there wins over the editable install.
            old = work / "before"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", opts.before,
                                      "certbot_kvault"], check=True, capture_output=True)
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
            before_env = {**env, "PYTHONPATH": str(old)}
        counter = iter(range(10**6))

        def fresh() -> Path:
            d = work / f"t{next(counter)}"
            return d

        def kvault_pull(addr: str = bao.addr, keep: list[Path] | None = None,
                        env: dict[str, str] = env, workers: int | None = None) -> float:
            d = fresh()
            t = run([KVAULT, "pull", *(["--workers", str(workers)] if workers else []),
                     "--config-dir", str(d / "config"), "--work-dir", str(d / "work"),
                     "--logs-dir", str(d / "logs")], {**env, "VAULT_ADDR": addr})
            if keep is not None:
                keep.append(d / "config")
            else:
                shutil.rmtree(d)
            return t

        def floor_pull(keep: list[Path] | None = None) -> float:
            d = fresh()
            t = run([sys.executable, str(BENCH / "floor.py"), "pull", bao.addr, bao.token,
                     "secret", prefix, str(d / "config")], env)
            if keep is not None:
                keep.append(d / "config")
            else:
                shutil.rmtree(d)
            return t

        # Same tree from both sides, once (not timed).
        kept: list[Path] = []
        kvault_pull(keep=kept)
        floor_pull(keep=kept)
        if tree_of(kept[0]) != tree_of(kept[1]):
            print("MISMATCH: certbot-kvault's pulled tree differs from the floor's")
            status = 1
        for d in kept:
            shutil.rmtree(d.parent)

        # Each figure: every side (this code; the --before code) and its reference,
        # interleaved run by run; medians.
        sides = {"after": env}
        if before_env is not None:
            sides["before"] = {**before_env, **{k: v for k, v in env.items()
                                                if k != "PYTHONPATH"}}
        # label -> side -> (side's median, its reference's median)
        rows: list[tuple[str, dict[str, tuple[float, float]]]] = []

        def figure(label: str, side: Callable[[dict[str, str]], float],
                   reference: Callable[[dict[str, str]], float], own: bool = False) -> None:
            """``own``: each side against the reference run with its own code (a pull
            through the slow proxy against the same code's loopback pull); else one
            reference for all sides."""
            times: dict[str, list[float]] = {k: [] for k in sides}
            refs: dict[str, list[float]] = {k: [] for k in sides}
            for _ in range(opts.runs):
                for name, side_env in sides.items():
                    times[name].append(side(side_env))
                    if own:
                        refs[name].append(reference(side_env))
                if not own:
                    ref = reference(env)
                    for k in sides:
                        refs[k].append(ref)
            med = {k: (statistics.median(times[k]), statistics.median(refs[k])) for k in sides}
            rows.append((label, med))
            print(f"  {label}: " + ", ".join(f"{k} {t:.2f} s (reference {r:.2f} s)"
                                             for k, (t, r) in med.items()), flush=True)

        figure(f"pull {opts.n} / floor", lambda e: kvault_pull(env=e), lambda _: floor_pull())
        figure(f"list {opts.n} / floor", lambda e: run([KVAULT, "list"], e),
               lambda _: run([sys.executable, str(BENCH / "floor.py"), "list", bao.addr,
                              bao.token, "secret", prefix], env))
        figure("--help / import hvac", lambda e: run([KVAULT, "--help"], e),
               lambda _: run([sys.executable, "-c", "import hvac"], env))

        def workers_pull(e: dict[str, str], workers: int) -> float:
            return kvault_pull(env=e, workers=workers)

        # The seed scripts' way takes about half a second per lineage: timed over the
        # first few, scaled to N (the per-lineage cost is flat: one process per field).
        seed_n = min(opts.seed, opts.n)

        def seed_way(_: dict[str, str]) -> float:
            d = fresh()
            t = run([sys.executable, str(BENCH / "seed_way.py"), BAO, bao.addr, bao.token,
                     "secret", prefix, str(d / "config"), str(seed_n)], env)
            shutil.rmtree(d)
            return float(t * opts.n / seed_n)

        figure(f"pull {opts.n} / seed scripts' way (x{opts.n / seed_n:g} of {seed_n})",
               lambda e: kvault_pull(env=e), seed_way)

        port = free_port()
        proxy = subprocess.Popen(
            [sys.executable, str(BENCH / "latency_proxy.py"), str(port), str(bao.port),
             str(opts.latency)], stdout=subprocess.PIPE, text=True)
        assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
        slow = f"http://127.0.0.1:{port}"
        figure(f"pull {opts.n} +{opts.latency:g} ms / loopback",
               lambda e: kvault_pull(slow, env=e), lambda e: kvault_pull(env=e), own=True)
        for workers in (1, 4, 8, 32):
            figure(f"pull {opts.n} --workers {workers} / default (16)",
                   functools.partial(workers_pull, workers=workers),
                   lambda e: kvault_pull(env=e), own=True)
        # In-process, this code only (the --before side shows "-").
        first, second = push_times(bao.addr, bao.token, work / "push", opts.n, opts.runs)
        rows.append((f"second push {opts.n} (unchanged) / first", {"after": (second, first)}))
        print(f"  second push: after {second:.2f} s, reference (first) {first:.2f} s",
              flush=True)
        rss = {}
        for name, side_env in sides.items():
            d = fresh()
            rss[name] = peak_rss_kb(
                [KVAULT, "pull", "--config-dir", str(d / "config"), "--work-dir",
                 str(d / "work"), "--logs-dir", str(d / "logs")],
                {**side_env, "KVAULT_PREFIX": big_prefix})
            shutil.rmtree(d)

        print(f"\n{opts.n} lineages, medians of {opts.runs} interleaved runs; ratio = "
              "side / reference")
        print(f"{'figure':52s} " + " ".join(f"{k:>22s}" for k in sides))
        for label, med in rows:
            print(f"{label:52s} " + " ".join(
                f"{med[k][0] / med[k][1]:6.3g} ({med[k][0]:5.2f}/{med[k][1]:5.2f} s)"
                if k in med else f"{'-':>22s}" for k in sides))
        print(f"{f'peak RSS, pull {opts.big} (MB)':52s} " + " ".join(
            f"{v / 1024:16.1f}" for v in rss.values()) + "   goal <= 64")
        if opts.profile:
            cpu_profile(bao.addr, bao.token, prefix, work)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait()
        bao.stop()
        shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
