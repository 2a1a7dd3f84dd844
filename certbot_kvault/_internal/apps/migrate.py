"""Importing what other tools keep in Vault as our records (``import --from``).

Their records are read, never written. ``epages`` (the ePages scripts), below
``--path`` (e.g. ``secret/lets-encrypt``): ``account/{meta,private_key,regr}``
written with ``vault kv put PATH @FILE.json`` (each secret's fields are the keys
of certbot's JSON file), ``account/extra_details`` (``account_id``),
``certificates/<domain>`` (``cert``, ``chain``, ``privkey``), and beside
``--path`` the DNSimple token (``dnsimple``, field ``token``), which becomes
``dns/dnsimple`` (dns-lexicon's ``dnsimple`` provider, option ``auth_token``).
``certbot-vault-installer`` (its ``--vault-path``, default ``kv/letsencrypt``):
one KV v2 secret per name of a certificate (``crt``, ``privkey``, ``chain``),
copies of one certificate becoming one lineage; it keeps no ACME account.

What they lack is made as certbot makes it: ``fullchain`` = cert + chain,
version 1, a renewal conf naming the account, the ACME server (``--server``,
default Let's Encrypt production, which both tools used), the key type, and
``authenticator = kvault`` + ``kvault_dns`` when a DNS entry is known
(``--dns``, else the migrated DNSimple one), else ``standalone``. The account id
is the MD5 of the key, as certbot computes it; a PEM key becomes certbot's JWK
JSON. Every record passes records.py's checks and is written through Layout;
one bad record of theirs fails alone.
"""
from __future__ import annotations

import dataclasses
import json
import urllib.parse
from typing import Any, Optional, Union

from certbot import errors
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certbot_kvault._internal.dns import entries as dns_entries
from certbot_kvault._internal.store.layout import Layout
from certbot_kvault._internal.store.records import (
    AccountRecord,
    LineageRecord,
    PemSet,
    RecordError,
    account_id_for_key,
    account_key_json,
    inspect_pems,
    server_path_for_url,
    validate_name,
)
from certbot_kvault._internal.sync.jobs import DEFAULT_WORKERS, FATAL, Report, Tick, parallel
from certbot_kvault._internal.tree import portable, trust
from certbot_kvault._internal.vault.client import VaultClient
from certbot_kvault._internal.vault.errors import VaultError, VaultNotFound

EPAGES = "epages"
INSTALLER = "certbot-vault-installer"
SOURCES = (EPAGES, INSTALLER)
DEFAULT_PATHS = {EPAGES: "secret/lets-encrypt", INSTALLER: "kv/letsencrypt"}
LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
DNSIMPLE = "dnsimple"

class MigrationError(errors.PluginError):
    """The source layout cannot be read as a whole (bad --path, options)."""


@dataclasses.dataclass
class Item:
    """One record of ours to write, and where it came from (no key material)."""

    item: str      # as in sync reports: 'account ID', 'lineage NAME', 'dns NAME'
    where: str     # our Vault path
    source: str    # their Vault path(s)
    summary: str
    record: Union[AccountRecord, LineageRecord, dict[str, str]]


@dataclasses.dataclass
class Plan:
    items: list[Item] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Options:
    server: str = LETSENCRYPT
    dns: Optional[str] = None       # our dns/ entry for the renewals
    account: Optional[str] = None   # our account id (a layout without accounts)


def split_path(path: str) -> tuple[str, str]:
    """``mount/below`` of a --path; the mount is its first component, as both tools say."""
    mount, _, below = path.strip("/").partition("/")
    if not mount:
        raise MigrationError(f"--path {path!r} names no KV mount; e.g. "
                             f"{DEFAULT_PATHS[EPAGES]}.")
    return mount, below


