//! The ValidatingWebhookConfiguration and MutatingWebhookConfiguration that
//! register the webhook, built in one place so that `policybind webhook configs`
//! (registration by URL, used by the e2e suite), `policybind webhook --register`
//! and the Helm chart (which templates the same shape, see docs/webhook.md) agree.
//!
//! Failure policies follow enforcement: namespaces labelled
//! `policybind.io/enforce=true` fail closed (`Fail`), all others fail open
//! (`Ignore`: only audit-mode checks and warnings apply there). PolicyBind's own
//! resources are validated with `Fail` by default: an unchecked approval would
//! skip the self-approval and right checks.
//!
//! Every webhook writes an audit record, except for dry-run requests:
//! `sideEffects: NoneOnDryRun`. The mutating webhooks carry `matchConditions`
//! (CEL, Kubernetes 1.30+) so the API server only calls them for pods that
//! declare a model and, outside enforced namespaces, opt in by label or
//! annotation; the webhook decides the same way itself, so an API server that
//! ignores the conditions only sends more reviews.

use policybind_crds::wire::{annotations, labels};
use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
    ServiceReference, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};

use crate::config::ALWAYS_EXCLUDED;

/// Default name of both configurations.
pub const DEFAULT_NAME: &str = "policybind-webhook";

/// Reviews are recorded in the audit trail, dry runs are not.
pub const SIDE_EFFECTS: &str = "NoneOnDryRun";

/// CEL: the pod declares a model (annotation or label `policybind.io/model`).
pub fn declares_model_expression() -> String {
    let key = annotations::MODEL;
    format!(
        "(has(object.metadata.annotations) && '{key}' in object.metadata.annotations) || \
         (has(object.metadata.labels) && '{key}' in object.metadata.labels)"
    )
}

/// CEL: the pod opts in with `policybind.io/inject` `true` or `enabled` (any case),
/// as a label or an annotation. Opt-outs are left to the webhook.
pub fn opted_in_expression() -> String {
    let key = labels::INJECT;
    let said = |map: &str| {
        format!(
            "(has(object.metadata.{map}) && '{key}' in object.metadata.{map} && \
             object.metadata.{map}['{key}'].trim().lowerAscii() in ['true', 'enabled'])"
        )
    };
    format!("{} || {}", said("labels"), said("annotations"))
}

fn condition(name: &str, expression: String) -> MatchCondition {
    MatchCondition {
        name: name.into(),
        expression,
    }
}

/// Where the API server reaches the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Out-of-cluster or any reachable address: `https://host:port` (paths appended).
    Url(String),
    /// The in-cluster Service.
    Service {
        namespace: String,
        name: String,
        port: i32,
    },
}

/// Failure policy: `Fail` or `Ignore`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    Fail,
    Ignore,
}

impl FailurePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Fail => "Fail",
            FailurePolicy::Ignore => "Ignore",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "fail" => Some(Self::Fail),
            "ignore" => Some(Self::Ignore),
            _ => None,
        }
    }
}

/// What the configurations are built from.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Name of both configuration objects.
    pub name: String,
    pub endpoint: Endpoint,
    /// PEM of the CA that signed the serving certificate; empty for cert-manager's
    /// ca-injector to fill (the annotation is then added).
    pub ca_bundle: Option<String>,
    /// `namespace/certificate` for cert-manager's ca-injector annotation.
    pub cert_manager_certificate: Option<String>,
    /// PolicyBind's namespace, excluded from workload checks and injection.
    pub own_namespace: String,
    pub enforced_failure: FailurePolicy,
    pub audit_failure: FailurePolicy,
    pub resources_failure: FailurePolicy,
    pub timeout_seconds: i32,
}

impl Registration {
    pub fn new(endpoint: Endpoint, own_namespace: impl Into<String>) -> Self {
        Registration {
            name: DEFAULT_NAME.into(),
            endpoint,
            ca_bundle: None,
            cert_manager_certificate: None,
            own_namespace: own_namespace.into(),
            enforced_failure: FailurePolicy::Fail,
            audit_failure: FailurePolicy::Ignore,
            resources_failure: FailurePolicy::Fail,
            timeout_seconds: 3,
        }
    }

    fn client_config(&self, path: &str) -> WebhookClientConfig {
        let ca_bundle = self
            .ca_bundle
            .as_ref()
            .map(|pem| ByteString(pem.as_bytes().to_vec()));
        match &self.endpoint {
            Endpoint::Url(base) => WebhookClientConfig {
                url: Some(format!("{}{path}", base.trim_end_matches('/'))),
                ca_bundle,
                service: None,
            },
            Endpoint::Service {
                namespace,
                name,
                port,
            } => WebhookClientConfig {
                url: None,
                ca_bundle,
                service: Some(ServiceReference {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    path: Some(path.into()),
                    port: Some(*port),
                }),
            },
        }
    }

