"""The typed settings: one strict pydantic model per config section, :class:`Settings` for the
whole file. Unknown keys are errors; option names are snake_case with unit suffixes."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aggregator.config.normalize import NormalizeSettings
from connectors import AnyConnectorSettings

ACCOUNT_ID = r"^\d{12}$"
AccountId = Annotated[str, Field(pattern=ACCOUNT_ID)]
Region = Annotated[str, Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")]


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, values are not coerced loosely."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- sections


class StateSettings(Strict):
    path: str = Field(
        default="state/ctagg.db",
        description="SQLite file; put it on a persistent volume. Default: $CTAGG_STATE_PATH "
        "(the image sets /var/lib/ctagg/state.db), else state/ctagg.db beside the config file. "
        "A relative path given here is relative to the working directory.",
    )


class ShardSettings(Strict):
    """Static sharding (docs/operations.md, "Scaling out"): each (account, region) pair hashes
    to one of ``slots`` slots, each slot belongs to one of ``count`` shards; a shard handles
    only its slots, with its own state file and writer marker."""

    slots: int = Field(
        default=256,
        ge=1,
        le=65536,
        description="(account, region) slots; fixed for an installation (recorded in the "
        "central bucket with the shard count).",
    )
    count: int = Field(default=1, ge=1, description="How many shards share the archive.")
    index: int | None = Field(
        default=None,
        ge=0,
        description="This process's shard, 0 .. count-1. Default: $CTAGG_SHARD_INDEX, else "
        "(count > 1) the ordinal of a StatefulSet pod from $POD_NAME or $HOSTNAME "
        "(name-<n>), else 0. `ctagg once|run --shard I/N` overrides index and count.",
    )
    snapshots: bool | None = Field(
        default=None,
        description="Upload a snapshot of this shard's state to the central bucket "
        "(_ctagg/snapshots/shard-I-of-N.db.gz) at shutdown, after `ctagg once` and every "
        "snapshot_interval_secs between cycles: what a resize (a changed count) starts the new "
        "shards from. Default: on with count > 1; set true on a single installation before "
        "its first scale-out.",
    )
    snapshot_interval_secs: float = Field(
        default=300,
        gt=0,
        description="Seconds between the daemon's snapshots (taken after an ingest cycle).",
    )
    resize_quiet_secs: float | None = Field(
        default=None,
        gt=0,
        description="A resize (a process started with another count than the recorded one) "
        "starts only when every shard of the old layout has stopped (its writer marker says "
        "so: a clean shutdown, the end of `ctagg once`) or has written no marker for this "
        "long (it crashed). Default: three service.ingest_interval_secs, and at least twice "
        "fence_secs.",
    )
    fence_secs: float = Field(
        default=60,
        gt=0,
        description="Self-fencing: during a cycle a process renews its writer marker every "
        "third of this (If-Match) and makes no central PUT or DELETE unless its last renewal "
        "(or claim) started less than this long ago; a process paused or cut off for longer, "
        "or whose marker another process wrote, ends its cycle with nothing more written.",
    )

    @field_validator("fence_secs")
    @classmethod
    def _quiet_outlasts_the_fence(cls, v: float, info: ValidationInfo) -> float:
        quiet = info.data.get("resize_quiet_secs")
        if quiet is not None and quiet < 2 * v:
            raise ValueError(
                f"fence_secs {v:g} needs resize_quiet_secs ({quiet:g}) of at least twice it: "
                "a resize must not take over from a process that may still write"
            )
        return v

    @property
    def snapshots_on(self) -> bool:
        return self.count > 1 if self.snapshots is None else self.snapshots

    @property
    def ordinal(self) -> int:
        """The resolved index (0 when unset)."""
        return self.index or 0

    @property
    def label(self) -> str:
        """``shard-I-of-N``: names this shard's state file and writer marker."""
        return f"shard-{self.ordinal}-of-{self.count}"

    # fields validate in order (slots, count, index), so each check sees the one before it
    # and its error names its own path (shard.count, shard.index)
    @field_validator("count")
    @classmethod
    def _count_within_slots(cls, v: int, info: ValidationInfo) -> int:
        slots = info.data.get("slots")
        if slots is not None and v > slots:
            raise ValueError(f"count {v} exceeds slots {slots} (each shard owns whole slots)")
        return v

    @field_validator("index")
    @classmethod
    def _index_below_count(cls, v: int | None, info: ValidationInfo) -> int | None:
        count = info.data.get("count")
        if v is not None and count is not None and v >= count:
            raise ValueError(f"index {v} is not below count {count} (shards are 0 .. {count - 1})")
        return v


