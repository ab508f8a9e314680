"""The PolicyBind chart, linted and rendered by real Helm, every document parsed
into its Kubernetes type and the properties that matter asserted, for the
default values and for non-default ones."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import re
import subprocess

import helm_python as helm
import pytest
import yaml

from conftest import CHART, NAMESPACE, RELEASE

FULL = f"{RELEASE}-policybind"
OPERATOR = f"{FULL}-operator"
WEBHOOK = f"{FULL}-webhook"
SIDECAR = f"{FULL}-sidecar"
WORKLOADS = f"{FULL}-workloads"
OPERATOR_KEY = f"{FULL}-operator-key"
WEBHOOK_KEY = f"{FULL}-webhook-key"
OPERATOR_USER = f"system:serviceaccount:{NAMESPACE}:{OPERATOR}"
WEBHOOK_USER = f"system:serviceaccount:{NAMESPACE}:{WEBHOOK}"

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
        "auditFailurePolicy": "Fail",
        "timeoutSeconds": 10,
        "undeclaredModelServers": "deny",
        "modelServerImages": ["registry.example.com/llm/*"],
        "certificate": {
            "mode": "cert-manager",
            "certManager": {"issuerName": "corp-ca", "issuerKind": "ClusterIssuer"},
        },
    },
    "sidecar": {
        "image": "registry.example/policybind:debug",
        "style": "regular",
        "modelPort": 18000,
        "resources": {"requests": {"cpu": "20m", "memory": "16Mi"},
                      "limits": {"cpu": "1", "memory": "64Mi"}},
        "extraEnv": {"POLICYBIND_AUDIT_FLUSH_MS": "500"},
    },
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
        "podMonitor": {"enabled": True},
        "dashboard": {"namespace": "monitoring"},
    },
    "rbac": {"aggregateToDefaultRoles": True},
    "audit": {"signingKey": {"existingSecrets": {"operator": "corp-operator-key",
                                                 "webhook": "corp-webhook-key"}}},
    "gateway": {
        "enabled": True,
        "replicas": 3,
        "providerSecrets": ["openai-credentials", "anthropic-credentials"],
        "upstreamCA": {"configMap": "corp-ca"},
        "decisionApi": {"enabled": True},
        "upstream": "http://vllm.models.svc:8000",
        "extraArgs": ["--max-concurrency=4096"],
    },
}
MINIMAL = {
    "operator": {"leaderElection": False},
    "webhook": {"podDisruptionBudget": {"enabled": False}},
    "rbac": {"createUserRoles": False},
    "metrics": {"dashboard": {"enabled": False}},
    "audit": {"signingKey": {"create": False}},
    "admissionPolicy": {"enabled": False},
}
SELF_SIGNED = {
    "webhook": {"replicas": 1, "certificate": {"mode": "self-signed"},
                "podDisruptionBudget": {"enabled": False}},
}
VALUE_SETS = {
    "default": None,
    "self-signed": SELF_SIGNED,
    "cert-manager": CERT_MANAGER,
    "secret": SECRET_MODE,
    "everything-on": EVERYTHING_ON,
    "minimal": MINIMAL,
}
USER_ROLES = ["policybind-admin", "policybind-approver", "policybind-auditor", "policybind-developer"]
OUR_KINDS = {
    "aipolicies", "clusteraipolicies", "modeldeployments", "accesstokens",
    "approvalrequests", "incidents", "evidencegates", "aibudgets",
}
# Kinds the webhook validates (Incidents are written by the operator only;
# EvidenceGates have no cross-object rules, their schema holds them; AIBudgets
# are compiled by the webhook like tokens).
VALIDATED_KINDS = OUR_KINDS - {"incidents", "evidencegates"}
EXCLUDED = {"kube-system", "kube-public", NAMESPACE}
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
        {"webhook": {"certificate": {"mode": "self-signed"}}},
        {"logFormat": "xml"},
        {"image": {"digest": "latest"}},
        {"webhook": {"undeclaredModelServers": "block"}},
        {"sidecar": {"style": "sidecar"}},
        {"sidecar": {"portName": "a-port-name-longer-than-15"}},
        {"sidecar": {"resources": {"requests": {"memory": None}}}},
    ],
    ids=["unknown-key", "bad-cert-mode", "lowercase-policy", "timeout-too-long",
         "secret-mode-without-ca", "self-signed-with-two-replicas", "bad-log-format", "bad-digest", "bad-undeclared-mode",
         "bad-sidecar-style", "long-port-name", "sidecar-request-without-memory"],
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
                               "MutatingWebhookConfiguration",
                               "ValidatingAdmissionPolicy",
                               "ValidatingAdmissionPolicyBinding", "Namespace"}:
            if meta["labels"].get("app.kubernetes.io/component") == "gateway":
                expected = "ai-gateway"  # the gateway's own enforced namespace
            elif doc["kind"] == "ConfigMap" and meta["name"].endswith("-dashboard") \
                    and values is EVERYTHING_ON:
                expected = "monitoring"
            else:
                expected = NAMESPACE
            assert meta["namespace"] == expected


def test_default_install_renders_the_expected_objects(render):
    names = render().names()
    expected = {
        f"Deployment/{OPERATOR}", f"Deployment/{WEBHOOK}",
        f"Service/{WEBHOOK}", f"Service/{WEBHOOK}-metrics", f"Service/{OPERATOR}-metrics",
        f"ServiceAccount/{OPERATOR}", f"ServiceAccount/{WEBHOOK}",
        # `helm test`: policybind check under its read-only account (test_check.py).
        f"ServiceAccount/{FULL}-check", f"ClusterRole/{FULL}-check",
        f"ClusterRoleBinding/{FULL}-check", f"Role/{FULL}-check", f"RoleBinding/{FULL}-check",
        f"Pod/{FULL}-check",
        f"ClusterRole/{OPERATOR}", f"ClusterRoleBinding/{OPERATOR}",
        f"Role/{OPERATOR}", f"RoleBinding/{OPERATOR}",
        f"ClusterRole/{WEBHOOK}", f"ClusterRoleBinding/{WEBHOOK}",
        f"ClusterRole/{SIDECAR}",
        f"ValidatingAdmissionPolicy/{WORKLOADS}", f"ValidatingAdmissionPolicyBinding/{WORKLOADS}",
        f"Role/{WEBHOOK}-audit", f"RoleBinding/{WEBHOOK}-audit",
        # Its admission summary, for the operator's Reports.
        f"Role/{WEBHOOK}-admission-summary", f"RoleBinding/{WEBHOOK}-admission-summary",
        f"ValidatingWebhookConfiguration/{WEBHOOK}", f"MutatingWebhookConfiguration/{WEBHOOK}",
        f"PodDisruptionBudget/{WEBHOOK}",
        f"Secret/{OPERATOR_KEY}", f"Secret/{WEBHOOK_KEY}", f"Secret/{FULL}-webhook-tls",
        f"ConfigMap/{FULL}-dashboard",
        *(f"ClusterRole/{r}" for r in USER_ROLES),
    }
    assert names == expected


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_only_the_signing_key_and_the_helm_mode_certificate_are_rendered(render, values):
    rendered = render(values)
    helm_mode = rendered.get("Deployment", WEBHOOK) and \
        ((values or {}).get("webhook", {}).get("certificate", {}).get("mode", "helm") == "helm")
    for secret in rendered.kinds("Secret"):
        if secret["metadata"]["name"] == f"{FULL}-webhook-tls":
            assert helm_mode
            assert secret["type"] == "kubernetes.io/tls"
            assert set(secret["data"]) == {"ca.crt", "tls.crt", "tls.key"}
        else:
            assert secret["metadata"]["name"] in {OPERATOR_KEY, WEBHOOK_KEY}
            assert set(secret["data"]) == {"signing-key"}
            assert secret["type"] == "Opaque"


def test_helm_mode_certificate_matches_ca_bundle_and_service(render):
    from cryptography import x509  # noqa: PLC0415
    from cryptography.x509.oid import ExtensionOID  # noqa: PLC0415

    rendered = render()
    secret = rendered.get("Secret", f"{FULL}-webhook-tls")
    ca_bundle = secret["data"]["ca.crt"]
    for kind in ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"]:
        for hook in rendered.get(kind, WEBHOOK)["webhooks"]:
            assert hook["clientConfig"]["caBundle"] == ca_bundle
    ca = x509.load_pem_x509_certificate(base64.b64decode(ca_bundle))
    leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_oid(
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value.get_values_for_type(x509.DNSName)
    assert f"{WEBHOOK}.{NAMESPACE}.svc" in names
    days = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days
    assert 3649 <= days <= 3650
    pod = rendered.get("Deployment", WEBHOOK)["spec"]["template"]["spec"]
    assert "--tls-cert=/etc/policybind/tls/tls.crt" in pod["containers"][0]["args"]
    assert {"name": "tls", "secret": {"secretName": f"{FULL}-webhook-tls"}} in pod["volumes"]
    # No runtime writer of caBundle: the webhook may not touch its configurations.
    rules = rules_of(rendered, "ClusterRole", WEBHOOK)
    assert not [r for r in rules if "admissionregistration.k8s.io" in r["apiGroups"]]


def test_audit_signing_keys_are_one_per_writer_generated_once_and_kept(render):
    rendered = render()
    keys = {}
    for name, writer in [(OPERATOR_KEY, OPERATOR), (WEBHOOK_KEY, WEBHOOK)]:
        secret = rendered.get("Secret", name)
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        pem = base64.b64decode(secret["data"]["signing-key"]).decode()
        assert pem.startswith("-----BEGIN PRIVATE KEY-----\n")
        der = base64.b64decode("".join(pem.strip().splitlines()[1:-1]))
        # PKCS#8 Ed25519: 48 bytes, algorithm OID 1.3.101.112 (06 03 2b 65 70).
        assert len(der) == 48 and bytes.fromhex("06032b6570") in der
        keys[name] = der
        # Mounted into its own writer's pod, and no other.
        pod = rendered.get("Deployment", writer)["spec"]["template"]["spec"]
        [volume] = [v for v in pod["volumes"] if v["name"] == "audit-signing-key"]
        assert volume["secret"]["secretName"] == name
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["POLICYBIND_AUDIT_KEY"] == "/etc/policybind/audit/signing-key"
    assert keys[OPERATOR_KEY] != keys[WEBHOOK_KEY], "two writers, two keys"


def test_audit_signing_keys_can_be_brought_or_left_out(render):
    rendered = render(EVERYTHING_ON)
    assert rendered.kinds("Secret") == []
    for writer, name in [(OPERATOR, "corp-operator-key"), (WEBHOOK, "corp-webhook-key")]:
        pod = rendered.get("Deployment", writer)["spec"]["template"]["spec"]
        [volume] = [v for v in pod["volumes"] if v["name"] == "audit-signing-key"]
        assert volume["secret"]["secretName"] == name
    # One brought, the other generated.
    half = render({"audit": {"signingKey": {"existingSecrets": {"webhook": "corp-webhook-key"}}}})
    assert [s["metadata"]["name"] for s in half.kinds("Secret")
            if s["metadata"]["name"] != f"{FULL}-webhook-tls"] == [OPERATOR_KEY]
    minimal = render(MINIMAL)
    assert [s["metadata"]["name"] for s in minimal.kinds("Secret")] == [f"{FULL}-webhook-tls"]
    pod = minimal.get("Deployment", OPERATOR)["spec"]["template"]["spec"]
    assert "volumes" not in pod
    assert "No operator audit key" in minimal.notes


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
        matched = [n for n, labels in pods.items() if selector.items() <= labels.items()]
        assert matched == [pdb["metadata"]["name"]], f"PDB {pdb['metadata']['name']} selects {matched}"


def test_webhook_services_route_https_to_the_webhook_port(render):
    svc = render().get("Service", WEBHOOK)
    assert svc["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}
    ]
    ports = {p["name"]: p["containerPort"]
             for p in render().get("Deployment", WEBHOOK)["spec"]["template"]["spec"]
             ["containers"][0]["ports"]}
    assert ports == {"https": 8443, "metrics": 8080}


# --- webhook configurations -------------------------------------------------------


def test_default_failure_policies(render):
    rendered = render()
    validating = webhooks(rendered, "ValidatingWebhookConfiguration")
    mutating = webhooks(rendered, "MutatingWebhookConfiguration")
    assert {n: w["failurePolicy"] for n, w in validating.items()} == {
        "resources.policybind.io": "Fail",
        "workloads-enforced.policybind.io": "Fail",
        "workloads.policybind.io": "Ignore",
    }
    assert {n: w["failurePolicy"] for n, w in mutating.items()} == {
        "inject-enforced.policybind.io": "Fail",
        "inject.policybind.io": "Ignore",
    }


def test_failure_policies_follow_values(render):
    rendered = render(EVERYTHING_ON)
    validating = webhooks(rendered, "ValidatingWebhookConfiguration")
    assert validating["resources.policybind.io"]["failurePolicy"] == "Ignore"
    assert validating["workloads.policybind.io"]["failurePolicy"] == "Fail"
    assert all(w["timeoutSeconds"] == 10 for w in validating.values())


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_workload_webhooks_never_see_system_namespaces_or_the_release_namespace(render, values):
    rendered = render(values)
    extra = ((values or {}).get("webhook", {}).get("excludeNamespaces", []))
    for name, hook in workload_webhooks(rendered).items():
        [names] = expressions(hook, "kubernetes.io/metadata.name")
        assert names["operator"] == "NotIn"
        assert set(names["values"]) == EXCLUDED | set(extra), name


def test_release_namespace_exclusion_follows_the_namespace(render):
    rendered = render(namespace="ai-governance")
    for hook in workload_webhooks(rendered).values():
        [names] = expressions(hook, "kubernetes.io/metadata.name")
        assert "ai-governance" in names["values"]
        assert hook["clientConfig"]["service"]["namespace"] == "ai-governance"


def test_enforced_and_other_webhooks_select_disjoint_namespaces(render):
    rendered = render()
    for kind, prefix in [("ValidatingWebhookConfiguration", "workloads"),
                         ("MutatingWebhookConfiguration", "inject")]:
        hooks = webhooks(rendered, kind)
        enforced = hooks[f"{prefix}-enforced.policybind.io"]
        other = hooks[f"{prefix}.policybind.io"]
        assert expressions(enforced, "policybind.io/enforce") == [
            {"key": "policybind.io/enforce", "operator": "In", "values": ["true"]}]
        assert expressions(other, "policybind.io/enforce") == [
            {"key": "policybind.io/enforce", "operator": "NotIn", "values": ["true"]}]
        assert "objectSelector" not in enforced
        assert "objectSelector" not in other
    # Validation sees every workload (audit-only outside enforced namespaces);
    # injection only pods that declare a model, and outside enforced namespaces
    # only those that opt in, by label or annotation (matchConditions: CEL).
    validating = webhooks(rendered, "ValidatingWebhookConfiguration")
    assert all("matchConditions" not in hook for hook in validating.values())
    mutating = webhooks(rendered, "MutatingWebhookConfiguration")
    conditions = lambda hook: {c["name"]: c["expression"] for c in hook["matchConditions"]}
    enforced = conditions(mutating["inject-enforced.policybind.io"])
    other = conditions(mutating["inject.policybind.io"])
    assert set(enforced) == {"declares-model"}
    assert set(other) == {"declares-model", "opted-in"}
    assert "'policybind.io/model' in object.metadata.annotations" in other["declares-model"]
    assert "'policybind.io/model' in object.metadata.labels" in other["declares-model"]
    for place in ["labels", "annotations"]:
        assert (f"object.metadata.{place}['policybind.io/inject'].trim().lowerAscii() in "
                "['true', 'enabled']") in other["opted-in"]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_mutating_webhook_touches_only_pod_creation(render, values):
    """Our webhook never mutates PolicyBind's own resources (no GitOps drift)."""
    for hook in webhooks(render(values), "MutatingWebhookConfiguration").values():
        assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"],
                                  "operations": ["CREATE"], "resources": ["pods"],
                                  "scope": "Namespaced"}]
        assert hook["reinvocationPolicy"] == "IfNeeded"
        assert hook["clientConfig"]["service"]["path"] == "/mutate"


