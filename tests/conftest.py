"""Shared fixtures: one moto server per session on 127.0.0.1 (reset per test) and a guard that
fails any test trying to reach anything but loopback (so nothing ever reaches real AWS)."""

from __future__ import annotations

import ipaddress
import os
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT.parent / "shared" / "testdata"
if not TESTDATA.exists():  # CI clones main with shared/ beside it; a worktree may sit deeper
    for parent in ROOT.parents:
        if (parent / "shared" / "testdata").exists():
            TESTDATA = parent / "shared" / "testdata"
            break

# ---------------------------------------------------------------- network guard

_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}
_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


class RealNetworkAccess(OSError):
    """Raised on any attempt to leave loopback. Libraries may wrap or swallow it (botocore turns
    it into EndpointConnectionError), so every attempt is also recorded and the autouse fixture
    ``_no_real_network`` fails the test afterwards."""


BLOCKED: list[str] = []


def _is_loopback_host(host: Any) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host)
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if not _is_loopback_host(host):
        BLOCKED.append(f"resolve {host!r}")
        raise RealNetworkAccess(f"test tried to resolve non-loopback host {host!r}")
    return _real_getaddrinfo(host, *args, **kwargs)


def _check_addr(sock: socket.socket, address: Any) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback_host(address[0]):
        BLOCKED.append(f"connect {address!r}")
        raise RealNetworkAccess(f"test tried to connect to {address!r}")


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check_addr(self, address)
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check_addr(self, address)
    return _real_connect_ex(self, address)


socket.getaddrinfo = _guarded_getaddrinfo  # type: ignore[assignment]
socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]

# Fake credentials and no config files: nothing can pick up a real identity.
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
    AWS_CONFIG_FILE=os.devnull,
    AWS_SHARED_CREDENTIALS_FILE=os.devnull,
)
for _var in (
    "AWS_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
):
    os.environ.pop(_var, None)


@pytest.fixture(autouse=True)
def _no_real_network() -> Iterator[None]:
    BLOCKED.clear()
    yield
    attempts, BLOCKED[:] = list(BLOCKED), []
    assert not attempts, f"test tried to leave loopback: {attempts}"


# ---------------------------------------------------------------- moto


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server on 127.0.0.1 for the whole session; yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    os.environ["AWS_ENDPOINT_URL"] = url
    yield url
    server.stop()
    os.environ.pop("AWS_ENDPOINT_URL", None)


@pytest.fixture
def moto(moto_server: str) -> str:
    """A freshly reset moto server (every account, bucket and trail gone); yields its URL."""
    req = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
    return moto_server


@pytest.fixture
def testdata() -> Path:
    assert TESTDATA.exists(), f"shared test data not found at {TESTDATA}"
    return TESTDATA
