"""The PolicyBind chart, linted and rendered by real Helm, every document parsed
into its Kubernetes type and the properties that matter asserted, for the
default values and for non-default ones."""

from __future__ import annotations

import json
import pathlib
import re

import helm_python as helm
import pytest
import yaml

from conftest import CHART, NAMESPACE, RELEASE

FULL = f"{RELEASE}-policybind"
OPERATOR = f"{FULL}-operator"
WEBHOOK = f"{FULL}-webhook"

CERT_MANAGER = {"webhook": {"certificate": {"mode": "cert-manager"}}}
SECRET_MODE = {
    "webhook": {
        "certificate": {"mode": "secret", "secretName": "my-tls", "caBundle": "Q0EgYnVuZGxl"}
    }
}
EVERYTHING_ON = {
    "image": {"digest": "sha256:" + "a" * 64},
    "operator": {"replicas": 2, "extraArgs": ["--extra-flag"]},
    "webhook": {
        "replicas": 3,
        "antiAffinity": "hard",
        "podDisruptionBudget": {"minAvailable": 2},
        "excludeNamespaces": ["monitoring", "istio-system"],
        "resourcesFailurePolicy": "Ignore",
        "optInFailurePolicy": "Fail",
        "timeoutSeconds": 10,
        "certificate": {
            "mode": "cert-manager",
            "certManager": {"issuerName": "corp-ca", "issuerKind": "ClusterIssuer"},
        },
    },
    "sidecar": {"image": "registry.example/policybind:debug", "nativeSidecar": False},
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
        "dashboard": {"namespace": "monitoring"},
    },
    "rbac": {"aggregateToDefaultRoles": True},
    "audit": {"signingKey": {"secretName": "corp-audit-key", "generate": False}},
}
MINIMAL = {
    "webhook": {"podDisruptionBudget": {"enabled": False}, "validatePodTemplates": False},
    "sidecar": {"networkPolicy": False, "rbac": {"bindInEnforcedNamespaces": False}},
    "rbac": {"createUserRoles": False},
    "metrics": {"dashboard": {"enabled": False}},
}
VALUE_SETS = {
    "default": None,
    "cert-manager": CERT_MANAGER,
    "secret": SECRET_MODE,
    "everything-on": EVERYTHING_ON,
    "minimal": MINIMAL,
}
USER_ROLES = ["policybind-admin", "policybind-approver", "policybind-auditor", "policybind-developer"]
OUR_KINDS = {
    "aipolicies", "clusteraipolicies", "modeldeployments", "accesstokens",
    "approvalrequests", "incidents",
}
READ_VERBS = {"get", "list", "watch"}


def webhooks(rendered, kind):
    return {w["name"]: w for w in rendered.get(kind, WEBHOOK)["webhooks"]}


def workload_webhooks(rendered):
    hooks = webhooks(rendered, "ValidatingWebhookConfiguration")
    hooks.update(webhooks(rendered, "MutatingWebhookConfiguration"))
    return {n: w for n, w in hooks.items() if n != "resources.policybind.io"}


def expressions(webhook, key):
    return [e for e in webhook["namespaceSelector"]["matchExpressions"] if e["key"] == key]


def containers(pod_spec):
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def rules_of(rendered, kind, name):
    return rendered.get(kind, name)["rules"]


def verbs_on(rules, group, resource):
    verbs = set()
    for rule in rules:
        if group in rule["apiGroups"] and resource in rule["resources"]:
            verbs |= set(rule["verbs"])
    return verbs


# --- lint and schema ---------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_chart_lints_strictly_without_warnings(values):
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v1.34.0")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def test_lint_reports_a_broken_values_file():
    report = helm.lint(CHART, {"webhook": {"antiAffinity": "sometimes"}}, strict=True,
                       namespace=NAMESPACE)
    assert report["errors"] or any(m["severity"] >= 2 for m in report["messages"])