def shard_state_path(path: str, shard: ShardSettings) -> str:
    """A shard's own state file beside ``path``: ``state.db`` → ``state.shard-1-of-3.db``
    (one shard: ``path`` itself)."""
    if shard.count <= 1:
        return path
    head, sep, name = path.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    return f"{head}{sep}{stem}.{shard.label}" + (f".{ext}" if ext else "")


class AwsSettings(Strict):
    region: str = Field(default="us-east-1", description="Region for global APIs (STS, Orgs).")
    endpoint_url: str | None = Field(
        default=None,
        description="Override every AWS endpoint (VPC endpoints, S3-compatible stores, tests).",
    )
    profile: str | None = Field(default=None, description="Named profile for the base identity.")
    max_attempts: int = Field(default=5, ge=1, le=20)
    connect_timeout_secs: float = Field(default=5.0, gt=0)
    read_timeout_secs: float = Field(default=60.0, gt=0)
    max_pool_connections: int = Field(default=64, ge=1, le=1024)


class AccountRoleOverride(Strict):
    role_arn: str | None = None
    external_id: SecretStr | None = None


class CredentialSettings(Strict):
    role_arn_template: str = Field(
        default="arn:aws:iam::{account_id}:role/OrganizationAccountAccessRole",
        description="Role assumed in each member account; {account_id} is substituted.",
    )
    external_id: SecretStr | None = None
    role_chain: list[str] = Field(
        default_factory=list,
        description="Role ARNs assumed in order from the base identity before the member role.",
    )
    session_name: str = Field(default="ctagg", pattern=r"^[\w+=,.@-]{2,64}$")
    duration_secs: int = Field(default=3600, ge=900, le=43200)
    refresh_margin_secs: int = Field(
        default=900, ge=60, description="Renew credentials this long before they expire."
    )
    hub_account_ids: list[AccountId] = Field(
        default_factory=list,
        description="Accounts read with the base identity itself (no role assumed).",
    )
    accounts: dict[str, AccountRoleOverride] = Field(default_factory=dict)

    @field_validator("role_arn_template")
    @classmethod
    def _template_has_placeholder(cls, v: str) -> str:
        if "{account_id}" not in v:
            raise ValueError("must contain {account_id}")
        return v

    @field_validator("accounts")
    @classmethod
    def _override_keys_are_ids(
        cls, v: dict[str, AccountRoleOverride]
    ) -> dict[str, AccountRoleOverride]:
        bad = [k for k in v if not re.match(ACCOUNT_ID, k)]
        if bad:
            raise ValueError(f"keys must be 12-digit account ids, got {bad}")
        return v


class StaticAccount(Strict):
    id: AccountId
    name: str = ""
    ou_path: str = ""
    tags: dict[str, str] = Field(default_factory=dict)


class AccountDiscovery(Strict):
    source: Literal["organizations", "static"] = "organizations"
    static: list[StaticAccount] = Field(default_factory=list)
    organizations_role_arn: str | None = Field(
        default=None,
        description="Role to assume for Organizations calls (management or delegated admin).",
    )
    include_ids: list[AccountId] = Field(default_factory=list)
    exclude_ids: list[AccountId] = Field(default_factory=list)
    include_ous: list[str] = Field(
        default_factory=list,
        description="OU ids (ou-...) or OU paths (Root/Prod); an account matches if under one.",
    )
    exclude_ous: list[str] = Field(default_factory=list)
    include_tags: dict[str, str] = Field(default_factory=dict)
    exclude_tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("include_ous", "exclude_ous")
    @classmethod
    def _ou_refs(cls, v: list[str]) -> list[str]:
        bad = [
            p
            for p in v
            if not re.match(r"^(ou-[0-9a-z]{4,32}-[0-9a-z]{8,32}|r-[0-9a-z]{4,32})$", p)
            and not re.match(r"^Root(/[^/]+)*$", p.strip("/"))
        ]
        if bad:
            raise ValueError(
                f"expected OU ids (ou-..., r-...) or paths from Root (Root/Prod), got {bad}"
            )
        return v

    @model_validator(mode="after")
    def _static_needs_accounts(self) -> AccountDiscovery:
        if self.source == "static" and not self.static:
            raise ValueError("source 'static' needs at least one entry in 'static'")
        return self


