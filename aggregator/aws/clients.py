"""One shared botocore config and client creation (error classification is aws/errors.py).

Every AWS client in the process is made here, so timeouts, retries and the endpoint override
(`aws.endpoint_url`: VPC endpoints, S3-compatible stores, tests) are set in one place.
"""

from __future__ import annotations

import asyncio
import ssl
from contextlib import AsyncExitStack
from typing import Any, ClassVar, Protocol

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from botocore.httpsession import get_cert_path

from aggregator.config import AwsSettings

Session = aioboto3.Session  # what a SessionProvider hands out


class SharedTlsHttpSession(AIOHTTPSession):  # type: ignore[misc]
    """aiobotocore builds a fresh TLS context for every client, re-reading the CA bundle: ~35 ms
    of CPU, two thirds of the cost of making a client. A process makes thousands of clients (per
    account × region × service), so one context per CA bundle is shared (an SSLContext is meant
    to be shared). Proxies and client certificates keep aiobotocore's own path."""

    _contexts: ClassVar[dict[str, ssl.SSLContext]] = {}

    def _create_connector(self, proxy_url: Any) -> Any:
        verify = getattr(self, "_verify", None)
        if proxy_url or not verify or getattr(self, "_cert_file", None):
            return super()._create_connector(proxy_url)
        ca_certs = get_cert_path(verify)
        key = str(ca_certs)
        context = self._contexts.get(key)
        if context is None:
            context = self._get_ssl_context()
            if ca_certs:
                context.load_verify_locations(ca_certs, None, None)
            self._contexts[key] = context
        return aiohttp.TCPConnector(
            limit=self._max_pool_connections, ssl=context, **self._connector_args
        )


class Aws:
    """Client factory bound to one AwsSettings."""

    def __init__(self, settings: AwsSettings) -> None:
        self.settings = settings
        self.config = AioConfig(
            retries={"mode": "standard", "max_attempts": settings.max_attempts},
            connect_timeout=settings.connect_timeout_secs,
            read_timeout=settings.read_timeout_secs,
            max_pool_connections=settings.max_pool_connections,
            # Regional STS endpoints; path-style works with every S3-compatible store.
            s3={"addressing_style": "auto"},
            http_session_cls=SharedTlsHttpSession,
        )

    def base_session(self) -> aioboto3.Session:
        """The base identity: the default chain (IRSA/web identity, instance role, profile)."""
        return aioboto3.Session(
            profile_name=self.settings.profile, region_name=self.settings.region
        )

    def client_kwargs(
        self, region: str | None = None, *, attempts: int | None = None
    ) -> dict[str, Any]:
        """Keyword arguments for ``session.client``; ``attempts`` caps botocore's own retries
        (1: none, for a caller that paces and retries by itself)."""
        config = self.config
        if attempts is not None:
            retries = {"mode": "standard", "total_max_attempts": attempts}
            config = config.merge(AioConfig(retries=retries))
        kw: dict[str, Any] = {"region_name": region or self.settings.region, "config": config}
        if self.settings.endpoint_url:
            kw["endpoint_url"] = self.settings.endpoint_url
        return kw

    def client(self, session: aioboto3.Session, service: str, region: str | None = None) -> Any:
        """An async context manager yielding a client (``async with aws.client(...) as c``)."""
        return session.client(service, **self.client_kwargs(region))


class SessionProvider(Protocol):
    """Hands out a session per account: the base identity for None, else the account's role
    (credentials.CredentialBroker; tests pass simpler ones)."""

    async def session_for(self, account_id: str | None) -> aioboto3.Session: ...


class ClientPool:
    """Clients kept open as long as their owner (a cycle; the service's archive reader), one per
    (session, service, region).

    Making an aiobotocore client costs milliseconds (endpoint and model loading); a cycle
    touching hundreds of sources must not pay that per object.
    """

    def __init__(self, aws: Aws) -> None:
        self.aws = aws
        self._stack = AsyncExitStack()
        self._clients: dict[tuple[int, str, str], Any] = {}
        self._opening: dict[tuple[int, str, str], asyncio.Lock] = {}

    async def get(self, session: aioboto3.Session, service: str, region: str | None = None) -> Any:
        """The pool's client for (session, service, region), made on first use. Tasks asking
        for the same one at the same moment wait for the first to make it (one client each)."""
        key = (id(session), service, region or self.aws.settings.region)
        client = self._clients.get(key)
        if client is not None:
            return client
        async with self._opening.setdefault(key, asyncio.Lock()):
            client = self._clients.get(key)
            if client is None:
                client = await self._stack.enter_async_context(
                    self.aws.client(session, service, region)
                )
                self._clients[key] = client
        return client

    async def close(self) -> None:
        self._clients.clear()
        await self._stack.aclose()

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
