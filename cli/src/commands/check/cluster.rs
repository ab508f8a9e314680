//! Verdicts on the operator's objects: CRDs, the leader Lease, the bundles, the
//! sidecars' usage reports and the audit keyring. Pure functions of what was
//! read ([`ClusterState`]), so every verdict is tested from fixture objects.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::PartialObjectMeta;
use policybind_crds::ai_policy::PolicyStatus;
use policybind_crds::wire::{self, annotations, keys, labels, names, writers};
use policybind_crds::{AIPolicy, ClusterAIPolicy};
use policybind_engine::audit::KeyringDocument;
use policybind_engine::bundle::{Bundle, PolicyKind};
use policybind_engine::bundle_codec::{DecodeLimits, decode};
use policybind_operator::controllers::ai_policy::fingerprint as policy_fingerprint;
use policybind_sidecar::cluster::{announced, part_content};

use super::report::CheckLine;

/// How long sidecars may take to pick up a new bundle before a sidecar on an
/// older one is a failure rather than a warning: a sidecar swaps within
/// seconds of the write and reports at its next tick.
pub const SIDECAR_GRACE: Duration = Duration::minutes(2);

/// What `check` read from the cluster, besides the webhook.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    pub now: DateTime<Utc>,
    /// PolicyBind's own namespace.
    pub home: String,
    /// Our CRDs as found (absent ones are missing).
    pub crds: Vec<CustomResourceDefinition>,
    pub lease: Option<Lease>,
    /// Namespaces the operator keeps a bundle for.
    pub enforced: BTreeSet<String>,
    /// ConfigMaps labelled `policybind.io/bundle` in `home`.
    pub bundles: Vec<ConfigMap>,
    pub policies: Vec<AIPolicy>,
    pub cluster_policies: Vec<ClusterAIPolicy>,
    /// Injected pods (label `policybind.io/injected`) in enforced namespaces.
    pub pods: Vec<PartialObjectMeta<Pod>>,
    /// Usage reports (label `policybind.io/usage`) in enforced namespaces.
    pub usage_reports: Vec<ConfigMap>,
    /// The published keyring ConfigMap.
    pub keyring: Option<ConfigMap>,
}

/// Where to look when the operator did not do its part.
fn operator_logs(home: &str) -> String {
    format!("kubectl -n {home} logs -l app.kubernetes.io/component=operator --tail=200")
}

/// Every PolicyBind CRD is installed, established, and serves (and stores) the
/// version this binary speaks.
pub fn crd_lines(found: &[CustomResourceDefinition]) -> Vec<CheckLine> {
    let install = "kubectl apply --server-side -f charts/policybind/crds/ (or: policybind crds | kubectl apply --server-side -f -)";
    policybind_crds::crds()
        .iter()
        .map(|expected| {
            let name = expected.name_any();
            let check = format!("{name} serves {}", policybind_crds::VERSION);
            let Some(crd) = found.iter().find(|c| c.name_any() == name) else {
                return CheckLine::fail(
                    "crds",
                    check,
                    format!("CRD {name} is not installed"),
                    install,
                );
            };
            let version = crd
                .spec
                .versions
                .iter()
                .find(|v| v.name == policybind_crds::VERSION);
            let established = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            match version {
                None => CheckLine::fail(
                    "crds",
                    check,
                    format!("CRD {name} has no version {}", policybind_crds::VERSION),
                    install,
                ),
                Some(v) if !v.served => CheckLine::fail(
                    "crds",
                    check,
                    format!("version {} of {name} is not served", v.name),
                    install,
                ),
                Some(v) if !v.storage => CheckLine::fail(
                    "crds",
                    check,
                    format!("version {} of {name} is not the storage version", v.name),
                    install,
                ),
                Some(_) if !established => CheckLine::fail(
                    "crds",
                    check,
                    format!("CRD {name} is not Established"),
                    format!("kubectl describe crd {name}"),
                ),
                Some(_) => CheckLine::pass("crds", check),
            }
        })
        .collect()
}

