"""Which (account, region, trail bucket) targets exist. Reads AWS; writes no state.

INTERFACE (implemented by the discovery work): the types below are what the rest of the
pipeline consumes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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


@dataclass
class Inventory:
    accounts: list[Account]
    regions: dict[str, list[str]]  # account id -> enabled regions after include/exclude
    trails: list[Trail]
    sources: list[Source]
    failures: list[AccountFailure]
    organization_id: str | None = None
