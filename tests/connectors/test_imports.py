"""Connectors stay in their room. import-linter holds most of it (`make lint`, the contracts in
pyproject.toml: no AWS SDK, state, scheduler or stage, and no connector imports another).
What it cannot say is checked here: the one boto3 import, for SigV4 credentials, sits inside
``connectors/opensearch.py``'s ``_sigv4_credentials``, and every connector module is in the
independence contract (so a new one cannot slip by)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import connectors

PKG = Path(connectors.__file__).parent
ROOT = PKG.parent
SHARED = {"base", "__init__"}


def _boto3_imports(source: str) -> list[str | None]:
    """The enclosing function of every import of boto3 (None: at module level)."""
    found: list[str | None] = []

    def visit(node: ast.AST, func: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else func
            if isinstance(child, ast.Import):
                found.extend(func for a in child.names if a.name.split(".")[0] == "boto3")
            elif isinstance(child, ast.ImportFrom) and (child.module or "").startswith("boto3"):
                found.append(func)
            visit(child, name)

    visit(ast.parse(source), None)
    return found


def _contracts() -> list[dict[str, object]]:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts: list[dict[str, object]] = doc["tool"]["importlinter"]["contracts"]
    return contracts


def test_boto3_only_for_sigv4_credentials() -> None:
    """The ignored `connectors.opensearch -> boto3` import is the SigV4 one and no other."""
    assert _boto3_imports((PKG / "opensearch.py").read_text(encoding="utf-8")) == [
        "_sigv4_credentials"
    ]
    for path in PKG.glob("*.py"):
        if path.stem != "opensearch":
            assert _boto3_imports(path.read_text(encoding="utf-8")) == [], path.name


def test_the_boto3_check_sees_module_level_and_other_functions() -> None:
    assert _boto3_imports("import boto3\n") == [None]
    assert _boto3_imports("def other():\n    from boto3 import Session\n") == ["other"]


def test_every_connector_module_is_in_the_independence_contract() -> None:
    registered = {cls.__module__ for cls in connectors.REGISTRY.values()}
    on_disk = {f"connectors.{p.stem}" for p in PKG.glob("*.py") if p.stem not in SHARED}
    (independent,) = [c for c in _contracts() if c["type"] == "independence"]
    assert registered <= on_disk
    assert set(independent["modules"]) == on_disk  # type: ignore[arg-type]
