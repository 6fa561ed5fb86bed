"""The Helm chart renders with several values files; every manifest validates offline against the
Kubernetes 1.30 schemas (strict: unknown fields are errors), and the config it renders is a valid
ctagg config."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from aggregator.config import parse_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "cloudtrail-aggregator"
VALUES = sorted(Path(__file__).parent.glob("values-*.yaml"))
MINIMAL = Path(__file__).parent / "values-minimal.yaml"
K8S = "1.30.0"

# The Prometheus Operator CRD is not in the bundled Kubernetes schemas: check the fields we set.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"]},
                "namespaceSelector": {"type": "object"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


PROMETHEUS_RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["alert", "expr"],
                                    "properties": {
                                        "alert": {"type": "string", "pattern": "^[A-Za-z]+$"},
                                        "expr": {"type": "string"},
                                        "for": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                                        "labels": {"type": "object"},
                                        "annotations": {"type": "object"},
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


def render(values: dict[str, Any] | None, namespace: str = "security") -> list[dict[str, Any]]:
    chart = helm_python.Chart.load(str(CHART))
    out = chart.render(values, name="ctagg", namespace=namespace, is_install=True)
    docs: list[dict[str, Any]] = []
    for name, text in out.items():
        if name.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def load_values(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(params=VALUES, ids=[p.stem for p in VALUES])
def rendered(request: pytest.FixtureRequest) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    values = load_values(request.param)
    return values, render(values)


def test_there_are_several_values_files() -> None:
    """CI renders the chart with more than one values file."""
    assert len(VALUES) >= 3


def test_every_manifest_validates_strictly(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    """Every rendered object passes the Kubernetes 1.30 strict schema (or, for the
    ServiceMonitor CRD, its own schema of the fields we use)."""
    _, docs = rendered
    assert docs
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
            continue
        if doc["kind"] == "PrometheusRule":
            jsonschema.validate(doc, PROMETHEUS_RULE_SCHEMA)
            continue
        kubernetes_validate.validate(doc, K8S, strict=True)


def test_validation_catches_a_broken_manifest() -> None:
    """The offline validation can fail: a misspelled field is rejected in strict mode."""
    docs = render(load_values(MINIMAL))
    sts = by_kind(docs, "StatefulSet")[0]
    sts["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S, strict=True)


def test_pod_is_locked_down(rendered: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    """Non-root, read-only root filesystem, no privilege escalation, all capabilities dropped,
    RuntimeDefault seccomp, probes on /livez and /readyz, resources set."""
    _, docs = rendered
    (sts,) = by_kind(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts["/var/lib/ctagg"] == "state"
    assert mounts["/tmp"] == "tmp"
    assert {"name": "TMPDIR", "value": "/tmp"} in c["env"]
    run_at = c["args"].index("run")
    assert c["args"][run_at + 1] == "/etc/ctagg/config.yaml"
    assert sts["spec"]["replicas"] == 1


def test_state_lives_on_a_pvc_unless_disabled(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    """persistence.enabled gives a volumeClaimTemplate named 'state'; disabled, an emptyDir."""
    values, docs = rendered
    (sts,) = by_kind(docs, "StatefulSet")
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    if values.get("persistence", {}).get("enabled", True):
        (vct,) = sts["spec"]["volumeClaimTemplates"]
        assert vct["metadata"]["name"] == "state"
        assert "state" not in volumes
        want = values.get("persistence", {}).get("size", "5Gi")
        assert vct["spec"]["resources"]["requests"]["storage"] == want
    else:
        assert "volumeClaimTemplates" not in sts["spec"]
        assert "emptyDir" in volumes["state"]


def test_rendered_config_is_a_valid_ctagg_config(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    """The ConfigMap's config.yaml passes ctagg's own strict validation, with the state on the
    volume and the health port matching the container port."""
    _, docs = rendered
    (cm,) = by_kind(docs, "ConfigMap")
    doc = yaml.safe_load(cm["data"]["config.yaml"])
    settings = parse_settings(doc, env={"CTAGG_EXTERNAL_ID": "planted-external-id"})
    assert settings.state.path == "/var/lib/ctagg/state.db"
    (sts,) = by_kind(docs, "StatefulSet")
    (port,) = sts["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert settings.service.health_port == port["containerPort"]
    assert settings.service.health_host == "0.0.0.0"


def test_production_values_wire_irsa_secrets_and_extras() -> None:
    """IRSA annotation, secrets only by reference, NetworkPolicy, ServiceMonitor and the digest
    all reach the manifests."""
    values = load_values(Path(__file__).parent / "values-production.yaml")
    docs = render(values)
    (sa,) = by_kind(docs, "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == (
        "arn:aws:iam::123456789012:role/ctagg-hub"
    )
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/sts-regional-endpoints"] == "true"
    (sts,) = by_kind(docs, "StatefulSet")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    assert c["image"].endswith("@" + values["image"]["digest"])
    assert c["envFrom"] == [{"secretRef": {"name": "ctagg-env"}}]
    ext = next(e for e in c["env"] if e["name"] == "CTAGG_EXTERNAL_ID")
    assert ext["valueFrom"]["secretKeyRef"] == {"name": "ctagg-member-role", "key": "external-id"}
    (cm,) = by_kind(docs, "ConfigMap")
    assert "${CTAGG_EXTERNAL_ID}" in cm["data"]["config.yaml"]  # the reference, not a value
    (np,) = by_kind(docs, "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    ports = [p["port"] for rule in np["spec"]["egress"] for p in rule.get("ports", [])]
    assert {53, 443, 6514} <= set(ports)
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    # exactly one Service is scraped, and it publishes the pod while it is not ready
    wanted = sm["spec"]["selector"]["matchLabels"].items()
    scraped = [x for x in by_kind(docs, "Service") if wanted <= x["metadata"]["labels"].items()]
    assert len(scraped) == 1
    assert scraped[0]["spec"]["publishNotReadyAddresses"] is True
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    (rule,) = by_kind(docs, "PrometheusRule")
    exprs = {r["alert"]: r["expr"] for r in rule["spec"]["groups"][0]["rules"]}
    assert "ctagg_newest_event_age_seconds" in exprs["CtaggAccountRegionStale"]
    assert 'job_name="ingest"' in exprs["CtaggIngestNotSucceeding"]
    # alerts only use metric names the code exports
    from aggregator.service.metrics import Metrics

    exported = {m.name for m in Metrics().registry.collect()}
    for expr in exprs.values():
        for name in re.findall(r"ctagg_[a-z_]+", expr):
            base = name.removesuffix("_total")
            assert base in exported or name in exported, name


def test_optional_objects_are_absent_by_default() -> None:
    """No NetworkPolicy or ServiceMonitor unless enabled; no IRSA annotation without a role."""
    docs = render(load_values(MINIMAL))
    kinds = {d["kind"] for d in docs}
    assert "NetworkPolicy" not in kinds
    assert "ServiceMonitor" not in kinds
    assert "PrometheusRule" not in kinds
    (sa,) = by_kind(docs, "ServiceAccount")
    assert "eks.amazonaws.com/role-arn" not in (sa["metadata"].get("annotations") or {})


def test_config_checksum_follows_the_config() -> None:
    """The pod template's checksum changes when the config changes (so pods roll) and only then."""

    def checksum(values: dict[str, Any]) -> str:
        (sts,) = by_kind(render(values), "StatefulSet")
        return str(sts["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    base = {"config": {"archive": {"bucket": "bucket-a"}}}
    same = checksum(base)
    assert same == checksum(json.loads(json.dumps(base)))
    assert checksum({**base, "logLevel": "DEBUG"}) == same
    assert checksum({"config": {"archive": {"bucket": "bucket-b"}}}) != same


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"securityContext": {"readOnlyRootFilesystem": False}}, "readOnlyRootFilesystem"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
        ({"replicaCount": 3}, "replicaCount"),
        ({"serviceAccount": {"irsaRoleArn": "not-an-arn"}}, "irsaRoleArn"),
        ({"service": {"port": "9108"}}, "port"),
        ({"secretEnv": [{"name": "X", "secretName": "s"}]}, "key"),
    ],
)
def test_values_schema_rejects_bad_values(values: dict[str, Any], needle: str) -> None:
    """values.schema.json refuses unsafe or misspelled values, naming the key."""
    chart = helm_python.Chart.load(str(CHART))
    with pytest.raises(helm_python.HelmError) as err:
        chart.render(values, name="ctagg", namespace="security")
    assert needle in str(err.value)


def test_helm_lint_is_clean() -> None:
    """helm lint (strict, Kubernetes 1.30) reports no errors or warnings."""
    for path in VALUES:
        report = helm_python.lint(
            str(CHART), load_values(path), strict=True, kube_version="v1.30.0"
        )
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_notes_mention_probes_and_doctor() -> None:
    """NOTES.txt tells the operator how to check health and access."""
    chart = helm_python.Chart.load(str(CHART))
    notes = chart.render(load_values(MINIMAL), name="ctagg", namespace="security")
    text = next(v for k, v in notes.items() if k.endswith("NOTES.txt"))
    assert "/readyz" in text
    assert "ctagg doctor" in text
