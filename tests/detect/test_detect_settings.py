"""The ``detect:`` config section: defaults, secrets through ${VAR}, errors with their paths."""

from __future__ import annotations

import pytest

from aggregator.config import ConfigError, parse_settings

BASE = {"archive": {"bucket": "central-archive"}}


def test_defaults() -> None:
    """Without a detect section, detection is on with the built-in pack and medium anomalies."""
    s = parse_settings(dict(BASE), env={})
    assert s.detect.enabled is True
    assert s.detect.builtin_rules is True
    assert s.detect.rule_dirs == []
    assert s.detect.anomaly.sensitivity == "medium"
    assert s.detect.webhook_url is None
    assert s.detect.start_from == "oldest"  # scan all archived history


def test_full_section_with_secret_webhook() -> None:
    """The webhook URL comes from the environment and is never shown in the model's repr."""
    doc = dict(
        BASE,
        detect={
            "rule_dirs": ["/etc/ctagg/rules"],
            "disabled_rule_ids": ["2b013649-0b9b-546a-9c34-490ccfea6a07"],
            "anomaly": {"sensitivity": "high", "min_count": 50, "baseline_hours": 336},
            "sns_topic_arn": "arn:aws:sns:eu-west-1:111122223333:security-alerts",
            "webhook_url": "${SLACK_URL}",
        },
    )
    s = parse_settings(doc, env={"SLACK_URL": "https://hooks.slack.test/services/T/B/secret"})
    assert s.detect.anomaly.min_count == 50
    assert s.detect.webhook_url is not None
    assert s.detect.webhook_url.get_secret_value().endswith("/secret")
    assert "secret" not in repr(s.detect)


def test_errors_name_their_paths() -> None:
    """Every bad value in the section is reported at once with its path."""
    doc = dict(
        BASE,
        detect={
            "anomaly": {"sensitivity": "extreme", "min_count": 0},
            "sns_topic_arn": "security-alerts",
            "webhook_url": "ftp://x",
            "start_from": "latest",
            "rules": [],
        },
    )
    with pytest.raises(ConfigError) as info:
        parse_settings(doc, env={})
    text = "\n".join(info.value.problems)
    for path in (
        "detect.anomaly.sensitivity",
        "detect.anomaly.min_count",
        "detect.sns_topic_arn",
        "detect.webhook_url",
        "detect.start_from",
        "detect.rules: unknown key",
    ):
        assert path in text, path
