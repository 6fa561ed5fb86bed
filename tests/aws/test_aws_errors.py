"""aggregator.aws.errors: which faults a later try may not meet."""

from __future__ import annotations

import aiohttp
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from aggregator.aws.errors import is_transient


def answered(code: str, status: int) -> Exception:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


@pytest.mark.parametrize(
    "exc",
    [
        answered("SlowDown", 503),
        answered("InternalError", 500),
        answered("ThrottlingException", 400),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
        aiohttp.ServerDisconnectedError(),
        ConnectionResetError(),
        TimeoutError(),
    ],
    ids=repr,
)
def test_faults_of_load_and_network_are_transient(exc: Exception) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        answered("AccessDenied", 403),
        answered("NoSuchBucket", 404),
        answered("PreconditionFailed", 412),
        NoCredentialsError(),
        ParamValidationError(report="bad"),
        ValueError("not AWS"),
    ],
    ids=repr,
)
def test_faults_a_retry_cannot_cure_are_not(exc: Exception) -> None:
    assert not is_transient(exc)
