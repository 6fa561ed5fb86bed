"""The ``normalize:`` config section: redaction rules, enrichment toggles, size policy.

Kept in its own module (imported by :mod:`aggregator.config`) so the normalizer owns its
settings. Same strictness as every other section: unknown keys are errors.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

RedactAction = Literal["drop", "mask", "hmac"]
_PATH = r"^[^.\s]+(\.[^.\s]+)*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedactionRule(_Strict):
    path: str = Field(
        pattern=_PATH,
        description=(
            "Dotted path in the CloudTrail record (responseElements.credentials.sessionToken); "
            "'*' matches any key; lists are walked element by element."
        ),
    )
    action: RedactAction = Field(
        default="mask",
        description="drop: remove the field; mask: replace its value; hmac: keyed hash.",
    )


class RedactionSettings(_Strict):
    defaults: bool = Field(
        default=True,
        description="Apply the built-in rules (session tokens, secret keys, passwords, ...).",
    )
    rules: list[RedactionRule] = Field(default_factory=list)
    mask: str = Field(default="[REDACTED]", description="Replacement for 'mask' rules.")
    hmac_key: SecretStr | None = Field(
        default=None,
        validate_default=True,
        description="Key for 'hmac' rules (HMAC-SHA256); give it as ${VAR} from a secret.",
    )

    @field_validator("hmac_key")
    @classmethod
    def _key_when_needed(cls, v: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        rules = info.data.get("rules") or []
        needs = any(r.action == "hmac" for r in rules)
        if needs and (v is None or not v.get_secret_value()):
            raise ValueError("required when a rule uses action 'hmac'")
        if v is not None and v.get_secret_value() and len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return v


class EnrichmentSettings(_Strict):
    enabled: bool = Field(default=True, description="Add discovery data to every event.")
    account_name: bool = True
    ou_path: bool = True
    account_tags: bool = True
    organization_id: bool = True


class GeoIPSettings(_Strict):
    city_db: str | None = Field(
        default=None,
        description=(
            "MaxMind-format City or Country database (e.g. GeoLite2-City.mmdb) for ECS "
            "source.geo.*; you supply the file, nothing is downloaded."
        ),
    )
    asn_db: str | None = Field(
        default=None,
        description="MaxMind-format ASN database (e.g. GeoLite2-ASN.mmdb) for ECS source.as.*.",
    )


class NormalizeSettings(_Strict):
    redaction: RedactionSettings = Field(default_factory=RedactionSettings)
    enrichment: EnrichmentSettings = Field(default_factory=EnrichmentSettings)
    geoip: GeoIPSettings = Field(default_factory=GeoIPSettings)
    parse_user_agent: bool = Field(
        default=True,
        description="ECS user_agent.name/version/os/device parsed from userAgent (ua-parser).",
    )
    max_event_bytes: int = Field(
        default=256 * 1024,
        ge=4096,
        description=(
            "Above this serialized size an event is forwarded as a size-capped projection "
            "plus a pointer (bucket, key, eventID) to the full record; never dropped."
        ),
    )
    flatten_max_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        description="Cap on the flattened copy of each polymorphic object (ECS).",
    )
    flatten_max_fields: int = Field(default=512, ge=16, le=100_000)
