//! Desired policy bundles (DESIGN.md section 4), as pure functions of the
//! cluster's objects.
//!
//! [`ClusterView`] is everything bundles are made of, computed once per change
//! from the watch caches: the version in force of every policy, every model with
//! the state the operator concluded (risk, approval, review, suspension), and
//! every token with the hashes of its accepted values and whether a budget is
//! used up. [`desired_bundle`] cuts from it what one namespace needs:
//!
//! - policies: the namespace's AIPolicies, and the ClusterAIPolicies whose
//!   `namespaces` globs and `namespaceSelector` select it;
//! - models: the namespace's own ModelDeployments, then those shared cluster-wide
//!   (`spec.scope: Cluster`) whose names the namespace does not register itself;
//! - tokens: the AccessTokens valid in the namespace (hashes only): its own, and
//!   those whose `spec.additionalNamespaces` name it;
//! - the namespace's labels, for ClusterAIPolicy selectors evaluated by the engine.
//!
//! Nothing here talks to the API server; [`crate::controllers::namespace`] writes the result.

use policybind_crds::wire::labels;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;
use kube::api::PartialObjectMeta;
use policybind_crds::{
    AIBudget, AIPolicy, AccessToken, ApprovalRequest, ClusterAIPolicy, ModelDeployment,
};
use policybind_engine::bundle::{Bundle, BundleBudget, BundleModel, BundlePolicy, BundleToken};

use crate::controllers::access_token::{self, SecretState};
use crate::controllers::ai_policy::versions_in_force;
use crate::controllers::model_deployment;
use crate::state::PolicyMemory;
use crate::usage::{CountedReport, current_usage};

/// Everything bundles are made of, at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    pub policies: Vec<BundlePolicy>,
    pub models: Vec<BundleModel>,
    pub tokens: Vec<BundleToken>,
    pub budgets: Vec<BundleBudget>,
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// When the view changes by itself (a review falls due, a grace period ends,
    /// a budget period starts); bundles are rebuilt then.
    pub next_change: Option<DateTime<Utc>>,
}

/// Raw inputs of a [`ClusterView`], borrowed from the caches.
pub struct ViewInputs<'a> {
    pub policies: &'a [Arc<AIPolicy>],
    pub cluster_policies: &'a [Arc<ClusterAIPolicy>],
    pub models: &'a [Arc<ModelDeployment>],
    pub approvals: &'a [Arc<ApprovalRequest>],
    pub tokens: &'a [Arc<AccessToken>],
    pub budgets: &'a [Arc<AIBudget>],
    /// Token Secret state by `namespace/secret-name`.
    pub secrets: &'a HashMap<String, SecretState>,
    /// Usage reports the operator counts ([`crate::controllers::access_token::usage_reports`]).
    pub usage: &'a [Arc<CountedReport>],
    pub namespaces: &'a [Arc<Namespace>],
    pub approval_ttl: Duration,
}

/// Whether a namespace gets a bundle: labelled `policybind.io/enforce=true`, or
/// running a pod that opts in with the same label or annotation.
pub fn is_enforced<'a>(
    namespace: &Namespace,
    pods: impl IntoIterator<Item = &'a PartialObjectMeta<Pod>>,
) -> bool {
    if namespace.metadata.deletion_timestamp.is_some() {
        return false;
    }
    if opted(namespace.metadata.labels.as_ref()) {
        return true;
    }
    let name = namespace.name_any();
    pods.into_iter().any(|pod| {
        pod.metadata.namespace.as_deref() == Some(name.as_str())
            && (opted(pod.metadata.labels.as_ref()) || opted(pod.metadata.annotations.as_ref()))
    })
}

