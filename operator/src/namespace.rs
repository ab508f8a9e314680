//! The bundle writer: one reconcile per Namespace.
//!
//! For an enforced namespace (see [`crate::bundle::is_enforced`]) it writes the
//! namespace's bundle ConfigMap(s) (`policybind-bundle`, plus
//! `policybind-bundle-<n>` parts when large; format in
//! [`policybind_engine::bundle_codec`]) and the `policybind-sidecar` Role and
//! RoleBinding that let the namespace's pods read it. It writes only when the
//! content differs from what is in the cluster, so a rebuild that changes
//! nothing costs no API call. When a namespace stops being enforced, the
//! operator's objects there are deleted (there is no cluster-scoped owner that
//! could garbage-collect them).
//!
//! Every change of an input (policy, model, token, token Secret, usage report,
//! approval, namespace labels) bumps the context's epoch and triggers all
//! namespaces; the controller's debounce coalesces bursts. The cluster view and
//! each namespace's encoded bundle are cached per epoch, so N namespaces build
//! the view once.

use policybind_crds::wire::{annotations, keys, labels};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, Patch};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use policybind_engine::bundle_codec::{self, BundlePart, EncodedBundle};

use crate::access_token::{SecretState, read_secret};
use crate::bundle::{ClusterView, ViewInputs, cluster_view, desired_bundle, is_enforced};
use crate::context::{Context, requeue_at};
use crate::error::{Error, Result};

const CONTROLLER: &str = "bundle";
/// Name of the Role and RoleBinding for sidecars in each enforced namespace.
pub const SIDECAR_RBAC_NAME: &str = "policybind-sidecar";
/// Bundle parts the sidecar Role names (`policybind-bundle` and `-1` .. `-15`):
/// 16 parts of 700 KiB of gzip are far beyond any realistic bundle.
pub const MAX_BUNDLE_PARTS: usize = 16;

/// Caches of the bundle writer: the view of the current input epoch, and each
/// namespace's encoded bundle tagged with the view build it came from.
#[derive(Default)]
pub struct BundleCache {
    /// (input epoch, build number, view).
    view: Mutex<Option<(u64, u64, Arc<ClusterView>)>>,
    encoded: Mutex<HashMap<String, (u64, Arc<EncodedBundle>)>>,
    builds: std::sync::atomic::AtomicU64,
}

/// The cluster view for the current input epoch, built from the caches if needed
/// (one build at a time; concurrent callers wait and share it), with its build
/// number. The epoch is read before the caches, so a change during the build
/// makes the view look older, never newer, than it is.
pub fn current_view(ctx: &Context) -> (u64, Arc<ClusterView>) {
    let epoch = ctx.epoch();
    let now = ctx.now();
    let mut cached = ctx.bundles.view.lock().expect("view cache lock poisoned");
    if let Some((at_epoch, build, view)) = cached.as_ref()
        && *at_epoch == epoch
        && view.next_change.is_none_or(|t| now < t)
    {
        return (*build, view.clone());
    }
    let stores = &ctx.stores;
    let secrets: HashMap<String, SecretState> = stores
        .token_secrets
        .state()
        .iter()
        .filter_map(|s| {
            let key = format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or(""),
                s.name_any()
            );
            read_secret(s).map(|state| (key, state))
        })
        .collect();
    let usage = crate::access_token::usage_reports(ctx);
    let policies = stores.policies.state();
    let cluster_policies = stores.cluster_policies.state();
    let models = stores.models.state();
    let approvals = stores.approvals.state();
    let tokens = stores.tokens.state();
    let namespaces = stores.namespaces.state();
    let inputs = ViewInputs {
        policies: &policies,
        cluster_policies: &cluster_policies,
        models: &models,
        approvals: &approvals,
        tokens: &tokens,
        secrets: &secrets,
        usage: &usage,
        namespaces: &namespaces,
        approval_ttl: ctx.settings.approval_ttl,
    };
    let view = Arc::new(cluster_view(&inputs, &ctx.policies, now));
    let existing: std::collections::HashSet<String> = policies
        .iter()
        .map(|p| {
            crate::ai_policy::resource_id(&policybind_engine::bundle::BundlePolicy::from_ai_policy(
                p,
            ))
        })
        .chain(cluster_policies.iter().map(|p| {
            crate::ai_policy::resource_id(
                &policybind_engine::bundle::BundlePolicy::from_cluster_policy(p),
            )
        }))
        .collect();
    ctx.policies.retain(&existing);
    let build = ctx
        .bundles
        .builds
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        + 1;
    *cached = Some((epoch, build, view.clone()));
    (build, view)
}

