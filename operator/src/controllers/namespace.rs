//! The bundle writer: one reconcile per Namespace (DESIGN.md sections 4 and 11).
//!
//! For an enforced namespace `<ns>` (see [`crate::bundle::is_enforced`]) it keeps:
//!
//! - in the operator's own namespace, where workloads cannot write: the bundle
//!   ConfigMaps `policybind-bundle.<ns>` (plus `policybind-bundle.<ns>.<n>` parts
//!   when large; format in [`policybind_engine::bundle_codec`]), and the Role and
//!   RoleBinding `policybind-bundle-reader.<ns>` that let `<ns>`'s service
//!   accounts get, list and watch exactly those names. All three carry an owner
//!   reference to the Namespace, so the garbage collector removes them with it;
//! - in `<ns>`: the RoleBinding `policybind-sidecar` of the chart's sidecar
//!   ClusterRole (usage reports, audit segments, held requests; the operator
//!   holds `bind` on that ClusterRole, not its rights), the NetworkPolicy
//!   `policybind-model-ports` that admits ingress to injected pods only on the
//!   sidecar's ports, and the Secret `policybind-audit-key` with the namespace's
//!   own audit signing key (created once, never regenerated while it exists).
//!
//! It writes only what differs from the cluster, so a rebuild that changes
//! nothing costs no API call. When a namespace stops being enforced, the
//! operator's objects for it are deleted, except the audit key: segments signed
//! with it must stay verifiable, and a namespace enforced again keeps its key.
//! Objects of the layout before bundles moved (`policybind-bundle` ConfigMaps and
//! the `policybind-sidecar` Role in workload namespaces) are deleted on sight.
//!
//! Every change of an input (policy, model, token, token Secret, usage report,
//! approval, namespace labels) bumps the context's epoch and triggers all
//! namespaces; the controller's debounce coalesces bursts. The cluster view and
//! each namespace's encoded bundle are cached per epoch, so N namespaces build
//! the view once.

use policybind_crds::wire::{self, annotations, field_managers, keys, labels, names};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use policybind_engine::audit::{AuditEvent, AuditSigningKey, AuditVerifyingKey};
use policybind_engine::bundle_codec::{self, BundlePart, EncodedBundle};

use futures::channel::mpsc::UnboundedReceiver;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, Event};

use crate::bundle::{ClusterView, ViewInputs, cluster_view, desired_bundle, is_enforced};
use crate::context::{Context, requeue_at};
use crate::controllers::access_token::{SecretState, read_secret};
use crate::controllers::{Run, Tasks, Wiring, drain};
use crate::error::{Error, Result};
use crate::stores::{bump, drive, labelled, touched, watch};

const CONTROLLER: &str = "bundle";
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The cluster view for the current input epoch, built from the caches if needed
/// (one build at a time; concurrent callers wait and share it), with its build
/// number. The epoch is read before the caches, so a change during the build
/// makes the view look older, never newer, than it is.
pub fn current_view(ctx: &Context) -> (u64, Arc<ClusterView>) {
    let epoch = ctx.epoch();
    let now = ctx.now();
    let mut cached = ctx
        .state
        .bundles
        .view
        .lock()
        .expect("view cache lock poisoned");
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
    let usage = crate::controllers::access_token::usage_reports(ctx);
    let policies = stores.policies.state();
    let cluster_policies = stores.cluster_policies.state();
    let models = stores.models.state();
    let approvals = stores.approvals.state();
    let tokens = stores.tokens.state();
    let budgets = stores.budgets.state();
    let namespaces = stores.namespaces.state();
    let inputs = ViewInputs {
        policies: &policies,
        cluster_policies: &cluster_policies,
        models: &models,
        approvals: &approvals,
        tokens: &tokens,
        budgets: &budgets,
        secrets: &secrets,
        usage: &usage,
        namespaces: &namespaces,
        approval_ttl: ctx.settings.approval_ttl,
    };
    let view = Arc::new(cluster_view(&inputs, &ctx.state.policies, now));
    let existing: std::collections::HashSet<String> = policies
        .iter()
        .map(|p| {
            crate::state::resource_id(&policybind_engine::bundle::BundlePolicy::from_ai_policy(p))
        })
        .chain(cluster_policies.iter().map(|p| {
            crate::state::resource_id(
                &policybind_engine::bundle::BundlePolicy::from_cluster_policy(p),
            )
        }))
        .collect();
    ctx.state.policies.retain(&existing);
    let build = ctx
        .state
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
        .state
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
    ctx.state
        .bundles
        .encoded
        .lock()
        .expect("encoded cache lock poisoned")
        .insert(namespace.to_string(), (build, encoded.clone()));
    (encoded, view.next_change)
}

