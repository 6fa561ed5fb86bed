"""CredentialBroker against moto's STS over real HTTP: chains, ExternalId, refresh, failures."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from aggregator.aws.clients import Aws
from aggregator.aws.credentials import AssumeRoleFailed, CredentialBroker
from tests.orgseed import MGMT, hub_user, iam_enforced, make_settings, put_role

MEMBER = "222222222222"
HOP = "111111111111"


class StsSpy:
    """Records every AssumeRole made through a session: parameters and the signing key."""

    def __init__(self) -> None:
        self.params: list[dict[str, Any]] = []
        self.signed_with: list[str] = []
        self.returned_keys: list[str] = []

    def attach(self, session: Any) -> None:
        session.events.register("provide-client-params.sts.AssumeRole", self._params)
        session.events.register("before-send.sts.AssumeRole", self._send)
        session.events.register("after-call.sts.AssumeRole", self._after)

    def _params(self, params: dict[str, Any], **_: Any) -> None:
        self.params.append(dict(params))

    def _send(self, request: Any, **_: Any) -> None:
        auth = request.headers["Authorization"]
        auth = auth.decode() if isinstance(auth, bytes) else auth
        m = re.search(r"Credential=([^/]+)/", auth)
        assert m
        self.signed_with.append(m.group(1))

    def _after(self, parsed: dict[str, Any], **_: Any) -> None:
        if "Credentials" in parsed:  # also called for an error response
            self.returned_keys.append(parsed["Credentials"]["AccessKeyId"])


def _broker(settings: Any, **kw: Any) -> tuple[CredentialBroker, StsSpy]:
    broker = CredentialBroker(settings, Aws(settings.aws), **kw)
    spy = StsSpy()
    spy.attach(broker.base_session())
    return broker, spy


async def _identity(broker: CredentialBroker, session: Any) -> dict[str, Any]:
    async with broker.aws.client(session, "sts") as sts:
        return dict(await sts.get_caller_identity())


async def test_role_chain_lands_in_member_account(moto: str) -> None:
    """Two hops: the chain role with the base identity, then the member role with the chain
    role's credentials; the resulting session is the member role."""
    settings = make_settings(
        moto, credentials={"role_chain": [f"arn:aws:iam::{HOP}:role/hop"], "session_name": "ct-x"}
    )
    broker, spy = _broker(settings)

    session = await broker.session_for(MEMBER)
    ident = await _identity(broker, session)

    assert ident["Account"] == MEMBER
    assert ident["Arn"] == f"arn:aws:sts::{MEMBER}:assumed-role/OrganizationAccountAccessRole/ct-x"
    assert [p["RoleArn"] for p in spy.params] == [
        f"arn:aws:iam::{HOP}:role/hop",
        f"arn:aws:iam::{MEMBER}:role/OrganizationAccountAccessRole",
    ]
    assert all(p["RoleSessionName"] == "ct-x" for p in spy.params)
    assert all(p["DurationSeconds"] == 3600 for p in spy.params)
    # hop 1 signed by the base identity, hop 2 by the keys hop 1 returned
    assert spy.signed_with[0] == "testing"
    assert spy.signed_with[1] == spy.returned_keys[0]
    # cached: the same session, no further AssumeRole
    assert await broker.session_for(MEMBER) is session
    assert broker.assume_role_calls == 2


async def test_base_identity_hub_and_own_account_use_base_session(moto: str) -> None:
    """None, a hub account and the base identity's own account never assume a role."""
    settings = make_settings(moto, credentials={"hub_account_ids": ["333333333333"]})
    broker, spy = _broker(settings)

    assert await broker.caller_account() == MGMT
    assert await broker.session_for(None) is broker.base_session()
    assert await broker.session_for("333333333333") is broker.base_session()
    assert await broker.session_for(MGMT) is broker.base_session()
    assert spy.params == []


