"""``ctagg validate``."""

from __future__ import annotations

import argparse
import os

from aggregator.cli._common import config_and_json, json_line, load_or_exit
from aggregator.cli._errors import EXIT_CONFIG, EXIT_OK


def add_validate_args(p: argparse.ArgumentParser) -> None:
    config_and_json(p)


def run_validate(args: argparse.Namespace) -> int:
    if not getattr(args, "json", False):
        settings = load_or_exit(args.config)
        print(f"{args.config}: ok")
        state_path = settings.state.path
        if state_path != ":memory:" and not os.path.isabs(state_path):
            print(
                f"note: state.path {state_path!r} is relative: it resolves against the working "
                f"directory ({os.getcwd()}); give an absolute path, or leave it out for "
                "state/ctagg.db beside the config file"
            )
        return EXIT_OK
    from aggregator.config import ConfigError, load_settings

    try:
        load_settings(args.config)
    except ConfigError as exc:
        print(json_line({"config": args.config, "ok": False, "problems": exc.problems}))
        return EXIT_CONFIG
    print(json_line({"config": args.config, "ok": True, "problems": []}))
    return EXIT_OK