class RegionDiscovery(Strict):
    include: list[Region] = Field(default_factory=list)
    exclude: list[Region] = Field(default_factory=list)


class StaticSource(Strict):
    """A trail bucket named explicitly (when describe_trails is not allowed or not wanted)."""

    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = Field(default="", description="S3KeyPrefix of the trail, without AWSLogs/.")
    organization_id: str | None = Field(default=None, pattern=r"^o-[a-z0-9]{10,32}$")
    reader_account_id: AccountId | None = Field(
        default=None, description="Whose role reads the bucket; default: the base identity."
    )


class TrailDiscovery(Strict):
    discover: bool = Field(default=True, description="describe_trails in every account.")
    organization_trail_reader_account_id: AccountId | None = Field(
        default=None,
        description="Account whose role reads the organization trail bucket (log archive).",
    )
    static_sources: list[StaticSource] = Field(default_factory=list)
    organization_trail_owner_ids: list[AccountId] = Field(
        default_factory=list,
        description="Accounts examined for organization trails even when the account filters "
        "leave them out (their trails cover the selected accounts; their own events stay out). "
        "Typically the management account when include/exclude rules drop it.",
    )
    bucket_readers: dict[str, AccountId] = Field(
        default_factory=dict,
        description="Bucket name -> account whose role reads it; overrides the reader of every "
        "source in that bucket (e.g. account trails delivering to a central log archive).",
    )


class DiscoverySettings(Strict):
    accounts: AccountDiscovery = Field(default_factory=AccountDiscovery)
    regions: RegionDiscovery = Field(default_factory=RegionDiscovery)
    trails: TrailDiscovery = Field(default_factory=TrailDiscovery)
    max_concurrency: int = Field(default=8, ge=1, le=256)


class NotificationSettings(Strict):
    """Hint mode (docs/operations.md, "Hint mode"): S3 event notifications (directly, through
    SNS, or EventBridge) in an SQS queue say which objects are new. A message is a hint, never
    the truth: the hinted key goes through the per-key checkpoints like a listed one, and the
    full listing still runs every ``relist_interval_secs``."""

    queue_url: str = Field(
        description="The SQS queue S3 or EventBridge feeds. `{index}` (or `{shard}`) is "
        "replaced by this shard's index: one queue per shard (SNS fan-out to every shard's "
        "queue); without it every shard reads the same queue."
    )
    shard_queue_url: str | None = Field(
        default=None,
        description="With shard.count > 1: a queue per shard (`{index}`) for hints forwarded "
        "by the other shards; each shard reads its own besides queue_url and sends a hint of "
        "a pair it does not own to its owner's. Unset: such hints are deleted (logged, "
        "counted; right when queue_url has `{index}`: the owner got its own copy).",
    )
    relist_interval_secs: float = Field(
        default=3600,
        ge=0,
        description="The full listing of every source runs this often (0: every cycle); the "
        "cycles in between handle hints (and buckets not in `buckets`) only.",
    )
    buckets: list[str] = Field(
        default_factory=list,
        description="The trail buckets whose notifications feed the queue; sources in other "
        "buckets are listed every cycle. Empty: every bucket.",
    )
    region: str | None = Field(
        default=None,
        description="The queue's region. Default: from the URL (sqs.<region>.amazonaws.com), "
        "else aws.region.",
    )
    reader_account_id: Annotated[str, Field(pattern=ACCOUNT_ID)] | None = Field(
        default=None,
        description="Whose role reads the queue (credentials.role_name in that account); "
        "default: the base identity.",
    )
    wait_time_secs: int = Field(
        default=1, ge=0, le=20, description="ReceiveMessage long poll (WaitTimeSeconds)."
    )
    batch_size: int = Field(
        default=10, ge=1, le=10, description="Messages per ReceiveMessage (MaxNumberOfMessages)."
    )
    max_messages_per_cycle: int = Field(
        default=10000, ge=1, description="A cycle stops receiving after this many messages."
    )
    visibility_timeout_secs: int | None = Field(
        default=None,
        ge=1,
        le=43200,
        description="VisibilityTimeout asked on ReceiveMessage; default: the queue's own "
        "(GetQueueAttributes). A message in work is extended at half of it.",
    )

    @field_validator("queue_url")
    @classmethod
    def _queue_is_http(cls, v: str) -> str:
        if not v.startswith(("https://", "http://")):
            raise ValueError("must be the queue's http(s):// URL")
        return v

    @field_validator("shard_queue_url")
    @classmethod
    def _shard_queue_has_index(cls, v: str | None) -> str | None:
        if v is not None:
            if not v.startswith(("https://", "http://")):
                raise ValueError("must be an http(s):// URL")
            if "{index}" not in v and "{shard}" not in v:
                raise ValueError("must contain {index}: one queue per shard")
        return v


