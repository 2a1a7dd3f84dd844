"""The executables certbot-kvault hands to other processes: where ``certbot-kvault`` is.

The deploy hook that the CLI (``pull``, ``import``, ``renew``, ``run``) and the
plugin write into certbot's config dir calls this path, so it lives below
both of them.
"""
from __future__ import annotations

import os
import shutil
import sys
from typing import Optional


def kvault_bin() -> Optional[str]:
    """The certbot-kvault executable the deploy hook should call."""
    beside = os.path.join(os.path.dirname(sys.executable), "certbot-kvault")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("certbot-kvault")
