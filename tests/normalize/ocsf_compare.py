"""Compare our OCSF output with Amazon Security Lake's expected output for one pair."""

from __future__ import annotations

from typing import Any

# rc.2 → 1.1: API Activity moved from class 3005 (IAM category 3) to 6003 (Application
# Activity, category 6); actor.user renamed uid→uid_alt (principalId), uuid→uid (ARN),
# account_uid→account.uid.
RC2_CLASS = {3005: (6003, 6)}
RC2_USER_KEYS = {"uid": "uid_alt", "uuid": "uid", "account_uid": "account.uid"}

FIELDS = (
    "class_uid",
    "activity_id",
    "type_uid",
    "category_uid",
    "api.operation",
    "api.service.name",
    "actor.user",
    "src_endpoint.ip",
    "cloud.region",
    "time",
    "metadata.uid",
)


def dig(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc


def expected_fields(pair: dict[str, Any]) -> dict[str, Any]:
    """The expected values of FIELDS, translated to OCSF 1.1 for rc.2 pairs."""
    exp = pair["expected_ocsf"]
    out = {f: dig(exp, f) for f in FIELDS}
    user = exp.get("actor", {}).get("user") or {}
    if pair["ocsf_version"] == "1.0.0-rc.2":
        class_uid = out["class_uid"]
        if class_uid in RC2_CLASS:
            new_class, new_cat = RC2_CLASS[class_uid]
            out["class_uid"] = new_class
            out["category_uid"] = new_cat
            out["type_uid"] = new_class * 100 + out["activity_id"]
        user = {RC2_USER_KEYS.get(k, k): v for k, v in user.items()}
    flat_user: dict[str, Any] = {}
    for k, v in user.items():
        if k == "account" and isinstance(v, dict):
            flat_user["account.uid"] = v.get("uid")
        elif k == "account" and v is None:
            flat_user["account.uid"] = None
        else:
            flat_user[k] = v
    out["actor.user"] = flat_user
    return out


def actual_fields(doc: dict[str, Any], user_keys: list[str]) -> dict[str, Any]:
    out = {f: dig(doc, f) for f in FIELDS}
    user = dig(doc, "actor.user") or {}
    out["actor.user"] = {k: dig(user, k) for k in user_keys}
    return out


def compare(pair: dict[str, Any], doc: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (expected, actual)} for every field that differs."""
    exp = expected_fields(pair)
    act = actual_fields(doc, list(exp["actor.user"]))
    return {f: (exp[f], act[f]) for f in FIELDS if exp[f] != act[f]}