fn encoded_bundle(ctx: &Context, namespace: &str) -> (Arc<EncodedBundle>, Option<DateTime<Utc>>) {
    let (build, view) = current_view(ctx);
    let hit = ctx
        .bundles
        .encoded
        .lock()
        .expect("encoded cache lock poisoned")
        .get(namespace)
        .filter(|(at, _)| *at == build)
        .map(|(_, encoded)| encoded.clone());
    if let Some(encoded) = hit {
        return (encoded, view.next_change);
    }
    // Encode without holding the cache lock: namespaces encode in parallel.
    let bundle = desired_bundle(&view, namespace);
    let encoded = Arc::new(bundle_codec::encode(
        &bundle,
        bundle_codec::DEFAULT_MAX_PART_BYTES,
    ));
    ctx.bundles
        .encoded
        .lock()
        .expect("encoded cache lock poisoned")
        .insert(namespace.to_string(), (build, encoded.clone()));
    (encoded, view.next_change)
}

fn managed_labels(extra: Option<(&str, &str)>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([(
        labels::MANAGED_BY.to_string(),
        labels::MANAGED_BY_VALUE.to_string(),
    )]);
    if let Some((k, v)) = extra {
        labels.insert(k.to_string(), v.to_string());
    }
    labels
}

/// The ConfigMaps that hold an encoded bundle in `namespace`, part 0 first.
pub fn bundle_config_maps(namespace: &str, encoded: &EncodedBundle) -> Vec<ConfigMap> {
    let count = encoded.parts.len();
    encoded
        .parts
        .iter()
        .enumerate()
        .map(|(index, part)| {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(bundle_codec::part_name(index));
            cm.metadata.namespace = Some(namespace.to_string());
            cm.metadata.labels = Some(managed_labels(Some((labels::BUNDLE, "true"))));
            cm.metadata.annotations = Some(BTreeMap::from([
                (
                    annotations::FINGERPRINT.to_string(),
                    encoded.fingerprint.clone(),
                ),
                (
                    annotations::BUNDLE_PART.to_string(),
                    format!("{index}/{count}"),
                ),
            ]));
            match part {
                BundlePart::Plain(json) => {
                    cm.data = Some(BTreeMap::from([(
                        keys::BUNDLE_JSON.to_string(),
                        json.clone(),
                    )]));
                }
                BundlePart::Gzip(bytes) => {
                    cm.binary_data = Some(BTreeMap::from([(
                        keys::BUNDLE_GZ.to_string(),
                        ByteString(bytes.clone()),
                    )]));
                }
            }
            cm
        })
        .collect()
}

/// Role for the pods of an enforced namespace: read the bundle, write usage
/// reports and audit segments, raise and read ApprovalRequests.
pub fn sidecar_role(namespace: &str) -> Role {
    let bundle_names = (0..MAX_BUNDLE_PARTS).map(bundle_codec::part_name).collect();
    let mut role = Role {
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec!["".into()]),
                resources: Some(vec!["configmaps".into()]),
                resource_names: Some(bundle_names),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..Default::default()
            },
            PolicyRule {
                api_groups: Some(vec!["".into()]),
                resources: Some(vec!["configmaps".into()]),
                // Audit segments and usage reports are written by server-side apply
                // (patch, create on first write); the audit store lists its own
                // segments (label-filtered, which RBAC cannot narrow) to resume a chain.
                verbs: vec![
                    "create".into(),
                    "get".into(),
                    "list".into(),
                    "update".into(),
                    "patch".into(),
                ],
                ..Default::default()
            },
            PolicyRule {
                api_groups: Some(vec![policybind_crds::GROUP.into()]),
                resources: Some(vec!["approvalrequests".into()]),
                verbs: vec!["create".into(), "get".into()],
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    role.metadata.name = Some(SIDECAR_RBAC_NAME.into());
    role.metadata.namespace = Some(namespace.into());
    role.metadata.labels = Some(managed_labels(None));
    role
}

/// Binds [`sidecar_role`] to every service account of the namespace.
pub fn sidecar_role_binding(namespace: &str) -> RoleBinding {
    let mut binding = RoleBinding {
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: SIDECAR_RBAC_NAME.into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Group".into(),
            name: format!("system:serviceaccounts:{namespace}"),
            namespace: None,
        }]),
        ..Default::default()
    };
    binding.metadata.name = Some(SIDECAR_RBAC_NAME.into());
    binding.metadata.namespace = Some(namespace.into());
    binding.metadata.labels = Some(managed_labels(None));
    binding
}