@pytest.mark.parametrize(
    "values",
    [
        {"webhook": {"replicaz": 2}},
        {"webhook": {"certificate": {"mode": "letsencrypt"}}},
        {"webhook": {"enforcedFailurePolicy": "fail"}},
        {"webhook": {"timeoutSeconds": 31}},
        {"webhook": {"certificate": {"mode": "secret"}}},
        {"logFormat": "xml"},
        {"image": {"digest": "latest"}},
        {"audit": {"sink": "s3"}},
    ],
    ids=["unknown-key", "bad-cert-mode", "lowercase-policy", "timeout-too-long",
         "secret-mode-without-ca", "bad-log-format", "bad-digest", "bad-sink"],
)
def test_schema_refuses_invalid_values(chart, values):
    with pytest.raises(helm.HelmError):
        chart.validate_schema(values)


def _schema_paths(schema, prefix=()):
    for key, sub in schema.get("properties", {}).items():
        yield prefix + (key,)
        yield from _schema_paths(sub, prefix + (key,))


def test_every_value_has_a_comment(chart):
    """Every key the schema declares sits under a comment line in values.yaml."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    defaults = chart.values
    missing = []
    for path in _schema_paths(chart.schema):
        node = defaults
        for key in path[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if not isinstance(node, dict) or path[-1] not in node:
            continue  # declared by the schema but not set by default (global)
        indent = "  " * (len(path) - 1)
        # Find the key under its parents, in order.
        start = 0
        for depth, key in enumerate(path):
            pattern = re.compile(rf"^{'  ' * depth}{re.escape(key)}:")
            start = next(i for i in range(start, len(lines)) if pattern.match(lines[i]))
        previous = lines[start - 1].strip() if start else ""
        if not previous.startswith("#"):
            missing.append(".".join(path))
        assert lines[start].startswith(indent)
    assert missing == []


def test_default_values_match_the_schema(chart):
    chart.validate_schema(None)
    chart.validate_schema(chart.values)


# --- every document is a valid Kubernetes object ---------------------------------


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_document_parses_into_its_kubernetes_type(render, values):
    rendered = render(values)
    assert len(rendered.docs) == len(rendered.typed), "two documents share a kind and name"
    for doc in rendered.docs:
        meta = doc["metadata"]
        assert len(meta["name"]) <= 63
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert meta["labels"]["app.kubernetes.io/part-of"] == "policybind"
        if doc["kind"] not in {"ClusterRole", "ClusterRoleBinding",
                               "ValidatingWebhookConfiguration",
                               "MutatingWebhookConfiguration"}:
            assert meta["namespace"] == (
                "monitoring"
                if doc["kind"] == "ConfigMap" and meta["name"].endswith("-dashboard")
                and values is EVERYTHING_ON else NAMESPACE
            )


def test_default_install_renders_the_expected_objects(render):
    names = render().names()
    expected = {
        f"Deployment/{OPERATOR}", f"Deployment/{WEBHOOK}",
        f"Service/{WEBHOOK}", f"Service/{WEBHOOK}-metrics", f"Service/{OPERATOR}-metrics",
        f"ServiceAccount/{OPERATOR}", f"ServiceAccount/{WEBHOOK}",
        f"ClusterRole/{OPERATOR}", f"ClusterRoleBinding/{OPERATOR}",
        f"Role/{OPERATOR}", f"RoleBinding/{OPERATOR}",
        f"ClusterRole/{WEBHOOK}", f"ClusterRoleBinding/{WEBHOOK}",
        f"Role/{WEBHOOK}", f"RoleBinding/{WEBHOOK}",
        f"ClusterRole/{FULL}-sidecar",
        f"ValidatingWebhookConfiguration/{WEBHOOK}", f"MutatingWebhookConfiguration/{WEBHOOK}",
        f"PodDisruptionBudget/{WEBHOOK}",
        f"ConfigMap/{FULL}-injection", f"ConfigMap/{FULL}-dashboard",
        *(f"ClusterRole/{r}" for r in USER_ROLES),
    }
    assert names == expected


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_no_key_material_is_ever_rendered(render, values):
    """The audit signing key and TLS keys never pass through Helm (or a GitOps
    repository): no Secret is rendered, whatever the values."""
    rendered = render(values)
    assert rendered.kinds("Secret") == []
    assert "PRIVATE KEY" not in json.dumps(rendered.docs)


# --- selectors ----------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_selectors_match_their_pods(render, values):
    rendered = render(values)
    pods = {}
    for deploy in rendered.kinds("Deployment"):
        typed = rendered.typed_get("Deployment", deploy["metadata"]["name"])
        selector = typed.spec.selector.match_labels
        labels = typed.spec.template.metadata.labels
        assert selector.items() <= labels.items()
        pods[deploy["metadata"]["name"]] = labels
    for svc in rendered.kinds("Service"):
        selector = svc["spec"]["selector"]
        matched = [n for n, labels in pods.items() if selector.items() <= labels.items()]
        assert len(matched) == 1, f"Service {svc['metadata']['name']} selects {matched}"
        target_ports = {p["targetPort"] for p in svc["spec"]["ports"]}
        deploy = rendered.get("Deployment", matched[0])
        named = {p["name"] for c in containers(deploy["spec"]["template"]["spec"])
                 for p in c.get("ports", [])}
        assert target_ports <= named
    for pdb in rendered.kinds("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pods[WEBHOOK].items()
        assert not selector.items() <= pods[OPERATOR].items()


def test_webhook_services_route_https_to_the_webhook_port(render):
    svc = render().get("Service", WEBHOOK)
    assert svc["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}
    ]
    ports = {p["name"]: p["containerPort"]
             for p in render().get("Deployment", WEBHOOK)["spec"]["template"]["spec"]
             ["containers"][0]["ports"]}
    assert ports == {"https": 8443, "metrics": 8080, "health": 8081}


# --- webhook configurations -------------------------------------------------------


def test_default_failure_policies(render):
    rendered = render()
    validating = webhooks(rendered, "ValidatingWebhookConfiguration")
    mutating = webhooks(rendered, "MutatingWebhookConfiguration")
    assert validating["resources.policybind.io"]["failurePolicy"] == "Fail"
    assert validating["workloads-enforced.policybind.io"]["failurePolicy"] == "Fail"
    assert validating["workloads-optin.policybind.io"]["failurePolicy"] == "Ignore"
    assert mutating["inject-enforced.policybind.io"]["failurePolicy"] == "Fail"
    assert mutating["inject-optin.policybind.io"]["failurePolicy"] == "Ignore"


def test_failure_policies_follow_values(render):
    rendered = render(EVERYTHING_ON)
    validating = webhooks(rendered, "ValidatingWebhookConfiguration")
    assert validating["resources.policybind.io"]["failurePolicy"] == "Ignore"
    assert validating["workloads-optin.policybind.io"]["failurePolicy"] == "Fail"
    assert all(w["timeoutSeconds"] == 10 for w in validating.values())


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_workload_webhooks_never_see_kube_system_or_the_release_namespace(render, values):
    rendered = render(values)
    extra = ((values or {}).get("webhook", {}).get("excludeNamespaces", []))
    for name, hook in workload_webhooks(rendered).items():
        [names] = expressions(hook, "kubernetes.io/metadata.name")
        assert names["operator"] == "NotIn"
        assert set(names["values"]) == {"kube-system", NAMESPACE, *extra}, name


def test_release_namespace_exclusion_follows_the_namespace(render):
    rendered = render(namespace="ai-governance")
    for hook in workload_webhooks(rendered).values():
        [names] = expressions(hook, "kubernetes.io/metadata.name")
        assert "ai-governance" in names["values"]
        assert hook["clientConfig"]["service"]["namespace"] == "ai-governance"


def test_enforced_and_opt_in_webhooks_select_disjoint_namespaces(render):
    rendered = render()
    for kind, prefix in [("ValidatingWebhookConfiguration", "workloads"),
                         ("MutatingWebhookConfiguration", "inject")]:
        hooks = webhooks(rendered, kind)
        enforced = hooks[f"{prefix}-enforced.policybind.io"]
        opt_in = hooks[f"{prefix}-optin.policybind.io"]
        assert expressions(enforced, "policybind.io/enforce") == [
            {"key": "policybind.io/enforce", "operator": "In", "values": ["true"]}]
        assert expressions(opt_in, "policybind.io/enforce") == [
            {"key": "policybind.io/enforce", "operator": "NotIn", "values": ["true"]}]
        assert "objectSelector" not in enforced
        assert opt_in["objectSelector"] == {"matchExpressions": [
            {"key": "policybind.io/inject", "operator": "In", "values": ["true"]}]}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_mutating_webhook_touches_only_pod_creation(render, values):
    """Our webhook never mutates PolicyBind's own resources (no GitOps drift)."""
    for hook in webhooks(render(values), "MutatingWebhookConfiguration").values():
        assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"],
                                  "operations": ["CREATE"], "resources": ["pods"],
                                  "scope": "Namespaced"}]
        assert hook["reinvocationPolicy"] == "IfNeeded"
        assert hook["clientConfig"]["service"]["path"] == "/mutate/pods"
        [condition] = hook["matchConditions"]
        assert "'policybind.io/inject'" in condition["expression"]
        assert "'false'" in condition["expression"]


