"""A local OpenSearch written to the documented REST contract (what the connector uses).

* ``POST /_bulk`` and ``POST /{index}/_bulk``: NDJSON action/document pairs (``index``,
  ``create``, ``delete``, ``update``), ``Content-Encoding: gzip`` bodies, per-item ``status``
  and ``error`` in ``items`` (in request order), a top-level ``errors`` flag. ``index`` with an
  ``_id`` overwrites (``result: updated``, version+1); ``create`` of an existing ``_id`` is a
  ``409 version_conflict_engine_exception``; data streams accept only ``create``.
* A light mapping check: fields mapped by an installed index template are type-checked
  (keyword/text/date/ip/boolean reject objects; ``flat_object`` accepts any object; a
  ``dynamic: false`` object ignores unknown fields; ``enabled: false`` takes any value), and
  dynamically seen fields keep the kind (object vs value) they were first seen with: a clash is a
  ``400 mapper_parsing_exception`` for that item, as in OpenSearch.
* ``_index_template``, ``_plugins/_ism/policies`` (with ``if_seq_no``/``if_primary_term``),
  ``_count``, ``_cat/indices``, ``DELETE /{index}``, ``GET /``.
* Faults to inject: whole-request statuses (``fail_next``), per-item 429
  ``es_rejected_execution_exception`` (``throttle_ids`` for N attempts, or ``throttle_ratio``
  for a storm), per-item rejections (``reject_ids``), required credentials (``basic``,
  ``api_key``).
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import random
from collections import Counter
from typing import Any

import orjson
from aiohttp import web

from tests.fakes._server import LocalServer

REJECTED = {
    "type": "es_rejected_execution_exception",
    "reason": "rejected execution of coordinating operation [shard_detail=[fake][0][P], "
    "coordinating_and_primary_bytes=0, replica_bytes=0, all_bytes=0, "
    "coordinating_operation_bytes=1, max_coordinating_and_primary_bytes=0]",
}


def _err(status: int, etype: str, reason: str) -> web.Response:
    body = {
        "error": {
            "root_cause": [{"type": etype, "reason": reason}],
            "type": etype,
            "reason": reason,
        },
        "status": status,
    }
    return web.json_response(body, status=status)


class FakeOpenSearch(LocalServer):
    def __init__(
        self,
        *,
        basic: tuple[str, str] | None = None,
        api_key: str | None = None,
        check_mappings: bool = True,
    ) -> None:
        super().__init__()
        self.check_mappings = check_mappings
        self.basic = basic
        self.api_key = api_key
        self.indices: dict[str, dict[str, dict[str, Any]]] = {}
        self.versions: dict[tuple[str, str], int] = {}
        self.kinds: dict[str, dict[str, str]] = {}  # index -> path -> "object" | "value"
        self.templates: dict[str, dict[str, Any]] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self._tpl_cache: dict[str, dict[str, Any] | None] = {}
        self.seq = 0
        # faults
        self.fail_next: list[int] = []
        self.throttle_ids: Counter[str] = Counter()
        self.throttle_ratio = 0.0
        self.reject_ids: dict[str, tuple[int, str, str]] = {}
        self.rng = random.Random(7)
        # observations
        self.bulk_requests = 0
        self.last_headers: dict[str, str] = {}
        self.gzip_requests = 0
        self.items_seen = 0

    # ------------------------------------------------------------------ plumbing

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024, middlewares=[self._auth])
        r = app.router
        r.add_get("/", self._info)
        r.add_post("/_bulk", self._bulk)
        r.add_put("/_bulk", self._bulk)
        r.add_post("/{index}/_bulk", self._bulk)
        r.add_put("/_index_template/{name}", self._put_template)
        r.add_get("/_index_template/{name}", self._get_template)
        r.add_get("/_plugins/_ism/policies/{id}", self._get_policy)
        r.add_put("/_plugins/_ism/policies/{id}", self._put_policy)
        r.add_get("/_cat/indices", self._cat_indices)
        r.add_get("/{index}/_count", self._count)
        r.add_post("/{index}/_count", self._count)
        r.add_delete("/{index}", self._delete_index)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.last_headers = dict(request.headers)
        if self.basic or self.api_key:
            got = request.headers.get("Authorization", "")
            ok = False
            if self.basic:
                import base64

                want = base64.b64encode(f"{self.basic[0]}:{self.basic[1]}".encode()).decode()
                ok = got == f"Basic {want}"
            if self.api_key and got == f"ApiKey {self.api_key}":
                ok = True
            if not ok:
                return _err(401, "security_exception", "missing authentication credentials")
        result: web.StreamResponse = await handler(request)
        return result

    @staticmethod
    async def _body(request: web.Request) -> bytes:
        raw = await request.read()
        # aiohttp's server already inflates Content-Encoding: gzip request bodies
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return raw

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "name": "fake",
                "cluster_name": "fake",
                "version": {"distribution": "opensearch", "number": "2.17.0"},
            }
        )

    # ------------------------------------------------------------------ documents

    def _template_for(self, index: str) -> dict[str, Any] | None:
        if index not in self._tpl_cache:  # cleared whenever a template is written
            self._tpl_cache[index] = self._find_template(index)
        return self._tpl_cache[index]

    def _find_template(self, index: str) -> dict[str, Any] | None:
        best = None
        for tpl in self.templates.values():
            hit = any(fnmatch.fnmatchcase(index, p) for p in tpl.get("index_patterns", []))
            if hit and (best is None or tpl.get("priority", 0) > best.get("priority", 0)):
                best = tpl
        return best

    def _is_data_stream(self, index: str) -> bool:
        tpl = self._template_for(index)
        return bool(tpl and "data_stream" in tpl)

    def _mapping_error(self, index: str, doc: Any) -> str | None:
        if not isinstance(doc, dict):
            return "failed to parse: document is not an object"
        tpl = self._template_for(index) or {}
        mappings = tpl.get("template", {}).get("mappings", {})
        kinds = self.kinds.setdefault(index, {})
        return self._check(doc, mappings, "", kinds, dynamic=mappings.get("dynamic", True))

    def _check(
        self,
        obj: dict[str, Any],
        mapping: dict[str, Any],
        prefix: str,
        kinds: dict[str, str],
        *,
        dynamic: Any,
    ) -> str | None:
        props = mapping.get("properties", {})
        for key, value in obj.items():
            path = f"{prefix}{key}"
            m = props.get(key)
            if m is None:
                if dynamic is False or dynamic == "false":
                    continue
                kind = "object" if isinstance(value, dict) else "value"
                seen = kinds.setdefault(path, kind)
                if seen != kind:
                    return (
                        f"failed to parse field [{path}]: tried to parse field as {seen} "
                        f"but found {kind}"
                    )
                if isinstance(value, dict):
                    err = self._check(value, {}, path + ".", kinds, dynamic=dynamic)
                    if err:
                        return err
                continue
            mtype = m.get("type", "object")
            if value is None:  # null values are not indexed, whatever the mapping
                continue
            if mtype == "flat_object":
                items = value if isinstance(value, list) else [value]
                if not all(isinstance(v, dict) for v in items):
                    return f"failed to parse field [{path}] of type [flat_object]"
                continue
            if mtype == "object":
                if m.get("enabled") is False:  # stored, never parsed: any value
                    continue
                for item in value if isinstance(value, list) else [value]:
                    if not isinstance(item, dict):
                        return (
                            f"object mapping for [{path}] tried to parse as object, but got value"
                        )
                    dyn = m.get("dynamic", dynamic)
                    err = self._check(item, m, path + ".", kinds, dynamic=dyn)
                    if err:
                        return err
                continue
            values = value if isinstance(value, list) else [value]
            for v in values:
                if isinstance(v, dict):
                    return f"failed to parse field [{path}] of type [{mtype}]: got an object"
        return None

    def _apply(
        self, op: str, meta: dict[str, Any], doc: Any, default_index: str | None
    ) -> dict[str, Any]:
        index = meta.get("_index") or default_index
        _id = meta.get("_id")
        self.items_seen += 1
        base: dict[str, Any] = {"_index": index, "_id": _id}
        if not index:
            return {
                **base,
                "status": 400,
                "error": {
                    "type": "action_request_validation_exception",
                    "reason": "index is missing",
                },
            }
        if _id is not None and self.throttle_ids.get(_id, 0) > 0:
            self.throttle_ids[_id] -= 1
            return {**base, "status": 429, "error": REJECTED}
        if self.throttle_ratio and self.rng.random() < self.throttle_ratio:
            return {**base, "status": 429, "error": REJECTED}
        if _id in self.reject_ids:
            status, etype, reason = self.reject_ids[_id]
            return {**base, "status": status, "error": {"type": etype, "reason": reason}}
        if op in ("index", "create"):
            if op == "index" and self._is_data_stream(index):
                return {
                    **base,
                    "status": 400,
                    "error": {
                        "type": "illegal_argument_exception",
                        "reason": "only write ops with an op_type of create are allowed "
                        "in data streams",
                    },
                }
            err = self._mapping_error(index, doc) if self.check_mappings else None
            if err:
                return {
                    **base,
                    "status": 400,
                    "error": {"type": "mapper_parsing_exception", "reason": err},
                }
            docs = self.indices.setdefault(index, {})
            if _id is None:
                self.seq += 1
                _id = f"auto{self.seq}"
                base["_id"] = _id
            exists = _id in docs
            if op == "create" and exists:
                return {
                    **base,
                    "status": 409,
                    "error": {
                        "type": "version_conflict_engine_exception",
                        "reason": f"[{_id}]: version conflict, document already exists",
                    },
                }
            docs[_id] = doc
            version = self.versions.get((index, _id), 0) + 1
            self.versions[(index, _id)] = version
            self.seq += 1
            return {
                **base,
                "_version": version,
                "result": "updated" if exists else "created",
                "_shards": {"total": 1, "successful": 1, "failed": 0},
                "_seq_no": self.seq,
                "_primary_term": 1,
                "status": 200 if exists else 201,
            }
        if op == "delete":
            docs = self.indices.get(index, {})
            found = docs.pop(_id, None) is not None
            return {
                **base,
                "result": "deleted" if found else "not_found",
                "status": 200 if found else 404,
            }
        return {
            **base,
            "status": 400,
            "error": {"type": "illegal_argument_exception", "reason": f"unsupported op {op}"},
        }

    async def _bulk(self, request: web.Request) -> web.Response:
        self.bulk_requests += 1
        if request.headers.get("Content-Encoding", "").lower() == "gzip":
            self.gzip_requests += 1
        if self.fail_next:
            status = self.fail_next.pop(0)
            if status == 429:
                return _err(429, "es_rejected_execution_exception", REJECTED["reason"])
            return _err(status, "fake_failure", f"injected {status}")
        body = await self._body(request)
        if body and not body.endswith(b"\n"):
            return _err(
                400,
                "illegal_argument_exception",
                "The bulk request must be terminated by a newline [\\n]",
            )
        lines = body.split(b"\n")
        default_index = request.match_info.get("index")
        items: list[dict[str, Any]] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            i += 1
            if not line.strip():
                continue
            try:
                action = orjson.loads(line)
                ((op, meta),) = action.items()
            except (ValueError, AttributeError):
                return _err(400, "illegal_argument_exception", "Malformed action/metadata line")
            doc = None
            if op in ("index", "create", "update"):
                if i >= len(lines):
                    return _err(400, "illegal_argument_exception", "missing document line")
                try:
                    doc = orjson.loads(lines[i])
                except orjson.JSONDecodeError:
                    doc = None
                i += 1
            items.append({op: self._apply(op, meta or {}, doc, default_index)})
        errors = any(next(iter(it.values()))["status"] >= 300 for it in items)
        body_out = orjson.dumps({"took": 1, "errors": errors, "items": items})
        return web.Response(body=body_out, content_type="application/json")

    # ------------------------------------------------------------------ management

    async def _put_template(self, request: web.Request) -> web.Response:
        body = json.loads(await self._body(request))
        if "index_patterns" not in body:
            return _err(400, "action_request_validation_exception", "index patterns are missing")
        self.templates[request.match_info["name"]] = body
        self._tpl_cache = {}
        return web.json_response({"acknowledged": True})

    async def _get_template(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.templates:
            return _err(404, "resource_not_found_exception", f"index template [{name}] missing")
        return web.json_response(
            {"index_templates": [{"name": name, "index_template": self.templates[name]}]}
        )

    async def _get_policy(self, request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        if pid not in self.policies:
            return _err(404, "status_exception", "Policy not found")
        p = self.policies[pid]
        return web.json_response(
            {
                "_id": pid,
                "_version": p["_version"],
                "_seq_no": p["_seq_no"],
                "_primary_term": 1,
                "policy": p["policy"],
            }
        )

    async def _put_policy(self, request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        body = json.loads(await self._body(request))
        current = self.policies.get(pid)
        if current is not None:
            seq = request.query.get("if_seq_no")
            term = request.query.get("if_primary_term")
            if seq is None or term is None:
                return _err(
                    409,
                    "version_conflict_engine_exception",
                    f"[{pid}]: version conflict, document already exists",
                )
            if int(seq) != current["_seq_no"] or int(term) != 1:
                return _err(
                    409,
                    "version_conflict_engine_exception",
                    f"[{pid}]: version conflict, required seqNo [{seq}]",
                )
        self.seq += 1
        version = (current["_version"] + 1) if current else 1
        self.policies[pid] = {"policy": body["policy"], "_version": version, "_seq_no": self.seq}
        return web.json_response(
            {
                "_id": pid,
                "_version": version,
                "_seq_no": self.seq,
                "_primary_term": 1,
                "policy": body,
            },
            status=200 if current else 201,
        )

    def _match(self, expr: str) -> list[str]:
        names: list[str] = []
        for part in expr.split(","):
            names.extend(n for n in self.indices if fnmatch.fnmatchcase(n, part))
        return sorted(set(names))

    async def _count(self, request: web.Request) -> web.Response:
        expr = request.match_info["index"]
        names = self._match(expr)
        if not names and "*" not in expr:
            return _err(404, "index_not_found_exception", f"no such index [{expr}]")
        return web.json_response(
            {
                "count": sum(len(self.indices[n]) for n in names),
                "_shards": {"total": len(names), "successful": len(names)},
            }
        )

    async def _cat_indices(self, request: web.Request) -> web.Response:
        rows = [
            {"health": "green", "status": "open", "index": n, "docs.count": str(len(d))}
            for n, d in sorted(self.indices.items())
        ]
        if request.query.get("format") == "json":
            return web.json_response(rows)
        text = "".join(
            f"{r['health']} {r['status']} {r['index']} {r['docs.count']}\n" for r in rows
        )
        return web.Response(text=text)

    async def _delete_index(self, request: web.Request) -> web.Response:
        names = self._match(request.match_info["index"])
        if not names:
            return _err(404, "index_not_found_exception", "no such index")
        for n in names:
            self.indices.pop(n)
            self.kinds.pop(n, None)
        return web.json_response({"acknowledged": True})

    # ------------------------------------------------------------------ helpers for tests

    def doc_count(self, pattern: str = "*") -> int:
        return sum(len(self.indices[n]) for n in self._match(pattern))

    def all_ids(self) -> set[str]:
        return {i for docs in self.indices.values() for i in docs}
