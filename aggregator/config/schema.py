"""The config's JSON Schema (config/schema.json), generated from the settings models:
``python -m aggregator.config --write-schema FILE | --check-schema FILE``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from aggregator.config.settings import Settings


def json_schema() -> dict[str, Any]:
    schema = Settings.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cloudtrail-aggregator config"
    return schema


def _schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m aggregator.config --write-schema F | --check-schema F``."""
    ap = argparse.ArgumentParser(prog="python -m aggregator.config")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write-schema", metavar="FILE")
    g.add_argument("--check-schema", metavar="FILE")
    args = ap.parse_args(argv)
    if args.write_schema:
        Path(args.write_schema).write_text(_schema_text(), encoding="utf-8")
        return 0
    current = Path(args.check_schema).read_text(encoding="utf-8")
    if current != _schema_text():
        print(f"{args.check_schema} is stale: run 'make schema'", file=sys.stderr)
        return 1
    return 0
