"""SigmaHQ's own AWS CloudTrail rules (shared/testdata/sigmahq-aws-cloudtrail, DRL 1.1) run.

Every rule either loads and is run over all shared test records, or is reported with the reason
it cannot be supported: none fails silently. Today all 57 load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aggregator.detect.rules import Rule, RuleLoadError, RuleSet, load_rule_text
from aggregator.ingest.envelopes import Parsed, iter_records

EXPECTED_RULES = 57


def shared_records(testdata: Path) -> list[dict[str, Any]]:
    """Every CloudTrail record of the shared data (the Panther cases' logs included)."""
    cases = (testdata / "panther-analysis" / "detection_cases.jsonl").read_text().splitlines()
    out: list[dict[str, Any]] = [json.loads(line)["log"] for line in cases if line.strip()]
    for path in sorted(testdata.rglob("*")):
        if path.suffix not in (".json", ".jsonl", ".gz") or not path.is_file():
            continue
        if path.name == "detection_cases.jsonl" or "digest" in path.name or "ocsf" in path.name:
            continue
        for item in iter_records(path.read_bytes(), str(path)):
            if isinstance(item, Parsed):
                out.append(item.record)
    return out


@pytest.fixture
def community(testdata: Path) -> tuple[list[Rule], dict[str, str]]:
    loaded: list[Rule] = []
    unsupported: dict[str, str] = {}
    for path in sorted((testdata / "sigmahq-aws-cloudtrail").glob("*.yml")):
        try:
            loaded += load_rule_text(path.read_text(encoding="utf-8"), str(path))
        except RuleLoadError as exc:
            unsupported[path.name] = "; ".join(exc.problems)
    return loaded, unsupported


def test_every_community_rule_loads_or_says_why(
    community: tuple[list[Rule], dict[str, str]], testdata: Path
) -> None:
    """57 files: each loads, or is reported with a reason; today none is unsupported."""
    loaded, unsupported = community
    files = sorted((testdata / "sigmahq-aws-cloudtrail").glob("*.yml"))
    assert len(files) == EXPECTED_RULES
    for name, why in unsupported.items():
        print(f"unsupported: {name}: {why}")
        assert why.strip(), name  # a reason, never silence
    assert len(loaded) + len(unsupported) >= len(files)
    assert not unsupported, unsupported


def test_community_rules_run_over_the_shared_data(
    community: tuple[list[Rule], dict[str, str]], testdata: Path
) -> None:
    """Every loaded rule runs over every shared record without an error; the pack of community
    rules raises alerts on the shared attack data, no single rule on most records."""
    loaded, _ = community
    records = shared_records(testdata)
    assert len(records) > 800
    ruleset = RuleSet(loaded)
    fired: dict[str, int] = {}
    for record in records:
        for rule in ruleset.match(record):
            fired[rule.title] = fired.get(rule.title, 0) + 1
    # "AWS STS AssumeRole Misuse" (a hunting rule: any role session) fires on a third of them.
    assert max(fired.values()) < len(records) * 0.5, fired  # no rule fires on everything
    assert len(fired) >= 10, fired
    assert fired.get("AWS CloudTrail Important Change", 0) >= 1, sorted(fired)