def read(kind: str, source: VaultClient, path: str, layout: Layout, opts: Options,
         workers: int = DEFAULT_WORKERS) -> Plan:
    """What importing their layout at ``path`` (read through ``source``) would write."""
    if not trust.valid_server_url(opts.server):
        raise MigrationError(f"--server {opts.server!r} is not the http(s) URL of an ACME "
                             "directory.")
    mount, base = split_path(path)
    try:
        source.kv_version  # noqa: B018 - asks Vault once: a wrong mount is one line here
    except VaultNotFound:
        raise MigrationError(f"--path {path}: there is no KV mount '{mount}' at "
                             f"{source.settings.where}.") from None
    plan = Plan()
    reader = _Reader(source, path.strip("/"), base)
    dns_entry: Optional[dict[str, str]] = None
    account: Optional[AccountRecord] = None
    if kind == EPAGES:
        dns_entry = _epages_dns(reader, plan, layout)
        account = _epages_account(reader, plan, layout, opts.server)
    dns_name = opts.dns or (DNSIMPLE if dns_entry is not None else None)
    if opts.dns is not None and layout.load_dns(validate_name(opts.dns, "DNS entry")) is None:
        raise MigrationError(f"--dns {opts.dns}: no DNS provider entry "
                             f"{layout.where('dns', opts.dns)}; create it with "
                             f"`certbot-kvault dns add {opts.dns} ...`.")
    account_id = account.account_id if account else _our_account(layout, opts)
    conf = _ConfMaker(opts.server, account_id, dns_name)
    found = (_epages_lineages if kind == EPAGES else _installer_lineages)(reader, conf, workers)
    if not found and not plan.items and not plan.failed:
        raise MigrationError(f"Nothing of the {kind} layout at {path} (no account or "
                             "certificates); is --path right?")
    how = f"kvault with dns/{dns_name}" if dns_name else "standalone (http-01)"
    for f in found:
        if f.record is None or f.record.info is None:
            plan.failed.append((f"lineage {f.name}", f.error or "unreadable"))
            continue
        record, info = f.record, f.record.info
        plan.items.append(Item(
            f"lineage {f.name}", layout.where("certificates", f.name), ", ".join(f.sources),
            f"{', '.join(info.domains)}; not after {info.not_after}; serial {info.serial}; "
            f"{info.key_type} key; renews with {how}"
            + (f", account {account_id}" if account_id else ", no account"), record))
    if not account_id and found:
        plan.warnings.append(
            f"note: no ACME account of ours for {opts.server}: the imported lineages name "
            "none and renew with the only one certbot finds there; register one first "
            "(certbot register, then certbot-kvault push) or import with --account ID.")
    if dns_name is None and found:
        plan.warnings.append(
            "note: the imported lineages renew with the standalone authenticator (http-01 "
            "on port 80); pass --dns NAME to renew them by DNS-01 through `certbot-kvault dns`.")
    return plan


class _Reader:
    """Their secrets, read through a client of their mount; paths as a user types them."""

    def __init__(self, source: VaultClient, path: str, base: str) -> None:
        self.source, self.path, self.base = source, path, base

    def where(self, sub: str) -> str:
        return f"{self.path}/{sub}"

    def read(self, sub: str) -> Optional[dict[str, Any]]:
        entry = self.source.read("/".join(p for p in (self.base, sub) if p))
        return None if entry is None else dict(entry.data or {})

    def list(self, sub: str) -> list[str]:
        return sorted(k for k in self.source.list_keys(
            "/".join(p for p in (self.base, sub) if p)) if not k.endswith("/"))

    def beside(self, name: str) -> tuple[str, str]:
        """(path below the mount, path as typed) of a secret next to --path."""
        below = "/".join(p for p in (self.base.rpartition("/")[0], name) if p)
        return below, f"{self.path.partition('/')[0]}/{below}"


# ---- ePages ---------------------------------------------------------------------------


def _epages_dns(reader: _Reader, plan: Plan, layout: Layout) -> Optional[dict[str, str]]:
    below, where = reader.beside(DNSIMPLE)
    entry = reader.source.read(below)
    if entry is None:
        return None
    token = (entry.data or {}).get("token")
    if not isinstance(token, str) or not token.strip():
        plan.failed.append((f"dns {DNSIMPLE}", f"{where} has no 'token' field."))
        return None
    record = {dns_entries.PROVIDER_FIELD: DNSIMPLE, "auth_token": token.strip()}
    dns_entries.check_options(DNSIMPLE, {"auth_token": ""}, layout.where("dns", DNSIMPLE))
    plan.items.append(Item(f"dns {DNSIMPLE}", layout.where("dns", DNSIMPLE), where,
                           "provider dnsimple, options: auth_token", record))
    return record