def test_resources_webhook_validates_policybind_kinds_everywhere(render):
    hook = webhooks(render(), "ValidatingWebhookConfiguration")["resources.policybind.io"]
    [rule] = hook["rules"]
    assert rule["apiGroups"] == ["policybind.io"]
    assert set(rule["resources"]) == VALIDATED_KINDS
    assert rule["operations"] == ["CREATE", "UPDATE"]
    assert rule["scope"] == "*"
    assert "namespaceSelector" not in hook
    assert hook["clientConfig"]["service"]["path"] == "/validate"


def test_workload_webhooks_cover_pods_and_pod_templates(render):
    for name, hook in webhooks(render(), "ValidatingWebhookConfiguration").items():
        if name == "resources.policybind.io":
            continue
        resources = {r for rule in hook["rules"] for r in rule["resources"]}
        # pods/ephemeralcontainers: `kubectl debug` may not mount the audit key.
        assert resources == {"pods", "pods/ephemeralcontainers", "deployments", "statefulsets",
                             "daemonsets", "replicasets", "jobs", "cronjobs"}
        assert hook["clientConfig"]["service"]["path"] == "/validate"


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_webhooks_declare_side_effects_and_speak_v1(render, values):
    rendered = render(values)
    for kind in ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"]:
        for hook in webhooks(rendered, kind).values():
            # Every review is an audit record, dry runs excepted.
            assert hook["sideEffects"] == "NoneOnDryRun"
            assert hook["matchPolicy"] == "Equivalent"
            assert hook["admissionReviewVersions"] == ["v1"]
            assert hook["clientConfig"]["service"]["name"] == WEBHOOK
            assert hook["clientConfig"]["service"]["port"] == 443


