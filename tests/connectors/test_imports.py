"""Connectors stay in their room: no boto3, no state, no scheduler, no imports of each other.

The one exception, by design: ``connectors/opensearch.py`` may import boto3 inside
``_sigv4_credentials`` (credentials for SigV4 signing) and nowhere else.
"""

from __future__ import annotations

import ast
from pathlib import Path

import connectors

PKG = Path(connectors.__file__).parent
FORBIDDEN = ("boto3", "botocore", "aioboto3", "aiobotocore", "aggregator.state", "apscheduler")
SHARED = {"base", "__init__"}
CONNECTOR_MODULES = sorted(p.stem for p in PKG.glob("*.py") if p.stem not in SHARED)


def _imports(tree: ast.AST) -> list[tuple[str, str | None]]:
    """(module imported, enclosing function name or None) for every import statement."""
    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST, func: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            name = func
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = child.name
            if isinstance(child, ast.Import):
                found.extend((a.name, name) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                found.append((child.module, name))
                found.extend((f"{child.module}.{a.name}", name) for a in child.names)
            visit(child, name)

    visit(tree, None)
    return found


def _violations(path: Path) -> list[str]:
    me = path.stem
    bad = []
    for module, func in _imports(ast.parse(path.read_text(encoding="utf-8"))):
        if module.startswith("aggregator.scheduler"):
            bad.append(module)
        for f in FORBIDDEN:
            if module == f or module.startswith(f + "."):
                if me == "opensearch" and f == "boto3" and func == "_sigv4_credentials":
                    continue
                bad.append(f"{module} (in {func or 'module'})")
        if me not in SHARED and module.startswith("connectors."):
            other = module.split(".")[1]
            if other not in SHARED and other != me:
                bad.append(module)
    return bad


def test_every_connector_module_is_checked() -> None:
    """The registry's modules are all found by the check (so a new one cannot slip by)."""
    registered = {cls.__module__.split(".")[1] for cls in connectors.REGISTRY.values()}
    assert registered <= set(CONNECTOR_MODULES)
    assert {"opensearch", "splunk_hec", "syslog"} <= registered


def test_connectors_do_not_import_forbidden_rooms() -> None:
    """No connector imports boto3 (except SigV4 credentials), state, scheduler or another."""
    problems = {m: _violations(PKG / f"{m}.py") for m in [*CONNECTOR_MODULES, "base"]}
    assert {m: v for m, v in problems.items() if v} == {}


def test_the_check_catches_violations(tmp_path: Path) -> None:
    """The checker itself flags each forbidden kind of import."""
    bad = tmp_path / "syslog.py"
    bad.write_text(
        "import boto3\nfrom aggregator.state import State\nfrom connectors.opensearch import X\n"
        "def f():\n    from apscheduler.schedulers import asyncio\n",
        encoding="utf-8",
    )
    got = " ".join(_violations(bad))
    for kind in ("boto3", "aggregator.state", "connectors.opensearch", "apscheduler"):
        assert kind in got
    bad.write_text("from aggregator import state\n", encoding="utf-8")
    assert _violations(bad) == ["aggregator.state (in module)"]
    ok = tmp_path / "opensearch.py"
    ok.write_text("def _sigv4_credentials():\n    import boto3\n", encoding="utf-8")
    assert _violations(ok) == []
    ok.write_text("def other():\n    import boto3\n", encoding="utf-8")
    assert _violations(ok) != []
