"""OpenSearch (and Amazon OpenSearch Service) through opensearch-py's async client.

* ``_bulk`` with ``_id`` = the event's dedupe key, so a resend overwrites instead of
  duplicating (``index`` action into per-day indices; ``create`` into a data stream, where a
  ``409`` for an existing ``_id`` means "already there" and counts as delivered).
* Per-item classification: ``429`` and ``5xx`` retry, any other ``4xx`` is rejected with the
  item's error type and reason (those go to the dead-letter store).
* ``open()`` installs an index template with explicit, type-stable mappings and an ISM
  retention policy.
* Auth: none, basic, API key, or AWS SigV4. TLS is verified by default. Bodies are gzipped here
  (isal, level 1; opensearch-py's own compression uses level 9 and would cost more CPU than
  everything else).

The one place a connector touches boto: SigV4 signing needs AWS credentials, and the only
correct source of them is the same default credential chain (IRSA / instance role / profile)
the rest of the service uses, with botocore's refreshing credentials so a long-running
forwarder never signs with expired keys. That is isolated in :func:`_sigv4_credentials`;
nothing else here knows about AWS.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import orjson
from isal import igzip
from pydantic import Field, SecretStr, field_validator, model_validator

from aggregator.log import get_logger
from connectors.base import (
    DELIVERED,
    Connector,
    ConnectorSettings,
    Fatal,
    Outcome,
    OutEvent,
    Rejected,
    Retry,
    Schema,
    all_rejected,
    all_retry,
    envelope_event,
)

if TYPE_CHECKING:
    from opensearchpy import AsyncOpenSearch

log = get_logger(__name__)

_STRFTIME_OK = re.compile(r"^[a-z0-9][a-z0-9._+-]*(%[YmdHjUWGV][a-z0-9._+-]*)*$")


class OpenSearchSettings(ConnectorSettings):
    type: Literal["opensearch"]
    hosts: list[str] = Field(
        min_length=1, description="Base URLs, e.g. https://search.example.com:9200"
    )
    auth: Literal["none", "basic", "api_key", "sigv4"] = "none"
    username: str | None = None
    password: SecretStr | None = None
    api_key: SecretStr | None = Field(default=None, description="Base64 id:key (ApiKey header).")
    aws_region: str | None = Field(default=None, description="For sigv4: the domain's region.")
    aws_service: Literal["es", "aoss"] = Field(
        default="es", description="sigv4 service: es (managed domain) or aoss (serverless)."
    )
    index: str = Field(
        default="cloudtrail-%Y.%m.%d",
        description="Index name pattern; strftime codes take the event time (UTC).",
    )
    data_stream: str | None = Field(
        default=None, description="Write to this data stream instead of per-day indices."
    )
    install_template: bool = True
    template_name: str = "ctagg-cloudtrail"
    retention_days: int | None = Field(
        default=90, ge=1, description="ISM policy deletes indices this old; null = no policy."
    )
    verify_tls: bool = True
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    gzip: bool = True
    timeout_secs: float = Field(default=30.0, gt=0)
    max_in_flight: int = Field(
        default=2,
        ge=1,
        le=32,
        description="Batches on the wire at once (commits stay in order).",
    )

    @field_validator("index")
    @classmethod
    def _index_pattern(cls, v: str) -> str:
        if not _STRFTIME_OK.match(v):
            raise ValueError(
                "must be lowercase index name characters with optional %Y %m %d %H %j codes"
            )
        return v

    @model_validator(mode="after")
    def _auth_fields(self) -> OpenSearchSettings:
        if self.auth == "basic" and (not self.username or self.password is None):
            raise ValueError("auth 'basic' needs username and password")
        if self.auth == "api_key" and self.api_key is None:
            raise ValueError("auth 'api_key' needs api_key")
        if self.auth == "sigv4" and not self.aws_region:
            raise ValueError("auth 'sigv4' needs aws_region")
        return self


def index_glob(pattern: str) -> str:
    """``cloudtrail-%Y.%m.%d`` -> ``cloudtrail-*`` (what the template and ISM policy match)."""
    head = pattern.split("%", 1)[0]
    return head + "*" if "%" in pattern else pattern


# The index mappings, generated from ECS 8.11 for the fields ctagg emits plus its own
# type-stable aws.cloudtrail.* objects, OCSF's unmapped (one flat_object, under the field limit)
# and raw documents (aggregator/normalize/mappings.py; a test keeps the file fresh).
ECS_MAPPINGS: dict[str, Any] = json.loads(
    resources.files("connectors").joinpath("opensearch_mappings.json").read_text("utf-8")
)
TOTAL_FIELDS_LIMIT = 2000


def _sigv4_credentials() -> Any:
    """Refreshing AWS credentials from the default chain, for SigV4 signing only."""
    import boto3  # allowed here only; see the module docstring

    creds = boto3.Session().get_credentials()
    if creds is None:
        raise Fatal("opensearch auth 'sigv4': no AWS credentials found in the default chain")
    return creds


def _classify_item(item: dict[str, Any]) -> Outcome:
    body: dict[str, Any] = next(iter(item.values()), {}) if item else {}
    status = int(body.get("status", 0))
    if 200 <= status < 300:
        return DELIVERED
    err = body.get("error")
    if isinstance(err, dict):
        reason = f"{status} {err.get('type', 'error')}: {err.get('reason', '')}"
    else:
        reason = f"{status} {err}"
    reason = reason[:1000]
    if status == 409 and "create" in item:
        return DELIVERED  # create of an existing _id: the earlier send got there
    if status == 429 or status >= 500 or status == 0:
        return Retry(reason)
    return Rejected(reason)


class OpenSearchConnector(Connector):
    type_name: ClassVar[str] = "opensearch"
    default_schema: ClassVar[Schema] = "ecs"
    settings_model: ClassVar[type[ConnectorSettings]] = OpenSearchSettings

    @property
    def max_in_flight(self) -> int:
        return self.cfg.max_in_flight

    def __init__(self, settings: ConnectorSettings) -> None:
        assert isinstance(settings, OpenSearchSettings)
        super().__init__(settings)
        self.cfg: OpenSearchSettings = settings
        self.client: AsyncOpenSearch | None = None
        self._headers: dict[str, str] = {"content-type": "application/x-ndjson"}
        if self.cfg.gzip:
            self._headers["content-encoding"] = "gzip"
        self._index_cache: dict[int, str] = {}

    # ------------------------------------------------------------------ lifecycle

    def _make_client(self) -> AsyncOpenSearch:
        import ssl

        from opensearchpy import AsyncHttpConnection, AsyncOpenSearch
        from opensearchpy.serializer import JSONSerializer

        class _Orjson(JSONSerializer):
            def loads(self, s: str) -> Any:
                return orjson.loads(s)

        cfg = self.cfg
        kwargs: dict[str, Any] = {
            "hosts": cfg.hosts,
            "connection_class": AsyncHttpConnection,
            "serializer": _Orjson(),
            "timeout": cfg.timeout_secs,
            "max_retries": 0,  # the forwarder owns retries and backoff
            "retry_on_timeout": False,
            "http_compress": False,  # we compress ourselves (cheaper level)
        }
        if any(h.startswith("https") for h in cfg.hosts):
            ctx = ssl.create_default_context(cafile=cfg.ca_file)
            if not cfg.verify_tls:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if cfg.client_cert_file:
                ctx.load_cert_chain(cfg.client_cert_file, cfg.client_key_file)
            kwargs["ssl_context"] = ctx
        if cfg.auth == "basic":
            assert cfg.username
            assert cfg.password is not None
            pair = f"{cfg.username}:{cfg.password.get_secret_value()}".encode()
            self._headers["authorization"] = f"Basic {base64.b64encode(pair).decode()}"
        elif cfg.auth == "api_key":
            assert cfg.api_key is not None
            self._headers["authorization"] = f"ApiKey {cfg.api_key.get_secret_value()}"
        elif cfg.auth == "sigv4":
            from opensearchpy import AWSV4SignerAsyncAuth

            kwargs["http_auth"] = AWSV4SignerAsyncAuth(
                _sigv4_credentials(), cfg.aws_region or "", cfg.aws_service
            )
        return AsyncOpenSearch(**kwargs)

    async def open(self) -> None:
        if self.client is None:
            self.client = self._make_client()
        if self.cfg.install_template:
            await self._install()

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()

    async def _request(
        self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        assert self.client is not None
        headers = {k: v for k, v in self._headers.items() if k == "authorization"}
        return await self.client.transport.perform_request(
            method, path, params=params or {}, body=body, headers=headers or None
        )

    async def _install(self) -> None:
        """Index template (+ data stream) and ISM retention policy; idempotent."""
        from opensearchpy.exceptions import (
            AuthenticationException,
            AuthorizationException,
            NotFoundError,
        )

        cfg = self.cfg
        patterns = [cfg.data_stream] if cfg.data_stream else [index_glob(cfg.index)]
        template: dict[str, Any] = {
            "index_patterns": patterns,
            "priority": 200,
            "template": {
                "settings": {"index": {"mapping": {"total_fields": {"limit": TOTAL_FIELDS_LIMIT}}}},
                "mappings": ECS_MAPPINGS,
            },
            "_meta": {"managed_by": "ctagg"},
        }
        if cfg.data_stream:
            template["data_stream"] = {}
        try:
            await self._request("PUT", f"/_index_template/{cfg.template_name}", body=template)
            if cfg.retention_days:
                await self._install_ism(patterns, NotFoundError)
        except (AuthenticationException, AuthorizationException) as exc:
            raise Fatal(
                f"opensearch {self.name}: not allowed to install template/policy "
                f"({exc.status_code}); set install_template: false or grant the permission"
            ) from None
        log.info("forward.template_installed", connector=self.name, template=cfg.template_name)

    async def _install_ism(self, patterns: list[str], not_found: type[Exception]) -> None:
        cfg = self.cfg
        policy_id = f"{cfg.template_name}-retention"
        ism_patterns = list(patterns)
        if cfg.data_stream:
            ism_patterns.append(f".ds-{cfg.data_stream}-*")
        policy = {
            "policy": {
                "description": f"ctagg: delete CloudTrail indices after {cfg.retention_days}d",
                "default_state": "hot",
                "states": [
                    {
                        "name": "hot",
                        "actions": [],
                        "transitions": [
                            {
                                "state_name": "delete",
                                "conditions": {"min_index_age": f"{cfg.retention_days}d"},
                            }
                        ],
                    },
                    {"name": "delete", "actions": [{"delete": {}}], "transitions": []},
                ],
                "ism_template": [{"index_patterns": ism_patterns, "priority": 100}],
            }
        }
        path = f"/_plugins/_ism/policies/{policy_id}"
        try:
            current = await self._request("GET", path)
        except not_found:
            await self._request("PUT", path, body=policy)
            return
        wanted = policy["policy"]
        have = current.get("policy", {}) if isinstance(current, dict) else {}
        same = all(have.get(k) == wanted[k] for k in ("states", "default_state"))
        if not same:
            await self._request(
                "PUT",
                path,
                body=policy,
                params={
                    "if_seq_no": current.get("_seq_no"),
                    "if_primary_term": current.get("_primary_term"),
                },
            )

    # ------------------------------------------------------------------ send

    def _index_for(self, t: float) -> str:
        day = int(t // 86400) if t > 0 else int(time.time() // 86400)
        name = self._index_cache.get(day)
        if name is None:
            name = datetime.fromtimestamp(day * 86400, UTC).strftime(self.cfg.index)
            if "%H" in self.cfg.index:  # hourly patterns: no day cache
                return datetime.fromtimestamp(t or time.time(), UTC).strftime(self.cfg.index)
            if len(self._index_cache) > 64:
                self._index_cache.clear()
            self._index_cache[day] = name
        return name

    def bulk_body(self, batch: Sequence[OutEvent]) -> bytes:
        parts: list[bytes] = []
        ds = self.cfg.data_stream
        dumps = orjson.dumps
        for ev in batch:
            if ds:
                full = ev.document()
                doc = envelope_event(full) or full
                if "@timestamp" not in doc:
                    ts = datetime.fromtimestamp(ev.time or time.time(), UTC)
                    doc = {**doc, "@timestamp": ts.isoformat().replace("+00:00", "Z")}
                    parts.append(dumps({"create": {"_index": ds, "_id": ev.id}}))
                    parts.append(dumps(doc))
                    continue
                parts.append(dumps({"create": {"_index": ds, "_id": ev.id}}))
            else:
                # index names are validated (no quotes/backslashes); ids are dumped to be safe
                parts.append(
                    b'{"index":{"_index":"%s","_id":%s}}'
                    % (self._index_for(ev.time).encode(), dumps(ev.id))
                )
            parts.append(ev.record_json())
        parts.append(b"")
        return b"\n".join(parts)

    async def send(self, batch: Sequence[OutEvent]) -> list[Outcome]:
        from opensearchpy.exceptions import (
            AuthenticationException,
            AuthorizationException,
            ConnectionError,
            TransportError,
        )

        if not batch:
            return []
        if self.client is None:
            await self.open()
        assert self.client is not None
        body = self.bulk_body(batch)
        if self.cfg.gzip:
            body = igzip.compress(body, compresslevel=1)
        try:
            resp = await self.client.transport.perform_request(
                "POST", "/_bulk", body=body, headers=self._headers
            )
        except (AuthenticationException, AuthorizationException) as exc:
            raise Fatal(
                f"opensearch {self.name}: {exc.status_code} {exc.error}: check credentials"
            ) from None
        except ConnectionError as exc:  # includes timeouts
            return all_retry(len(batch), f"connection: {type(exc).__name__}")
        except TransportError as exc:
            status = exc.status_code if isinstance(exc.status_code, int) else 0
            reason = f"{status} {exc.error}"[:500]
            if status == 413:
                raise Fatal(
                    f"opensearch {self.name}: request too large (413): lower "
                    "forward.batch_max_bytes"
                ) from None
            if status in (0, 408, 429) or status >= 500:
                return all_retry(len(batch), reason)
            return all_rejected(len(batch), reason)
        items = resp.get("items") if isinstance(resp, dict) else None
        if not isinstance(items, list) or len(items) != len(batch):
            return all_retry(len(batch), "malformed _bulk response")
        if not resp.get("errors"):
            return [DELIVERED] * len(batch)
        return [_classify_item(item) for item in items]
