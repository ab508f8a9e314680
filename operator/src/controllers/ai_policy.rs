//! AIPolicy and ClusterAIPolicy controller: compile on every change, report the
//! exact compile error, and keep the last good version in force.
//!
//! A policy is compiled together with the accepted versions of the policies it
//! could conflict with (same priority, or a custom detector of the same name,
//! in an overlapping scope), so `Ready=False` names conflicts as well as syntax
//! errors, in the engine's words (`resource rule "name": field: reason`). When a
//! new version fails, bundles keep the previous good version ([`PolicyMemory`]);
//! after an operator restart the previous good version is recovered from the
//! bundle ConfigMaps already in the cluster.
//!
//! No finalizer: bundles are recomputed from the policies that exist, so a
//! deleted policy leaves every bundle at the next build.

use policybind_crds::wire::{annotations, keys, labels};
use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use policybind_crds::ai_policy::PolicyStatus;
use policybind_crds::conditions::{self, reasons as crd_reasons, types};
use policybind_crds::{AIPolicy, API_VERSION, ClusterAIPolicy};
use policybind_engine::PolicySet;
use policybind_engine::audit::AuditEvent;
use policybind_engine::bundle::{Bundle, BundlePolicy};
use policybind_engine::bundle_codec::{self, BundlePart, DecodeLimits};
use serde_json::json;

use kube::runtime::controller::Controller;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};

use crate::context::{Context, key_of, to_jiff};
use crate::controllers::{Tasks, Wiring, drain};
use crate::error::{Error, Result};
use crate::state::{PolicyMemory, resource_id};
use crate::stores::{bump, watch};

const CONTROLLER: &str = "ai_policy";
const CLUSTER_CONTROLLER: &str = "cluster_ai_policy";

/// Fingerprint of one policy: the SHA-256 of a bundle holding only it.
pub fn fingerprint(policy: &BundlePolicy) -> String {
    Bundle {
        policies: vec![policy.clone()],
        ..Default::default()
    }
    .fingerprint()
}

fn scopes_overlap(a: &BundlePolicy, b: &BundlePolicy) -> bool {
    match (&a.namespace, &b.namespace) {
        (Some(x), Some(y)) => x == y,
        // A ClusterAIPolicy may apply anywhere; checking against it is cheap
        // because only equal priorities or shared detector names are peers.
        _ => true,
    }
}

/// Policies that can conflict with `policy`.
pub fn peers<'a>(
    policy: &BundlePolicy,
    accepted: impl IntoIterator<Item = &'a BundlePolicy>,
) -> Vec<BundlePolicy> {
    let id = resource_id(policy);
    accepted
        .into_iter()
        .filter(|other| resource_id(other) != id && scopes_overlap(policy, other))
        .filter(|other| {
            other.priority == policy.priority
                || other.custom_detectors.iter().any(|d| {
                    policy
                        .custom_detectors
                        .iter()
                        .any(|mine| mine.name == d.name)
                })
        })
        .cloned()
        .collect()
}

/// Compiles `policy` with its peers and returns the errors that concern it,
/// one per line, or the number of rules.
pub fn check(policy: &BundlePolicy, peers: Vec<BundlePolicy>) -> Result<usize, String> {
    let mut policies = peers;
    // Last, so that a conflict is reported on the newcomer, not on its peer.
    policies.push(policy.clone());
    let bundle = Bundle {
        policies,
        ..Default::default()
    };
    let id = resource_id(policy);
    match PolicySet::compile(&bundle) {
        Ok(_) => Ok(policy.rules.len()),
        Err(errors) => {
            let mine: Vec<String> = errors
                .0
                .iter()
                .filter(|e| e.resource == id)
                .map(ToString::to_string)
                .collect();
            if mine.is_empty() {
                // The peers' own problems are theirs to report.
                Ok(policy.rules.len())
            } else {
                Err(mine.join("\n"))
            }
        }
    }
}

