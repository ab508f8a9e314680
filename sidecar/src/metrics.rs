//! Prometheus metrics of the sidecar, served on the health port at `/metrics`.
//!
//! One `prometheus-client` registry; every metric is prefixed `policybind_sidecar_`.
//! Label values are bounded by the policy set (codes, policies), never by
//! request content. Tokens are not a label by default: 10,000 tokens must not
//! mean 10,000 series per pod. With token labels on
//! ([`Metrics::set_token_labels`], `--metrics-token-labels`), the budget gauges
//! `budget_spent_usd{token,period}` / `budget_spent_tokens{token,period}` are
//! published and `rate_limited_total` counts per token; off, the budget gauges
//! are not published (`AccessToken.status.usage` shows spend) and
//! `rate_limited_total` is one series (`token=""`, which Prometheus reads as no
//! label).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub effect: String,
    pub code: String,
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub endpoint: String,
    /// `ok`, `error` (upstream answered >= 500), `unavailable`, `timeout`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    pub token: String,
    pub period: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub token: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutputLabels {
    /// `redacted` or `blocked`.
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SettlementLabels {
    /// Where the usage came from: `provider`, `counted-text` or `estimate`
    /// ([`crate::pipeline::UsageSource`]).
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BundleLabels {
    pub fingerprint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `rejected`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectedLabels {
    /// Why a bundle was refused: `too_many_parts`, `too_large`, `gzip`, `json`,
    /// `compile`, `fingerprint_mismatch`, ... (see `policybind_sidecar::cluster`).
    pub reason: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 2 microseconds to about 67 seconds.
    Histogram::new(exponential_buckets(0.000_002, 2.0, 26))
}

/// Every metric of the sidecar.
pub struct Metrics {
    registry: Registry,
    pub decisions: Family<DecisionLabels, Counter>,
    pub decide_seconds: Histogram,
    pub overhead_seconds: Histogram,
    pub upstream_seconds: HistogramFamily<UpstreamLabels>,
    pub budget_spent_usd: Family<BudgetLabels, Gauge<f64, AtomicU64>>,
    pub budget_spent_tokens: Family<BudgetLabels, Gauge>,
    pub rate_limited: Family<TokenLabels, Counter>,
    pub bundle: Family<BundleLabels, Gauge>,
    pub bundle_loaded_timestamp: Gauge<f64, AtomicU64>,
    pub bundle_age_seconds: Gauge<f64, AtomicU64>,
    pub reloads: Family<ReloadLabels, Counter>,
    pub bundle_rejected: Family<RejectedLabels, Counter>,
    pub in_flight: Gauge,
    pub audit_backlog: Gauge,
    pub unauthenticated: Family<CodeLabels, Counter>,
    pub output: Family<OutputLabels, Counter>,
    pub settlements: Family<SettlementLabels, Counter>,
    /// The decision summary published in the pod's usage report
    /// ([`crate::decisions`]); not a Prometheus metric.
    pub summary: Arc<policybind_crds::summary::DecisionTally>,
    loaded_at: Mutex<Option<(String, DateTime<Utc>)>>,
    /// Whether per-token series are published (see the module docs).
    token_labels: AtomicBool,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let decide_seconds = latency_histogram();
        let overhead_seconds = latency_histogram();
        let upstream_seconds: HistogramFamily<UpstreamLabels> =
            Family::new_with_constructor(latency_histogram);
        let budget_spent_usd = Family::<BudgetLabels, Gauge<f64, AtomicU64>>::default();
        let budget_spent_tokens = Family::<BudgetLabels, Gauge>::default();
        let rate_limited = Family::<TokenLabels, Counter>::default();
        let bundle = Family::<BundleLabels, Gauge>::default();
        let bundle_loaded_timestamp = Gauge::<f64, AtomicU64>::default();
        let bundle_age_seconds = Gauge::<f64, AtomicU64>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let bundle_rejected = Family::<RejectedLabels, Counter>::default();
        let in_flight = Gauge::default();
        let audit_backlog = Gauge::default();
        let unauthenticated = Family::<CodeLabels, Counter>::default();
        let output = Family::<OutputLabels, Counter>::default();
        let settlements = Family::<SettlementLabels, Counter>::default();
        {
            let r = registry.sub_registry_with_prefix("policybind_sidecar");
            r.register(
                "decisions",
                "Decisions by effect, deciding rationale code and policy",
                decisions.clone(),
            );
            r.register(
                "decide_duration_seconds",
                "Time to build the facts and decide one request (excluding the upstream call)",
                decide_seconds.clone(),
            );
            r.register(
                "overhead_seconds",
                "Time the sidecar adds to a forwarded request: its whole handling time minus the time spent waiting for the upstream",
                overhead_seconds.clone(),
            );
            r.register(
                "upstream_duration_seconds",
                "Time from forwarding a request to the upstream's response headers",
                upstream_seconds.clone(),
            );
            r.register(
                "budget_spent_usd",
                "Settled plus reserved spend of the current budget period, per token",
                budget_spent_usd.clone(),
            );
            r.register(
                "budget_spent_tokens",
                "Settled plus reserved tokens of the current budget period, per token",
                budget_spent_tokens.clone(),
            );
            r.register(
                "rate_limited",
                "Requests refused by a rate limit, per token",
                rate_limited.clone(),
            );
            r.register(
                "bundle_info",
                "The policy set in force (value 1), labelled with its fingerprint",
                bundle.clone(),
            );
            r.register(
                "bundle_loaded_timestamp_seconds",
                "Unix time the policy set in force was loaded",
                bundle_loaded_timestamp.clone(),
            );
            r.register(
                "bundle_age_seconds",
                "Seconds since the policy set in force was loaded (0 when none is)",
                bundle_age_seconds.clone(),
            );
            r.register(
                "reloads",
                "Policy set reloads by result (ok, rejected)",
                reloads.clone(),
            );
            r.register(
                "bundle_rejected",
                "Bundles refused (counted once per bad fingerprint), by reason; the last good set stays in force",
                bundle_rejected.clone(),
            );
            r.register(
                "audit_backlog_records",
                "Decisions appended to the audit trail but not yet in its store",
                audit_backlog.clone(),
            );
            r.register(
                "unauthenticated_rejections",
                "Requests refused before anyone was identified (no or unknown token, path not served, no policy set), by code; summarised in the audit trail once per interval",
                unauthenticated.clone(),
            );
            r.register(
                "output_actions",
                "Model answers the output policy redacted or blocked",
                output.clone(),
            );
            r.register(
                "usage_settlements",
                "Reservations settled, by where the usage came from: provider (reported), counted-text or estimate (no usage reported)",
                settlements.clone(),
            );
            r.register(
                "in_flight_requests",
                "Requests being handled",
                in_flight.clone(),
            );
        }
        Arc::new(Metrics {
            registry,
            decisions,
            decide_seconds,
            overhead_seconds,
            upstream_seconds,
            budget_spent_usd,
            budget_spent_tokens,
            rate_limited,
            bundle,
            bundle_loaded_timestamp,
            bundle_age_seconds,
            reloads,
            bundle_rejected,
            in_flight,
            audit_backlog,
            unauthenticated,
            output,
            settlements,
            summary: Arc::new(policybind_crds::summary::DecisionTally::new(Utc::now())),
            loaded_at: Mutex::new(None),
            token_labels: AtomicBool::new(false),
        })
    }

    pub fn decision(&self, effect: &str, code: &str, policy: Option<&str>) {
        self.decisions
            .get_or_create(&DecisionLabels {
                effect: effect.to_string(),
                code: code.to_string(),
                policy: policy.unwrap_or("").to_string(),
            })
            .inc();
    }

    pub fn upstream(&self, endpoint: &str, outcome: &str, seconds: f64) {
        self.upstream_seconds
            .get_or_create(&UpstreamLabels {
                endpoint: endpoint.to_string(),
                outcome: outcome.to_string(),
            })
            .observe(seconds);
    }

    /// Turns per-token series on or off (off by default).
    pub fn set_token_labels(&self, on: bool) {
        self.token_labels.store(on, Ordering::Relaxed);
    }

    /// Whether per-token series are published.
    pub fn token_labels(&self) -> bool {
        self.token_labels.load(Ordering::Relaxed)
    }

    /// Counts a request refused by a rate limit, per token when token labels
    /// are on.
    pub fn rate_limited(&self, token: &str) {
        let token = if self.token_labels() { token } else { "" };
        self.rate_limited
            .get_or_create(&TokenLabels {
                token: token.to_string(),
            })
            .inc();
    }

    /// Counts one settled reservation by the source of its usage.
    pub fn settled(&self, source: crate::pipeline::UsageSource) {
        self.settlements
            .get_or_create(&SettlementLabels {
                source: source.as_str().to_string(),
            })
            .inc();
    }

    /// Records that a new policy set is in force.
    pub fn bundle_loaded(&self, fingerprint: &str, at: DateTime<Utc>) {
        let mut loaded = self.loaded_at.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((old, _)) = loaded.as_ref() {
            self.bundle.remove(&BundleLabels {
                fingerprint: old.clone(),
            });
        }
        self.bundle
            .get_or_create(&BundleLabels {
                fingerprint: fingerprint.to_string(),
            })
            .set(1);
        self.bundle_loaded_timestamp
            .set(at.timestamp_micros() as f64 / 1e6);
        *loaded = Some((fingerprint.to_string(), at));
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self, now: DateTime<Utc>) -> String {
        if let Some((_, at)) = self
            .loaded_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let age = (now - *at).num_milliseconds() as f64 / 1e3;
            self.bundle_age_seconds.set(age.max(0.0));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