def test_resources_webhook_validates_every_policybind_kind(render):
    hook = webhooks(render(), "ValidatingWebhookConfiguration")["resources.policybind.io"]
    [rule] = hook["rules"]
    assert rule["apiGroups"] == ["policybind.io"]
    assert set(rule["resources"]) == OUR_KINDS
    assert rule["operations"] == ["CREATE", "UPDATE"]
    assert hook["clientConfig"]["service"]["path"] == "/validate/resources"


def test_workload_webhook_covers_pod_templates_unless_disabled(render):
    hook = webhooks(render(), "ValidatingWebhookConfiguration")["workloads-enforced.policybind.io"]
    resources = {r for rule in hook["rules"] for r in rule["resources"]}
    assert resources == {"pods", "deployments", "statefulsets", "daemonsets", "replicasets",
                         "jobs", "cronjobs"}
    hook = webhooks(render(MINIMAL), "ValidatingWebhookConfiguration")[
        "workloads-enforced.policybind.io"]
    assert [r for rule in hook["rules"] for r in rule["resources"]] == ["pods"]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_webhooks_are_side_effect_free_on_dry_run_and_speak_v1(render, values):
    rendered = render(values)
    for kind in ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"]:
        for hook in webhooks(rendered, kind).values():
            assert hook["sideEffects"] == "NoneOnDryRun"
            assert hook["admissionReviewVersions"] == ["v1"]
            assert hook["clientConfig"]["service"]["name"] == WEBHOOK
            assert hook["clientConfig"]["service"]["port"] == 443


