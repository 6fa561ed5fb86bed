"""SigmaHQ conventions for rule files (aggregator.detect.lint), offline with pinned data."""

from __future__ import annotations

import io
from pathlib import Path

from aggregator.detect.lint import lint
from aggregator.detect.rules import builtin_rules_dir

BAD = """title: bucket deleted by someone
id: 6e0f3a52-8a3b-4f0e-9f7e-3c3f2d1b0a01
status: stable
description: A bucket was deleted by someone.
author: me
date: 2026-12-01
tags:
  - attack.t1485
  - cis.9.9
logsource:
  product: aws
  service: cloudtrail
detection:
  selection:
    eventName: DeleteBucket
  condition: selection
level: low
"""


def test_builtin_pack_has_no_issue() -> None:
    """The built-in pack follows SigmaHQ's conventions: 0 issues."""
    out = io.StringIO()
    assert lint([builtin_rules_dir()], out) == 0, out.getvalue()


def test_issues_are_reported_with_the_file(tmp_path: Path) -> None:
    """A rule breaking the conventions is reported, one line per issue naming the file."""
    path = tmp_path / "bucket_deleted.yml"
    path.write_text(BAD)
    out = io.StringIO()
    count = lint([tmp_path], out)
    text = out.getvalue()
    assert count >= 4
    for issue in (
        "SigmahqTitleCaseIssue",
        "InvalidNamespaceTagIssue",
        "SigmahqFilenamePrefixIssue",
        "SigmahqTagsTechniquesWithoutTacticsIssue",
        "SigmahqStatusToHighIssue",
    ):
        assert f"bucket_deleted.yml: {issue}" in text, text
