"""syslog connector against a real rsyslogd: fields as rsyslog parsed them."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from connectors.base import Delivered, OutEvent, Retry
from connectors.syslog import BOM, SyslogConnector, SyslogSettings, sd_escape, utf8_cut
from tests.fakes.events import out_events
from tests.fakes.rsyslog import Rsyslog, rsyslog_fixture  # noqa: F401  (fixture)


def make(rs: Rsyslog, transport: str, **kw: Any) -> SyslogConnector:
    port = {"udp": rs.udp, "tcp": rs.tcp, "tls": rs.tls}[transport]
    if transport == "tls":
        kw.setdefault("ca_file", str(rs.certs / "ca.pem"))
    s = TypeAdapter(SyslogSettings).validate_python(
        {"name": "sl", "type": "syslog", "host": "127.0.0.1", "port": port,
         "transport": transport, "hostname": "ctagg-test", **kw}
    )  # fmt: skip
    return SyslogConnector(s)


_SD_PARAM = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def sd_params(m: dict[str, Any]) -> dict[str, str]:
    return {k: re.sub(r"\\(.)", r"\1", v) for k, v in _SD_PARAM.findall(m["structured-data"])}


def by_ids(rs: Rsyslog, ids: set[str], count: int | None = None) -> list[dict[str, Any]]:
    want = len(ids) if count is None else count
    return rs.wait_for(lambda m: sd_params(m).get("id") in ids, want)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_rfc5424_fields_as_parsed_by_rsyslog(
    rsyslog: Rsyslog, testdata: Path, transport: str
) -> None:
    """APP-NAME, MSGID, structured data and the BOM'd JSON MSG arrive intact per transport."""
    events = out_events(testdata)[:40] if transport != "udp" else out_events(testdata)[40:60]
    async with make(rsyslog, transport) as c:
        out = await c.send(events)
    assert all(isinstance(o, Delivered) for o in out)
    got = {sd_params(m)["id"]: m for m in by_ids(rsyslog, {e.id for e in events})}
    assert set(got) == {e.id for e in events}
    for ev in events:
        m = got[ev.id]
        assert m["app-name"] == "ctagg"
        assert m["hostname"] == "ctagg-test"
        assert m["msgid"] == ev.event_name[:32]
        assert m["syslogfacility"] == "13"
        assert m["protocol-version"] == "1"
        assert m["msg"].startswith("\ufeff")
        assert json.loads(m["msg"][1:]) == ev.doc
        sd = sd_params(m)
        assert sd["account"] == ev.account_id
        assert sd["region"] == ev.region
        assert sd["src"] == ev.pointer
        assert m["timereported"].startswith(ev.doc["eventTime"][:19])


async def test_structured_data_escaping(rsyslog: Rsyslog, testdata: Path) -> None:
    """'"', '\\' and ']' in SD values are escaped so rsyslog parses the element back whole."""
    base = out_events(testdata, 1)[0]
    tricky = 's3://b/k"x]y\\z#1'
    ev = OutEvent(id="esc-" + base.id, doc=base.doc, time=base.time, account_id="1]2",
                  region='r"1', pointer=tricky, event_name="Odd Name")  # fmt: skip
    async with make(rsyslog, "tcp") as c:
        assert isinstance((await c.send([ev]))[0], Delivered)
    (m,) = by_ids(rsyslog, {ev.id})
    sd = sd_params(m)
    assert sd["src"] == tricky
    assert sd["account"] == "1]2"
    assert sd["region"] == 'r"1'
    assert m["msgid"] == "Odd_Name"
    assert sd_escape('a"b\\c]') == 'a\\"b\\\\c\\]'


def _big(testdata: Path, tag: str) -> OutEvent:
    base = out_events(testdata, 1)[0]
    doc = {**base.doc, "requestParameters": {"blob": "é" * 6000 + "x" * 3001}}
    return OutEvent(
        id=f"{tag}-{base.id}",
        doc=doc,
        time=base.time,
        account_id=base.account_id,
        region=base.region,
        pointer=base.pointer,
        event_name=base.event_name,
    )


