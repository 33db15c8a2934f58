"""Configuration and group names fail at construction, with the fix in the message."""

from __future__ import annotations

import re

import pytest

from coordinator import (
    ConfigurationError,
    Coordinator,
    CoordinatorConfig,
    KeyCollisionError,
    group_lock_key,
)
from coordinator._dsn import redact_dsn
from coordinator._keys import first_invalid_group_name, validate_group_name
from helpers import COLLIDING_NAMES

DSN = "postgresql://app:s3cret@db.example:5432/app"


def test_ttl_not_greater_than_heartbeat_cycle_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"ttl .* must be greater than heartbeat"):
        CoordinatorConfig(dsn=DSN, ttl=10, heartbeat_interval=5, heartbeat_timeout=5)


def test_defaults_leave_a_safety_margin_inside_the_ttl() -> None:
    config = CoordinatorConfig(dsn=DSN)
    assert (config.ttl, config.heartbeat_interval, config.heartbeat_timeout) == (15, 5, 5)
    assert config.safety_margin == 1.0
    assert config.trust_window == 14.0


def test_short_ttls_shrink_the_default_margin_to_fit() -> None:
    config = CoordinatorConfig(dsn=DSN, ttl=1.5, heartbeat_interval=0.2, heartbeat_timeout=0.4)
    assert config.safety_margin == pytest.approx(0.45)


def test_margin_that_swallows_the_slack_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="safety_margin"):
        CoordinatorConfig(
            dsn=DSN, ttl=12, heartbeat_interval=5, heartbeat_timeout=5, safety_margin=2
        )


@pytest.mark.parametrize("name", ["", "   ", " padded", "tab\there", "x" * 201, "é" * 101])
def test_bad_group_names_are_refused(name: str) -> None:
    coord = Coordinator(DSN)
    with pytest.raises(ConfigurationError, match="group name"):
        coord.group(name)


def test_group_name_of_200_bytes_is_accepted() -> None:
    assert Coordinator(DSN).group("g" * 200).name == "g" * 200


def test_colliding_group_names_in_one_process_are_refused() -> None:
    first, second = COLLIDING_NAMES
    assert group_lock_key(first) == group_lock_key(second)
    coord = Coordinator(DSN)
    coord.group(first)
    with pytest.raises(KeyCollisionError, match="same lock key"):
        coord.group(second)


def test_a_list_with_colliding_or_bad_names_joins_none_of_them() -> None:
    """add_groups checks a whole list before it joins any of it, naming the culprit."""
    first, second = COLLIDING_NAMES
    coord = Coordinator(DSN)
    with pytest.raises(KeyCollisionError, match=f"{first!r} and {second!r}"):
        coord.add_groups(["a", first, "b", second])
    with pytest.raises(ConfigurationError, match=re.escape(repr("tab\there"))):
        coord.add_groups(["a", "b", "tab\there", "c"])
    coord.add_groups(["a", "a", "b"])  # each once
    assert sorted(coord._keys_by_name) == ["a", "b"]


NAMES = [
    "scheduler", "", " ", " padded", "padded ", "tab\there", "new\nline", "nbsp\u00a0",
    "\u00a0", "x" * 50, "x" * 51, "x" * 200, "x" * 201, "é" * 50, "é" * 100, "é" * 101,
    "日本" * 33, "日本" * 34, "🙂" * 50, "🙂" * 51,
]  # fmt: skip


@pytest.mark.parametrize("bad", range(len(NAMES)))
def test_names_checked_in_one_pass_are_refused_exactly_as_one_by_one(bad: int) -> None:
    """first_invalid_group_name finds the first name validate_group_name refuses."""

    def refused(name: str) -> bool:
        try:
            validate_group_name(name)
        except ConfigurationError:
            return True
        return False

    names = NAMES[bad:] + NAMES[:bad]
    expected = next((i for i, name in enumerate(names) if refused(name)), None)
    assert first_invalid_group_name(names) == expected
    good = [name for name in names if not refused(name)]
    assert first_invalid_group_name(good) is None


def test_lock_key_is_the_documented_stable_hash() -> None:
    # First four bytes of SHA-256("scheduler"), top bit cleared; other languages rely on it.
    assert group_lock_key("scheduler") == 539730275
    assert 0 <= group_lock_key("any name at all") <= 0x7FFF_FFFF


def test_missing_dsn_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COORDINATOR_DSN", raising=False)
    with pytest.raises(ConfigurationError, match="COORDINATOR_DSN"):
        Coordinator()


def test_schema_must_be_a_plain_identifier() -> None:
    with pytest.raises(ConfigurationError, match="schema"):
        CoordinatorConfig(dsn=DSN, schema='evil"; DROP TABLE x; --')


