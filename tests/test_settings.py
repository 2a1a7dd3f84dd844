"""settings.py: the one yes/no reading, and which modules the Vault layers may import.

No server: these read strings and the package's own source.
"""
from __future__ import annotations

import ast
import pathlib
from typing import Any

import pytest
from certbot import errors

from certbot_kvault._internal.vault.settings import (
    SETTING_OPTIONS,
    VAULT_OPTIONS,
    VaultSettings,
    as_bool,
)

INTERNAL = pathlib.Path(__file__).resolve().parent.parent / "certbot_kvault" / "_internal"


@pytest.mark.parametrize("value", ["1", "true", "True", " YES ", "on", True, 1])
def test_as_bool_true(value: Any) -> None:
    assert as_bool(value) is True
    assert as_bool(value, default=False) is True


@pytest.mark.parametrize("value", ["0", "false", "FALSE", " no", "off", False, 0])
def test_as_bool_false(value: Any) -> None:
    assert as_bool(value) is False
    assert as_bool(value, default=True) is False


@pytest.mark.parametrize("value", [None, "", "maybe", "2"])
def test_as_bool_unknown_is_the_default(value: Any) -> None:
    # A renewal conf's autorenew is on unless it says no; a flag is off unless it says yes.
    assert as_bool(value) is False
    assert as_bool(value, default=True) is True


def test_skip_verify_reads_like_the_vault_cli() -> None:
    assert VaultSettings.from_env({"VAULT_SKIP_VERIFY": "on"}).skip_verify is True
    assert VaultSettings.from_env({"VAULT_SKIP_VERIFY": "no"}).skip_verify is False
    assert VaultSettings.from_env({}).skip_verify is False


def test_option_tables_name_settings_fields() -> None:
    fields = set(VaultSettings.__dataclass_fields__)
    assert {field for _, field, _, _ in VAULT_OPTIONS} <= fields
    assert set(SETTING_OPTIONS.values()) <= fields
    # Tokens and secrets are never options: they would show in `ps` or the renewal conf.
    secrets = {"token", "secret_id", "jwt"}
    assert not secrets & {field for _, field, _, _ in VAULT_OPTIONS}
    assert not secrets & set(SETTING_OPTIONS.values())


def _imported_modules(module: str) -> set[str]:
    """The certbot_kvault._internal modules ``module`` imports, at the top or inside a function."""
    path = INTERNAL / f"{module}.py"
    if not path.exists():
        path = INTERNAL / module / "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "certbot_kvault._internal":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("certbot_kvault._internal."):
                area = node.module[len("certbot_kvault._internal."):].replace(".", "/")
                if (INTERNAL / area).is_dir():  # `from <area> import module`
                    found.update(alias.name for alias in node.names)
                else:
                    found.add(node.module.rsplit(".", 1)[-1])
        elif isinstance(node, ast.Import):
            found.update(alias.name.rsplit(".", 1)[-1] for alias in node.names
                         if alias.name.startswith("certbot_kvault._internal."))
    return found


@pytest.mark.parametrize(("module", "allowed"), [
    ("vault/settings", set()),
    ("vault/errors", {"settings"}),
    ("vault/session", {"errors", "settings"}),
    ("vault/auth", {"errors", "settings"}),
    ("vault/client", {"redact", "errors", "settings", "session", "auth"}),
])
def test_vault_layers_import_only_below(module: str, allowed: set[str]) -> None:
    assert _imported_modules(module) <= allowed


def test_cli_does_not_import_the_plugin() -> None:
    # The option table the CLI reads renewal confs with lives in settings.py.
    assert "plugin" not in _imported_modules("cli")


def test_ha_deadline_from_the_environment() -> None:
    assert VaultSettings.from_env({}).ha_deadline == 30.0
    assert VaultSettings.from_env({"KVAULT_HA_DEADLINE": "2.5"}).ha_deadline == 2.5
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(errors.Error, match=f"KVAULT_HA_DEADLINE must be a number of "
                                               f"seconds \\(0 or more\\), not '{bad}'"):
            VaultSettings.from_env({"KVAULT_HA_DEADLINE": bad})
