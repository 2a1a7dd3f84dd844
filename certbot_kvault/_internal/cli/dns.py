"""`certbot-kvault dns ...`: manage DNS provider credentials in Vault (``dns/NAME``).

Values are secrets: they are written to Vault and never printed; listings
show option keys only.
"""
from __future__ import annotations

import json
import re
import sys
from typing import Any

import click

from certbot_kvault._internal import dns as kvault_dns
from certbot_kvault._internal.cli.common import Context, common_options
from certbot_kvault._internal.errors import VaultConflict
from certbot_kvault._internal.records import validate_name


@click.group("dns")
def dns_group() -> None:
    """DNS provider entries for the kvault authenticator (Vault: <mount>/<prefix>/dns/NAME).

    Each entry holds a dns-lexicon provider name and that provider's options,
    e.g. for PowerDNS: auth_token, pdns_server, pdns_server_id. certbot uses one
    with `certbot certonly -a kvault --kvault-dns NAME -d ...`.
    """


def _read_value(key: str, value: str) -> str:
    """``@FILE`` reads the value from a file, ``@-`` from stdin (keeps secrets out of ``ps``)."""
    if value.startswith("@@"):
        return value[1:]
    if value == "@-":
        return sys.stdin.readline().rstrip("\r\n")
    if value.startswith("@"):
        path = value[1:]
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().rstrip("\r\n")
        except OSError as e:
            raise click.BadParameter(f"{key}: cannot read {path}: {e.strerror}",
                                     param_hint="--option") from None
    return value


# Option keys whose value is a credential: given inline, it stays in the shell's history
# and shows in `ps` while the command runs.
_SECRET_KEY = re.compile(r"token|secret|passw|passphrase|key|credential|^auth", re.IGNORECASE)


def _parse_options(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    inline: list[str] = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = kvault_dns.normalize_key(key)
        if not sep or not key or key == kvault_dns.PROVIDER_FIELD:
            raise click.BadParameter(
                f"expected KEY=VALUE (KEY not '{kvault_dns.PROVIDER_FIELD}'), got "
                f"{key or '?'}{'=...' if sep else ''}", param_hint="--option")
        if key in out:
            raise click.BadParameter(f"{key} given twice", param_hint="--option")
        out[key] = _read_value(key, value)
        given_inline = not value.startswith("@") or value.startswith("@@")
        if given_inline and out[key] and _SECRET_KEY.search(key):
            inline.append(key)
    if inline:
        keys = ", ".join(inline)
        click.echo(f"warning: --option {keys}: given inline, a secret stays in the shell's "
                   "history and shows in `ps` while this runs; pass it as KEY=@FILE (a file) "
                   "or KEY=@- (stdin) instead.", err=True)
    return out


@dns_group.command("add")
@click.argument("name")
@click.option("--provider", required=True, metavar="PROVIDER",
              help="dns-lexicon provider name (powerdns, cloudflare, route53, ...)")
@click.option("--option", "provider_options", multiple=True, metavar="KEY=VALUE",
              help="A provider option; repeat. VALUE '@FILE' reads a file, '@-' stdin, "
                   "'@@...' is a literal '@...'. A secret (a KEY with token, secret, "
                   "password, key, credential or auth) given inline gets a warning.")
@click.option("--force", is_flag=True, help="Replace an existing entry")
@common_options(tree=False, json_opt=True)
def dns_add(ctx: Context, name: str, provider: str, provider_options: tuple[str, ...],
            force: bool) -> None:
    """Store (or with --force replace) the DNS provider entry NAME. Values are never shown."""
    validate_name(name, "DNS entry")
    layout = ctx.layout
    where = layout.where("dns", name)
    provider = provider.strip()
    kvault_dns.check_provider(provider, f"--provider for {where}")
    options = _parse_options(provider_options)
    kvault_dns.check_options(provider, options, where)
    if not force and layout.load_dns(name) is not None:
        raise click.ClickException(f"{where} already exists; pass --force to replace it.")
    entry = {kvault_dns.PROVIDER_FIELD: provider, **options}
    try:
        layout.save_dns(name, entry, cas=None if force else 0)
    except VaultConflict:
        # Another `dns add` created it meanwhile: fine if it stored the same entry.
        if layout.load_dns(name) != entry:
            raise click.ClickException(
                f"{where} was created by someone else meanwhile; pass --force to "
                "replace it.") from None
    out = {"name": name, "path": where, "provider": provider, "options": sorted(options)}
    if ctx.json:
        click.echo(json.dumps(out, indent=2, sort_keys=True))
    else:
        click.echo(f"saved: {where} (provider {provider}; options: "
                   f"{', '.join(sorted(options)) or 'none'})")


@dns_group.command("list")
@common_options(tree=False, json_opt=True)
def dns_list(ctx: Context) -> None:
    """NAME  PROVIDER  OPTIONS (keys only), from Vault."""
    layout = ctx.layout
    rows: list[dict[str, Any]] = []
    for name in layout.list_dns():
        data = layout.load_dns(name)
        if data is None:
            continue
        rows.append({"name": name,
                     "provider": data.get(kvault_dns.PROVIDER_FIELD),
                     "options": sorted(k for k in data if k != kvault_dns.PROVIDER_FIELD)})
    if ctx.json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    table = [("NAME", "PROVIDER", "OPTIONS")] + [
        (r["name"], r["provider"] or "-", ",".join(r["options"]) or "-") for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(3)]
    for row in table:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


@dns_group.command("rm")
@click.argument("name")
@common_options(tree=False)
def dns_rm(ctx: Context, name: str) -> None:
    """Delete the DNS provider entry NAME (all versions)."""
    validate_name(name, "DNS entry")
    layout = ctx.layout
    where = layout.where("dns", name)
    if layout.load_dns(name) is None:
        raise click.ClickException(f"No DNS provider entry {where} in Vault.")
    layout.delete_dns(name)
    click.echo(f"deleted: {where}")
