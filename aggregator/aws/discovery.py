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
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aioboto3

from aggregator.aws.clients import Aws, ClientPool
from aggregator.aws.credentials import BaseIdentityFailed, CredentialBroker, CredentialsError
from aggregator.aws.errors import error_code, error_message
from aggregator.config import AccountDiscovery, Settings
from aggregator.log import get_logger
from aggregator.state import SourceRef

log = get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Account:
    id: str
    name: str = ""
    email: str = ""
    ou_path: str = ""  # "Root/Prod/Payments"
    ou_ids: tuple[str, ...] = ()  # ("r-abcd", "ou-abcd-1", ...), root first
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Trail:
    arn: str
    name: str
    owner_account_id: str
    home_region: str
    bucket: str
    key_prefix: str  # S3KeyPrefix, "" when unset
    is_organization: bool
    is_multi_region: bool


@dataclass(frozen=True)
class Source(SourceRef):
    """One CloudTrail log prefix to poll.

    ``prefix`` = ``[P/]AWSLogs/[o-x/]<acct>/CloudTrail/<region>/``.

    ``reader_account_id`` is whose credentials read the bucket (None: the base identity).
    ``source_id`` is ``f"{bucket}/{prefix}"`` so the same prefix reached through two trails is
    read once.
    """

    reader_account_id: str | None = None


@dataclass(frozen=True)
class AccountFailure:
    account_id: str
    stage: str  # "assume_role", "describe_regions", "describe_trails", ...
    reason: str  # "AccessDenied: ..."
    code: str = ""  # the AWS error code ("AccessDenied") or the exception class name
    region: str | None = None  # set when only one region of the account failed


@dataclass
class Inventory:
    accounts: list[Account]
    regions: dict[str, list[str]]  # account id -> enabled regions after include/exclude
    trails: list[Trail]
    sources: list[Source]
    failures: list[AccountFailure]
    organization_id: str | None = None


class DiscoveryError(Exception):
    """Discovery could not run at all (no account list, no base identity)."""


# --------------------------------------------------------------------------- pure rules

ACTIVE = "ACTIVE"
_OPTED_IN = frozenset({"opt-in-not-required", "opted-in"})


def account_is_active(entry: Mapping[str, Any]) -> bool:
    """An Organizations account entry is ACTIVE. ``State`` (2025+) wins over the deprecated
    ``Status``: ``State`` also has PENDING_CLOSURE / CLOSED, which ``Status`` reports as
    ACTIVE / SUSPENDED for a while."""
    state = entry.get("State")
    if state:
        return bool(state == ACTIVE)
    return bool(entry.get("Status") == ACTIVE)


def _ou_matches(account: Account, pattern: str) -> bool:
    if pattern.startswith(("ou-", "r-")):
        return pattern in account.ou_ids
    path = pattern.strip("/")
    return account.ou_path == path or account.ou_path.startswith(path + "/")


def _tags_match(account: Account, wanted: Mapping[str, str]) -> bool:
    return any(
        key in account.tags and (value == "*" or account.tags[key] == value)
        for key, value in wanted.items()
    )


def account_selected(account: Account, rules: AccountDiscovery) -> bool:
    """Exclude rules win. With no include rule every account is in; otherwise an account is in
    when it matches any include rule (an id, an OU id or path prefix, a tag pair; ``"*"`` as a
    tag value matches any value)."""
    if (
        account.id in rules.exclude_ids
        or any(_ou_matches(account, p) for p in rules.exclude_ous)
        or _tags_match(account, rules.exclude_tags)
    ):
        return False
    if not (rules.include_ids or rules.include_ous or rules.include_tags):
        return True
    return (
        account.id in rules.include_ids
        or any(_ou_matches(account, p) for p in rules.include_ous)
        or _tags_match(account, rules.include_tags)
    )


def partition_of(region: str) -> str:
    for prefix, partition in (
        ("cn-", "aws-cn"),
        ("us-gov-", "aws-us-gov"),
        ("us-isob-", "aws-iso-b"),
        ("us-iso-", "aws-iso"),
        ("eu-isoe-", "aws-iso-e"),
        ("us-isof-", "aws-iso-f"),
    ):
        if region.startswith(prefix):
            return partition
    return "aws"


def select_regions(
    described: Iterable[Mapping[str, Any]],
    include: Iterable[str],
    exclude: Iterable[str],
    home_region: str,
) -> list[str]:
    """Enabled regions (opt-in not required or opted in) of the home region's partition,
    ∩ include (when given) − exclude, sorted."""
    partition = partition_of(home_region)
    enabled = {
        str(r["RegionName"])
        for r in described
        if r.get("OptInStatus", "opt-in-not-required") in _OPTED_IN
        and partition_of(str(r["RegionName"])) == partition
    }
    wanted = set(include)
    if wanted:
        enabled &= wanted
    return sorted(enabled - set(exclude))