/// The leader Lease exists, has a holder, and was renewed within its duration.
pub fn lease_line(lease: Option<&Lease>, home: &str, name: &str, now: DateTime<Utc>) -> CheckLine {
    let check = format!("the operator holds the leader Lease {home}/{name}");
    let describe = format!(
        "kubectl -n {home} get lease {name} -o yaml; {}",
        operator_logs(home)
    );
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return CheckLine::fail(
            "operator",
            check,
            format!(
                "Lease {home}/{name} does not exist: no operator replica leads (is it running with --leader-election?)"
            ),
            format!("kubectl -n {home} get pods -l app.kubernetes.io/component=operator"),
        );
    };
    let Some(holder) = spec.holder_identity.as_deref().filter(|h| !h.is_empty()) else {
        return CheckLine::fail(
            "operator",
            check,
            "the Lease has no holder: no replica leads",
            describe,
        );
    };
    let duration = Duration::seconds(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let Some(renewed) = spec
        .renew_time
        .as_ref()
        .and_then(|t| DateTime::<Utc>::from_timestamp(t.0.as_second(), 0))
    else {
        return CheckLine::fail(
            "operator",
            check,
            format!("the Lease held by {holder} was never renewed"),
            describe,
        );
    };
    if now > renewed + duration {
        let ago = (now - renewed).num_seconds();
        return CheckLine::fail(
            "operator",
            check,
            format!(
                "{holder} last renewed the Lease {ago}s ago, beyond its {}s duration: the leader is gone or stuck",
                duration.num_seconds()
            ),
            describe,
        );
    }
    CheckLine::pass(
        "operator",
        format!(
            "{check} ({holder}, renewed {}s ago)",
            (now - renewed).num_seconds().max(0)
        ),
    )
}

/// Time of the newest write to an object (its managed fields), or its creation.
fn last_written(cm: &ConfigMap) -> Option<DateTime<Utc>> {
    let managed = cm
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.time.as_ref());
    managed
        .chain(cm.metadata.creation_timestamp.as_ref())
        .filter_map(|t| DateTime::<Utc>::from_timestamp(t.0.as_second(), 0))
        .max()
}

/// A bundle read back: its announced fingerprint, its content and when part 0
/// was last written.
#[derive(Debug, Clone)]
pub struct ReadBundle {
    pub fingerprint: String,
    pub bundle: Bundle,
    pub written: Option<DateTime<Utc>>,
}

/// Reads `namespace`'s bundle from the ConfigMaps as a sidecar would: every part
/// of the announced fingerprint present, decoded within the sidecar's limits,
/// and its content hashing to the fingerprint it announces.
pub fn read_bundle(bundles: &[ConfigMap], namespace: &str) -> Result<ReadBundle, String> {
    let find = |name: &str| bundles.iter().find(|cm| cm.name_any() == name);
    let part0_name = wire::bundle_config_map(namespace);
    let part0 = find(&part0_name).ok_or_else(|| format!("ConfigMap {part0_name} is missing: new sidecars in {namespace} cannot start and fail closed"))?;
    let limits = DecodeLimits::default();
    let announced = announced(part0, &limits).map_err(|e| format!("refused: {e}"))?;
    let mut parts = Vec::with_capacity(announced.count);
    for index in 0..announced.count {
        let name = wire::bundle_part(namespace, index);
        let cm = find(&name)
            .ok_or_else(|| format!("part {name} of {} parts is missing", announced.count))?;
        match part_content(cm, &announced.fingerprint).map_err(|e| format!("refused: {e}"))? {
            Some(part) => parts.push(part),
            None => {
                return Err(format!(
                    "part {name} belongs to another version than {}",
                    announced.fingerprint
                ));
            }
        }
    }
    let bundle = decode(&parts, &limits).map_err(|e| format!("does not decode: {e}"))?;
    let computed = bundle.fingerprint();
    if computed != announced.fingerprint {
        return Err(format!(
            "its content has fingerprint {computed}, not the {} it announces: sidecars refuse it",
            announced.fingerprint
        ));
    }
    Ok(ReadBundle {
        fingerprint: announced.fingerprint,
        bundle,
        written: last_written(part0),
    })
}

/// A policy as the operator reported it in its status.
struct Reported<'a> {
    kind: PolicyKind,
    namespace: Option<&'a str>,
    name: String,
    generation: Option<i64>,
    status: Option<&'a PolicyStatus>,
}

fn reported_policies<'a>(state: &'a ClusterState, namespace: &str) -> Vec<Reported<'a>> {
    let own = state
        .policies
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace))
        .map(|p| Reported {
            kind: PolicyKind::AIPolicy,
            namespace: p.metadata.namespace.as_deref(),
            name: p.name_any(),
            generation: p.metadata.generation,
            status: p.status.as_ref(),
        });
    let cluster = state.cluster_policies.iter().map(|p| Reported {
        kind: PolicyKind::ClusterAIPolicy,
        namespace: None,
        name: p.name_any(),
        generation: p.metadata.generation,
        status: p.status.as_ref(),
    });
    own.chain(cluster).collect()
}

