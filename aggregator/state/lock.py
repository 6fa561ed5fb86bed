"""One writer per state: an exclusive ``flock`` on ``<state>.lock`` beside the database.

Held by every process that collects into the archive through a state (``ctagg once``,
``ctagg run``, ``ctagg retention``, ``ctagg archive-digest``, ``ctagg reconcile --repair``):
two of them on one state would each trust a window the other is changing (two ``ctagg once``
beside a daemon archived events twice). A second writer fails at once with
:class:`StateLocked`, whose message names the holder (pid, host, command, since when), read
from the lock file. The kernel drops the lock when its holder dies, SIGKILL included, so a
crash never leaves a stale lock; the holder text left behind is only a note.

Readers do not lock: they open the database read-only (``State(path, read_only=True)``).

``flock`` is per open file: it works between processes on one host and between containers
sharing a volume on one node; on NFS it depends on the server (``local_lock``), so keep the
state on a local or block volume (the chart's PVC is).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class StateLocked(Exception):
    """Another process writes this state. ``holder``: what the lock file says about it."""

    def __init__(self, path: str, holder: dict[str, Any]) -> None:
        self.path = path
        self.holder = holder
        who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        if holder.get("command"):
            who += f" ({holder['command']})"
        since = holder.get("since")
        if isinstance(since, int | float):
            who += f" since {datetime.fromtimestamp(since, UTC):%Y-%m-%dT%H:%M:%SZ}"
        super().__init__(f"state {path} is in use by another writer: {who}")


def lock_path(state_path: str) -> str:
    return f"{state_path}.lock"


class WriterLock:
    """The exclusive lock of one state file, held until :meth:`release` (or process exit)."""

    def __init__(self, state_path: str, command: str) -> None:
        self.state_path = state_path
        self.path = lock_path(state_path)
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            from aggregator.state.db import StorageError

            reason = exc.strerror or type(exc).__name__
            raise StorageError(self.state_path, f"cannot open: {reason}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StateLocked(self.state_path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        note = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": time.time(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(note).encode() + b"\n", 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0)
        got = json.loads(raw.decode() or "{}")
    except (OSError, ValueError):
        return {}
    return got if isinstance(got, dict) else {}


def holder_of(state_path: str) -> dict[str, Any] | None:
    """Who holds the lock of ``state_path`` now, or None when nobody does."""
    path = lock_path(state_path)
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:  # no lock file (or no folder for one): nobody holds it
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
