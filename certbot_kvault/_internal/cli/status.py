"""``certbot-kvault status``: what works between this machine and Vault."""
from __future__ import annotations

import json
from typing import Any, Optional

import click

from certbot_kvault._internal.cli.common import Context, common_options, note_pending
from certbot_kvault._internal.vault.errors import VaultError, VaultPermissionDenied
from certbot_kvault._internal.vault.redact import one_line as _one_line


@click.command()
@common_options(tree=False, json_opt=True, config_dir=True)
def status(ctx: Context) -> None:
    """Can we reach Vault, who are we, which mount and KV version, what may we do.

    A check the token may not make is reported under `unknown` and the others
    still run; the exit status is 1 when the KV mount cannot be used.
    """
    pending = note_pending(ctx)
    vault = ctx.vault
    health = vault.health()
    out: dict[str, Any] = {
        "vault_addr": ctx.settings.addr,
        "namespace": ctx.settings.namespace,
        "server_version": health.get("version"),
        "initialized": health.get("initialized"),
        "sealed": health.get("sealed"),
        "standby": health.get("standby"),
        "auth_method": ctx.settings.auth_method,
    }
    if ctx.json:
        out["pending"] = pending
    if health.get("sealed") or not health.get("initialized", True):
        _emit_status(ctx, out)
        raise click.ClickException(f"Vault at {ctx.settings.addr} is sealed or not initialized; "
                                   "unseal it and run again.")
    vault.login()
    unknown: dict[str, str] = {}
    try:
        out["token"] = vault.whoami()
    except VaultPermissionDenied as e:
        unknown["token"] = _one_line(e)
    out["mount"] = ctx.settings.mount
    out["prefix"] = ctx.settings.prefix
    fatal: Optional[VaultError] = None
    try:
        out["kv_version"] = vault.kv_version
    except VaultError as e:
        unknown["kv_version"] = _one_line(e)
        fatal = e
    kv, mount, layout = out.get("kv_version"), ctx.settings.mount, ctx.layout
    paths = {}
    for area in ("certificates", "accounts", "dns", "locks", "state"):
        rel = layout.path(area, "*")
        if kv == 1:
            paths[f"{area} (data)"] = f"{mount}/{rel}"
            continue
        paths[f"{area} (data)"] = f"{mount}/data/{rel}"
        paths[f"{area} (list)"] = f"{mount}/metadata/{rel}"
        if kv is None:  # unknown: the spelling a KV v1 policy would use, too
            paths[f"{area} (KV v1)"] = f"{mount}/{rel}"
    try:
        caps = vault.capabilities(list(paths.values()))
        out["capabilities"] = {label: caps.get(path, []) for label, path in paths.items()}
    except VaultPermissionDenied as e:
        unknown["capabilities"] = _one_line(e)
    if unknown:
        out["unknown"] = unknown
    _emit_status(ctx, out)
    if fatal is not None:
        raise click.ClickException(_one_line(fatal))


def _emit_status(ctx: Context, out: dict[str, Any]) -> None:
    if ctx.json:
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    for key, value in out.items():
        if isinstance(value, dict):
            click.echo(f"{key}:")
            for k, v in value.items():
                click.echo(f"  {k}: {', '.join(v) if isinstance(v, list) else v}")
        else:
            click.echo(f"{key}: {value}")