fn is_managed<K: Resource>(object: &K) -> bool {
    object
        .meta()
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::MANAGED_BY))
        .is_some_and(|v| v == labels::MANAGED_BY_VALUE)
}

/// Whether the ConfigMap in the cluster already holds exactly `desired`.
fn same_config_map(existing: &ConfigMap, desired: &ConfigMap) -> bool {
    let annotation = |cm: &ConfigMap, key: &str| {
        cm.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
    };
    annotation(existing, annotations::FINGERPRINT) == annotation(desired, annotations::FINGERPRINT)
        && annotation(existing, annotations::BUNDLE_PART)
            == annotation(desired, annotations::BUNDLE_PART)
        && existing.data == desired.data
        && existing.binary_data == desired.binary_data
        && is_managed(existing)
}

async fn cleanup(namespace: &str, ctx: &Context) -> Result<()> {
    let stores = &ctx.stores;
    let in_ns = |ns: Option<&str>| ns == Some(namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    for cm in stores.bundles.state() {
        if in_ns(cm.metadata.namespace.as_deref()) && is_managed(cm.as_ref()) {
            config_maps
                .delete(&cm.name_any(), &DeleteParams::default())
                .await?;
            tracing::info!(namespace, configmap = %cm.name_any(), "namespace no longer enforced; bundle removed");
        }
    }
    if stores.role_bindings.state().iter().any(|rb| {
        in_ns(rb.metadata.namespace.as_deref())
            && rb.name_any() == SIDECAR_RBAC_NAME
            && is_managed(rb.as_ref())
    }) {
        let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), namespace);
        api.delete(SIDECAR_RBAC_NAME, &DeleteParams::default())
            .await?;
    }
    if stores.roles.state().iter().any(|r| {
        in_ns(r.metadata.namespace.as_deref())
            && r.name_any() == SIDECAR_RBAC_NAME
            && is_managed(r.as_ref())
    }) {
        let api: Api<Role> = Api::namespaced(ctx.client.clone(), namespace);
        api.delete(SIDECAR_RBAC_NAME, &DeleteParams::default())
            .await?;
    }
    Ok(())
}

/// Reconciles the bundle and sidecar RBAC of one namespace.
pub async fn reconcile(namespace: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action> {
    // Never publish from half-filled caches: a bundle without tokens would lock
    // every caller out.
    let timeout = ctx.settings.cache_timeout;
    if tokio::time::timeout(timeout, ctx.stores.wait_until_ready())
        .await
        .ok()
        != Some(true)
    {
        return Err(Error::CachesNotReady(timeout));
    }
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let name = namespace.name_any();
    let pods = ctx.stores.pods.state();
    if !is_enforced(&namespace, pods.iter().map(|p| p.as_ref())) {
        if namespace.metadata.deletion_timestamp.is_none() {
            cleanup(&name, &ctx).await?;
        }
        ctx.succeeded(&name);
        return Ok(Action::await_change());
    }
    // Building the view and encoding take tens of milliseconds at scale: keep
    // them off the async worker threads.
    let (encoded, next_change) = {
        let ctx = ctx.clone();
        let name = name.clone();
        tokio::task::spawn_blocking(move || encoded_bundle(&ctx, &name))
            .await
            .expect("bundle encoding does not panic")
    };
    let desired = bundle_config_maps(&name, &encoded);
    let existing: HashMap<String, Arc<ConfigMap>> = ctx
        .stores
        .bundles
        .state()
        .into_iter()
        .filter(|cm| cm.metadata.namespace.as_deref() == Some(name.as_str()))
        .map(|cm| (cm.name_any(), cm))
        .collect();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    let mut wrote = false;
    // Extra parts first and part 0 last: a reader that sees the new fingerprint
    // on part 0 finds every other part already in place.
    for cm in desired.iter().rev() {
        let cm_name = cm.name_any();
        if existing
            .get(&cm_name)
            .is_some_and(|e| same_config_map(e, cm))
        {
            continue;
        }
        config_maps
            .patch(&cm_name, &Context::apply_params(), &Patch::Apply(cm))
            .await?;
        wrote = true;
    }
    for (cm_name, cm) in &existing {
        if is_managed(cm.as_ref())
            && !desired
                .iter()
                .any(|d| d.metadata.name.as_ref() == Some(cm_name))
        {
            config_maps
                .delete(cm_name, &DeleteParams::default())
                .await?;
        }
    }
    if wrote {
        tracing::info!(namespace = %name, fingerprint = %encoded.fingerprint, parts = desired.len(), "bundle written");
        ctx.metrics
            .bundle_writes
            .get_or_create(&crate::metrics::NamespaceLabels {
                namespace: name.clone(),
            })
            .inc();
    }
    let size: usize = encoded
        .parts
        .iter()
        .map(|p| match p {
            BundlePart::Plain(s) => s.len(),
            BundlePart::Gzip(b) => b.len(),
        })
        .sum();
    ctx.metrics
        .bundle_bytes
        .get_or_create(&crate::metrics::NamespaceLabels {
            namespace: name.clone(),
        })
        .set(size as i64);

    let role = sidecar_role(&name);
    let role_current = ctx.stores.roles.state().into_iter().any(|r| {
        r.metadata.namespace.as_deref() == Some(name.as_str())
            && r.name_any() == SIDECAR_RBAC_NAME
            && r.rules == role.rules
            && is_managed(r.as_ref())
    });
    if !role_current {
        let api: Api<Role> = Api::namespaced(ctx.client.clone(), &name);
        api.patch(
            SIDECAR_RBAC_NAME,
            &Context::apply_params(),
            &Patch::Apply(&role),
        )
        .await?;
    }
    let binding = sidecar_role_binding(&name);
    let binding_current = ctx.stores.role_bindings.state().into_iter().any(|b| {
        b.metadata.namespace.as_deref() == Some(name.as_str())
            && b.name_any() == SIDECAR_RBAC_NAME
            && b.subjects == binding.subjects
            && b.role_ref == binding.role_ref
            && is_managed(b.as_ref())
    });
    if !binding_current {
        let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), &name);
        api.patch(
            SIDECAR_RBAC_NAME,
            &Context::apply_params(),
            &Patch::Apply(&binding),
        )
        .await?;
    }
    ctx.succeeded(&name);
    Ok(requeue_at(ctx.now(), next_change))
}