fn managed_labels(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([(
        labels::MANAGED_BY.to_string(),
        labels::MANAGED_BY_VALUE.to_string(),
    )]);
    for (k, v) in extra {
        labels.insert(k.to_string(), v.to_string());
    }
    labels
}

/// An owner reference to `namespace`: objects the operator keeps in its own
/// namespace for `namespace` go with it when it is deleted (a namespaced object
/// may have a cluster-scoped owner).
pub fn namespace_owner(namespace: &Namespace) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        name: namespace.name_any(),
        uid: namespace.metadata.uid.clone()?,
        ..Default::default()
    })
}

/// Metadata of an object the operator keeps in its own namespace (`home`) for
/// `namespace`.
fn home_meta(
    home: &str,
    name: String,
    namespace: &str,
    owner: Option<&OwnerReference>,
    extra_labels: &[(&str, &str)],
) -> kube::api::ObjectMeta {
    let mut labels = vec![(labels::BUNDLE_NAMESPACE, namespace)];
    labels.extend_from_slice(extra_labels);
    kube::api::ObjectMeta {
        name: Some(name),
        namespace: Some(home.to_string()),
        labels: Some(managed_labels(&labels)),
        owner_references: owner.map(|o| vec![o.clone()]),
        ..Default::default()
    }
}

/// The ConfigMaps (in `home`, the operator's namespace) that hold `namespace`'s
/// encoded bundle, part 0 first.
pub fn bundle_config_maps(
    home: &str,
    namespace: &str,
    owner: Option<&OwnerReference>,
    encoded: &EncodedBundle,
) -> Vec<ConfigMap> {
    let count = encoded.parts.len();
    encoded
        .parts
        .iter()
        .enumerate()
        .map(|(index, part)| {
            let mut cm = ConfigMap {
                metadata: home_meta(
                    home,
                    wire::bundle_part(namespace, index),
                    namespace,
                    owner,
                    &[(labels::BUNDLE, "true")],
                ),
                ..Default::default()
            };
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

/// Role (in `home`) that lets a reader get, list and watch exactly the bundle
/// names of `namespace` and its budget ledger: a list or watch with a `metadata.name` field selector
/// is authorized against resourceNames, which is how the sidecar watches.
pub fn bundle_reader_role(home: &str, namespace: &str, owner: Option<&OwnerReference>) -> Role {
    Role {
        metadata: home_meta(home, wire::bundle_reader(namespace), namespace, owner, &[]),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["".into()]),
            resources: Some(vec!["configmaps".into()]),
            resource_names: Some(
                wire::bundle_parts(namespace)
                    .into_iter()
                    .chain([wire::ledger_config_map(namespace)])
                    .collect(),
            ),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..Default::default()
        }]),
    }
}

fn service_accounts_of(namespace: &str) -> Vec<Subject> {
    vec![Subject {
        api_group: Some(RBAC_GROUP.into()),
        kind: "Group".into(),
        name: format!("system:serviceaccounts:{namespace}"),
        namespace: None,
    }]
}

/// Binds [`bundle_reader_role`] to every service account of `namespace`.
pub fn bundle_reader_binding(
    home: &str,
    namespace: &str,
    owner: Option<&OwnerReference>,
) -> RoleBinding {
    RoleBinding {
        metadata: home_meta(home, wire::bundle_reader(namespace), namespace, owner, &[]),
        role_ref: RoleRef {
            api_group: RBAC_GROUP.into(),
            kind: "Role".into(),
            name: wire::bundle_reader(namespace),
        },
        subjects: Some(service_accounts_of(namespace)),
    }
}

/// Binds the chart's sidecar ClusterRole to every service account of
/// `namespace`, in `namespace` only.
pub fn sidecar_role_binding(namespace: &str, cluster_role: &str) -> RoleBinding {
    RoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some(names::SIDECAR_BINDING.into()),
            namespace: Some(namespace.into()),
            labels: Some(managed_labels(&[])),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: RBAC_GROUP.into(),
            kind: "ClusterRole".into(),
            name: cluster_role.into(),
        },
        subjects: Some(service_accounts_of(namespace)),
    }
}

