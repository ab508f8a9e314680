//! Reports in the ecosystem's format (docs/operator.md, "Reports"): for every
//! enforced namespace, an OpenReports `Report` (`openreports.io/v1alpha1`)
//! named [`names::REQUESTS_REPORT`] summarising its request decisions, and one
//! named [`names::ADMISSION_REPORT`] summarising the webhook's admission
//! decisions on its objects; `wgpolicyk8s.io/v1alpha2` PolicyReports of the
//! same names when asked for. Policy Reporter and `kubectl get reports` read
//! them.
//!
//! Sources: each sidecar's decision summary in its usage report (data key
//! [`keys::DECISIONS`], counted only under the name its pod label gives, in an
//! enforced namespace, as usage is), and each webhook replica's admission
//! summary ConfigMap in PolicyBind's own namespace (labelled
//! [`labels::ADMISSION_SUMMARY`]). Every summary counts since its writer began
//! and survives the writer's restarts, so a report is the sum of the latest
//! summary of every writer whose ConfigMap exists. Usage reports outlive their
//! pods (budgets need them), so a report also keeps counting the decisions of
//! pods that are gone; webhook summaries of replicas that are gone are dropped
//! with their ConfigMap.
//!
//! Bounds: a report holds at most [`MAX_RESULTS`] results (those with the most
//! decisions; the rest are folded into [`OVERFLOW_POLICY`] per result), each
//! with at most [`policybind_crds::summary::MAX_CODES`] code counts and
//! [`policybind_crds::summary::MAX_EXAMPLES`] examples, whatever the traffic. Writes are
//! server-side applies under [`field_managers::REPORTS`], only when a report
//! changed, at most once per [`ReportsSettings::interval`] per report. When the
//! API server does not serve a report kind (its CRD is not installed) the
//! operator says so once, sets `policybind_operator_report_api_available` to 0
//! and asks again every [`ABSENT_RETRY`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use policybind_crds::summary::{
    Counts, DecisionSummary, OVERFLOW_POLICY, ParsedSummary, ReportResult, SummaryKey,
};
use policybind_crds::wire::{field_managers, keys, labels, names};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::metrics::{ErrorLabels, ReportApiLabels, ReportLabels};
use crate::usage::named_after_its_pod;

/// Label of report failures in `policybind_operator_reconcile_errors_total`.
pub const CONTROLLER: &str = "reports";
/// Most results one report holds.
pub const MAX_RESULTS: usize = 100;
/// How long the operator waits before asking again for a report kind the API
/// server did not serve.
pub const ABSENT_RETRY: Duration = Duration::from_secs(300);
/// `source` of every report and result.
pub const SOURCE: &str = "policybind";

/// A report kind PolicyBind can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReportKind {
    /// `openreports.io/v1alpha1` `Report`: what Kyverno and Policy Reporter use now.
    OpenReports,
    /// `wgpolicyk8s.io/v1alpha2` `PolicyReport`: the older format.
    WgPolicy,
}

impl ReportKind {
    /// For labels and logs.
    pub fn label(self) -> &'static str {
        match self {
            ReportKind::OpenReports => "Report.openreports.io",
            ReportKind::WgPolicy => "PolicyReport.wgpolicyk8s.io",
        }
    }

    pub fn api_resource(self) -> ApiResource {
        let (group, version, kind, plural) = match self {
            ReportKind::OpenReports => ("openreports.io", "v1alpha1", "Report", "reports"),
            ReportKind::WgPolicy => (
                "wgpolicyk8s.io",
                "v1alpha2",
                "PolicyReport",
                "policyreports",
            ),
        };
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: format!("{group}/{version}"),
            kind: kind.into(),
            plural: plural.into(),
        }
    }
}

/// `--reports`: which kinds to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    Off,
    OpenReports,
    WgPolicy,
    Both,
}

impl ReportFormat {
    pub fn kinds(self) -> Vec<ReportKind> {
        match self {
            ReportFormat::Off => vec![],
            ReportFormat::OpenReports => vec![ReportKind::OpenReports],
            ReportFormat::WgPolicy => vec![ReportKind::WgPolicy],
            ReportFormat::Both => vec![ReportKind::OpenReports, ReportKind::WgPolicy],
        }
    }
}

impl std::str::FromStr for ReportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(ReportFormat::Off),
            "openreports" => Ok(ReportFormat::OpenReports),
            "wgpolicyk8s" => Ok(ReportFormat::WgPolicy),
            "both" => Ok(ReportFormat::Both),
            other => Err(format!(
                "unknown report format {other:?}: expected openreports, wgpolicyk8s, both or off"
            )),
        }
    }
}

