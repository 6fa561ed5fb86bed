"""``ctagg demo``: the real pipeline against an embedded moto server seeded with an Organization.

Seeds (all over real HTTP on 127.0.0.1):

* an Organization: the management account plus three members in two OUs, with tags
* two enabled regions (us-east-1, eu-west-1)
* an organization trail (management account bucket, ``AWSLogs/o-.../`` layout) and an
  overlapping multi-region account trail in one member account that delivers the same events
* log objects built from the public records in ``shared/testdata`` (each record placed in one
  account × region, its recipientAccountId/awsRegion set to match), one object per hour
* one corrupt object, to show quarantine

Then runs discovery and two ingest cycles (the second must find nothing new) and prints what
happened. moto is a development dependency; the demo says so if it is missing.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import shutil
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from aggregator.ingest.envelopes import Parsed, iter_records

REGIONS = ("us-east-1", "eu-west-1")
MEMBERS = (
    ("prod-payments", "Prod", {"env": "prod", "team": "payments"}),
    ("prod-web", "Prod", {"env": "prod", "team": "web"}),
    ("dev-sandbox", "Dev", {"env": "dev", "team": "platform"}),
)
ORG_BUCKET = "demo-org-trail"
ACCOUNT_BUCKET = "demo-payments-trail"
CENTRAL_BUCKET = "demo-central-archive"


def find_testdata(start: Path | None = None) -> Path | None:
    """``shared/testdata`` beside the checkout (or any parent), or $CTAGG_TESTDATA."""
    env = os.environ.get("CTAGG_TESTDATA")
    if env:
        return Path(env)
    here = (start or Path(__file__)).resolve()
    for parent in [here, *here.parents]:
        cand = parent / "shared" / "testdata"
        if cand.is_dir():
            return cand
    return None


def load_records(testdata: Path) -> list[dict[str, Any]]:
    """Every distinct CloudTrail record in the shared test data, in a stable order."""
    out: dict[bytes, dict[str, Any]] = {}

    def add(rec: Any) -> None:
        if isinstance(rec, dict) and isinstance(rec.get("eventTime"), str) and rec.get("eventName"):
            rec = {k: v for k, v in rec.items() if not k.startswith("@")}  # shipper fields
            out.setdefault(orjson.dumps(rec, option=orjson.OPT_SORT_KEYS), rec)

    for path in sorted(testdata.rglob("*")):
        if not path.is_file() or path.suffix not in (".json", ".jsonl", ".gz", ".ndjson"):
            continue
        if "digest" in path.name or "ocsf" in path.name or "insight" in path.name:
            continue
        data = path.read_bytes()
        if path.name in ("detection_cases.jsonl", "records.jsonl"):
            field = "log" if path.name == "detection_cases.jsonl" else "record"
            for line in data.splitlines():
                if line.strip():
                    add(orjson.loads(line).get(field))
            continue
        for item in iter_records(data, str(path)):
            if isinstance(item, Parsed):
                add(item.record)
    return [out[k] for k in sorted(out)]


@dataclass
class DemoWorld:
    endpoint: str
    organization_id: str
    management: str
    members: dict[str, str]  # name -> account id
    org_objects: int
    account_objects: int
    account_records: int
    records: int
    corrupt_key: str


def _client(service: str, creds: dict[str, str] | None = None, region: str = "us-east-1") -> Any:
    import boto3

    kw: dict[str, Any] = {"region_name": region}
    if creds:
        kw.update(
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )
    return boto3.client(service, **kw)


def _assume(account: str) -> dict[str, str]:
    creds: dict[str, str] = _client("sts").assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/OrganizationAccountAccessRole",
        RoleSessionName="ctagg-demo-seed",
    )["Credentials"]
    return creds


def _objects(
    records: list[dict[str, Any]], accounts: list[str]
) -> Iterator[tuple[str, str, str, list[dict[str, Any]]]]:
    """(account, region, YYYYMMDDTHHMMZ, records) groups: each record placed round-robin."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    slots = [(a, r) for a in accounts for r in REGIONS]
    for i, original in enumerate(records):
        account, region = slots[i % len(slots)]
        rec = dict(original, recipientAccountId=account, awsRegion=region)
        t = rec["eventTime"]
        ts = f"{t[0:4]}{t[5:7]}{t[8:10]}T{t[11:13]}00Z"
        if len(ts) != 14 or not ts[:8].isdigit():
            continue
        groups[(account, region, ts)].append(rec)
    for (account, region, ts), recs in sorted(groups.items()):
        yield account, region, ts, recs


def _name(account: str, region: str, ts: str, salt: str) -> str:
    rand = hashlib.sha256(f"{salt}{account}{region}{ts}".encode()).hexdigest()[:16]
    return f"{ts[0:4]}/{ts[4:6]}/{ts[6:8]}/{account}_CloudTrail_{region}_{ts}_{rand}.json.gz"


