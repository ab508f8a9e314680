"""The central gateway (`gateway.*` values): off by default; when on, a
Deployment running `policybind sidecar --gateway` in its own enforced namespace
with probes, a disruption budget, its own ServiceAccount, a Service SDKs point
at, provider key Secrets mounted whole (so rotation needs no restart), the
bundle read from PolicyBind's namespace and the namespace's audit key the
operator keeps, as an injected sidecar has them."""

from __future__ import annotations

import helm_python as helm
import pytest

from conftest import NAMESPACE, RELEASE

FULL = f"{RELEASE}-policybind"
GATEWAY = f"{FULL}-gateway"
GATEWAY_NS = "ai-gateway"
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
        f"Namespace/{GATEWAY_NS}",
        f"Deployment/{GATEWAY}", f"Service/{GATEWAY}", f"Service/{GATEWAY}-metrics",
        f"ServiceAccount/{GATEWAY}", f"PodDisruptionBudget/{GATEWAY}",
    }
    for kind in ["Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"]:
        assert rendered.get(kind, GATEWAY)["metadata"]["namespace"] == GATEWAY_NS
    deploy = rendered.typed_get("Deployment", GATEWAY)
    assert deploy.spec.replicas == 2
    assert deploy.spec.strategy.rolling_update.max_unavailable == 0
    pdb = rendered.typed_get("PodDisruptionBudget", GATEWAY)
    assert pdb.spec.min_available == 1
    assert pdb.spec.selector.match_labels.items() <= deploy.spec.template.metadata.labels.items()


def test_the_gateways_namespace_is_enforced_and_outlives_the_release(render):
    namespace = render(ON).get("Namespace", GATEWAY_NS)
    assert namespace["metadata"]["labels"]["policybind.io/enforce"] == "true"
    assert namespace["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    existing = render({"gateway": {"enabled": True, "namespace": "team-gw",
                                   "createNamespace": False}})
    assert "Namespace/team-gw" not in existing.names()
    assert existing.get("Deployment", GATEWAY)["metadata"]["namespace"] == "team-gw"


