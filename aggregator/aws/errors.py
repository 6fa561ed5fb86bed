"""AWS error classification: the error code of an exception, and whether it means access
denied, throttling or not found. Every room decides its failure policy from these."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

ACCESS_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "AuthorizationError",
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "AWSOrganizationsNotInUseException",
        "AccountNotFoundException",
        "NoSuchEntity",
        "RegionDisabledException",
        "UnrecognizedClientException",
        "OptInRequired",
        "AllAccessDisabled",
    }
)


THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
        "RequestThrottled",
        "RequestThrottledException",
    }
)


NOT_FOUND_CODES = frozenset(
    {"NoSuchKey", "NoSuchBucket", "404", "NotFound", "TrailNotFoundException"}
)


def error_code(exc: BaseException) -> str:
    """The AWS error code of an exception ('AccessDenied'), or its class name."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "ClientError")
    return type(exc).__name__


def error_message(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'ClientError')}: {err.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


def is_access_denied(exc: BaseException) -> bool:
    return error_code(exc) in ACCESS_DENIED_CODES


def is_throttling(exc: BaseException) -> bool:
    return error_code(exc) in THROTTLING_CODES


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in NOT_FOUND_CODES


def is_aws_error(exc: BaseException) -> bool:
    return isinstance(exc, ClientError | BotoCoreError)


def is_transient(exc: BaseException) -> bool:
    """A fault that a later try may not meet: throttling, a 5xx answer, or the network
    (a refused or reset connection, a timeout), after botocore's own retries."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return is_throttling(exc) or int(status) >= 500
    return isinstance(
        exc, BotoConnectionError | HTTPClientError | OSError | TimeoutError | aiohttp.ClientError
    )


# ------------------------------------------------------------------ for people


@dataclass(frozen=True)
class Explained:
    """One AWS failure in words: what failed and what to do about it.

    ``kind``: ``unreachable`` (network, endpoint, timeout), ``credentials`` (no or invalid base
    identity), ``denied`` (a permission or a role), ``not_found`` (a bucket, a trail), ``aws``
    (any other AWS error)."""

    kind: str
    what: str
    hint: str = ""


_UNREACHABLE = (
    "check the network (DNS, proxy, a NetworkPolicy's egress) and aws.endpoint_url, then run again"
)
_NO_CREDENTIALS = (
    "give ctagg an identity: IRSA or EKS Pod Identity on Kubernetes, an instance or task role, "
    "or AWS_PROFILE / aws.profile"
)
_DENIED = "grant it to the identity named in the error ('ctagg doctor CONFIG' lists every one)"


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first (``raise ... from`` and implicit context)."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 20:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def explain(exc: BaseException) -> Explained | None:
    """What an AWS failure means for the operator, or None when neither ``exc`` nor any of its
    causes is an AWS error. Never includes credentials (AWS error messages do not carry them)."""
    from botocore.exceptions import (
        ConnectionClosedError,
        CredentialRetrievalError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )
    from botocore.exceptions import ConnectTimeoutError as BotoConnectTimeout

    for e in reversed(_causes(exc)):  # the root cause is the most specific
        if isinstance(e, EndpointConnectionError | BotoConnectTimeout | ConnectionClosedError):
            url = getattr(e, "kwargs", {}).get("endpoint_url", "")
            return Explained(
                "unreachable", f"cannot reach the AWS endpoint {url}".strip(), _UNREACHABLE
            )
        if isinstance(e, ReadTimeoutError):
            url = getattr(e, "kwargs", {}).get("endpoint_url", "")
            return Explained(
                "unreachable",
                f"no answer from the AWS endpoint {url} in time".replace("  ", " "),
                "raise aws.read_timeout_secs or check the network, then run again",
            )
        if isinstance(e, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
            return Explained("credentials", f"no AWS credentials: {e}", _NO_CREDENTIALS)
        if isinstance(e, ClientError):
            return _explain_client_error(e)
    for e in _causes(exc):
        account = getattr(e, "account_id", None)
        if type(e).__name__ == "AssumeRoleFailed" and account:
            return Explained(
                "denied",
                f"account {account}: cannot assume its role: {getattr(e, 'message', e)}",
                "check the member role, its trust policy and the ExternalId "
                "('ctagg doctor CONFIG')",
            )
    return None


_BAD_CREDENTIALS = frozenset(
    {"InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException", "SignatureDoesNotMatch"}
)


def _explain_client_error(e: ClientError) -> Explained:
    err = e.response.get("Error", {})
    code = str(err.get("Code") or "ClientError")
    message = str(err.get("Message") or "").strip()
    op = e.operation_name or "request"
    if code == "NoSuchBucket":
        bucket = err.get("BucketName")
        name = f"s3://{bucket}" if bucket else "a bucket"
        return Explained(
            "not_found",
            f"{name} does not exist (NoSuchBucket in {op})",
            "create it, or correct the bucket name in the config",
        )
    if code in (
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
    ):
        return Explained(
            "credentials",
            f"{op}: {code}: {message}",
            "the base identity's credentials are invalid or expired: " + _NO_CREDENTIALS,
        )
    if code == "AWSOrganizationsNotInUseException":
        return Explained(
            "denied",
            f"{op}: {code}: {message}".rstrip(": "),
            "run with the management account or a delegated administrator "
            "(discovery.accounts.organizations_role_arn), or list the accounts yourself "
            "(discovery.accounts.source: static)",
        )
    if code in ACCESS_DENIED_CODES or code in ("403", "Forbidden"):
        return Explained("denied", f"{op} denied: {code}: {message}".rstrip(": "), _DENIED)
    return Explained("aws", f"{op}: {code}: {message}".rstrip(": "))
