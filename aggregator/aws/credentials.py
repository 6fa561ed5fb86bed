"""Sessions per account: the base identity, or an assumed (optionally chained) role.

* The base identity comes from the default chain (IRSA / web identity, instance role, profile)
  through :meth:`Aws.base_session`; botocore refreshes it itself.
* A member account's session holds ``AioRefreshableCredentials`` whose refresh function runs
  the whole chain again (base → ``role_chain``… → member role), so a client opened once keeps
  working for days: every request signs with credentials renewed ``refresh_margin_secs`` before
  they expire.
* One session per account is cached for the life of the broker; failures are not cached (the
  next discovery tries again).

Nothing here logs above DEBUG: a failing account is reported once by the caller (discovery
returns it as an ``AccountFailure``, the ingest job logs and counts it). No secret (ExternalId,
keys, tokens) ever reaches a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aioboto3
from aiobotocore.credentials import AioRefreshableCredentials
from aiobotocore.session import AioSession
from botocore.exceptions import BotoCoreError, ClientError
from botocore.loaders import Loader, create_loader

from aggregator.aws.clients import Aws
from aggregator.aws.errors import error_code, error_message
from aggregator.config import Settings
from aggregator.log import get_logger

log = get_logger(__name__)

# AWS caps a session obtained by role chaining (assumed-role credentials assuming another
# role) at one hour, whatever the role's MaxSessionDuration says.
ROLE_CHAINING_MAX_SECS = 3600
_ARN_ACCOUNT = re.compile(r"^arn:[\w-]+:(?:iam|sts)::(\d{12}):")


class CredentialsError(Exception):
    """No usable credentials."""


class BaseIdentityFailed(CredentialsError):
    """The base identity itself does not work (no credentials, invalid token, ...)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"base identity: {message}")


class AssumeRoleFailed(CredentialsError):
    """A role in the chain towards ``account_id`` could not be assumed."""

    def __init__(self, account_id: str, code: str, message: str) -> None:
        self.account_id = account_id
        self.code = code
        self.message = message
        super().__init__(f"{account_id}: {message}")


_LOADER: Loader | None = None


def shared_loader() -> Loader:
    """One botocore model loader for every session of the process. Without it each account's
    session parses the service JSON models again (the EC2 model alone is megabytes: ~0.2 s of
    CPU and many MB of memory per account and service)."""
    global _LOADER
    if _LOADER is None:
        _LOADER = create_loader()
    return _LOADER


def account_of_arn(arn: str) -> str | None:
    """The 12-digit account of an IAM/STS ARN, or None."""
    m = _ARN_ACCOUNT.match(arn)
    return m.group(1) if m else None


