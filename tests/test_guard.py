"""The network guard: a test that tries to reach a non-loopback host fails loudly."""

import socket

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError
from conftest import BLOCKED, RealNetworkAccess


def test_resolving_aws_is_refused() -> None:
    with pytest.raises(RealNetworkAccess):
        socket.getaddrinfo("sts.amazonaws.com", 443)
    BLOCKED.clear()


def test_connecting_to_public_ip_is_refused() -> None:
    s = socket.socket()
    try:
        with pytest.raises(RealNetworkAccess):
            s.connect(("203.0.113.10", 443))
        BLOCKED.clear()
    finally:
        s.close()


def test_boto3_without_endpoint_cannot_reach_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    client = boto3.client("sts", config=Config(retries={"max_attempts": 1}))
    with pytest.raises(EndpointConnectionError):
        client.get_caller_identity()
    assert BLOCKED
    assert all("amazonaws.com" in b for b in BLOCKED)
    BLOCKED.clear()  # this test wanted the attempt; the autouse guard would fail it otherwise
