"""The due rule and the renewal memory as pure functions (no server): certbot's branches
one by one, the backoff schedule, and state records that anyone with write access could
have edited. The rule is checked against real certbot runs in test_due_ages.py."""
from __future__ import annotations

import pytest

from certbot_kvault._internal.renew import due
from certbot_kvault._internal.store.state import (
    MalformedState,
    RenewalState,
    backoff_seconds,
    one_line,
)
from certbot_kvault._internal.store.timefmt import CLOCK_SKEW, floor_time, format_time, parse_time

DAY = 86400.0
NOW = 1_800_000_000.0
CRAFTED_TIME = "9999-12-31T23:59:59-23:59"


def _decide(lifetime_days: float, age_days: float, *, rbe: str | None = None,
            ari: float | None = None, autorenew: bool = True) -> due.Decision:
    not_before = NOW - age_days * DAY
    settings = due.ConfSettings(autorenew=autorenew, renew_before_expiry=rbe)
    return due.decide(not_before, not_before + lifetime_days * DAY, settings, ari_time=ari,
                      now=NOW)


@pytest.mark.parametrize(("lifetime", "point"), [(6, 3), (9.9, 4.95), (10, 20 / 3),
                                                 (45, 30), (64, 128 / 3), (90, 60)])
def test_lifetime_rule_half_under_ten_days_else_two_thirds(lifetime: float,
                                                           point: float) -> None:
    before = _decide(lifetime, point - 0.01)
    after = _decide(lifetime, point + 0.01)
    assert not before.due and after.due
    assert before.reason == after.reason == due.LIFETIME
    assert before.when == pytest.approx(NOW - (point - 0.01) * DAY + point * DAY)


def test_renew_before_expiry_replaces_the_lifetime_rule() -> None:
    # 90-day cert at 61 days: past 2/3, but renew_before_expiry = 20 days says not yet.
    d = _decide(90, 61, rbe="20 days")
    assert not d.due and d.reason == due.BEFORE_EXPIRY
    assert d.when == pytest.approx(NOW + 9 * DAY)
    # ...and it may say due before 2/3.
    assert _decide(90, 55, rbe="40 days").due
    assert _decide(90, 55, rbe="36").due            # a bare number is days, as in certbot
    assert not _decide(90, 55, rbe="2 weeks").due


def test_an_unparsable_interval_renews_only_once_expired() -> None:
    """certbot's add_time_interval adds nothing for text it cannot parse."""
    assert not _decide(90, 89, rbe="soonish").due
    assert _decide(90, 91, rbe="soonish").due


def test_ari_time_decides_when_present() -> None:
    # ARI passed: due, whatever the lifetime says.
    d = _decide(90, 10, ari=NOW - 60)
    assert d.due and d.reason == due.ARI
    # ARI in the future and no renew_before_expiry: not due, even past 2/3 (certbot's
    # "only use the default if we don't have an ARI or renew_before_expiry value").
    d = _decide(90, 70, ari=NOW + DAY)
    assert not d.due and d.reason == due.ARI and d.when == NOW + DAY
    # ARI in the future but renew_before_expiry fires: due.
    assert _decide(90, 70, ari=NOW + DAY, rbe="30 days").due


def test_autorenew_off_is_never_due() -> None:
    d = _decide(90, 95, autorenew=False)
    assert not d.due and d.when is None and d.reason == due.DISABLED


def test_conf_settings_read_from_the_conf_text() -> None:
    text = ("version = 5.8.0\nrenew_before_expiry = 30 days\narchive_dir = x\n"
            "[renewalparams]\nautorenew = False\nserver = https://acme.example/dir\n"
            "preferred_profile = shortlived\n")
    s = due.conf_settings(text)
    assert s == due.ConfSettings(autorenew=False, renew_before_expiry="30 days",
                                 server="https://acme.example/dir",
                                 preferred_profile="shortlived")
    assert due.conf_settings("[renewalparams\nbroken") == due.ConfSettings()
    assert due.conf_settings("# renew_before_expiry = 30 days\n").renew_before_expiry is None


def test_backoff_doubles_from_an_hour_capped_at_a_day_and_a_tenth_of_the_lifetime() -> None:
    assert [backoff_seconds(n, 90 * DAY) / 3600 for n in range(0, 8)] == \
        [0, 1, 2, 4, 8, 16, 24, 24]
    assert backoff_seconds(6, 6 * DAY) == pytest.approx(0.6 * DAY)   # 14.4 h for 6 days
    assert backoff_seconds(3, 150) == 15                               # 2.5-minute certs
    assert backoff_seconds(10_000, None) == DAY


