//! What every reconciler shares: the client, the watch caches (one watch per
//! kind, shared by its controller and by the bundle builder), the clock, metrics,
//! the event recorder, settings, and the small amount of memory the operator keeps
//! between reconciles (the last good version of each policy, error backoff).
//!
//! Reconcilers read only from the caches, never from the API server, so a second
//! reconcile of an unchanged object makes no call at all.

use policybind_crds::wire::field_managers;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::PatchParams;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::audit_retention::AuditRetentionSettings;
use crate::controllers::incident::IncidentSettings;
use crate::error::Error;
use crate::metrics::Metrics;
pub use crate::stores::Stores;

/// Condition reasons the crds crate does not define yet (candidates to move there).
pub mod reasons {
    pub const NOT_SUSPENDED: &str = "NotSuspended";
    pub const APPROVAL_EXPIRED: &str = "ApprovalExpired";
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    pub const DECIDED: &str = "DecisionApplied";
    pub const AWAITING_DECISION: &str = "AwaitingDecision";
    pub const TRACKING: &str = "Tracking";
}

/// Where "now" comes from: the system clock in production, a fixed instant in tests.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Settings of `policybind controller`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Kubeconfig file; unset means in-cluster, then `KUBECONFIG`, then `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context; unset means the current context.
    pub kube_context: Option<String>,
    /// Address of the metrics and health server.
    pub metrics_listen: SocketAddr,
    /// Take a Lease before acting, so that several replicas are safe.
    pub leader_election: bool,
    /// The operator's own namespace (the chart's release namespace): the Lease,
    /// the lifecycle audit trail, and every enforced namespace's bundle and
    /// bundle reader Role live here, where workloads cannot write.
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity (pod name) in the Lease and in events.
    pub identity: String,
    /// Quiet time after a change before bundles are rebuilt, so bursts coalesce.
    pub bundle_debounce: Duration,
    /// User name written as `requester` of the ApprovalRequests the operator raises.
    pub requester: String,
    /// How long an unanswered ApprovalRequest stays open when it sets no `expiresAt`.
    pub approval_ttl: Duration,
    /// Thresholds of the incident patterns.
    pub incidents: IncidentSettings,
    /// How long to wait for the watch caches to fill at start.
    pub cache_timeout: Duration,
    /// Secret (`name` in `namespace`, or `namespace/name`) holding the audit
    /// signing key. Set, lifecycle records go to the audit trail in
    /// `namespace`; unset, there are only events and logs.
    pub audit_key_secret: Option<String>,
    /// File holding the audit signing key (a mounted Secret); wins over
    /// `audit_key_secret`.
    pub audit_key_file: Option<PathBuf>,
    /// Secret in `namespace` holding the webhook's audit signing key: its
    /// public half is published in the keyring ([`crate::audit_keyring`]).
    pub webhook_audit_key_secret: Option<String>,
    /// Keeps each namespace's audit segment ConfigMaps within a budget (see
    /// [`crate::audit_retention`]); `None` turns retention off.
    pub audit_retention: Option<AuditRetentionSettings>,
    /// The ClusterRole (rendered by the chart, `<fullname>-sidecar`) that the
    /// `policybind-sidecar` RoleBinding of every enforced namespace binds. The
    /// operator holds `bind` on it rather than every right it grants.
    pub sidecar_cluster_role: String,
    /// Name of the port the sidecar takes over from the model container: the
    /// NetworkPolicy of every enforced namespace admits ingress to it and to
    /// `pb-health` only.
    pub sidecar_port_name: String,
    /// What sidecars accept; a bundle beyond it is not written.
    pub bundle_limits: policybind_engine::bundle_codec::DecodeLimits,
    /// Which report kinds to write, and how often (docs/operator.md, "Reports").
    pub reports: crate::reports::ReportsSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            kubeconfig: None,
            kube_context: None,
            metrics_listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            leader_election: false,
            namespace: "policybind-system".into(),
            lease_name: "policybind-operator".into(),
            identity: "policybind-operator".into(),
            bundle_debounce: Duration::from_millis(250),
            requester: "system:serviceaccount:policybind-system:policybind-operator".into(),
            approval_ttl: Duration::from_secs(7 * 24 * 3600),
            incidents: IncidentSettings::default(),
            cache_timeout: Duration::from_secs(120),
            audit_key_secret: None,
            audit_key_file: None,
            webhook_audit_key_secret: None,
            // Retention deletes only once a durable sink was chosen explicitly.
            audit_retention: None,
            sidecar_cluster_role: "policybind-sidecar".into(),
            sidecar_port_name: "http".into(),
            bundle_limits: Default::default(),
            reports: Default::default(),
        }
    }
}

