//! Webhook metrics, one `prometheus-client` sub-registry (`policybind_webhook_*`),
//! served with `/metrics` on the plain health port.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of an admission review.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// `validate` or `mutate`.
    pub webhook: &'static str,
    pub kind: String,
    pub operation: String,
    /// `true` or `false`.
    pub allowed: &'static str,
}

/// Labels of a histogram sample.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabel {
    pub webhook: &'static str,
}

/// Labels of an injection outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InjectionLabels {
    /// `injected` or the skip reason.
    pub result: &'static str,
}

/// Labels of an audit record outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuditLabels {
    /// `written`, `failed` or `dry_run` (a dry-run review: decided, not recorded).
    pub result: &'static str,
    /// Why it failed (`queue_full`, `closed`, `too_large`); empty otherwise.
    pub reason: &'static str,
}

/// Every metric the webhook exports.
pub struct Metrics {
    pub reviews: Family<ReviewLabels, Counter>,
    pub duration: Family<WebhookLabel, Histogram>,
    pub injections: Family<InjectionLabels, Counter>,
    pub audit_records: Family<AuditLabels, Counter>,
    /// Reviews refused because an identifier was too long or held control characters.
    pub invalid_identifiers: Counter,
    pub rejected_bodies: Counter,
    pub certificate_reloads: Counter,
    /// The admission summary published for the operator's Reports
    /// ([`crate::summary`]); not a Prometheus metric.
    pub summary: Arc<policybind_crds::summary::DecisionTally>,
    registry: std::sync::Mutex<Registry>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let reviews = Family::<ReviewLabels, Counter>::default();
        let duration = Family::<WebhookLabel, Histogram>::new_with_constructor(|| {
            // 25 µs to about 1.6 s: sub-millisecond answers must be visible.
            Histogram::new(exponential_buckets(0.000_025, 2.0, 17))
        });
        let injections = Family::<InjectionLabels, Counter>::default();
        let audit_records = Family::<AuditLabels, Counter>::default();
        let invalid_identifiers = Counter::default();
        let rejected_bodies = Counter::default();
        let certificate_reloads = Counter::default();
        let mut registry = Registry::default();
        let sub = registry.sub_registry_with_prefix("policybind_webhook");
        sub.register(
            "admission_reviews",
            "Admission reviews answered, by webhook, kind, operation and outcome",
            reviews.clone(),
        );
        sub.register(
            "admission_duration_seconds",
            "Time to answer an admission review, body parsing included",
            duration.clone(),
        );
        sub.register(
            "injections",
            "Pods seen by the mutating webhook, by injection result",
            injections.clone(),
        );
        sub.register(
            "audit_records",
            "Admission records handed to the audit trail, by result (written, failed, dry_run) and failure reason",
            audit_records.clone(),
        );
        sub.register(
            "invalid_identifiers",
            "Reviews denied because an identifier was too long or contained control characters",
            invalid_identifiers.clone(),
        );
        sub.register(
            "rejected_bodies",
            "Requests refused as malformed or oversized (HTTP 400/413)",
            rejected_bodies.clone(),
        );
        sub.register(
            "certificate_reloads",
            "Serving certificates loaded (start-up and every rotation)",
            certificate_reloads.clone(),
        );
        Arc::new(Metrics {
            summary: Arc::new(policybind_crds::summary::DecisionTally::new(
                chrono::Utc::now(),
            )),
            reviews,
            duration,
            injections,
            audit_records,
            invalid_identifiers,
            rejected_bodies,
            certificate_reloads,
            registry: std::sync::Mutex::new(registry),
        })
    }

    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics lock");
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
