"""Where certbot state lives in Vault: the path of each record, in domain words.

All paths are below ``<mount>/<prefix>/``::

    accounts/<server>/<account-id>   meta, private_key, regr, server
    certificates/<lineage>           cert, chain, fullchain, privkey, renewal, version,
                                     domains, not_before, not_after, serial, key_type,
                                     auto_renewable, updated_at, archive, issued
    dns/<name>                       provider, zones + the provider's options
    locks/<name>                     owner, expires_at
    state/<lineage>                  what renewers remember between runs (state.py)

``archive`` (an extension to the record table in docs/DESIGN.md) holds the
lineage's earlier archive versions, so a pulled tree keeps certbot's history
exactly as it was. What a record holds and how it is checked is records.py's.
"""
from __future__ import annotations

import time
from typing import Any, Iterator, Optional

from certbot_kvault._internal.store.records import (
    MAX_NAME_BYTES,
    AccountRecord,
    LineageRecord,
    RecordError,
    validate_name,
    validate_server_path,
)
from certbot_kvault._internal.store.state import MalformedState, RenewalState
from certbot_kvault._internal.vault.client import KVEntry, VaultClient
from certbot_kvault._internal.vault.errors import VaultPathMissing


class Layout:
    """certbot state in Vault, in domain words."""

    def __init__(self, vault: VaultClient) -> None:
        self.vault = vault
        self.prefix = vault.settings.prefix

    def path(self, *parts: str) -> str:
        """A record's KV path below the mount (``<prefix>/<parts...>``)."""
        return "/".join(p for p in (self.prefix, *parts) if p)

    def where(self, *parts: str) -> str:
        """A path as a user would type it for `vault kv get` (mount/prefix/...)."""
        return f"{self.vault.mount}/{self.path(*parts)}"

    def winner(self, path: str, lost_against: Optional[int]) -> Optional[KVEntry]:
        """The record that beat our check-and-set write against ``lost_against``.

        A standby may not have the winner's write yet (a lost check-and-set
        answer carries no X-Vault-Index to wait for): look again for a moment
        while it still shows the version we wrote against.
        """
        deadline = time.monotonic() + 2.0
        while True:
            entry = self.vault.read(path)
            if (entry is not None and entry.version != lost_against) \
                    or time.monotonic() >= deadline:
                return entry
            time.sleep(0.1)

    # ---- lineages ---------------------------------------------------------

    def list_lineages(self) -> list[str]:
        return sorted(k for k in self.vault.list_keys(self.path("certificates"))
                      if not k.endswith("/"))

    def lineage_names(self) -> tuple[list[str], list[str]]:
        """The lineages listed, and a one-line reason for each other key below
        certificates/: a name no lineage may have (nothing can be read or written under
        it, and the reason shows it escaped)."""
        names, bad = [], []
        for name in self.list_lineages():
            try:
                names.append(validate_name(name))
            except RecordError as e:
                bad.append(f"{self.where('certificates')}: {e}")
        return names, bad

    def read_lineage_raw(self, name: str) -> Optional[KVEntry]:
        validate_name(name)
        return self.vault.read(self.path("certificates", name))

    def load_lineage(self, name: str) -> Optional[LineageRecord]:
        entry = self.read_lineage_raw(name)
        if entry is None:
            return None
        return LineageRecord.from_kv(name, entry, self.where("certificates", name))

    @property
    def versioned(self) -> bool:
        """Does the mount keep versions (KV v2), so a lineage's version is cheap to ask?"""
        return self.vault.kv_version == 2

    def lineage_version(self, name: str) -> Optional[int]:
        """The KV version of certificates/<name> from its metadata alone (no PEMs read);
        None when absent or its latest version is deleted, and always on KV v1, which
        keeps no versions."""
        return self.vault.current_version(self.path("certificates", validate_name(name)),
                                          live=True)

    def save_lineage(self, record: LineageRecord, cas: Optional[int] = None) -> Optional[int]:
        record.check(f"lineage {record.name}")
        return self.vault.write(self.path("certificates", validate_name(record.name)),
                                record.to_kv(), cas=cas if self.vault.kv_version == 2 else None)

    def delete_lineage(self, name: str, purge: bool = False) -> None:
        self.vault.delete(self.path("certificates", validate_name(name)), purge=purge)

    # ---- renewal state (never a new version of the certificate) ---------------

    def load_state(self, name: str, now: Optional[float] = None) -> Optional[RenewalState]:
        """The lineage's memory; MalformedState (naming its path) if it cannot be trusted."""
        entry = self.vault.read(self.path("state", validate_name(name)))
        if entry is None:
            return None
        try:
            return RenewalState.from_kv(entry.data if isinstance(entry.data, dict) else {},
                                        entry.version, now)
        except MalformedState as e:
            raise MalformedState(f"{self.where('state', name)}: {e}") from None

    def save_state(self, name: str, state: RenewalState) -> None:
        """Last writer wins: two renewers of one lineage hold its lock in turn."""
        self.vault.write(self.path("state", validate_name(name)), state.to_kv())

    def delete_state(self, name: str, purge: bool = False) -> None:
        """Forget a lineage's renewal memory; a lineage that never had any is fine."""
        try:
            self.vault.delete(self.path("state", validate_name(name)), purge=purge)
        except VaultPathMissing:
            pass

    # ---- accounts -----------------------------------------------------------

    def list_accounts(self) -> Iterator[tuple[str, str]]:
        """(server_path, account_id) pairs; server paths have '/' in them, so walk."""
        base = self.path("accounts")
        stack = [""]
        while stack:
            sub = stack.pop()
            for key in self.vault.list_keys(f"{base}/{sub}".rstrip("/")):
                if key.endswith("/"):
                    stack.append(f"{sub}{key}")
                elif sub:
                    yield sub.rstrip("/"), key

    def load_account(self, server_path: str, account_id: str) -> Optional[AccountRecord]:
        validate_server_path(server_path)
        validate_name(account_id, "account")
        entry = self.vault.read(self.path("accounts", server_path, account_id))
        if entry is None:
            return None
        return AccountRecord.from_kv(server_path, account_id, entry,
                                     self.where("accounts", server_path, account_id))

    def save_account(self, record: AccountRecord, cas: Optional[int] = None) -> Optional[int]:
        record.check(f"account {record.account_id}")
        return self.vault.write(self.path("accounts", record.server_path, record.account_id),
                         record.to_kv(), cas=cas if self.vault.kv_version == 2 else None)

    # ---- DNS credentials ------------------------------------------------------

    def list_dns(self) -> list[str]:
        return sorted(k for k in self.vault.list_keys(self.path("dns")) if not k.endswith("/"))

    def load_dns(self, name: str) -> Optional[dict[str, Any]]:
        entry = self.vault.read(self.path("dns", validate_name(name, "DNS entry")))
        return None if entry is None else entry.data

    def save_dns(self, name: str, data: dict[str, Any], cas: Optional[int] = None) -> None:
        """``cas=0``: only if absent (KV v2; KV v1 cannot check)."""
        self.vault.write(self.path("dns", validate_name(name, "DNS entry")), data,
                         cas=cas if self.vault.kv_version == 2 else None)

    def delete_dns(self, name: str, purge: bool = True) -> None:
        self.vault.delete(self.path("dns", validate_name(name, "DNS entry")), purge=purge)

    # ---- locks (raw access; the lease logic lives in renew/locks.py) -------------------

    def lock_path(self, name: str) -> str:
        # No file is named after a lock: a lineage's (renew/locks.py: "lineage-" + its name) may
        # be as long as the longest lineage name allows.
        return self.path("locks", validate_name(name, "lock", MAX_NAME_BYTES + len("lineage-")))