/// Shared state of every reconciler.
pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub clock: Clock,
    /// What the controllers remember between reconciles (see [`crate::state`]).
    pub state: crate::state::State,
    /// Bumped whenever an input of the bundles changes.
    epoch: AtomicU64,
    /// Tells the bundle controller that bundles may need rebuilding.
    bundle_trigger: Option<UnboundedSender<()>>,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Writer of lifecycle records, when an audit key is configured.
    audit: Option<policybind_audit::AuditWriter>,
    /// Whether every cache listed (`false`: a writer was dropped first); see
    /// [`Context::caches_filled`].
    caches: tokio::sync::OnceCell<bool>,
}

impl Context {
    pub fn new(
        client: Client,
        stores: Stores,
        settings: Settings,
        metrics: Arc<Metrics>,
        clock: Clock,
        bundle_trigger: Option<UnboundedSender<()>>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: field_managers::OPERATOR.into(),
                instance: Some(settings.identity.clone()),
            },
        );
        Context {
            client,
            stores,
            settings,
            metrics,
            recorder,
            clock,
            state: Default::default(),
            epoch: AtomicU64::new(0),
            bundle_trigger,
            failures: Mutex::new(HashMap::new()),
            audit: None,
            caches: tokio::sync::OnceCell::new(),
        }
    }

    /// Waits until every watch cache has listed, up to
    /// [`Settings::cache_timeout`]. A reconciler reads other kinds from the
    /// caches; from half-filled ones it would act on a cluster that is not
    /// there (an approved model without its approvals, a policy without the
    /// bundles its last good version is recovered from), which after every
    /// restart or failover would write wrong statuses and drop rules.
    ///
    /// Every wait goes through this one cell. kube-runtime's
    /// `Store::wait_until_ready` wakes only the last of several tasks waiting
    /// at once (it polls a oneshot receiver, which keeps one waker), so with
    /// reconciles of several objects waiting at start, all but one slept
    /// until their timeout: a terminated operator lingered up to
    /// `cache_timeout` draining them, and bundles went out that much late.
    /// One task polls the stores; the others wait on the cell, which wakes
    /// them all.
    pub async fn caches_filled(&self) -> Result<(), crate::Error> {
        let timeout = self.settings.cache_timeout;
        let filled = self.caches.get_or_init(|| self.stores.wait_until_ready());
        match tokio::time::timeout(timeout, filled).await {
            Ok(true) => Ok(()),
            _ => Err(crate::Error::CachesNotReady(timeout)),
        }
    }

    /// Waits for [`Self::caches_filled`] however long it takes, saying so
    /// each `cache_timeout` (`what` names the waiter), until `shutdown`:
    /// `false` then. For the leader's loops, which cannot act without the
    /// caches and have nothing better to do than wait for them.
    pub async fn until_caches_filled(&self, shutdown: &CancellationToken, what: &str) -> bool {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                filled = self.caches_filled() => match filled {
                    Ok(()) => return true,
                    Err(error) => tracing::warn!(%error, "{what} waits for the watch caches"),
                }
            }
            // A cache whose writer is gone fails at once: do not spin.
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Records lifecycle changes in the audit trail with this writer.
    pub fn with_audit(mut self, writer: Option<policybind_audit::AuditWriter>) -> Self {
        self.audit = writer;
        self
    }

    /// The audit writer, if lifecycle records are kept.
    pub fn audit(&self) -> Option<&policybind_audit::AuditWriter> {
        self.audit.as_ref()
    }

    /// Appends a lifecycle record (a state change of one of our objects). The
    /// trail being unavailable never fails a reconcile: the change already
    /// happened in the cluster, and the event and log still say so.
    pub fn record(&self, event: policybind_engine::audit::AuditEvent) {
        if let Some(writer) = &self.audit
            && let Err(error) = writer.append(event.time(self.now()))
        {
            tracing::warn!(%error, "could not append a lifecycle record to the audit trail");
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// Current input epoch of the bundles.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Records that an input of the bundles changed and asks for a rebuild.
    pub fn bundles_changed(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.recheck_bundles();
    }

    /// Asks the bundle controller to compare bundles with what it wants (for
    /// example after someone edited a bundle ConfigMap), without new inputs.
    pub fn recheck_bundles(&self) {
        if let Some(trigger) = &self.bundle_trigger {
            // A closed channel means the controller is shutting down; nothing to do.
            let _ = trigger.unbounded_send(());
        }
    }

    /// Server-side apply with the operator's field manager. `force` takes over
    /// fields another manager set, which is right for fields only we own.
    pub fn apply_params() -> PatchParams {
        PatchParams::apply(field_managers::OPERATOR).force()
    }

    /// Publishes an event about `object`. A failed event never fails a reconcile.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let reference: ObjectReference = object.object_ref(&());
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, reason, "could not publish event");
        }
    }

    /// Clears the backoff of an object after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .expect("failure map lock poisoned")
            .remove(key);
    }

    /// Exponential backoff per object: 5 s, 10 s, 20 s ... at most 5 minutes.
    pub fn backoff(&self, controller: &'static str, key: &str, error: &Error) -> Action {
        self.metrics.failed(controller, error);
        let mut failures = self.failures.lock().expect("failure map lock poisoned");
        let count = failures.entry(format!("{controller}/{key}")).or_insert(0);
        *count = count.saturating_add(1);
        let delay = Duration::from_secs(5)
            .saturating_mul(1 << (*count - 1).min(6))
            .min(Duration::from_secs(300));
        tracing::warn!(controller, object = key, %error, retry_in = ?delay, "reconcile failed");
        Action::requeue(delay)
    }
}