def _policybind_binary():
    """The built binary, in CARGO_TARGET_DIR when set (as cargo puts it)."""
    target = os.environ.get("CARGO_TARGET_DIR") or CHART.parent.parent / "target"
    binary = pathlib.Path(target) / "debug" / "policybind"
    return binary if binary.is_file() else None


@pytest.mark.skipif(_policybind_binary() is None,
                    reason="target/debug/policybind not built (cargo build -p policybind)")
def test_chart_webhooks_match_what_the_webhook_registers_itself(render):
    """`policybind webhook configs` prints the configurations the webhook
    registers by itself (webhook/src/configs.rs); the chart must agree."""
    out = subprocess.run(
        [str(_policybind_binary()), "webhook", "configs", f"--namespace={NAMESPACE}",
         f"--service-name={WEBHOOK}", f"--configuration-name={WEBHOOK}"],
        check=True, capture_output=True, text=True).stdout
    theirs = {d["kind"]: d for d in yaml.safe_load_all(out) if d}
    ours = render()
    fields = ["rules", "namespaceSelector", "objectSelector", "failurePolicy", "sideEffects",
              "matchPolicy", "timeoutSeconds", "reinvocationPolicy", "admissionReviewVersions",
              "matchConditions"]

    def normal(hook):
        out = {f: hook.get(f) for f in fields}
        out["service"] = hook["clientConfig"].get("service")
        for rule in out["rules"] or []:
            rule["resources"] = sorted(rule["resources"])
        return out

    for kind in ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"]:
        mine = {h["name"]: normal(h) for h in ours.get(kind, WEBHOOK)["webhooks"]}
        registered = {h["name"]: normal(h) for h in theirs[kind]["webhooks"]}
        assert mine == registered, kind


