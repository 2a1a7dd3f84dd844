"""certbot's config dir on disk, written as certbot writes it.

``files`` (the one atomic writer, modes, links switched whole), ``storage``
(lineages and accounts read and written as certbot stores them, the deploy
hook), the renewal confs: ``confs`` (parsed as data), ``trust`` (the one screen
of what a conf from Vault may decide here) and ``portable`` (a conf made
portable for Vault, and local again on pull); ``manifest`` (what this dir last
synced), ``pending`` (pushes still owed) and ``dirlock`` (certbot's lock on the
dir).

May import: store, vault.
"""
