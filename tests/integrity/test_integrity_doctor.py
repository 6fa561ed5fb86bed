"""ctagg doctor against moto: per account × region it tells what works and, for a denial, the
permission to grant; the central write check leaves exactly one probe object."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aioboto3
import pytest
from awsfixtures import REGION, StsSessions, client, log_key, log_object, make_source, record
from rich.console import Console

from aggregator.aws.clients import Aws
from aggregator.aws.inventory import Account, AccountFailure, Inventory
from aggregator.cli.discover import print_doctor, render_text
from aggregator.config import Settings, parse_settings
from aggregator.integrity.doctor import PROBE_KEY, Doctor

A1, A2, A4 = "111111111111", "222222222222", "444444444444"


def settings(tmp_path: Path, **archive: Any) -> Settings:
    return parse_settings(
        {
            "state": {"path": str(tmp_path / "s.db")},
            "aws": {"max_attempts": 1},
            "archive": {"bucket": "central", **archive},
        }
    )


def deny(op: str) -> Any:
    def handler(**_: Any) -> Any:
        return SimpleNamespace(status_code=403), {
            "Error": {"Code": "AccessDenied", "Message": "Access Denied"},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        }

    return handler


class Sessions(StsSessions):
    """A2 cannot be assumed; A4 is the base identity with GetObject denied."""

    def __init__(self) -> None:
        super().__init__(deny={A2})

    def role_arn(self, account_id: str) -> str:
        return f"arn:aws:iam::{account_id}:role/ctagg-member"

    async def session_for(self, account_id: str | None) -> aioboto3.Session:
        if account_id == A4:
            s = aioboto3.Session(region_name=REGION)
            s._session.register("before-call.s3.GetObject", deny("GetObject"))
            return s
        return await super().session_for(account_id)


@pytest.fixture
def inventory(moto: str) -> Inventory:
    s3 = client("s3")
    s3.create_bucket(Bucket="central")
    s3.create_bucket(Bucket="org-trail")
    ok = make_source("org-trail", A1)
    s3.put_object(
        Bucket="org-trail",
        Key=log_key(ok.prefix, A1, REGION, "20240501T0100Z"),
        Body=log_object([record("e1", A1)]),
    )
    empty = make_source("org-trail", A1, "us-west-2")
    missing = make_source("no-such-trail-bucket", A1, "eu-west-1")
    denied = make_source("org-trail", A2, reader=A2)
    unreadable = make_source("org-trail", A4, reader=A4)
    s3.put_object(
        Bucket="org-trail",
        Key=log_key(unreadable.prefix, A4, REGION, "20240501T0100Z"),
        Body=log_object([record("e4", A4)]),
    )
    return Inventory(
        accounts=[Account(A1), Account(A2), Account(A4), Account("555555555555")],
        regions={A1: [REGION, "us-west-2", "eu-west-1", "ap-south-1"], A2: [REGION], A4: [REGION]},
        trails=[],
        sources=[ok, empty, missing, denied, unreadable],
        failures=[AccountFailure("555555555555", "assume_role", "AccessDenied: nope")],
    )


async def test_doctor_reports_each_account_region(tmp_path: Path, inventory: Inventory) -> None:
    """ok rows pass all checks; a denied role, a missing bucket, an empty prefix, a denied read
    and an undiscovered region each fail with the right reason and missing permission."""
    cfg = settings(tmp_path)
    report = await Doctor(cfg, Sessions(), Aws(cfg.aws)).run(inventory)
    rows = {(r.account_id, r.region): r for r in report.rows}
    assert rows[(A1, REGION)].ok
    assert [c.name for c in rows[(A1, REGION)].checks] == ["assume", "list", "read"]

    a2 = rows[(A2, REGION)].check("assume")
    assert a2 is not None
    assert not a2.ok
    assert "sts:AssumeRole on arn:aws:iam::222222222222:role/ctagg-member" in a2.missing

    lst = rows[(A1, "eu-west-1")].check("list")
    assert lst is not None
    assert not lst.ok
    assert "NoSuchBucket" in lst.detail
    assert lst.missing == ""  # not a permission problem

    read_empty = rows[(A1, "us-west-2")].check("read")
    assert read_empty is not None
    assert read_empty.detail == "no object under the prefix to read yet"

    read = rows[(A4, REGION)].check("read")
    assert read is not None
    assert not read.ok
    assert read.missing.startswith("s3:GetObject on arn:aws:s3:::org-trail/AWSLogs/")

    assert rows[(A1, "ap-south-1")].checks[0].detail == "no trail log prefix discovered"
    assert not rows[("555555555555", "*")].ok
    assert report.central.ok
    assert not report.ok

    console = Console(record=True, width=250)
    print_doctor(console, report)
    text = console.export_text()
    assert "grant s3:GetObject" in text
    assert "222222222222" in text


async def test_central_write_probe_is_written_once(tmp_path: Path, inventory: Inventory) -> None:
    """The first run writes the probe; the second gets 412 (authorized, nothing written); a
    denied PutObject names s3:PutObject on the probe key."""
    cfg = settings(tmp_path)
    first = await Doctor(cfg, Sessions(), Aws(cfg.aws)).run(inventory)
    second = await Doctor(cfg, Sessions(), Aws(cfg.aws)).run(inventory)
    assert first.central.ok
    assert "written" in first.central.detail
    assert second.central.ok
    assert "exists (write authorized)" in second.central.detail
    s3 = client("s3")
    versions = s3.list_object_versions(Bucket="central").get("Versions", [])
    assert [v["Key"] for v in versions] == [PROBE_KEY]

    class DenyPut(Sessions):
        async def session_for(self, account_id: str | None) -> aioboto3.Session:
            s = await super().session_for(account_id)
            if account_id is None:
                s = aioboto3.Session(region_name=REGION)
                s._session.register("before-call.s3.PutObject", deny("PutObject"))
            return s

    third = await Doctor(cfg, DenyPut(), Aws(cfg.aws)).run(inventory)
    assert not third.central.ok
    assert third.central.missing == f"s3:PutObject on arn:aws:s3:::central/{PROBE_KEY}"
    assert "FAIL" in render_text(third)[0]


def test_cli_doctor_discovers_and_reports(
    tmp_path: Path, moto: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ctagg doctor CONFIG --json` discovers (static accounts, a static org-trail source read by
    the log-archive role), checks each account × region and exits 1 when one fails."""
    import json

    from aggregator.cli import main

    client("s3").create_bucket(Bucket="central")
    s3 = client("s3", A2)
    s3.create_bucket(Bucket="org-trail")
    s3.put_object(
        Bucket="org-trail",
        Key=log_key(
            f"AWSLogs/o-abcdefghij/{A1}/CloudTrail/{REGION}/", A1, REGION, "20240501T0100Z"
        ),
        Body=log_object([record("e1", A1)]),
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        json.dumps(
            {
                "state": {"path": str(tmp_path / "s.db")},
                "aws": {"max_attempts": 1},
                "discovery": {
                    "accounts": {"source": "static", "static": [{"id": A1}, {"id": A4}]},
                    "regions": {"include": [REGION]},
                    "trails": {
                        "discover": False,
                        "static_sources": [
                            {
                                "bucket": "org-trail",
                                "organization_id": "o-abcdefghij",
                                "reader_account_id": A2,
                            }
                        ],
                    },
                },
                "archive": {"bucket": "central"},
            }
        )
    )
    code = main(["doctor", str(cfg), "--json"])
    out = json.loads(capsys.readouterr().out)
    rows = {(r["account_id"], r["region"]): r for r in out["rows"]}
    assert out["central"]["ok"] is True
    assert rows[(A1, REGION)]["ok"] is True
    assert [c["name"] for c in rows[(A1, REGION)]["checks"]] == ["assume", "list", "read"]
    a4 = rows[(A4, REGION)]
    assert a4["ok"] is False  # its prefix is empty: nothing to read yet
    assert a4["checks"][-1]["detail"] == "no object under the prefix to read yet"
    assert code == 1