@pytest.mark.skipif(_policybind_binary() is None,
                    reason="target/debug/policybind not built (cargo build -p policybind)")
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_binary_accepts_every_rendered_flag(render, values):
    """Each container's args, handed to the real `policybind` with `--help`
    appended: clap refuses an unknown flag or a bad value before it prints help."""
    rendered = render(values)
    for deploy in rendered.kinds("Deployment"):
        for container in deploy["spec"]["template"]["spec"]["containers"]:
            args = [a for a in container["args"] if a != "--extra-flag"]
            result = subprocess.run([str(_policybind_binary()), *args, "--help"],
                                    capture_output=True, text=True)
            assert result.returncode == 0, (deploy["metadata"]["name"], result.stderr)


def test_self_signed_mode_leaves_ca_bundle_to_the_webhook(render):
    rendered = render(SELF_SIGNED)
    for kind in ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"]:
        config = rendered.get(kind, WEBHOOK)
        assert "annotations" not in config["metadata"]
        assert all("caBundle" not in h["clientConfig"] for h in config["webhooks"])
    args = rendered.get("Deployment", WEBHOOK)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--self-signed" in args
    # The generated certificate names the Service; the patched configurations
    # are the chart's.
    assert f"--service-name={WEBHOOK}" in args
    assert f"--namespace={NAMESPACE}" in args
    assert f"--configuration-name={WEBHOOK}" in args
    assert not any(a.startswith("--tls-") for a in args)
    assert rendered.kinds("Certificate") == []
    assert {s["metadata"]["name"] for s in rendered.kinds("Secret")} == {OPERATOR_KEY, WEBHOOK_KEY}
    rules = rules_of(rendered, "ClusterRole", WEBHOOK)
    configs = [r for r in rules if "admissionregistration.k8s.io" in r["apiGroups"]]
    assert [(r["verbs"], r["resourceNames"]) for r in configs] == [(["get", "update"], [WEBHOOK])]


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
    args = pod["containers"][0]["args"]
    assert "--self-signed" not in args
    assert "--tls-cert=/etc/policybind/tls/tls.crt" in args
    assert "--tls-key=/etc/policybind/tls/tls.key" in args
    assert {"name": "tls", "secret": {"secretName": f"{FULL}-webhook-tls"}} in pod["volumes"]
    assert {"name": "tls", "mountPath": "/etc/policybind/tls", "readOnly": True} in \
        pod["containers"][0]["volumeMounts"]


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
            assert container.readiness_probe.http_get.port == "metrics"