/// Whether the bundle holds the version of every policy the operator reports in
/// force: each AIPolicy of the namespace with the fingerprint in its status, and
/// each ClusterAIPolicy it carries likewise (whether a ClusterAIPolicy selects
/// the namespace is the operator's call; a selected one it left out cannot be
/// told from one that does not select it). `Err` names the first stale policy;
/// `Ok(Some)` a policy the operator has not compiled yet.
fn policies_current(
    state: &ClusterState,
    namespace: &str,
    read: &ReadBundle,
) -> Result<Option<String>, String> {
    let mut pending = None;
    for policy in reported_policies(state, namespace) {
        let label = match policy.namespace {
            Some(ns) => format!("AIPolicy {ns}/{}", policy.name),
            None => format!("ClusterAIPolicy {}", policy.name),
        };
        let observed = policy.status.and_then(|s| s.observed_generation);
        if observed.is_some_and(|o| policy.generation.is_some_and(|g| o < g)) {
            pending.get_or_insert(format!(
                "the operator has not yet compiled the newest generation of {label}"
            ));
        }
        let Some(expected) = policy.status.and_then(|s| s.fingerprint.as_deref()) else {
            continue;
        };
        let carried = read.bundle.policies.iter().find(|p| {
            p.kind == policy.kind
                && p.name == policy.name
                && p.namespace.as_deref() == policy.namespace
        });
        match carried {
            Some(p) if policy_fingerprint(p) == expected => {}
            Some(_) => {
                return Err(format!(
                    "it carries another version of {label} than the {expected} in force"
                ));
            }
            None if policy.kind == PolicyKind::AIPolicy => {
                return Err(format!("it does not carry {label}, in force as {expected}"));
            }
            None => {}
        }
    }
    Ok(pending)
}

/// One line per enforced namespace: its bundle present, complete, intact and
/// carrying the policy versions the operator reports in force.
pub fn bundle_lines(state: &ClusterState) -> Vec<CheckLine> {
    state
        .enforced
        .iter()
        .map(|namespace| {
            let check = format!("bundle of {namespace} is present and current");
            let cm = wire::bundle_config_map(namespace);
            let run = format!(
                "kubectl -n {} get configmap {cm} -o yaml; {}",
                state.home,
                operator_logs(&state.home)
            );
            let read = match read_bundle(&state.bundles, namespace) {
                Ok(read) => read,
                Err(problem) => {
                    return CheckLine::fail(
                        "bundles",
                        check,
                        format!("bundle {}/{cm}: {problem}", state.home),
                        run,
                    );
                }
            };
            match policies_current(state, namespace, &read) {
                Err(problem) => CheckLine::fail(
                    "bundles",
                    check,
                    format!("bundle {}/{cm} is stale: {problem}", state.home),
                    run,
                ),
                Ok(Some(pending)) => {
                    CheckLine::warn("bundles", check, pending, operator_logs(&state.home))
                }
                Ok(None) => {
                    CheckLine::pass("bundles", format!("{check} ({})", short(&read.fingerprint)))
                }
            }
        })
        .collect()
}

/// `sha256:0123456789ab`: enough of a fingerprint to tell versions apart.
fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(19)]
}

/// One line per enforced namespace with injected pods: every pod's usage report
/// names the fingerprint of the namespace's current bundle.
pub fn sidecar_lines(state: &ClusterState) -> Vec<CheckLine> {
    let mut by_namespace: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pod in &state.pods {
        if let Some(ns) = pod
            .metadata
            .namespace
            .as_ref()
            .filter(|ns| state.enforced.contains(*ns))
        {
            by_namespace
                .entry(ns.clone())
                .or_default()
                .push(pod.name_any());
        }
    }
    by_namespace
        .into_iter()
        .filter_map(|(namespace, pods)| {
            let current = read_bundle(&state.bundles, &namespace).ok()?;
            Some(sidecars_of(state, &namespace, &pods, &current))
        })
        .collect()
}