pub fn error_policy(namespace: Arc<Namespace>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.backoff(CONTROLLER, &namespace.name_any(), error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use policybind_engine::bundle::Bundle;

    #[test]
    fn small_bundle_is_one_plain_config_map_with_fingerprint_and_part() {
        let bundle = Bundle {
            namespace: Some("team-a".into()),
            ..Default::default()
        };
        let encoded = bundle_codec::encode(&bundle, bundle_codec::DEFAULT_MAX_PART_BYTES);
        let cms = bundle_config_maps("team-a", &encoded);
        assert_eq!(cms.len(), 1);
        let cm = &cms[0];
        assert_eq!(cm.metadata.name.as_deref(), Some("policybind-bundle"));
        assert_eq!(
            cm.labels().get(labels::BUNDLE).map(String::as_str),
            Some("true")
        );
        assert_eq!(
            cm.annotations().get(annotations::FINGERPRINT),
            Some(&encoded.fingerprint)
        );
        assert_eq!(
            cm.annotations()
                .get(annotations::BUNDLE_PART)
                .map(String::as_str),
            Some("0/1")
        );
        assert!(cm.data.as_ref().unwrap().contains_key("bundle.json"));
    }

    #[test]
    fn large_bundle_is_split_into_numbered_gzip_parts() {
        let encoded = EncodedBundle {
            fingerprint: "sha256:x".into(),
            parts: vec![
                BundlePart::Gzip(vec![1]),
                BundlePart::Gzip(vec![2]),
                BundlePart::Gzip(vec![3]),
            ],
        };
        let cms = bundle_config_maps("team-a", &encoded);
        let names: Vec<String> = cms.iter().map(|c| c.name_any()).collect();
        assert_eq!(
            names,
            vec![
                "policybind-bundle",
                "policybind-bundle-1",
                "policybind-bundle-2"
            ]
        );
        assert_eq!(
            cms[2]
                .annotations()
                .get(annotations::BUNDLE_PART)
                .map(String::as_str),
            Some("2/3")
        );
        assert!(
            cms[1]
                .binary_data
                .as_ref()
                .unwrap()
                .contains_key("bundle.json.gz")
        );
    }

    #[test]
    fn sidecar_rbac_lets_the_namespaces_service_accounts_read_the_bundle_only_by_name() {
        let role = sidecar_role("team-a");
        let rules = role.rules.unwrap();
        assert_eq!(rules[0].verbs, vec!["get", "list", "watch"]);
        let names = rules[0].resource_names.as_ref().unwrap();
        assert_eq!(names[0], "policybind-bundle");
        assert_eq!(names.len(), MAX_BUNDLE_PARTS);
        let binding = sidecar_role_binding("team-a");
        assert_eq!(
            binding.subjects.unwrap()[0].name,
            "system:serviceaccounts:team-a"
        );
    }
}
