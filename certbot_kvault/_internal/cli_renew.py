"""`certbot-kvault run` and `certbot-kvault renew`: stateless certbot runs against Vault."""
from __future__ import annotations
