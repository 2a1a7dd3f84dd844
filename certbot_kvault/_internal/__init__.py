"""Implementation of certbot-kvault; not a public API."""