class CollectSettings(Strict):
    max_concurrency: int = Field(
        default=16, ge=1, le=512, description="Source objects read at once, across all sources."
    )
    relist_days: int = Field(
        default=2,
        ge=1,
        le=31,
        description="Day prefixes this recent are listed again every cycle to catch late files.",
    )
    backfill_days: int | None = Field(
        default=None,
        ge=1,
        description="Ignore day prefixes older than this on first sight; null = all history.",
    )
    max_object_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1024, description="Decompressed size cap per object."
    )
    max_record_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="A record larger than this quarantines."
    )
    notifications: NotificationSettings | None = Field(
        default=None,
        description="Hint mode: an SQS queue of S3 event notifications; unset: listing only.",
    )


class DedupeSettings(Strict):
    window_days: int = Field(
        default=7, ge=1, le=3650, description="How long event keys are remembered (event time)."
    )
    readback_max_objects: int = Field(
        default=2000,
        ge=1,
        description="Central objects read back from the archive per cycle to answer what the "
        "window cannot (late hours, a lost or restored state). Objects that need more wait "
        "for the next cycle (counted, never skipped).",
    )
    readback_lag_days: int = Field(
        default=1,
        ge=0,
        le=30,
        description="A copy of an event is looked for in the archive under its own day and "
        "this many days after it (CloudTrail delivers within minutes; late files a day later).",
    )


class ArchiveSettings(Strict):
    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = Field(default="", description="Optional prefix before AWSLogs/.")
    kms_key_id: str | None = Field(default=None, description="SSE-KMS key; null = SSE-S3.")
    writer_account_id: AccountId | None = Field(
        default=None,
        description=(
            "The account whose role (the one ctagg assumes to read that account) reads and "
            "writes the central bucket for every job; default: the base identity."
        ),
    )
    compress_level: int = Field(default=1, ge=1, le=9)
    conditional_writes: bool = Field(
        default=True,
        description="Write central objects with If-None-Match (new) and If-Match (rewrite), so "
        "a second writer or a lost state can never overwrite an object unseen. Off only for a "
        "store without conditional writes.",
    )

    @field_validator("prefix")
    @classmethod
    def _prefix_shape(cls, v: str) -> str:
        if v.startswith("/"):
            raise ValueError("must not start with '/'")
        return v if not v or v.endswith("/") else v + "/"


