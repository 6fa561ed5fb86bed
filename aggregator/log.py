"""structlog setup: JSON lines when not on a TTY, readable console otherwise.

Event names are stable and dotted (``ingest.object_done``); fields come from a fixed
vocabulary (account_id, region, bucket, key, connector, stage, error_type, counts, duration_ms).
Never log an event payload or a secret.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_configured = False


class _StreamLogger:
    """Writes each line to a stream looked up at write time (sys.stderr may be replaced)."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        out = self._stream or sys.stderr
        out.write(message + "\n")
        out.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


class _StreamLoggerFactory:
    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def __call__(self, *args: Any) -> _StreamLogger:
        return _StreamLogger(self._stream)


def configure(
    level: str = "INFO", *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Configure structlog and stdlib logging once (call again to reconfigure, e.g. in tests)."""
    global _configured
    out = stream or sys.stderr
    use_json = (not out.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_StreamLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Quiet chatty libraries: their DEBUG lines can contain request payloads.
    for name in ("botocore", "aiobotocore", "boto3", "urllib3", "apscheduler", "opensearch"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _configured = True


def get_logger(name: str | None = None) -> Any:
    if not _configured:
        configure()
    return structlog.get_logger(name)