def test_the_gateway_runs_the_sidecar_in_gateway_mode_as_an_injected_sidecar_is_wired(render):
    rendered = render(ON)
    pod = pod_of(rendered)
    container = container_of(rendered)
    assert container["args"] == [
        "sidecar", "--gateway", "--listen=0.0.0.0:8080", "--health-listen=0.0.0.0:9090",
        "--credentials-dir=/var/run/policybind/credentials",
    ]
    # The pod's own label enforces a namespace the chart did not create, too.
    assert pod["metadata"]["labels"]["policybind.io/enforce"] == "true"
    # It declares no model, so the webhook injects nothing and asks no exempt right.
    assert "policybind.io/model" not in pod["metadata"].get("annotations", {})
    assert "policybind.io/inject" not in pod["metadata"].get("annotations", {})
    env = env_of(container)
    assert env["POLICYBIND_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POLICYBIND_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The bundle is read where the operator writes it and workloads cannot.
    assert env["POLICYBIND_BUNDLE_NAMESPACE"]["value"] == NAMESPACE
    # The namespace's own audit key, kept by the operator, as the webhook mounts it.
    assert env["POLICYBIND_AUDIT_KEY"]["value"] == "/var/run/secrets/policybind/audit/signing-key"
    assert env["MALLOC_MMAP_THRESHOLD_"]["value"] == "131072"
    assert "POLICYBIND_AUDIT_KEY_SECRET" not in env
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["policybind-audit-key"]["mountPath"] == "/var/run/secrets/policybind/audit"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["policybind-audit-key"]["secret"]["secretName"] == "policybind-audit-key"
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


def test_per_token_metric_labels_are_off_unless_asked_for(render):
    assert "--metrics-token-labels" not in container_of(render(ON))["args"]
    on = render({"gateway": {"enabled": True, "metricsTokenLabels": True}})
    assert "--metrics-token-labels" in container_of(on)["args"]


def test_a_single_replica_gets_no_disruption_budget_that_would_block_drains(render):
    rendered = render({"gateway": {"enabled": True, "replicas": 1}})
    assert rendered.kinds("PodDisruptionBudget") == [d for d in rendered.kinds("PodDisruptionBudget")
                                                     if d["metadata"]["name"] != GATEWAY]


def test_a_gateway_given_its_own_key_mounts_none(render):
    rendered = render({"gateway": {"enabled": True, "extraEnv": [
        {"name": "POLICYBIND_AUDIT_KEY", "value": "/keys/gateway.pem"}]}})
    env = env_of(container_of(rendered))
    assert env["POLICYBIND_AUDIT_KEY"]["value"] == "/keys/gateway.pem"
    assert "volumes" not in pod_of(rendered)["spec"]


def test_a_gateway_in_policybinds_own_namespace_fails_to_render(chart):
    for gateway in [{"enabled": True, "namespace": NAMESPACE}]:
        with pytest.raises(helm.HelmError, match="namespace of its own"):
            chart.render(values={"gateway": gateway}, name=RELEASE, namespace=NAMESPACE,
                         is_install=True)


@pytest.mark.parametrize(
    "values",
    [
        {"gateway": {"enabled": True, "replicas": 0}},
        {"gateway": {"enabled": True, "providerSecrets": ["Not_A_Name"]}},
        {"gateway": {"enabled": True, "upstream": "vllm:8000"}},
        {"gateway": {"enabled": True, "namespace": "Bad_NS"}},
        {"gateway": {"enabled": True, "namespace": ""}},
        {"gateway": {"enabled": True, "service": {"type": "ExternalName"}}},
        {"gateway": {"enabled": True, "credentials": "x"}},
    ],
    ids=["no-replicas", "bad-secret-name", "upstream-not-a-url", "bad-namespace", "no-namespace",
         "bad-service-type", "unknown-key"],
)
def test_schema_refuses_bad_gateway_values(chart, values):
    with pytest.raises(helm.HelmError):
        chart.validate_schema(values)


REDIS = {"store": "redis", "redis": {"url": "redis://redis.shared:6379/2"}}


def test_budgets_use_leases_by_default(render):
    rendered = render(ON)
    assert not any(a.startswith("--budget-store") for a in container_of(rendered)["args"])
    webhook = rendered.get("Deployment", f"{FULL}-webhook")["spec"]["template"]["spec"]
    assert not any("POLICYBIND_BUDGET_STORE" in a for a in webhook["containers"][0]["args"])


def test_redis_budgets_reach_the_gateway_and_injected_sidecars(render):
    rendered = render({"gateway": {"enabled": True}, "budgets": REDIS})
    assert "--budget-store=redis://redis.shared:6379/2" in container_of(rendered)["args"]
    assert "POLICYBIND_BUDGET_STORE_PASSWORD" not in env_of(container_of(rendered))
    webhook = rendered.get("Deployment", f"{FULL}-webhook")["spec"]["template"]["spec"]
    assert ("--sidecar-env=POLICYBIND_BUDGET_STORE=redis://redis.shared:6379/2"
            in webhook["containers"][0]["args"])


def test_a_redis_password_comes_from_a_secret_into_the_gateway_only(render):
    budgets = {"store": "redis", "redis": {
        "url": "redis://redis.shared:6379", "gatewayOnly": True,
        "passwordSecret": {"name": "redis-auth", "key": "pw"}}}
    rendered = render({"gateway": {"enabled": True}, "budgets": budgets})
    env = env_of(container_of(rendered))
    ref = env["POLICYBIND_BUDGET_STORE_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "redis-auth", "key": "pw"}
    webhook = rendered.get("Deployment", f"{FULL}-webhook")["spec"]["template"]["spec"]
    assert not any("BUDGET_STORE" in a for a in webhook["containers"][0]["args"])


def test_redis_over_tls_with_a_private_ca_mounts_it_into_the_gateway(render):
    budgets = {"store": "redis", "redis": {
        "url": "rediss://redis.shared:6380/1", "gatewayOnly": True,
        "ca": {"configMap": "redis-ca", "key": "bundle.pem"}}}
    rendered = render({"gateway": {"enabled": True}, "budgets": budgets})
    container = container_of(rendered)
    assert "--budget-store=rediss://redis.shared:6380/1" in container["args"]
    assert "--budget-store-ca-file=/etc/policybind/budget-store-ca/bundle.pem" in container["args"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "budget-store-ca")
    assert mount == {"name": "budget-store-ca", "mountPath": "/etc/policybind/budget-store-ca",
                     "readOnly": True}
    pod = rendered.get("Deployment", GATEWAY)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "budget-store-ca")
    assert volume["configMap"] == {"name": "redis-ca"}


def test_redis_over_tls_with_public_roots_reaches_injected_sidecars(render):
    rendered = render({"gateway": {"enabled": True},
                       "budgets": {"store": "redis", "redis": {"url": "rediss://redis.shared:6380"}}})
    assert not any(a.startswith("--budget-store-ca-file") for a in container_of(rendered)["args"])
    webhook = rendered.get("Deployment", f"{FULL}-webhook")["spec"]["template"]["spec"]
    assert ("--sidecar-env=POLICYBIND_BUDGET_STORE=rediss://redis.shared:6380"
            in webhook["containers"][0]["args"])


@pytest.mark.parametrize(
    "budgets, message",
    [
        ({"store": "redis"}, "needs budgets.redis.url"),
        ({"store": "redis", "redis": {"url": "rediss://h:1", "ca": {"configMap": "c"}}},
         "injected sidecars check"),
        ({"store": "redis", "redis": {"url": "redis://h:1", "gatewayOnly": True,
                                      "ca": {"configMap": "c"}}}, "must be rediss://"),
        ({"store": "redis", "redis": {"url": "redis://h:1",
                                      "passwordSecret": {"name": "s"}}}, "gateway only"),
    ],
    ids=["no-url", "private-ca-for-sidecars", "ca-without-tls", "password-for-sidecars"],
)
def test_unusable_redis_budgets_fail_to_render(chart, budgets, message):
    with pytest.raises(helm.HelmError, match=message):
        chart.render(values={"gateway": {"enabled": True}, "budgets": budgets}, name=RELEASE,
                     namespace=NAMESPACE, is_install=True)


@pytest.mark.parametrize(
    "budgets",
    [{"store": "memory"}, {"redis": {"url": "redis://user:pw@h:1"}}, {"redis": {"tls": True}}],
    ids=["unknown-store", "credentials-in-url", "unknown-key"],
)
def test_schema_refuses_bad_budget_values(chart, budgets):
    with pytest.raises(helm.HelmError):
        chart.validate_schema({"budgets": budgets})