class ServiceSettings(Strict):
    """The daemon (``ctagg run``): job intervals, the health/metrics port, shutdown."""

    health_host: str = Field(
        default="127.0.0.1",
        description="Address of /livez /readyz /metrics. Default: $CTAGG_HEALTH_HOST (the image "
        "and the chart use 0.0.0.0 so the kubelet and Prometheus reach it), else 127.0.0.1.",
    )
    health_port: int = Field(default=9108, ge=0, le=65535, description="0 picks a free port.")
    discovery_interval_secs: float = Field(default=3600, gt=0)
    ingest_interval_secs: float = Field(default=300, gt=0)
    forward_interval_secs: float = Field(default=60, gt=0)
    retention_interval_secs: float = Field(default=86400, gt=0)
    job_intervals_secs: dict[str, float] = Field(
        default_factory=dict,
        description="Intervals of other jobs registered by name (e.g. integrity, detect).",
    )
    ready_max_cycle_age_secs: float | None = Field(
        default=None,
        gt=0,
        description="Not ready when the last finished ingest cycle is older; default 3 intervals.",
    )
    shutdown_timeout_secs: float = Field(
        default=60,
        gt=0,
        description="On SIGTERM, wait this long for in-flight work, then abandon it safely.",
    )
    misfire_grace_secs: float = Field(default=60, gt=0)
    retry_initial_secs: float = Field(
        default=5,
        gt=0,
        description="A failed discovery or ingest run is tried again after this long, doubling "
        "on each failure in a row up to retry_max_secs (never later than its interval).",
    )
    retry_max_secs: float = Field(default=300, gt=0, description="Longest wait between retries.")

    @field_validator("job_intervals_secs")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, x in v.items() if x <= 0]
        if bad:
            raise ValueError(f"intervals must be > 0: {bad}")
        return v


class RetentionSettings(Strict):
    """What the retention job deletes. Nothing is deleted unless a *_days value is set."""

    archive_days: int | None = Field(
        default=None,
        ge=1,
        description="Central archive objects whose day prefix is older are removed; null = keep.",
    )
    archive_mode: Literal["delete", "lifecycle"] = Field(
        default="delete",
        description="delete: list and delete expired objects; lifecycle: install an S3 rule.",
    )
    closed_prefix_days: int | None = Field(
        default=180, ge=1, description="Drop summary rows of closed day prefixes this old."
    )
    ledger_days: int | None = Field(
        default=None,
        ge=1,
        description="Drop ledger rows this old (never ones a forwarder has not passed yet).",
    )
    dead_letter_days: int | None = Field(default=30, ge=1)
    prune_dedupe: bool = Field(
        default=True, description="Drop event keys older than dedupe.window_days."
    )


class ForwardSettings(Strict):
    """Forwarding to SIEMs: one cursor per connector over the ledger of central objects."""

    connectors: list[AnyConnectorSettings] = Field(default_factory=list)
    batch_max_events: int = Field(default=500, ge=1, le=50_000)
    batch_max_bytes: int = Field(
        default=5 * 1024 * 1024, ge=1024, description="Serialized events per batch (approx.)."
    )
    batch_max_wait_secs: float = Field(
        default=1.0, ge=0, description="Send a partial batch after this long without more."
    )
    backoff_initial_secs: float = Field(default=0.5, gt=0)
    backoff_max_secs: float = Field(default=60.0, gt=0)
    max_backlog_objects: int = Field(
        default=5000,
        ge=1,
        description="Ledger rows behind a connector's cursor before collection pauses.",
    )
    poll_interval_secs: float = Field(default=2.0, gt=0)
    warn_after_secs: float = Field(
        default=30.0,
        ge=0,
        description="A connector that delivers nothing for this long while it has events to "
        "deliver is failing: logged at WARNING with the reason, its up gauge goes to 0.",
    )
    warn_interval_secs: float = Field(
        default=300.0, gt=0, description="While a connector keeps failing, repeat the WARNING."
    )
    fatal_retry_secs: float = Field(
        default=300.0,
        gt=0,
        description="A connector stopped by a fatal error (bad token, no permission) tries "
        "again this often, logging the ERROR again each time, and resumes once the sink works.",
    )
    block_ingest_when_fatal: bool = Field(
        default=False,
        description="A fatal connector's full backlog pauses collection too (false: the archive "
        "keeps growing, the connector's cursor waits). Each connector may override it.",
    )
    not_ready_when: Literal["never", "fatal", "failing"] = Field(
        default="fatal",
        description="/readyz fails when a connector is fatal, also when one is failing, or "
        "never (connectors are named in /readyz in every case).",
    )

    @field_validator("connectors")
    @classmethod
    def _unique_names(cls, v: list[AnyConnectorSettings]) -> list[AnyConnectorSettings]:
        names = [c.name for c in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"connector names must be unique, repeated: {dup}")
        return v