def test_self_signed_mode_leaves_ca_bundle_to_the_webhook(render):
    rendered = render()
    for kind in ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"]:
        config = rendered.get(kind, WEBHOOK)
        assert "annotations" not in config["metadata"]
        assert all("caBundle" not in h["clientConfig"] for h in config["webhooks"])
    args = rendered.get("Deployment", WEBHOOK)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--self-signed" in args
    assert f"--tls-secret={FULL}-webhook-tls" in args
    assert f"--service-dns={WEBHOOK}.{NAMESPACE}.svc" in args
    assert rendered.kinds("Certificate") == []


def test_cert_manager_mode_injects_ca_and_mounts_the_certificate(render):
    rendered = render(CERT_MANAGER)
    for kind in ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"]:
        config = rendered.get(kind, WEBHOOK)
        assert config["metadata"]["annotations"] == {
            "cert-manager.io/inject-ca-from": f"{NAMESPACE}/{WEBHOOK}"}
    cert = rendered.get("Certificate", WEBHOOK)
    assert cert["spec"]["secretName"] == f"{FULL}-webhook-tls"
    assert f"{WEBHOOK}.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    assert cert["spec"]["issuerRef"] == {"name": f"{FULL}-selfsigned", "kind": "Issuer",
                                         "group": "cert-manager.io"}
    assert rendered.get("Issuer", f"{FULL}-selfsigned")["spec"] == {"selfSigned": {}}
    pod = rendered.get("Deployment", WEBHOOK)["spec"]["template"]["spec"]
    assert "--self-signed" not in pod["containers"][0]["args"]
    assert {"name": "tls", "secret": {"secretName": f"{FULL}-webhook-tls"}} in pod["volumes"]