/// Compiles many policies at once (one engine compile, so detectors and the CEL
/// environment are built once) and returns each one's result. `accepted` are
/// versions already in force: they take part, so conflicts with them count, but
/// errors are attributed to `candidates` only (listed last, so a conflict is
/// reported on them).
pub fn check_many(
    candidates: &[BundlePolicy],
    accepted: Vec<BundlePolicy>,
) -> HashMap<String, Result<usize, String>> {
    let mut results: HashMap<String, Result<usize, String>> = candidates
        .iter()
        .map(|p| (resource_id(p), Ok(p.rules.len())))
        .collect();
    let mut policies = accepted;
    policies.retain(|p| !results.contains_key(&resource_id(p)));
    policies.extend(candidates.iter().cloned());
    let bundle = Bundle {
        policies,
        ..Default::default()
    };
    if let Err(errors) = PolicySet::compile(&bundle) {
        for error in errors.0 {
            if let Some(result) = results.get_mut(&error.resource) {
                match result {
                    Ok(_) => *result = Err(error.to_string()),
                    Err(message) => {
                        message.push('\n');
                        message.push_str(&error.to_string());
                    }
                }
            }
        }
    }
    results
}

/// The versions bundles should carry, for policies given with their uid and
/// generation. Versions the controller has not judged yet (right after start)
/// are compiled here, all in one go.
pub fn versions_in_force(
    memory: &PolicyMemory,
    policies: &[(BundlePolicy, String, Option<i64>)],
) -> Vec<BundlePolicy> {
    let unknown: Vec<&(BundlePolicy, String, Option<i64>)> = policies
        .iter()
        .filter(|(p, uid, generation)| !memory.knows(p, uid, *generation))
        .collect();
    if !unknown.is_empty() {
        let candidates: Vec<BundlePolicy> = unknown.iter().map(|(p, _, _)| p.clone()).collect();
        let results = check_many(&candidates, memory.all_in_force());
        for (policy, uid, generation) in unknown {
            let result = results
                .get(&resource_id(policy))
                .cloned()
                .unwrap_or(Ok(policy.rules.len()));
            memory.record(uid, *generation, policy.clone(), &result, None);
        }
    }
    policies
        .iter()
        .filter_map(|(p, _, _)| memory.in_force(p))
        .collect()
}

/// Finds the version of a policy in the bundles already written, to restore
/// the last good version after a restart. Only bundles in the operator's own
/// namespace (`home`) count: a ConfigMap labelled as a bundle anywhere a workload
/// can write must never put a policy version in force.
pub fn recover_from_bundles<'a>(
    policy: &BundlePolicy,
    home: &str,
    bundles: impl IntoIterator<Item = &'a ConfigMap>,
) -> Option<BundlePolicy> {
    let mut by_namespace: HashMap<String, Vec<(usize, BundlePart)>> = HashMap::new();
    for cm in bundles {
        if cm.metadata.namespace.as_deref() != Some(home) {
            continue;
        }
        let Some(ns) = cm
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::BUNDLE_NAMESPACE))
            .cloned()
        else {
            continue;
        };
        if let Some(wanted) = &policy.namespace
            && *wanted != ns
        {
            continue;
        }
        let Some(index) = cm
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(annotations::BUNDLE_PART))
            .and_then(|p| p.split_once('/'))
            .and_then(|(index, _)| index.parse::<usize>().ok())
        else {
            continue;
        };
        let part = if let Some(json) = cm.data.as_ref().and_then(|d| d.get(keys::BUNDLE_JSON)) {
            BundlePart::Plain(json.clone())
        } else if let Some(gz) = cm.binary_data.as_ref().and_then(|d| d.get(keys::BUNDLE_GZ)) {
            BundlePart::Gzip(gz.0.clone())
        } else {
            continue;
        };
        by_namespace.entry(ns).or_default().push((index, part));
    }
    let id = resource_id(policy);
    by_namespace.into_values().find_map(|mut parts| {
        parts.sort_by_key(|(i, _)| *i);
        let parts: Vec<BundlePart> = parts.into_iter().map(|(_, p)| p).collect();
        let bundle = bundle_codec::decode(&parts, &DecodeLimits::default()).ok()?;
        bundle.policies.into_iter().find(|p| resource_id(p) == id)
    })
}

/// The status a policy should have after a compile.
pub fn desired_status(
    old: Option<&PolicyStatus>,
    generation: Option<i64>,
    policy: &BundlePolicy,
    result: &Result<usize, String>,
    kept_previous: bool,
    now: DateTime<Utc>,
) -> PolicyStatus {
    let old = old.cloned().unwrap_or_default();
    let mut list = old.conditions.clone();
    let condition = match result {
        Ok(rules) => conditions::condition(
            types::READY,
            true,
            crd_reasons::COMPILED,
            format!("{rules} rules compiled"),
            generation,
            to_jiff(now),
        ),
        Err(error) => conditions::condition(
            types::READY,
            false,
            crd_reasons::COMPILE_FAILED,
            if kept_previous {
                format!("{error}\n(the previous good version stays in force)")
            } else {
                error.clone()
            },
            generation,
            to_jiff(now),
        ),
    };
    conditions::set_condition(&mut list, condition);
    match result {
        Ok(rules) => PolicyStatus {
            observed_generation: generation,
            conditions: list,
            rule_count: Some(*rules as u32),
            fingerprint: Some(fingerprint(policy)),
        },
        // Rule count and fingerprint keep describing the version in force.
        Err(_) => PolicyStatus {
            observed_generation: generation,
            conditions: list,
            rule_count: if kept_previous { old.rule_count } else { None },
            fingerprint: if kept_previous { old.fingerprint } else { None },
        },
    }
}

