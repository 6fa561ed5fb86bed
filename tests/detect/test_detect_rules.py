"""The built-in pack's shape, and loading users' rule directories."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import yaml

from aggregator.detect.rules import LEVELS, RuleLoadError, builtin_rules_dir, load_rules

CIS_CONTROLS = {f"4.{n}" for n in range(1, 16)}


def test_builtin_pack_metadata() -> None:
    """Every built-in rule has a UUID, a title, a severity, ATT&CK tags and a CloudTrail logsource;
    together the CIS rules cover monitoring controls 4.1 to 4.15."""
    rules = load_rules()
    assert len(rules) >= 30
    cis_seen: set[str] = set()
    for r in rules:
        uuid.UUID(r.id)
        assert r.title
        assert r.description
        assert r.level in LEVELS
        assert any(re.fullmatch(r"t\d{4}(\.\d{3})?", t) for t in r.attack), r.path
        cis_seen |= set(r.cis)
        doc = yaml.safe_load(Path(r.path).read_text())
        assert doc["logsource"] == {"product": "aws", "service": "cloudtrail"}
    assert cis_seen == CIS_CONTROLS


def test_builtin_rules_ship_as_package_data() -> None:
    """The pack is found through the installed package, not the source tree's cwd."""
    files = sorted(builtin_rules_dir().rglob("*.yml"))
    assert len(files) == len(load_rules())


def test_user_dirs_add_rules_and_disabled_ids_remove_them(tmp_path: Path) -> None:
    """Rules from a configured directory load next to the pack; disabled ids are dropped."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.yaml").write_text(
        """
title: Bucket deleted
id: 6e0f3a52-8a3b-4f0e-9f7e-3c3f2d1b0a01
level: low
tags: [attack.impact, attack.t1485, cis.9.9]
logsource: {product: aws, service: cloudtrail}
detection:
  sel: {eventName: DeleteBucket}
  condition: sel
"""
    )
    builtin = load_rules()
    both = load_rules([tmp_path])
    assert len(both) == len(builtin) + 1
    mine = next(r for r in both if r.title == "Bucket deleted")
    assert mine.cis == ("9.9",)
    assert mine.matches({"eventName": "DeleteBucket"})
    only_mine = load_rules([tmp_path], builtin=False)
    assert [r.id for r in only_mine] == [mine.id]
    assert load_rules([tmp_path], builtin=False, disabled_ids=[mine.id]) == []


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """Duplicate ids, broken files and missing directories are all listed, each with its path."""
    good = (builtin_rules_dir() / "aws" / "aws_organizations_leave.yml").read_text()
    (tmp_path / "copy.yml").write_text(good)
    (tmp_path / "broken.yml").write_text("title: [")
    with pytest.raises(RuleLoadError) as info:
        load_rules([tmp_path, tmp_path / "missing"])
    problems = info.value.problems
    assert len(problems) == 3
    assert any("copy.yml" in p and "duplicate rule id" in p for p in problems)
    assert any("broken.yml" in p for p in problems)
    assert any("missing" in p and "not found" in p for p in problems)


def test_a_bad_rule_file_lists_every_problem_it_has() -> None:
    """Not just the first: a bad id, level, status and modifier in one rule are four problems;
    a wrong logsource and a condition naming an undefined selection are two more in another."""
    from aggregator.detect.rules import RuleLoadError, load_rule_text

    text = """
title: Bad rule
id: not-a-uuid
status: bogus
level: extreme
logsource: {product: aws, service: cloudtrail}
detection:
  sel:
    eventName|nosuchmodifier: x
  condition: sel
---
title: Wrong source
id: 7c4e1b5a-2f0d-4b6e-9a8c-5d3e2f1a0b0e
level: low
logsource: {product: windows}
detection:
  sel:
    eventName: x
  condition: sel and missing
"""
    with pytest.raises(RuleLoadError) as info:
        load_rule_text(text, "bad.yml")

    problems = info.value.problems
    first = [p for p in problems if p.startswith("bad.yml (Bad rule): ")]
    second = [p for p in problems if p.startswith("bad.yml (Wrong source): ")]
    assert len(first) == 4
    assert any("must be an UUID" in p for p in first)
    assert any("'extreme' is not a valid Sigma rule level" in p for p in first)
    assert any("'bogus' is not a valid Sigma rule status" in p for p in first)
    assert any("Unknown modifier 'nosuchmodifier'" in p for p in first)
    assert len(second) == 2
    assert any("logsource must be product: aws" in p for p in second)
    assert any("missing" in p for p in second)