def test_cert_manager_mode_can_use_an_existing_cluster_issuer(render):
    rendered = render(EVERYTHING_ON)
    assert rendered.kinds("Issuer") == []
    assert rendered.get("Certificate", WEBHOOK)["spec"]["issuerRef"]["kind"] == "ClusterIssuer"


def test_secret_mode_uses_the_given_ca_bundle(render):
    rendered = render(SECRET_MODE)
    for kind in ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"]:
        for hook in rendered.get(kind, WEBHOOK)["webhooks"]:
            assert hook["clientConfig"]["caBundle"] == "Q0EgYnVuZGxl"
    pod = rendered.get("Deployment", WEBHOOK)["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "my-tls"}} in pod["volumes"]
    assert rendered.kinds("Certificate") == []


def test_secret_mode_without_ca_bundle_fails_to_render(chart):
    with pytest.raises(helm.HelmError):
        chart.render(values={"webhook": {"certificate": {"mode": "secret", "secretName": "x"}}},
                     name=RELEASE, namespace=NAMESPACE)


# --- deployments ------------------------------------------------------------------


def test_webhook_runs_two_replicas_spread_with_a_disruption_budget(render):
    rendered = render()
    deploy = rendered.typed_get("Deployment", WEBHOOK)
    assert deploy.spec.replicas == 2
    assert deploy.spec.strategy.rolling_update.max_unavailable == 0
    anti = deploy.spec.template.spec.affinity.pod_anti_affinity
    assert anti.required_during_scheduling_ignored_during_execution is None
    [term] = anti.preferred_during_scheduling_ignored_during_execution
    assert term.pod_affinity_term.topology_key == "kubernetes.io/hostname"
    assert term.pod_affinity_term.label_selector.match_labels == \
        deploy.spec.selector.match_labels
    pdb = rendered.typed_get("PodDisruptionBudget", WEBHOOK)
    assert pdb.spec.min_available == 1


def test_hard_anti_affinity_and_larger_budget(render):
    rendered = render(EVERYTHING_ON)
    deploy = rendered.typed_get("Deployment", WEBHOOK)
    assert deploy.spec.replicas == 3
    anti = deploy.spec.template.spec.affinity.pod_anti_affinity
    assert anti.preferred_during_scheduling_ignored_during_execution is None
    [term] = anti.required_during_scheduling_ignored_during_execution
    assert term.topology_key == "kubernetes.io/hostname"
    assert rendered.typed_get("PodDisruptionBudget", WEBHOOK).spec.min_available == 2


def test_disruption_budget_can_be_disabled(render):
    assert render(MINIMAL).kinds("PodDisruptionBudget") == []


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_pods_and_containers_run_locked_down(render, values):
    rendered = render(values)
    for deploy in rendered.kinds("Deployment"):
        typed = rendered.typed_get("Deployment", deploy["metadata"]["name"])
        pod = typed.spec.template.spec
        assert pod.security_context.run_as_non_root is True
        assert pod.security_context.run_as_user != 0
        assert pod.security_context.seccomp_profile.type == "RuntimeDefault"
        assert pod.host_network is None and pod.host_pid is None
        assert pod.service_account_name == deploy["metadata"]["name"]
        for container in pod.containers:
            sc = container.security_context
            assert sc.allow_privilege_escalation is False
            assert sc.read_only_root_filesystem is True
            assert sc.run_as_non_root is True
            assert sc.capabilities.drop == ["ALL"]
            assert sc.capabilities.add is None
            assert sc.privileged is None
            assert container.resources.requests and container.resources.limits["memory"]
            assert container.liveness_probe.http_get.path == "/healthz"
            assert container.readiness_probe.http_get.path == "/readyz"


def test_each_container_runs_its_role_of_the_one_binary(render):
    rendered = render()
    operator = rendered.get("Deployment", OPERATOR)["spec"]["template"]["spec"]["containers"][0]
    webhook = rendered.get("Deployment", WEBHOOK)["spec"]["template"]["spec"]["containers"][0]
    assert operator["image"] == webhook["image"] == "ghcr.io/policybind/policybind:0.1.0"
    assert "command" not in operator and "command" not in webhook  # the image's entrypoint
    assert operator["args"][0] == "controller"
    assert webhook["args"][0] == "webhook"
    assert "--leader-election=true" in operator["args"]
    # The Role allows exactly this Lease name.
    assert f"--leader-election-lease={OPERATOR}" in operator["args"]
    assert f"--audit-key-secret={FULL}-audit-signing-key" in operator["args"]
    assert f"--sidecar-cluster-role={FULL}-sidecar" in operator["args"]
    env = {e["name"]: e for e in operator["env"]}
    assert env["POLICYBIND_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POLICYBIND_LOG_FORMAT"]["value"] == "json"


def test_image_digest_and_extra_args(render):
    rendered = render(EVERYTHING_ON)
    operator = rendered.get("Deployment", OPERATOR)["spec"]["template"]["spec"]["containers"][0]
    assert operator["image"] == "ghcr.io/policybind/policybind@sha256:" + "a" * 64
    assert operator["args"][-1] == "--extra-flag"
    assert "--audit-key-secret=corp-audit-key" in operator["args"]
    assert "--audit-key-generate=false" in operator["args"]


def test_injection_settings_reach_the_webhook(render):
    rendered = render(EVERYTHING_ON)
    config = yaml.safe_load(rendered.get("ConfigMap", f"{FULL}-injection")["data"]["injection.yaml"])
    assert config["image"] == "registry.example/policybind:debug"
    assert config["nativeSidecar"] is False
    assert config["listenPort"] == 8480
    assert config["securityContext"]["allowPrivilegeEscalation"] is False
    assert config["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    default = yaml.safe_load(render().get("ConfigMap", f"{FULL}-injection")["data"]["injection.yaml"])
    assert default["image"] == "ghcr.io/policybind/policybind:0.1.0"
    webhook = render().get("Deployment", WEBHOOK)["spec"]["template"]
    assert "checksum/injection" in webhook["metadata"]["annotations"]
    assert webhook["metadata"]["annotations"]["checksum/injection"] != \
        rendered.get("Deployment", WEBHOOK)["spec"]["template"]["metadata"]["annotations"][
            "checksum/injection"]


# --- RBAC -------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_no_wildcards_or_escalation_verbs(render, values):
    rendered = render(values)
    for doc in rendered.kinds("ClusterRole") + rendered.kinds("Role"):
        for rule in doc.get("rules", []):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), (doc["metadata"]["name"], rule)
            assert not {"escalate", "impersonate"} & set(rule["verbs"])
            if "bind" in rule["verbs"]:
                assert rule["resources"] == ["clusterroles"]
                assert rule["resourceNames"] == [f"{FULL}-sidecar"]


def test_every_rbac_rule_in_the_templates_is_justified():
    """Each rule of our own roles has a comment right above it saying why."""
    for name in ["operator-rbac.yaml", "webhook-rbac.yaml", "sidecar-rbac.yaml",
                 "user-roles.yaml"]:
        lines = (CHART / "templates" / name).read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("- apiGroups:"):
                j = i - 1
                while lines[j].strip().startswith("{{"):  # template guards
                    j -= 1
                assert lines[j].strip().startswith("#"), \
                    f"{name}:{i + 1} has no justification comment"


def test_operator_rbac_is_what_it_needs(render):
    rules = rules_of(render(), "ClusterRole", OPERATOR)
    for kind in OUR_KINDS:
        assert verbs_on(rules, "policybind.io", kind) >= READ_VERBS | {"patch"}
        assert verbs_on(rules, "policybind.io", f"{kind}/status") == {"get", "patch"}
        assert "delete" not in verbs_on(rules, "policybind.io", kind)
    assert verbs_on(rules, "policybind.io", "approvalrequests") >= {"create"}
    assert verbs_on(rules, "policybind.io", "incidents") >= {"create"}
    assert "create" not in verbs_on(rules, "policybind.io", "aipolicies")
    assert verbs_on(rules, "", "secrets") == {"get", "list", "watch", "create", "patch"}
    assert verbs_on(rules, "", "namespaces") == READ_VERBS
    assert verbs_on(rules, "", "pods") == READ_VERBS
    lease = rules_of(render(), "Role", OPERATOR)
    assert verbs_on(lease, "coordination.k8s.io", "leases") == {"create", "get", "update"}
    named = [r for r in lease if "resourceNames" in r]
    assert named and all(r["resourceNames"] == [OPERATOR] for r in named)


def test_operator_rbac_shrinks_with_features(render):
    rules = rules_of(render(MINIMAL), "ClusterRole", OPERATOR)
    assert verbs_on(rules, "rbac.authorization.k8s.io", "rolebindings") == set()
    assert verbs_on(rules, "rbac.authorization.k8s.io", "clusterroles") == set()
    assert verbs_on(rules, "networking.k8s.io", "networkpolicies") == set()
    args = render(MINIMAL).get("Deployment", OPERATOR)["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert not any(a.startswith("--sidecar-cluster-role") for a in args)


def test_webhook_rbac_is_read_mostly(render):
    rendered = render()
    rules = rules_of(rendered, "ClusterRole", WEBHOOK)
    for kind in OUR_KINDS:
        assert verbs_on(rules, "policybind.io", kind) == READ_VERBS
    assert verbs_on(rules, "authorization.k8s.io", "subjectaccessreviews") == {"create"}
    configs = [r for r in rules if "admissionregistration.k8s.io" in r["apiGroups"]]
    assert configs and all(r["resourceNames"] == [WEBHOOK] for r in configs)
    assert verbs_on(rules, "", "secrets") == set()
    namespaced = rules_of(rendered, "Role", WEBHOOK)
    for rule in namespaced:
        if rule["resources"] == ["secrets"] and rule["verbs"] != ["create"]:
            assert rule["resourceNames"], rule


def test_webhook_rbac_in_cert_manager_mode_cannot_touch_configurations(render):
    rendered = render(CERT_MANAGER)
    rules = rules_of(rendered, "ClusterRole", WEBHOOK)
    assert not [r for r in rules if "admissionregistration.k8s.io" in r["apiGroups"]]
    secrets = [r for r in rules_of(rendered, "Role", WEBHOOK) if "secrets" in r["resources"]]
    assert secrets == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                        "resourceNames": [f"{FULL}-audit-signing-key"]}]


