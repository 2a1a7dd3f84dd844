"""certbot-kvault (manual written below)."""
