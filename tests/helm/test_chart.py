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
                "jobLabel": {"type": "string"},
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
    values, docs = rendered
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
    assert sts["spec"]["replicas"] == values.get("replicas", 1)


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
    (cm,) = [c for c in by_kind(docs, "ConfigMap") if "config.yaml" in c.get("data", {})]
    doc = yaml.safe_load(cm["data"]["config.yaml"])
    env = {"CTAGG_EXTERNAL_ID": "planted-external-id", "CTAGG_SPLUNK_TOKEN": "planted-token"}
    settings = parse_settings(doc, env=env)
    # on the volume; with shards the file is named after its shard (state.shard-I-of-N.db)
    assert settings.state.path == (
        "/var/lib/ctagg/state.db"
        if settings.shard.count == 1
        else f"/var/lib/ctagg/state.{settings.shard.label}.db"
    )
    (sts,) = by_kind(docs, "StatefulSet")
    (port,) = sts["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert settings.service.health_port == port["containerPort"]
    assert settings.service.health_host == "0.0.0.0"
    assert settings.shard.count == sts["spec"]["replicas"]


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


# ----------------------------------------------------------------- issue 16: extension points

EXTRAS = Path(__file__).parent / "values-extras.yaml"


def test_values_schema_embeds_the_config_schema() -> None:
    """values.schema.json carries config/schema.json (fresh: regenerate with
    `python -m tests.helm.values_schema` after `make schema`)."""
    from tests.helm.values_schema import CONFIG_SCHEMA, VALUES_SCHEMA, embedded, render

    current = json.loads(VALUES_SCHEMA.read_text())
    want = embedded(current, json.loads(CONFIG_SCHEMA.read_text()))
    assert VALUES_SCHEMA.read_text() == render(want)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"archive": {"bucket": "bucket-a"}, "bogus": 1}, "bogus"),
        ({"archive": {"bucket": "bucket-a", "bukcet_prefix": "x"}}, "bukcet_prefix"),
        (
            {"archive": {"bucket": "bucket-a"}, "normalize": {"max_event_bytes": "big"}},
            "max_event_bytes",
        ),
        ({"archive": {"bucket": "bucket-a", "prefix": 5}}, "prefix"),
    ],
)
def test_a_bad_config_fails_at_install(config: dict[str, Any], needle: str) -> None:
    """The config is checked by ctagg's own schema when the chart is rendered."""
    chart = helm_python.Chart.load(str(CHART))
    with pytest.raises(helm_python.HelmError) as err:
        chart.render({"config": config}, name="ctagg", namespace="security")
    assert needle in str(err.value)


