"""structlog setup: JSON lines when not on a TTY, readable console otherwise.

Event names are stable and dotted (``ingest.object_done``); fields come from a fixed
vocabulary (account_id, region, bucket, key, connector, stage, error_type, counts, duration_ms).
Never log an event payload or a secret.

structlog is imported when the first line is logged, not when a module asks for a logger or
the command line configures logging: ``ctagg --help`` and ``ctagg validate`` never pay for it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

# (level, json, stream) of the last configure() call, applied at the next log line
_pending: tuple[str, bool | None, TextIO | None] | None = None
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
    """Configure structlog and stdlib logging (call again to reconfigure, e.g. in tests). The
    configuration takes effect now when structlog is loaded already, else at the next line
    logged."""
    global _pending
    if "structlog" in sys.modules:
        _pending = None
        _apply(level, json, stream)
    else:
        _pending = (level, json, stream)


def _apply(level: str, json: bool | None, stream: TextIO | None) -> None:
    import structlog

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


def _ensure_configured() -> None:
    global _pending
    if _pending is not None:
        pending, _pending = _pending, None
        _apply(*pending)
    elif not _configured:
        _apply("INFO", None, None)


class _Logger:
    """A structlog logger made on first use (see the module docstring)."""

    __slots__ = ("_log", "_name")

    def __init__(self, name: str | None) -> None:
        self._name = name
        self._log: Any = None

    def __getattr__(self, attr: str) -> Any:
        if _pending is not None or not _configured:
            _ensure_configured()
        if self._log is None:
            import structlog

            self._log = structlog.get_logger(self._name)
        return getattr(self._log, attr)


def get_logger(name: str | None = None) -> Any:
    return _Logger(name)