/// Admits ingress to injected pods of `namespace` on the sidecar's port and its
/// health port only: the model's moved port (`pb-model`) stays reachable from
/// inside the pod alone. NetworkPolicies add up, so another policy that admits
/// more opens more; and only a CNI that enforces them makes this hold.
pub fn model_network_policy(namespace: &str, sidecar_port: &str) -> NetworkPolicy {
    let port = |name: &str| NetworkPolicyPort {
        port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        end_port: None,
    };
    NetworkPolicy {
        metadata: kube::api::ObjectMeta {
            name: Some(names::MODEL_NETWORK_POLICY.into()),
            namespace: Some(namespace.into()),
            labels: Some(managed_labels(&[])),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    labels::INJECTED.to_string(),
                    "true".to_string(),
                )])),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: None,
                ports: Some(vec![port(sidecar_port), port(names::HEALTH_PORT)]),
            }]),
            egress: None,
        }),
    }
}

/// The Secret holding `namespace`'s audit signing key (PKCS#8 PEM), with the key
/// id in an annotation so the public half can be published without reading it.
pub fn audit_key_secret(namespace: &str, key: &AuditSigningKey) -> Result<Secret> {
    let pem = key
        .to_pkcs8_pem()
        .map_err(|e| Error::Random(e.to_string()))?;
    Ok(Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(names::AUDIT_KEY_SECRET.into()),
            namespace: Some(namespace.into()),
            labels: Some(managed_labels(&[(labels::AUDIT_KEY, "true")])),
            annotations: Some(BTreeMap::from([(
                annotations::AUDIT_KEY_ID.to_string(),
                key.key_id().to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            keys::SIGNING_KEY.to_string(),
            ByteString(pem.into_bytes()),
        )])),
        ..Default::default()
    })
}

/// The public half of a namespace's audit key, and when its Secret was created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespacePublicKey {
    pub key: AuditVerifyingKey,
    pub created: Option<chrono::DateTime<chrono::Utc>>,
}

/// The public half of every namespace's sidecar audit key, by namespace, read
/// from the cached `policybind-audit-key` Secrets (the operator's own, and any an
/// administrator brought). [`crate::audit_keyring`] publishes them: a Secret
/// whose key does not parse is left out (and logged).
pub fn audit_public_keys(stores: &crate::stores::Stores) -> BTreeMap<String, NamespacePublicKey> {
    stores
        .audit_keys
        .state()
        .iter()
        .filter_map(|secret| {
            let namespace = secret.metadata.namespace.clone()?;
            match policybind_audit::keys::signing_key_of(secret) {
                Ok(key) => Some((
                    namespace,
                    NamespacePublicKey {
                        key: key.verifying_key(),
                        created: policybind_audit::keys::secret_created(secret),
                    },
                )),
                Err(error) => {
                    tracing::warn!(namespace, %error, "unreadable audit key Secret");
                    None
                }
            }
        })
        .collect()
}

/// A fresh Ed25519 key from the operating system's random source.
fn generate_audit_key() -> Result<AuditSigningKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| Error::Random(e.to_string()))?;
    Ok(AuditSigningKey::from_seed(&seed))
}

fn is_managed<K: Resource>(object: &K) -> bool {
    object
        .meta()
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::MANAGED_BY))
        .is_some_and(|v| v == labels::MANAGED_BY_VALUE)
}

/// The namespace an object of the operator is for: the bundle-namespace label
/// on objects in the operator's own namespace, the object's namespace otherwise.
pub fn served_namespace<K: Resource>(object: &K, home: &str) -> Option<String> {
    let meta = object.meta();
    match meta.namespace.as_deref() {
        Some(ns) if ns == home => meta
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::BUNDLE_NAMESPACE))
            .cloned(),
        other => other.map(str::to_string),
    }
}

