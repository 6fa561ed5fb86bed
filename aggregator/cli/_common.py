"""What every command shares: the CONFIG argument, loading a config (or saying every problem
and exiting 2), opening the state (as its one writer, or read-only; a state that cannot be
used or is held by another writer is one line naming it), date arguments, JSON lines and
human durations.

Imports stay light at module level (argparse and the standard library): ``ctagg --help`` must
not pay for boto3, pydantic or rich. Each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aggregator.cli._errors import EXIT_CONFIG

if TYPE_CHECKING:
    from aggregator.config import Settings
    from aggregator.state import State

AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


def config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="YAML config file")


def json_arg(p: argparse.ArgumentParser, help_text: str = "JSON output") -> None:
    p.add_argument("--json", action="store_true", help=help_text)


def config_and_json(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    json_arg(p, "one JSON object per line")


# Secrets only where used: the config sections a command reads (the others' unset ${VAR}s are
# deferred, not errors; aggregator/config/loading.py).
EVERYTHING = None
STATE_ONLY = frozenset({"state", "shard", "archive"})
NO_SINKS = frozenset(
    {
        "state",
        "shard",
        "aws",
        "credentials",
        "discovery",
        "collect",
        "dedupe",
        "archive",
        "service",
        "retention",
        "integrity",
    }
)


def shard_spec(text: str) -> tuple[int, int]:
    """``--shard I/N``: shard I of N (0 <= I < N)."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(
            f"not a shard: {text!r} (use I/N with 0 <= I < N, e.g. 0/3 for the first of three)"
        )
    return i, n


def shard_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shard",
        type=shard_spec,
        default=None,
        metavar="I/N",
        help="be shard I of N (overrides shard.index and shard.count of the config)",
    )


def load_or_exit(
    path: str, uses: frozenset[str] | None = EVERYTHING, *, shard: tuple[int, int] | None = None
) -> Settings:
    """Load a config or print every problem (with its path) and exit 2. ``uses``: the sections
    the command reads; unset variables elsewhere are deferred (None: every section);
    ``shard``: ``--shard I/N``."""
    from aggregator.config import ConfigError, Settings, load_settings

    defer = () if uses is None else tuple(set(Settings.model_fields) - uses)
    try:
        return load_settings(path, defer=defer, shard=shard)
    except ConfigError as exc:
        print(f"config {path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def open_state(
    settings: Settings, command: str, *, read_only: bool = False, writer: bool = True
) -> State:
    """The state of ``settings``: as its one writer (``writer``, the default: the lock is
    taken), read-only, or plainly writable without the lock (``writer=False``: commands whose
    writes are safe beside the daemon). When it cannot, the error (:class:`StorageError`,
    :class:`StateLocked`) becomes one line and its exit code (``_errors.explain``)."""
    from aggregator.state import State

    if read_only:
        return State(settings.state.path, read_only=True)
    return State(settings.state.path, writer=command if writer else None)


def when(text: str) -> datetime:
    """An ISO date or date-time argument; naive values are UTC."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date or date-time: {text!r} (use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][Z], UTC)"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def json_line(obj: object) -> str:
    import orjson

    return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def human_secs(secs: float | None) -> str:
    if secs is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(secs) >= size:
            return f"{secs / size:.1f} {unit}"
    return f"{secs:.0f} s"


def source_label(bucket: str, prefix: str) -> str:
    """Which copy a source is: ``org:`` (an organization trail's prefix), ``acct:`` (an account
    trail's), ``lookup`` (LookupEvents), with the bucket and any key prefix before AWSLogs/."""
    if bucket == "LookupEvents":
        return "lookup"
    if not bucket:
        return "-"
    head, _, rest = prefix.partition("AWSLogs/")
    kind = "org" if rest.startswith("o-") else "acct"
    return f"{kind}:{bucket}" + (f"/{head.rstrip('/')}" if head else "")