async def test_external_id_sent_on_member_hop_and_override(moto: str) -> None:
    """The configured ExternalId goes with the member role (not with chain hops); a per-account
    override replaces both role ARN and ExternalId."""
    settings = make_settings(
        moto,
        credentials={
            "role_chain": [f"arn:aws:iam::{HOP}:role/hop"],
            "external_id": "ext-global-1",
            "role_arn_template": "arn:aws:iam::{account_id}:role/ctagg-reader",
            "duration_secs": 7200,
            "accounts": {
                "444444444444": {
                    "role_arn": "arn:aws:iam::444444444444:role/custom",
                    "external_id": "ext-custom-2",
                }
            },
        },
    )
    broker, spy = _broker(settings)

    await broker.session_for(MEMBER)
    await broker.session_for("444444444444")

    hop, member, hop2, custom = spy.params
    assert "ExternalId" not in hop
    assert "ExternalId" not in hop2
    assert member["RoleArn"] == f"arn:aws:iam::{MEMBER}:role/ctagg-reader"
    assert member["ExternalId"] == "ext-global-1"
    assert custom["RoleArn"] == "arn:aws:iam::444444444444:role/custom"
    assert custom["ExternalId"] == "ext-custom-2"
    # the first hop asks for the configured duration; chained hops are capped at one hour
    assert hop["DurationSeconds"] == 7200
    assert member["DurationSeconds"] == 3600


async def test_credentials_refresh_before_expiry_and_clients_keep_working(moto: str) -> None:
    """Past expiry minus margin, the next request re-runs AssumeRole; an already open client
    keeps working and signs with the new keys."""
    now = [time.time()]
    settings = make_settings(moto, credentials={"duration_secs": 3600, "refresh_margin_secs": 900})
    broker, spy = _broker(settings, clock=lambda: now[0])
    session = await broker.session_for(MEMBER)
    creds = await session.get_credentials()

    async with broker.aws.client(session, "sts") as sts:
        first = await sts.get_caller_identity()
        key1 = (await creds.get_frozen_credentials()).access_key
        assert broker.assume_role_calls == 1

        now[0] += 3600 - 900 - 60  # still 15+1 minutes left: no refresh yet
        await sts.get_caller_identity()
        assert broker.assume_role_calls == 1

        now[0] += 120  # inside the margin: the next request refreshes first
        second = await sts.get_caller_identity()
        key2 = (await creds.get_frozen_credentials()).access_key

    assert broker.assume_role_calls == 2
    assert broker.refreshes == 1
    assert key1 != key2
    assert spy.returned_keys == [key1, key2]
    assert first["Arn"] == second["Arn"]
    assert second["Account"] == MEMBER


async def test_assume_role_denied_raises_with_code(moto: str, monkeypatch: Any) -> None:
    """With moto evaluating IAM: a role the base identity may not assume → AssumeRoleFailed
    (AccessDenied) naming the account; an allowed one works; nothing is cached on failure."""
    put_role(MEMBER, "OrganizationAccountAccessRole", ["sts:GetCallerIdentity"])
    put_role("555555555555", "OrganizationAccountAccessRole", ["sts:GetCallerIdentity"])
    key_id, secret = hub_user(
        [
            {
                "Effect": "Allow",
                "Action": "sts:AssumeRole",
                "Resource": f"arn:aws:iam::{MEMBER}:role/OrganizationAccountAccessRole",
            },
            {"Effect": "Allow", "Action": "sts:GetCallerIdentity", "Resource": "*"},
        ]
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    settings = make_settings(moto)
    broker, _ = _broker(settings)

    with iam_enforced():
        ok = await _identity(broker, await broker.session_for(MEMBER))
        with pytest.raises(AssumeRoleFailed) as info:
            await broker.session_for("555555555555")
        with pytest.raises(AssumeRoleFailed):
            await broker.session_for("555555555555")

    assert ok["Account"] == MEMBER
    assert info.value.account_id == "555555555555"
    assert info.value.code == "AccessDenied"
    assert "sts:AssumeRole" in info.value.message
    assert broker.assume_role_calls == 3


async def test_clients_share_model_loader_and_tls_context(moto: str) -> None:
    """Per-account sessions reuse the process's model loader, and every client's connector the
    same verifying TLS context (building them per client costs tens of ms of CPU each)."""
    import ssl

    from aggregator.aws.credentials import shared_loader

    settings = make_settings(moto)
    broker, _ = _broker(settings)
    member = await broker.session_for(MEMBER)
    connectors = []
    for session, region in ((broker.base_session(), "us-east-1"), (member, "eu-west-1")):
        assert session._session.get_component("data_loader") is shared_loader()
        async with broker.aws.client(session, "cloudtrail", region) as ct:
            http = ct._endpoint.http_session
            connectors.append((await http._get_session(None)).connector)
            assert (await ct.describe_trails())["trailList"] == []

    first, second = (c._ssl for c in connectors)
    assert isinstance(first, ssl.SSLContext)
    assert first is second
    assert first.verify_mode == ssl.CERT_REQUIRED
    assert first.cert_store_stats()["x509_ca"] > 0
