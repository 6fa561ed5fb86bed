"""What every command shares: the CONFIG argument, loading a config (or saying every problem
and exiting 2), opening the state (as its one writer, or read-only), date arguments, JSON lines
and human durations.

Exit codes shared by the commands that open the state (docs/operations.md):
0 ok, 1 the command ran and found or hit problems, 2 the config is invalid, 3 discovery could
not run at all, 4 the state cannot be used (unopenable, full disk, read-only), 5 another
process is the state's writer (the message names it).

Imports stay light at module level (argparse and the standard library): ``ctagg --help`` must
not pay for boto3, pydantic or rich. Each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aggregator.config import Settings
    from aggregator.state import State

EXIT_PROBLEMS = 1
EXIT_CONFIG = 2
EXIT_DISCOVERY = 3
EXIT_STATE = 4
EXIT_LOCKED = 5

AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


def config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="YAML config file")


def json_arg(p: argparse.ArgumentParser, help_text: str = "JSON output") -> None:
    p.add_argument("--json", action="store_true", help=help_text)


def config_and_json(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    json_arg(p, "one JSON object per line")


def load_or_exit(path: str) -> Settings:
    """Load a config or print every problem (with its path) and exit 2."""
    from aggregator.config import ConfigError, load_settings

    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"config {path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def open_state(
    settings: Settings, command: str, *, read_only: bool = False, writer: bool = True
) -> State:
    """The state of ``settings``: as its one writer (``writer``, the default: the lock is
    taken), read-only, or plainly writable without the lock (``writer=False``: commands whose
    writes are safe beside the daemon). Says why in one line and exits 4 (unusable state) or
    5 (another writer holds it) when it cannot."""
    from aggregator.state import State, StateLocked, StorageError

    try:
        if read_only:
            return State(settings.state.path, read_only=True)
        return State(settings.state.path, writer=command if writer else None)
    except StateLocked as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_LOCKED) from None
    except StorageError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_STATE) from None


def when(text: str) -> datetime:
    """An ISO date or date-time argument; naive values are UTC."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date/time: {text!r}") from None
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
