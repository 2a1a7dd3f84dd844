"""examples/agent/ run by a real ``bao agent`` (OpenBao's Vault Agent) against the real
OpenBao: it logs in with AppRole holding policies/reader.hcl, renders the shipped
templates into files equal to Vault's PEMs, renders them again (and reloads once)
after ``certbot-kvault renew`` pushes a renewal, and refuses a template that names a
field the record lacks (error_on_missing_key) without writing that file.

The example's paths, address and reload command are pointed at test locations; the
rest of agent.hcl and the templates run as shipped.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers import (
    Golden,
    approle,
    fresh_dirs,
    golden_env,
    kvault,
    load_policy,
    record,
    seed,
)
from servers import Bao, BaoAgent, start_bao_agent

EX = Path(__file__).resolve().parent.parent / "examples" / "agent"
TEMPLATES = ("fullchain.pem", "privkey.pem", "bundle.pem")
SHIPPED_PATH = "secret/data/certbot/certificates/example.com"
WAIT = 60.0


def replaced(text: str, old: str, new: str) -> str:
    """``text`` with ``old`` replaced; ``old`` must be there (a changed example fails here)."""
    assert old in text, f"the example no longer holds {old!r}"
    return text.replace(old, new)


class AgentSetup:
    """The example under ``root``: templates, credentials, config; files land in ``out``."""

    def __init__(self, root: Path, bao: Bao, prefix: str, lineage: str, *, once: bool,
                 interval: str = "5m") -> None:
        self.root = root
        self.out = root / "out"
        self.reloads = root / "reloads"
        templates = root / "templates"
        templates.mkdir(parents=True)
        for name in TEMPLATES:
            text = (EX / f"{name}.ctmpl").read_text()
            (templates / f"{name}.ctmpl").write_text(
                replaced(text, SHIPPED_PATH, f"secret/data/{prefix}/certificates/{lineage}"))
        creds = approle(bao, load_policy(bao, "reader", prefix))
        (root / "role-id").write_text(creds["VAULT_ROLE_ID"])
        (root / "secret-id").write_text(creds["VAULT_SECRET_ID"])
        text = (EX / "agent.hcl").read_text()
        text = replaced(text, "https://vault.example.com:8200", bao.addr)
        text = replaced(text, "/etc/vault-agent/templates/", f"{templates}/")
        text = replaced(text, "/etc/vault-agent/", f"{root}/")
        text = replaced(text, "/etc/ssl/example.com/", f"{self.out}/")
        text = replaced(text, 'method "approle" {',
                        f'method "approle" {{\n    mount_path = '
                        f'"auth/{creds["KVAULT_APPROLE_MOUNT"]}"')
        text = replaced(text, '["systemctl", "reload", "nginx"]',
                        f'["sh", "-c", "echo reload >> {self.reloads}"]')
        text = replaced(text, 'static_secret_render_interval = "5m"',
                        f'static_secret_render_interval = "{interval}"')
        if once:
            text += "\nexit_after_auth = true\n"
        self.config = root / "agent.hcl"
        self.config.write_text(text)

    def start(self) -> BaoAgent:
        return start_bao_agent(self.config, self.root)

    def files(self) -> dict[str, str]:
        return {n: (self.out / n).read_text() for n in TEMPLATES if (self.out / n).exists()}

    def reload_count(self) -> int:
        return len(self.reloads.read_text().splitlines()) if self.reloads.exists() else 0


def expected(data: dict[str, Any]) -> dict[str, str]:
    return {"fullchain.pem": data["fullchain"], "privkey.pem": data["privkey"],
            "bundle.pem": data["privkey"] + data["fullchain"]}


def wait_for(what: str, check: Callable[[], bool], agent: BaoAgent) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert agent.running(), f"the agent exited ({what}):\n{agent.log_tail()}"
        assert time.monotonic() < deadline, f"no {what} after {WAIT:.0f}s:\n{agent.log_tail()}"
        time.sleep(0.2)


def test_agent_renders_vaults_pems(bao: Bao, golden: Golden, vault_env: dict[str, str],
                                   tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    setup = AgentSetup(tmp_path / "agent", bao, prefix, "calm", once=True)
    agent = setup.start()
    try:
        assert agent.proc.wait(WAIT) == 0, agent.log_tail()
    finally:
        agent.stop()
    data = record(bao, prefix, "certificates/calm")
    assert data is not None
    assert setup.files() == expected(data)
    modes = {n: (setup.out / n).stat().st_mode & 0o777 for n in TEMPLATES}
    assert modes == {"fullchain.pem": 0o644, "privkey.pem": 0o600, "bundle.pem": 0o600}
    assert setup.reload_count() == 1


def test_agent_renders_again_after_a_renewal(bao: Bao, golden: Golden,
                                             vault_env: dict[str, str],
                                             tmp_path: Path) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["due"])
    before = record(bao, prefix, "certificates/due")
    assert before is not None
    setup = AgentSetup(tmp_path / "agent", bao, prefix, "due", once=False, interval="1s")
    agent = setup.start()
    try:
        wait_for("first render", lambda: setup.files() == expected(before), agent)
        wait_for("reload after the first render", lambda: setup.reload_count() == 1, agent)

        _, args = fresh_dirs(tmp_path)
        proc = kvault("renew", *args, env=golden_env(bao, golden, prefix))
        assert "renewed: due" in proc.stdout, proc.stdout
        after = record(bao, prefix, "certificates/due")
        assert after is not None and after["version"] == before["version"] + 1
        assert after["fullchain"] != before["fullchain"]

        wait_for("render of the renewal", lambda: setup.files() == expected(after), agent)
        wait_for("reload after the renewal", lambda: setup.reload_count() >= 2, agent)
    finally:
        agent.stop()
    assert setup.reload_count() == 2  # once per new version, not once per file


@pytest.mark.parametrize("field", ["fullchian", "key"])
def test_agent_refuses_a_template_naming_a_missing_field(
        bao: Bao, golden: Golden, vault_env: dict[str, str], tmp_path: Path,
        field: str) -> None:
    prefix = vault_env["KVAULT_PREFIX"]
    seed(bao, golden, prefix, ["calm"])
    setup = AgentSetup(tmp_path / "agent", bao, prefix, "calm", once=True)
    template = setup.root / "templates" / "fullchain.pem.ctmpl"
    template.write_text(replaced(template.read_text(), ".Data.data.fullchain",
                                 f".Data.data.{field}"))
    agent = setup.start()
    try:
        assert agent.proc.wait(WAIT) != 0, agent.log_tail()
    finally:
        agent.stop()
    log = agent.log_path.read_text()
    assert re.search(rf'map has no entry for key \\?"{field}\\?"', log), log
    assert not (setup.out / "fullchain.pem").exists()
    assert "BEGIN" not in log  # no PEM (let alone the key) in the agent's log
