"""One way to fail on the command line: every command turns an expected error into one line
(what failed, for which account, region or bucket, and what to do) and one of the shared exit
codes below; ``ctagg --debug COMMAND`` also prints the traceback.

Imports stay light at module level: the classification imports the rooms it asks (the AWS
error vocabulary, the config and connector errors) only once something failed.
"""

from __future__ import annotations

import sys
from typing import TextIO

EXIT_OK = 0
EXIT_PROBLEMS = 1  # the command ran and found problems (doctor, audit, completeness, digests)
EXIT_CONFIG = 2  # a config, an argument or a local file (the state) is wrong: nothing was done
EXIT_ACCESS = 3  # AWS or a sink cannot be reached or refuses (credentials, endpoint, bucket)
EXIT_PARTIAL = 4  # the command did its work, but some accounts, regions, sources or events failed
EXIT_BUG = 5  # an unexpected error: a bug (run with --debug and report the traceback)
EXIT_STATE = 6  # the state cannot be used: unopenable, full disk, read-only, corrupt
EXIT_LOCKED = 7  # another process is the state's one writer (the message names it)
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_PROBLEMS: "found problems: failing checks, missing or invalid files",
    EXIT_CONFIG: "config or usage error (config, argument, date, state file)",
    EXIT_ACCESS: "access error: AWS or a sink unreachable or refusing",
    EXIT_PARTIAL: "partial failure: some accounts, sources or events failed",
    EXIT_BUG: "unexpected error (a bug): run with --debug, report it",
    EXIT_STATE: "the state cannot be used (unopenable, full disk, read-only)",
    EXIT_LOCKED: "another process is the state's writer (named); read commands work beside it",
    EXIT_INTERRUPTED: "interrupted: work done is kept; run again to continue",
}


class CliError(Exception):
    """An expected failure with its words: ``what`` failed (naming the account, region, bucket
    or file), ``hint`` what to do, ``code`` the exit code."""

    def __init__(self, what: str, hint: str = "", code: int = EXIT_ACCESS) -> None:
        super().__init__(what)
        self.what = what
        self.hint = hint
        self.code = code

    def line(self, prog: str = "ctagg") -> str:
        hint = f"; {self.hint}" if self.hint else ""
        return f"{prog}: {self.what}{hint}"


def explain(exc: BaseException) -> CliError:
    """Any exception a command raised, as a :class:`CliError`."""
    if isinstance(exc, CliError):
        return exc
    from aggregator.config import ConfigError

    if isinstance(exc, ConfigError):
        problems = "; ".join(exc.problems)
        return CliError(f"config: {problems}", "fix the config and run again", EXIT_CONFIG)
    kind = type(exc).__name__  # by name: the CLI does not import SQLite to classify
    if kind == "StateLocked":
        return CliError(
            str(exc), "stop it first, or run read commands (status, ...) beside it", EXIT_LOCKED
        )
    if kind == "ArchiveWriterConflict":
        return CliError(
            str(exc),
            "run one writer per archive: stop the other one, or give each its own archive.prefix",
            EXIT_LOCKED,
        )
    if kind == "Fenced":
        return CliError(
            str(exc),
            "what the cycle did not write is handled by the next one (if another process "
            "took the writer marker over, that one has it)",
            EXIT_LOCKED,
        )
    if kind == "InstallationMismatch":
        return CliError(
            str(exc),
            "nothing was written; see 'Scaling out (static shards)' in docs/operations.md",
            EXIT_CONFIG,
        )
    if kind == "StorageError":
        missing = "no state file" in str(exc)
        return CliError(
            str(exc),
            "run 'ctagg once CONFIG' (or the daemon) first, or point state.path at the state"
            if missing
            else "free space or fix permissions, or set state.path (or CTAGG_STATE_PATH) to a "
            "file ctagg can create and write",
            EXIT_STATE,
        )
    what, hint = getattr(exc, "what", None), getattr(exc, "hint", None)
    if isinstance(what, str) and isinstance(hint, str):  # errors that say it themselves
        return CliError(what, hint, EXIT_ACCESS)
    from aggregator.aws.errors import explain as explain_aws

    aws = explain_aws(exc)
    context = _context(exc)
    if aws is not None:
        return CliError(f"{context}{aws.what}", aws.hint, EXIT_ACCESS)
    from connectors.base import Fatal

    if isinstance(exc, Fatal):
        return CliError(f"{context}{exc}", "fix the connector's settings or the sink", EXIT_ACCESS)
    if type(exc).__name__ in ("CredentialsError", "BaseIdentityFailed", "DiscoveryError"):
        return CliError(f"{context}{exc}".rstrip(), _credentials_hint(), EXIT_ACCESS)
    return CliError(
        f"unexpected error: {type(exc).__name__}: {exc}",
        "run with --debug for the traceback, and report it",
        EXIT_BUG,
    )


def _context(exc: BaseException) -> str:
    """What the outermost error says it was doing ("discovery failed: ")."""
    name = type(exc).__name__
    if name == "DiscoveryError":
        return "discovery failed: "
    return ""


def _credentials_hint() -> str:
    return "check the identity ctagg runs as ('ctagg doctor CONFIG' checks every account)"


def report(exc: BaseException, *, prog: str, debug: bool, err: TextIO | None = None) -> int:
    """Print ``exc`` as one line (after its traceback with ``debug``); returns the exit code."""
    out = err or sys.stderr
    if debug:
        import traceback

        traceback.print_exception(exc, file=out)
    problem = explain(exc)
    print(problem.line(prog), file=out)
    return problem.code
