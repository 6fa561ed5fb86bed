"""Wiring and lifecycle: settings → AWS, state, credentials, discovery, ingest.

No pipeline logic here; each room does its own work. ``App`` is what the CLI commands, the
daemon and the demo drive.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aggregator.archive.store import check_writable
from aggregator.aws.clients import Aws, ClientPool
from aggregator.aws.credentials import CredentialBroker
from aggregator.aws.discovery import discover
from aggregator.aws.inventory import Account, Inventory
from aggregator.aws.slots import for_shard
from aggregator.config import Settings
from aggregator.ingest.cycle import Ingestor
from aggregator.ingest.work import CycleReport
from aggregator.log import get_logger
from aggregator.service.runtime import tune_gc
from aggregator.state import State

log = get_logger("aggregator.app")


class App:
    def __init__(
        self,
        settings: Settings,
        *,
        state: State | None = None,
        clock: Callable[[], float] = time.time,
        writer: str = "ctagg",
    ) -> None:
        """Without ``state``, opens ``settings.state.path`` as its one writer (the lock is
        released by :meth:`close`); ``writer`` names the command in the lock."""
        self.settings = settings
        self.clock = clock
        tune_gc()  # many short-lived dicts per record: the default GC thresholds cost ~10-40%
        self.aws = Aws(settings.aws)
        self.state = state or State(settings.state.path, writer=writer)
        self.broker = CredentialBroker(settings, self.aws)
        self.ingestor = Ingestor(settings, self.state, self.broker, self.aws, clock=clock)
        self.inventory: Inventory | None = None
        self._accounts: dict[str, Account] = {}
        self.discovered_at: float | None = None
        self.last_cycle: CycleReport | None = None
        self.last_cycle_at: float | None = None
        self._archive_ok = False  # the central bucket took the write probe

    async def refresh_discovery(self) -> Inventory:
        started = time.perf_counter()
        found = await discover(self.settings, self.broker, self.aws)
        inventory = for_shard(found, self.settings.shard)  # one shard: the inventory itself
        self.inventory = inventory
        self._accounts = {a.id: a for a in inventory.accounts}
        self.discovered_at = self.clock()
        log.info(
            "discovery.done",
            accounts=len(inventory.accounts),
            trails=len(inventory.trails),
            sources=len(inventory.sources),
            failures=len(inventory.failures),
            **(
                {"shard": self.settings.shard.label, "sources_all": len(found.sources)}
                if self.settings.shard.count > 1
                else {}
            ),
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        for warning in inventory.warnings:  # coverage lost to the config: said every discovery
            log.warning("discovery.coverage_lost", stage="discovery", reason=warning)
        return inventory

    async def check_archive(self) -> None:
        """Raise ``ArchiveUnavailable`` (once, naming the bucket and what to do) unless the
        central bucket can be written: before any source object is read."""
        async with ClientPool(self.aws) as pool:
            await check_writable(self.settings, self.broker, pool)
        self._archive_ok = True

    async def run_once(self) -> CycleReport:
        """One ingest cycle (discovering first when nothing is known yet). The central bucket
        is probed before the first cycle and after a cycle with errors, so a missing or
        unwritable bucket stops the cycle at its start instead of failing every object."""
        if not self._archive_ok:
            await self.check_archive()
        inventory = self.inventory or await self.refresh_discovery()
        report = await self.ingestor.run(inventory)
        self.last_cycle, self.last_cycle_at = report, self.clock()
        if report.errors:
            self._archive_ok = False
        return report

    def account(self, account_id: str) -> Account | None:
        """What discovery last knew about an account (name, OU path, tags), for enrichment."""
        return self._accounts.get(account_id)

    def request_stop(self) -> None:
        """Stop taking new objects; in-flight ones finish or are abandoned uncommitted."""
        self.ingestor.stop.set()

    async def close(self) -> None:
        self.state.close()
