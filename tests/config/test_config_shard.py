"""The shard section: every bad value is named with its path (shard.index, shard.count),
the index comes from the config, $CTAGG_SHARD_INDEX or a StatefulSet pod ordinal, a CLI
``--shard I/N`` overrides it, and each shard of several gets its own state file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aggregator.config import ConfigError, ShardSettings, load_settings, shard_state_path

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, shard: object | None = None, name: str = "c.yaml") -> Path:
    doc: dict[str, object] = {
        "state": {"path": str(tmp_path / "state.db")},
        "archive": {"bucket": "central"},
    }
    if shard is not None:
        doc["shard"] = shard
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_settings(path, env or {})
    return err.value.problems


def test_every_bad_shard_value_is_named_with_its_path(tmp_path: Path) -> None:
    """index >= count, a negative index, count > slots, an unknown key: each with its path."""
    got = problems(write(tmp_path, {"index": 3, "count": 3}))
    assert got == ["shard.index: Value error, index 3 is not below count 3 (shards are 0 .. 2)"]
    assert problems(write(tmp_path, {"index": -1, "count": 2}))[0].startswith("shard.index:")
    got = problems(write(tmp_path, {"count": 9, "slots": 8}))
    assert got == [
        "shard.count: Value error, count 9 exceeds slots 8 (each shard owns whole slots)"
    ]
    got = problems(write(tmp_path, {"count": 0, "shards": 2}))
    assert sorted(p.split(":")[0] for p in got) == ["shard.count", "shard.shards"]


def test_index_from_env_then_pod_ordinal_only_with_several_shards(tmp_path: Path) -> None:
    """$CTAGG_SHARD_INDEX wins (unless empty); else POD_NAME/HOSTNAME '-<n>' when count > 1;
    else 0."""
    three = write(tmp_path, {"count": 3})
    assert load_settings(three, {"CTAGG_SHARD_INDEX": "2", "POD_NAME": "ctagg-1"}).shard.index == 2
    assert load_settings(three, {"POD_NAME": "ctagg-1", "HOSTNAME": "x-2"}).shard.index == 1
    # the chart's pod-index label is empty before Kubernetes 1.28: POD_NAME decides
    assert load_settings(three, {"CTAGG_SHARD_INDEX": "", "POD_NAME": "ctagg-2"}).shard.index == 2
    assert load_settings(three, {"CTAGG_SHARD_INDEX": " ", "POD_NAME": "ctagg-0"}).shard.index == 0
    assert load_settings(three, {"HOSTNAME": "ctagg-cloudtrail-aggregator-2"}).shard.index == 2
    assert load_settings(three, {"HOSTNAME": "laptop"}).shard.ordinal == 0
    one = write(tmp_path, {"count": 1}, "one.yaml")
    assert load_settings(one, {"HOSTNAME": "ctagg-5"}).shard.ordinal == 0  # not an ordinal
    got = problems(three, {"CTAGG_SHARD_INDEX": "two"})
    assert got[0].startswith("shard.index:")
    assert problems(three, {"POD_NAME": "ctagg-3"})[0].startswith("shard.index: Value error")
    # the config's own index is not overridden by the environment
    fixed = write(tmp_path, {"count": 3, "index": 0}, "fixed.yaml")
    assert load_settings(fixed, {"CTAGG_SHARD_INDEX": "2"}).shard.index == 0


def test_several_shards_each_have_their_own_state_file(tmp_path: Path) -> None:
    """state.db → state.shard-I-of-N.db beside it; one shard keeps the path as it is."""
    s = load_settings(write(tmp_path, {"count": 3, "index": 1}), {})
    assert s.state.path == str(tmp_path / "state.shard-1-of-3.db")
    assert load_settings(write(tmp_path), {}).state.path == str(tmp_path / "state.db")
    assert shard_state_path("/v/state", ShardSettings(index=0, count=2)) == (
        "/v/state.shard-0-of-2"
    )
    assert shard_state_path("/v/a.b/s.db", ShardSettings(index=1, count=2)) == (
        "/v/a.b/s.shard-1-of-2.db"
    )


def test_several_shards_each_sign_their_own_archive_digest_chain(tmp_path: Path) -> None:
    """Digest keys count a state's own ledger ids, so each shard's chain has its own prefix
    (two shards must never write the same digest key); one shard keeps the prefix."""
    s = load_settings(write(tmp_path, {"count": 3, "index": 2}), {})
    assert s.integrity.archive_digest.prefix == "CTAgg-Digest/shard-2-of-3/"
    assert load_settings(write(tmp_path), {}).integrity.archive_digest.prefix == "CTAgg-Digest/"


def test_cli_shard_overrides_the_config_and_is_validated(tmp_path: Path) -> None:
    """``load_settings(shard=(i, n))`` replaces index and count, checked like the file."""
    path = write(tmp_path, {"count": 2, "index": 0})
    s = load_settings(path, {}, shard=(2, 4))
    assert (s.shard.index, s.shard.count) == (2, 4)
    assert s.state.path.endswith("state.shard-2-of-4.db")
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, {"slots": 2}), {}, shard=(0, 3))
    assert err.value.problems[0].startswith("shard.count:")


@pytest.mark.parametrize("spec", ["3/3", "1", "a/b", "-1/2", "0/0"])
def test_cli_bad_shard_argument_is_a_usage_error(tmp_path: Path, spec: str) -> None:
    """``ctagg once CONFIG --shard BAD``: exit 2, the argument named, nothing done."""
    proc = subprocess.run(
        [sys.executable, "-m", "aggregator", "once", str(write(tmp_path)), f"--shard={spec}"],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "argument --shard: not a shard" in proc.stderr
    assert not (tmp_path / "state.db").exists()
