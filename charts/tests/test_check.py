"""`helm test`: the pod running `policybind check` and its read-only rights."""
from __future__ import annotations

from conftest import CHART, NAMESPACE
from test_chart import FULL, OPERATOR, rules_of, verbs_on

CHECK = f"{FULL}-check"


def test_the_test_hook_runs_check_in_the_chart_image_under_its_own_account(render):
    rendered = render()
    pod = rendered.get("Pod", CHECK)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation"
    spec = pod["spec"]
    assert spec["serviceAccountName"] == CHECK
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    operator = rendered.get("Deployment", OPERATOR)["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == operator["image"]
    assert container["args"][0] == "check"
    assert f"--namespace={NAMESPACE}" in container["args"]
    # The Lease the operator is told to take, not the binary's default.
    assert f"--lease-name={OPERATOR}" in container["args"]
    assert "--fail-on-warning" not in container["args"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    strict = render({"check": {"failOnWarning": True, "timeout": "30s"}}).get("Pod", CHECK)
    assert "--fail-on-warning" in strict["spec"]["containers"][0]["args"]
    assert "--timeout=30s" in strict["spec"]["containers"][0]["args"]


def test_check_rights_are_read_only_and_never_reach_secrets_or_the_proxy(render):
    rendered = render()
    cluster = rules_of(rendered, "ClusterRole", CHECK)
    own = rules_of(rendered, "Role", CHECK)
    for rule in cluster + own:
        assert set(rule["verbs"]) <= {"get", "list"}, rule
        assert "secrets" not in rule["resources"], rule
        assert not any(r.endswith("/proxy") for r in rule["resources"]), rule
        assert "*" not in rule["resources"] + rule["apiGroups"] + rule["verbs"], rule
    crds = sorted(p.stem for p in (CHART / "crds").glob("*.yaml"))
    (crd_rule,) = [r for r in cluster if "customresourcedefinitions" in r["resources"]]
    assert sorted(crd_rule["resourceNames"]) == crds
    assert crd_rule["verbs"] == ["get"]
    assert verbs_on(cluster, "admissionregistration.k8s.io", "validatingwebhookconfigurations") == {"list"}
    assert verbs_on(cluster, "", "pods") == {"list"}
    assert verbs_on(cluster, "", "configmaps") == {"list"}
    assert verbs_on(cluster, "policybind.io", "aipolicies") == {"list"}
    for kind in ["accesstokens", "approvalrequests", "incidents", "modeldeployments"]:
        assert verbs_on(cluster, "policybind.io", kind) == set()
    (lease,) = [r for r in own if "leases" in r["resources"]]
    assert lease["resourceNames"] == [OPERATOR] and lease["verbs"] == ["get"]
    (keyring,) = [r for r in own if "configmaps" in r["resources"]]
    assert keyring["resourceNames"] == ["policybind-audit-keys"]
    assert verbs_on(own, "discovery.k8s.io", "endpointslices") == {"list"}


def test_check_bindings_name_the_check_account_only(render):
    rendered = render()
    for kind in ["ClusterRoleBinding", "RoleBinding"]:
        binding = rendered.get(kind, CHECK)
        assert binding["roleRef"]["name"] == CHECK
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": CHECK, "namespace": NAMESPACE}
        ]
    assert rendered.get("ServiceAccount", CHECK)


def test_check_can_be_left_out(render):
    names = render({"check": {"enabled": False}}).names()
    assert not [n for n in names if n.endswith(f"/{CHECK}")], names
