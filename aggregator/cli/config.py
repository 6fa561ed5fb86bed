"""``ctagg validate``."""

from __future__ import annotations

import argparse

from aggregator.cli._common import load_or_exit


def run_validate(args: argparse.Namespace) -> int:
    load_or_exit(args.config)
    print(f"{args.config}: ok")
    return 0
