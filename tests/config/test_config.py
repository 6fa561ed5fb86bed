"""Config: strict keys, every problem reported with its path, ${VAR} interpolation, schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aggregator.cli import main
from aggregator.config import ConfigError, load_settings, parse_settings
from aggregator.config.schema import json_schema

ROOT = Path(__file__).resolve().parents[2]


def problems(doc: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(doc, env or {})
    return info.value.problems


def test_minimal_config_gets_defaults() -> None:
    s = parse_settings({"archive": {"bucket": "central"}}, {})
    assert (
        s.credentials.role_arn_template
        == "arn:aws:iam::{account_id}:role/OrganizationAccountAccessRole"
    )
    assert s.collect.relist_days == 2
    assert s.aws.endpoint_url is None


def test_every_problem_is_reported_with_its_path() -> None:
    """One pass names all problems: unknown keys, bad values, a missing required key."""
    found = problems(
        {
            "colect": {},
            "discovery": {"accounts": {"include_ids": ["123", "111111111111"], "bogus": 1}},
            "credentials": {"role_arn_template": "arn:aws:iam::1:role/x"},
            "collect": {"max_concurrency": 0},
        }
    )
    text = "\n".join(found)
    assert "colect: unknown key" in text
    assert "discovery.accounts.include_ids[0]:" in text
    assert "discovery.accounts.bogus: unknown key" in text
    assert "credentials.role_arn_template: Value error, must contain {account_id}" in text
    assert "collect.max_concurrency:" in text
    assert "archive: Field required" in text
    assert len(found) == 6


def test_env_interpolation_forms() -> None:
    env = {"BUCKET": "central", "EXT": "s3cr3t"}
    s = parse_settings(
        {
            "archive": {"bucket": "${BUCKET}", "prefix": "${PFX:-archive}"},
            "credentials": {"external_id": "${EXT:?set the external id}"},
            "aws": {"endpoint_url": "http://$${literal}"},
        },
        env,
    )
    assert s.archive.bucket == "central"
    assert s.archive.prefix == "archive/"
    assert s.credentials.external_id is not None
    assert s.credentials.external_id.get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in repr(s)
    assert s.aws.endpoint_url == "http://${literal}"


def test_missing_variables_are_named_with_their_paths() -> None:
    found = problems(
        {"archive": {"bucket": "${NOPE}"}, "credentials": {"external_id": "${EXT:?ask the admin}"}}
    )
    assert "archive.bucket: environment variable NOPE is not set" in found
    assert "credentials.external_id: ask the admin" in found


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("archive:\n  bucket: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_settings(p, {})
    assert "invalid YAML at line" in info.value.problems[0]


def test_example_configs_validate() -> None:
    for path in sorted((ROOT / "config").glob("*.yaml")):
        load_settings(path, {"CTAGG_EXTERNAL_ID": "x"})


def test_schema_file_is_current() -> None:
    on_disk = json.loads((ROOT / "config" / "schema.json").read_text())
    assert on_disk == json_schema()
    assert on_disk["additionalProperties"] is False


def test_validate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("archive: {bucket: central}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("archive: {bucket: central, extra: 1}\nstate: {pth: x}\n")
    assert main(["validate", str(good)]) == 0
    with pytest.raises(SystemExit) as info:
        main(["validate", str(bad)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err
    assert "archive.extra: unknown key" in err
    assert "state.pth: unknown key" in err


def test_unset_variables_of_deferred_sections_are_not_errors() -> None:
    """Secrets only where used: a command that does not use forward or detect loads a config
    whose SIEM token and webhook are unset; the placeholders are recorded, never resolved."""
    from aggregator.config import ConfigError, parse_settings

    doc = {
        "archive": {"bucket": "central"},
        "credentials": {"external_id": "${CTAGG_EXTERNAL_ID}"},
        "forward": {
            "connectors": [
                {"name": "s", "type": "splunk_hec", "url": "https://x", "token": "${SPLUNK}"}
            ]
        },
        "detect": {"webhook_url": "${HOOK:?set the alert webhook}"},
    }
    with pytest.raises(ConfigError) as info:
        parse_settings(doc, env={})
    assert len(info.value.problems) >= 3

    settings = parse_settings(doc, env={"CTAGG_EXTERNAL_ID": "x"}, defer=("forward", "detect"))

    assert settings.deferred == {
        "detect.webhook_url": "detect.webhook_url: set the alert webhook",
        "forward.connectors[0].token": (
            "forward.connectors[0].token: environment variable SPLUNK is not set"
        ),
    }
    assert settings.forward.connectors[0].name == "s"  # still known (status shows connectors)
    assert settings.detect.webhook_url is None  # a placeholder URL is no URL: the default
    with pytest.raises(ConfigError) as used:  # a section the command uses is still strict
        parse_settings(doc, env={}, defer=("forward", "detect"))
    assert used.value.problems == [
        "credentials.external_id: environment variable CTAGG_EXTERNAL_ID is not set"
    ]


def test_a_deferred_variable_in_a_required_value_is_still_an_error() -> None:
    """A placeholder that is not a valid value for a required setting (a syslog port) cannot
    fall back to a default: the error says the variable is not set."""
    from aggregator.config import ConfigError, parse_settings

    doc = {
        "archive": {"bucket": "central"},
        "forward": {"connectors": [{"name": "s", "type": "syslog", "host": "h", "port": "${P}"}]},
    }
    with pytest.raises(ConfigError) as info:
        parse_settings(doc, env={}, defer=("forward",))
    assert info.value.problems == ["forward.connectors[0].port: environment variable P is not set"]


def test_example_config_shows_every_section_of_the_schema() -> None:
    """README says config/example.yaml shows every section: its top-level keys are the
    schema's, and the keys people asked for are there (retention, validate_digests)."""
    import yaml

    example = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
    assert set(example) == set(json_schema()["properties"])
    assert "validate_digests" in example["integrity"]
    assert set(example["retention"]) == set(
        json_schema()["$defs"]["RetentionSettings"]["properties"]
    )


def test_state_path_and_health_host_defaults_do_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left out, state.path is state/ctagg.db beside the config file (absolute), or
    $CTAGG_STATE_PATH; the health server binds 127.0.0.1 unless $CTAGG_HEALTH_HOST says."""
    cfg = tmp_path / "conf" / "ctagg.yaml"
    cfg.parent.mkdir()
    cfg.write_text("archive: {bucket: central}\n")
    monkeypatch.chdir(tmp_path)

    plain = load_settings(cfg, {})
    image = load_settings(
        cfg, {"CTAGG_STATE_PATH": "/var/lib/ctagg/state.db", "CTAGG_HEALTH_HOST": "0.0.0.0"}
    )

    assert plain.state.path == str(tmp_path / "conf" / "state" / "ctagg.db")
    assert plain.service.health_host == "127.0.0.1"
    assert image.state.path == "/var/lib/ctagg/state.db"
    assert image.service.health_host == "0.0.0.0"
    cfg.write_text("archive: {bucket: central}\nstate: {path: /data/s.db}\n")
    assert load_settings(cfg, {"CTAGG_STATE_PATH": "/x.db"}).state.path == "/data/s.db"


def test_validate_notes_a_relative_state_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("archive: {bucket: central}\nstate: {path: ./state.db}\n")
    assert main(["validate", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "note: state.path './state.db' is relative" in out
