"""``python -m aggregator.detect.lint [PATH ...]``: SigmaHQ conventions for Sigma rule files.

Runs every validator of pySigma and of ``pySigma-validators-sigmaHQ`` (the checks SigmaHQ runs on
its own rules: title case, status, file names, tag namespaces, ATT&CK technique/tactic pairs,
...) over the built-in pack, or over the given files and directories, and prints one line per
issue. Exit 1 if there is any. ``make lint`` runs it on the pack.

The validators read reference data (ATT&CK, SigmaHQ's taxonomy and file-name prefixes) that
they would otherwise download on first use; here it is pinned: ATT&CK and D3FEND
from ``data/enterprise-attack.json`` and ``data/d3fend.json`` (see
:mod:`aggregator.detect.attack`), the SigmaHQ data from
``data/sigmahq/`` (the ``aws`` entries of SigmaHQ's files, at the versions they carry: ctagg
only loads ``product: aws`` rules). Nothing is fetched; the caches live in a temporary directory.

Needs the ``dev`` extra (``pysigma-validators-sigmahq``).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from aggregator.detect.attack import ATTACK_DATA, pinned_attack_data
from aggregator.detect.rules import builtin_rules_dir

SIGMAHQ_DATA = Path(__file__).with_name("data") / "sigmahq"
D3FEND_DATA = Path(__file__).with_name("data") / "d3fend.json"


def _rule_files(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(x for x in p.rglob("*") if x.suffix in (".yml", ".yaml") and x.is_file())
        else:
            out.append(p)
    return out


def lint(paths: Sequence[Path], out: TextIO) -> int:
    """Print every issue of every rule file under ``paths``; returns how many there are."""
    from sigma.collection import SigmaCollection
    from sigma.data import mitre_d3fend
    from sigma.plugins import InstalledSigmaPlugins
    from sigma.rule import SigmaRule
    from sigma.validation import SigmaValidator
    from sigma.validators.sigmahq.data import data_filename, data_taxonomy

    files = _rule_files(paths)
    with tempfile.TemporaryDirectory(prefix="ctagg-lint-") as cache, pinned_attack_data(cache):
        mitre_d3fend.set_cache_dir(str(Path(cache) / "d3fend"))
        mitre_d3fend.set_url(str(D3FEND_DATA))
        for module, name in ((data_filename, "filename"), (data_taxonomy, "taxonomy")):
            module.set_cache_dir(str(Path(cache) / name))
            module.set_url(str(SIGMAHQ_DATA / f"sigmahq_{name}.json"))
        collection = SigmaCollection.load_ruleset([str(f) for f in files])
        found: dict[str, Any] = InstalledSigmaPlugins.autodiscover().validators
        validator = SigmaValidator(found.values())  # the validator classes
        rules = [r for r in collection.rules if isinstance(r, SigmaRule)]
        issues = validator.validate_rules(iter(rules))
        for issue in issues:
            where = ", ".join(
                str(r.source.path) if r.source is not None else str(r.id) for r in issue.rules
            )
            extra = {
                k: v
                for k, v in vars(issue).items()
                if k not in ("rules", "severity", "description")
            }
            detail = f" {extra}" if extra else ""
            print(f"{where}: {type(issue).__name__}: {issue.description}{detail}", file=out)
        for module in (data_filename, data_taxonomy, mitre_d3fend):
            module.set_cache_dir(cache)  # close the caches before the directory goes
    summary = f"{len(files)} rule file(s), {len(issues)} issue(s) (ATT&CK data {ATTACK_DATA.name})"
    print(summary, file=out)
    return len(issues)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    paths = [Path(a) for a in args] or [builtin_rules_dir()]
    return 1 if lint(paths, sys.stdout) else 0


if __name__ == "__main__":
    sys.exit(main())