fn sidecars_of(
    state: &ClusterState,
    namespace: &str,
    pods: &[String],
    current: &ReadBundle,
) -> CheckLine {
    let check = format!(
        "{} sidecar(s) in {namespace} run bundle {}",
        pods.len(),
        short(&current.fingerprint)
    );
    let mut behind = Vec::new();
    let mut silent = Vec::new();
    for pod in pods {
        match reported_fingerprint(state, namespace, pod) {
            Some(f) if f == current.fingerprint => {}
            Some(f) => behind.push(format!("{pod} ({})", short(&f))),
            None => silent.push(pod.clone()),
        }
    }
    let run = format!(
        "kubectl -n {namespace} logs <pod> -c {}",
        names::SIDECAR_CONTAINER
    );
    let settled = current
        .written
        .is_none_or(|w| state.now - w > SIDECAR_GRACE);
    if !behind.is_empty() {
        let problem = format!("on an older bundle: {}", behind.join(", "));
        return match settled {
            true => CheckLine::fail(
                "sidecars",
                check,
                format!(
                    "{problem}; the bundle changed more than {}s ago",
                    SIDECAR_GRACE.num_seconds()
                ),
                run,
            ),
            false => CheckLine::warn(
                "sidecars",
                check,
                format!("{problem}; the bundle changed moments ago"),
                run,
            ),
        };
    }
    if !silent.is_empty() {
        let problem = format!(
            "no usage report naming a bundle yet from: {} (a sidecar reports at its first tick once its bundle is loaded)",
            silent.join(", ")
        );
        return CheckLine::warn("sidecars", check, problem, run);
    }
    CheckLine::pass("sidecars", check)
}

/// The fingerprint `pod`'s usage report names, if the report is the pod's own.
fn reported_fingerprint(state: &ClusterState, namespace: &str, pod: &str) -> Option<String> {
    let name = wire::usage_report_name(pod);
    state
        .usage_reports
        .iter()
        .filter(|cm| cm.namespace().as_deref() == Some(namespace) && cm.name_any() == name)
        .find(|cm| cm.labels().get(labels::WRITER_POD).map(String::as_str) == Some(pod))
        .and_then(|cm| cm.annotations().get(annotations::FINGERPRINT).cloned())
}

/// The published keyring holds a key in use for the operator, the webhook and
/// every enforced namespace's sidecars. The keyring is what verifiers trust,
/// and the operator publishes a key only from its Secret, so this checks the
/// Secrets without reading them.
pub fn audit_lines(state: &ClusterState) -> Vec<CheckLine> {
    let home = &state.home;
    let check = format!("keyring {home}/{} is published", names::AUDIT_KEYRING);
    let run = format!(
        "kubectl -n {home} get configmap {} -o yaml; {}",
        names::AUDIT_KEYRING,
        operator_logs(home)
    );
    let Some(cm) = &state.keyring else {
        return vec![CheckLine::fail(
            "audit",
            check,
            "the keyring ConfigMap is missing: audit trails cannot be verified against the cluster",
            run,
        )];
    };
    let json = cm.data.as_ref().and_then(|d| d.get(keys::AUDIT_KEYRING));
    let document = match json.map(|j| KeyringDocument::parse(j.as_bytes())) {
        None => {
            return vec![CheckLine::fail(
                "audit",
                check,
                format!("the keyring has no data key {}", keys::AUDIT_KEYRING),
                run,
            )];
        }
        Some(Err(error)) => {
            return vec![CheckLine::fail(
                "audit",
                check,
                format!("the keyring does not parse: {error}"),
                run,
            )];
        }
        Some(Ok(document)) => document,
    };
    let mut lines = vec![CheckLine::pass("audit", check)];
    let mut expected = vec![
        ("the operator".to_string(), writers::OPERATORS.to_string()),
        ("the webhook".to_string(), writers::WEBHOOKS.to_string()),
    ];
    expected.extend(
        state
            .enforced
            .iter()
            .map(|ns| (format!("sidecars in {ns}"), writers::sidecars_of(ns))),
    );
    for (who, pattern) in expected {
        let check = format!("an audit key signs for {who} ({pattern})");
        let active = document
            .keys
            .iter()
            .any(|k| k.retired_at.is_none() && k.writers.contains(&pattern));
        lines.push(match active {
            true => CheckLine::pass("audit", check),
            false => CheckLine::fail("audit", check, format!("no key in use is bound to {pattern}: the key's Secret is missing or the operator has not published it"), run.clone()),
        });
    }
    lines
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