/// What to write and how often.
#[derive(Clone, Debug)]
pub struct ReportsSettings {
    pub format: ReportFormat,
    /// Time between two passes; each report is written at most once per pass.
    pub interval: Duration,
}

impl Default for ReportsSettings {
    fn default() -> Self {
        ReportsSettings {
            format: ReportFormat::OpenReports,
            interval: Duration::from_secs(30),
        }
    }
}

/// Decisions of one namespace per (policy, rule, result).
pub type Aggregate = BTreeMap<(String, String, ReportResult), Counts>;

/// Adds `entries` to `into`, ignoring the namespace of each key (the caller
/// chose the namespace).
pub fn absorb(into: &mut Aggregate, entries: &[(SummaryKey, Counts)]) {
    for (key, counts) in entries {
        into.entry((key.policy.clone(), key.rule.clone(), key.result))
            .or_default()
            .absorb(counts);
    }
}

/// Keeps the [`MAX_RESULTS`] keys with the most decisions (ties by key) and
/// folds the others into one [`OVERFLOW_POLICY`] entry per result.
pub fn bounded(aggregate: Aggregate) -> Aggregate {
    if aggregate.len() <= MAX_RESULTS {
        return aggregate;
    }
    let mut ranked: Vec<_> = aggregate.into_iter().collect();
    ranked.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(&b.0)));
    let keep = MAX_RESULTS - ReportResult::ALL.len();
    let mut out = Aggregate::new();
    for (i, ((policy, rule, result), counts)) in ranked.into_iter().enumerate() {
        let key = if i < keep && policy != OVERFLOW_POLICY {
            (policy, rule, result)
        } else {
            (OVERFLOW_POLICY.to_string(), String::new(), result)
        };
        out.entry(key).or_default().absorb(&counts);
    }
    out
}

/// The parsed summary of every usage report counted, by namespace.
pub fn request_summaries(
    config_maps: &[Arc<ConfigMap>],
    enforced: &mut impl FnMut(&str) -> bool,
) -> BTreeMap<String, Aggregate> {
    let mut out: BTreeMap<String, Aggregate> = BTreeMap::new();
    for cm in config_maps.iter().filter(|cm| named_after_its_pod(cm)) {
        let Some(namespace) = cm.metadata.namespace.as_deref().filter(|ns| enforced(ns)) else {
            continue;
        };
        let aggregate = out.entry(namespace.to_string()).or_default();
        if let Some(parsed) = parse_summary(cm) {
            // A sidecar's own namespace claim is never trusted: its report's
            // namespace is where the decisions were made.
            absorb(aggregate, &parsed.entries);
        }
    }
    out
}

/// The admission summaries of the webhook replicas, by the namespace each
/// decision concerns (decisions without one are not reported).
pub fn admission_summaries(config_maps: &[ConfigMap]) -> BTreeMap<String, Aggregate> {
    let mut out: BTreeMap<String, Aggregate> = BTreeMap::new();
    for cm in config_maps {
        let Some(parsed) = parse_summary(cm) else {
            continue;
        };
        for (key, counts) in &parsed.entries {
            if let Some(namespace) = &key.namespace {
                absorb(
                    out.entry(namespace.clone()).or_default(),
                    &[(key.clone(), counts.clone())],
                );
            }
        }
    }
    out
}

fn parse_summary(cm: &ConfigMap) -> Option<ParsedSummary> {
    let json = cm.data.as_ref()?.get(keys::DECISIONS)?;
    match DecisionSummary::parse(json) {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            tracing::debug!(
                configmap = cm.metadata.name.as_deref().unwrap_or(""),
                namespace = cm.metadata.namespace.as_deref().unwrap_or(""),
                %error,
                "decision summary ignored"
            );
            None
        }
    }
}

/// One result of a report, in the shape both formats share.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
struct ResultEntry {
    source: &'static str,
    policy: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    rule: String,
    result: ReportResult,
    scored: bool,
    timestamp: Timestamp,
    message: String,
    properties: BTreeMap<String, String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
struct Timestamp {
    seconds: i64,
    nanos: i32,
}

fn describe(result: ReportResult, what: &str) -> &'static str {
    match (result, what) {
        (ReportResult::Pass, "requests") => "requests allowed",
        (ReportResult::Fail, "requests") => "requests refused",
        (ReportResult::Warn, "requests") => "requests redacted, degraded or held for approval",
        (ReportResult::Error, "requests") => "requests that could not be decided or recorded",
        (ReportResult::Pass, _) => "objects admitted",
        (ReportResult::Fail, _) => "objects refused",
        (ReportResult::Warn, _) => "objects admitted with a warning or changed",
        (ReportResult::Error, _) => "objects that could not be decided",
        (ReportResult::Skip, _) => "not evaluated",
    }
}