/// Whether a ConfigMap in a workload namespace is a bundle of the layout before
/// bundles moved (`policybind-bundle`, `policybind-bundle-<n>`).
fn is_legacy_bundle(cm: &ConfigMap) -> bool {
    let name = cm.metadata.name.as_deref().unwrap_or("");
    is_managed(cm)
        && (name == names::BUNDLE_PREFIX
            || name
                .strip_prefix(names::BUNDLE_PREFIX)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
}

/// Whether the object in the cluster already carries what we would write.
fn same_meta<K: Resource>(existing: &K, desired: &K) -> bool {
    let (e, d) = (existing.meta(), desired.meta());
    is_managed(existing)
        && e.owner_references.clone().unwrap_or_default()
            == d.owner_references.clone().unwrap_or_default()
        && d.labels
            .iter()
            .flatten()
            .all(|(k, v)| e.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
        && d.annotations
            .iter()
            .flatten()
            .all(|(k, v)| e.annotations.as_ref().and_then(|a| a.get(k)) == Some(v))
}

fn same_config_map(existing: &ConfigMap, desired: &ConfigMap) -> bool {
    same_meta(existing, desired)
        && existing.data == desired.data
        && existing.binary_data == desired.binary_data
}

fn in_namespace<K: Resource>(object: &K, namespace: &str) -> bool {
    object.meta().namespace.as_deref() == Some(namespace)
}

/// Writes `desired` whole. A new object is created by server-side apply; an
/// existing one (which differs, or we would not write) is replaced at its
/// resourceVersion, so nothing someone else added survives: server-side apply
/// never removes a map key another manager set, such as a forged `data` key
/// beside a gzip bundle or an extra `matchLabels` entry that narrows the
/// NetworkPolicy.
async fn write_whole<K>(api: &Api<K>, existing: Option<&K>, desired: &K) -> Result<()>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    match existing.and_then(|e| e.meta().resource_version.clone()) {
        Some(version) => {
            let mut replacement = desired.clone();
            replacement.meta_mut().resource_version = Some(version);
            let params = PostParams {
                field_manager: Some(field_managers::OPERATOR.into()),
                ..Default::default()
            };
            api.replace(&name, &params, &replacement).await?;
        }
        None => {
            api.patch(&name, &Context::apply_params(), &Patch::Apply(desired))
                .await?;
        }
    }
    Ok(())
}

async fn delete_if_found<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        // Gone already (the garbage collector, or a second replica): done.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Writes `namespace`'s bundle into the operator's namespace (extra parts first,
/// part 0 last) and removes parts no longer needed. Returns when the view
/// changes by itself.
async fn publish_bundle(
    ctx: &Arc<Context>,
    namespace: &Namespace,
) -> Result<Option<DateTime<Utc>>> {
    let name = namespace.name_any();
    let home = ctx.settings.namespace.as_str();
    // Building the view and encoding take tens of milliseconds at scale: keep
    // them off the async worker threads.
    let (encoded, next_change) = {
        let ctx = ctx.clone();
        let name = name.clone();
        tokio::task::spawn_blocking(move || encoded_bundle(&ctx, &name))
            .await
            .expect("bundle encoding does not panic")
    };
    if let Err(refused) = encoded.fits(&ctx.settings.bundle_limits) {
        // Every sidecar would refuse it: keep the bundle in place instead.
        return Err(Error::BundleRefused {
            namespace: name,
            reason: refused.to_string(),
        });
    }
    let owner = namespace_owner(namespace);
    let desired = bundle_config_maps(home, &name, owner.as_ref(), &encoded);
    let existing: HashMap<String, Arc<ConfigMap>> = ctx
        .stores
        .bundles
        .state()
        .into_iter()
        .filter(|cm| in_namespace(cm.as_ref(), home))
        .filter(|cm| served_namespace(cm.as_ref(), home).as_deref() == Some(name.as_str()))
        .map(|cm| (cm.name_any(), cm))
        .collect();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), home);
    let mut wrote = false;
    // Extra parts first and part 0 last: a reader that sees the new fingerprint
    // on part 0 finds every other part already in place.
    for cm in desired.iter().rev() {
        let current = existing.get(&cm.name_any());
        if current.is_some_and(|e| same_config_map(e, cm)) {
            continue;
        }
        write_whole(&config_maps, current.map(|c| c.as_ref()), cm).await?;
        wrote = true;
    }
    for (cm_name, cm) in &existing {
        if is_managed(cm.as_ref())
            && !desired
                .iter()
                .any(|d| d.metadata.name.as_ref() == Some(cm_name))
        {
            delete_if_found(&config_maps, cm_name).await?;
        }
    }
    let labels = crate::metrics::NamespaceLabels {
        namespace: name.clone(),
    };
    if wrote {
        tracing::info!(namespace = %name, fingerprint = %encoded.fingerprint, parts = desired.len(), "bundle written");
        ctx.metrics.bundle_writes.get_or_create(&labels).inc();
    }
    let size: usize = encoded.parts.iter().map(BundlePart::len).sum();
    ctx.metrics
        .bundle_bytes
        .get_or_create(&labels)
        .set(size as i64);
    Ok(next_change)
}

