"""The central gateway (`gateway.*` values): off by default; when on, a
Deployment running `policybind sidecar --gateway` with probes, a disruption
budget, its own ServiceAccount, a Service SDKs point at, provider key Secrets
mounted whole (so rotation needs no restart), and the audit signing key."""

from __future__ import annotations

import helm_python as helm
import pytest

from conftest import NAMESPACE, RELEASE

FULL = f"{RELEASE}-policybind"
GATEWAY = f"{FULL}-gateway"
ON = {"gateway": {"enabled": True}}


def pod_of(rendered):
    return rendered.get("Deployment", GATEWAY)["spec"]["template"]


def container_of(rendered):
    return pod_of(rendered)["spec"]["containers"][0]


def env_of(container):
    return {e["name"]: e for e in container["env"]}


def test_the_gateway_is_off_by_default(render):
    assert not any("gateway" in name for name in render().names())


def test_the_gateway_renders_a_deployment_service_budget_and_account(render):
    rendered = render(ON)
    assert {n for n in rendered.names() if "gateway" in n} == {
        f"Deployment/{GATEWAY}", f"Service/{GATEWAY}", f"Service/{GATEWAY}-metrics",
        f"ServiceAccount/{GATEWAY}", f"PodDisruptionBudget/{GATEWAY}",
    }
    deploy = rendered.typed_get("Deployment", GATEWAY)
    assert deploy.spec.replicas == 2
    assert deploy.spec.strategy.rolling_update.max_unavailable == 0
    pdb = rendered.typed_get("PodDisruptionBudget", GATEWAY)
    assert pdb.spec.min_available == 1
    assert pdb.spec.selector.match_labels.items() <= deploy.spec.template.metadata.labels.items()


def test_the_gateway_runs_the_sidecar_in_gateway_mode_and_asks_for_its_namespaces_bundle(render):
    rendered = render(ON)
    pod = pod_of(rendered)
    container = container_of(rendered)
    assert container["args"] == [
        "sidecar", "--gateway", "--listen=0.0.0.0:8080", "--health-listen=0.0.0.0:9090",
        "--credentials-dir=/var/run/policybind/credentials",
    ]
    # The operator publishes a bundle (and the sidecar Role) where a pod asks for it.
    assert pod["metadata"]["labels"]["policybind.io/enforce"] == "true"
    assert pod["metadata"]["annotations"]["policybind.io/inject"] == "false"
    env = env_of(container)
    assert env["POLICYBIND_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POLICYBIND_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # Same namespace as the release: the signing key is mounted.
    assert env["POLICYBIND_AUDIT_KEY"]["value"] == "/etc/policybind/audit/signing-key"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["audit-signing-key"]["mountPath"] == "/etc/policybind/audit"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["spec"]["serviceAccountName"] == GATEWAY


def test_provider_secrets_are_mounted_whole_where_the_gateway_reads_keys(render):
    rendered = render({"gateway": {"enabled": True,
                                   "providerSecrets": ["openai-credentials", "anthropic.key"]}})
    container = container_of(rendered)
    volumes = {v["name"]: v for v in pod_of(rendered)["spec"]["volumes"]}
    mounts = [m for m in container["volumeMounts"] if m["name"].startswith("provider-")]
    assert [m["mountPath"] for m in mounts] == [
        "/var/run/policybind/credentials/openai-credentials",
        "/var/run/policybind/credentials/anthropic.key",
    ]
    for mount in mounts:
        assert mount["readOnly"] is True
        assert "subPath" not in mount, "a subPath mount would never see a rotated key"
        assert volumes[mount["name"]]["secret"]["secretName"] in {"openai-credentials", "anthropic.key"}


def test_service_points_sdks_at_the_model_port_and_optionally_the_decision_api(render):
    plain = render(ON).get("Service", GATEWAY)
    assert plain["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    rendered = render({"gateway": {"enabled": True, "decisionApi": {"enabled": True},
                                   "upstreamCA": {"configMap": "corp-ca", "key": "bundle.pem"},
                                   "upstream": "http://vllm.models.svc:8000"}})
    ports = {p["name"]: p for p in rendered.get("Service", GATEWAY)["spec"]["ports"]}
    assert ports["decide"]["port"] == 8082 and ports["decide"]["targetPort"] == "decide"
    args = container_of(rendered)["args"]
    assert "--decide-listen=0.0.0.0:8082" in args
    assert "--upstream-ca-file=/etc/policybind/upstream-ca/bundle.pem" in args
    assert "--upstream=http://vllm.models.svc:8000" in args
    volumes = {v["name"]: v for v in pod_of(rendered)["spec"]["volumes"]}
    assert volumes["upstream-ca"]["configMap"]["name"] == "corp-ca"


def test_a_single_replica_gets_no_disruption_budget_that_would_block_drains(render):
    rendered = render({"gateway": {"enabled": True, "replicas": 1}})
    assert rendered.kinds("PodDisruptionBudget") == [d for d in rendered.kinds("PodDisruptionBudget")
                                                     if d["metadata"]["name"] != GATEWAY]


def test_a_gateway_in_its_own_namespace_reads_the_signing_key_through_the_api(render):
    rendered = render({"gateway": {"enabled": True, "namespace": "ai-gateway"}})
    for kind, name in [("Deployment", GATEWAY), ("Service", GATEWAY),
                       ("ServiceAccount", GATEWAY), ("PodDisruptionBudget", GATEWAY)]:
        assert rendered.get(kind, name)["metadata"]["namespace"] == "ai-gateway"
    env = env_of(container_of(rendered))
    assert env["POLICYBIND_AUDIT_KEY_SECRET"]["value"] == f"{NAMESPACE}/{FULL}-audit-signing-key"
    assert "POLICYBIND_AUDIT_KEY" not in env
    assert "volumes" not in pod_of(rendered)["spec"]


def test_a_gateway_without_any_signing_key_fails_to_render(chart):
    for values in [
        {"gateway": {"enabled": True}, "audit": {"signingKey": {"create": False}}},
        {"gateway": {"enabled": True, "namespace": "ai-gateway"}, "sidecar": {"shareAuditKey": False}},
    ]:
        with pytest.raises(helm.HelmError, match="signing key"):
            chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)


@pytest.mark.parametrize(
    "values",
    [
        {"gateway": {"enabled": True, "replicas": 0}},
        {"gateway": {"enabled": True, "providerSecrets": ["Not_A_Name"]}},
        {"gateway": {"enabled": True, "upstream": "vllm:8000"}},
        {"gateway": {"enabled": True, "namespace": "Bad_NS"}},
        {"gateway": {"enabled": True, "service": {"type": "ExternalName"}}},
        {"gateway": {"enabled": True, "credentials": "x"}},
    ],
    ids=["no-replicas", "bad-secret-name", "upstream-not-a-url", "bad-namespace",
         "bad-service-type", "unknown-key"],
)
def test_schema_refuses_bad_gateway_values(chart, values):
    with pytest.raises(helm.HelmError):
        chart.validate_schema(values)
