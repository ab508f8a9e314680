"""The dashboard (`dashboard.enabled`): off by default; when on, one pod that
runs `policybind dashboard` under its own read-only account, and a Service."""
from __future__ import annotations

import helm_python as helm
import pytest

from conftest import NAMESPACE
from test_chart import FULL, OPERATOR, rules_of, verbs_on

DASHBOARD = f"{FULL}-dashboard"
ON = {"dashboard": {"enabled": True}}


def test_the_dashboard_is_off_by_default(render):
    rendered = render()
    assert "port-forward" not in rendered.notes
    assert f"svc/{DASHBOARD} 8080:8080" in render(ON).notes
    for kind in ["Deployment", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]:
        assert not [d for d in rendered.docs if d["kind"] == kind and d["metadata"]["name"] == DASHBOARD], kind


def test_the_dashboard_runs_policybind_dashboard_on_loopback_free_port_under_its_account(render):
    rendered = render(ON)
    deployment = rendered.get("Deployment", DASHBOARD)
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 1, "sessions are in memory: one replica"
    assert spec["serviceAccountName"] == DASHBOARD
    (container,) = spec["containers"]
    operator = rendered.get("Deployment", OPERATOR)["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == operator["image"]
    args = container["args"]
    assert args[0] == "dashboard"
    assert "--listen=0.0.0.0:8080" in args
    assert f"--namespace={NAMESPACE}" in args
    assert "--secure-cookie" not in args
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    service = rendered.get("Service", DASHBOARD)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    secure = render({"dashboard": {"enabled": True, "secureCookie": True, "port": 9000, "sessionTTL": "30m"}})
    args = secure.get("Deployment", DASHBOARD)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--secure-cookie" in args and "--listen=0.0.0.0:9000" in args and "--session-ttl=30m" in args


def test_dashboard_rights_are_read_only_plus_token_and_access_reviews(render):
    rendered = render(ON)
    cluster = rules_of(rendered, "ClusterRole", DASHBOARD)
    own = rules_of(rendered, "Role", DASHBOARD)
    for rule in cluster + own:
        assert "secrets" not in rule["resources"], rule
        assert "*" not in rule["resources"] + rule["apiGroups"] + rule["verbs"], rule
        assert not any(r.endswith("/proxy") for r in rule["resources"]), rule
        if rule["apiGroups"] in (["authentication.k8s.io"], ["authorization.k8s.io"]):
            assert rule["verbs"] == ["create"], rule
        else:
            assert set(rule["verbs"]) <= {"get", "list"}, rule
    assert verbs_on(cluster, "authentication.k8s.io", "tokenreviews") == {"create"}
    assert verbs_on(cluster, "authorization.k8s.io", "subjectaccessreviews") == {"create"}
    for kind in ["approvalrequests", "modeldeployments", "accesstokens", "incidents", "aipolicies", "clusteraipolicies"]:
        assert verbs_on(cluster, "policybind.io", kind) == {"list"}, kind
    assert verbs_on(cluster, "", "configmaps") == {"list"}
    assert verbs_on(cluster, "", "namespaces") == set()
    (keyring,) = own
    assert keyring["resources"] == ["configmaps"] and keyring["verbs"] == ["get"]
    assert keyring["resourceNames"] == ["policybind-audit-keys"]
    for kind in ["ClusterRoleBinding", "RoleBinding"]:
        binding = rendered.get(kind, DASHBOARD)
        assert binding["roleRef"]["name"] == DASHBOARD
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": DASHBOARD, "namespace": NAMESPACE}]


@pytest.mark.parametrize(
    "values",
    [
        {"dashboard": {"enabled": True, "refresh": "soon"}},
        {"dashboard": {"enabld": True}},
        {"dashboard": {"service": {"type": "ExternalName"}}},
    ],
    ids=["bad-refresh", "unknown-key", "bad-service-type"],
)
def test_bad_dashboard_values_are_refused(chart, values):
    with pytest.raises(helm.HelmError):
        chart.validate_schema(values)
