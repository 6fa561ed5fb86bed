"""aggregator.aws: the client pool, against moto's server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aggregator.aws.clients import Aws, ClientPool
from aggregator.config import AwsSettings


class SlowCredentialsAws(Aws):
    """Making a client yields to the loop first, as it does in production when the base
    identity's credentials are fetched on first use (IRSA: an AssumeRoleWithWebIdentity call;
    an instance role: IMDS). Counts the clients made."""

    made = 0

    def client(self, session: Any, service: str, region: str | None = None) -> Any:
        inner = super().client(session, service, region)

        @contextlib.asynccontextmanager
        async def slow() -> AsyncIterator[Any]:
            await asyncio.sleep(0.01)
            self.made += 1
            async with inner as c:
                yield c

        return slow()


async def test_pool_makes_one_client_for_tasks_asking_at_once(moto: str) -> None:
    """Eight tasks asking for the same client at the same moment share one; another region
    gets its own; the shared client works against the server."""
    aws = SlowCredentialsAws(AwsSettings())
    session = aws.base_session()
    async with ClientPool(aws) as pool:
        got = await asyncio.gather(*(pool.get(session, "s3") for _ in range(8)))
        assert len({id(c) for c in got}) == 1
        assert aws.made == 1
        other = await pool.get(session, "s3", "eu-west-1")
        assert other is not got[0]
        assert await pool.get(session, "s3") is got[0]
        assert aws.made == 2
        await got[0].create_bucket(Bucket="pool-check")
        listed = await got[0].list_buckets()
        assert [b["Name"] for b in listed["Buckets"]] == ["pool-check"]