def test_sidecar_role_reads_bundles_and_appends_only(render):
    rules = rules_of(render(), "ClusterRole", f"{FULL}-sidecar")
    assert verbs_on(rules, "", "configmaps") == {"get", "list", "watch", "create", "patch"}
    assert all(r["resources"] == ["configmaps"] for r in rules)


def test_bindings_point_at_the_right_service_accounts(render):
    rendered = render()
    for kind in ["ClusterRoleBinding", "RoleBinding"]:
        for binding in rendered.kinds(kind):
            name = binding["metadata"]["name"]
            assert binding["roleRef"]["name"] == name
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name,
                                            "namespace": NAMESPACE}]


def test_user_roles(render):
    rendered = render()
    admin = rules_of(rendered, "ClusterRole", "policybind-admin")
    approver = rules_of(rendered, "ClusterRole", "policybind-approver")
    auditor = rules_of(rendered, "ClusterRole", "policybind-auditor")
    developer = rules_of(rendered, "ClusterRole", "policybind-developer")
    for kind in OUR_KINDS:
        assert {"create", "update", "delete"} <= verbs_on(admin, "policybind.io", kind)
        assert verbs_on(auditor, "policybind.io", kind) == READ_VERBS
        assert verbs_on(auditor, "policybind.io", f"{kind}/status") == READ_VERBS
    assert "approve" in verbs_on(admin, "policybind.io", "approvalrequests")
    assert verbs_on(approver, "policybind.io", "approvalrequests") == \
        READ_VERBS | {"update", "patch", "approve"}
    assert verbs_on(approver, "policybind.io", "modeldeployments") == READ_VERBS
    assert "create" not in verbs_on(approver, "policybind.io", "approvalrequests")
    for rule in auditor:
        assert set(rule["verbs"]) <= READ_VERBS
    assert verbs_on(auditor, "", "configmaps") == READ_VERBS  # audit segments
    assert verbs_on(auditor, "", "secrets") == set()
    assert "create" in verbs_on(developer, "policybind.io", "accesstokens")
    assert verbs_on(developer, "policybind.io", "aipolicies") == READ_VERBS
    assert verbs_on(developer, "policybind.io", "clusteraipolicies") == READ_VERBS
    assert "approve" not in verbs_on(developer, "policybind.io", "approvalrequests")
    assert verbs_on(developer, "policybind.io", "approvalrequests") == READ_VERBS
    assert verbs_on(developer, "", "secrets") == set()
    for name in USER_ROLES:
        labels = rendered.get("ClusterRole", name)["metadata"]["labels"]
        assert not any(k.startswith("rbac.authorization.k8s.io/aggregate") for k in labels)


