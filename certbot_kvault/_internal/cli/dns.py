"""`certbot-kvault dns ...`: DNS provider credentials in Vault (``dns/NAME``), and checking them.

Values are secrets: they are written to Vault and never printed; listings
show option keys and zones only. ``dns check`` uses an entry as the
authenticator would (dns01.check), with no ACME order.
"""
from __future__ import annotations

import json
import re
import sys
from typing import Any, Optional

import click

from certbot_kvault._internal.cli.common import Context, common_options
from certbot_kvault._internal.dns import challenge as dns01
from certbot_kvault._internal.dns import entries as dns_entries
from certbot_kvault._internal.store.records import validate_name
from certbot_kvault._internal.vault.errors import VaultConflict


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
        key = dns_entries.normalize_key(key)
        if not sep or not key or key in dns_entries.RESERVED_FIELDS:
            raise click.BadParameter(
                f"expected KEY=VALUE (KEY not {' or '.join(sorted(dns_entries.RESERVED_FIELDS))}"
                "), got "
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
@click.option("--zone", "zones", multiple=True, metavar="ZONE",
              help="A DNS zone this entry serves; repeat. An order picks, for each name, the "
                   "entry with the longest zone holding it (entries without zones serve as "
                   "--kvault-dns NAME).")
@click.option("--force", is_flag=True, help="Replace an existing entry")
@common_options(tree=False, json_opt=True)
def dns_add(ctx: Context, name: str, provider: str, provider_options: tuple[str, ...],
            zones: tuple[str, ...], force: bool) -> None:
    """Store (or with --force replace) the DNS provider entry NAME. Values are never shown."""
    validate_name(name, "DNS entry")
    layout = ctx.layout
    where = layout.where("dns", name)
    provider = provider.strip()
    dns_entries.check_provider(provider, "--provider")
    options = _parse_options(provider_options)
    dns_entries.check_options(provider, options, where)
    served = list(dns_entries.parse_zones(list(zones), "--zone"))
    if not force and layout.load_dns(name) is not None:
        raise click.ClickException(f"{where} already exists; pass --force to replace it.")
    entry: dict[str, Any] = {dns_entries.PROVIDER_FIELD: provider, **options}
    if served:
        entry[dns_entries.ZONES_FIELD] = served
    try:
        layout.save_dns(name, entry, cas=None if force else 0)
    except VaultConflict:
        # Another `dns add` created it meanwhile: fine if it stored the same entry.
        if layout.load_dns(name) != entry:
            raise click.ClickException(
                f"{where} was created by someone else meanwhile; pass --force to "
                "replace it.") from None
    out = {"name": name, "path": where, "provider": provider, "options": sorted(options),
           "zones": served}
    if ctx.json:
        click.echo(json.dumps(out, indent=2, sort_keys=True))
    else:
        click.echo(f"saved: {where} (provider {provider}; options: "
                   f"{', '.join(sorted(options)) or 'none'}; zones: "
                   f"{', '.join(served) or 'any (the default entry)'})")


@dns_group.command("list")
@common_options(tree=False, json_opt=True)
def dns_list(ctx: Context) -> None:
    """NAME  PROVIDER  ZONES  OPTIONS (keys only), from Vault."""
    layout = ctx.layout
    rows: list[dict[str, Any]] = []
    for name in layout.list_dns():
        data = layout.load_dns(name)
        if data is None:
            continue
        where = layout.where("dns", name)
        try:
            zones = list(dns_entries.parse_zones(data.get(dns_entries.ZONES_FIELD), where))
        except dns_entries.DNSError as e:
            click.echo(f"warning: {e}", err=True)
            zones = ["(invalid)"]
        rows.append({"name": name,
                     "provider": data.get(dns_entries.PROVIDER_FIELD),
                     "zones": zones,
                     "options": sorted(k for k in data if k not in dns_entries.RESERVED_FIELDS)})
    if ctx.json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    table = [("NAME", "PROVIDER", "ZONES", "OPTIONS")] + [
        (r["name"], r["provider"] or "-", ",".join(r["zones"]) or "-",
         ",".join(r["options"]) or "-") for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(4)]
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


@dns_group.command("check")
@click.argument("name")
@click.option("--domain", "domains", multiple=True, required=True, metavar="NAME",
              help="A certificate name to check (its _acme-challenge record); repeat.")
@click.option("--dns-alias", "aliases", metavar="NAME=TARGET[,...]",
              help="NAME's TXT goes to TARGET, without looking up the CNAME (as the "
                   "authenticator's --kvault-dns-alias).")
@click.option("--dns-resolver", "resolver", metavar="HOST[:PORT]",
              help="Ask this DNS server instead of the zones' authoritative servers.")
@click.option("--propagation-timeout", "timeout", type=click.IntRange(1, 3600), default=120,
              show_default=True, help="Seconds to wait for every DNS server to answer.")
@common_options(tree=False)
def dns_check(ctx: Context, name: str, domains: tuple[str, ...], aliases: Optional[str],
              resolver: Optional[str], timeout: int) -> None:
    """Check that entry NAME can answer DNS-01 for each --domain, with no ACME order.

    Follows _acme-challenge CNAMEs, creates a test TXT record with NAME's
    credentials, waits until every authoritative server answers it, deletes it:
    one line per step with its time. Any failure: one line, exit 1, nothing left.
    """
    validate_name(name, "DNS entry")
    entry = dns_entries.load_entry(ctx.layout, name)
    entries = dns_entries.EntrySet(default=entry, zoned=[entry] if entry.zones else [],
                                  where=ctx.layout.where("dns"))
    try:
        lookup, alias_map = dns01.Lookup(resolver), dns01.parse_aliases(aliases)
        took = dns01.check(entries, list(domains), lookup, alias_map, float(timeout),
                           click.echo)
    except dns_entries.DNSError as e:
        # The same sentences as the authenticator's, with this command's options.
        text = str(e)
        for flag in ("propagation-timeout", "dns-resolver", "dns-alias"):
            text = text.replace(f"--kvault-{flag}", f"--{flag}")
        raise click.ClickException(text) from None
    click.echo(f"ok: {entry.where} can answer DNS-01 for {', '.join(domains)} ({took:.2f} s)")
