"""``ctagg normalize --schema ecs|ocsf|raw [--config CONFIG] [PATH ...]``.

Reads CloudTrail in any accepted envelope from files or stdin (no path, or ``-``) and writes
one JSON object per input event per line, in input order. A bad input (unreadable file, bad
gzip, invalid JSON, a part that is not CloudTrail) is reported on stderr with its path and
reason; the good events are still printed; the exit code is 1 if anything failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, BinaryIO

from aggregator.cli._common import STATE_ONLY, load_or_exit
from aggregator.cli._errors import EXIT_OK, EXIT_PARTIAL

if TYPE_CHECKING:
    from aggregator.normalize import Normalizer

_FLUSH_BYTES = 1 << 16
# aggregator.normalize.SCHEMAS, named here so that --help does not import the normalizer
SCHEMAS = ("ecs", "ocsf", "raw")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schema", choices=SCHEMAS, required=True, help="output schema")
    p.add_argument(
        "--config",
        metavar="CONFIG",
        help="YAML config whose 'normalize:' section (redaction, enrichment, size cap) applies; "
        "default: built-in settings",
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="CloudTrail log files (.json, .json.gz, NDJSON, EventBridge, ...); '-' or none "
        "reads stdin",
    )


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


def normalize_stream(
    paths: list[str], schema: str, normalizer: Normalizer, out: BinaryIO, err: BinaryIO
) -> bool:
    """Normalize every input; return True when every input part was good."""
    from aggregator.ingest.envelopes import Kind, Parsed, iter_items

    ok = True
    buf: list[bytes] = []
    size = 0
    for path in paths or ["-"]:
        where = "<stdin>" if path == "-" else path
        try:
            data = _read(path)
        except OSError as exc:
            err.write(f"{where}: cannot read: {exc.strerror or exc}\n".encode())
            ok = False
            continue
        now = datetime.now(UTC)
        for item in iter_items(data, where):
            if not isinstance(item, Parsed):
                err.write(f"{item.where}: {item.reason}\n".encode())
                ok = False
                continue
            if item.kind is Kind.DIGEST:
                err.write(f"{item.where}: CloudTrail digest file, not events (skipped)\n".encode())
                continue
            try:
                line = normalizer.encode(item.record, schema, now=now) + b"\n"  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:
                err.write(f"{item.where}: cannot normalize: {exc}\n".encode())
                ok = False
                continue
            buf.append(line)
            size += len(line)
            if size >= _FLUSH_BYTES:
                out.write(b"".join(buf))
                buf.clear()
                size = 0
        if buf:  # keep stdout and stderr roughly in step, file by file
            out.write(b"".join(buf))
            buf.clear()
            size = 0
        out.flush()
    return ok


def run(args: argparse.Namespace) -> int:
    from aggregator.normalize import Normalizer

    settings = (
        load_or_exit(args.config, STATE_ONLY | {"normalize"}).normalize if args.config else None
    )
    normalizer = Normalizer(settings)
    try:
        ok = normalize_stream(
            list(args.paths), args.schema, normalizer, sys.stdout.buffer, sys.stderr.buffer
        )
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    sys.stderr.flush()
    return EXIT_OK if ok else EXIT_PARTIAL
