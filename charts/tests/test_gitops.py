"""The GitOps examples (examples/gitops/): Argo CD Applications with sync
waves and Lua health checks, Flux HelmRelease and Kustomizations with
dependsOn. Checked against the chart they deploy and the CRDs they use; every
Lua health check runs (Lua 5.1, like Argo CD's gopher-lua) on sample objects."""

from __future__ import annotations

import pathlib

import jsonschema
import pytest
import yaml
from lupa import lua51

from conftest import CHART

REPO = CHART.parent.parent
GITOPS = REPO / "examples" / "gitops"
ARGO = GITOPS / "argocd"
FLUX = GITOPS / "flux"
POLICIES = GITOPS / "policies"

HEALTH_KEYS = {
    "policybind.io_AIPolicy": "ready-condition.lua",
    "policybind.io_ClusterAIPolicy": "ready-condition.lua",
    "policybind.io_ModelDeployment": "modeldeployment.lua",
    "policybind.io_AccessToken": "accesstoken.lua",
    "policybind.io_ApprovalRequest": "approvalrequest.lua",
    "policybind.io_Incident": "incident.lua",
    "policybind.io_EvidenceGate": "ready-condition.lua",
    "policybind.io_AIBudget": "ready-condition.lua",
    "argoproj.io_Application": "application.lua",
}