def args_of(rendered, name):
    return rendered.get("Deployment", name)["spec"]["template"]["spec"]["containers"][0]["args"]


def test_each_container_runs_its_role_of_the_one_binary(render):
    rendered = render()
    operator = rendered.get("Deployment", OPERATOR)["spec"]["template"]["spec"]["containers"][0]
    webhook = rendered.get("Deployment", WEBHOOK)["spec"]["template"]["spec"]["containers"][0]
    assert operator["image"] == webhook["image"] == "ghcr.io/policybind/policybind:0.1.0"
    assert "command" not in operator and "command" not in webhook  # the image's entrypoint
    assert operator["args"][:3] == ["controller", "--metrics-listen=0.0.0.0:8080",
                                    "--leader-election"]
    # The Role allows exactly this Lease name.
    assert f"--lease-name={OPERATOR}" in operator["args"]
    assert f"--requester=system:serviceaccount:{NAMESPACE}:{OPERATOR}" in operator["args"]
    env = {e["name"]: e for e in operator["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POLICYBIND_LOG_FORMAT"]["value"] == "json"
    assert webhook["args"][:3] == ["webhook", "--listen=0.0.0.0:8443",
                                   "--health-listen=0.0.0.0:8080"]
    # The webhook's writer identity in the audit trail is its pod (one chain per
    # replica), read from the variable `policybind webhook --pod-name` reads.
    webhook_env = {e["name"]: e for e in webhook["env"]}
    assert webhook_env["POLICYBIND_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.name"
    # glibc gives freed audit buffers back (docs/audit.md), whatever the image.
    for container_env in (env, webhook_env):
        assert container_env["MALLOC_MMAP_THRESHOLD_"]["value"] == "131072"
    assert "--leader-election" not in args_of(render(MINIMAL), OPERATOR)


def test_image_digest_and_extra_args(render):
    rendered = render(EVERYTHING_ON)
    operator = rendered.get("Deployment", OPERATOR)["spec"]["template"]["spec"]["containers"][0]
    assert operator["image"] == "ghcr.io/policybind/policybind@sha256:" + "a" * 64
    assert operator["args"][-1] == "--extra-flag"


def test_sidecar_and_admission_settings_reach_the_webhook(render):
    default = args_of(render(), WEBHOOK)
    assert "--sidecar-image=ghcr.io/policybind/policybind:0.1.0" in default
    assert "--sidecar-style=auto" in default
    assert "--sidecar-memory-limit=128Mi" in default
    assert "--undeclared-model-servers=warn" in default
    assert "--require-audit-record=true" in default
    assert not any(a.startswith(("--sidecar-cpu-limit", "--sidecar-model-port",
                                 "--exclude-namespace")) for a in default)
    # No mounted bundle and no shared key: a mounted ConfigMap would sit where
    # the workload can write, and a shared key could be read by any workload.
    assert not any(a.startswith("--bundle-mount") or "AUDIT_KEY_SECRET" in a
                   for a in default + args_of(render(EVERYTHING_ON), WEBHOOK))
    custom = args_of(render(EVERYTHING_ON), WEBHOOK)
    for flag in ["--sidecar-image=registry.example/policybind:debug", "--sidecar-style=regular",
                 "--sidecar-model-port=18000", "--sidecar-cpu-request=20m",
                 "--sidecar-cpu-limit=1", "--sidecar-memory-limit=64Mi",
                 "--sidecar-env=POLICYBIND_AUDIT_FLUSH_MS=500",
                 "--exclude-namespace=monitoring", "--exclude-namespace=istio-system",
                 "--undeclared-model-servers=deny",
                 "--model-server-image=registry.example.com/llm/*"]:
        assert flag in custom, flag


def test_per_token_metric_labels_are_off_unless_asked_for(render):
    flag = "--sidecar-env=POLICYBIND_METRICS_TOKEN_LABELS=true"
    assert flag not in args_of(render(), WEBHOOK)
    assert flag in args_of(render({"sidecar": {"metricsTokenLabels": True}}), WEBHOOK)


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
                # The one exception: the operator binds the sidecar ClusterRole,
                # by name, instead of holding every right it grants.
                assert doc["metadata"]["name"] == OPERATOR and doc["kind"] == "ClusterRole"
                assert rule == {"apiGroups": ["rbac.authorization.k8s.io"],
                                "resources": ["clusterroles"], "verbs": ["bind"],
                                "resourceNames": [SIDECAR]}


def test_every_rbac_rule_in_the_templates_is_justified():
    """Each rule of our own roles has a comment right above it saying why."""
    for name in ["operator-rbac.yaml", "webhook-rbac.yaml", "user-roles.yaml",
                 "sidecar-rbac.yaml", "check-rbac.yaml"]:
        lines = (CHART / "templates" / name).read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("- apiGroups:"):
                j = i - 1
                while lines[j].strip().startswith("{{"):  # template guards
                    j -= 1
                assert lines[j].strip().startswith("#"), \
                    f"{name}:{i + 1} has no justification comment"


def test_operator_rbac_is_exactly_what_it_calls(render):
    rules = rules_of(render(), "ClusterRole", OPERATOR)
    for kind in OUR_KINDS:
        assert verbs_on(rules, "policybind.io", kind) >= READ_VERBS
        assert verbs_on(rules, "policybind.io", f"{kind}/status") == {"patch"}
        assert "delete" not in verbs_on(rules, "policybind.io", kind)
    assert verbs_on(rules, "policybind.io", "approvalrequests") == READ_VERBS | {"create", "patch"}
    assert verbs_on(rules, "policybind.io", "incidents") == READ_VERBS | {"create", "patch"}
    for kind in ["aipolicies", "clusteraipolicies", "modeldeployments", "accesstokens",
                 "evidencegates", "aibudgets"]:
        assert verbs_on(rules, "policybind.io", kind) == READ_VERBS
    assert verbs_on(rules, "", "secrets") == READ_VERBS | {"create", "patch"}
    for owner in ["accesstokens", "modeldeployments"]:
        assert verbs_on(rules, "policybind.io", f"{owner}/finalizers") == {"update"}
    # ConfigMaps everywhere: caches and deletion only; writes in its namespace.
    assert verbs_on(rules, "", "configmaps") == {"list", "watch", "delete"}
    assert verbs_on(rules, "", "namespaces") == READ_VERBS
    assert verbs_on(rules, "", "pods") == {"list", "watch"}
    assert verbs_on(rules, "rbac.authorization.k8s.io", "rolebindings") == \
        {"list", "watch", "create", "patch", "delete"}
    assert verbs_on(rules, "rbac.authorization.k8s.io", "roles") == {"list", "watch", "delete"}
    assert verbs_on(rules, "rbac.authorization.k8s.io", "clusterroles") == {"bind"}
    assert verbs_on(rules, "networking.k8s.io", "networkpolicies") == \
        {"list", "watch", "create", "patch", "update", "delete"}
    assert verbs_on(rules, "events.k8s.io", "events") == {"create", "patch"}
    # Reports: OpenReports by default, written by server-side apply only.
    assert verbs_on(rules, "openreports.io", "reports") == REPORT_VERBS
    assert verbs_on(rules, "wgpolicyk8s.io", "policyreports") == set()
    own = rules_of(render(), "Role", OPERATOR)
    assert verbs_on(own, "coordination.k8s.io", "leases") == {"create", "get", "update"}
    named = [r for r in own if "resourceNames" in r]
    assert named and all(r["resourceNames"] == [OPERATOR] for r in named)
    assert all(set(r["verbs"]) == {"create"} for r in own if "resourceNames" not in r
               and "coordination.k8s.io" in r["apiGroups"])
    # Bundles and the reader Roles are written in the release namespace only.
    assert verbs_on(own, "", "configmaps") == {"get", "create", "patch", "update"}
    assert verbs_on(own, "rbac.authorization.k8s.io", "roles") == {"create", "patch"}
    # The reader Roles the operator creates grant get/list/watch on ConfigMaps
    # in its namespace: it must hold them there (RBAC refuses to grant more).
    assert READ_VERBS <= verbs_on(rules + own, "", "configmaps")
    # The Deployment names the ClusterRole the operator may bind.
    args = args_of(render(), OPERATOR)
    assert f"--sidecar-cluster-role={SIDECAR}" in args
    assert "--sidecar-port-name=http" in args
    assert "--sidecar-port-name=http" in args_of(render(), OPERATOR)


def test_sidecars_write_their_reports_segments_and_held_requests_and_nothing_else(render):
    rules = rules_of(render(), "ClusterRole", SIDECAR)
    assert rules == [
        {"apiGroups": [""], "resources": ["configmaps"],
         "verbs": ["create", "get", "list", "patch"]},
        {"apiGroups": ["policybind.io"], "resources": ["approvalrequests"],
         "verbs": ["create", "get"]},
    ]
    # The chart binds it nowhere: the operator binds it in enforced namespaces.
    for kind in ["ClusterRoleBinding", "RoleBinding"]:
        assert not [b for b in render().kinds(kind) if b["roleRef"]["name"] == SIDECAR]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_no_rule_lets_a_workload_read_a_key_or_write_where_bundles_live(render, values):
    rendered = render(values)
    for binding in rendered.kinds("ClusterRoleBinding") + rendered.kinds("RoleBinding"):
        for subject in binding["subjects"]:
            # Only PolicyBind's own service accounts are bound by the chart.
            assert subject["kind"] == "ServiceAccount", binding
            assert subject["name"] in {OPERATOR, WEBHOOK, f"{FULL}-check"}
    assert verbs_on(rules_of(rendered, "ClusterRole", SIDECAR), "", "secrets") == set()


def test_webhook_rbac_is_read_mostly(render):
    rules = rules_of(render(), "ClusterRole", WEBHOOK)
    for kind in ["modeldeployments", "aipolicies", "clusteraipolicies", "evidencegates"]:
        assert verbs_on(rules, "policybind.io", kind) == READ_VERBS
    for kind in ["accesstokens", "approvalrequests", "incidents"]:
        assert verbs_on(rules, "policybind.io", kind) == set()
    assert verbs_on(rules, "authorization.k8s.io", "subjectaccessreviews") == {"create"}
    assert verbs_on(rules, "", "secrets") == set()
    assert verbs_on(rules, "", "configmaps") == set()
    assert {r["metadata"]["name"] for r in render().kinds("Role")} == \
        {OPERATOR, f"{WEBHOOK}-audit", f"{WEBHOOK}-admission-summary", f"{FULL}-check"}
    # Its audit segments, in the release namespace only: list to resume its chain,
    # server-side apply to write. No delete, no watch, no Secrets.
    audit = render().get("Role", f"{WEBHOOK}-audit")
    assert audit["metadata"]["namespace"] == NAMESPACE
    assert audit["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                               "verbs": ["get", "list", "create", "patch"]}]
    binding = render().get("RoleBinding", f"{WEBHOOK}-audit")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": WEBHOOK,
                                    "namespace": NAMESPACE}]
    # Without a signing key the webhook only logs its records: no Role.
    assert f"Role/{WEBHOOK}-audit" not in render(MINIMAL).names()


def test_webhook_rbac_in_cert_manager_mode_cannot_touch_configurations(render):
    rules = rules_of(render(CERT_MANAGER), "ClusterRole", WEBHOOK)
    assert not [r for r in rules if "admissionregistration.k8s.io" in r["apiGroups"]]


def test_bindings_point_at_the_right_service_accounts(render):
    rendered = render()
    for kind in ["ClusterRoleBinding", "RoleBinding"]:
        for binding in rendered.kinds(kind):
            name = binding["metadata"]["name"]
            assert binding["roleRef"]["name"] == name
            account = WEBHOOK if name.startswith(f"{WEBHOOK}-") else name
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account,
                                            "namespace": NAMESPACE}]


