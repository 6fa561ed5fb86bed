"""Per-event context: enrichment from discovery and the pointer to the archived record."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aggregator.aws.inventory import Account


@dataclass(frozen=True, slots=True)
class EventContext:
    """What the pipeline knows about an event beyond the record itself.

    Enrichment mirrors :class:`aggregator.discovery.Account` (of the account that logged the
    event, ``recipientAccountId``); ``archive_bucket``/``archive_key`` locate the central
    archive object holding the full record (used by the oversize policy and carried in every
    output so a reader can always find the original).
    """

    account_name: str = ""
    ou_path: str = ""
    ou_ids: tuple[str, ...] = ()
    account_tags: Mapping[str, str] = field(default_factory=dict)
    organization_id: str | None = None
    archive_bucket: str | None = None
    archive_key: str | None = None

    @classmethod
    def from_account(
        cls,
        account: Account | None,
        *,
        organization_id: str | None = None,
        archive_bucket: str | None = None,
        archive_key: str | None = None,
    ) -> EventContext:
        if account is None:
            return cls(
                organization_id=organization_id,
                archive_bucket=archive_bucket,
                archive_key=archive_key,
            )
        return cls(
            account_name=account.name,
            ou_path=account.ou_path,
            ou_ids=tuple(account.ou_ids),
            account_tags=dict(account.tags),
            organization_id=organization_id,
            archive_bucket=archive_bucket,
            archive_key=archive_key,
        )

    @property
    def has_enrichment(self) -> bool:
        return bool(
            self.account_name
            or self.ou_path
            or self.ou_ids
            or self.account_tags
            or self.organization_id
        )

    @property
    def has_archive(self) -> bool:
        return self.archive_bucket is not None or self.archive_key is not None
