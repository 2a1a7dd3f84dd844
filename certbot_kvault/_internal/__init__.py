"""Implementation of certbot-kvault; not a public API.

One folder per area, and the areas are layers: a module imports from its own
area and from the areas on lower lines, never from a line above nor from
another area on its own line (imports inside functions and under
``TYPE_CHECKING`` included). docs/DESIGN.md draws the same and names every
module; tests/test_structure.py checks the imports against its drawing:

    cli/     plugin      the commands; the certbot plugin
    apps/    renew/      export, watch, import; renewing the fleet
    sync/                pull and push between the config dir and Vault
    tree/    dns/        certbot's config dir on disk; DNS-01
    store/               what lives in Vault: records, where, their bounds
    vault/               the Vault connection

Each area's ``__init__`` (the plugin's and the CLI's module docstrings) says
what it owns and what it may import.
"""