/// `namespace/name` (or `name`) of an object, for logs and backoff keys.
pub fn key_of<K: ResourceExt>(object: &K) -> String {
    match object.namespace() {
        Some(ns) => format!("{ns}/{}", object.name_any()),
        None => object.name_any(),
    }
}

/// chrono time to the jiff time that k8s-openapi 0.29 uses.
pub fn to_jiff(time: DateTime<Utc>) -> Timestamp {
    Timestamp::new(time.timestamp(), time.timestamp_subsec_nanos() as i32)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// jiff time (from object metadata) to chrono.
pub fn from_jiff(time: Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(time.as_second(), time.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

/// Requeue at `at` (the moment something changes, such as an expiry), or wait for
/// a change when there is no such moment. A floor of one second avoids busy loops
/// on clock skew; a ceiling of one hour re-checks long waits.
pub fn requeue_at(now: DateTime<Utc>, at: Option<DateTime<Utc>>) -> Action {
    match at {
        Some(at) => {
            let wait = (at - now).to_std().unwrap_or(Duration::ZERO);
            Action::requeue(wait.clamp(Duration::from_secs(1), Duration::from_secs(3600)))
        }
        None => Action::await_change(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_conversion_round_trips_to_the_nanosecond() {
        let t = DateTime::from_timestamp(1_767_225_600, 123_456_789).unwrap();
        assert_eq!(from_jiff(to_jiff(t)), t);
    }

    #[test]
    fn requeue_is_at_the_moment_clamped_between_one_second_and_one_hour() {
        let now = DateTime::from_timestamp(1_000_000, 0).unwrap();
        assert_eq!(
            requeue_at(now, Some(now + chrono::Duration::seconds(30))),
            Action::requeue(Duration::from_secs(30))
        );
        assert_eq!(
            requeue_at(now, Some(now - chrono::Duration::seconds(30))),
            Action::requeue(Duration::from_secs(1))
        );
        assert_eq!(
            requeue_at(now, Some(now + chrono::Duration::days(3))),
            Action::requeue(Duration::from_secs(3600))
        );
        assert_eq!(requeue_at(now, None), Action::await_change());
    }
}