def test_config_repr_never_shows_the_dsn() -> None:
    config = CoordinatorConfig(dsn=DSN)
    assert "s3cret" not in repr(config)
    assert "s3cret" not in config.redacted_dsn


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app"),
        (
            "postgresql://app@db/app?password=s3cret&sslmode=require",
            "postgresql://app@db/app?password=***&sslmode=require",
        ),
        ("host=db user=app password=s3cret dbname=app", "host=db user=app password=*** dbname=app"),
        ("host=db password='s3 cret' dbname=app", "host=db password=*** dbname=app"),
        (
            "postgresql://app@db/app?sslpassword=s3cret&sslmode=verify-full",
            "postgresql://app@db/app?sslpassword=***&sslmode=verify-full",
        ),
        ("host=db sslpassword=s3cret user=app", "host=db sslpassword=*** user=app"),
        (
            "postgresql://app:s3:cr3t@h1:5432,h2:5433/app?target_session_attrs=read-write",
            "postgresql://app:***@h1:5432,h2:5433/app?target_session_attrs=read-write",
        ),
        ("postgresql://app:@/app?host=/run/pg", "postgresql://app:***@/app?host=/run/pg"),
        ("postgresql://app@db/app?options=-c%20s3cret", "postgresql://app@db/app?options=***"),
        ("host=db password='s3cret", "<unparseable DSN>"),
    ],
)
def test_passwords_are_redacted_from_dsns(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected


def test_heartbeat_timeout_follows_the_heartbeat_interval_up_to_5_s() -> None:
    assert (
        CoordinatorConfig(dsn="postgresql://x", ttl=3, heartbeat_interval=1).heartbeat_timeout == 1
    )
    assert (
        CoordinatorConfig(dsn="postgresql://x", ttl=30, heartbeat_interval=8).heartbeat_timeout == 5
    )
    assert CoordinatorConfig(dsn="postgresql://x", heartbeat_timeout=2).heartbeat_timeout == 2


@pytest.mark.parametrize("character", ["/", "?", "#", "@"])
def test_an_unescaped_reserved_character_in_a_password_is_refused_unshown(character: str) -> None:
    """asyncpg would read the rest of such a password as host, port or database."""
    dsn = f"postgresql://app:pa{character}ssSECRET@db:5432/app"
    assert "SECRET" not in redact_dsn(dsn)
    with pytest.raises(ConfigurationError, match="Percent-encode") as raised:
        CoordinatorConfig(dsn=dsn)
    assert "SECRET" not in str(raised.value)


def test_a_colon_in_a_password_needs_no_escaping() -> None:
    config = CoordinatorConfig(dsn="postgresql://app:pa:ssSECRET@db/app")
    assert config.redacted_dsn == "postgresql://app:***@db/app"


def test_a_keyword_dsn_is_refused_with_the_url_form() -> None:
    with pytest.raises(ConfigurationError, match="must be a URL") as raised:
        CoordinatorConfig(dsn="host=db password=SECRET dbname=app")
    assert "SECRET" not in str(raised.value)


#: Each duration field with a value just outside each of its bounds.
OUT_OF_BOUNDS = [
    ("ttl", 3e6, "ttl must be from 100 ms to 1 day"),
    ("ttl", 0.05, "ttl must be from"),
    ("monitor_interval", 1e300, "monitor_interval must be from 10 ms to 1 day"),
    ("monitor_interval", 0.0, "monitor_interval must be from"),
    ("events_retention", 1e300, "events_retention must be from 1 s to 3650 days"),
    ("members_retention", 1e300, "members_retention must be from 1 s to 3650 days"),
    ("take_office_timeout", 1e-5, "0 ms means no limit"),
    ("heartbeat_interval", float("nan"), "heartbeat_interval must be from"),
    ("heartbeat_timeout", float("inf"), "heartbeat_timeout must be from"),
    ("connect_timeout", -1, "connect_timeout must be from"),
    ("reconnect_min", 0, "reconnect_min must be from"),
    ("reconnect_max", 1e9, "reconnect_max must be from"),
    ("callback_timeout", 1e300, "callback_timeout must be from"),
    ("poll_interval", 1e-9, "poll_interval must be from"),
    ("ttl", True, "ttl must be from"),
    ("poll_threshold", 0, "poll_threshold must be a whole number of groups from 1"),
    ("poll_threshold", 10**9, "poll_threshold must be a whole number of groups from 1"),
    ("lock_namespace", 2**31, "lock_namespace"),
    ("safety_margin", -1, "safety_margin"),
]


@pytest.mark.parametrize(("name", "value", "message"), OUT_OF_BOUNDS)
def test_every_numeric_setting_is_bounded_in_one_line(
    name: str, value: object, message: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        CoordinatorConfig(dsn=DSN, **{name: value})
    (line,) = str(raised.value).splitlines()
    assert message in line


def test_every_duration_field_has_bounds() -> None:
    """A new duration field without bounds would take 1e300 or 1e-9 as given."""
    from dataclasses import fields
    from typing import get_type_hints

    from coordinator._config import _SECONDS_BOUNDS

    hints = get_type_hints(CoordinatorConfig)
    durations = {
        f.name
        for f in fields(CoordinatorConfig)
        if float in getattr(hints[f.name], "__args__", (hints[f.name],))
    }
    computed = {"safety_margin", "monitor_interval"}  # bounded against other fields
    assert durations - computed == set(_SECONDS_BOUNDS)
