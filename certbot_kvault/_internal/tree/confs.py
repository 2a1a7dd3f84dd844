"""Renewal confs parsed as data: configobj with interpolation off, templates found.

configobj expands ``%(name)s`` in every value it hands out unless told not to
(ConfigParser style), and a name it cannot find raises at the first read of the
value, far from the parse; certbot itself reads renewal confs that way. A conf
in Vault is written by any renewer's token, so every conf this package parses,
from Vault or from disk, is parsed here, with interpolation off: a value is
what the text says. ``drop_templates`` takes out the values certbot would
expand, for the screen of Vault's confs (trust.py) to name them; none
may reach a conf on disk. A conf that cannot be parsed (bad syntax, duplicate
keys, bytes that are not UTF-8) is a ``ConfError`` with a one-line reason.
"""
from __future__ import annotations

import io

import configobj

# What configobj's (and so certbot's) ConfigParser-style interpolation expands.
TEMPLATE = "%("


class ConfError(ValueError):
    """A conf cannot be parsed; the message is one line, without the conf's text."""


def parse_text(text: str) -> configobj.ConfigObj:
    """A conf from its text (a record's ``renewal`` field)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfError(f"not UTF-8 text (at character {e.start})") from None
    try:
        return configobj.ConfigObj(io.StringIO(text), encoding="utf-8",
                                   default_encoding="utf-8", interpolation=False)
    except configobj.ConfigObjError as e:
        raise ConfError(_reason(e)) from None


def parse_file(path: str) -> configobj.ConfigObj:
    """A conf from a file (OSError if it cannot be read)."""
    with open(path, "rb") as f:
        return parse_bytes(f.read())


def parse_bytes(data: bytes) -> configobj.ConfigObj:
    """A conf from a file's bytes (UTF-8, a BOM allowed, as certbot reads it)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfError(f"not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") \
            from None
    return parse_text(text)


def _reason(e: configobj.ConfigObjError) -> str:
    """configobj's first error, one line: several are reported as "several errors"."""
    errors = getattr(e, "errors", None) or [e]
    return " ".join(str(errors[0]).split()).rstrip(".") or type(e).__name__


def templated(value: object) -> bool:
    """Whether certbot would expand something in a value (a string or a list of them)."""
    if isinstance(value, str):
        return TEMPLATE in value
    if isinstance(value, (list, tuple)):
        return any(isinstance(v, str) and TEMPLATE in v for v in value)
    return False


def drop_templates(section: configobj.Section,
                   path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Remove every value holding a template, in ``section`` and below; where each was
    (section names, then the key: ``("renewalparams", "server")``)."""
    dropped = []
    for key in list(section.scalars):
        if templated(section[key]):
            del section[key]
            dropped.append((*path, key))
    for sub in list(section.sections):
        dropped += drop_templates(section[sub], (*path, sub))
    return dropped
