"""Narrated demo: every command is printed, then run for real on loopback servers."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from servers import start_openbao_dev, start_pebble, start_powerdns  # noqa: E402

BIN = Path(sys.executable).parent


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run(*argv: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    shown = " ".join(shlex.quote(a) for a in argv)
    print(f"$ {shown}", flush=True)
    exe = str(BIN / argv[0]) if (BIN / argv[0]).exists() else argv[0]
    proc = subprocess.run([exe, *argv[1:]], env=env, text=True, capture_output=True)
    out = (proc.stdout + proc.stderr).strip()
    if out:
        print("\n".join("  " + line for line in out.splitlines()), flush=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo failed: {shown} exited {proc.returncode}")
    return proc


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="kvault-demo-"))
    servers = []
    try:
        step("Start OpenBao (dev), PowerDNS (zone example.com) and Pebble on loopback")
        bao = start_openbao_dev(work)
        servers.append(bao)
        pdns = start_powerdns(work)
        servers.append(pdns)
        pebble = start_pebble(work, pdns.dns_port)
        servers.append(pebble)
        print(f"  OpenBao {bao.addr}  PowerDNS dns 127.0.0.1:{pdns.dns_port} api "
              f"{pdns.api_url}  Pebble {pebble.directory_url}")

        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "KVAULT_"))}
        env.update(VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.token, HOME=str(work),
                   REQUESTS_CA_BUNDLE=pebble.ca_bundle, PATH=f"{BIN}:{env['PATH']}",
                   TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS="",
                   TLDEXTRACT_CACHE_PATH=str(work / "tld"))
        config = work / "letsencrypt"
        dirs = ["--config-dir", str(config), "--work-dir", str(work / "lib"),
                "--logs-dir", str(work / "log")]
        certbot = ["certbot", *dirs, "--server", pebble.directory_url, "--non-interactive"]
        resolver = f"127.0.0.1:{pdns.dns_port}"

        step("Store the DNS provider's credentials in Vault (none left on disk)")
        # @FILE keeps the secret out of `ps` and shell history; the file is the
        # stand-in for a mounted secret and goes away once it is in Vault.
        token_file = work / "pdns-token"
        token_file.touch(mode=0o600)
        token_file.write_text(pdns.api_key)
        run("certbot-kvault", "dns", "add", "pdns", "--provider", "powerdns",
            "--option", f"pdns_server={pdns.api_url}", "--option", "pdns_server_id=localhost",
            "--option", f"auth_token=@{token_file}", env=env)
        token_file.unlink()
        run("certbot-kvault", "dns", "list", env=env)

        step("Issue with DNS-01: certbot certonly -a kvault (apex + wildcard)")
        run(*certbot, "certonly", "-a", "kvault", "--kvault-dns", "pdns",
            "--kvault-dns-resolver", resolver, "--agree-tos",
            "--register-unsafely-without-email", "-d", "demo.example.com",
            "-d", "*.demo.example.com", env=env)
        run("certbot-kvault", "list", env=env)
        run("certbot-kvault", "show", "demo.example.com", env=env)

        step("The job ends and its config dir is gone; only Vault remains")
        shutil.rmtree(config)
        print(f"$ rm -rf {config}")

        step("A fresh job renews statelessly from Vault")
        # lock in Vault -> pull -> certbot renew -> push -> unlock; --force-renewal
        # because a fresh certificate is not due yet.
        run("certbot-kvault", "renew", *dirs, "--", "--force-renewal", "--server",
            pebble.directory_url, env=env)
        run("certbot-kvault", "show", "demo.example.com", env=env)
        shown = run("certbot-kvault", "show", "demo.example.com", "--json", env=env).stdout
        if '"version": 2' not in shown:
            raise SystemExit("demo failed: Vault does not hold the renewed version 2")
        step("Done: the renewal is in Vault (version 2); no state was kept on disk")
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
