"""Reading a config: the YAML file, ``${VAR}`` interpolation, strict validation. No network I/O
happens here. Every problem is reported at once, each with its path in the
document (``discovery.accounts.include_ous[1]: ...``), so an operator fixes a config in one pass.

Interpolation is done on parsed string values (never on the raw text), so a secret containing
YAML syntax cannot change the document's structure:

* ``${VAR}``            the variable's value; an error if it is unset
* ``${VAR:?message}``   the same, with the operator's own message
* ``${VAR:-default}``   ``default`` when unset or empty
* ``$${``               a literal ``${``

Secrets only where used: a command passes ``defer`` (the top-level sections it does not use),
and an unset variable there is no error. Its text stays as written (``${SPLUNK_HEC_TOKEN}``,
never sent anywhere: the command does not use that section) and its path is listed in
``Settings.deferred``. A value that then fails validation only because it is a placeholder (a
webhook URL) falls back to its default; a required one keeps the "not set" error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path as FilePath
from typing import Any

import yaml
from pydantic import ValidationError

from aggregator.config.settings import Settings, shard_state_path

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


Path = tuple[str | int, ...]


def interpolate(
    value: Any,
    env: Mapping[str, str],
    problems: list[str],
    path: Path = (),
    *,
    defer: frozenset[str] = frozenset(),
    deferred: dict[Path, str] | None = None,
) -> Any:
    """Replace ``${VAR}`` forms in every string of a parsed document; collect problems. An
    unset variable under a top-level section in ``defer`` is kept as written and recorded in
    ``deferred`` (path -> problem) instead."""
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
                if path and path[0] in defer and deferred is not None:
                    deferred[path] = f"{_fmt_path(path)}: {msg}"
                    return m.group(0)
                problems.append(f"{_fmt_path(path)}: {msg}")
                return ""
            return got

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {
            k: interpolate(v, env, problems, (*path, str(k)), defer=defer, deferred=deferred)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            interpolate(v, env, problems, (*path, i), defer=defer, deferred=deferred)
            for i, v in enumerate(value)
        ]
    return value


def _within(deferred: Path, loc: tuple[Any, ...]) -> bool:
    """Whether a validation error at ``loc`` is about the value at ``deferred`` (pydantic puts
    union tags such as ``splunk_hec`` between the document's own path elements)."""
    it = iter(loc)
    return bool(loc) and loc[0] == deferred[0] and all(part in it for part in deferred)


def _drop(doc: Any, path: Path) -> None:
    for part in path[:-1]:
        doc = doc[part]
    if isinstance(doc, dict):
        doc.pop(path[-1], None)


def parse_settings(
    doc: Any, env: Mapping[str, str] | None = None, *, defer: Iterable[str] = ()
) -> Settings:
    """Validate a parsed document. Raises ConfigError naming every problem. ``defer``: the
    top-level sections whose unset variables are not errors (see the module)."""
    problems: list[str] = []
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError([f"<root>: expected a mapping, got {type(doc).__name__}"])
    deferred: dict[Path, str] = {}
    doc = interpolate(
        doc,
        os.environ if env is None else env,
        problems,
        defer=frozenset(defer),
        deferred=deferred,
    )
    dropped: set[Path] = set()
    settings: Settings
    while True:
        try:
            settings = Settings.model_validate(doc)
        except ValidationError as exc:
            errors = exc.errors()
            placeholders = {d for d in deferred for err in errors if _within(d, tuple(err["loc"]))}
            if placeholders and placeholders.isdisjoint(dropped):
                for d in placeholders:  # a placeholder is not a valid value: use the default
                    _drop(doc, d)
                dropped |= placeholders
                continue
            for err in errors:
                blame = [d for d in deferred if _within(d, tuple(err["loc"]))]
                if blame:  # a required value whose variable is not set after all
                    problems.extend(deferred[d] for d in blame if deferred[d] not in problems)
                    continue
                loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
                msg = err["msg"]
                if err["type"] == "extra_forbidden":
                    msg = "unknown key"
                problems.append(f"{_fmt_path(loc)}: {msg}")
            raise ConfigError(problems) from None
        break
    if problems:
        raise ConfigError(problems)
    settings._deferred = dict(sorted((_fmt_path(p), m) for p, m in deferred.items()))
    if settings.shard.count > 1:
        settings = _per_shard(settings)
    return settings


def _per_shard(settings: Settings) -> Settings:
    """What each shard of several has of its own: its state file (and so its writer lock)
    and its chain of archive digests (their keys count the shard's own ledger ids), under
    ``<archive_digest.prefix>shard-I-of-N/``."""
    shard = settings.shard
    state = settings.state.model_copy(update={"path": shard_state_path(settings.state.path, shard)})
    digest = settings.integrity.archive_digest
    base = (
        digest.prefix if not digest.prefix or digest.prefix.endswith("/") else digest.prefix + "/"
    )
    digest = digest.model_copy(update={"prefix": f"{base}{shard.label}/"})
    integrity = settings.integrity.model_copy(update={"archive_digest": digest})
    return settings.model_copy(update={"state": state, "integrity": integrity})


STATE_PATH_ENV = "CTAGG_STATE_PATH"
HEALTH_HOST_ENV = "CTAGG_HEALTH_HOST"
SHARD_INDEX_ENV = "CTAGG_SHARD_INDEX"
_POD_ORDINAL = re.compile(r"-(\d+)$")


def _shard_index(shard: dict[str, Any], env: Mapping[str, str]) -> None:
    """``shard.index`` left out or null: ``$CTAGG_SHARD_INDEX``, else (more than one shard)
    the StatefulSet pod ordinal ending ``$POD_NAME`` or ``$HOSTNAME`` (``ctagg-2`` → 2)."""
    if shard.get("index") is not None:
        return
    raw = env.get(SHARD_INDEX_ENV)
    if raw is not None and raw.strip():
        text = raw.strip()
        # not a number: left as text, so the problem is reported at shard.index
        shard["index"] = int(text) if re.fullmatch(r"-?\d+", text) else text
        return
    count = shard.get("count", 1)
    if isinstance(count, int) and count > 1:
        for var in ("POD_NAME", "HOSTNAME"):
            m = _POD_ORDINAL.search(env.get(var) or "")
            if m:
                shard["index"] = int(m.group(1))
                return


def _environment_defaults(doc: Any, env: Mapping[str, str], config_path: FilePath) -> Any:
    """Defaults that depend on where ctagg runs, for keys the file leaves out:

    * ``state.path``: ``$CTAGG_STATE_PATH`` (the image sets it on its volume), else
      ``state/ctagg.db`` beside the config file — never relative to the working directory,
      so ``ctagg status`` finds the state ``ctagg run`` writes from wherever it is run;
    * ``service.health_host``: ``$CTAGG_HEALTH_HOST`` (the image sets ``0.0.0.0``; the chart
      sets it in the config), else the model's ``127.0.0.1``.
    """
    if not isinstance(doc, dict):
        return doc
    if doc.get("state") is None:
        doc["state"] = {}
    state = doc["state"]
    if isinstance(state, dict) and "path" not in state:
        default = config_path.resolve().parent / "state" / "ctagg.db"
        state["path"] = env.get(STATE_PATH_ENV) or str(default)
    shard = doc.get("shard")
    if shard is None and (env.get(SHARD_INDEX_ENV) or "").strip():
        shard = doc["shard"] = {}
    if isinstance(shard, dict):
        _shard_index(shard, env)
    host = env.get(HEALTH_HOST_ENV)
    if host:
        if doc.get("service") is None:
            doc["service"] = {}
        if isinstance(doc["service"], dict):
            doc["service"].setdefault("health_host", host)
    return doc


def load_settings(
    path: str | FilePath,
    env: Mapping[str, str] | None = None,
    *,
    defer: Iterable[str] = (),
    shard: tuple[int, int] | None = None,
) -> Settings:
    """Read and validate a YAML config file (``defer``: see :func:`parse_settings`; defaults
    that depend on the environment: :func:`_environment_defaults`; ``shard``: an
    ``(index, count)`` given on the command line, validated as ``shard.index`` and
    ``shard.count``)."""
    p = FilePath(path)
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
    environ = os.environ if env is None else env
    doc = doc if doc is not None else {}
    if shard is not None and isinstance(doc, dict):
        section = doc.get("shard")
        section = dict(section) if isinstance(section, dict) else {}
        section.update(index=shard[0], count=shard[1])
        doc["shard"] = section
    doc = _environment_defaults(doc, environ, p)
    return parse_settings(doc, environ, defer=defer)
