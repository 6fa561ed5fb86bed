"""Which (account, region, trail bucket) targets exist. Reads AWS; writes no state.

``discover()`` finds, in order:

1. accounts: AWS Organizations (``list_accounts``, ACTIVE only, OU path, tags) or the static
   list, then include/exclude by id, OU (id or path prefix) and tag;
2. regions per account: ``ec2.describe_regions`` (enabled / opted-in only) ∩ include − exclude;
3. trails per account × region: ``describe_trails(includeShadowTrails=False)``, keeping only
   trails owned by that account whose home region is that region (no shadow copies, no
   organization trail owned elsewhere), deduplicated by ARN;
4. sources: one log prefix per (trail, account, region), deduplicated by ``bucket/prefix``.

A failure in one account (role denied, region API denied, ...) becomes an ``AccountFailure``
and every other account goes on. See docs/discovery.md for the IAM each step needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aioboto3

from aggregator.aws.clients import Aws, ClientPool
from aggregator.aws.credentials import BaseIdentityFailed, CredentialBroker, CredentialsError
from aggregator.aws.errors import error_code, error_message
from aggregator.aws.inventory import (
    Account,
    AccountFailure,
    Inventory,
    Trail,
    account_is_active,
    account_selected,
    build_sources,
    org_trail_dropped,
    own_trails,
    select_regions,
    why_left_out,
)
from aggregator.config import Settings
from aggregator.log import get_logger

log = get_logger(__name__)


T = TypeVar("T")


class DiscoveryError(Exception):
    """Discovery could not run at all (no account list, no base identity)."""


# --------------------------------------------------------------------------- pure rules


# --------------------------------------------------------------------------- the AWS part


async def discover(settings: Settings, broker: CredentialBroker, aws: Aws) -> Inventory:
    """Find accounts, regions, trails and sources. Per-account failures are returned in
    ``Inventory.failures``; raises DiscoveryError only when nothing can be discovered.
    Logs nothing: the caller logs one ``discovery.done`` line and the failures."""
    async with ClientPool(aws) as pool:
        return await _Discovery(settings, broker, pool).run()


class _Discovery:
    def __init__(self, settings: Settings, broker: CredentialBroker, pool: ClientPool) -> None:
        self.settings = settings
        self.cfg = settings.discovery
        self.broker = broker
        self.pool = pool
        self.sem = asyncio.Semaphore(self.cfg.max_concurrency)
        self.failures: list[AccountFailure] = []
        self._nodes: dict[str, asyncio.Task[tuple[str | None, str]]] = {}
        self._root_names: dict[str, str] = {}
        self.management_id: str | None = None  # from DescribeOrganization
        self.warnings: list[str] = []

    def fail(
        self, account_id: str, stage: str, exc: BaseException, region: str | None = None
    ) -> None:
        if isinstance(exc, CredentialsError) and hasattr(exc, "code"):
            code, reason = str(exc.code), str(getattr(exc, "message", exc))
        else:
            code, reason = error_code(exc), error_message(exc)
        self.failures.append(AccountFailure(account_id, stage, reason, code, region))

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        async with self.sem:
            return await fn()

    # ------------------------------------------------------------ run

    async def run(self) -> Inventory:
        try:
            await self.broker.caller_account()
        except BaseIdentityFailed as exc:
            raise DiscoveryError(str(exc)) from exc
        if self.cfg.accounts.source == "static":
            candidates, org_id = self._static_accounts(), None
        else:
            candidates, org_id = await self._org_accounts()
        accounts = [a for a in candidates if account_selected(a, self.cfg.accounts)]
        selected = {a.id for a in accounts}
        # accounts left out by the filters whose organization trails still cover the others
        owners = [
            a
            for a in candidates
            if a.id in self.cfg.trails.organization_trail_owner_ids and a.id not in selected
        ]
        examined = await asyncio.gather(*(self._examine(a) for a in accounts))
        owned = await asyncio.gather(*(self._examine(a) for a in owners))

        regions: dict[str, list[str]] = {}
        trails: dict[str, Trail] = {}
        for account, (account_regions, found) in zip(accounts, examined, strict=True):
            if account_regions is not None:
                regions[account.id] = account_regions
            for t in found:
                trails.setdefault(t.arn, t)
        for _, found in owned:
            for t in found:
                if t.is_organization:
                    trails.setdefault(t.arn, t)
        trail_list = sorted(trails.values(), key=lambda t: t.arn)
        if not any(t.is_organization for t in trail_list):
            await self._warn_if_org_trail_dropped(candidates, selected)
        org_trails = [t for t in trail_list if t.is_organization]
        if org_trails and org_id is None:
            org_id = await self._org_id_via(org_trails[0].owner_account_id)
        fallback = sorted({r for rs in regions.values() for r in rs})
        sources = build_sources(
            (a.id for a in accounts),
            regions,
            trail_list,
            self.settings,
            organization_id=org_id,
            fallback_regions=fallback,
        )
        self.failures.sort(key=lambda f: (f.account_id, f.stage, f.region or ""))
        return Inventory(
            accounts=accounts,
            regions=regions,
            trails=trail_list,
            sources=sources,
            failures=self.failures,
            organization_id=org_id,
            warnings=self.warnings,
        )

    # ------------------------------------------------------------ accounts

    def _static_accounts(self) -> list[Account]:
        return [
            Account(id=s.id, name=s.name, ou_path=s.ou_path.strip("/"), tags=dict(s.tags))
            for s in self.cfg.accounts.static
        ]

    async def _org_session(self) -> aioboto3.Session:
        role = self.cfg.accounts.organizations_role_arn
        if not role:
            return self.broker.base_session()
        try:
            return await self.broker.session_for_role(role)
        except CredentialsError as exc:
            raise DiscoveryError(f"organizations role: {exc}") from exc

    async def _org_accounts(self) -> tuple[list[Account], str | None]:
        orgs = await self.pool.get(await self._org_session(), "organizations")
        try:
            org = (await orgs.describe_organization())["Organization"]
            org_id = str(org["Id"])
            self.management_id = str(org.get("MasterAccountId") or "") or None
            entries: list[dict[str, Any]] = []
            async for page in orgs.get_paginator("list_accounts").paginate():
                entries.extend(page.get("Accounts", []))
            async for page in orgs.get_paginator("list_roots").paginate():
                for root in page.get("Roots", []):
                    self._root_names[str(root["Id"])] = str(root.get("Name") or "Root")
        except Exception as exc:
            raise DiscoveryError(f"organizations: {error_message(exc)}") from exc
        active = [e for e in entries if account_is_active(e)]
        accounts = await asyncio.gather(*(self._org_account(orgs, e) for e in active))
        return sorted((a for a in accounts if a is not None), key=lambda a: a.id), org_id

    async def _org_account(self, orgs: Any, entry: Mapping[str, Any]) -> Account | None:
        account_id = str(entry["Id"])
        rules = self.cfg.accounts
        if account_id in rules.exclude_ids:
            return None  # out whatever its OU and tags: skip the lookups
        ou_ids: tuple[str, ...] = ()
        ou_path = ""
        tags: dict[str, str] = {}
        try:
            chain = await self._ou_chain(orgs, account_id)
            ou_ids = tuple(node for node, _ in chain)
            ou_path = "/".join(name for _, name in chain)
        except Exception as exc:
            self.fail(account_id, "list_parents", exc)
            if rules.include_ous or rules.exclude_ous:
                return None  # cannot tell whether it is in scope
        try:
            async with self.sem:
                async for page in orgs.get_paginator("list_tags_for_resource").paginate(
                    ResourceId=account_id
                ):
                    tags.update({str(t["Key"]): str(t["Value"]) for t in page.get("Tags", [])})
        except Exception as exc:
            self.fail(account_id, "list_tags_for_resource", exc)
            if rules.include_tags or rules.exclude_tags:
                return None
        return Account(
            id=account_id,
            name=str(entry.get("Name", "")),
            email=str(entry.get("Email", "")),
            ou_path=ou_path,
            ou_ids=ou_ids,
            tags=tags,
        )

    async def _ou_chain(self, orgs: Any, account_id: str) -> list[tuple[str, str]]:
        """[(node id, name)] from the root down to the account's OU."""
        parents = await self.call(lambda: orgs.list_parents(ChildId=account_id))
        node: str | None = str(parents["Parents"][0]["Id"])
        chain: list[tuple[str, str]] = []
        while node is not None:
            task = self._nodes.get(node)
            if task is None:  # one lookup per OU per discovery, shared by all its accounts
                task = asyncio.ensure_future(self._node(orgs, node))
                self._nodes[node] = task
            parent, name = await task
            chain.append((node, name))
            node = parent
        chain.reverse()
        return chain

    async def _node(self, orgs: Any, node: str) -> tuple[str | None, str]:
        if node.startswith("r-"):
            return None, self._root_names.get(node, "Root")
        ou = await self.call(lambda: orgs.describe_organizational_unit(OrganizationalUnitId=node))
        parents = await self.call(lambda: orgs.list_parents(ChildId=node))
        return str(parents["Parents"][0]["Id"]), str(ou["OrganizationalUnit"]["Name"])

    async def _org_id_via(self, account_id: str) -> str | None:
        """The organization id through any member's session (DescribeOrganization is allowed to
        every account of an organization)."""
        try:
            session = await self.broker.session_for(account_id)
            orgs = await self.pool.get(session, "organizations")
            resp = await self.call(orgs.describe_organization)
            return str(resp["Organization"]["Id"])
        except Exception as exc:
            self.fail(account_id, "describe_organization", exc)
            return None

    async def _warn_if_org_trail_dropped(
        self, candidates: list[Account], selected: set[str]
    ) -> None:
        """Coverage is never lost silently: when the management account (where organization
        trails live) is left out by the account filters and no organization trail was found,
        look at its trails once and warn, naming the setting that keeps them."""
        mgmt = self.management_id
        rules = self.cfg.accounts
        if (
            mgmt is None
            or mgmt in selected
            or mgmt in self.cfg.trails.organization_trail_owner_ids
            or any(st.organization_id for st in self.cfg.trails.static_sources)
            or not self.cfg.trails.discover
        ):
            return
        account = next((a for a in candidates if a.id == mgmt), Account(mgmt))
        reason = why_left_out(account, rules)
        arns: list[str] = []
        probed = False
        try:
            session = await self.call(lambda: self.broker.session_for(mgmt))
            ct = await self.pool.get(session, "cloudtrail", self.pool.aws.settings.region)
            resp = await self.call(lambda: ct.describe_trails(includeShadowTrails=True))
            probed = True
            arns = [
                str(t["TrailARN"])
                for t in resp.get("trailList", [])
                if t.get("IsOrganizationTrail") and f":{mgmt}:trail/" in str(t.get("TrailARN"))
            ]
        except Exception:  # no role in the management account: warn without the trail names
            probed = False
        if probed and not arns:
            return  # nothing lost
        self.warnings.append(org_trail_dropped(mgmt, reason, arns))

    # ------------------------------------------------------------ per account

    async def _examine(self, account: Account) -> tuple[list[str] | None, list[Trail]]:
        try:
            session = await self.call(lambda: self.broker.session_for(account.id))
        except Exception as exc:
            self.fail(account.id, "assume_role", exc)
            return None, []
        try:
            ec2 = await self.pool.get(session, "ec2")
            described = await self.call(ec2.describe_regions)
        except Exception as exc:
            self.fail(account.id, "describe_regions", exc)
            return None, []
        regions = select_regions(
            described.get("Regions", []),
            self.cfg.regions.include,
            self.cfg.regions.exclude,
            self.pool.aws.settings.region,
        )
        if not self.cfg.trails.discover:
            return regions, []
        found = await asyncio.gather(*(self._trails(account, session, r) for r in regions))
        return regions, [t for ts in found for t in ts]

    async def _trails(
        self, account: Account, session: aioboto3.Session, region: str
    ) -> list[Trail]:
        try:
            ct = await self.pool.get(session, "cloudtrail", region)
            resp = await self.call(lambda: ct.describe_trails(includeShadowTrails=False))
        except Exception as exc:
            self.fail(account.id, "describe_trails", exc, region)
            return []
        return own_trails(account.id, region, resp.get("trailList", []))
