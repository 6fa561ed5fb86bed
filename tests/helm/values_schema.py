"""values.schema.json embeds ctagg's config schema (config/schema.json) under ``config``, so a
bad config (``config.bogus``) fails ``helm install`` instead of the pod's start.

    .venv/bin/python -m tests.helm.values_schema   # rewrite the embedded part after `make schema`
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VALUES_SCHEMA = ROOT / "helm" / "cloudtrail-aggregator" / "values.schema.json"
CONFIG_SCHEMA = ROOT / "config" / "schema.json"
CONFIG_DEF = "CtaggConfig"


def embedded(values_schema: dict[str, Any], config_schema: dict[str, Any]) -> dict[str, Any]:
    """``values_schema`` with ``config`` replaced by a reference to the config schema, whose
    definitions move to the values schema's ``$defs`` (its ``#/$defs/...`` refs resolve there)."""
    out = dict(values_schema)
    root = {k: v for k, v in config_schema.items() if k not in ("$defs", "$schema")}
    defs = dict(config_schema.get("$defs", {}))
    defs[CONFIG_DEF] = root
    out["$defs"] = defs
    props = dict(out["properties"])
    props["config"] = {
        "description": (
            "The ctagg config document, checked against ctagg's own schema (config/schema.json; "
            "the chart sets state.path and service.health_host/health_port itself)."
        ),
        "$ref": f"#/$defs/{CONFIG_DEF}",
    }
    out["properties"] = props
    return out


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


if __name__ == "__main__":
    current = json.loads(VALUES_SCHEMA.read_text())
    VALUES_SCHEMA.write_text(render(embedded(current, json.loads(CONFIG_SCHEMA.read_text()))))
