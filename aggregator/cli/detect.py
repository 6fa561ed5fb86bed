"""``ctagg detect [--rules DIR ...] [--no-builtin] [PATH ...]``: rules over files or stdin.

Reads every envelope :mod:`aggregator.ingest.envelopes` accepts (bare records, ``{"Records"}``
plain or gzip, EventBridge, NDJSON, arrays), prints one JSON alert per line on stdout, and
every input that is not a record on stderr with its reason. Exit 4 (partial) if an input could
not be read, 2 if the rules cannot be loaded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO

from aggregator.cli._errors import EXIT_CONFIG, EXIT_OK, EXIT_PARTIAL

if TYPE_CHECKING:
    from aggregator.detect.engine import Detector


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "paths",
        metavar="PATH",
        nargs="*",
        help="files of CloudTrail records (any envelope, gzip or not); none or '-' = stdin",
    )
    p.add_argument(
        "--rules",
        metavar="DIR",
        action="append",
        default=[],
        help="a directory (or file) of Sigma rules to add; repeatable",
    )
    p.add_argument("--no-builtin", action="store_true", help="do not load the built-in rule pack")
    p.add_argument(
        "--disable", metavar="RULE_ID", action="append", default=[], help="switch a rule off"
    )
    p.add_argument(
        "--ocsf", action="store_true", help="print OCSF Detection Findings instead of flat alerts"
    )


def _inputs(paths: list[str], stdin: BinaryIO) -> Iterator[tuple[str, bytes | None, str]]:
    """(name, data or None, error)."""
    for p in paths or ["-"]:
        if p == "-":
            yield "<stdin>", stdin.read(), ""
            continue
        try:
            yield p, Path(p).read_bytes(), ""
        except OSError as exc:
            yield p, None, f"cannot read: {exc.strerror or exc}"


def run(
    args: argparse.Namespace,
    stdin: BinaryIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    from aggregator.detect.engine import Detector
    from aggregator.detect.rules import RuleLoadError, RuleSet, load_rules

    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        rules = load_rules(args.rules, builtin=not args.no_builtin, disabled_ids=args.disable)
    except RuleLoadError as exc:
        print(f"rules: {len(exc.problems)} problem(s)", file=err)
        for problem in exc.problems:
            print(f"  - {problem}", file=err)
        return EXIT_CONFIG
    if not rules:
        print("rules: no rules loaded", file=err)
        return EXIT_CONFIG
    detector = Detector(RuleSet(rules))
    try:
        failed = _scan(args, detector, stdin or sys.stdin.buffer, out, err)
    except BrokenPipeError:  # `ctagg detect ... | head`: the reader left; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return EXIT_PARTIAL if failed else EXIT_OK


def _scan(
    args: argparse.Namespace, detector: Detector, stdin: BinaryIO, out: TextIO, err: TextIO
) -> int:
    import orjson

    from aggregator.ingest.envelopes import Parsed, Problem, iter_records

    failed = 0
    for name, data, why in _inputs(args.paths, stdin):
        if data is None:
            print(f"{name}: {why}", file=err)
            failed += 1
            continue
        for item in iter_records(data, name):
            if isinstance(item, Problem):
                print(f"{item.where}: {item.reason}", file=err)
                failed += 1
                continue
            assert isinstance(item, Parsed)
            for alert in detector.detect(item.record):
                doc = alert.to_ocsf() if args.ocsf else alert.to_line()
                out.write(orjson.dumps(doc).decode() + "\n")
    out.flush()
    return failed
