"""Keep secrets that ride inside URLs out of error texts and logs.

DNS providers' APIs (through dns-lexicon) often take the API key as a query
parameter, and requests/urllib3 put the full URL into exception texts and
DEBUG log lines. Every query value and every ``user:password@`` of a URL is
replaced: which keys are secret differs per provider, and no message needs
the values.
"""
from __future__ import annotations

import logging
import re

REDACTED = "REDACTED"

_QUERY_VALUE = re.compile(r"([?&][^=&#\s'\"?]+=)[^&#\s'\")]+")
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@'\"]+@")

# The loggers that write request URLs: urllib3's request, retry and redirect lines.
URL_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.poolmanager",
               "requests")


def redact(text: str) -> str:
    """``text`` with every URL query value and URL password replaced by REDACTED."""
    if "=" not in text and "@" not in text:
        return text
    return _USERINFO.sub(rf"\1{REDACTED}@", _QUERY_VALUE.sub(rf"\1{REDACTED}", text))


def one_line(e: BaseException) -> str:
    """An exception as one line for a user: whitespace folded, URL secrets redacted."""
    return redact(" ".join(str(e).split())) or type(e).__name__


def printable(text: str, limit: int) -> str:
    """A value from Vault as safe to print: non-printable characters escaped (no terminal
    escape reaches a screen), at most ``limit`` characters."""
    shown = text if text.isprintable() else ascii(text)[1:-1]
    return shown if len(shown) <= limit else shown[:limit - 1] + "…"


class RedactFilter(logging.Filter):
    """Rewrite a record's message (and traceback text) with URL secrets redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record stays as it is
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = RedactFilter()


def install() -> None:
    """Attach the filter to the loggers that write URLs (idempotent).

    A logger's filters see only the records logged on that very logger, not
    those of its children, so each one is named.
    """
    for name in URL_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


install()