async def test_oversize_truncate_fits_and_points_to_archive(
    rsyslog: Rsyslog, testdata: Path
) -> None:
    """A 15 KB event with max 4096: one message <= 4096 bytes, marked, pointer kept."""
    ev = _big(testdata, "trunc")
    async with make(rsyslog, "tcp", max_message_bytes=4096, oversize="truncate") as c:
        frames = c.messages(ev)
        assert isinstance((await c.send([ev]))[0], Delivered)
    assert len(frames) == 1
    assert len(frames[0]) <= 4096
    (m,) = by_ids(rsyslog, {ev.id})
    assert len(m["rawmsg"].encode()) <= 4096
    sd = sd_params(m)
    assert int(sd["truncated"]) == len(
        json.dumps(ev.doc, ensure_ascii=False, separators=(",", ":")).encode()
    )
    assert sd["src"] == ev.pointer
    assert m["msg"].endswith("...[truncated]")


async def test_oversize_split_reassembles(rsyslog: Rsyslog, testdata: Path) -> None:
    """Split parts each fit, carry part/parts, and concatenate to the original JSON."""
    ev = _big(testdata, "split")
    async with make(rsyslog, "tls", max_message_bytes=2048, oversize="split") as c:
        frames = c.messages(ev)
        assert isinstance((await c.send([ev]))[0], Delivered)
    assert all(len(f) <= 2048 for f in frames)
    parts = by_ids(rsyslog, {ev.id}, count=len(frames))
    assert len(parts) == len(frames) > 1
    parts.sort(key=lambda m: int(sd_params(m)["part"]))
    assert {sd_params(m)["parts"] for m in parts} == {str(len(frames))}
    joined = "".join(m["msg"].removeprefix("\ufeff") for m in parts)
    assert json.loads(joined) == ev.doc


def test_utf8_cut_never_splits_a_character() -> None:
    data = "aé€😀".encode()
    for limit in range(len(data) + 1):
        n = utf8_cut(data, limit)
        assert n <= limit
        data[:n].decode()
    assert "\ufeff".encode() == BOM


async def test_tls_mutual_and_untrusted_ca(rsyslog: Rsyslog, testdata: Path) -> None:
    """mTLS with a client certificate delivers; an untrusted server certificate retries."""
    events = out_events(testdata)[60:63]
    certs = rsyslog.certs
    s = TypeAdapter(SyslogSettings).validate_python(
        {"name": "m", "type": "syslog", "host": "127.0.0.1", "port": rsyslog.mtls,
         "transport": "tls", "ca_file": str(certs / "ca.pem"),
         "client_cert_file": str(certs / "client.pem"),
         "client_key_file": str(certs / "client.key")}
    )  # fmt: skip
    async with SyslogConnector(s) as c:
        assert all(isinstance(o, Delivered) for o in await c.send(events))
    assert len(by_ids(rsyslog, {e.id for e in events})) == 3
    no_client_cert = TypeAdapter(SyslogSettings).validate_python(
        {"name": "m2", "type": "syslog", "host": "127.0.0.1", "port": rsyslog.mtls,
         "transport": "tls", "ca_file": str(certs / "ca.pem")}
    )  # fmt: skip
    refused = SyslogConnector(no_client_cert)
    out = await refused.send(events)
    await refused.close()
    assert all(isinstance(o, Retry) for o in out), out
    bad = make(rsyslog, "tls", ca_file=str(certs / "other.pem"))
    out = await bad.send(events)
    await bad.close()
    assert all(isinstance(o, Retry) and o.reason.startswith("tls") for o in out)
    wrong_name = make(rsyslog, "tls", server_name="not-this-host.example")
    out = await wrong_name.send(events)
    await wrong_name.close()
    assert all(isinstance(o, Retry) for o in out)


async def test_receiver_restart_reconnects(rsyslog: Rsyslog, testdata: Path) -> None:
    """The receiver goes away: sends retry (with backoff); it comes back: delivered."""
    events = out_events(testdata)[70:80]
    c = make(rsyslog, "tcp", reconnect_initial_secs=0.05, reconnect_max_secs=0.2)
    await c.open()
    rsyslog.stop()
    try:
        await asyncio.sleep(0.2)
        out = await c.send(events)
        assert all(isinstance(o, Retry) for o in out)
    finally:
        rsyslog.start()
    for _ in range(50):
        out = await c.send(events)
        if all(isinstance(o, Delivered) for o in out):
            break
        await asyncio.sleep(0.05)
    await c.close()
    assert all(isinstance(o, Delivered) for o in out)
    assert len(by_ids(rsyslog, {e.id for e in events})) >= 10


def test_udp_size_limit_validated() -> None:
    with pytest.raises(ValidationError, match="65507"):
        TypeAdapter(SyslogSettings).validate_python(
            {"name": "u", "type": "syslog", "host": "h", "port": 514, "transport": "udp",
             "max_message_bytes": 70000}
        )  # fmt: skip
