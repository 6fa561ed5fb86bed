"""MITRE ATT&CK for alerts, from pySigma's data (``sigma.data.mitre_attack``).

pySigma 2 reads ATT&CK from MITRE's STIX bundle, downloaded on first use. ctagg never downloads:
it points pySigma's loader at a pinned copy shipped with the package
(``data/enterprise-attack.json``, ATT&CK v17.0, rebuilt by ``data/build_attack_bundle.py``) and
reads, once per process, the tactic
ids and names and each technique's own tactics. An alert then names, for each of its rule's
techniques, only the tactics that technique belongs to.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ATTACK_DATA = Path(__file__).with_name("data") / "enterprise-attack.json"
_SMALL_WORDS = frozenset({"and", "or", "of", "the"})


@dataclass(frozen=True)
class Tactic:
    uid: str  # TA0005
    name: str  # Defense Evasion
    shortname: str  # defense-evasion


@dataclass(frozen=True)
class Technique:
    uid: str  # T1562.008
    name: str  # Disable or Modify Cloud Logs
    tactics: tuple[Tactic, ...]

    @property
    def parent(self) -> str:
        return self.uid.split(".", 1)[0]


@dataclass(frozen=True)
class AttackData:
    version: str
    tactics: dict[str, Tactic]  # by shortname
    techniques: dict[str, Technique]  # by upper-case id


def tactic_display_name(shortname: str) -> str:
    """``command-and-control`` -> ``Command and Control`` (ATT&CK's own capitalisation)."""
    words = shortname.split("-")
    return " ".join(w if i and w in _SMALL_WORDS else w.capitalize() for i, w in enumerate(words))


@contextlib.contextmanager
def pinned_attack_data(cache_dir: str) -> Iterator[None]:
    """pySigma's ATT&CK loader reads the pinned bundle, caching under ``cache_dir``."""
    from sigma.data import mitre_attack

    mitre_attack.set_cache_dir(cache_dir)
    mitre_attack.set_url(str(ATTACK_DATA))
    try:
        yield
    finally:
        mitre_attack.set_cache_dir(cache_dir)  # closes the cache


@cache
def attack_data() -> AttackData:
    from sigma.data import mitre_attack

    with tempfile.TemporaryDirectory(prefix="ctagg-attack-") as d, pinned_attack_data(d):
        version = str(mitre_attack.mitre_attack_version)
        tactic_ids: dict[str, str] = dict(mitre_attack.mitre_attack_tactics)
        names: dict[str, str] = dict(mitre_attack.mitre_attack_techniques)
        mapping: dict[str, list[str]] = dict(mitre_attack.mitre_attack_techniques_tactics_mapping)
    tactics = {
        short: Tactic(uid=uid, name=tactic_display_name(short), shortname=short)
        for uid, short in tactic_ids.items()
    }
    techniques = {
        tid.upper(): Technique(
            uid=tid.upper(),
            name=name,
            tactics=tuple(tactics[s] for s in mapping.get(tid, []) if s in tactics),
        )
        for tid, name in names.items()
    }
    return AttackData(version=version, tactics=tactics, techniques=techniques)
