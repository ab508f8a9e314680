//! Prometheus metrics of the operator, in one registry with the prefix
//! `policybind_operator`: reconciles, errors and durations per controller, bundle
//! writes and sizes, audit segments removed by retention, and objects by phase
//! (refreshed from the watch caches at every scrape, so they never drift from the
//! cluster).

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::stores::Stores;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub kind: &'static str,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

/// One AccessToken budget period.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenBudgetLabels {
    pub namespace: String,
    pub token: String,
    pub period: &'static str,
}

/// A gauge of dollars.
pub type UsdGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReportLabels {
    /// `Report.openreports.io` or `PolicyReport.wgpolicyk8s.io`.
    pub kind: &'static str,
    /// `policybind-requests` or `policybind-admission`.
    pub report: &'static str,
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReportApiLabels {
    pub kind: &'static str,
}

type DurationFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

/// Every metric the operator exports.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub durations: DurationFamily,
    pub objects: Family<PhaseLabels, Gauge>,
    pub bundle_writes: Family<NamespaceLabels, Counter>,
    pub bundle_bytes: Family<NamespaceLabels, Gauge>,
    /// Budget ledger ConfigMap writes, per namespace (at most one a second each).
    pub ledger_writes: Family<NamespaceLabels, Counter>,
    pub audit_segments_removed: Family<NamespaceLabels, Counter>,
    pub is_leader: Gauge,
    /// Report writes (server-side applies), per kind, report and namespace.
    pub report_writes: Family<ReportLabels, Counter>,
    /// 1 while the API server serves the report kind, 0 once it answered that
    /// it does not (checked again every few minutes).
    pub report_api_available: Family<ReportApiLabels, Gauge>,
    /// Spend of each AccessToken's current budget period, from its status
    /// (filled at scrape time from the cache, so deleted tokens drop out).
    pub token_spend_usd: Family<TokenBudgetLabels, UsdGauge>,
    /// Tokens (model tokens) used in the same periods.
    pub token_spend_tokens: Family<TokenBudgetLabels, Gauge>,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~16 s: a reconcile is a few API calls; the slow end shows API trouble.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("policybind_operator");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let durations: DurationFamily = Family::new_with_constructor(duration_histogram);
        let objects = Family::<PhaseLabels, Gauge>::default();
        let bundle_writes = Family::<NamespaceLabels, Counter>::default();
        let ledger_writes = Family::<NamespaceLabels, Counter>::default();
        let bundle_bytes = Family::<NamespaceLabels, Gauge>::default();
        let audit_segments_removed = Family::<NamespaceLabels, Counter>::default();
        let is_leader = Gauge::default();
        let report_writes = Family::<ReportLabels, Counter>::default();
        let report_api_available = Family::<ReportApiLabels, Gauge>::default();
        let token_spend_usd = Family::<TokenBudgetLabels, UsdGauge>::default();
        let token_spend_tokens = Family::<TokenBudgetLabels, Gauge>::default();
        registry.register(
            "token_spend_usd",
            "Spend in USD of each AccessToken's current budget period as its status reports it, one series per token and budgeted period (sidecars publish per-token series only with --metrics-token-labels)",
            token_spend_usd.clone(),
        );
        registry.register(
            "token_spend_tokens",
            "Model tokens used in each AccessToken's current budget period as its status reports it, one series per token and budgeted period",
            token_spend_tokens.clone(),
        );
        registry.register(
            "report_writes",
            "OpenReports / PolicyReport writes, per kind, report and namespace (each at most once per reports interval)",
            report_writes.clone(),
        );
        registry.register(
            "report_api_available",
            "1 while the API server serves the report kind; 0 when it does not (the CRD is not installed)",
            report_api_available.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles run, per controller",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, per controller and error kind",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciles, per controller",
            durations.clone(),
        );
        registry.register(
            "objects",
            "PolicyBind objects by kind and phase (tokens by phase, models by approval, ...)",
            objects.clone(),
        );
        registry.register(
            "bundle_writes",
            "Bundle ConfigMap writes (content changes), per namespace",
            bundle_writes.clone(),
        );
        registry.register(
            "ledger_writes",
            "Budget ledger ConfigMap writes (grants changed), per namespace",
            ledger_writes.clone(),
        );
        registry.register(
            "bundle_bytes",
            "Encoded size of the bundle, per namespace",
            bundle_bytes.clone(),
        );
        registry.register(
            "audit_segments_removed",
            "Audit segment ConfigMaps exported to the retention sink and deleted, per namespace",
            audit_segments_removed.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            is_leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            durations,
            objects,
            bundle_writes,
            bundle_bytes,
            ledger_writes,
            audit_segments_removed,
            is_leader,
            report_writes,
            report_api_available,
            token_spend_usd,
            token_spend_tokens,
        }
    }
}

