"""ATT&CK for alerts from pySigma's data (aggregator.detect.attack, alerts.attack_objects)."""

from __future__ import annotations

from aggregator.detect.alerts import attack_objects
from aggregator.detect.attack import attack_data, tactic_display_name


def test_data_comes_from_the_pinned_bundle_through_pysigma() -> None:
    """pySigma's loader reads the pinned bundle: a version, 14 tactics, hundreds of techniques."""
    data = attack_data()
    assert data.version == "17.0"
    assert len(data.tactics) == 14
    assert len(data.techniques) > 600
    assert data.tactics["defense-evasion"].uid == "TA0005"
    assert [t.shortname for t in data.techniques["T1530"].tactics] == ["collection"]


def test_tactic_names_keep_attack_capitalisation() -> None:
    """Short names become ATT&CK's display names."""
    assert tactic_display_name("command-and-control") == "Command and Control"
    assert tactic_display_name("privilege-escalation") == "Privilege Escalation"


def test_each_technique_gets_only_its_own_tactics() -> None:
    """A rule tagged with two techniques and their tactics yields one OCSF attack per technique
    and tactic of that technique, never a tactic of the other technique; sub-techniques sit
    under their parent; OCSF 1.1's singular 'tactic' is used."""
    tags = ("defense-evasion", "collection", "t1562.008", "t1530")
    got = attack_objects(tags)
    pairs = {(a.get("sub_technique", a["technique"])["uid"], a["tactic"]["uid"]) for a in got}
    assert pairs == {("T1562.008", "TA0005"), ("T1530", "TA0009")}
    first = got[0]
    assert first["technique"] == {"uid": "T1562", "name": "Impair Defenses"}
    assert first["sub_technique"]["name"] == "Disable or Modify Cloud Logs"
    assert first["version"] == "v17.0"
    assert all("tactics" not in a for a in got)


def test_technique_with_several_tactics_and_unknown_ids() -> None:
    """T1078.004 belongs to four tactics (one object each); an id the data does not know keeps its
    uid; a tactic tag no technique covers stands alone."""
    got = attack_objects(("t1078.004", "t9999", "impact"))
    tactics = [a["tactic"]["name"] for a in got if "sub_technique" in a]
    assert sorted(tactics) == [
        "Defense Evasion",
        "Initial Access",
        "Persistence",
        "Privilege Escalation",
    ]
    assert {"version": "v17.0", "technique": {"uid": "T9999"}} in got
    assert {"version": "v17.0", "tactic": {"uid": "TA0040", "name": "Impact"}} in got
