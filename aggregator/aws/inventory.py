"""What discovery finds, and the pure rules that choose it: accounts (active, selected by id,
OU and tag), regions (enabled, included, excluded), the trails an account × region owns, and
the log prefixes (sources) to poll. No I/O: :mod:`aggregator.aws.discovery` reads AWS and
applies these."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aggregator.config import AccountDiscovery, Settings
from aggregator.state import SourceRef


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
    # coverage lost to the config (an organization trail whose owner the account filters
    # leave out), each saying which setting keeps it
    warnings: list[str] = field(default_factory=list)


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


def why_left_out(account: Account, rules: AccountDiscovery) -> str:
    """The setting that leaves ``account`` out (for messages): the exclude rule it matches, or
    the include rules it matches none of."""
    if account.id in rules.exclude_ids:
        return "discovery.accounts.exclude_ids"
    if any(_ou_matches(account, p) for p in rules.exclude_ous):
        return "discovery.accounts.exclude_ous"
    if _tags_match(account, rules.exclude_tags):
        return "discovery.accounts.exclude_tags"
    used = [
        f"discovery.accounts.{name}"
        for name in ("include_ids", "include_ous", "include_tags")
        if getattr(rules, name)
    ]
    return "matches none of " + " / ".join(used) if used else "discovery.accounts"


def org_trail_dropped(owner: str, reason: str, trail_arns: Iterable[str]) -> str:
    """The warning for organization trails lost because their owner is left out."""
    keep = (
        f'keep it with discovery.trails.organization_trail_owner_ids: ["{owner}"] (its '
        "trails are read, its own events stay out), or name the trail's bucket in "
        "discovery.trails.static_sources"
    )
    arns = sorted(trail_arns)
    if arns:
        return (
            f"organization trail {', '.join(arns)} is not read for any account: its owner, "
            f"the management account {owner}, is left out ({reason}); {keep}"
        )
    return (
        f"the management account {owner} is left out ({reason}) and its trails could not be "
        f"checked: an organization trail it owns would not be read for any account; {keep}"
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