async fn reconcile_policy<K>(
    object: &K,
    policy: BundlePolicy,
    old_status: Option<&PolicyStatus>,
    api: Api<K>,
    controller: &'static str,
    ctx: &Context,
) -> Result<Action>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let _timer = ctx.metrics.reconcile(controller);
    let now = ctx.now();
    let uid = object
        .meta()
        .uid
        .clone()
        .ok_or(Error::MissingField("metadata.uid"))?;
    let generation = object.meta().generation;
    let accepted = ctx.state.policies.all_in_force();
    let result = check(&policy, peers(&policy, &accepted));
    let recovered = match &result {
        Err(_) if ctx.state.policies.in_force(&policy).is_none() => recover_from_bundles(
            &policy,
            &ctx.settings.namespace,
            ctx.stores.bundles.state().iter().map(|c| c.as_ref()),
        ),
        _ => None,
    };
    if ctx
        .state
        .policies
        .record(&uid, generation, policy.clone(), &result, recovered)
    {
        ctx.bundles_changed();
    }
    let kept_previous = ctx.state.policies.in_force(&policy).is_some();
    let status = desired_status(old_status, generation, &policy, &result, kept_previous, now);
    if old_status != Some(&status) {
        let patch = json!({
            "apiVersion": API_VERSION,
            "kind": K::kind(&()),
            "status": status,
        });
        api.patch_status(
            &object.meta().name.clone().unwrap_or_default(),
            &Context::apply_params(),
            &Patch::Apply(&patch),
        )
        .await?;
        let was_ready = old_status
            .map(|s| conditions::is_true(&s.conditions, types::READY))
            .unwrap_or(true);
        let transition = match &result {
            Err(_) => Some("policy-compile-failed"),
            Ok(_) if !was_ready => Some("policy-compiled"),
            Ok(_) => None,
        };
        if let Some(transition) = transition {
            let mut event = AuditEvent::lifecycle(transition)
                .detail("policy", resource_id(&policy))
                .detail(
                    "fingerprint",
                    status.fingerprint.clone().unwrap_or_default(),
                );
            if let Some(ns) = &policy.namespace {
                event = event.namespace(ns.clone());
            }
            ctx.record(event);
        }
        match &result {
            Err(error) => {
                ctx.event(object, true, crd_reasons::COMPILE_FAILED, error.clone())
                    .await
            }
            Ok(rules) if !was_ready => {
                ctx.event(
                    object,
                    false,
                    crd_reasons::COMPILED,
                    format!("{rules} rules compiled; the policy is in force again"),
                )
                .await
            }
            Ok(_) => {}
        }
    }
    Ok(Action::await_change())
}

/// Reconciles one AIPolicy.
pub async fn reconcile(policy: Arc<AIPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = policy
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<AIPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    let action = reconcile_policy(
        policy.as_ref(),
        BundlePolicy::from_ai_policy(&policy),
        policy.status.as_ref(),
        api,
        CONTROLLER,
        &ctx,
    )
    .await?;
    ctx.succeeded(&key_of(policy.as_ref()));
    Ok(action)
}

/// Reconciles one ClusterAIPolicy.
pub async fn reconcile_cluster(policy: Arc<ClusterAIPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let api: Api<ClusterAIPolicy> = Api::all(ctx.client.clone());
    let action = reconcile_policy(
        policy.as_ref(),
        BundlePolicy::from_cluster_policy(&policy),
        policy.status.as_ref(),
        api,
        CLUSTER_CONTROLLER,
        &ctx,
    )
    .await?;
    ctx.succeeded(&key_of(policy.as_ref()));
    Ok(action)
}

pub fn error_policy(policy: Arc<AIPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.backoff(CONTROLLER, &key_of(policy.as_ref()), error)
}