    fn metadata(&self) -> ObjectMeta {
        let mut labels = BTreeMap::new();
        labels.insert("app.kubernetes.io/name".into(), "policybind".into());
        labels.insert("app.kubernetes.io/component".into(), "webhook".into());
        let annotations = self.cert_manager_certificate.as_ref().map(|certificate| {
            let mut a = BTreeMap::new();
            a.insert("cert-manager.io/inject-ca-from".into(), certificate.clone());
            a
        });
        ObjectMeta {
            name: Some(self.name.clone()),
            labels: Some(labels),
            annotations,
            ..Default::default()
        }
    }

    /// Namespaces with (`enforced`) or without the enforce label, minus the
    /// system namespaces and PolicyBind's own.
    fn namespace_selector(&self, enforced: bool) -> LabelSelector {
        let mut excluded: Vec<String> = ALWAYS_EXCLUDED.iter().map(|s| s.to_string()).collect();
        excluded.push(self.own_namespace.clone());
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: labels::ENFORCE.into(),
                    operator: if enforced { "In" } else { "NotIn" }.into(),
                    values: Some(vec!["true".into()]),
                },
                LabelSelectorRequirement {
                    key: "kubernetes.io/metadata.name".into(),
                    operator: "NotIn".into(),
                    values: Some(excluded),
                },
            ]),
        }
    }

    /// The validating configuration: our resources, then workloads in enforced
    /// and in other namespaces.
    pub fn validating(&self) -> ValidatingWebhookConfiguration {
        let resources = ValidatingWebhook {
            name: "resources.policybind.io".into(),
            admission_review_versions: vec!["v1".into()],
            client_config: self.client_config("/validate"),
            failure_policy: Some(self.resources_failure.as_str().into()),
            match_policy: Some("Equivalent".into()),
            rules: Some(vec![rule(
                &["policybind.io"],
                &["v1alpha1"],
                &[
                    "aipolicies",
                    "clusteraipolicies",
                    "modeldeployments",
                    "accesstokens",
                    "aibudgets",
                    "approvalrequests",
                ],
                &["CREATE", "UPDATE"],
                "*",
            )]),
            side_effects: SIDE_EFFECTS.into(),
            timeout_seconds: Some(self.timeout_seconds),
            namespace_selector: None,
            object_selector: None,
            match_conditions: None,
        };
        let workloads = |enforced: bool| ValidatingWebhook {
            name: if enforced {
                "workloads-enforced.policybind.io"
            } else {
                "workloads.policybind.io"
            }
            .into(),
            admission_review_versions: vec!["v1".into()],
            client_config: self.client_config("/validate"),
            failure_policy: Some(
                if enforced {
                    self.enforced_failure
                } else {
                    self.audit_failure
                }
                .as_str()
                .into(),
            ),
            match_policy: Some("Equivalent".into()),
            rules: Some(workload_rules()),
            side_effects: SIDE_EFFECTS.into(),
            timeout_seconds: Some(self.timeout_seconds),
            namespace_selector: Some(self.namespace_selector(enforced)),
            object_selector: None,
            match_conditions: None,
        };
        ValidatingWebhookConfiguration {
            metadata: self.metadata(),
            webhooks: Some(vec![resources, workloads(true), workloads(false)]),
        }
    }

    /// The mutating configuration: pods that declare a model, in enforced
    /// namespaces, and elsewhere when they opt in (label or annotation).
    pub fn mutating(&self) -> MutatingWebhookConfiguration {
        let inject = |enforced: bool| MutatingWebhook {
            name: if enforced {
                "inject-enforced.policybind.io"
            } else {
                "inject.policybind.io"
            }
            .into(),
            admission_review_versions: vec!["v1".into()],
            client_config: self.client_config("/mutate"),
            failure_policy: Some(
                if enforced {
                    self.enforced_failure
                } else {
                    self.audit_failure
                }
                .as_str()
                .into(),
            ),
            match_policy: Some("Equivalent".into()),
            reinvocation_policy: Some("IfNeeded".into()),
            rules: Some(vec![rule(
                &[""],
                &["v1"],
                &["pods"],
                &["CREATE"],
                "Namespaced",
            )]),
            side_effects: SIDE_EFFECTS.into(),
            timeout_seconds: Some(self.timeout_seconds),
            namespace_selector: Some(self.namespace_selector(enforced)),
            object_selector: None,
            match_conditions: Some(if enforced {
                vec![condition("declares-model", declares_model_expression())]
            } else {
                vec![
                    condition("declares-model", declares_model_expression()),
                    condition("opted-in", opted_in_expression()),
                ]
            }),
        };
        MutatingWebhookConfiguration {
            metadata: self.metadata(),
            webhooks: Some(vec![inject(true), inject(false)]),
        }
    }

    /// Both configurations as one YAML stream, ready for `kubectl apply -f -`.
    pub fn yaml(&self) -> Result<String, serde_yaml::Error> {
        let mut validating = serde_json::to_value(self.validating()).expect("serializable");
        let mut mutating = serde_json::to_value(self.mutating()).expect("serializable");
        validating["apiVersion"] = "admissionregistration.k8s.io/v1".into();
        validating["kind"] = "ValidatingWebhookConfiguration".into();
        mutating["apiVersion"] = "admissionregistration.k8s.io/v1".into();
        mutating["kind"] = "MutatingWebhookConfiguration".into();
        Ok(format!(
            "{}---\n{}",
            serde_yaml::to_string(&validating)?,
            serde_yaml::to_string(&mutating)?
        ))
    }
}