/// Keeps the Role and RoleBinding that let `namespace` read its bundle.
async fn keep_bundle_reader(ctx: &Context, namespace: &Namespace) -> Result<()> {
    let name = namespace.name_any();
    let home = ctx.settings.namespace.as_str();
    let owner = namespace_owner(namespace);
    let reader = wire::bundle_reader(&name);
    let role = bundle_reader_role(home, &name, owner.as_ref());
    let role_current = ctx.stores.roles.state().iter().any(|r| {
        in_namespace(r.as_ref(), home)
            && r.name_any() == reader
            && same_meta(r.as_ref(), &role)
            && r.rules == role.rules
    });
    if !role_current {
        let api: Api<Role> = Api::namespaced(ctx.client.clone(), home);
        api.patch(&reader, &Context::apply_params(), &Patch::Apply(&role))
            .await?;
    }
    let binding = bundle_reader_binding(home, &name, owner.as_ref());
    let binding_current = ctx.stores.role_bindings.state().iter().any(|b| {
        in_namespace(b.as_ref(), home)
            && b.name_any() == reader
            && same_meta(b.as_ref(), &binding)
            && b.subjects == binding.subjects
            && b.role_ref == binding.role_ref
    });
    if !binding_current {
        let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), home);
        api.patch(&reader, &Context::apply_params(), &Patch::Apply(&binding))
            .await?;
    }
    Ok(())
}

/// Keeps the RoleBinding of the sidecar ClusterRole in `namespace`. A binding of
/// another role (the Role of the layout before, or another ClusterRole) is
/// deleted first: a RoleBinding's roleRef cannot change.
async fn keep_sidecar_binding(ctx: &Context, namespace: &str) -> Result<()> {
    let desired = sidecar_role_binding(namespace, &ctx.settings.sidecar_cluster_role);
    let existing =
        ctx.stores.role_bindings.state().into_iter().find(|b| {
            in_namespace(b.as_ref(), namespace) && b.name_any() == names::SIDECAR_BINDING
        });
    let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), namespace);
    if let Some(existing) = &existing {
        if same_meta(existing.as_ref(), &desired)
            && existing.subjects == desired.subjects
            && existing.role_ref == desired.role_ref
        {
            return Ok(());
        }
        if existing.role_ref != desired.role_ref {
            delete_if_found(&api, names::SIDECAR_BINDING).await?;
        }
    }
    api.patch(
        names::SIDECAR_BINDING,
        &Context::apply_params(),
        &Patch::Apply(&desired),
    )
    .await?;
    Ok(())
}

/// Keeps the NetworkPolicy exactly as desired: whoever may edit
/// NetworkPolicies in the namespace could otherwise narrow what it selects.
async fn keep_network_policy(ctx: &Context, namespace: &str) -> Result<()> {
    let desired = model_network_policy(namespace, &ctx.settings.sidecar_port_name);
    let existing = ctx.stores.network_policies.state().into_iter().find(|p| {
        in_namespace(p.as_ref(), namespace) && p.name_any() == names::MODEL_NETWORK_POLICY
    });
    if existing
        .as_ref()
        .is_some_and(|p| same_meta(p.as_ref(), &desired) && p.spec == desired.spec)
    {
        return Ok(());
    }
    let api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), namespace);
    write_whole(&api, existing.as_deref(), &desired).await
}

/// Creates `namespace`'s audit signing key unless a Secret of that name exists
/// (ours, or one an administrator brought): a key is never regenerated, or the
/// segments signed with it could no longer be told apart from forgeries.
async fn keep_audit_key(ctx: &Context, namespace: &str) -> Result<()> {
    let exists =
        ctx.stores.audit_keys.state().iter().any(|s| {
            in_namespace(s.as_ref(), namespace) && s.name_any() == names::AUDIT_KEY_SECRET
        });
    if exists {
        return Ok(());
    }
    let key = generate_audit_key()?;
    let secret = audit_key_secret(namespace, &key)?;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(
                namespace,
                key_id = key.key_id(),
                "audit signing key created"
            );
            ctx.record(
                AuditEvent::lifecycle("audit-key-created")
                    .namespace(namespace.to_string())
                    .detail("keyId", key.key_id().to_string()),
            );
            Ok(())
        }
        // Created meanwhile (the cache lags): keep that one.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Deletes what the layout before bundles moved left in `namespace`: bundle
