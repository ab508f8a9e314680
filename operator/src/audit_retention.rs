//! Audit retention in the cluster: keeps every namespace's audit segment
//! ConfigMaps (label `policybind.io/audit-segment`) within a byte budget.
//!
//! Sidecars and the operator itself write segments and never delete them, so
//! without this they grow without bound. Every interval the leader lists which
//! namespaces hold segments (one metadata-only list across namespaces: segments
//! are large, and only their namespaces matter here) and runs
//! [`policybind_audit::enforce_retention`] on each with a
//! [`ConfigMapStore`] for that namespace: the oldest sealed segments go to the
//! configured sink first and are deleted only once the sink has them.
//!
//! A failure in one namespace is logged with that namespace and counted; the
//! others still run, and the next tick tries again. Nothing here stops the
//! operator.

use policybind_crds::wire::labels;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, PartialObjectMeta};
use kube::{Api, Client, ResourceExt};
use policybind_audit::{
    AuditSink, ConfigMapStore, DirectorySink, RetentionPolicy, StdoutJsonLinesSink,
};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::metrics::{Metrics, NamespaceLabels};

/// Label of retention failures in `policybind_operator_reconcile_errors_total`.
pub const CONTROLLER: &str = "audit_retention";
/// Default budget per namespace: 50 MiB of segment JSON.
pub const DEFAULT_MAX_BYTES: u64 = 50 << 20;
/// Default time between passes, in seconds.
pub const DEFAULT_INTERVAL_SECS: u64 = 300;
/// Page size of the namespace listing: metadata only, so pages can be large.
const LIST_PAGE_SIZE: u32 = 500;

/// Where retention sends segments before deleting them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditSinkSetting {
    /// One JSON line per segment on stdout, for a log pipeline (logs go to stderr).
    Stdout,
    /// Segment files in a directory, in the directory store's format.
    Directory(PathBuf),
}

impl FromStr for AuditSinkSetting {
    type Err = String;

    /// `stdout` or `dir:<path>`.
    fn from_str(value: &str) -> std::result::Result<Self, Self::Err> {
        match value.split_once(':') {
            None if value == "stdout" => Ok(AuditSinkSetting::Stdout),
            Some(("dir", path)) if !path.is_empty() => {
                Ok(AuditSinkSetting::Directory(PathBuf::from(path)))
            }
            _ => Err(format!(
                "unknown audit sink {value:?}: expected `stdout` or `dir:<path>`"
            )),
        }
    }
}

impl AuditSinkSetting {
    /// The sink itself; a directory is created if missing.
    pub fn open(&self) -> Result<Arc<dyn AuditSink>> {
        Ok(match self {
            AuditSinkSetting::Stdout => Arc::new(StdoutJsonLinesSink),
            AuditSinkSetting::Directory(dir) => {
                Arc::new(DirectorySink::new(dir).map_err(Error::Audit)?)
            }
        })
    }
}

/// Settings of the retention task (absent when retention is off).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRetentionSettings {
    /// Bytes of segment JSON each namespace may hold.
    pub max_bytes: u64,
    /// Time between passes.
    pub interval: Duration,
    /// Where removed segments go.
    pub sink: AuditSinkSetting,
}

impl Default for AuditRetentionSettings {
    fn default() -> Self {
        AuditRetentionSettings {
            max_bytes: DEFAULT_MAX_BYTES,
            interval: Duration::from_secs(DEFAULT_INTERVAL_SECS),
            sink: AuditSinkSetting::Stdout,
        }
    }
}

/// The namespaces holding segments, each once, in a stable order.
pub fn namespaces_with_segments(items: &[PartialObjectMeta<ConfigMap>]) -> BTreeSet<String> {
    items.iter().filter_map(|item| item.namespace()).collect()
}

/// One metadata-only list of every segment ConfigMap, paged.
async fn list_namespaces(client: &Client) -> Result<BTreeSet<String>> {
    let api: Api<ConfigMap> = Api::all(client.clone());
    let mut params = ListParams::default()
        .labels(labels::AUDIT_SEGMENT)
        .limit(LIST_PAGE_SIZE);
    let mut namespaces = BTreeSet::new();
    loop {
        let page = api.list_metadata(&params).await?;
        namespaces.append(&mut namespaces_with_segments(&page.items));
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(namespaces),
        }
    }
}

/// One pass over every namespace holding segments. Failures are logged and
/// counted per namespace; the pass goes on with the next one. Stops between
/// namespaces once `shutdown` is cancelled (a namespace in progress finishes).
pub async fn run_once(
    client: &Client,
    policy: &RetentionPolicy,
    sink: &dyn AuditSink,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) {
    let namespaces = match list_namespaces(client).await {
        Ok(namespaces) => namespaces,
        Err(error) => {
            metrics.failed(CONTROLLER, &error);
            tracing::warn!(%error, "audit retention: cannot list segment namespaces; retrying next tick");
            return;
        }
    };
    for namespace in namespaces {
        if shutdown.is_cancelled() {
            return;
        }
        let store = ConfigMapStore::new(client.clone(), namespace.clone());
        match policybind_audit::enforce_retention(&store, sink, policy).await {
            Ok(report) => {
                if !report.removed.is_empty() {
                    metrics
                        .audit_segments_removed
                        .get_or_create(&NamespaceLabels { namespace })
                        .inc_by(report.removed.len() as u64);
                }
            }
            Err(error) => {
                let error = Error::Audit(error);
                metrics.failed(CONTROLLER, &error);
                tracing::warn!(%namespace, %error, "audit retention failed; retrying next tick");
            }
        }
    }
}

/// Runs a pass at once and then every interval until `shutdown`. Started only
/// once this replica leads, like the controllers.
pub async fn retention_loop(
    client: Client,
    settings: AuditRetentionSettings,
    sink: Arc<dyn AuditSink>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let policy = RetentionPolicy::new(settings.max_bytes);
    tracing::info!(
        max_bytes = settings.max_bytes,
        interval = ?settings.interval,
        sink = %sink.describe(),
        "audit retention running"
    );
    let mut ticks = tokio::time::interval(settings.interval);
    // After a slow pass, wait a full interval rather than catching up at once.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        run_once(&client, &policy, sink.as_ref(), &metrics, &shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::{ObjectMeta, PartialObjectMetaExt};

    fn segment_in(namespace: &str, name: &str) -> PartialObjectMeta<ConfigMap> {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        }
        .into_response_partial()
    }

    #[test]
    fn each_namespace_holding_segments_is_visited_once_in_name_order() {
        let items = [
            segment_in("team-b", "pb-audit-b-1"),
            segment_in("team-a", "pb-audit-a-1"),
            segment_in("team-b", "pb-audit-b-2"),
        ];
        let namespaces: Vec<_> = namespaces_with_segments(&items).into_iter().collect();
        assert_eq!(namespaces, ["team-a", "team-b"]);
    }

    #[test]
    fn sink_is_stdout_or_a_directory_and_anything_else_is_refused() {
        assert_eq!("stdout".parse(), Ok(AuditSinkSetting::Stdout));
        assert_eq!(
            "dir:/var/lib/policybind/audit".parse(),
            Ok(AuditSinkSetting::Directory(
                "/var/lib/policybind/audit".into()
            ))
        );
        for bad in ["", "dir:", "stderr", "file:/tmp/x", "stdout:"] {
            let parsed: std::result::Result<AuditSinkSetting, _> = bad.parse();
            assert!(parsed.is_err(), "{bad:?} was accepted");
        }
    }
}
