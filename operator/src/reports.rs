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
//!
//! Stale reports: a namespace that is no longer enforced (or that the webhook
//! no longer summarises) loses its report, so a report never speaks for
//! PolicyBind where it does not decide. The first pass of each kind after the
//! operator becomes leader lists the reports it manages cluster-wide (label
//! `app.kubernetes.io/managed-by=policybind`) and deletes those it would not
//! write, which a previous leader may have left; later passes delete what they
//! themselves wrote and no longer want, without listing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
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
    /// Kinds whose reports this writer has listed and swept since it started.
    swept: HashSet<ReportKind>,
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
    #[error("listing the {kind} reports PolicyBind manages: {source}")]
    ListManaged {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("deleting the stale {kind} {namespace}/{name}: {source}")]
    Delete {
        kind: &'static str,
        namespace: String,
        name: String,
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
        self.sweep(ctx, kind, desired).await?;
        Ok(written)
    }

    /// Deletes the reports of `kind` that are not `desired`: on the first pass
    /// every managed one the API server lists, then those this writer wrote.
    async fn sweep(
        &mut self,
        ctx: &Context,
        kind: ReportKind,
        desired: &[(String, &'static str, Aggregate)],
    ) -> Result<(), ReportsError> {
        let wanted: HashSet<(&str, &str)> = desired
            .iter()
            .map(|(namespace, name, _)| (namespace.as_str(), *name))
            .collect();
        let resource = kind.api_resource();
        let stale: Vec<(String, String)> = if self.swept.contains(&kind) {
            self.written
                .keys()
                .filter(|(k, namespace, name)| {
                    *k == kind && !wanted.contains(&(namespace.as_str(), *name))
                })
                .map(|(_, namespace, name)| (namespace.clone(), name.to_string()))
                .collect()
        } else {
            let selector = format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE);
            let listed = Api::<DynamicObject>::all_with(ctx.client.clone(), &resource)
                .list_metadata(&ListParams::default().labels(&selector))
                .await
                .map_err(|source| ReportsError::ListManaged {
                    kind: kind.label(),
                    source,
                })?;
            listed
                .items
                .into_iter()
                .filter_map(|report| Some((report.metadata.namespace?, report.metadata.name?)))
                .filter(|(namespace, name)| {
                    [names::REQUESTS_REPORT, names::ADMISSION_REPORT].contains(&name.as_str())
                        && !wanted.contains(&(namespace.as_str(), name.as_str()))
                })
                .collect()
        };
        for (namespace, name) in stale {
            let api: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), &namespace, &resource);
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(kind = kind.label(), %namespace, %name, "deleted a report PolicyBind no longer writes")
                }
                Err(error) if not_served(&error) => {}
                Err(source) => {
                    return Err(ReportsError::Delete {
                        kind: kind.label(),
                        namespace,
                        name,
                        source,
                    });
                }
            }
            self.written
                .retain(|(k, ns, n), _| !(*k == kind && *ns == namespace && *n == name));
        }
        self.swept.insert(kind);
        Ok(())
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
    if !ctx.until_caches_filled(&shutdown, "reports").await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use policybind_crds::summary::{DecisionTally, Example, MAX_CODE, MAX_MODEL, MAX_NAME};
    use proptest::prelude::*;

    fn key(policy: &str, rule: &str, result: ReportResult) -> SummaryKey {
        SummaryKey::local(policy, rule, result)
    }

    fn example(second: i64, code: &str) -> Example {
        Example {
            time: chrono::Utc
                .timestamp_opt(1_800_000_000 + second, 0)
                .unwrap(),
            code: code.into(),
            model: Some("gpt-4o".into()),
            subject: Some(summary::subject_hash("alice")),
            object: None,
        }
    }

    fn parsed(tally: &DecisionTally) -> Vec<(SummaryKey, Counts)> {
        let json = serde_json::to_string(&tally.snapshot()).unwrap();
        DecisionSummary::parse(&json).unwrap().entries
    }

    /// The requests report of team-a of `kind` summing these pods' tallies,
    /// each read back as the operator reads it.
    fn requests_report(kind: ReportKind, pods: &[&DecisionTally]) -> Value {
        let mut aggregate = Aggregate::new();
        for pod in pods {
            absorb(&mut aggregate, &parsed(pod));
        }
        report_object(kind, "team-a", names::REQUESTS_REPORT, aggregate)
    }

    use policybind_crds::summary;

    #[test]
    fn a_report_has_one_result_per_policy_rule_and_result_with_counts_and_examples() {
        let pod_a = DecisionTally::new(DateTime::UNIX_EPOCH);
        let pod_b = DecisionTally::new(DateTime::UNIX_EPOCH);
        for i in 0..5 {
            pod_a.record(
                key("team-a/p", "no-pii", ReportResult::Fail),
                example(i, "DENY_PII"),
            );
        }
        pod_b.record(
            key("team-a/p", "no-pii", ReportResult::Fail),
            example(10, "DENY_PII"),
        );
        pod_b.record(
            key("team-a/p", "allow", ReportResult::Pass),
            example(11, "POLICY_ALLOW"),
        );
        let report = requests_report(ReportKind::OpenReports, &[&pod_a, &pod_b]);
        assert_eq!(report["apiVersion"], "openreports.io/v1alpha1");
        assert_eq!(report["kind"], "Report");
        assert_eq!(report["source"], "policybind");
        assert_eq!(
            report["summary"],
            json!({"pass": 1, "fail": 6, "warn": 0, "error": 0, "skip": 0})
        );
        let results = report["results"].as_array().unwrap();
        assert_eq!(results.len(), 2);
        let fail = &results[1];
        assert_eq!(fail["policy"], "team-a/p");
        assert_eq!(fail["rule"], "no-pii");
        assert_eq!(fail["result"], "fail");
        assert_eq!(fail["scored"], true);
        assert_eq!(fail["properties"]["count"], "6");
        assert_eq!(fail["properties"]["codes"], "DENY_PII=6");
        assert_eq!(fail["timestamp"]["seconds"], 1_800_000_010);
        let first = fail["properties"]["example.1"].as_str().unwrap();
        assert!(
            first.starts_with("2027-01-15T08:00:10Z DENY_PII model=gpt-4o subject="),
            "{first}"
        );
        assert_eq!(fail["message"], "6 requests refused");
        // wgpolicyk8s: same results, no report-level source.
        let wg = requests_report(ReportKind::WgPolicy, &[&pod_a]);
        assert_eq!(wg["apiVersion"], "wgpolicyk8s.io/v1alpha2");
        assert_eq!(wg["kind"], "PolicyReport");
        assert!(wg.get("source").is_none());
    }

    #[test]
    fn reports_are_deterministic_so_an_unchanged_namespace_writes_nothing() {
        let tally = DecisionTally::new(DateTime::UNIX_EPOCH);
        for i in 0..50 {
            tally.record(
                key("p", &format!("r{}", i % 7), ReportResult::Warn),
                example(i, "REDACTED"),
            );
        }
        let build = || requests_report(ReportKind::OpenReports, &[&tally]).to_string();
        assert_eq!(build(), build());
    }

    #[test]
    fn a_report_keeps_the_busiest_results_and_folds_the_rest_into_overflow() {
        let mut aggregate = Aggregate::new();
        for i in 0..300u64 {
            let counts = Counts {
                count: i + 1,
                ..Default::default()
            };
            aggregate.insert(
                ("p".into(), format!("rule-{i:03}"), ReportResult::Fail),
                counts,
            );
        }
        let total: u64 = aggregate.values().map(|c| c.count).sum();
        let kept = bounded(aggregate);
        assert!(kept.len() <= MAX_RESULTS);
        assert_eq!(kept.values().map(|c| c.count).sum::<u64>(), total);
        assert!(kept.contains_key(&("p".into(), "rule-299".into(), ReportResult::Fail)));
        assert!(!kept.contains_key(&("p".into(), "rule-000".into(), ReportResult::Fail)));
        assert!(kept.contains_key(&(OVERFLOW_POLICY.into(), String::new(), ReportResult::Fail)));
    }

    /// Largest report with every bound reached: [`MAX_RESULTS`] results, each
    /// with the longest names, the most codes and examples.
    const MAX_REPORT_BYTES: usize = 256 * 1024;

    #[test]
    fn a_report_of_100000_decisions_stays_within_its_size_bound() {
        // Four pods, 100,000 decisions over far more keys than a report holds,
        // every name at its longest.
        let long = |c: char, n: usize| c.to_string().repeat(n);
        let pods: Vec<DecisionTally> = (0..4)
            .map(|_| DecisionTally::new(DateTime::UNIX_EPOCH))
            .collect();
        for i in 0..100_000i64 {
            let policy = format!("{}{}", long('p', MAX_NAME - 4), i % 37);
            let rule = format!("{}{}", long('r', MAX_NAME - 4), i % 11);
            let result = ReportResult::ALL[(i % 4) as usize];
            let mut ex = example(i, &format!("{}{}", long('C', MAX_CODE - 3), i % 9));
            ex.model = Some(long('m', MAX_MODEL));
            ex.object = Some(long('o', MAX_NAME));
            pods[(i % 4) as usize].record(key(&policy, &rule, result), ex);
        }
        let report = requests_report(ReportKind::OpenReports, &pods.iter().collect::<Vec<_>>());
        let size = report.to_string().len();
        let total: u64 = report["summary"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(total, 100_000, "every decision is counted somewhere");
        assert!(report["results"].as_array().unwrap().len() <= MAX_RESULTS);
        eprintln!("worst-case report after 100,000 decisions: {size} bytes");
        assert!(size <= MAX_REPORT_BYTES, "{size} bytes");
    }

    #[test]
    fn a_typical_namespace_report_is_small_whatever_the_rate() {
        // 1,000 decisions/s for six minutes over 10 policies x 3 rules x 3 results.
        let tally = DecisionTally::new(DateTime::UNIX_EPOCH);
        for i in 0..360_000i64 {
            let k = key(
                &format!("team-a/policy-{}", i % 10),
                &format!("rule-{}", i % 3),
                ReportResult::ALL[(i % 3) as usize],
            );
            let mut ex = example(
                i / 1000,
                ["POLICY_ALLOW", "DENY_PII", "REDACTED"][(i % 3) as usize],
            );
            ex.subject = Some(summary::subject_hash(&format!("user-{}", i % 50)));
            tally.record(k, ex);
        }
        let report = requests_report(ReportKind::OpenReports, &[&tally]);
        let size = report.to_string().len();
        eprintln!(
            "typical report after 360,000 decisions: {size} bytes, {} results",
            report["results"].as_array().unwrap().len()
        );
        assert!(size < 64 * 1024, "{size} bytes");
    }

    proptest! {
        #[test]
        fn aggregate_counts_equal_the_sum_of_per_pod_counts(
            decisions in proptest::collection::vec((0usize..4, 0u8..6, 0u8..3, 0usize..4), 0..400)
        ) {
            let pods: Vec<DecisionTally> = (0..4).map(|_| DecisionTally::new(DateTime::UNIX_EPOCH)).collect();
            let mut expected: BTreeMap<(String, String, ReportResult), u64> = BTreeMap::new();
            for (i, (pod, rule, policy, result)) in decisions.iter().enumerate() {
                let k = key(&format!("p{policy}"), &format!("r{rule}"), ReportResult::ALL[*result]);
                pods[*pod].record(k.clone(), example(i as i64, "C"));
                *expected.entry((k.policy, k.rule, k.result)).or_default() += 1;
            }
            let mut aggregate = Aggregate::new();
            for pod in &pods {
                absorb(&mut aggregate, &parsed(pod));
            }
            let got: BTreeMap<_, u64> = aggregate.iter().map(|(k, c)| (k.clone(), c.count)).collect();
            prop_assert_eq!(got, expected);
            for counts in aggregate.values() {
                prop_assert!(counts.examples.len() <= summary::MAX_EXAMPLES);
                prop_assert!(counts.examples.windows(2).all(|w| w[0].time >= w[1].time));
            }
        }
    }

    #[test]
    fn a_forged_or_foreign_usage_report_counts_for_nothing() {
        let tally = DecisionTally::new(DateTime::UNIX_EPOCH);
        tally.record(key("p", "r", ReportResult::Fail), example(0, "DENY"));
        let json = serde_json::to_string(&tally.snapshot()).unwrap();
        let cm = |ns: &str, name: &str, pod: &str| {
            let mut cm = ConfigMap::default();
            cm.metadata.namespace = Some(ns.into());
            cm.metadata.name = Some(name.into());
            cm.metadata.labels = Some(BTreeMap::from([(
                labels::WRITER_POD.to_string(),
                pod.to_string(),
            )]));
            cm.data = Some(BTreeMap::from([(
                keys::DECISIONS.to_string(),
                json.clone(),
            )]));
            Arc::new(cm)
        };
        let maps = vec![
            cm("team-a", "policybind-usage-bot-1", "bot-1"),
            // Named after another pod than its label says.
            cm("team-a", "policybind-usage-victim", "bot-1"),
            // From a namespace that is not enforced.
            cm("team-b", "policybind-usage-bot-2", "bot-2"),
        ];
        let out = request_summaries(&maps, &mut |ns: &str| ns == "team-a");
        assert_eq!(out.len(), 1);
        assert_eq!(out["team-a"].values().map(|c| c.count).sum::<u64>(), 1);
    }
}