/// ConfigMaps a workload there could write, and the sidecar Role.
async fn remove_legacy(ctx: &Context, namespace: &str) -> Result<()> {
    if namespace == ctx.settings.namespace {
        return Ok(());
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    for cm in ctx.stores.bundles.state() {
        if in_namespace(cm.as_ref(), namespace) && is_legacy_bundle(&cm) {
            delete_if_found(&config_maps, &cm.name_any()).await?;
            tracing::info!(namespace, configmap = %cm.name_any(), "bundle of the old layout removed");
        }
    }
    if holds(&ctx.stores.roles.state(), namespace, names::SIDECAR_BINDING) {
        let api: Api<Role> = Api::namespaced(ctx.client.clone(), namespace);
        delete_if_found(&api, names::SIDECAR_BINDING).await?;
    }
    Ok(())
}

/// Whether `objects` hold an object of ours named `name` in `namespace`.
fn holds<K: Resource>(objects: &[Arc<K>], namespace: &str, name: &str) -> bool {
    objects.iter().any(|o| {
        in_namespace(o.as_ref(), namespace)
            && o.meta().name.as_deref() == Some(name)
            && is_managed(o.as_ref())
    })
}

/// Removes what the operator keeps for a namespace that is no longer enforced,
/// except its audit key.
async fn cleanup(namespace: &str, ctx: &Context) -> Result<()> {
    let home = ctx.settings.namespace.as_str();
    let stores = &ctx.stores;
    let client = &ctx.client;
    let home_config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), home);
    for cm in stores.bundles.state() {
        if in_namespace(cm.as_ref(), home)
            && is_managed(cm.as_ref())
            && served_namespace(cm.as_ref(), home).as_deref() == Some(namespace)
        {
            delete_if_found(&home_config_maps, &cm.name_any()).await?;
            tracing::info!(namespace, configmap = %cm.name_any(), "namespace no longer enforced; bundle removed");
        }
    }
    let reader = wire::bundle_reader(namespace);
    if holds(&stores.role_bindings.state(), home, &reader) {
        let api: Api<RoleBinding> = Api::namespaced(client.clone(), home);
        delete_if_found(&api, &reader).await?;
    }
    if holds(&stores.roles.state(), home, &reader) {
        let api: Api<Role> = Api::namespaced(client.clone(), home);
        delete_if_found(&api, &reader).await?;
    }
    if namespace == home {
        return Ok(());
    }
    if holds(
        &stores.role_bindings.state(),
        namespace,
        names::SIDECAR_BINDING,
    ) {
        let api: Api<RoleBinding> = Api::namespaced(client.clone(), namespace);
        delete_if_found(&api, names::SIDECAR_BINDING).await?;
    }
    if holds(
        &stores.network_policies.state(),
        namespace,
        names::MODEL_NETWORK_POLICY,
    ) {
        let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), namespace);
        delete_if_found(&api, names::MODEL_NETWORK_POLICY).await?;
    }
    remove_legacy(ctx, namespace).await
}

/// Reconciles everything the operator keeps for one namespace. Run through
/// [`super::once_listed`]: a bundle built from half-filled caches (no tokens
/// yet) would lock every caller out.
pub async fn reconcile(namespace: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let name = namespace.name_any();
    let pods = ctx.stores.pods.state();
    // PolicyBind's own namespace is never enforced: nothing is injected there.
    let enforced =
        name != ctx.settings.namespace && is_enforced(&namespace, pods.iter().map(|p| p.as_ref()));
    if !enforced {
        if namespace.metadata.deletion_timestamp.is_none() {
            cleanup(&name, &ctx).await?;
        }
        ctx.succeeded(&name);
        return Ok(Action::await_change());
    }
    let next_change = publish_bundle(&ctx, &namespace).await?;
    keep_bundle_reader(&ctx, &namespace).await?;
    keep_sidecar_binding(&ctx, &name).await?;
    keep_network_policy(&ctx, &name).await?;
    keep_audit_key(&ctx, &name).await?;
    remove_legacy(&ctx, &name).await?;
    ctx.succeeded(&name);
    Ok(requeue_at(ctx.now(), next_change))
}

pub fn error_policy(namespace: Arc<Namespace>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.backoff(CONTROLLER, &namespace.name_any(), error)
}