fn rule(
    groups: &[&str],
    versions: &[&str],
    resources: &[&str],
    operations: &[&str],
    scope: &str,
) -> RuleWithOperations {
    let strings = |list: &[&str]| Some(list.iter().map(|s| s.to_string()).collect());
    RuleWithOperations {
        api_groups: strings(groups),
        api_versions: strings(versions),
        resources: strings(resources),
        operations: strings(operations),
        scope: Some(scope.into()),
    }
}

fn workload_rules() -> Vec<RuleWithOperations> {
    vec![
        // Pods are judged on create; an update matters only when it adds ephemeral
        // containers (`kubectl debug`), which could mount the audit key.
        rule(
            &[""],
            &["v1"],
            &["pods", "pods/ephemeralcontainers"],
            &["CREATE", "UPDATE"],
            "Namespaced",
        ),
        rule(
            &["apps"],
            &["v1"],
            &["deployments", "statefulsets", "replicasets", "daemonsets"],
            &["CREATE", "UPDATE"],
            "Namespaced",
        ),
        rule(
            &["batch"],
            &["v1"],
            &["jobs", "cronjobs"],
            &["CREATE", "UPDATE"],
            "Namespaced",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforced_namespaces_fail_closed_and_others_fail_open() {
        let registration = Registration::new(
            Endpoint::Url("https://127.0.0.1:8443".into()),
            "policybind-system",
        );
        let validating = registration.validating();
        let hooks = validating.webhooks.unwrap();
        assert_eq!(hooks[1].failure_policy.as_deref(), Some("Fail"));
        assert_eq!(hooks[2].failure_policy.as_deref(), Some("Ignore"));
        assert_eq!(
            hooks[1].client_config.url.as_deref(),
            Some("https://127.0.0.1:8443/validate")
        );
        let mutating = registration.mutating().webhooks.unwrap();
        assert_eq!(mutating[0].reinvocation_policy.as_deref(), Some("IfNeeded"));
        assert_eq!(mutating[0].timeout_seconds, Some(3));
        let excluded = mutating[1].namespace_selector.as_ref().unwrap();
        let names = excluded.match_expressions.as_ref().unwrap()[1]
            .values
            .clone()
            .unwrap();
        assert!(names.contains(&"kube-system".to_string()));
        assert!(names.contains(&"policybind-system".to_string()));
        for hook in validating_hooks(&registration)
            .iter()
            .map(|h| h.side_effects.as_str())
            .chain(mutating.iter().map(|h| h.side_effects.as_str()))
        {
            assert_eq!(hook, "NoneOnDryRun");
        }
    }

    fn validating_hooks(registration: &Registration) -> Vec<ValidatingWebhook> {
        registration.validating().webhooks.unwrap()
    }

    #[test]
    fn mutating_webhooks_are_called_only_for_model_pods_that_want_the_sidecar() {
        let registration = Registration::new(
            Endpoint::Url("https://127.0.0.1:8443".into()),
            "policybind-system",
        );
        let mutating = registration.mutating().webhooks.unwrap();
        let names = |hook: &MutatingWebhook| -> Vec<String> {
            hook.match_conditions
                .iter()
                .flatten()
                .map(|c| c.name.clone())
                .collect()
        };
        assert_eq!(names(&mutating[0]), ["declares-model"]);
        assert_eq!(names(&mutating[1]), ["declares-model", "opted-in"]);
        assert!(mutating.iter().all(|h| h.object_selector.is_none()));
        let opted_in = opted_in_expression();
        assert!(opted_in.contains("object.metadata.annotations['policybind.io/inject']"));
        assert!(opted_in.contains("lowerAscii() in ['true', 'enabled']"));
    }
}