# --- the admission policy for workloads ----------------------------------------------


def test_workload_admission_policy_guards_the_configmaps_policybind_trusts(render):
    rendered = render()
    policy = rendered.get("ValidatingAdmissionPolicy", WORKLOADS)
    assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [{
        "apiGroups": [""], "apiVersions": ["v1"],
        "operations": ["CREATE", "UPDATE", "DELETE"], "resources": ["configmaps"]}]
    conditions = " && ".join(c["expression"] for c in spec["matchConditions"])
    # Service accounts other than the operator's and the control plane's.
    assert "startsWith('system:serviceaccount:')" in conditions
    assert f"!= \"{OPERATOR_USER}\"" in conditions
    assert "!request.userInfo.username.startsWith('system:serviceaccount:kube-system:')" \
        in conditions
    text = json.dumps(spec)
    for label in ["policybind.io/bundle", "policybind.io/usage", "policybind.io/audit-segment",
                  "policybind.io/pod"]:
        assert label in text, label
    assert "authentication.kubernetes.io/pod-name" in text
    assert WEBHOOK_USER in text  # the webhook writes its own audit segments
    assert len(spec["validations"]) == 4
    assert all(v["reason"] == "Forbidden" for v in spec["validations"])
    binding = rendered.get("ValidatingAdmissionPolicyBinding", WORKLOADS)
    assert binding["spec"] == {"policyName": WORKLOADS, "validationActions": ["Deny"]}