def test_user_roles_can_aggregate_or_be_left_out(render):
    rendered = render(EVERYTHING_ON)
    label = lambda name: {k for k in rendered.get("ClusterRole", name)["metadata"]["labels"]
                          if k.startswith("rbac.authorization.k8s.io/aggregate")}
    assert label("policybind-admin") == {"rbac.authorization.k8s.io/aggregate-to-admin"}
    assert label("policybind-developer") == {"rbac.authorization.k8s.io/aggregate-to-edit"}
    assert label("policybind-auditor") == {"rbac.authorization.k8s.io/aggregate-to-view"}
    assert label("policybind-approver") == set()
    names = {d["metadata"]["name"] for d in render(MINIMAL).kinds("ClusterRole")}
    assert not names & set(USER_ROLES)


# --- metrics, dashboard, notes ------------------------------------------------------


def test_service_monitor_only_when_asked_and_it_scrapes_both_roles(render):
    assert render().kinds("ServiceMonitor") == []
    rendered = render(EVERYTHING_ON)
    [monitor] = rendered.kinds("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [s["metadata"]["name"] for s in rendered.kinds("Service")
               if selector.items() <= s["metadata"]["labels"].items()]
    assert sorted(scraped) == sorted([f"{OPERATOR}-metrics", f"{WEBHOOK}-metrics"])
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_dashboard_shows_what_operators_watch(render):
    rendered = render()
    config = rendered.get("ConfigMap", f"{FULL}-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config["data"]["policybind.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "policybind.json").read_text())
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ["decisions", "denials by code", "latency", "budget", "audit lag"]:
        assert topic in titles, topic
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    assert "sum by (code)" in exprs
    assert "histogram_quantile(0.99" in exprs
    assert render(MINIMAL).kinds("ConfigMap") == [
        render(MINIMAL).get("ConfigMap", f"{FULL}-injection")]