def test_extension_points_reach_the_pod() -> None:
    """extraVolumes/extraVolumeMounts, extraEnv (valueFrom), envFrom, podLabels,
    podAnnotations, topologySpreadConstraints (templated) and commonLabels on every object."""
    values = load_values(EXTRAS)
    docs = render(values)
    (sts,) = by_kind(docs, "StatefulSet")
    pod = sts["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["siem-tls"]["secret"]["secretName"] == "ctagg-siem-tls"
    assert volumes["geoip"]["configMap"]["name"] == "ctagg-geoip"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/ctagg/tls"] == {
        "name": "siem-tls",
        "mountPath": "/etc/ctagg/tls",
        "readOnly": True,
    }
    assert "/var/lib/geoip" in mounts
    env = {e["name"]: e for e in c["env"]}
    assert env["CTAGG_SPLUNK_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "ctagg-splunk",
        "key": "token",
    }
    assert env["TZ"] == {"name": "TZ", "value": "UTC"}
    assert c["envFrom"] == values["envFrom"]
    labels = pod["metadata"]["labels"]
    assert labels["sidecar.istio.io/inject"] == "false"
    assert labels["team"] == "security"
    assert (
        pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    )
    (spread,) = pod["spec"]["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "ctagg"
    extra = [d for d in docs if d["metadata"]["name"] in ("ctagg-tuning", "ctagg-extra")]
    assert {(d["kind"], d["metadata"]["namespace"]) for d in extra} == {
        ("ConfigMap", "security"),
        ("Secret", "security"),
    }
    ours = [d for d in docs if d not in extra]
    assert all(d["metadata"]["labels"]["team"] == "security" for d in ours)
    assert all(d["metadata"]["labels"]["cost-center"] == "4711" for d in ours)


def _egress(values: dict[str, Any]) -> list[dict[str, Any]]:
    (np,) = by_kind(render(values), "NetworkPolicy")
    return list(np["spec"]["egress"])


def _to(rules: list[dict[str, Any]], port: int) -> set[str]:
    return {
        peer["ipBlock"]["cidr"]
        for rule in rules
        if any(p["port"] == port for p in rule.get("ports", []))
        for peer in rule.get("to", [])
    }


def test_network_policy_egress_defaults_allow_pod_identity_and_imds() -> None:
    base = {"config": {"archive": {"bucket": "bucket-a"}}, "networkPolicy": {"enabled": True}}
    rules = _egress(base)
    assert _to(rules, 80) == {"169.254.170.23/32", "fd00:ec2::23/128", "169.254.169.254/32",
                              "fd00:ec2::254/128"}  # fmt: skip
    assert _to(rules, 443) == {"0.0.0.0/0"}
    assert any(p["port"] == 53 for r in rules for p in r.get("ports", []))
    off = {
        **base,
        "networkPolicy": {"enabled": True, "allowImds": False, "allowPodIdentity": False},
    }
    assert _to(_egress(off), 80) == set()
    replaced = _egress(load_values(EXTRAS))
    assert replaced == load_values(EXTRAS)["networkPolicy"]["egress"]


def test_alert_rules_select_the_service_monitor_job() -> None:
    """The job label the rules select is the one the ServiceMonitor gives (jobLabel → the
    scraped Service's label), default or set."""
    for values in (
        load_values(EXTRAS),
        load_values(Path(__file__).parent / "values-production.yaml"),
    ):
        docs = render(values)
        (sm,) = by_kind(docs, "ServiceMonitor")
        wanted = sm["spec"]["selector"]["matchLabels"].items()
        (svc,) = [s for s in by_kind(docs, "Service") if wanted <= s["metadata"]["labels"].items()]
        job = svc["metadata"]["labels"][sm["spec"]["jobLabel"]]
        (rule,) = by_kind(docs, "PrometheusRule")
        for r in rule["spec"]["groups"][0]["rules"]:
            assert re.findall(r'job="([^"]*)"', r["expr"]) == [job], r["expr"]
    assert job == "ctagg-cloudtrail-aggregator"  # production: the release's full name
    assert "ctagg-metrics" in json.dumps(by_kind(render(load_values(EXTRAS)), "PrometheusRule"))


def _promtool() -> str:
    import shutil

    tool = shutil.which("promtool")
    if tool is None:  # `make test` installs it (make sysdeps): missing is a failure, not a skip
        pytest.fail("promtool missing: run `make sysdeps` (the Debian package prometheus)")
    return tool


def _rules_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    (rule,) = by_kind(render(values), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def _promtool_test(tool: str, tmp_path: Path, tests: dict[str, Any]) -> None:
    """``promtool test rules`` over ``tests`` (a rule unit-test file): every case passes."""
    import subprocess

    spec = tmp_path / "tests.yaml"
    spec.write_text(yaml.safe_dump(tests))
    proc = subprocess.run(
        [tool, "test", "rules", str(spec)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_rules_pass_promtool_check(tmp_path: Path) -> None:
    import subprocess

    tool = _promtool()
    for name in ("values-production.yaml", "values-extras.yaml"):
        rules = _rules_file(tmp_path, load_values(Path(__file__).parent / name))
        proc = subprocess.run(
            [tool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ingest_alert_fires_when_ingest_never_succeeded(tmp_path: Path) -> None:
    """promtool test rules: no success gauge at all (ingest never succeeded) fires
    CtaggIngestNotSucceeding after ingestFailingAfterSecs; an old success fires it too; a
    recent one does not."""

    tool = _promtool()
    values = {"config": {"archive": {"bucket": "bucket-a"}}, "prometheusRule": {"enabled": True,
              "ingestFailingAfterSecs": 600}}  # fmt: skip
    rules = _rules_file(tmp_path, values)
    selector = '{job="ctagg-cloudtrail-aggregator", job_name="ingest"}'
    up = {
        "series": 'ctagg_build_info{job="ctagg-cloudtrail-aggregator", version="x"}',
        "values": "1+0x60",
    }
    alert = {"alertname": "CtaggIngestNotSucceeding"}
    labels = {"severity": "critical", "job": "ctagg-cloudtrail-aggregator", "job_name": "ingest"}
    never = {
        "summary": "No successful ingest cycle since ctagg started (or its metrics are not scraped)"
    }
    stale = {"summary": "No successful ingest cycle for 30m 0s"}
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {  # never succeeded: absent() for 10 minutes
                "interval": "1m",
                "input_series": [up],
                "alert_rule_test": [
                    {**alert, "eval_time": "5m", "exp_alerts": []},
                    {**alert, "eval_time": "15m",
                     "exp_alerts": [{"exp_labels": labels, "exp_annotations": never}]},
                ],
            },
            {  # succeeded at t=0, then never again: 600 s later + for 10m
                "interval": "1m",
                "input_series": [
                    {"series": f"ctagg_job_last_success_timestamp_seconds{selector}",
                     "values": "0+0x60"},
                ],
                "alert_rule_test": [
                    {**alert, "eval_time": "5m", "exp_alerts": []},
                    {**alert, "eval_time": "30m",
                     "exp_alerts": [{"exp_labels": labels, "exp_annotations": stale}]},
                ],
            },
        ],
    }  # fmt: skip
    _promtool_test(tool, tmp_path, tests)


SHARDED = Path(__file__).parent / "values-sharded.yaml"


def _pod(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    (sts,) = by_kind(docs, "StatefulSet")
    return sts, sts["spec"]["template"]["spec"]


def _config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (cm,) = by_kind(docs, "ConfigMap")
    doc: dict[str, Any] = yaml.safe_load(cm["data"]["config.yaml"])
    return doc


def test_replicas_are_shards(tmp_path: Path) -> None:
    """replicas: 3 → three pods in parallel, config shard.count 3, each pod's index from its
    ordinal (the pod-index label, POD_NAME as the fallback), spread over nodes; the rendered
    config loads in ctagg as shard I of 3 for pod ctagg-...-I, with or without the label."""
    docs = render(load_values(SHARDED))
    sts, pod = _pod(docs)
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["serviceName"] in {s["metadata"]["name"] for s in by_kind(docs, "Service")}
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["CTAGG_SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1

    from aggregator.config import load_settings

    cfg = _config(docs)
    assert cfg["shard"]["count"] == 3
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    name = sts["metadata"]["name"]
    for env_ in ({"CTAGG_SHARD_INDEX": "2", "POD_NAME": f"{name}-2"},  # k8s >= 1.28
                 {"CTAGG_SHARD_INDEX": "", "POD_NAME": f"{name}-1"},  # older: the label is empty
                 {"CTAGG_SHARD_INDEX": "", "POD_NAME": f"{name}-0"}):  # fmt: skip
        settings = load_settings(path, env=env_)
        want = int(env_["POD_NAME"].rsplit("-", 1)[1])
        assert (settings.shard.ordinal, settings.shard.count) == (want, 3)
        assert settings.shard.label == f"shard-{want}-of-3"
        assert settings.state.path == f"/var/lib/ctagg/state.shard-{want}-of-3.db"  # its PVC


def test_the_default_is_one_shard() -> None:
    """No replicas value: one pod, shard.count 1 (the installation of before), OrderedReady,
    no anti-affinity, the index variables present anyway, the PDB's maxUnavailable 1."""
    docs = render(load_values(MINIMAL))
    sts, pod = _pod(docs)
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["podManagementPolicy"] == "OrderedReady"
    assert "affinity" not in pod
    assert _config(docs)["shard"] == {"count": 1}
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert {"CTAGG_SHARD_INDEX", "POD_NAME"} <= env
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize(
    ("values", "affinity"),
    [
        ({"replicas": 1}, None),  # one pod: nothing to spread
        ({"replicas": 2}, "preferredDuringSchedulingIgnoredDuringExecution"),
        ({"replicas": 2, "antiAffinity": "none"}, None),
        ({"replicas": 2, "affinity": {"nodeAffinity": {}}}, "nodeAffinity"),  # the user's wins
    ],
)
def test_anti_affinity_spreads_shards_unless_told_otherwise(
    values: dict[str, Any], affinity: str | None
) -> None:
    docs = render({**load_values(MINIMAL), **values})
    sts, pod = _pod(docs)
    kubernetes_validate.validate(sts, K8S, strict=True)
    if affinity is None:
        assert "affinity" not in pod
    else:
        got = pod["affinity"]
        assert affinity in json.dumps(got)
        if affinity == "nodeAffinity":
            assert "podAntiAffinity" not in got
    assert sts["spec"]["podManagementPolicy"] == (
        "Parallel" if values["replicas"] > 1 else "OrderedReady"
    )


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_anti_affinity_terms_select_the_shards_by_node(mode: str) -> None:
    """soft (the default): preferred, weight 100; hard: required. Both over
    kubernetes.io/hostname with exactly the StatefulSet's selector labels (so they match this
    release's pods and no other's)."""
    values = {**load_values(MINIMAL), "replicas": 3}
    if mode == "hard":
        values["antiAffinity"] = "hard"
    sts, pod = _pod(render(values))
    anti = pod["affinity"]["podAntiAffinity"]
    assert list(anti) == [
        "preferredDuringSchedulingIgnoredDuringExecution"
        if mode == "soft"
        else "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    (term,) = next(iter(anti.values()))
    if mode == "soft":
        assert term["weight"] == 100
        term = term["podAffinityTerm"]
    assert term == {
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": sts["spec"]["selector"]["matchLabels"]},
    }
    assert sts["spec"]["selector"]["matchLabels"].items() <= (
        sts["spec"]["template"]["metadata"]["labels"].items()
    )


@pytest.mark.parametrize(
    ("pdb", "want"),
    [
        ({}, 1),  # the default: one shard down at a time
        ({"maxUnavailable": 0}, 0),  # the user's explicit setting wins
        ({"maxUnavailable": 2}, 2),
        ({"enabled": False}, None),
    ],
)
def test_the_disruption_budget_is_the_users_when_set(pdb: dict[str, Any], want: int | None) -> None:
    values = load_values(SHARDED)
    values["podDisruptionBudget"] = {**load_values(MINIMAL).get("podDisruptionBudget", {}), **pdb}
    budgets = by_kind(render(values), "PodDisruptionBudget")
    if want is None:
        assert budgets == []
        return
    (got,) = budgets
    kubernetes_validate.validate(got, K8S, strict=True)
    assert got["spec"]["maxUnavailable"] == want


def test_scaled_to_zero_keeps_the_shard_count() -> None:
    """replicas: 0 for a resize renders no pod and keeps the config's shard.count; without it
    the chart refuses (the count of a stopped installation must stay known); a config count
    that contradicts replicas is refused too."""
    base = load_values(MINIMAL)
    kept = {**base, "replicas": 0, "config": {**base["config"], "shard": {"count": 3}}}
    docs = render(kept)
    sts, _ = _pod(docs)
    for doc in docs:
        if doc["kind"] not in ("ServiceMonitor", "PrometheusRule"):
            kubernetes_validate.validate(doc, K8S, strict=True)
    assert sts["spec"]["replicas"] == 0
    assert _config(docs)["shard"]["count"] == 3
    with pytest.raises(helm_python.HelmError, match=r"replicas: 0 .* needs config.shard.count"):
        render({**base, "replicas": 0})
    with pytest.raises(helm_python.HelmError, match=r"config.shard.count \(3\) differs"):
        render({**kept, "replicas": 2})
    assert _config(render({**kept, "replicas": 3}))["shard"]["count"] == 3  # agrees: fine


@pytest.mark.parametrize("index", [0, 2])
def test_a_fixed_shard_index_is_refused_with_several_shards(index: int) -> None:
    """Every pod reads the same ConfigMap: config.shard.index would make each of them that
    shard (the config's index wins over CTAGG_SHARD_INDEX). Left out or null it is fine, and
    with one replica index 0 is what the pod is anyway."""
    values = load_values(SHARDED)
    with_index = {**values, "config": {**values["config"], "shard": {"index": index}}}
    with pytest.raises(helm_python.HelmError, match=r"config.shard.index is set: leave it out"):
        render(with_index)
    null = {**values, "config": {**values["config"], "shard": {"index": None}}}
    assert _config(render(null))["shard"]["count"] == 3
    one = load_values(MINIMAL)
    assert _config(render({**one, "config": {**one["config"], "shard": {"index": 0}}}))[
        "shard"
    ] == {"index": 0, "count": 1}


def test_notes_explain_shards_and_resizing() -> None:
    chart = helm_python.Chart.load(str(CHART))
    notes = {
        n: chart.render(v, name="ctagg", namespace="security", is_install=True)
        for n, v in (
            ("one", load_values(MINIMAL)),
            ("three", load_values(SHARDED)),
            ("zero", {**load_values(SHARDED), "replicas": 0, "config": {
                **load_values(SHARDED)["config"], "shard": {"count": 3}}}),
        )
    }  # fmt: skip
    text = {
        n: next(t for k, t in out.items() if k.endswith("NOTES.txt")) for n, out in notes.items()
    }
    assert "3 shards: pod ctagg-cloudtrail-aggregator-I is shard I of 3" in text["three"]
    assert "scale to 0 first" in text["three"]
    assert "docs/operations.md#resizing-offline" in text["three"]
    # what a direct upgrade of replicas does, and how to finish it
    assert "An upgrade that changed\nreplicas directly does not finish" in text["three"]
    assert "then scale to 3." in text["three"]
    assert "Scaled to zero (shard count 3): no pod runs" in text["zero"]
    assert "without config.shard.count" in text["zero"]
    assert "3 shards:" not in text["zero"]
    assert "shards" not in text["one"]
    assert "namespace security.\n\nHealth and metrics" in text["one"]


def test_shard_alerts_fire_for_a_shard_without_its_slots(tmp_path: Path) -> None:
    """promtool test rules over the sharded values: shard 1 reporting 0 fires
    CtaggShardNotHoldingSlots for it and CtaggShardsMissing (2 of 3 hold); all holding fires
    neither; with one replica there are no shard rules."""

    tool = _promtool()
    rules = _rules_file(tmp_path, load_values(SHARDED))
    job = 'job="ctagg-cloudtrail-aggregator"'
    series = [
        {"series": f'ctagg_shard_holds_slots{{{job}, shard="0"}}', "values": "1+0x60"},
        {"series": f'ctagg_shard_holds_slots{{{job}, shard="1"}}', "values": "0+0x60"},
        {"series": f'ctagg_shard_holds_slots{{{job}, shard="2"}}', "values": "1+0x60"},
    ]
    healthy = [dict(s, values="1+0x60") for s in series]
    one = {"alertname": "CtaggShardNotHoldingSlots"}
    missing = {"alertname": "CtaggShardsMissing"}
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {"interval": "1m", "input_series": series, "alert_rule_test": [
                {**one, "eval_time": "20m", "exp_alerts": [{
                    "exp_labels": {"severity": "critical", "shard": "1"},
                    "exp_annotations": {
                        "summary": "Shard 1 does not hold its slots (its /readyz says why)"}}]},
                {**missing, "eval_time": "20m", "exp_alerts": []},  # for: 30m
                {**missing, "eval_time": "40m", "exp_alerts": [{
                    "exp_labels": {"severity": "critical"},
                    "exp_annotations": {"summary": "Fewer than 3 shards hold their slots: some "
                                        "(account, region) pairs are not collected"}}]},
            ]},
            {"interval": "1m", "input_series": healthy, "alert_rule_test": [
                {**one, "eval_time": "40m", "exp_alerts": []},
                {**missing, "eval_time": "40m", "exp_alerts": []},
            ]},
        ],
    }  # fmt: skip
    _promtool_test(tool, tmp_path, tests)
    single = {**load_values(SHARDED), "replicas": 1}
    (rule,) = by_kind(render(single), "PrometheusRule")
    assert "CtaggShard" not in json.dumps(rule)