/// The objects the operator keeps for a namespace, whose caches this controller
/// fills: any change to one of them wakes the namespace it is for.
pub struct Children {
    /// Bundle ConfigMaps (label `policybind.io/bundle`), in the operator's
    /// namespace and, of the layout before, in workload namespaces.
    pub bundles: Writer<ConfigMap>,
    /// Reader Roles, and the old layout's sidecar Roles (label managed-by).
    pub roles: Writer<Role>,
    /// Reader RoleBindings and sidecar RoleBindings (label managed-by).
    pub role_bindings: Writer<RoleBinding>,
    /// The NetworkPolicies (label managed-by).
    pub network_policies: Writer<NetworkPolicy>,
    /// Secrets named `policybind-audit-key`, whoever made them.
    pub audit_keys: Writer<Secret>,
}

/// Watches Namespaces and the objects the operator keeps for them. Every input
/// of the bundles (see [`Context::bundles_changed`]) reconciles all namespaces,
/// debounced (`--bundle-debounce-ms`); a change to one of a namespace's objects
/// reconciles that namespace.
pub fn run(
    w: &Wiring,
    namespaces: Writer<Namespace>,
    children: Children,
    wake: UnboundedReceiver<ObjectRef<Namespace>>,
    all: UnboundedReceiver<()>,
) -> Tasks {
    let ctx = &w.ctx;
    let stream = watch(
        watcher::watcher(Api::<Namespace>::all(w.client.clone()), Default::default()),
        namespaces,
        bump(ctx),
    )
    .applied_objects();
    let parallel = std::thread::available_parallelism()
        .map(|n| n.get().min(8) as u16)
        .unwrap_or(2);
    let controller = Controller::for_stream(stream, ctx.stores.namespaces.clone())
        .with_config(
            ControllerConfig::default()
                .concurrency(parallel)
                .debounce(ctx.settings.bundle_debounce),
        )
        .reconcile_all_on(all)
        .reconcile_on(wake)
        .graceful_shutdown_on(w.graceful())
        .run(super::once_listed(reconcile), error_policy, ctx.clone());
    let managed = format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE);
    let by_name =
        watcher::Config::default().fields(&format!("metadata.name={}", names::AUDIT_KEY_SECRET));
    let client = &w.client;
    let bundles = format!("{}=true", labels::BUNDLE);
    Tasks {
        main: vec![drain(controller)],
        side: vec![
            wake_owner(
                w,
                Api::<ConfigMap>::all(client.clone()),
                labelled(&bundles),
                children.bundles,
            ),
            wake_owner(
                w,
                Api::<Role>::all(client.clone()),
                labelled(&managed),
                children.roles,
            ),
            wake_owner(
                w,
                Api::<RoleBinding>::all(client.clone()),
                labelled(&managed),
                children.role_bindings,
            ),
            wake_owner(
                w,
                Api::<NetworkPolicy>::all(client.clone()),
                labelled(&managed),
                children.network_policies,
            ),
            wake_owner(
                w,
                Api::<Secret>::all(client.clone()),
                by_name,
                children.audit_keys,
            ),
        ],
    }
}

