"""Reading a config: the YAML file, ``${VAR}`` interpolation, strict validation. No network I/O
happens here. Every problem is reported at once, each with its path in the
document (``discovery.accounts.include_ous[1]: ...``), so an operator fixes a config in one pass.

Interpolation is done on parsed string values (never on the raw text), so a secret containing
YAML syntax cannot change the document's structure:

* ``${VAR}``            the variable's value; an error if it is unset
* ``${VAR:?message}``   the same, with the operator's own message
* ``${VAR:-default}``   ``default`` when unset or empty
* ``$${``               a literal ``${``

"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from aggregator.config.settings import Settings

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigError(Exception):
    """A config could not be used. ``problems`` lists every problem with its path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:\?|:-)([^}]*))?\}")


def _fmt_path(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def interpolate(
    value: Any, env: Mapping[str, str], problems: list[str], path: tuple[str | int, ...] = ()
) -> Any:
    """Replace ``${VAR}`` forms in every string of a parsed document; collect problems."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            name, op, arg = m.group(1), m.group(2), m.group(3)
            got = env.get(name)
            if op == ":-":
                return got if got else (arg or "")
            if got is None or (op == ":?" and got == ""):
                msg = arg if op == ":?" and arg else f"environment variable {name} is not set"
                problems.append(f"{_fmt_path(path)}: {msg}")
                return ""
            return got

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env, problems, (*path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, problems, (*path, i)) for i, v in enumerate(value)]
    return value


def parse_settings(doc: Any, env: Mapping[str, str] | None = None) -> Settings:
    """Validate a parsed document. Raises ConfigError naming every problem."""
    problems: list[str] = []
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError([f"<root>: expected a mapping, got {type(doc).__name__}"])
    doc = interpolate(doc, os.environ if env is None else env, problems)
    try:
        settings = Settings.model_validate(doc)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{_fmt_path(loc)}: {msg}")
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return settings


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a YAML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    try:
        doc = yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader (libyaml when present)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(
            [f"{p}: invalid YAML at {where}: {getattr(exc, 'problem', exc)}"]
        ) from None
    return parse_settings(doc, env)
