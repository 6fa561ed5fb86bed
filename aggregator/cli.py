"""``ctagg``: the command line. Entry points and wiring only; the work lives in the rooms.

Each subcommand is one row of COMMANDS: (name, help, add_arguments, run). ``run`` returns the
exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from aggregator import __version__, forward
from aggregator.config import ConfigError, Settings, load_settings

AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="YAML config file")


def load_or_exit(path: str) -> Settings:
    """Load a config or print every problem (with its path) and exit 2."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"config {path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        raise SystemExit(2) from None


# ---------------------------------------------------------------- validate


def _run_validate(args: argparse.Namespace) -> int:
    load_or_exit(args.config)
    print(f"{args.config}: ok")
    return 0


# ---------------------------------------------------------------- detect


def _detect_args(p: argparse.ArgumentParser) -> None:
    from aggregator.detect.cli import add_arguments

    add_arguments(p)


def _run_detect(args: argparse.Namespace) -> int:
    from aggregator.detect.cli import run

    return run(args)


COMMANDS: list[tuple[str, str, AddArgs, Run]] = [
    ("validate", "check a config file without touching the network", _config_arg, _run_validate),
    (
        "replay",
        "re-send archived events to one connector",
        forward.add_replay_args,
        forward.run_replay,
    ),
    ("detect", "run detection rules over CloudTrail files or stdin", _detect_args, _run_detect),
]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ctagg",
        description="cloudtrail-aggregator: collect, dedupe, verify and forward CloudTrail.",
    )
    ap.add_argument("--version", action="version", version=f"ctagg {__version__}")
    ap.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    ap.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, add_args, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_run=run)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    from aggregator import log

    args = build_parser().parse_args(argv)
    log.configure(
        args.log_level,
        json=None if args.log_format == "auto" else args.log_format == "json",
    )
    try:
        return int(args._run(args))
    except KeyboardInterrupt:
        return 130
