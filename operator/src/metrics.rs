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

use crate::error::Error;

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
    pub audit_segments_removed: Family<NamespaceLabels, Counter>,
    pub is_leader: Gauge,
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
        let bundle_bytes = Family::<NamespaceLabels, Gauge>::default();
        let audit_segments_removed = Family::<NamespaceLabels, Counter>::default();
        let is_leader = Gauge::default();
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
            audit_segments_removed,
            is_leader,
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