fn result_entry(
    (policy, rule, result): (String, String, ReportResult),
    counts: Counts,
    what: &str,
) -> ResultEntry {
    let latest = counts
        .examples
        .first()
        .map(|e| e.time)
        .unwrap_or(DateTime::UNIX_EPOCH);
    let codes: Vec<String> = counts
        .codes
        .iter()
        .map(|(code, n)| format!("{code}={n}"))
        .collect();
    let mut properties = BTreeMap::from([
        ("count".to_string(), counts.count.to_string()),
        ("codes".to_string(), codes.join(",")),
    ]);
    for (i, example) in counts.examples.iter().enumerate() {
        let mut text = format!(
            "{} {}",
            example.time.to_rfc3339_opts(SecondsFormat::Secs, true),
            example.code
        );
        for (label, value) in [
            ("model", &example.model),
            ("subject", &example.subject),
            ("object", &example.object),
        ] {
            if let Some(value) = value {
                text.push_str(&format!(" {label}={value}"));
            }
        }
        properties.insert(format!("example.{}", i + 1), text);
    }
    ResultEntry {
        source: SOURCE,
        message: format!("{} {}", counts.count, describe(result, what)),
        policy,
        rule,
        result,
        scored: result != ReportResult::Warn,
        timestamp: Timestamp {
            seconds: latest.timestamp(),
            nanos: 0,
        },
        properties,
    }
}

/// The report object to apply: `name` in `namespace`, of `kind`, from
/// `aggregate` (bounded here). Deterministic: equal aggregates give equal JSON.
pub fn report_object(kind: ReportKind, namespace: &str, name: &str, aggregate: Aggregate) -> Value {
    let what = if name == names::ADMISSION_REPORT {
        "objects"
    } else {
        "requests"
    };
    let mut totals: BTreeMap<&'static str, u64> =
        ReportResult::ALL.iter().map(|r| (r.as_str(), 0)).collect();
    let results: Vec<ResultEntry> = bounded(aggregate)
        .into_iter()
        .map(|(key, counts)| {
            let total = totals.entry(key.2.as_str()).or_default();
            *total = total.saturating_add(counts.count);
            result_entry(key, counts, what)
        })
        .collect();
    let resource = kind.api_resource();
    let mut object = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": { labels::MANAGED_BY: labels::MANAGED_BY_VALUE },
        },
        "scope": { "apiVersion": "v1", "kind": "Namespace", "name": namespace },
        "summary": totals,
        "results": results,
    });
    if kind == ReportKind::OpenReports {
        object["source"] = json!(SOURCE);
    }
    object
}