def seed(endpoint: str, testdata: Path) -> DemoWorld:
    """Build the demo Organization, trails and log objects in the moto server at endpoint."""
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    org = _client("organizations")
    org_id = org.create_organization(FeatureSet="ALL")["Organization"]["Id"]
    management = _client("sts").get_caller_identity()["Account"]
    root = org.list_roots()["Roots"][0]["Id"]
    ous = {
        name: org.create_organizational_unit(ParentId=root, Name=name)["OrganizationalUnit"]["Id"]
        for name in ("Prod", "Dev")
    }
    members: dict[str, str] = {}
    for name, ou, tags in MEMBERS:
        status = org.create_account(
            AccountName=name,
            Email=f"{name}@example.com",
            Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
        )["CreateAccountStatus"]
        members[name] = status["AccountId"]
        org.move_account(
            AccountId=status["AccountId"], SourceParentId=root, DestinationParentId=ous[ou]
        )

    s3 = _client("s3")
    s3.create_bucket(Bucket=ORG_BUCKET)
    s3.create_bucket(Bucket=CENTRAL_BUCKET)
    _client("cloudtrail").create_trail(
        Name="organization-trail",
        S3BucketName=ORG_BUCKET,
        IsMultiRegionTrail=True,
        IsOrganizationTrail=True,
        EnableLogFileValidation=True,
    )
    payments = members["prod-payments"]
    pay_creds = _assume(payments)
    pay_s3 = _client("s3", pay_creds)
    pay_s3.create_bucket(Bucket=ACCOUNT_BUCKET)
    _client("cloudtrail", pay_creds).create_trail(
        Name="payments-trail", S3BucketName=ACCOUNT_BUCKET, IsMultiRegionTrail=True
    )

    records = load_records(testdata)
    accounts = [management, *members.values()]
    org_objects = account_objects = account_records = placed = 0
    for account, region, ts, recs in _objects(records, accounts):
        placed += len(recs)  # records whose eventTime names no hour are not placed
        body = gzip.compress(json.dumps({"Records": recs}).encode(), mtime=0)
        base = f"AWSLogs/{org_id}/{account}/CloudTrail/{region}/"
        s3.put_object(Bucket=ORG_BUCKET, Key=base + _name(account, region, ts, "org"), Body=body)
        org_objects += 1
        if account == payments:  # the overlapping account trail delivers the same events
            key = f"AWSLogs/{account}/CloudTrail/{region}/" + _name(account, region, ts, "acct")
            pay_s3.put_object(Bucket=ACCOUNT_BUCKET, Key=key, Body=body)
            account_objects += 1
            account_records += len(recs)
    dev = members["dev-sandbox"]
    corrupt = f"AWSLogs/{org_id}/{dev}/CloudTrail/us-east-1/" + _name(
        dev, "us-east-1", "20240101T0000Z", "bad"
    )
    s3.put_object(Bucket=ORG_BUCKET, Key=corrupt, Body=b"\x1f\x8b\x08\x00 this is not gzip")
    return DemoWorld(
        endpoint,
        org_id,
        management,
        members,
        org_objects,
        account_objects,
        account_records,
        placed,
        corrupt,
    )


def demo_config(world: DemoWorld, workdir: Path) -> dict[str, Any]:
    return {
        "state": {"path": str(workdir / "state.db")},
        "aws": {"endpoint_url": world.endpoint, "max_attempts": 2},
        "discovery": {
            "regions": {"include": list(REGIONS)},
            "trails": {"organization_trail_reader_account_id": world.management},
        },
        "collect": {"max_concurrency": 16},
        "archive": {"bucket": CENTRAL_BUCKET},
    }


class EmbeddedMoto:
    """A moto server on 127.0.0.1 in this process (moto is a development dependency)."""

    def __init__(self) -> None:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise SystemExit(
                "ctagg demo needs moto[server] (a development dependency): run 'make demo'"
            ) from exc
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""

    def __enter__(self) -> EmbeddedMoto:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        # moto keeps its backends per process: start from an empty world every time.
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")  # noqa: S310
        with urllib.request.urlopen(req, timeout=30):  # noqa: S310 - loopback
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()


def export_archive(endpoint: str, dest: Path) -> int:
    """Copy the central bucket to a local folder so it can be looked at after the demo."""
    s3 = _client("s3")
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=CENTRAL_BUCKET):
        for obj in page.get("Contents", ()):
            path = dest / obj["Key"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(s3.get_object(Bucket=CENTRAL_BUCKET, Key=obj["Key"])["Body"].read())
            n += 1
    return n


def run_demo(workdir: Path, testdata: Path) -> dict[str, Any]:
    """Seed, run two cycles, export the archive; returns the summary."""
    from aggregator.config import parse_settings
    from aggregator.service.app import App

    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    with EmbeddedMoto() as moto:
        world = seed(moto.url, testdata)
        cfg = demo_config(world, workdir)
        (workdir / "config.yaml").write_text(json.dumps(cfg, indent=2) + "\n")
        settings = parse_settings(cfg)

        async def cycles() -> tuple[Any, Any, Any]:
            app = App(settings)
            try:
                first = await app.run_once()
                second = await app.run_once()
                return app.inventory, first, second
            finally:
                await app.close()

        inventory, first, second = asyncio.run(cycles())
        exported = export_archive(moto.url, workdir / "archive")
    return {
        "accounts": len(inventory.accounts),
        "regions": len({r for rs in inventory.regions.values() for r in rs}),
        "trails": len(inventory.trails),
        "sources": len(inventory.sources),
        "objects": first.objects + first.quarantined,
        "events_in": first.events_in,
        "duplicates": first.duplicates,
        "events_archived": first.events_archived,
        "quarantined": first.quarantined,
        "central_objects": exported,
        "second_cycle_objects": second.objects,
        "second_cycle_events_archived": second.events_archived,
        "seeded": {
            "records": world.records,
            "org_trail_objects": world.org_objects,
            "account_trail_objects": world.account_objects,
            "account_trail_records": world.account_records,
            "corrupt_objects": 1,
        },
        "workdir": str(workdir),
    }