class LookupTargetSettings(Strict):
    account_id: AccountId
    region: Region


class LookupSettings(Strict):
    mode: Literal["off", "untrailed", "always"] = Field(
        default="untrailed",
        description="LookupEvents for account x region pairs no trail covers ('untrailed'), for "
        "every pair ('always'), or never ('off'). 'targets' are always read.",
    )
    targets: list[LookupTargetSettings] = Field(default_factory=list)
    requests_per_sec: float = Field(
        default=2.0, gt=0, le=2.0, description="Per account-region (LookupEvents allows 2)."
    )
    max_results: int = Field(default=50, ge=1, le=50)
    window_secs: int = Field(default=900, ge=60, le=86400)
    overlap_secs: int = Field(
        default=300, ge=0, le=3600, description="Each cycle re-reads this much before its cursor."
    )
    lag_secs: int = Field(
        default=600, ge=0, le=7200, description="Do not ask for events newer than now - lag."
    )
    backfill_days: int = Field(
        default=1, ge=1, le=90, description="First run starts this far back."
    )
    max_throttle_retries: int = Field(default=8, ge=0, le=30)
    gap_fill: bool = Field(
        default=True,
        description="A file completeness expects that the trail bucket no longer has: read its "
        "hour from LookupEvents (management events only, <= 90 days back).",
    )


class ArchiveDigestSettings(Strict):
    enabled: bool = False
    signing_key_path: str | None = Field(
        default=None, description="PEM RSA private key that signs the archive's hourly digests."
    )
    kms_key_id: str | None = Field(
        default=None, description="Or a KMS RSA_2048+ SIGN_VERIFY key (RSASSA_PKCS1_V1_5_SHA_256)."
    )
    public_key_path: str | None = Field(
        default=None, description="PEM public key for verify-archive without KMS access."
    )
    prefix: str = Field(default="CTAgg-Digest/", description="Under the archive bucket/prefix.")
    object_lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] | None = Field(
        default=None,
        description="Retain every central object and digest (bucket needs Object Lock).",
    )
    object_lock_days: int = Field(default=365, ge=1, le=36500)

    @model_validator(mode="after")
    def _one_signer(self) -> ArchiveDigestSettings:
        if self.enabled and not (self.signing_key_path or self.kms_key_id):
            raise ValueError("enabled needs signing_key_path or kms_key_id")
        if self.signing_key_path and self.kms_key_id:
            raise ValueError("set signing_key_path or kms_key_id, not both")
        return self


class AuditSettings(Strict):
    require_object_lock: bool = Field(default=True, description="Flag buckets without Object Lock.")
    require_data_events: bool = False
    require_insights: bool = False
    require_cloudwatch_logs: bool = True
    require_access_logging: bool = True


class ReconcileSettings(Strict):
    """The daemon's daily ``ctagg reconcile`` (report-only) over the most recent days."""

    enabled: bool = Field(
        default=True,
        description="Check the archive's recent days against the state daily (report only; "
        "counts in /metrics). Interval: service.job_intervals_secs.reconcile (default 1 day).",
    )
    days: int = Field(
        default=2, ge=1, le=366, description="Days checked, ending today (UTC, today included)."
    )
    concurrency: int = Field(
        default=16, ge=1, le=256, description="S3 listings and reads in flight at once."
    )