def _norm_prefix(prefix: str | None) -> str:
    prefix = (prefix or "").strip("/")
    return prefix + "/" if prefix else ""


def own_trails(
    account_id: str, region: str, trail_list: Iterable[Mapping[str, Any]]
) -> list[Trail]:
    """The trails of a ``describe_trails`` answer that belong to this account and region:
    an organization trail owned by another account and the shadow copy of a multi-region trail
    in a region that is not its home are dropped (they are read where they live)."""
    out: list[Trail] = []
    for t in trail_list:
        arn = str(t.get("TrailARN", ""))
        parts = arn.split(":", 5)
        if len(parts) != 6 or not parts[5].startswith("trail/") or not t.get("S3BucketName"):
            continue
        owner, arn_region = parts[4], parts[3]
        home = str(t.get("HomeRegion") or arn_region)
        if owner != account_id or home != region:
            continue
        out.append(
            Trail(
                arn=arn,
                name=str(t.get("Name") or parts[5].removeprefix("trail/")),
                owner_account_id=owner,
                home_region=home,
                bucket=str(t["S3BucketName"]),
                key_prefix=_norm_prefix(t.get("S3KeyPrefix")),
                is_organization=bool(t.get("IsOrganizationTrail")),
                is_multi_region=bool(t.get("IsMultiRegionTrail")),
            )
        )
    return out


def log_prefix(key_prefix: str, account_id: str, region: str, org_id: str | None = None) -> str:
    """``[P/]AWSLogs/[o-x/]<acct>/CloudTrail/<region>/``."""
    org = f"{org_id}/" if org_id else ""
    return f"{_norm_prefix(key_prefix)}AWSLogs/{org}{account_id}/CloudTrail/{region}/"


def build_sources(
    account_ids: Iterable[str],
    regions: Mapping[str, list[str]],
    trails: Iterable[Trail],
    settings: Settings,
    *,
    organization_id: str | None,
    fallback_regions: list[str] | None = None,
) -> list[Source]:
    """Every log prefix to poll, deduplicated by ``bucket/prefix`` (first one wins, in the order
    account trails, organization trails, static sources).

    An account trail covers its owner; an organization trail and a static source cover every
    account given. Accounts missing from ``regions`` (their own role failed) are still covered
    by organization trails and static sources, over ``fallback_regions``: those prefixes are
    read with another account's credentials.
    """
    tcfg = settings.discovery.trails
    ids = list(dict.fromkeys(account_ids))
    fallback = fallback_regions or []

    def covered(account: str, home: str | None) -> list[str]:
        have = regions.get(account)
        pool = have if have is not None else fallback
        if home is None:  # multi-region: every region of the account
            return list(pool)
        return [home] if home in pool else []

    # (account, region, bucket, prefix, reader, trail arn), in precedence order
    wanted: list[tuple[str, str, str, str, str | None, str | None]] = []
    ordered = sorted(trails, key=lambda t: (t.is_organization, t.arn))
    for t in ordered:
        home = None if t.is_multi_region else t.home_region
        if not t.is_organization:
            for region in covered(t.owner_account_id, home):
                prefix = log_prefix(t.key_prefix, t.owner_account_id, region)
                wanted.append(
                    (t.owner_account_id, region, t.bucket, prefix, t.owner_account_id, t.arn)
                )
        elif organization_id:
            reader = tcfg.organization_trail_reader_account_id or t.owner_account_id
            for account in ids:
                for region in covered(account, home):
                    prefix = log_prefix(t.key_prefix, account, region, organization_id)
                    wanted.append((account, region, t.bucket, prefix, reader, t.arn))
    for st in tcfg.static_sources:
        for account in ids:
            for region in covered(account, None):
                prefix = log_prefix(st.prefix, account, region, st.organization_id)
                wanted.append((account, region, st.bucket, prefix, st.reader_account_id, None))

    out: dict[str, Source] = {}
    for w_account, w_region, w_bucket, w_prefix, w_reader, w_arn in wanted:
        sid = f"{w_bucket}/{w_prefix}"
        if sid not in out:
            out[sid] = Source(
                source_id=sid,
                account_id=w_account,
                region=w_region,
                bucket=w_bucket,
                prefix=w_prefix,
                trail_arn=w_arn,
                reader_account_id=tcfg.bucket_readers.get(w_bucket, w_reader),
            )
    return sorted(out.values(), key=lambda src: src.source_id)


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
        examined = await asyncio.gather(*(self._examine(a) for a in accounts))

        regions: dict[str, list[str]] = {}
        trails: dict[str, Trail] = {}
        for account, (account_regions, found) in zip(accounts, examined, strict=True):
            if account_regions is not None:
                regions[account.id] = account_regions
            for t in found:
                trails.setdefault(t.arn, t)
        trail_list = sorted(trails.values(), key=lambda t: t.arn)
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
            org_id = str((await orgs.describe_organization())["Organization"]["Id"])
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
