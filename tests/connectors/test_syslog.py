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


async def test_receiver_restart_reconnects_at_the_next_send(
    rsyslog: Rsyslog, testdata: Path
) -> None:
    """The receiver goes away: sends retry; it comes back: the very next send connects and
    delivers (no backoff of the connector's own on top of the forwarder's)."""
    events = out_events(testdata)[70:80]
    c = make(rsyslog, "tcp")
    await c.open()
    rsyslog.stop()
    try:
        await asyncio.sleep(0.2)
        for _ in range(3):  # repeated failures build no backoff inside the connector
            out = await c.send(events)
            assert all(isinstance(o, Retry) for o in out)
    finally:
        rsyslog.start()
    out = await c.send(events)
    await c.close()
    assert all(isinstance(o, Delivered) for o in out)
    assert len(by_ids(rsyslog, {e.id for e in events})) >= 10


def relp(rs: Rsyslog, *, tls: bool = False, **kw: Any) -> SyslogConnector:
    certs = rs.certs
    extra = (
        {"relp_tls": True, "ca_file": str(certs / "ca.pem"),
         "client_cert_file": str(certs / "client.pem"),
         "client_key_file": str(certs / "client.key")}
        if tls else {}
    )  # fmt: skip
    s = TypeAdapter(SyslogSettings).validate_python(
        {"name": "relp", "type": "syslog", "host": "127.0.0.1",
         "port": rs.relp_tls if tls else rs.relp, "transport": "relp",
         "hostname": "ctagg-test", **extra, **kw}
    )  # fmt: skip
    return SyslogConnector(s)


@pytest.mark.parametrize("tls", [False, True], ids=["relp", "relp-tls"])
async def test_relp_is_acknowledged_by_imrelp(rsyslog: Rsyslog, testdata: Path, tls: bool) -> None:
    """RELP to rsyslog's imrelp (plain, and over TLS with a client certificate): every event
    is Delivered only after imrelp's 200 for each of its messages (split ones too), and the
    fields arrive as with imtcp."""
    events = [*out_events(testdata)[80:120], _big(testdata, f"relp-split-{tls}")]
    async with relp(rsyslog, tls=tls, max_message_bytes=2048, relp_window=8) as c:
        out = await c.send(events)
        assert c._relp is not None
        assert c._relp.next_txnr > len(events) + 1  # one transaction per message, after open
    assert all(isinstance(o, Delivered) for o in out)
    got = by_ids(rsyslog, {e.id for e in events}, count=len(events) + 1)
    ids = {sd_params(m)["id"] for m in got}
    assert ids == {e.id for e in events}
    plain = next(m for m in got if sd_params(m)["id"] == events[0].id)
    assert plain["app-name"] == "ctagg"
    assert json.loads(plain["msg"][1:]) == events[0].doc


async def test_relp_unanswered_messages_are_retried(rsyslog: Rsyslog, testdata: Path) -> None:
    """A receiver that stops answering (here: not a RELP server at all) never yields
    Delivered: the events are retried."""
    from connectors.syslog import RelpError, parse_relp_frame

    assert parse_relp_frame(b"12 rsp 6 200 OK\n3 rsp 0\n") == ((12, "rsp", b"200 OK"), 16)
    assert parse_relp_frame(b"3 rsp 0\n") == ((3, "rsp", b""), 8)
    assert parse_relp_frame(b"12 rsp 6 200 O") == (None, 0)
    with pytest.raises(RelpError):
        parse_relp_frame(b"1 rsp 3 abcd\n")
    c = relp(rsyslog, port=rsyslog.tcp, connect_timeout_secs=0.3)  # imtcp never answers open
    out = await c.send(out_events(testdata)[:3])
    await c.close()
    assert all(isinstance(o, Retry) for o in out), out


