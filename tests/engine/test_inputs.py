"""Durations, limits and step configs (SPEC §1.2, §1.3, §1.7): rules checked before anything is stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perdure import ValidationError, validators
from perdure.durations import parse_duration, parse_timestamp
from perdure.retries import resolve_config, retry_delay


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (timedelta(minutes=2), 120.0),
        (1500, 1.5),
        ("1 second", 1.0),
        ("10 seconds", 10.0),
        ("2 minutes", 120.0),
        ("1 hour", 3600.0),
        ("3 days", 3 * 86400.0),
        ("1 week", 7 * 86400.0),
        ("1 month", 30 * 86400.0),
        ("1 year", 365 * 86400.0),
        ("2 years", 2 * 365 * 86400.0),
    ],
)
def test_durations_follow_cloudflare_units(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "bad", ["10", "ten seconds", "10 fortnights", "", "-1 second", None, True, [1], float("nan"), -5]
)
def test_bad_durations_are_rejected_and_quoted(bad: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(bad)
    assert repr(bad)[:10] in str(info.value) or "negative" in str(info.value)


def test_timestamps_take_aware_datetimes_or_epoch_milliseconds() -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_timestamp(when) == when.timestamp()
    assert parse_timestamp(when.timestamp() * 1000) == when.timestamp()
    with pytest.raises(ValueError, match="naive"):
        parse_timestamp(datetime(2030, 1, 1))


@pytest.mark.parametrize("good", ["a", "A_b-9", "_x", "x" * 100])
def test_valid_instance_ids(good: str) -> None:
    assert validators.instance_id(good) == good


@pytest.mark.parametrize("bad", ["", "-x", "a b", "a.b", "x" * 101, "ü", "abc\n", "x" * 100 + "\n", 5, None])
def test_invalid_instance_ids_name_the_rule(bad: object) -> None:
    with pytest.raises(ValidationError, match="instance id"):
        validators.instance_id(bad)


def test_workflow_names_are_at_most_64_chars() -> None:
    validators.workflow_name("w" * 64)
    with pytest.raises(ValidationError, match="1-64"):
        validators.workflow_name("w" * 65)


def test_step_names_allow_spaces_but_not_control_characters() -> None:
    assert validators.step_name("create pun embedding / 1") == "create pun embedding / 1"
    validators.step_name("s" * 256)
    with pytest.raises(ValidationError, match="1-256"):
        validators.step_name("s" * 257)
    with pytest.raises(ValidationError, match="control"):
        validators.step_name("bad\nname")


def test_event_types_follow_the_id_pattern() -> None:
    validators.event_type("approval_1")
    with pytest.raises(ValidationError, match="event type"):
        validators.event_type("approval.v1")


def test_payloads_over_one_mebibyte_are_rejected() -> None:
    validators.encode_json({"x": "a" * (1024 * 1024 - 20)}, "payload")
    with pytest.raises(ValidationError, match="limit is 1048576 bytes"):
        validators.encode_json({"x": "a" * (1024 * 1024)}, "payload")
    with pytest.raises(ValidationError, match="not JSON-serialisable"):
        validators.encode_json({"x": object()}, "payload")


def test_partial_config_merges_key_by_key() -> None:
    config = resolve_config("s", {"retries": {"limit": 2}})
    assert config == {"retries": {"limit": 2, "delay": "10 seconds", "backoff": "exponential"}, "timeout": "10 minutes"}
    assert resolve_config("s", None) == {
        "retries": {"limit": 5, "delay": "10 seconds", "backoff": "exponential"},
        "timeout": "10 minutes",
    }


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"retry": {}}, "unknown config key"),
        ({"retries": {"limit": 1, "tries": 2}}, "unknown key"),
        ({"retries": {"limit": -1}}, "retries.limit"),
        ({"retries": {"limit": 1.5}}, "retries.limit"),
        ({"retries": {"delay": "soon"}}, "retries.delay"),
        ({"retries": {"delay": -5}}, "negative"),
        ({"retries": {"backoff": "random"}}, "retries.backoff"),
        ({"timeout": 0}, "greater than zero"),
        ({"timeout": "forever"}, "timeout"),
    ],
)
def test_invalid_configs_name_the_step_and_the_key(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        resolve_config("charge-card", config)
    assert "charge-card" in str(info.value)


def test_backoff_delays_match_the_spec() -> None:
    def config(backoff: str) -> dict[str, object]:
        return resolve_config("s", {"retries": {"limit": 5, "delay": 1000, "backoff": backoff}})

    assert [retry_delay(config("constant"), n) for n in (1, 2, 3)] == [1.0, 1.0, 1.0]
    assert [retry_delay(config("linear"), n) for n in (1, 2, 3)] == [1.0, 2.0, 3.0]
    assert [retry_delay(config("exponential"), n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]


@given(st.integers(min_value=0, max_value=10**7), st.integers(min_value=1, max_value=30))
def test_exponential_backoff_doubles_without_jitter(delay_ms: int, retry: int) -> None:
    config = resolve_config("s", {"retries": {"delay": delay_ms, "backoff": "exponential"}})
    assert retry_delay(config, retry) == pytest.approx(delay_ms / 1000 * 2 ** (retry - 1))


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["second", "minute", "hour", "day", "week"]))
def test_duration_strings_round_trip(n: int, unit: str) -> None:
    factor = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}[unit]
    assert parse_duration(f"{n} {unit}s") == parse_duration(f"{n} {unit}") == n * factor