pub fn error_policy_cluster(
    policy: Arc<ClusterAIPolicy>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.backoff(CLUSTER_CONTROLLER, &key_of(policy.as_ref()), error)
}

/// Watches AIPolicies and ClusterAIPolicies in every namespace. A spec change
/// also bumps the bundle epoch: every bundle the policy applies to is rebuilt.
pub fn run(
    w: &Wiring,
    policies: Writer<AIPolicy>,
    cluster_policies: Writer<ClusterAIPolicy>,
) -> Tasks {
    let ctx = &w.ctx;
    let policy_stream = watch(
        watcher::watcher(Api::<AIPolicy>::all(w.client.clone()), Default::default()),
        policies,
        bump(ctx),
    )
    .applied_objects();
    let cluster_stream = watch(
        watcher::watcher(
            Api::<ClusterAIPolicy>::all(w.client.clone()),
            Default::default(),
        ),
        cluster_policies,
        bump(ctx),
    )
    .applied_objects();
    let policies = Controller::for_stream(policy_stream, ctx.stores.policies.clone())
        .with_config(w.config(None))
        .graceful_shutdown_on(w.graceful())
        .run(super::once_listed(reconcile), error_policy, ctx.clone());
    let cluster_policies =
        Controller::for_stream(cluster_stream, ctx.stores.cluster_policies.clone())
            .with_config(w.config(None))
            .graceful_shutdown_on(w.graceful())
            .run(
                super::once_listed(reconcile_cluster),
                error_policy_cluster,
                ctx.clone(),
            );
    Tasks {
        main: vec![drain(policies), drain(cluster_policies)],
        side: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{cluster_policy, policy, rule};

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn bad_when(ns: &str, name: &str) -> BundlePolicy {
        let mut r = rule("broken", "Deny", &["gpt-*"]);
        r.when = Some("request.model ==".into());
        BundlePolicy::from_ai_policy(&policy(ns, name, vec![r]))
    }

    #[test]
    fn valid_policy_compiles_with_its_rule_count() {
        let p = BundlePolicy::from_ai_policy(&policy(
            "team-a",
            "chat",
            vec![
                rule("allow-gpt", "Allow", &["gpt-*"]),
                rule("deny-rest", "Deny", &[]),
            ],
        ));
        assert_eq!(check(&p, vec![]), Ok(2));
    }

    #[test]
    fn compile_error_names_the_policy_rule_and_field() {
        let error = check(&bad_when("team-a", "chat"), vec![]).unwrap_err();
        assert!(
            error.starts_with("AIPolicy team-a/chat rule \"broken\": spec.rules[0].when"),
            "{error}"
        );
    }

    #[test]
    fn conflict_with_an_accepted_peer_is_reported_on_the_newcomer() {
        let existing = BundlePolicy::from_ai_policy(&policy(
            "team-a",
            "first",
            vec![rule("gpt", "Allow", &["gpt-4o"])],
        ));
        let newcomer = BundlePolicy::from_ai_policy(&policy(
            "team-a",
            "second",
            vec![rule("gpt", "Deny", &["gpt-4o"])],
        ));
        let found = peers(&newcomer, [&existing]);
        assert_eq!(found.len(), 1);
        let error = check(&newcomer, found).unwrap_err();
        assert!(error.contains("AIPolicy team-a/second"), "{error}");
        assert!(
            error.contains("conflicts with AIPolicy team-a/first"),
            "{error}"
        );
    }

    #[test]
    fn policies_in_other_namespaces_are_not_peers() {
        let a = BundlePolicy::from_ai_policy(&policy("team-a", "p", vec![rule("r", "Allow", &[])]));
        let b = BundlePolicy::from_ai_policy(&policy("team-b", "p", vec![rule("r", "Deny", &[])]));
        let c = BundlePolicy::from_cluster_policy(&cluster_policy(
            "c",
            &[],
            vec![rule("r", "Deny", &[])],
        ));
        let found = peers(&a, [&b, &c]);
        assert_eq!(found, vec![c]);
    }

    #[test]
    fn batch_compile_attributes_each_error_to_its_policy() {
        let good = BundlePolicy::from_ai_policy(&policy(
            "team-a",
            "good",
            vec![rule("r", "Allow", &["a"])],
        ));
        let bad = bad_when("team-a", "bad");
        let results = check_many(&[good.clone(), bad.clone()], vec![]);
        assert_eq!(results[&resource_id(&good)], Ok(1));
        assert!(
            results[&resource_id(&bad)]
                .as_ref()
                .unwrap_err()
                .contains("spec.rules[0].when")
        );
    }

    #[test]
    fn unseen_policies_are_judged_once_and_broken_ones_stay_out() {
        let memory = PolicyMemory::default();
        let good = BundlePolicy::from_ai_policy(&policy(
            "team-a",
            "good",
            vec![rule("r", "Allow", &["a"])],
        ));
        let bad = bad_when("team-a", "bad");
        let input = vec![
            (good.clone(), "u1".to_string(), Some(1)),
            (bad.clone(), "u2".to_string(), Some(1)),
        ];
        assert_eq!(versions_in_force(&memory, &input), vec![good.clone()]);
        assert!(memory.knows(&bad, "u2", Some(1)));
    }

    #[test]
    fn failed_new_version_keeps_the_previous_good_version_in_force() {
        let memory = PolicyMemory::default();
        let good =
            BundlePolicy::from_ai_policy(&policy("team-a", "chat", vec![rule("r", "Allow", &[])]));
        assert!(memory.record("u1", Some(1), good.clone(), &Ok(1), None));
        let bad = bad_when("team-a", "chat");
        let result = check(&bad, vec![]);
        assert!(!memory.record("u1", Some(2), bad.clone(), &result, None));
        assert_eq!(memory.in_force(&bad), Some(good.clone()));
        // Fixing it puts the fixed version in force.
        let fixed =
            BundlePolicy::from_ai_policy(&policy("team-a", "chat", vec![rule("r2", "Deny", &[])]));
        assert!(memory.record("u1", Some(3), fixed.clone(), &Ok(1), None));
        assert_eq!(memory.in_force(&fixed), Some(fixed));
    }

    #[test]
    fn a_recreated_policy_does_not_inherit_the_old_objects_good_version() {
        let memory = PolicyMemory::default();
        let good =
            BundlePolicy::from_ai_policy(&policy("team-a", "chat", vec![rule("r", "Allow", &[])]));
        memory.record("u1", Some(1), good, &Ok(1), None);
        let bad = bad_when("team-a", "chat");
        memory.record("u2", Some(1), bad.clone(), &check(&bad, vec![]), None);
        assert_eq!(memory.in_force(&bad), None);
    }

    #[test]
    fn failed_status_carries_the_exact_error_and_keeps_the_old_fingerprint() {
        let good =
            BundlePolicy::from_ai_policy(&policy("team-a", "chat", vec![rule("r", "Allow", &[])]));
        let ok = desired_status(
            None,
            Some(1),
            &good,
            &Ok(1),
            false,
            at("2026-11-22T10:00:00Z"),
        );
        assert_eq!(ok.fingerprint, Some(fingerprint(&good)));
        let bad = bad_when("team-a", "chat");
        let error = check(&bad, vec![]);
        let failed = desired_status(
            Some(&ok),
            Some(2),
            &bad,
            &error,
            true,
            at("2026-11-22T11:00:00Z"),
        );
        let ready = conditions::find(&failed.conditions, types::READY).unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "CompileFailed");
        assert!(ready.message.starts_with(&error.unwrap_err()));
        assert_eq!(failed.fingerprint, ok.fingerprint);
        assert_eq!(failed.observed_generation, Some(2));
    }

    #[test]
    fn previous_version_is_recovered_from_a_written_bundle() {
        let good =
            BundlePolicy::from_ai_policy(&policy("team-a", "chat", vec![rule("r", "Allow", &[])]));
        let bundle = Bundle {
            namespace: Some("team-a".into()),
            policies: vec![good.clone()],
            ..Default::default()
        };
        let encoded = bundle_codec::encode(&bundle, bundle_codec::DEFAULT_MAX_PART_BYTES);
        let cms = crate::controllers::namespace::bundle_config_maps(
            "policybind-system",
            "team-a",
            None,
            &encoded,
        );
        assert_eq!(
            recover_from_bundles(&bad_when("team-a", "chat"), "policybind-system", &cms),
            Some(good.clone())
        );
        assert_eq!(
            recover_from_bundles(&bad_when("team-b", "chat"), "policybind-system", &cms),
            None
        );
        // The same bundle planted where a workload can write is never read.
        let planted: Vec<ConfigMap> = cms
            .iter()
            .cloned()
            .map(|mut cm| {
                cm.metadata.namespace = Some("team-a".into());
                cm
            })
            .collect();
        assert_eq!(
            recover_from_bundles(&bad_when("team-a", "chat"), "policybind-system", &planted),
            None
        );
    }
}