/// Which namespaces are enforced, asked one at a time: a label lookup each, and
/// one scan of the pods (for workload opt-ins) only when a namespace without the
/// label is asked about. PolicyBind's own namespace (`home`) is never enforced.
pub struct EnforcedNamespaces<'a> {
    namespaces: &'a kube::runtime::reflector::Store<Namespace>,
    pods: &'a kube::runtime::reflector::Store<PartialObjectMeta<Pod>>,
    home: &'a str,
    opted_in: Option<std::collections::HashSet<String>>,
}

impl<'a> EnforcedNamespaces<'a> {
    pub fn new(
        namespaces: &'a kube::runtime::reflector::Store<Namespace>,
        pods: &'a kube::runtime::reflector::Store<PartialObjectMeta<Pod>>,
        home: &'a str,
    ) -> Self {
        EnforcedNamespaces {
            namespaces,
            pods,
            home,
            opted_in: None,
        }
    }

    pub fn contains(&mut self, name: &str) -> bool {
        if name == self.home {
            return false;
        }
        let Some(namespace) = self
            .namespaces
            .get(&kube::runtime::reflector::ObjectRef::new(name))
        else {
            return false;
        };
        if namespace.metadata.deletion_timestamp.is_some() {
            return false;
        }
        if opted(namespace.metadata.labels.as_ref()) {
            return true;
        }
        let pods = self.pods;
        self.opted_in
            .get_or_insert_with(|| {
                pods.state()
                    .iter()
                    .filter(|p| {
                        opted(p.metadata.labels.as_ref()) || opted(p.metadata.annotations.as_ref())
                    })
                    .filter_map(|p| p.metadata.namespace.clone())
                    .collect()
            })
            .contains(name)
    }
}

fn opted(map: Option<&BTreeMap<String, String>>) -> bool {
    map.and_then(|m| m.get(labels::ENFORCE))
        .is_some_and(|v| v == "true")
}

/// Builds the view. Policies resolve through `memory` (last good version).
pub fn cluster_view(inputs: &ViewInputs, memory: &PolicyMemory, now: DateTime<Utc>) -> ClusterView {
    let mut next_change: Option<DateTime<Utc>> = None;
    let mut soonest = |t: DateTime<Utc>| {
        if t > now && next_change.is_none_or(|n| t < n) {
            next_change = Some(t);
        }
    };

    let judged: Vec<(BundlePolicy, String, Option<i64>)> = inputs
        .policies
        .iter()
        .map(|p| {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            (BundlePolicy::from_ai_policy(p), uid, p.metadata.generation)
        })
        .chain(inputs.cluster_policies.iter().map(|p| {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            (
                BundlePolicy::from_cluster_policy(p),
                uid,
                p.metadata.generation,
            )
        }))
        .collect();
    let policies = versions_in_force(memory, &judged);

    let mut approvals_by_ns: HashMap<&str, Vec<&ApprovalRequest>> = HashMap::new();
    for a in inputs.approvals {
        approvals_by_ns
            .entry(a.metadata.namespace.as_deref().unwrap_or(""))
            .or_default()
            .push(a);
    }
    let models = inputs
        .models
        .iter()
        .map(|m| {
            let ns = m.metadata.namespace.as_deref().unwrap_or("");
            let approvals = approvals_by_ns.get(ns).into_iter().flatten().copied();
            let state = model_deployment::evaluate(m, approvals, now, inputs.approval_ttl);
            if !state.review_overdue {
                soonest(state.next_review_at);
            }
            model_deployment::bundle_model(m, &state)
        })
        .collect();

    let tokens = inputs
        .tokens
        .iter()
        .map(|t| {
            let ns = t.metadata.namespace.as_deref().unwrap_or("");
            let secret_key = format!("{ns}/{}", access_token::secret_name(t));
            let secret = inputs.secrets.get(&secret_key);
            let usage = current_usage(
                ns,
                &t.name_any(),
                &t.spec,
                inputs.usage.iter().map(|r| r.as_ref()),
                now,
            );
            if let Some(next) = access_token::next_change(t, secret, now) {
                soonest(next);
            }
            access_token::bundle_token(t, secret, &usage, now)
        })
        .collect();

    let namespace_labels = inputs
        .namespaces
        .iter()
        .filter_map(|n| {
            let labels = n.metadata.labels.clone().unwrap_or_default();
            (!labels.is_empty()).then(|| (n.name_any(), labels))
        })
        .collect();

    ClusterView {
        policies,
        models,
        tokens,
        budgets: inputs
            .budgets
            .iter()
            .map(|b| BundleBudget::from_budget(b))
            .collect(),
        namespace_labels,
        next_change,
    }
}

