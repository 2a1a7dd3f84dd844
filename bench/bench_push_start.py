"""A second push of an unchanged fleet, and how fast the commands start.

Two ratios, measured side by side on this machine, interleaved, medians:

  * push: the second ``sync.push`` of an unchanged fleet of N synthetic lineages
    (bench_sync.make_tree) against the first push of the same fleet into an
    empty prefix; one fresh prefix per round;
  * start-up: ``certbot-kvault --help`` and ``certbot-kvault list`` (an empty
    prefix: start, log in, one LIST) as whole processes, against a bare
    ``python -c "import hvac"``; it also says which heavy modules each one
    imports (certbot's CLI and ACME client, cryptography).

Run: .venv/bin/python bench/bench_push_start.py [N] [ROUNDS]
(default 1000 lineages, 3 push rounds; start-up runs 3x as many rounds).
"""
from __future__ import annotations

import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sync import make_tree  # noqa: E402
from servers import start_openbao_dev  # noqa: E402

from certbot_kvault._internal.store.layout import Layout  # noqa: E402
from certbot_kvault._internal.sync.push import push  # noqa: E402
from certbot_kvault._internal.vault.client import VaultClient  # noqa: E402
from certbot_kvault._internal.vault.settings import VaultSettings  # noqa: E402

PYTHON = str(REPO / ".venv" / "bin" / "python")
KVAULT = str(REPO / ".venv" / "bin" / "certbot-kvault")
HEAVY = ("certbot._internal.main", "certbot._internal.cli", "certbot._internal.plugins.disco",
         "acme.client", "josepy", "cryptography.x509", "configobj")
# What a command imported, told by the interpreter at exit (no code of ours changes).
PROBE = ("import atexit, sys; atexit.register(lambda: print(' '.join(sorted("
         "m for m in sys.modules if m in %r)), file=open(%r, 'w')))")


def push_times(addr: str, token: str, work: Path, n: int, rounds: int) -> tuple[float, float]:
    """Medians of the first push of N lineages into a fresh prefix and of the second,
    unchanged, push (which must write nothing)."""
    tree = make_tree(work, n)
    first: list[float] = []
    second: list[float] = []
    for _ in range(rounds):
        settings = VaultSettings.from_env({}, addr=addr, token=token, mount="secret",
                                          prefix=f"bench-push-{secrets.token_hex(4)}")
        layout = Layout(VaultClient(settings, pool_size=32))
        for times in (first, second):
            t0 = time.perf_counter()
            report = push(tree, layout, accounts=False)
            times.append(time.perf_counter() - t0)
            assert report.ok, report.failed
        assert len(report.unchanged) == n and not report.written, "second push wrote"
    return statistics.median(first), statistics.median(second)


def push_ratio(addr: str, token: str, work: Path, n: int, rounds: int) -> None:
    a, b = push_times(addr, token, work, n, rounds)
    print(f"push of {n} lineages ({rounds} rounds, medians): first {a:.2f} s, "
          f"second (unchanged) {b:.2f} s")
    print(f"  second push / first push:   {b / a:.3f}")


def start_ratio(env: dict[str, str], rounds: int, work: Path) -> None:
    sides = {"python -c 'import hvac'": [PYTHON, "-c", "import hvac"],
             "certbot-kvault --help": [KVAULT, "--help"],
             "certbot-kvault list --help": [KVAULT, "list", "--help"],
             "certbot-kvault list (empty prefix)": [KVAULT, "list"]}
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(rounds):
        for label, cmd in sides.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            times[label].append(time.perf_counter() - t0)
    floor = statistics.median(times["python -c 'import hvac'"])
    print(f"start-up ({rounds} rounds each, interleaved, medians of wall time):")
    for label, t in times.items():
        print(f"  {label:38s} {statistics.median(t) * 1000:6.0f} ms  "
              f"{statistics.median(t) / floor:.2f}x")
    for label, args in (("--help", ["--help"]), ("list", ["list"])):
        out = work / "modules.txt"
        code = (PROBE % (HEAVY, str(out)) + "; from certbot_kvault._internal.cli import main; "
                f"sys.argv = ['certbot-kvault', *{args!r}]; main()")
        subprocess.run([PYTHON, "-c", code], env=env, stdout=subprocess.DEVNULL)
        print(f"  heavy modules imported by {label}: {out.read_text().strip() or 'none'}")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    work = Path(tempfile.mkdtemp(prefix="kvault-bench-"))
    bao = start_openbao_dev(work)
    try:
        os.environ.pop("REQUESTS_CA_BUNDLE", None)
        # As installed: with bytecode (an installer compiles it; PYTHONDONTWRITEBYTECODE
        # would make every run compile our modules, and not hvac's, from source).
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("VAULT_", "KVAULT_")) and k != "PYTHONDONTWRITEBYTECODE"}
        subprocess.run([PYTHON, "-m", "compileall", "-q", str(REPO / "certbot_kvault")],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        env.update(VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.token,
                   KVAULT_PREFIX=f"bench-empty-{secrets.token_hex(4)}",
                   KVAULT_CONFIG_DIR=str(work / "none"))
        start_ratio(env, rounds * 3, work)
        push_ratio(bao.addr, bao.token, work, n, rounds)
    finally:
        bao.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