/// What the loop remembers between passes.
#[derive(Default)]
pub struct ReportWriter {
    /// JSON of every report last applied, by (kind, namespace, name).
    written: HashMap<(ReportKind, String, &'static str), String>,
    /// Kinds the API server did not serve, and when to ask again.
    absent: HashMap<ReportKind, Instant>,
}

/// Why a pass stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ReportsError {
    #[error("listing the webhook's admission summaries: {0}")]
    Admission(#[source] kube::Error),
    #[error("applying {kind} {namespace}/{name}: {source}")]
    Apply {
        kind: &'static str,
        namespace: String,
        name: &'static str,
        #[source]
        source: kube::Error,
    },
}

fn not_served(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

impl ReportWriter {
    /// One pass: every report of every enforced namespace, in every kind asked
    /// for, applied when it changed. Returns how many reports were written.
    pub async fn pass(&mut self, ctx: &Context, now: Instant) -> Result<usize, ReportsError> {
        let kinds = ctx.settings.reports.format.kinds();
        if kinds.is_empty() {
            return Ok(0);
        }
        let desired = desired_reports(ctx).await?;
        let mut written = 0;
        for kind in kinds {
            if self.absent.get(&kind).is_some_and(|retry| now < *retry) {
                continue;
            }
            written += self.write_kind(ctx, kind, &desired, now).await?;
        }
        Ok(written)
    }

    async fn write_kind(
        &mut self,
        ctx: &Context,
        kind: ReportKind,
        desired: &[(String, &'static str, Aggregate)],
        now: Instant,
    ) -> Result<usize, ReportsError> {
        let resource = kind.api_resource();
        let params = PatchParams::apply(field_managers::REPORTS).force();
        let mut written = 0;
        for (namespace, name, aggregate) in desired {
            let object = report_object(kind, namespace, name, aggregate.clone());
            let json = object.to_string();
            let key = (kind, namespace.clone(), *name);
            if self.written.get(&key) == Some(&json) {
                continue;
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), namespace, &resource);
            match api.patch(name, &params, &Patch::Apply(&object)).await {
                Ok(_) => {}
                Err(error) if not_served(&error) => {
                    self.mark_absent(ctx, kind, now);
                    return Ok(written);
                }
                Err(source) => {
                    return Err(ReportsError::Apply {
                        kind: kind.label(),
                        namespace: namespace.clone(),
                        name,
                        source,
                    });
                }
            }
            self.mark_served(ctx, kind);
            ctx.metrics
                .report_writes
                .get_or_create(&ReportLabels {
                    kind: kind.label(),
                    report: name,
                    namespace: namespace.clone(),
                })
                .inc();
            self.written.insert(key, json);
            written += 1;
        }
        Ok(written)
    }

    fn mark_absent(&mut self, ctx: &Context, kind: ReportKind, now: Instant) {
        let first = self.absent.insert(kind, now + ABSENT_RETRY).is_none();
        gauge(ctx, kind).set(0);
        if first {
            tracing::warn!(
                kind = kind.label(),
                retry = ?ABSENT_RETRY,
                "the API server does not serve this report kind (its CRD is not installed); reports of this kind are not written, asking again periodically"
            );
        }
    }

    fn mark_served(&mut self, ctx: &Context, kind: ReportKind) {
        if self.absent.remove(&kind).is_some() {
            tracing::info!(
                kind = kind.label(),
                "the API server serves this report kind again"
            );
        }
        gauge(ctx, kind).set(1);
    }
}

fn gauge(ctx: &Context, kind: ReportKind) -> prometheus_client::metrics::gauge::Gauge {
    ctx.metrics
        .report_api_available
        .get_or_create(&ReportApiLabels { kind: kind.label() })
        .clone()
}

/// Every report to write: the requests report of each enforced namespace
/// (even with nothing counted yet) and the admission report of each enforced
/// namespace the webhook decided on.
async fn desired_reports(
    ctx: &Context,
) -> Result<Vec<(String, &'static str, Aggregate)>, ReportsError> {
    let mut enforced = crate::bundle::EnforcedNamespaces::new(
        &ctx.stores.namespaces,
        &ctx.stores.pods,
        &ctx.settings.namespace,
    );
    let mut is_enforced = |ns: &str| enforced.contains(ns);
    let mut requests = request_summaries(&ctx.stores.usage_reports.state(), &mut is_enforced);
    for namespace in ctx.stores.namespaces.state() {
        if let Some(name) = namespace.metadata.name.as_deref()
            && is_enforced(name)
        {
            requests.entry(name.to_string()).or_default();
        }
    }
    let summaries: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let selector = format!("{}=true", labels::ADMISSION_SUMMARY);
    let listed = summaries
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(ReportsError::Admission)?;
    let admission = admission_summaries(&listed.items);
    let mut desired: Vec<(String, &'static str, Aggregate)> = requests
        .into_iter()
        .map(|(ns, aggregate)| (ns, names::REQUESTS_REPORT, aggregate))
        .collect();
    desired.extend(
        admission
            .into_iter()
            .filter(|(ns, _)| is_enforced(ns))
            .map(|(ns, aggregate)| (ns, names::ADMISSION_REPORT, aggregate)),
    );
    Ok(desired)
}

/// Writes the reports every [`ReportsSettings::interval`] until shutdown (the
/// leader only). Failures are logged, counted and retried at the next pass.
pub async fn reports_loop(ctx: Arc<Context>, shutdown: CancellationToken) {
    let settings = ctx.settings.reports.clone();
    if settings.format == ReportFormat::Off {
        tracing::info!("reports are off");
        return;
    }
    let filled = tokio::select! {
        _ = shutdown.cancelled() => return,
        filled = tokio::time::timeout(ctx.settings.cache_timeout, ctx.stores.wait_until_ready()) => filled,
    };
    if filled.ok() != Some(true) {
        tracing::error!("reports not written: the watch caches did not fill");
        return;
    }
    let mut writer = ReportWriter::default();
    loop {
        if let Err(error) = writer.pass(&ctx, Instant::now()).await {
            tracing::warn!(%error, "reports not fully written; retrying at the next pass");
            ctx.metrics
                .errors
                .get_or_create(&ErrorLabels {
                    controller: CONTROLLER,
                    error: "kube",
                })
                .inc();
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(settings.interval) => {}
        }
    }
}