def test_workload_admission_policy_follows_the_release_and_can_be_left_out(render):
    other = render(namespace="platform", release="gov")
    text = json.dumps(other.get("ValidatingAdmissionPolicy", "gov-policybind-workloads"))
    assert "system:serviceaccount:platform:gov-policybind-operator" in text
    assert "system:serviceaccount:platform:gov-policybind-webhook" in text
    minimal = render(MINIMAL)
    assert minimal.kinds("ValidatingAdmissionPolicy") == []
    assert minimal.kinds("ValidatingAdmissionPolicyBinding") == []
    assert "admissionPolicy.enabled is false" in minimal.notes


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
    # The rights the webhook checks: exempt a model pod from the sidecar, share a model.
    assert {"exempt", "share"} <= verbs_on(admin, "policybind.io", "modeldeployments")
    for role in [approver, auditor, developer]:
        assert not {"exempt", "share"} & verbs_on(role, "policybind.io", "modeldeployments")
    assert verbs_on(approver, "policybind.io", "approvalrequests") == \
        READ_VERBS | {"update", "patch", "approve"}
    assert verbs_on(approver, "policybind.io", "modeldeployments") == READ_VERBS
    assert "create" not in verbs_on(approver, "policybind.io", "approvalrequests")
    for rule in auditor:
        assert set(rule["verbs"]) <= READ_VERBS
    assert verbs_on(auditor, "", "configmaps") == READ_VERBS  # audit segments
    assert verbs_on(auditor, "", "namespaces") == READ_VERBS  # ClusterAIPolicy selectors
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
    assert sorted(scraped) == sorted([f"{OPERATOR}-metrics", f"{WEBHOOK}-metrics",
                                      f"{FULL}-gateway-metrics"])
    # The gateway's metrics Service lives in the gateway's own namespace.
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE, "ai-gateway"]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_pod_monitor_scrapes_the_injected_sidecars(render):
    assert render().kinds("PodMonitor") == []
    [monitor] = render(EVERYTHING_ON).kinds("PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    # The port the webhook gives every injected sidecar (webhook/src/inject.rs).
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "pb-health"
    assert monitor["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"


def test_dashboard_shows_what_operators_watch(render):
    rendered = render()
    config = rendered.get("ConfigMap", f"{FULL}-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config["data"]["policybind.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "policybind.json").read_text())
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ["decisions", "denials by code", "latency", "budget", "audit backlog"]:
        assert topic in titles, topic
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    assert "sum by (code)" in exprs
    assert "histogram_quantile(0.99" in exprs
    # That every metric a panel queries is exported is checked against the
    # binaries' own registries by `cargo test -p policybind metrics`
    # (cli/src/commands/metrics.rs); here, that the main topics are there.
    for metric in ["policybind_sidecar_decisions_total", "policybind_sidecar_decide_duration_seconds",
                   "policybind_operator_token_spend_usd", "policybind_webhook_admission_reviews_total",
                   "policybind_webhook_admission_duration_seconds",
                   "policybind_operator_bundle_writes_total",
                   "policybind_sidecar_audit_backlog_records"]:
        assert metric in exprs, metric
    assert render(MINIMAL).kinds("ConfigMap") == []


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


# --- reports (docs/operator.md, "Reports") -------------------------------------------


# Written by apply; listed (by label, once per leadership) and deleted when a
# namespace leaves enforcement; never read one by one.
REPORT_VERBS = {"create", "patch", "list", "delete"}


@pytest.mark.parametrize("fmt,openreports,wgpolicy", [
    ("openreports", REPORT_VERBS, set()),
    ("wgpolicyk8s", set(), REPORT_VERBS),
    ("both", REPORT_VERBS, REPORT_VERBS),
])
def test_the_operator_may_write_exactly_the_report_kinds_asked_for(render, fmt, openreports, wgpolicy):
    rendered = render({"reports": {"format": fmt}})
    rules = rules_of(rendered, "ClusterRole", OPERATOR)
    assert verbs_on(rules, "openreports.io", "reports") == openreports
    assert verbs_on(rules, "wgpolicyk8s.io", "policyreports") == wgpolicy
    # Never the cluster-scoped kinds.
    for group, kind in [("openreports.io", "clusterreports"), ("wgpolicyk8s.io", "clusterpolicyreports")]:
        assert verbs_on(rules, group, kind) == set()
    args = args_of(rendered, OPERATOR)
    assert f"--reports={fmt}" in args
    assert "--reports-interval=30" in args


def test_reports_off_removes_their_rbac_and_turns_both_writers_off(render):
    rendered = render({"reports": {"enabled": False}})
    rules = rules_of(rendered, "ClusterRole", OPERATOR)
    assert verbs_on(rules, "openreports.io", "reports") == set()
    assert "--reports=off" in args_of(rendered, OPERATOR)
    assert "--admission-summary-interval=0" in args_of(rendered, WEBHOOK)
    assert f"Role/{WEBHOOK}-admission-summary" not in rendered.names()
    assert f"RoleBinding/{WEBHOOK}-admission-summary" not in rendered.names()


def test_the_webhook_writes_only_its_admission_summary_in_the_release_namespace(render):
    rendered = render(MINIMAL)
    role = rendered.get("Role", f"{WEBHOOK}-admission-summary")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                              "verbs": ["get", "create", "patch"]}]
    binding = rendered.get("RoleBinding", f"{WEBHOOK}-admission-summary")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": f"{WEBHOOK}-admission-summary"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": WEBHOOK,
                                    "namespace": NAMESPACE}]
    assert "--admission-summary-interval=30" in args_of(render({"reports": {"intervalSeconds": 30}}), WEBHOOK)
    # The webhook still has no cluster-wide ConfigMap right.
    assert verbs_on(rules_of(rendered, "ClusterRole", WEBHOOK), "", "configmaps") == set()


@pytest.mark.parametrize("values", [
    {"reports": {"format": "sarif"}},
    {"reports": {"intervalSeconds": 0}},
    {"reports": {"installCRDs": True}},
], ids=["unknown-format", "zero-interval", "unknown-key"])
def test_report_values_are_checked(chart, values):
    with pytest.raises(helm.HelmError):
        chart.validate_schema(values)
