"""`certbot-kvault dns ...`: manage DNS provider credentials in Vault."""
from __future__ import annotations