A3 = "333333333333"


async def test_an_account_covered_by_the_org_trail_still_shows_its_unassumable_role(
    tmp_path: Path, moto: str
) -> None:
    """A member whose own role cannot be assumed keeps ok rows for what the organization trail
    (read by the log-archive role) gives, and gets a failing row of its own: its account
    trails, regions and LookupEvents are out of reach. The summary names it."""
    s3 = client("s3")
    s3.create_bucket(Bucket="central")
    s3.create_bucket(Bucket="org-trail")
    src = make_source("org-trail", A3, org_id="o-abcdefghij", reader=A1)
    s3.put_object(
        Bucket="org-trail",
        Key=log_key(src.prefix, A3, REGION, "20240501T0100Z"),
        Body=log_object([record("e3", A3)]),
    )
    inventory = Inventory(
        accounts=[Account(A1), Account(A3)],
        regions={},
        trails=[],
        sources=[src],
        failures=[AccountFailure(A3, "assume_role", "AccessDenied: not authorized")],
    )
    cfg = settings(tmp_path)

    report = await Doctor(cfg, Sessions(), Aws(cfg.aws)).run(inventory)

    rows = {(r.account_id, r.region): r for r in report.rows}
    assert rows[(A3, REGION)].ok  # the organization trail's copy is readable
    own = rows[(A3, "*")]
    assert not own.ok
    assume = own.check("assume")
    assert assume is not None
    assert "sts:AssumeRole on arn:aws:iam::333333333333:role/ctagg-member" in assume.missing
    assert report.roles_denied == [A3]
    assert not report.ok
    text = render_text(report)
    assert "role cannot be assumed in 1 account(s): 333333333333" in text
    assert text[-1] == "1 failing: 1 of 2 account × region rows"


