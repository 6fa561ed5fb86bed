"""``ctagg detect [--rules DIR ...] [--no-builtin] [PATH ...]``: rules over files or stdin;
``ctagg alerts CONFIG``: the alerts the daemon's detection raised and stored.

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
from aggregator.cli._table import Column

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


# ---------------------------------------------------------------------------- ctagg alerts


def add_alerts_args(p: argparse.ArgumentParser) -> None:
    from aggregator.cli._common import config_arg, when

    config_arg(p)
    p.add_argument("--since", type=when, help="raised at or after this UTC date/time")
    p.add_argument("--rule", help="a rule id, or words of its title (any case)")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="at most this many, newest first (default: 100 in the table, all with --json)",
    )
    p.add_argument("--json", action="store_true", help="one JSON alert per line (NDJSON)")


ALERT_COLUMNS = (
    Column("raised (UTC)", 0, elide=False),
    Column("severity", 1, elide=False),
    Column("account", 2, elide=False),
    Column("region", 3, elide=False),
    Column("title", 4, min_width=16),
    Column("event", 5, min_width=10),
    Column("actor", 6, min_width=10),
    Column("source ip", 7, elide=False),
    Column("rule id", 8, elide=False),
)


def run_alerts(args: argparse.Namespace) -> int:
    """The alerts detection raised and remembers (``detect.alert_window_days``), newest first;
    reads the state only (no sink, no secret needed)."""
    from aggregator.cli._common import STATE_ONLY, json_line, load_or_exit, open_state
    from aggregator.detect.store import DetectStore

    settings = load_or_exit(args.config, STATE_ONLY)
    limit = args.limit if args.limit is not None else (None if args.json else 100)
    state = open_state(settings, "ctagg alerts", read_only=True)
    try:
        store = DetectStore(state)
        since = args.since.timestamp() if args.since else None
        rows = store.stored(since=since, rule=args.rule, limit=None if not limit else limit + 1)
    finally:
        state.close()
    more = bool(limit) and len(rows) > (limit or 0)
    rows = rows[:limit] if limit else rows
    if args.json:
        for r in rows:
            doc = r.alert.to_line() if r.alert else {"rule_id": r.rule_id, "event_key": r.event_key}
            print(json_line({**doc, "raised_at": _iso(r.raised_at)}))
        return EXIT_OK
    from aggregator.cli._table import console_for, esc, print_table

    style = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan"}
    cells = []
    for r in rows:
        a = r.alert
        sev = a.severity if a else "-"
        cells.append(
            [
                _iso(r.raised_at),
                f"[{style[sev]}]{sev}[/]" if sev in style else sev,
                (a.account_id if a else None) or "-",
                (a.region if a else None) or "-",
                esc(a.title if a else "(raised before this version kept alert bodies)"),
                esc((a.event_name if a else None) or (a.kind if a else "-")),
                esc((a.actor if a else None) or "-"),
                (a.source_ip if a else None) or "-",
                r.rule_id,
            ]
        )
    console = console_for()
    what = f" of rule {args.rule!r}" if args.rule else ""
    since_text = f" since {args.since.isoformat()}" if args.since else ""
    print_table(
        console, ALERT_COLUMNS, cells, title=f"ctagg alerts{what}{since_text}, newest first"
    )
    if not rows:
        console.print("no alert stored" + (" that matches" if args.rule or args.since else ""))
    elif more:
        console.print("... more: --limit N (0: all) or --json", markup=False)
    return EXIT_OK


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
