"""AWS error classification: the error code of an exception, and whether it means access
denied, throttling or not found. Every room decides its failure policy from these."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

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