class IntegritySettings(Strict):
    validate_digests: bool = Field(default=True, description="Check CloudTrail digest files.")
    public_key_dir: str | None = Field(
        default=None,
        description="Directory of CloudTrail public keys (PEM/DER; name = fingerprint) for "
        "offline validation.",
    )
    list_public_keys: bool = Field(
        default=True, description="Fetch unknown keys with CloudTrail ListPublicKeys (cached)."
    )
    completeness_grace_secs: int = Field(
        default=3600,
        ge=0,
        description="A log file a digest lists is 'missing' only once its digest is this old.",
    )
    retry_missing: bool = Field(default=True, description="Queue missing files for ingest.")
    completeness_window_hours: int = Field(
        default=48,
        ge=1,
        le=24 * 90,
        description="The daemon's completeness job checks this many hours back.",
    )
    lookup: LookupSettings = Field(default_factory=LookupSettings)
    archive_digest: ArchiveDigestSettings = Field(default_factory=ArchiveDigestSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    reconcile: ReconcileSettings = Field(default_factory=ReconcileSettings)


class AnomalySettings(Strict):
    enabled: bool = True
    sensitivity: Literal["low", "medium", "high"] = Field(
        default="medium", description="high alerts on smaller deviations (k = 3, 4.5, 6 MADs)."
    )
    min_count: int = Field(
        default=20, ge=1, description="An hour below this count (or error count) never alerts."
    )
    baseline_hours: int = Field(
        default=168, ge=24, le=2160, description="Trailing hours the baseline is computed over."
    )
    min_history_hours: int = Field(
        default=24, ge=1, description="An account is judged only after this much history."
    )


class DetectSettings(Strict):
    enabled: bool = True
    builtin_rules: bool = Field(default=True, description="Load the built-in rule pack.")
    rule_dirs: list[str] = Field(
        default_factory=list, description="More directories (or files) of Sigma rules (.yml)."
    )
    disabled_rule_ids: list[str] = Field(
        default_factory=list, description="Rule ids (UUIDs) to switch off."
    )
    anomaly: AnomalySettings = Field(default_factory=AnomalySettings)
    alert_window_days: int = Field(
        default=30, ge=1, le=3650, description="How long raised alerts are remembered (dedupe)."
    )
    start_from: Literal["oldest", "newest"] = Field(
        default="oldest",
        description="Where detection starts on a state without a detection cursor yet: the "
        "oldest central object (scan all archived history) or after the newest (only objects "
        "archived from now on). No effect once detection has a cursor.",
    )
    sns_topic_arn: str | None = Field(
        default=None, pattern=r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]{1,256}$"
    )
    webhook_url: SecretStr | None = Field(
        default=None, description="Slack-compatible webhook; give it as ${VAR}."
    )
    connectors: list[str] = Field(
        default_factory=list,
        description="Names of forward.connectors entries that also receive alerts "
        "(OCSF Detection Finding).",
    )

    @field_validator("webhook_url")
    @classmethod
    def _webhook_is_http(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith(("https://", "http://")):
            raise ValueError("must be an http(s):// URL")
        return v


class Settings(Strict):
    """The whole config file."""

    state: StateSettings = Field(default_factory=StateSettings)
    shard: ShardSettings = Field(default_factory=ShardSettings)
    aws: AwsSettings = Field(default_factory=AwsSettings)
    credentials: CredentialSettings = Field(default_factory=CredentialSettings)
    discovery: DiscoverySettings = Field(default_factory=DiscoverySettings)
    collect: CollectSettings = Field(default_factory=CollectSettings)
    dedupe: DedupeSettings = Field(default_factory=DedupeSettings)
    normalize: NormalizeSettings = Field(default_factory=NormalizeSettings)
    archive: ArchiveSettings
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    forward: ForwardSettings = Field(default_factory=ForwardSettings)
    integrity: IntegritySettings = Field(default_factory=IntegritySettings)
    detect: DetectSettings = Field(default_factory=DetectSettings)

    # path -> "path: environment variable X is not set" for the variables a command deferred
    # (aggregator.config.loading: sections it does not use)
    _deferred: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def deferred(self) -> dict[str, str]:
        """Unset variables of sections the loading command said it does not use."""
        return dict(self._deferred)

    @model_validator(mode="after")
    def _alert_connectors_exist(self) -> Settings:
        names = {c.name for c in self.forward.connectors}
        missing = [n for n in self.detect.connectors if n not in names]
        if missing:
            raise ValueError(f"detect.connectors names unknown forward.connectors {missing}")
        return self