/// Measures one reconcile; records its duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .durations
            .get_or_create(&ControllerLabels {
                controller: self.controller,
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Counts a reconcile and starts its timer.
    pub fn reconcile(&self, controller: &'static str) -> ReconcileTimer<'_> {
        self.reconciles
            .get_or_create(&ControllerLabels { controller })
            .inc();
        ReconcileTimer {
            metrics: self,
            controller,
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile.
    pub fn failed(&self, controller: &'static str, error: &Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller,
                error: error.metric_label(),
            })
            .inc();
    }

    /// Text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

pub(crate) fn count_phases(metrics: &Metrics, stores: &Stores, approval_ttl: Duration) {
    let now = chrono::Utc::now();
    let mut counts: HashMap<(&'static str, String), i64> = HashMap::new();
    for t in stores.tokens.state() {
        let phase = t
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .map_or("Unknown", |p| p.as_str());
        *counts.entry(("AccessToken", phase.into())).or_default() += 1;
    }
    for m in stores.models.state() {
        let approval = m
            .status
            .as_ref()
            .and_then(|s| s.approval)
            .map_or("Unknown", |a| a.as_str());
        *counts
            .entry(("ModelDeployment", approval.into()))
            .or_default() += 1;
    }
    for a in stores.approvals.state() {
        let phase = crate::controllers::approval_request::phase(&a, now, approval_ttl);
        *counts
            .entry(("ApprovalRequest", phase.as_str().into()))
            .or_default() += 1;
    }
    for i in stores.incidents.state() {
        *counts
            .entry(("Incident", format!("{:?}", i.spec.state)))
            .or_default() += 1;
    }
    let ready = |c: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>| {
        if c.is_some_and(|c| policybind_crds::conditions::is_true(c, "Ready")) {
            "Ready"
        } else {
            "NotReady"
        }
    };
    for p in stores.policies.state() {
        let phase = ready(p.status.as_ref().map(|s| &s.conditions));
        *counts.entry(("AIPolicy", phase.into())).or_default() += 1;
    }
    for p in stores.cluster_policies.state() {
        let phase = ready(p.status.as_ref().map(|s| &s.conditions));
        *counts.entry(("ClusterAIPolicy", phase.into())).or_default() += 1;
    }
    metrics.objects.clear();
    for ((kind, phase), n) in counts {
        metrics
            .objects
            .get_or_create(&PhaseLabels { kind, phase })
            .set(n);
    }
    token_spend(metrics, stores);
}

/// Each token's spend in each budgeted period, as its status reports the
/// current period (0 until the operator has counted any). One process, one
/// series per token and period: the bounded, cluster-wide view the Grafana
/// budget panels read, where sidecars would publish one series per token each.
fn token_spend(metrics: &Metrics, stores: &Stores) {
    metrics.token_spend_usd.clear();
    metrics.token_spend_tokens.clear();
    for token in stores.tokens.state() {
        let usage = token.status.as_ref().map(|s| &s.usage[..]).unwrap_or(&[]);
        for budget in &token.spec.budgets {
            let current = usage
                .iter()
                .filter(|u| u.period == budget.period)
                .max_by_key(|u| u.period_start);
            let labels = TokenBudgetLabels {
                namespace: token.metadata.namespace.clone().unwrap_or_default(),
                token: token.metadata.name.clone().unwrap_or_default(),
                period: budget.period.as_str(),
            };
            metrics
                .token_spend_usd
                .get_or_create(&labels)
                .set(current.map_or(0.0, |u| u.cost_usd));
            metrics
                .token_spend_tokens
                .get_or_create(&labels)
                .set(current.map_or(0, |u| i64::try_from(u.tokens).unwrap_or(i64::MAX)));
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on a plain port.
pub async fn serve(
    address: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    stores: Stores,
    ready: Arc<AtomicBool>,
    approval_ttl: Duration,
    shutdown: CancellationToken,
) -> Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                let stores = stores.clone();
                async move {
                    count_phases(&metrics, &stores, approval_ttl);
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::SeqCst);
                async move {
                    if ready {
                        (axum::http::StatusCode::OK, "ready")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "caches filling",
                        )
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| Error::MetricsServer { address, source })?;
    tracing::info!(%address, "serving metrics and health");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|source| Error::MetricsServer { address, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_and_error_counts_appear_in_the_exposition() {
        let metrics = Metrics::default();
        drop(metrics.reconcile("access_token"));
        metrics.failed("access_token", &Error::MissingField("metadata.name"));
        let text = metrics.encode();
        assert!(
            text.contains("policybind_operator_reconciles_total{controller=\"access_token\"} 1")
        );
        assert!(text.contains(
            "policybind_operator_reconcile_errors_total{controller=\"access_token\",error=\"missing_field\"} 1"
        ));
        assert!(text.contains(
            "policybind_operator_reconcile_duration_seconds_count{controller=\"access_token\"} 1"
        ));
    }
}