class CredentialBroker:
    """Hands out one aioboto3 session per account."""

    def __init__(
        self, settings: Settings, aws: Aws, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.creds = settings.credentials
        self.aws = aws
        self._clock = clock
        self._base: aioboto3.Session | None = None
        self._caller: str | None = None
        self._caller_lock = asyncio.Lock()
        self._sessions: dict[str, aioboto3.Session] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.assume_role_calls = 0  # every sts:AssumeRole made (initial and refresh)
        self.refreshes = 0  # chains re-run to renew credentials

    # ------------------------------------------------------------ base identity

    def base_session(self) -> aioboto3.Session:
        if self._base is None:
            self._base = self.aws.base_session()
            self._base._session.register_component("data_loader", shared_loader())
        return self._base

    async def caller_account(self) -> str:
        """The base identity's own account (sts:GetCallerIdentity, cached)."""
        if self._caller is not None:
            return self._caller
        async with self._caller_lock:
            if self._caller is None:
                try:
                    async with self.aws.client(self.base_session(), "sts") as sts:
                        ident = await sts.get_caller_identity()
                except (ClientError, BotoCoreError) as exc:
                    raise BaseIdentityFailed(error_code(exc), error_message(exc)) from exc
                self._caller = str(ident["Account"])
            return self._caller

    # ------------------------------------------------------------ role per account

    def role_arn(self, account_id: str) -> str:
        override = self.creds.accounts.get(account_id)
        if override is not None and override.role_arn:
            return override.role_arn
        return self.creds.role_arn_template.format(account_id=account_id)

    def external_id(self, account_id: str) -> str | None:
        override = self.creds.accounts.get(account_id)
        secret = (
            override.external_id
            if override is not None and override.external_id is not None
            else self.creds.external_id
        )
        return secret.get_secret_value() if secret is not None else None

    async def session_for(self, account_id: str | None) -> aioboto3.Session:
        """The session reading ``account_id``: the base identity for None, a hub account or the
        base identity's own account; otherwise the member role (after ``role_chain``)."""
        if account_id is None or account_id in self.creds.hub_account_ids:
            return self.base_session()
        if account_id == await self.caller_account():
            return self.base_session()
        return await self._role_session(
            account_id, self.role_arn(account_id), self.external_id(account_id)
        )

    async def session_for_role(self, role_arn: str) -> aioboto3.Session:
        """A session for an explicit role (e.g. the Organizations role), assumed like a member
        role: after ``role_chain``, with the ExternalId configured for the role's account."""
        account_id = account_of_arn(role_arn)
        ext = self.external_id(account_id) if account_id else None
        return await self._role_session(account_id or role_arn, role_arn, ext)

    async def _role_session(
        self, account_id: str, role_arn: str, external_id: str | None
    ) -> aioboto3.Session:
        chain = [*self.creds.role_chain, role_arn]
        key = "\n".join(chain)
        cached = self._sessions.get(key)
        if cached is not None:
            return cached
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._sessions.get(key)
            if cached is not None:
                return cached

            async def refresh() -> dict[str, Any]:
                self.refreshes += 1
                log.debug("credentials.refresh", account_id=account_id)
                return await self._assume_chain(account_id, chain, external_id)

            metadata = await self._assume_chain(account_id, chain, external_id)
            session = self._refreshable_session(metadata, refresh)
            self._sessions[key] = session
            log.debug("credentials.assumed", account_id=account_id, hops=len(chain))
            return session

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), tz=UTC)

    def _refreshable_session(
        self, metadata: dict[str, Any], refresh: Callable[[], Awaitable[dict[str, Any]]]
    ) -> aioboto3.Session:
        margin = self.creds.refresh_margin_secs
        creds = AioRefreshableCredentials(
            access_key=metadata["access_key"],
            secret_key=metadata["secret_key"],
            token=metadata["token"],
            expiry_time=AioRefreshableCredentials._expiry_datetime(metadata["expiry_time"]),
            refresh_using=refresh,
            method="ctagg-assume-role",
            time_fetcher=self._now,
            # From `margin` before expiry a refresh is attempted (a failure keeps the current
            # credentials); from 2/3 of it, it is mandatory (a failure is raised to the caller).
            advisory_timeout=margin,
            mandatory_timeout=max(60, margin * 2 // 3),
        )
        core = AioSession()
        core.register_component(
            "data_loader", self.base_session()._session.get_component("data_loader")
        )
        core._credentials = creds
        return aioboto3.Session(botocore_session=core, region_name=self.aws.settings.region)

    async def _assume_chain(
        self, account_id: str, chain: list[str], external_id: str | None
    ) -> dict[str, Any]:
        """Assume every role of ``chain`` in order, each with the previous hop's credentials;
        the ExternalId goes with the last hop. Returns the last hop's credential metadata."""
        base = self.base_session()
        hop_creds: dict[str, str] = {}
        metadata: dict[str, Any] = {}
        for i, arn in enumerate(chain):
            last = i == len(chain) - 1
            params: dict[str, Any] = {
                "RoleArn": arn,
                "RoleSessionName": self.creds.session_name,
                "DurationSeconds": self.creds.duration_secs
                if i == 0
                else min(self.creds.duration_secs, ROLE_CHAINING_MAX_SECS),
            }
            if last and external_id:
                params["ExternalId"] = external_id
            started = self._clock()
            try:
                resp = await self._assume(base, hop_creds, params)
            except (ClientError, BotoCoreError) as exc:
                where = "" if last else f" (role_chain hop {i + 1}: {arn})"
                raise AssumeRoleFailed(
                    account_id, error_code(exc), error_message(exc) + where
                ) from exc
            c = resp["Credentials"]
            hop_creds = {
                "aws_access_key_id": c["AccessKeyId"],
                "aws_secret_access_key": c["SecretAccessKey"],
                "aws_session_token": c["SessionToken"],
            }
            metadata = {
                "access_key": c["AccessKeyId"],
                "secret_key": c["SecretAccessKey"],
                "token": c["SessionToken"],
                "expiry_time": self._expiry(started, resp).isoformat(),
                "account_id": account_of_arn(str(resp.get("AssumedRoleUser", {}).get("Arn", "")))
                or account_of_arn(arn),
            }
        return metadata

    def _expiry(self, started: float, resp: Any) -> datetime:
        """Expiry on our own clock: the lifetime STS granted (Expiration minus the response's
        Date) counted from when we asked. A skewed local clock then neither refreshes in a
        loop nor lets credentials lapse."""
        expiration = resp["Credentials"]["Expiration"]
        if not isinstance(expiration, datetime):
            expiration = AioRefreshableCredentials._expiry_datetime(str(expiration))
        server_now: datetime | None = None
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        if date:
            with contextlib.suppress(TypeError, ValueError):
                server_now = parsedate_to_datetime(date)
        if server_now is None or server_now.tzinfo is None:
            server_now = datetime.now(tz=UTC)
        lifetime = (expiration - server_now).total_seconds()
        return datetime.fromtimestamp(started + lifetime, tz=UTC)

    async def _assume(
        self, base: aioboto3.Session, hop_creds: dict[str, str], params: dict[str, Any]
    ) -> Any:
        # Every hop's STS client comes from the base session (explicit keys after the first
        # hop), so the one shared botocore config and any event hooks apply to all of them.
        async with base.client("sts", **self.aws.client_kwargs(), **hop_creds) as sts:
            self.assume_role_calls += 1
            try:
                return await sts.assume_role(**params)
            except ClientError as exc:
                # The base identity may itself be an assumed role (IRSA, instance role): then
                # even the first hop is role chaining and AWS caps it at one hour.
                msg = error_message(exc).lower()
                if (
                    error_code(exc) == "ValidationError"
                    and "chaining" in msg
                    and params["DurationSeconds"] > ROLE_CHAINING_MAX_SECS
                ):
                    self.assume_role_calls += 1
                    return await sts.assume_role(
                        **{**params, "DurationSeconds": ROLE_CHAINING_MAX_SECS}
                    )
                raise
