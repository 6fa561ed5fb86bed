"""Rebuild ``enterprise-attack.json`` and ``d3fend.json``: pinned MITRE data for pySigma.

pySigma 2 no longer ships ATT&CK tables: ``sigma.data.mitre_attack`` downloads MITRE's STIX
bundle on first use, which a detection service (or CI without internet) must not do. ctagg points
that loader at this file instead (:mod:`aggregator.detect.attack`). It holds, as a minimal STIX
bundle, exactly what the loader reads (the collection version, tactics, techniques with their
kill-chain phases, intrusion sets, software), taken from the last pySigma release that shipped
the tables (pySigma 0.11.23, ATT&CK v17.0, ``sigma/data/mitre_attack.py``). ``d3fend.json`` is
the same for D3FEND 0.16.0 (``sigma/data/mitre_d3fend.py``, as a minimal JSON-LD graph), which
only the rule linter's tag check reads::

    pip download --no-deps pysigma==0.11.23 -d /tmp/ps && unzip -o /tmp/ps/*.whl -d /tmp/ps
    python aggregator/detect/data/build_attack_bundle.py /tmp/ps/sigma/data

Not imported by ctagg at run time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("enterprise-attack.json")
OUT_D3FEND = Path(__file__).with_name("d3fend.json")
D3F = "http://d3fend.mitre.org/ontologies/d3fend.owl#"


def _ref(ext_id: str) -> list[dict[str, str]]:
    return [{"source_name": "mitre-attack", "external_id": ext_id}]


def bundle(tables: dict[str, Any]) -> dict[str, Any]:
    objects: list[dict[str, Any]] = [
        {"type": "x-mitre-collection", "x_mitre_version": tables["mitre_attack_version"]}
    ]
    for tid, short in sorted(tables["mitre_attack_tactics"].items()):
        objects.append(
            {"type": "x-mitre-tactic", "external_references": _ref(tid), "x_mitre_shortname": short}
        )
    phases = tables["mitre_attack_techniques_tactics_mapping"]
    for tid, name in sorted(tables["mitre_attack_techniques"].items()):
        objects.append(
            {
                "type": "attack-pattern",
                "name": name,
                "external_references": _ref(tid),
                "kill_chain_phases": [
                    {"kill_chain_name": "mitre-attack", "phase_name": p}
                    for p in phases.get(tid, [])
                ],
            }
        )
    others = (("intrusion-set", "mitre_attack_intrusion_sets"), ("tool", "mitre_attack_software"))
    for kind, key in others:
        for xid, name in sorted(tables.get(key, {}).items()):
            objects.append({"type": kind, "name": name, "external_references": _ref(xid)})
    return {"type": "bundle", "objects": objects}


def d3fend_graph(tables: dict[str, Any]) -> dict[str, Any]:
    version = tables["mitre_d3fend_version"]
    graph: list[dict[str, Any]] = [
        {
            "@id": "http://d3fend.mitre.org/ontologies/d3fend.owl",
            "@type": "owl:Ontology",
            "owl:versionIRI": f"http://d3fend.mitre.org/ontologies/d3fend/{version}",
        }
    ]
    for label in sorted(tables["mitre_d3fend_tactics"]):
        graph.append({"@id": f"d3f:{label}", "@type": ["d3f:DefensiveTactic"], "rdfs:label": label})
    for did, label in sorted(tables["mitre_d3fend_techniques"].items()):
        graph.append({"@id": f"d3f:{did}", "d3f:d3fend-id": did, "rdfs:label": label})
    for aid, label in sorted(tables["mitre_d3fend_artifacts"].items()):
        graph.append({"@id": f"{D3F}{aid}", "@type": ["d3f:DigitalArtifact"], "rdfs:label": label})
    return {"@graph": graph}


def _load(path: Path) -> dict[str, Any]:
    tables: dict[str, Any] = {}
    exec(path.read_text(encoding="utf-8"), tables)  # noqa: S102 - pySigma's own data module
    return tables


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")


def main(argv: list[str]) -> None:
    src = Path(argv[1])
    attack = _load(src / "mitre_attack.py")
    _write(OUT, bundle(attack))
    d3fend = _load(src / "mitre_d3fend.py")
    _write(OUT_D3FEND, d3fend_graph(d3fend))
    print(f"ATT&CK v{attack['mitre_attack_version']}, D3FEND {d3fend['mitre_d3fend_version']}")


if __name__ == "__main__":
    main(sys.argv)