def _epages_account(reader: _Reader, plan: Plan, layout: Layout,
                    server: str) -> Optional[AccountRecord]:
    fields = {f: reader.read(f"account/{f}") for f in ("meta", "private_key", "regr")}
    if all(v is None for v in fields.values()):
        plan.warnings.append(f"note: no ACME account at {reader.where('account')}/.")
        return None
    missing = [reader.where(f"account/{f}") for f, v in fields.items() if not v]
    if missing:
        plan.failed.append(("account", f"{', '.join(missing)} missing or empty; the "
                                       "account is not imported."))
        return None
    where = reader.where("account/private_key")
    try:
        key_json = account_key_json(fields["private_key"] or {}, where)
        account_id = account_id_for_key(key_json)
        record = AccountRecord(server=server, account_id=account_id,
                               meta=json.dumps(fields["meta"]), private_key=key_json,
                               regr=json.dumps(fields["regr"]))
        record.check(reader.where("account"))
    except RecordError as e:
        plan.failed.append(("account", str(e)))
        return None
    uri = (fields["regr"] or {}).get("uri")
    if isinstance(uri, str) and urllib.parse.urlparse(uri).netloc \
            != urllib.parse.urlparse(server).netloc:
        plan.warnings.append(f"warning: the account's URI ({uri}) is not at --server "
                             f"{server}; its renewals will fail unless --server names its CA.")
    theirs = (reader.read("account/extra_details") or {}).get("account_id")
    if theirs and theirs != account_id:
        plan.warnings.append(f"warning: {reader.where('account/extra_details')} says account "
                             f"{theirs}, but its key's id is {account_id}: imported as "
                             f"{account_id}.")
    plan.items.append(Item(
        f"account {account_id}",
        layout.where("accounts", server_path_for_url(server), account_id),
        reader.where("account/"), f"ACME account {account_id} at {server}", record))
    return record


@dataclasses.dataclass
class Found:
    """One certificate of theirs: our record made of it, or why not."""

    name: str
    record: Optional[LineageRecord]
    sources: list[str]
    error: Optional[str] = None


def _found(reader: _Reader, conf: _ConfMaker, sub: str, cert_field: str) -> Found:
    key = sub.rpartition("/")[2]
    where = reader.where(sub)
    name = key[2:] if key.startswith("*.") else key  # certbot's lineage name drops '*.'
    try:
        d = reader.read(sub) or {}
        record = conf.lineage(validate_name(name), d.get(cert_field), d.get("chain"),
                              d.get("privkey"), where, cert_field)
    except FATAL:
        raise
    except (RecordError, VaultError) as e:
        return Found(name, None, [where], str(e))
    return Found(name, record, [where])


def _epages_lineages(reader: _Reader, conf: _ConfMaker, workers: int) -> list[Found]:
    keys = [f"certificates/{k}" for k in reader.list("certificates")]
    return [f for _, f in parallel(keys, lambda k: _found(reader, conf, k, "cert"),
                                        workers)]


# ---- certbot-vault-installer ---------------------------------------------------------------


def _installer_lineages(reader: _Reader, conf: _ConfMaker, workers: int) -> list[Found]:
    # Without --vault-single the plugin writes one copy per name of the certificate:
    # one lineage, named (as certbot names it) by the first name the certificate lists.
    copies: dict[str, list[Found]] = {}
    out: list[Found] = []
    for _, f in parallel(reader.list(""), lambda k: _found(reader, conf, k, "crt"),
                              workers):
        if f.record is None:
            out.append(f)
        else:
            copies.setdefault(f.record.pems.cert + f.record.pems.privkey, []).append(f)
    for same in copies.values():
        info = same[0].record.info if same[0].record else None
        first = info.domains[0] if info and info.domains else ""
        first = first[2:] if first.startswith("*.") else first
        keep = next((f for f in same if f.name == first), same[0])
        keep.sources = sorted(s for f in same for s in f.sources)
        out.append(keep)
    return sorted(out, key=lambda f: f.name)


class _ConfMaker:
    """Our lineage record from their PEMs: fullchain and renewal conf as certbot makes them."""

    def __init__(self, server: str, account: Optional[str], dns: Optional[str]) -> None:
        self.server, self.account, self.dns = server, account, dns

    def lineage(self, name: str, cert: Any, chain: Any, privkey: Any, where: str,
                cert_field: str) -> LineageRecord:
        given = {cert_field: cert, "chain": chain, "privkey": privkey}
        missing = [k for k, v in given.items() if not isinstance(v, str) or not v.strip()]
        if missing:
            raise RecordError(f"{where} is missing {', '.join(missing)}.")
        cert_pem, chain_pem = _pem(cert), _pem(chain)
        pems = PemSet(cert=cert_pem, chain=chain_pem, fullchain=cert_pem + chain_pem,
                      privkey=_pem(privkey))
        info = inspect_pems(pems, where)
        record = LineageRecord(name=name, version=1, pems=pems,
                               renewal=self.conf(name, pems.privkey), auto_renewable=True)
        record.info = info
        return record

    def conf(self, name: str, privkey: str) -> str:
        params = {"account": self.account} if self.account else {}
        params["authenticator"] = "kvault" if self.dns else "standalone"
        if self.dns:
            params["kvault_dns"] = self.dns
        return portable.new_conf(name, {**params, "server": self.server,
                                            **_key_params(privkey)})