def test_notes_tell_the_next_step(render):
    notes = render().notes
    assert "kubectl label namespace <your-namespace> policybind.io/enforce=true" in notes
    assert f"rollout status deployment/{WEBHOOK}" in notes
    assert "policybind-developer" in notes
    assert "certificate" in render(CERT_MANAGER).notes
    assert "no user ClusterRoles" in render(MINIMAL).notes


# --- CRDs --------------------------------------------------------------------------


def test_crds_parse_and_cover_every_kind(chart):
    crds = chart.crds
    if not crds:
        pytest.skip("charts/policybind/crds/ is empty: run "
                    "`cargo run -p policybind -- crds --write charts/policybind/crds`")
    from conftest import parse_typed  # noqa: PLC0415
    kinds = set()
    for entry in crds:
        for doc in yaml.safe_load_all(entry["data"]):
            if not doc:
                continue
            crd = parse_typed(doc)
            assert crd.spec.group == "policybind.io"
            assert [v.name for v in crd.spec.versions] == ["v1alpha1"]
            assert crd.spec.versions[0].subresources.status is not None
            kinds.add(crd.spec.names.plural)
    assert kinds == OUR_KINDS
    # CRDs are not templates: Helm installs them first and never deletes them.
    assert not any(t["name"].startswith("templates/crd") for t in chart.templates)


def test_chart_file_layout():
    root = pathlib.Path(CHART)
    for name in ["Chart.yaml", "values.yaml", "values.schema.json", "templates/NOTES.txt",
                 "dashboards/policybind.json", ".helmignore"]:
        assert (root / name).is_file(), name