def test_state_remembers_failures_and_forgets_them_on_success() -> None:
    st = RenewalState()
    st.failed("Some challenges have failed.\nDetail: https://x/?token=s3cret", NOW, 90 * DAY)
    st.failed("again", NOW + 3600, 90 * DAY)
    assert st.failures == 2 and st.next_attempt == NOW + 3600 + 7200
    assert st.in_backoff(NOW + 3600 + 7199) and not st.in_backoff(NOW + 3600 + 7200)
    st.ari_answer("ab12", NOW, NOW + DAY, NOW + 100, NOW + 6 * 3600)
    back = RenewalState.from_kv(st.to_kv(), now=NOW + 3600)
    assert (back.failures, back.last_error, back.ari_time) == (2, "again", NOW + 100)
    assert back.ari_for("ab12") == NOW + 100 and back.ari_for("other") is None
    assert not back.ari_check_due("ab12", NOW + 3600) and back.ari_check_due("other", NOW)
    back.succeeded(NOW + 9000)
    kv = back.to_kv()
    assert kv["consecutive_failures"] == 0 and "last_error" not in kv
    assert "next_attempt" not in kv and "ari_renewal_time" not in kv


def test_one_line_errors_carry_no_secret_and_no_newline() -> None:
    line = one_line("failed:\n https://acme.example/x?api_key=s3cret&a=b\n" + "x" * 500)
    assert "\n" not in line and "s3cret" not in line and len(line) <= 300


def test_an_error_from_vault_puts_no_terminal_escape_on_screen() -> None:
    """A Vault writer plants an escape sequence in state/<name>'s last_error."""
    st = RenewalState.from_kv({"consecutive_failures": 1, "last_error": "\x1b]0;pwned\x07 bad"})
    assert st.last_error == "\\x1b]0;pwned\\x07 bad"
    assert st.last_error.isprintable()


@pytest.mark.parametrize(("data", "field"), [
    ({"consecutive_failures": "lots", "next_attempt": "tomorrow"}, "consecutive_failures"),
    ({"consecutive_failures": -4}, "consecutive_failures"),
    ({"consecutive_failures": True}, "consecutive_failures"),
    ({"consecutive_failures": 1, "last_error": 7}, "last_error"),
    ({"ari_renewal_time": ["x"]}, "ari_renewal_time"),
    ({"serial": {"a": 1}}, "serial"),
    ({"next_attempt": "tomorrow"}, "next_attempt"),
    # The crafted time: it parses, and lies in the year 10000.
    ({"consecutive_failures": 1, "last_attempt": "2027-01-15T08:00:00Z",
      "next_attempt": "9999-12-31T23:59:59-23:59"}, "next_attempt"),
    ({"last_success": "0001-01-01T00:00:00+23:59"}, "last_success"),
])
def test_a_broken_state_record_is_refused_whole(data: dict[str, object], field: str) -> None:
    """A Vault writer can make a lineage renew early, never stop it for good: a record
    with one field wrong is not read at all (renew/status.py then decides without it)."""
    with pytest.raises(MalformedState, match=field):
        RenewalState.from_kv(data, now=NOW)


def test_state_times_are_bounded_by_what_a_renewer_writes() -> None:
    """next_attempt at most the backoff cap after the last attempt, no attempt in the
    future, the ARI next check at most the CA's longest Retry-After (1 day) from now."""
    def read(**fields: object) -> RenewalState:
        return RenewalState.from_kv({"consecutive_failures": 5, **fields}, now=NOW)

    def ts(seconds: float) -> str:
        return format_time(NOW + seconds)

    ok = read(last_attempt=ts(-60), next_attempt=ts(-60 + DAY))
    assert ok.in_backoff(NOW)
    with pytest.raises(MalformedState, match="next_attempt .* backoff cap"):
        read(last_attempt=ts(-60), next_attempt=ts(30 * DAY))
    with pytest.raises(MalformedState, match="without last_attempt"):
        read(next_attempt=ts(3600))
    with pytest.raises(MalformedState, match="last_attempt .* in the future"):
        read(last_attempt=ts(2 * DAY), next_attempt=ts(2 * DAY + 3600))
    read(last_attempt=ts(CLOCK_SKEW - 10))   # another renewer's clock a little ahead
    assert read(ari_next_check=ts(DAY)).ari_next_check == NOW + DAY
    with pytest.raises(MalformedState, match="ari_next_check"):
        read(ari_next_check=ts(7 * DAY))


def test_times_from_vault_are_total() -> None:
    """Reading answers None for anything but an RFC 3339 time from 1970 to 9000 (the crafted
    one of the issue parses in Python and lies in the year 10000); formatting clamps."""
    assert parse_time("2027-01-15T08:00:00+01:00") == parse_time("2027-01-15T07:00:00Z")
    for text in (CRAFTED_TIME, "0001-01-01T00:00:00+23:59", "1969-12-31T23:59:59Z",
                 "9000-01-01T00:00:01Z", "x" * 10_000, 1_800_000_000, ["2027-01-01"]):
        assert parse_time(text) is None, text
    assert floor_time(1e300) == "9000-01-01T00:00:00Z" and format_time(-1e12) == \
        "1970-01-01T00:00:00Z" and floor_time(float("nan")) == "1970-01-01T00:00:00Z"


def test_interval_longer_than_the_lifetime_is_due_since_issuance() -> None:
    """`renew_before_expiry = 5000 years` (certbot parses it): due, and its time printable."""
    d = _decide(90, 10, rbe="5000 years")
    assert d.due and d.when == NOW - 10 * DAY
    floor_time(d.when or 0)