/// A side watch that fills `writer` and reconciles the namespace each changed
/// object is for ([`served_namespace`]).
fn wake_owner<K>(w: &Wiring, api: Api<K>, config: watcher::Config, writer: Writer<K>) -> Run
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let wake = w.triggers.namespaces.clone();
    let home = w.ctx.settings.namespace.clone();
    Box::pin(drive(watch(
        watcher::watcher(api, config),
        writer,
        move |event: &Event<K>| {
            for object in touched(event) {
                if let Some(ns) = served_namespace(&object, &home) {
                    let _ = wake.unbounded_send(ObjectRef::new(&ns));
                }
            }
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use policybind_engine::bundle::Bundle;

    fn config_map(namespace: &str, name: &str, labels: &[(&str, &str)]) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some(namespace.into());
        cm.metadata.name = Some(name.into());
        cm.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        cm
    }

    #[test]
    fn large_bundles_are_split_into_numbered_parts_in_the_operators_namespace() {
        let encoded = EncodedBundle {
            fingerprint: "sha256:x".into(),
            parts: vec![
                BundlePart::Gzip(vec![1]),
                BundlePart::Gzip(vec![2]),
                BundlePart::Gzip(vec![3]),
            ],
            json_bytes: 10,
        };
        let cms = bundle_config_maps("policybind-system", "team-a", None, &encoded);
        let names: Vec<String> = cms.iter().map(|c| c.name_any()).collect();
        assert_eq!(
            names,
            vec![
                "policybind-bundle.team-a",
                "policybind-bundle.team-a.1",
                "policybind-bundle.team-a.2"
            ]
        );
        assert!(
            cms.iter()
                .all(|c| c.namespace().as_deref() == Some("policybind-system"))
        );
        assert_eq!(
            cms[2]
                .annotations()
                .get(annotations::BUNDLE_PART)
                .map(String::as_str),
            Some("2/3")
        );
        let small = bundle_codec::encode(&Bundle::default(), bundle_codec::DEFAULT_MAX_PART_BYTES);
        let cms = bundle_config_maps("policybind-system", "team-a", None, &small);
        assert!(
            cms[0]
                .data
                .as_ref()
                .unwrap()
                .contains_key(keys::BUNDLE_JSON)
        );
    }

    #[test]
    fn the_public_half_of_every_namespaces_key_is_at_hand_for_publication() {
        use kube::runtime::reflector::{self, store::Writer};
        use kube::runtime::watcher::Event;
        let (stores, _) = crate::stores::Stores::new();
        let (audit_keys, mut writer): (_, Writer<Secret>) = reflector::store();
        let stores = crate::stores::Stores {
            audit_keys,
            ..stores
        };
        let key = generate_audit_key().unwrap();
        let secret = audit_key_secret("team-a", &key).unwrap();
        writer.apply_watcher_event(&Event::Apply(secret));
        let mut broken = audit_key_secret("team-b", &key).unwrap();
        broken.data = Some(BTreeMap::from([(
            keys::SIGNING_KEY.to_string(),
            ByteString(b"not a key".to_vec()),
        )]));
        writer.apply_watcher_event(&Event::Apply(broken));
        let public = audit_public_keys(&stores);
        assert_eq!(public.len(), 1);
        assert_eq!(public["team-a"].key, key.verifying_key());
        assert_eq!(public["team-a"].key.key_id(), key.key_id());
    }

    #[test]
    fn objects_are_attributed_to_the_namespace_they_serve() {
        let home = "policybind-system";
        let bundle = config_map(
            home,
            "policybind-bundle.team-a",
            &[(labels::BUNDLE_NAMESPACE, "team-a")],
        );
        assert_eq!(served_namespace(&bundle, home).as_deref(), Some("team-a"));
        let unlabelled = config_map(home, "something", &[]);
        assert_eq!(served_namespace(&unlabelled, home), None);
        // In a workload namespace the label means nothing: it could be forged.
        let planted = config_map("team-b", "x", &[(labels::BUNDLE_NAMESPACE, "team-a")]);
        assert_eq!(served_namespace(&planted, home).as_deref(), Some("team-b"));
    }

    #[test]
    fn only_our_bundles_of_the_old_layout_are_removed() {
        let managed = [
            (labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
            (labels::BUNDLE, "true"),
        ];
        assert!(is_legacy_bundle(&config_map(
            "team-a",
            "policybind-bundle",
            &managed
        )));
        assert!(is_legacy_bundle(&config_map(
            "team-a",
            "policybind-bundle-12",
            &managed
        )));
        assert!(!is_legacy_bundle(&config_map(
            "team-a",
            "policybind-bundle-x",
            &managed
        )));
        assert!(!is_legacy_bundle(&config_map(
            "team-a",
            "policybind-bundle-",
            &managed
        )));
        assert!(!is_legacy_bundle(&config_map(
            "team-a",
            "app-config",
            &managed
        )));
        assert!(!is_legacy_bundle(&config_map(
            "team-a",
            "policybind-bundle",
            &[(labels::BUNDLE, "true")]
        )));
    }

    #[test]
    fn the_network_policy_admits_the_sidecar_ports_of_injected_pods_only() {
        let policy = model_network_policy("team-a", "api");
        let spec = policy.spec.unwrap();
        assert_eq!(
            spec.pod_selector.unwrap().match_labels.unwrap(),
            BTreeMap::from([(labels::INJECTED.to_string(), "true".to_string())])
        );
        let rule = &spec.ingress.unwrap()[0];
        assert!(
            rule.from.is_none(),
            "from anywhere, but only to these ports"
        );
        let ports: Vec<_> = rule
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.port.clone().unwrap())
            .collect();
        assert_eq!(
            ports,
            vec![
                IntOrString::String("api".into()),
                IntOrString::String(names::HEALTH_PORT.into())
            ]
        );
    }
}