async def test_a_failing_central_write_counts_as_failing(
    tmp_path: Path, inventory: Inventory
) -> None:
    """With every row fine but the central write denied, doctor does not say '0 failing'."""

    class DenyPut(StsSessions):
        async def session_for(self, account_id: str | None) -> aioboto3.Session:
            s = await super().session_for(account_id)
            if account_id is None:
                s = aioboto3.Session(region_name=REGION)
                s._session.register("before-call.s3.PutObject", deny("PutObject"))
            return s

    only_ok = Inventory(
        accounts=[Account(A1)],
        regions={A1: [REGION]},
        trails=[],
        sources=[s for s in inventory.sources if s.account_id == A1 and s.region == REGION],
        failures=[],
    )
    cfg = settings(tmp_path)

    report = await Doctor(cfg, DenyPut(), Aws(cfg.aws)).run(only_ok)

    assert all(r.ok for r in report.rows)
    assert report.failing == 1
    assert (
        render_text(report)[-1]
        == "1 failing: 0 of 1 account × region rows and the central archive write"
    )


@pytest.mark.parametrize("width", [80, 100, 120])
async def test_doctor_table_fits_the_terminal_by_priority(
    width: int, tmp_path: Path, inventory: Inventory
) -> None:
    """At 80, 100 and 120 columns: no line is wider than the terminal; account, region and the
    checks are always there, problems wrap (the permission to grant is never elided)."""
    cfg = settings(tmp_path)
    report = await Doctor(cfg, Sessions(), Aws(cfg.aws)).run(inventory)
    console = Console(width=width, record=True, force_terminal=True, color_system=None)

    print_doctor(console, report)

    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    header = next(line for line in text.splitlines() if "┃" in line)
    for col in ("account", "region", "assume", "list", "read"):
        assert col in header
    last_column = "".join(
        line.split("│")[-2].strip() for line in text.splitlines() if line.startswith("│")
    )
    assert "→grants3:GetObjectonarn:aws:s3:::org-trail/AWSLogs/" in last_column.replace(" ", "")
    assert "…" not in last_column
    assert "555555555555" in text


async def test_doctor_on_a_pipe_is_not_cut_to_80_columns(
    tmp_path: Path, inventory: Inventory
) -> None:
    """Piped (not a terminal), the table has every column and whole cells, wider than 80."""
    import io

    cfg = settings(tmp_path)
    report = await Doctor(cfg, Sessions(), Aws(cfg.aws)).run(inventory)
    out = io.StringIO()
    console = Console(file=out, width=80)
    assert not console.is_terminal

    print_doctor(console, report)

    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) > 80
    header = next(line for line in text.splitlines() if "┃" in line)
    for col in ("source", "reader", "problem / missing permission"):
        assert col in header
    assert "…" not in text
    assert "acct:org-trail" in text
