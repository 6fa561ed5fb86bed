"""collect.notifications (hint mode): defaults, and bad values named by their path."""

from __future__ import annotations

from typing import Any

import pytest

from aggregator.config import ConfigError, parse_settings


def cfg(**notif: Any) -> Any:
    return parse_settings({"archive": {"bucket": "central"}, "collect": {"notifications": notif}})


def test_unset_is_listing_alone_and_defaults_are_hourly() -> None:
    assert parse_settings({"archive": {"bucket": "central"}}).collect.notifications is None
    n = cfg(queue_url="https://sqs.eu-west-1.amazonaws.com/111111111111/q").collect.notifications
    assert n is not None
    assert n.relist_interval_secs == 3600
    assert (n.batch_size, n.wait_time_secs, n.visibility_timeout_secs) == (10, 1, None)
    assert n.buckets == []


@pytest.mark.parametrize(
    ("notif", "path"),
    [
        ({}, "collect.notifications.queue_url"),
        ({"queue_url": "sqs://q"}, "collect.notifications.queue_url"),
        (
            {"queue_url": "https://q/1/a", "shard_queue_url": "https://q/1/b"},
            "collect.notifications.shard_queue_url",
        ),
        ({"queue_url": "https://q/1/a", "batch_size": 11}, "collect.notifications.batch_size"),
        ({"queue_url": "https://q/1/a", "wait_time_secs": 21}, "collect.notifications.wait_time"),
        ({"queue_url": "https://q/1/a", "relist_interval_secs": -1}, "relist_interval_secs"),
        ({"queue_url": "https://q/1/a", "queue": "x"}, "collect.notifications.queue"),
    ],
)
def test_bad_values_are_named(notif: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as err:
        cfg(**notif)
    assert path in str(err.value)
