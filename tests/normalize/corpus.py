"""Every record in the shared testdata, whatever its wrapper, for whole-corpus tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from aggregator.ingest.envelopes import Kind, Parsed, iter_items


def find_testdata() -> Path:
    """The shared testdata folder (same search as tests/conftest.py, without importing it: a
    second import of conftest would install a second network guard)."""
    root = Path(__file__).resolve().parents[2]
    for parent in (root, *root.parents):
        if (parent / "shared" / "testdata").exists():
            return parent / "shared" / "testdata"
    return root.parent / "shared" / "testdata"


TESTDATA = find_testdata()

# Test-corpus wrappers (not real envelopes): the record sits under one of these keys.
_WRAPPER_KEYS = ("record", "json", "log", "input")
_SKIP_NAMES = frozenset({"rules_index.json", "SOURCES.md"})


def _unwrap(doc: Any) -> Any:
    if isinstance(doc, dict) and ("doc" in doc or "case_id" in doc or "pair_id" in doc):
        for key in _WRAPPER_KEYS:
            if isinstance(doc.get(key), dict):
                return doc[key]
    return doc


def corpus_files(root: Path) -> list[Path]:
    return [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and p.suffix not in (".parquet", ".md")
        and not p.name.endswith(".ocsf.json")
        and p.name not in _SKIP_NAMES
    ]


def corpus_records(root: Path) -> Iterator[tuple[str, dict[str, Any], Kind | None]]:
    """(where, record, kind) for every event-like object. Objects the envelope parser rejects
    (e.g. Panther's lower-cased test logs) are yielded with kind None: the normalizer must not
    fail on them either."""
    for path in corpus_files(root):
        data = path.read_bytes()
        if path.suffix == ".jsonl":
            for lineno, line in enumerate(data.splitlines(), start=1):
                doc = _unwrap(orjson.loads(line))
                where = f"{path}:{lineno}"
                for item in iter_items(orjson.dumps(doc), where):
                    if isinstance(item, Parsed):
                        yield item.where, item.record, item.kind
                    elif isinstance(doc, dict):
                        yield where, doc, None
        else:
            for item in iter_items(data, str(path)):
                if isinstance(item, Parsed):
                    yield item.where, item.record, item.kind
