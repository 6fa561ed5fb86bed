"""SIGKILL at a chosen step, for crash tests: run a function in a forked child that kills
itself (``kill -9``, no cleanup, no ``finally``) the n-th time a named step is reached.

A step is a method (or module function) wrapped in the child only: ``after=True`` kills right
after it returned (its effect done: a central PUT stored, a commit durable), else right before
it runs. The parent's moto server thread keeps serving (a forked child has only the forking
thread; it talks to moto over HTTP like any client). Tests that fork must be plain ``def``
tests, so no event loop is running in the parent at fork time.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Step:
    """Kill the child the ``nth`` time ``owner.name`` is called (before it, or after it)."""

    owner: Any
    name: str
    nth: int = 1
    after: bool = True

    def label(self) -> str:
        where = "after" if self.after else "before"
        return f"{where} {getattr(self.owner, '__name__', self.owner)}.{self.name} #{self.nth}"


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(step: Step) -> None:
    original = inspect.getattr_static(step.owner, step.name)
    is_static = isinstance(original, staticmethod)
    fn = original.__func__ if is_static else original
    calls = [0]

    def count() -> bool:
        calls[0] += 1
        return calls[0] == step.nth

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def awrapper(*args: Any, **kwargs: Any) -> Any:
            hit = count()
            if hit and not step.after:
                _die()
            result = await fn(*args, **kwargs)
            if hit:
                _die()
            return result

        wrapped: Any = awrapper
    else:

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            hit = count()
            if hit and not step.after:
                _die()
            result = fn(*args, **kwargs)
            if hit:
                _die()
            return result

        wrapped = wrapper
    setattr(step.owner, step.name, staticmethod(wrapped) if is_static else wrapped)


@dataclass
class ChildResult:
    killed: bool  # died of SIGKILL at the step
    exit_code: int | None  # exited on its own (the step was never reached, or it failed)


def fork_child(fn: Callable[[], Any], step: Step | None = None) -> int:
    """Run ``fn`` in a forked child armed with ``step``; its pid. The child exits 0 when
    ``fn`` returns, 1 (traceback on stderr) when it raises; it never returns into pytest."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if step is not None:
                _arm(step)
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    return pid


def run_child(fn: Callable[[], Any], step: Step | None = None, timeout: float = 120) -> ChildResult:
    """Run ``fn`` in a forked child armed with ``step``; wait for it. A child that neither
    exits nor dies within ``timeout`` is killed and the test fails (nothing may hang)."""
    pid = fork_child(fn, step)
    import time

    deadline = time.monotonic() + timeout
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child still running after {timeout}s (hung)")
        time.sleep(0.02)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL, f"child died of signal {os.WTERMSIG(status)}"
        return ChildResult(True, None)
    return ChildResult(False, os.WEXITSTATUS(status))