def test_udp_size_limit_validated() -> None:
    with pytest.raises(ValidationError, match="65507"):
        TypeAdapter(SyslogSettings).validate_python(
            {"name": "u", "type": "syslog", "host": "h", "port": 514, "transport": "udp",
             "max_message_bytes": 70000}
        )  # fmt: skip


async def test_ten_receiver_restarts_mid_stream_lose_nothing(
    tmp_path: Path, testdata: Path
) -> None:
    """Events stream from the ledger through three lanes (TCP and TLS with the unconfirmed
    tail, RELP with acks) while rsyslog is restarted 10 times: every event arrives at least
    once through each; the TCP and TLS lanes count what they sent again."""
    import random

    from aggregator.config import ForwardSettings
    from aggregator.forward.documents import default_normalizer
    from aggregator.forward.forwarder import Forwarder
    from aggregator.state import State
    from tests.fakes.events import stratus_records
    from tests.forward.test_forward_forwarder import MemoryArchive, add_object

    rs = Rsyslog(tmp_path / "rs")
    rs.root.mkdir()
    rs.start()
    state = State(tmp_path / "s.db")
    archive = MemoryArchive()
    base = stratus_records(testdata)
    conns = [
        {"name": name, "type": "syslog", "host": "127.0.0.1", "port": port,
         "transport": transport, "app_name": name, "max_message_bytes": 65536,
         "ca_file": str(rs.certs / "ca.pem"), "tls_probe_secs": 0.05}
        for name, port, transport in (("viatcp", rs.tcp, "tcp"), ("viatls", rs.tls, "tls"),
                                      ("viarelp", rs.relp, "relp"))
    ]  # fmt: skip
    settings = ForwardSettings.model_validate(
        {"connectors": conns, "batch_max_events": 100, "batch_max_wait_secs": 0,
         "backoff_initial_secs": 0.05, "backoff_max_secs": 0.2, "poll_interval_secs": 0.02}
    )  # fmt: skip
    fwd = Forwarder(settings, state, archive, bucket="c", normalize=default_normalizer("c"))
    sent: set[str] = set()
    n = 0

    def produce(count: int) -> None:
        nonlocal n
        recs = [{**base[(n + i) % len(base)], "eventID": f"restart-{n + i:06d}"}
                for i in range(count)]  # fmt: skip
        add_object(state, archive, f"AWSLogs/r{n:06d}.json.gz", recs)
        sent.update(r["eventID"] for r in recs)
        n += count

    rng = random.Random(18)
    fwd.start()
    try:
        for _ in range(10):
            for _ in range(rng.randint(4, 7)):  # mid-stream: new objects keep coming
                produce(100)
                await asyncio.sleep(0.05)
            for _ in range(4):  # a burst the receiver has not read yet when it stops
                produce(150)
            await asyncio.sleep(0.03)
            await asyncio.to_thread(rs.stop)
            produce(150)
            await asyncio.sleep(rng.uniform(0.05, 0.15))
            await asyncio.to_thread(rs.start)
        produce(150)
        for _ in range(600):
            if all(fwd.backlog(c["name"]) == 0 for c in conns):
                break
            await asyncio.sleep(0.05)
    finally:
        await fwd.stop()
        resent = [fwd.lanes[name].connector.resent_events for name in ("viatcp", "viatls")]
        state.close()

    def ids(app: str) -> list[str]:
        out = []
        for m in rs.messages():
            if m["app-name"] == app:
                doc = json.loads(m["msg"][1:])
                out.append(doc["metadata"]["uid"])  # OCSF: the eventID
        return out

    try:
        for _ in range(100):
            if all(set(ids(c["name"])) >= sent for c in conns):
                break
            await asyncio.sleep(0.1)
    finally:
        rs.stop()
    for c in conns:
        got = ids(c["name"])
        lost = sent - set(got)
        assert not lost, f"{c['name']}: {len(lost)} of {len(sent)} lost"
    assert all(r > 0 for r in resent), resent  # the tails were sent again after broken connections