/// The bundle for one namespace: the cluster view cut by the engine's scope
/// rules ([`policybind_engine::scope`]), the same rules `policybind serve` and
/// `policybind test` apply to a directory of manifests.
pub fn desired_bundle(view: &ClusterView, namespace: &str) -> Bundle {
    policybind_engine::scope::bundle_for(
        namespace,
        &view.policies,
        &view.models,
        &view.tokens,
        &view.budgets,
        &view.namespace_labels,
    )
}

/// Builds and encodes the bundles of several namespaces, spread over `threads`
/// threads. Encoding (JSON, SHA-256, gzip) is most of the cost of a rebuild and
/// namespaces are independent.
pub fn encode_bundles(
    view: &ClusterView,
    namespaces: &[String],
    threads: usize,
) -> Vec<(String, policybind_engine::bundle_codec::EncodedBundle)> {
    let threads = threads.clamp(1, namespaces.len().max(1));
    let chunk = namespaces.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = namespaces
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|ns| {
                            let bundle = desired_bundle(view, ns);
                            let encoded = policybind_engine::bundle_codec::encode(
                                &bundle,
                                policybind_engine::bundle_codec::DEFAULT_MAX_PART_BYTES,
                            );
                            (ns.clone(), encoded)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("bundle encoding does not panic"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{cluster_policy, model, namespace, policy, rule, token};
    use policybind_crds::model_deployment::RiskFactors;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    struct Fixture {
        policies: Vec<Arc<AIPolicy>>,
        cluster_policies: Vec<Arc<ClusterAIPolicy>>,
        models: Vec<Arc<ModelDeployment>>,
        tokens: Vec<Arc<AccessToken>>,
        namespaces: Vec<Arc<Namespace>>,
        secrets: HashMap<String, SecretState>,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                policies: vec![
                    Arc::new(policy(
                        "team-a",
                        "a-rules",
                        vec![rule("allow", "Allow", &["gpt-*"])],
                    )),
                    Arc::new(policy("team-b", "b-rules", vec![rule("deny", "Deny", &[])])),
                ],
                cluster_policies: vec![
                    Arc::new(cluster_policy(
                        "everywhere",
                        &[],
                        vec![rule("all", "Deny", &["bad-*"])],
                    )),
                    Arc::new(cluster_policy(
                        "only-b",
                        &["team-b*"],
                        vec![rule("b", "Deny", &["x"])],
                    )),
                ],
                models: vec![
                    Arc::new(model("platform", "gpt-4o").shared().build()),
                    Arc::new(model("team-a", "gpt-4o").build()),
                    Arc::new(model("platform", "llama").suspended().shared().build()),
                    Arc::new(model("team-b", "private").build()),
                ],
                tokens: vec![Arc::new(token("team-a", "bot").build())],
                namespaces: vec![
                    Arc::new(namespace("team-a", true)),
                    Arc::new(namespace("team-b", true)),
                ],
                secrets: HashMap::from([(
                    "team-a/bot-token".to_string(),
                    SecretState {
                        current_hash: "ab".repeat(32),
                        previous: None,
                        issued_at: None,
                        rotation: None,
                    },
                )]),
            }
        }

        fn view(&self) -> ClusterView {
            let inputs = ViewInputs {
                policies: &self.policies,
                cluster_policies: &self.cluster_policies,
                models: &self.models,
                approvals: &[],
                tokens: &self.tokens,
                budgets: &[],
                secrets: &self.secrets,
                usage: &[],
                namespaces: &self.namespaces,
                approval_ttl: Duration::from_secs(7 * 86400),
            };
            cluster_view(
                &inputs,
                &PolicyMemory::default(),
                at("2026-11-22T12:00:00Z"),
            )
        }
    }

    #[test]
    fn namespace_gets_its_own_and_selecting_cluster_policies_only() {
        let view = Fixture::new().view();
        let a = desired_bundle(&view, "team-a");
        let ids: Vec<String> = a.policies.iter().map(|p| p.id()).collect();
        assert_eq!(ids, vec!["team-a/a-rules", "everywhere"]);
        let b = desired_bundle(&view, "team-b");
        let ids: Vec<String> = b.policies.iter().map(|p| p.id()).collect();
        assert_eq!(ids, vec!["team-b/b-rules", "everywhere", "only-b"]);
    }

    #[test]
    fn own_namespace_model_wins_a_name_clash_and_bundles_compile() {
        let view = Fixture::new().view();
        let a = desired_bundle(&view, "team-a");
        let gpt: Vec<&str> = a
            .models
            .iter()
            .filter(|m| m.spec.model == "gpt-4o")
            .map(|m| m.namespace.as_str())
            .collect();
        assert_eq!(gpt, vec!["team-a"]);
        let b = desired_bundle(&view, "team-b");
        let gpt: Vec<&str> = b
            .models
            .iter()
            .filter(|m| m.spec.model == "gpt-4o")
            .map(|m| m.namespace.as_str())
            .collect();
        assert_eq!(gpt, vec!["platform"]);
        policybind_engine::PolicySet::compile(&a).expect("bundle for team-a compiles");
        policybind_engine::PolicySet::compile(&b).expect("bundle for team-b compiles");
    }

    #[test]
    fn suspended_model_is_suspended_in_every_bundle() {
        let view = Fixture::new().view();
        for ns in ["team-a", "team-b"] {
            let bundle = desired_bundle(&view, ns);
            let llama = bundle.models.iter().find(|m| m.name == "llama").unwrap();
            assert!(llama.spec.suspended, "{ns}");
        }
    }

    #[test]
    fn overdue_review_with_auto_suspend_suspends_in_bundles() {
        let mut fixture = Fixture::new();
        fixture.models = vec![Arc::new(
            model("platform", "old")
                .review_every(10, true)
                .shared()
                .build(),
        )];
        let view = fixture.view();
        let bundle = desired_bundle(&view, "team-a");
        assert!(bundle.models[0].spec.suspended);
        assert!(bundle.models[0].review_overdue);
    }

    #[test]
    fn high_risk_model_without_approval_is_pending_in_bundles() {
        let mut fixture = Fixture::new();
        fixture.models = vec![Arc::new(
            model("platform", "risky")
                .shared()
                .factors(RiskFactors {
                    customer_facing: true,
                    automated_decisions: true,
                    processes_personal_data: true,
                    ..Default::default()
                })
                .build(),
        )];
        let bundle = desired_bundle(&fixture.view(), "team-a");
        assert_eq!(
            bundle.models[0].approval,
            policybind_crds::model_deployment::ApprovalState::Pending
        );
    }

    #[test]
    fn bundles_hold_token_hashes_and_never_values() {
        let view = Fixture::new().view();
        let bundle = desired_bundle(&view, "team-a");
        assert_eq!(bundle.tokens.len(), 1);
        assert_eq!(bundle.tokens[0].hashes[0].sha256, "ab".repeat(32));
    }

    #[test]
    fn a_token_reaches_other_namespaces_only_where_its_spec_names_them() {
        let mut fixture = Fixture::new();
        assert!(desired_bundle(&fixture.view(), "team-b").tokens.is_empty());
        let mut shared = token("team-a", "bot").build();
        shared.spec.additional_namespaces = vec!["team-b".into()];
        fixture.tokens = vec![Arc::new(shared)];
        let view = fixture.view();
        assert_eq!(desired_bundle(&view, "team-b").tokens.len(), 1);
        assert!(desired_bundle(&view, "team-c").tokens.is_empty());
    }

    #[test]
    fn namespace_scoped_models_of_other_namespaces_stay_out() {
        let view = Fixture::new().view();
        let names = |ns: &str| -> Vec<String> {
            desired_bundle(&view, ns)
                .models
                .iter()
                .map(|m| m.id())
                .collect()
        };
        assert!(names("team-b").contains(&"team-b/private".to_string()));
        assert!(!names("team-a").contains(&"team-b/private".to_string()));
    }

    #[test]
    fn same_inputs_in_any_order_give_the_same_fingerprint() {
        let fixture = Fixture::new();
        let mut reversed = Fixture::new();
        reversed.policies.reverse();
        reversed.models.reverse();
        reversed.cluster_policies.reverse();
        assert_eq!(
            desired_bundle(&fixture.view(), "team-a").fingerprint(),
            desired_bundle(&reversed.view(), "team-a").fingerprint()
        );
    }

    #[test]
    fn enforced_namespaces_are_labelled_or_opted_in_by_a_pod_and_never_the_operators_own() {
        use kube::runtime::reflector::{self, store::Writer};
        use kube::runtime::watcher::Event;
        let (namespaces, mut ns_writer): (_, Writer<Namespace>) = reflector::store();
        let (pods, mut pod_writer): (_, Writer<PartialObjectMeta<Pod>>) = reflector::store();
        for (name, labelled) in [
            ("team-a", true),
            ("team-b", false),
            ("team-c", false),
            ("home", true),
        ] {
            ns_writer.apply_watcher_event(&Event::Apply(namespace(name, labelled)));
        }
        let pod: PartialObjectMeta<Pod> = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "team-b",
                         "annotations": {"policybind.io/enforce": "true"}}
        }))
        .unwrap();
        pod_writer.apply_watcher_event(&Event::Apply(pod));
        let mut enforced = EnforcedNamespaces::new(&namespaces, &pods, "home");
        assert!(enforced.contains("team-a"));
        assert!(enforced.contains("team-b"));
        assert!(!enforced.contains("team-c"));
        assert!(!enforced.contains("home"));
        assert!(!enforced.contains("no-such-namespace"));
    }

    #[test]
    fn labelled_namespace_or_opted_in_pod_is_enforced() {
        let plain = namespace("team-c", false);
        assert!(!is_enforced(&plain, []));
        assert!(is_enforced(&namespace("team-a", true), []));
        let mut pod: PartialObjectMeta<Pod> = PartialObjectMeta::default();
        pod.metadata.namespace = Some("team-c".into());
        pod.metadata.annotations = Some([(labels::ENFORCE.to_string(), "true".to_string())].into());
        assert!(is_enforced(&plain, [&pod]));
    }

    #[test]
    fn parallel_encoding_gives_the_same_bundles_as_one_by_one() {
        let view = Fixture::new().view();
        let namespaces = vec![
            "team-a".to_string(),
            "team-b".to_string(),
            "team-c".to_string(),
        ];
        let parallel = encode_bundles(&view, &namespaces, 2);
        assert_eq!(parallel.len(), 3);
        for (ns, encoded) in parallel {
            let one = policybind_engine::bundle_codec::encode(
                &desired_bundle(&view, &ns),
                policybind_engine::bundle_codec::DEFAULT_MAX_PART_BYTES,
            );
            assert_eq!(encoded, one, "{ns}");
        }
    }

    #[test]
    fn next_change_is_the_earliest_review_due_date() {
        let view = Fixture::new().view();
        // Models created 2026-11-01 with the default 90-day interval.
        assert_eq!(view.next_change, Some(at("2027-01-30T00:00:00Z")));
    }
}
