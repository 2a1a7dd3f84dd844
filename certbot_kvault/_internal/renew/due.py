"""When a lineage is due: certbot's own rule, decided from what Vault holds.

certbot 5 (``certbot/_internal/renewal.py``, ``should_autorenew``) renews a
lineage whose ``autorenew`` is not off when

1. the ARI suggested renewal time (RFC 9773: a random point in the CA's
   suggested window) has passed; otherwise
2. ``renew_before_expiry`` (top level of the renewal conf, e.g. ``30 days``)
   is set and the certificate expires within it; otherwise, only when neither
   ARI nor ``renew_before_expiry`` gives an answer,
3. 2/3 of the certificate's lifetime has passed (1/2 when the lifetime is
   under 10 days).

certbot also renews a certificate its OCSP responder says is revoked; Let's
Encrypt ended OCSP in 2025 and a stateless planner has no OCSP answer to
remember, so that branch is not followed here (certbot itself still applies it
whenever it runs over a lineage).

One difference, on purpose: certbot forgets the ARI answer between runs (it
keeps only the next time it may ask), so between two ARI checks it falls
back to rules 2 and 3. certbot-kvault keeps the answer in Vault (state.py)
and applies rule 1 until the next check.

And one addition, the storm guard (``storm_guard``): a certificate that came
from a renewal is not renewed again before a tenth of its lifetime has passed
since its not_before, whatever ARI, ``renew_before_expiry`` or a conf in
Vault say (a stale ARI window, or ``renew_before_expiry = 100 years`` planted
or mistyped, would otherwise order a certificate every run until the CA's
duplicate-certificate limit). plan.py skips such a lineage with one line;
certbot's ``--force-renewal`` lifts it. A certificate with nine tenths of its
lifetime left cannot expire while held back.

Everything here is pure: timestamps in, a :class:`Decision` out.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
from typing import Any, Optional

from certbot_kvault._internal.tree import confs

ARI = "ari"
BEFORE_EXPIRY = "renew_before_expiry"
LIFETIME = "lifetime"
DISABLED = "autorenew off"

_SHORT_LIFETIME = 10 * 86400
STORM_GUARD_SHARE = 0.1


@dataclasses.dataclass(frozen=True)
class ConfSettings:
    """What a renewal conf says about when to renew (and with which profile)."""

    autorenew: bool = True
    renew_before_expiry: Optional[str] = None
    server: Optional[str] = None
    preferred_profile: Optional[str] = None
    required_profile: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Decision:
    """Whether to renew now; ``when`` is the time the rule says (None: never)."""

    due: bool
    when: Optional[float]
    reason: str

    def describe(self) -> str:
        if self.reason == DISABLED:
            return "automatic renewal is off (autorenew = False)"
        what = {ARI: "the CA's ARI window", BEFORE_EXPIRY: "renew_before_expiry",
                LIFETIME: "the lifetime rule"}[self.reason]
        return f"due by {what}" if self.due else f"not due yet ({what})"


def conf_settings(conf_text: str) -> ConfSettings:
    """The timing settings of a renewal conf's text (defaults for what is missing)."""
    try:
        conf = confs.parse_text(conf_text)
    except confs.ConfError:
        return ConfSettings()
    params = conf.get("renewalparams")
    params = params if isinstance(params, dict) else {}

    def text(value: object) -> Optional[str]:
        # A template is no setting: the pull drops it (trust.py).
        if not isinstance(value, str) or not value.strip() or confs.templated(value):
            return None
        return value.strip()

    autorenew = str(text(params.get("autorenew")) or "True").lower() not in (
        "false", "no", "off", "0")
    return ConfSettings(
        autorenew=autorenew,
        renew_before_expiry=text(conf.get("renew_before_expiry")),
        server=text(params.get("server")),
        preferred_profile=text(params.get("preferred_profile")),
        required_profile=text(params.get("required_profile")))


def add_interval(base: float, interval: str) -> float:
    """``base`` plus a certbot interval (``30 days``, ``2 weeks``, ``36`` = days).

    The same parsing as certbot's ``storage.add_time_interval`` (parsedatetime),
    including its answer for text it cannot parse: ``base`` itself (so such a
    lineage renews once it has expired).
    """
    text = interval.strip()
    if text.isdigit():
        text += " days"
    start = datetime.datetime.fromtimestamp(base, tz=datetime.timezone.utc)
    result = _calendar().parseDT(text, start, tzinfo=datetime.timezone.utc)[0]
    return float(result.timestamp())


def default_renewal_time(not_before: float, not_after: float) -> float:
    """certbot's fallback: 2/3 of the lifetime, 1/2 when it is under 10 days."""
    lifetime = not_after - not_before
    if lifetime < _SHORT_LIFETIME:
        return not_before + lifetime / 2
    return not_before + lifetime * 2 / 3


def storm_guard(not_before: float, not_after: float, *, renewed: bool,
                now: float) -> Optional[float]:
    """Until when a certificate that ``renewed`` (came from a renewal) is held back; None
    when it is not (a first issuance, or a tenth of its lifetime has passed)."""
    lifetime = not_after - not_before
    until = not_before + lifetime * STORM_GUARD_SHARE
    return until if renewed and lifetime > 0 and now < until else None


def decide(not_before: float, not_after: float, settings: ConfSettings, *,
           ari_time: Optional[float], now: float) -> Decision:
    """certbot's ``should_autorenew`` (without its OCSP branch), from timestamps."""
    if not settings.autorenew:
        return Decision(False, None, DISABLED)
    if ari_time is not None and now > ari_time:
        return Decision(True, ari_time, ARI)
    candidates: list[tuple[float, str]] = []
    if ari_time is not None:
        candidates.append((ari_time, ARI))
    rbe = settings.renew_before_expiry
    if rbe is not None:
        when = not_after - (add_interval(now, rbe) - now)
        if now > when:  # i.e. not_after < now + interval, certbot's test
            # An interval longer than the lifetime (``100 years``): due since issuance.
            return Decision(True, max(when, not_before), BEFORE_EXPIRY)
        candidates.append((when, BEFORE_EXPIRY))
    elif ari_time is None:
        when = default_renewal_time(not_before, not_after)
        if now > when:
            return Decision(True, when, LIFETIME)
        candidates.append((when, LIFETIME))
    when, reason = min(candidates)
    return Decision(False, when, reason)


@functools.cache
def _calendar() -> Any:
    """parsedatetime's calendar, made when a conf first sets renew_before_expiry: it
    compiles a great many patterns, which `list` of a default fleet never needs."""
    import parsedatetime

    return parsedatetime.Calendar(version=parsedatetime.VERSION_CONTEXT_STYLE)