def load_all(path: pathlib.Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(paths, kind):
    return [d for p in paths for d in load_all(p) if d["kind"] == kind]


def wave(doc) -> int:
    return int(doc["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))


# --- Argo CD -------------------------------------------------------------------------


def test_argocd_cm_carries_exactly_the_lua_sources():
    [config] = load_all(ARGO / "argocd-cm.yaml")
    data = config["data"]
    assert set(data) == {f"resource.customizations.health.{k}" for k in HEALTH_KEYS}
    for key, source in HEALTH_KEYS.items():
        assert data[f"resource.customizations.health.{key}"] == \
            (ARGO / "health" / source).read_text(), key


def run_health(script: str, obj: dict) -> tuple[str, str]:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script)
    return result["status"], result["message"]


def health(source: str, obj: dict) -> str:
    return run_health((ARGO / "health" / source).read_text(), obj)[0]


def ready(status, generation=2, observed=2, message="compiled"):
    return {"metadata": {"generation": generation},
            "status": {"observedGeneration": observed,
                       "conditions": [{"type": "Ready", "status": status, "message": message}]}}


@pytest.mark.parametrize("obj, expected", [
    ({"metadata": {"generation": 1}}, "Progressing"),
    (ready("True"), "Healthy"),
    (ready("False", message="spec.rules[0].when: syntax error"), "Degraded"),
    (ready("True", generation=3, observed=2), "Progressing"),
    (ready("Unknown"), "Progressing"),
])
def test_policy_health(obj, expected):
    assert health("ready-condition.lua", obj) == expected


def test_policy_health_explains_a_compile_failure():
    status, message = run_health((ARGO / "health" / "ready-condition.lua").read_text(),
                                 ready("False", message="spec.rules[0].when: syntax error"))
    assert (status, message) == ("Degraded", "spec.rules[0].when: syntax error")


def model(approval=None, suspended=False, observed=1):
    obj = {"metadata": {"generation": 1}, "spec": {"suspended": suspended},
           "status": {"observedGeneration": observed}}
    if approval:
        obj["status"]["approval"] = approval
        obj["status"]["approvalRequest"] = "gpt-review"
    return obj


@pytest.mark.parametrize("obj, expected", [
    (model(), "Progressing"),
    (model("NotRequired"), "Healthy"),
    (model("Approved"), "Healthy"),
    (model("Pending"), "Suspended"),
    (model("Rejected"), "Degraded"),
    (model("Approved", suspended=True), "Suspended"),
    (model("Approved", observed=0), "Progressing"),
])
def test_model_deployment_health(obj, expected):
    assert health("modeldeployment.lua", obj) == expected


@pytest.mark.parametrize("phase, expected", [
    (None, "Progressing"), ("Pending", "Progressing"), ("Active", "Healthy"),
    ("Revoked", "Suspended"), ("Expired", "Degraded"), ("Exhausted", "Degraded"),
])
def test_access_token_health(phase, expected):
    obj = {"metadata": {}, "status": {"phase": phase, "secretName": "t-token"} if phase else None}
    if obj["status"] is None:
        del obj["status"]
    assert health("accesstoken.lua", obj) == expected


@pytest.mark.parametrize("phase, expected", [
    (None, "Suspended"), ("Pending", "Suspended"), ("Approved", "Healthy"),
    ("Rejected", "Healthy"), ("Expired", "Degraded"),
])
def test_approval_request_health(phase, expected):
    obj = {"metadata": {}, "status": {"phase": phase} if phase else {}}
    assert health("approvalrequest.lua", obj) == expected


@pytest.mark.parametrize("state, expected", [
    ("Open", "Degraded"), ("Investigating", "Degraded"), ("Mitigated", "Healthy"),
    ("Resolved", "Healthy"),
])
def test_incident_health(state, expected):
    assert health("incident.lua", {"metadata": {}, "spec": {"state": state}}) == expected


def test_application_health_passes_child_health_through():
    assert health("application.lua", {"status": {"health": {"status": "Degraded"}}}) == "Degraded"
    assert health("application.lua", {}) == "Progressing"


def test_argocd_syncs_the_chart_before_the_policies(chart, render):
    apps = {a["metadata"]["name"]: a for a in by_kind(sorted((ARGO / "apps").glob("*.yaml")),
                                                      "Application")}
    chart_app, policies_app = apps["policybind"], apps["policybind-policies"]
    assert wave(chart_app) < wave(policies_app)
    assert chart_app["spec"]["source"]["path"] == "charts/policybind"
    assert (REPO / chart_app["spec"]["source"]["path"] / "Chart.yaml").is_file()
    values = chart_app["spec"]["source"]["helm"]["valuesObject"]
    chart.validate_schema(values)
    # `helm template` cannot look anything up: Argo CD must not let the chart
    # generate the signing key or the webhook certificate.
    assert values["audit"]["signingKey"] == {
        "create": False,
        "existingSecrets": {"operator": "policybind-operator-audit-key",
                            "webhook": "policybind-webhook-audit-key"}}
    assert values["webhook"]["certificate"]["mode"] == "cert-manager"
    rendered = render(values)
    assert rendered.kinds("Secret") == []
    assert chart_app["spec"]["destination"]["namespace"] == "policybind-system"
    assert (REPO / policies_app["spec"]["source"]["path"]).is_dir()
    [root] = load_all(ARGO / "root-app.yaml")
    assert (REPO / root["spec"]["source"]["path"]) == ARGO / "apps"


def test_argocd_ignores_only_the_runtime_ca_bundle():
    [chart_app] = [a for a in by_kind([ARGO / "apps" / "policybind.yaml"], "Application")]
    ignored = chart_app["spec"]["ignoreDifferences"]
    assert {i["kind"] for i in ignored} == {"ValidatingWebhookConfiguration",
                                           "MutatingWebhookConfiguration"}
    assert all(i["jqPathExpressions"] == [".webhooks[]?.clientConfig.caBundle"] for i in ignored)
    assert "RespectIgnoreDifferences=true" in chart_app["spec"]["syncPolicy"]["syncOptions"]
    [policies_app] = by_kind([ARGO / "apps" / "policies.yaml"], "Application")
    assert "ignoreDifferences" not in policies_app["spec"]  # no drift on our kinds


# --- the policies both tools sync ------------------------------------------------------


def crd_schemas():
    schemas = {}
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for crd in load_all(path):
            [version] = crd["spec"]["versions"]
            schemas[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return schemas


def policy_docs():
    kustomization = yaml.safe_load((POLICIES / "kustomization.yaml").read_text())
    return [d for name in kustomization["resources"] for d in load_all(POLICIES / name)]


def test_policies_are_ordered_registry_then_policies_then_tokens():
    rank = {"Namespace": 0, "ModelDeployment": 1, "ClusterAIPolicy": 2, "AIPolicy": 2,
            "AccessToken": 3}
    for doc in policy_docs():
        assert wave(doc) == rank[doc["kind"]], doc["metadata"]["name"]


def test_policies_match_the_crd_schemas():
    schemas = crd_schemas()
    if not schemas:
        pytest.skip("charts/policybind/crds/ is empty")
    checked = 0
    for doc in policy_docs():
        if doc["apiVersion"] != "policybind.io/v1alpha1":
            continue
        jsonschema.validate(doc["spec"], schemas[doc["kind"]]["properties"]["spec"])
        checked += 1
    assert checked >= 4


def test_policies_target_an_enforced_namespace():
    [namespace] = [d for d in policy_docs() if d["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["policybind.io/enforce"] == "true"
    for doc in policy_docs():
        if doc["kind"] not in {"Namespace", "ClusterAIPolicy"}:
            assert doc["metadata"]["namespace"] == namespace["metadata"]["name"]


# --- Flux --------------------------------------------------------------------------------


def test_flux_policies_depend_on_the_release():
    kustomizations = {k["metadata"]["name"]: k for k in by_kind(
        [FLUX / "policybind.yaml", FLUX / "policies.yaml"], "Kustomization")}
    release, policies = kustomizations["policybind"], kustomizations["policybind-policies"]
    assert policies["spec"]["dependsOn"] == [{"name": "policybind"}]
    assert release["spec"]["wait"] is True and policies["spec"]["wait"] is True
    for k in (release, policies):
        assert (REPO / k["spec"]["path"]).is_dir(), k["spec"]["path"]
    sources = {s["metadata"]["name"] for s in by_kind([FLUX / "sources.yaml"], "GitRepository")}
    assert {release["spec"]["sourceRef"]["name"], policies["spec"]["sourceRef"]["name"]} <= sources
    checked = {(e["apiVersion"], e["kind"]) for e in policies["spec"]["healthCheckExprs"]}
    assert checked == {("policybind.io/v1alpha1", "ModelDeployment"),
                       ("policybind.io/v1alpha1", "AccessToken")}


def test_flux_helm_release_installs_crds_and_valid_values(chart, render):
    [release] = by_kind([FLUX / "release" / "helmrelease.yaml"], "HelmRelease")
    spec = release["spec"]
    assert (REPO / spec["chart"]["spec"]["chart"] / "Chart.yaml").is_file()
    assert spec["install"]["crds"] == spec["upgrade"]["crds"] == "CreateReplace"
    chart.validate_schema(spec.get("values"))
    # Drift detection needs no exceptions: with the default certificate mode
    # the caBundle is part of the release, nothing writes it at runtime.
    assert spec["driftDetection"] == {"mode": "enabled"}
    rendered = render(spec.get("values"), namespace=release["metadata"]["namespace"])
    for kind in ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"]:
        [config] = rendered.kinds(kind)
        assert all(h["clientConfig"].get("caBundle") for h in config["webhooks"])
    kustomization = yaml.safe_load((FLUX / "release" / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        assert (FLUX / "release" / name).is_file()