def _pem(text: str) -> str:
    """A PEM as certbot's files hold it: ending in one newline."""
    return text.strip() + "\n"


def _key_params(privkey: str) -> dict[str, str]:
    """key_type and its size/curve, so a renewal keeps the kind of key they had."""
    key = serialization.load_pem_private_key(privkey.encode(), password=None)
    if isinstance(key, rsa.RSAPrivateKey):
        return {"key_type": "rsa", "rsa_key_size": str(key.key_size)}
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"key_type": "ecdsa", "elliptic_curve": key.curve.name}
    return {}


def _our_account(layout: Layout, opts: Options) -> Optional[str]:
    """--account, else the only account of ours on --server (None: certbot's choice)."""
    server_path = server_path_for_url(opts.server)
    ours = sorted(i for s, i in layout.list_accounts() if s == server_path)
    if opts.account:
        if opts.account not in ours:
            raise MigrationError(f"--account {opts.account}: no such account in "
                                 f"{layout.where('accounts', server_path)}/.")
        return opts.account
    return ours[0] if len(ours) == 1 else None


# ---- writing ours ---------------------------------------------------------------------------


def apply(layout: Layout, plan: Plan, *, force: bool = False, dry_run: bool = False,
          progress: Tick = None) -> Report:
    """Write the plan's records: absent ones, identical ones count as unchanged, others
    are refused unless ``force`` (a lineage then becomes the next version, Vault's one
    kept in its archive). ``dry_run``: decide the same, write nothing."""
    report = Report(failed=list(plan.failed), warnings=list(plan.warnings))
    # DNS entries and accounts first: the lineages' confs name them.
    for done, item in enumerate(plan.items, 1):
        try:
            changed = _apply_one(layout, item, force, dry_run)
        except FATAL:
            raise
        except (RecordError, VaultError) as e:  # a lost race included: one line, the rest go on
            report.failed.append((item.item, str(e)))
        else:
            (report.written if changed else report.unchanged).append(item.item)
        if progress is not None:
            progress(done, len(plan.items))
    return report


def _apply_one(layout: Layout, item: Item, force: bool, dry_run: bool) -> bool:
    rec = item.record
    how = " (a lineage as its next version)" if isinstance(rec, LineageRecord) else ""
    refuse = RecordError(f"{item.where} exists with other content; --force replaces it{how}.")
    if isinstance(rec, dict):
        name = item.item.split(" ", 1)[1]
        ours_dns = layout.load_dns(name)
        if ours_dns == rec:
            return False
        if ours_dns is not None and not force:
            raise refuse
        if not dry_run:
            layout.save_dns(name, rec, cas=None if force else 0)
        return True
    if isinstance(rec, AccountRecord):
        entry = layout.vault.read(layout.path("accounts", rec.server_path, rec.account_id))
        if entry is not None:
            try:
                if _same_json(AccountRecord.from_kv(rec.server_path, rec.account_id, entry,
                                                    item.where).to_kv(), rec.to_kv()):
                    return False
            except RecordError:
                pass
            if not force:
                raise refuse
        if not dry_run:
            layout.save_account(rec, cas=entry.version if entry else 0)
        return True
    entry = layout.read_lineage_raw(rec.name)
    record = rec
    if entry is not None:
        try:
            ours: Optional[LineageRecord] = LineageRecord.from_kv(rec.name, entry, item.where)
        except RecordError:
            ours = None
        if ours is not None and (ours.same_content(rec) or (
                ours.pems == rec.pems and ours.renewal == rec.renewal)):
            return False
        if not force:
            raise refuse
        if ours is not None:
            record = dataclasses.replace(rec, version=ours.version + 1,
                                         archive={**ours.archive, ours.version: ours.pems})
    if not dry_run:
        layout.save_lineage(record, cas=entry.version if entry else 0)
    return True


def _same_json(ours: dict[str, Any], theirs: dict[str, Any]) -> bool:
    """Equal as JSON, not as text: `vault kv put @meta.json` (their way) stores the JSON's
    keys, which Vault gives back sorted; ours holds the text certbot wrote."""
    return ours["server"] == theirs["server"] and all(
        json.loads(ours[f]) == json.loads(theirs[f]) for f in ("meta", "private_key", "regr"))
