//! Usage reports: how this sidecar tells the operator what each token spent
//! (operator side: `policybind_operator::usage`, docs/operator.md).
//!
//! In cluster mode every pod keeps one ConfigMap, `policybind-usage-<pod>`
//! ([`wire::usage_report_name`]), labelled [`labels::USAGE`]`=true` and
//! [`labels::WRITER_POD`]`=<pod>`, whose [`keys::USAGE`] holds the ledger's
//! settled usage as JSON: token id to a list of `PeriodUsage` (the entry type of
//! `AccessToken.status.usage`). The operator sums every pod's report into the
//! token's status and marks the token exhausted in the bundles, which is how a
//! budget holds across pods and replicas.
//!
//! The pod label is what the chart's ValidatingAdmissionPolicy checks: a service
//! account may write a report only with the name of the pod its token is bound
//! to, so a workload cannot forge or overwrite another pod's report. The
//! operator, in turn, counts a report only under the name its pod label gives,
//! from an enforced namespace, and only for tokens valid in that namespace.
//!
//! The report is written by server-side apply every interval and once at
//! shutdown, only when its content changed. It has no owner reference to the
//! pod on purpose: a pod's report must outlive the pod, or a token's budget
//! would reset each time a pod goes away. Failures are logged and retried at the
//! next tick; the request path never waits for a report.
//!
//! A restarted container keeps its pod name and therefore its report: before the
//! first write the reporter reads the report back into the ledger
//! ([`UsageLedger::restore`]), so a restart does not wipe what was spent.

use policybind_crds::wire::{self, annotations, field_managers, keys, labels};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams};
use policybind_crds::access_token::PeriodUsage;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::accounting::{Amount, SettledUsage, UsageLedger};
use crate::source::PolicyHolder;
use policybind_crds::summary::{DecisionSummary, DecisionTally};

/// Longest a single report call may take, so shutdown is never held up long.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how often the report is written.
#[derive(Debug, Clone)]
pub struct UsageReportSettings {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod, written as [`labels::WRITER_POD`]; the report is named
    /// after it ([`wire::usage_report_name`]).
    pub pod: String,
    /// Time between two snapshots.
    pub interval: Duration,
    /// PolicyBind's own namespace, where the operator keeps this namespace's
    /// budget ledger: when set, budgets are shared with the other replicas
    /// through leases ([`crate::lease`]) and the report is written at most
    /// every second (only when it changed) to carry this pod's demands.
    pub ledger_home: Option<String>,
}

/// The report as the operator reads it: token id to usage per period, periods
/// in `Day`, `Week`, `Month` order. Deterministic for equal snapshots (tokens
/// sorted), so an unchanged ledger gives byte-identical JSON and no write.
pub fn report(snapshot: &[SettledUsage]) -> BTreeMap<String, Vec<PeriodUsage>> {
    let mut report: BTreeMap<String, Vec<PeriodUsage>> = BTreeMap::new();
    for entry in snapshot {
        report
            .entry(entry.token.clone())
            .or_default()
            .push(PeriodUsage::settled(
                entry.period,
                entry.period_start,
                entry.settled.cost_usd,
                entry.settled.tokens,
                entry.requests,
            ));
    }
    for entries in report.values_mut() {
        entries.sort_by_key(|e| (e.period, e.period_start));
    }
    report
}

/// The ledger entries of a report read back (the inverse of [`report`]).
pub fn snapshot(report: BTreeMap<String, Vec<PeriodUsage>>) -> Vec<SettledUsage> {
    report
        .into_iter()
        .flat_map(|(token, entries)| {
            entries.into_iter().map(move |e| SettledUsage {
                token: token.clone(),
                period: e.period,
                period_start: e.period_start,
                settled: Amount {
                    cost_usd: e.cost_usd,
                    tokens: e.tokens,
                },
                requests: e.requests,
            })
        })
        .collect()
}

/// The ConfigMap to apply for the report of `pod`.
///
/// `bundle` is the fingerprint of the bundle in force, written as the
/// [`annotations::FINGERPRINT`] annotation so `policybind check` can tell which
/// sidecars run the namespace's current bundle. It is informational only: the
/// operator never trusts it (the workload can write the report too).
pub fn report_config_map(
    namespace: &str,
    pod: &str,
    json: String,
    bundle: Option<&str>,
) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(wire::usage_report_name(pod)),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                (labels::USAGE.into(), "true".into()),
                (labels::WRITER_POD.into(), pod.into()),
            ])),
            annotations: bundle.map(|fingerprint| {
                BTreeMap::from([(annotations::FINGERPRINT.into(), fingerprint.into())])
            }),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(keys::USAGE.into(), json)])),
        ..Default::default()
    }
}

/// What one [`UsageReporter::report_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// The report was applied.
    Written,
    /// The snapshot equals what was last written; no call was made.
    Unchanged,
}

/// Why a report was not written. Logged, retried at the next tick.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("reading the previous report: {0}")]
    Restore(#[source] kube::Error),
    #[error("applying the report: {0}")]
    Apply(#[source] kube::Error),
    #[error("the API server did not answer within {CALL_TIMEOUT:?}")]
    Timeout,
}

/// Writes one pod's usage report from a ledger.
pub struct UsageReporter {
    api: Api<ConfigMap>,
    namespace: String,
    pod: String,
    name: String,
    ledger: Arc<dyn UsageLedger>,
    /// Whether the previous report has been read back into the ledger; nothing
    /// is written before, or a restart would overwrite it.
    restored: bool,
    /// JSON of the last report applied.
    last_written: Option<String>,
    /// Where the fingerprint of the bundle in force is read, if anywhere.
    bundle: Option<Arc<PolicyHolder>>,
    /// Bundle fingerprint in the last report applied.
    last_bundle: Option<String>,
    /// With budget leases: the demands written beside the usage.
    leases: Option<Arc<crate::lease::LeasedLedger>>,
    /// The pod's decision summary ([`keys::DECISIONS`]), when published.
    decisions: Option<Arc<DecisionTally>>,
    /// Summary JSON in the last report applied.
    last_decisions: Option<String>,
    /// When the report was last applied: a change of the decision summary
    /// alone is written at most once per [`UsageReportSettings::interval`],
    /// even when leasing ticks every second.
    last_write: Option<tokio::time::Instant>,
    /// See [`UsageReportSettings::interval`].
    interval: Duration,
}

impl UsageReporter {
    pub fn new(
        client: kube::Client,
        settings: &UsageReportSettings,
        ledger: Arc<dyn UsageLedger>,
    ) -> Self {
        UsageReporter {
            api: Api::namespaced(client, &settings.namespace),
            namespace: settings.namespace.clone(),
            pod: settings.pod.clone(),
            name: wire::usage_report_name(&settings.pod),
            ledger,
            restored: false,
            last_written: None,
            bundle: None,
            last_bundle: None,
            leases: None,
            decisions: None,
            last_decisions: None,
            last_write: None,
            interval: settings.interval,
        }
    }

    /// Also publishes the pod's decision summary ([`crate::decisions`]), read
    /// back from the previous report at the first write like the usage.
    pub fn with_decisions(mut self, tally: Arc<DecisionTally>) -> Self {
        self.decisions = Some(tally);
        self
    }

    /// The summary JSON to write now, `None` when it should not be written
    /// (no tally, or unchanged).
    fn decisions_due(&self) -> Option<String> {
        let tally = self.decisions.as_ref()?;
        let json = serde_json::to_string(&tally.snapshot()).expect("a summary always serializes");
        (self.last_decisions.as_deref() != Some(json.as_str())).then_some(json)
    }

    /// Also report the fingerprint of the bundle `holder` has in force; a new
    /// bundle is reported at the next tick even when usage did not change.
    pub fn with_bundle(mut self, holder: Arc<PolicyHolder>) -> Self {
        self.bundle = Some(holder);
        self
    }

    /// Also writes `leases`' demands ([`keys::LEASE_DEMAND`]) in the report and
    /// tells it when the previous report has been restored.
    pub fn with_leases(mut self, leases: Arc<crate::lease::LeasedLedger>) -> Self {
        self.leases = Some(leases);
        self
    }

    /// The report's data: the usage, and the lease demands when leasing.
    fn contents(&self) -> (String, Option<String>) {
        let usage = serde_json::to_string(&report(&self.ledger.settled_usage()))
            .expect("a usage report always serializes");
        let demands = self
            .leases
            .as_ref()
            .map(|l| serde_json::to_string(&l.demands()).expect("lease demands always serialize"));
        (usage, demands)
    }

    /// Restores the previous report once, then applies the ledger's snapshot if
    /// it differs from the last one applied.
    pub async fn report_once(&mut self) -> Result<Reported, ReportError> {
        if !self.restored {
            self.restore().await?;
        }
        let (json, demands) = self.contents();
        let written = format!("{json}\n{}", demands.as_deref().unwrap_or(""));
        let bundle = self
            .bundle
            .as_ref()
            .and_then(|holder| holder.current())
            .map(|loaded| loaded.set.fingerprint().to_string());
        let decisions = self.decisions_due();
        let usage_unchanged =
            self.last_written.as_deref() == Some(written.as_str()) && self.last_bundle == bundle;
        let decisions_wait = self
            .last_write
            .is_some_and(|at| at.elapsed() < self.interval);
        if usage_unchanged && (decisions.is_none() || decisions_wait) {
            return Ok(Reported::Unchanged);
        }
        let mut config_map = report_config_map(&self.namespace, &self.pod, json, bundle.as_deref());
        if let Some(data) = config_map.data.as_mut() {
            if let Some(demands) = demands {
                data.insert(keys::LEASE_DEMAND.into(), demands);
            }
            // Server-side apply drops a key this manager no longer sends:
            // always send the summary, the last one when it is not due.
            if let Some(summary) = decisions.as_ref().or(self.last_decisions.as_ref()) {
                data.insert(keys::DECISIONS.into(), summary.clone());
            }
        }
        let params = PatchParams::apply(field_managers::SIDECAR).force();
        tokio::time::timeout(
            CALL_TIMEOUT,
            self.api
                .patch(&self.name, &params, &Patch::Apply(&config_map)),
        )
        .await
        .map_err(|_| ReportError::Timeout)?
        .map_err(ReportError::Apply)?;
        self.last_written = Some(written);
        self.last_bundle = bundle;
        self.last_write = Some(tokio::time::Instant::now());
        if decisions.is_some() {
            self.last_decisions = decisions;
        }
        Ok(Reported::Written)
    }

    async fn restore(&mut self) -> Result<(), ReportError> {
        let previous = tokio::time::timeout(CALL_TIMEOUT, self.api.get_opt(&self.name))
            .await
            .map_err(|_| ReportError::Timeout)?
            .map_err(ReportError::Restore)?;
        if let Some(tally) = &self.decisions {
            restore_decisions(tally, previous.as_ref(), &self.name);
        }
        let json = previous
            .as_ref()
            .and_then(|cm| cm.data.as_ref())
            .and_then(|data| data.get(keys::USAGE));
        if let Some(json) = json {
            match serde_json::from_str::<BTreeMap<String, Vec<PeriodUsage>>>(json) {
                Ok(previous) => {
                    // What is in the cluster now, in our own serialization: a
                    // restart with nothing new to report writes nothing.
                    let entries = snapshot(previous);
                    self.last_written = serde_json::to_string(&report(&entries))
                        .ok()
                        .map(|json| format!("{json}\n"));
                    self.ledger.restore(&entries);
                }
                Err(error) => warn!(
                    configmap = %self.name,
                    %error,
                    "previous usage report is malformed; it will be overwritten"
                ),
            }
        }
        self.restored = true;
        if let Some(leases) = &self.leases {
            leases.report_restored();
        }
        Ok(())
    }

    /// Reports every `interval` until `stop` is cancelled, then once more.
    /// Cancel `stop` after the servers have drained, so the final report holds
    /// the requests that finished during shutdown.
    pub async fn run(mut self, interval: Duration, stop: CancellationToken) {
        let mut rounds = crate::rounds::Rounds::new(interval, stop);
        while rounds.next().await {
            let result = self.report_once().await;
            self.log(result);
        }
    }

    fn log(&self, result: Result<Reported, ReportError>) {
        match result {
            Ok(Reported::Written) => debug!(configmap = %self.name, "usage report written"),
            Ok(Reported::Unchanged) => {}
            Err(error) => warn!(
                configmap = %self.name,
                namespace = %self.namespace,
                %error,
                "usage report not written; retrying at the next tick"
            ),
        }
    }
}

/// Adds the decision summary of the pod's previous report (a restarted
/// container) to `tally`, so its counts go on rather than start over. A
/// summary that does not read is overwritten (and said so).
fn restore_decisions(tally: &DecisionTally, previous: Option<&ConfigMap>, name: &str) {
    let Some(json) = previous
        .and_then(|cm| cm.data.as_ref())
        .and_then(|data| data.get(keys::DECISIONS))
    else {
        return;
    };
    match DecisionSummary::parse(json) {
        Ok(parsed) => tally.restore(parsed),
        Err(error) => warn!(
            configmap = %name,
            %error,
            "previous decision summary is unreadable; counting starts over"
        ),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeZone, Utc};
    use policybind_crds::BudgetPeriod;
    use policybind_engine::compile::CompiledBudget;

    use super::*;
    use crate::accounting::{InProcessLedger, TokenLimits};

    fn day(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, 0, 0, 0).unwrap()
    }

    fn settled(token: &str, period: BudgetPeriod, start: DateTime<Utc>, cost: f64) -> SettledUsage {
        SettledUsage {
            token: token.into(),
            period,
            period_start: start,
            settled: Amount {
                cost_usd: cost,
                tokens: 100,
            },
            requests: 2,
        }
    }

    #[test]
    fn snapshot_becomes_the_documented_report_json_sorted_by_token_and_period() {
        let snapshot = [
            settled("team-b/bot", BudgetPeriod::Day, day(22), 0.5),
            settled("team-a/bot", BudgetPeriod::Month, day(1), 3.0),
            settled("team-a/bot", BudgetPeriod::Day, day(22), 1.25),
        ];
        let json = serde_json::to_string(&report(&snapshot)).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"team-a/bot":["#,
                r#"{"period":"Day","periodStart":"2026-11-22T00:00:00Z","costUsd":1.25,"tokens":100,"requests":2},"#,
                r#"{"period":"Month","periodStart":"2026-11-01T00:00:00Z","costUsd":3.0,"tokens":100,"requests":2}],"#,
                r#""team-b/bot":[{"period":"Day","periodStart":"2026-11-22T00:00:00Z","costUsd":0.5,"tokens":100,"requests":2}]}"#
            )
        );
    }

    #[test]
    fn report_read_back_gives_the_same_snapshot() {
        let snapshot = vec![
            settled("team-a/bot", BudgetPeriod::Day, day(22), 1.25),
            settled("team-a/bot", BudgetPeriod::Week, day(16), 2.5),
        ];
        assert_eq!(super::snapshot(report(&snapshot)), snapshot);
    }

    #[test]
    fn ledger_snapshot_reports_settled_usage_and_requests_not_reservations() {
        let ledger = InProcessLedger::new();
        let budgets = [CompiledBudget {
            period: BudgetPeriod::Day,
            max_cost_usd: Some(10.0),
            max_tokens: None,
            tz: chrono_tz::UTC,
            rolling: false,
        }];
        let limits = TokenLimits {
            rate: None,
            budgets: &budgets,
        };
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 15, 0, 0).unwrap();
        let amount = |cost_usd, tokens| Amount { cost_usd, tokens };
        let done = ledger
            .reserve("team-a/bot", limits, amount(1.0, 500), now)
            .unwrap();
        ledger.settle(done, amount(0.25, 40), now);
        let failed = ledger
            .reserve("team-a/bot", limits, amount(1.0, 500), now)
            .unwrap();
        ledger.release(failed, now);
        let _in_flight = ledger
            .reserve("team-a/bot", limits, amount(1.0, 500), now)
            .unwrap();
        // Asked about but never charged: nothing to report.
        ledger.usage("team-a/idle", &budgets, now);

        let report = report(&ledger.settled_usage());
        assert_eq!(
            report,
            BTreeMap::from([(
                "team-a/bot".to_string(),
                vec![PeriodUsage::settled(
                    BudgetPeriod::Day,
                    day(22),
                    0.25,
                    40,
                    1
                )]
            )])
        );
    }

    #[test]
    fn restored_usage_adds_to_what_this_run_settled_in_the_same_period() {
        let ledger = InProcessLedger::new();
        let budgets = [CompiledBudget {
            period: BudgetPeriod::Day,
            max_cost_usd: Some(1.0),
            max_tokens: None,
            tz: chrono_tz::UTC,
            rolling: false,
        }];
        let limits = TokenLimits {
            rate: None,
            budgets: &budgets,
        };
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 15, 0, 0).unwrap();
        let amount = |cost_usd, tokens| Amount { cost_usd, tokens };
        let id = ledger
            .reserve("team-a/bot", limits, amount(0.1, 10), now)
            .unwrap();
        ledger.settle(id, amount(0.1, 10), now);
        ledger.restore(&[
            settled("team-a/bot", BudgetPeriod::Day, day(22), 0.8),
            // Of yesterday: this run already counts today.
            settled("team-a/bot", BudgetPeriod::Day, day(21), 50.0),
        ]);
        let usage = ledger.settled_usage();
        assert_eq!(usage.len(), 1);
        assert!((usage[0].settled.cost_usd - 0.9).abs() < 1e-12);
        assert_eq!(usage[0].requests, 3);
        // The restored spend counts against the budget.
        assert!(
            ledger
                .reserve("team-a/bot", limits, amount(0.2, 1), now)
                .is_err()
        );
    }

    #[test]
    fn report_is_what_the_operator_reads() {
        let snapshot = [settled("team-a/bot", BudgetPeriod::Day, day(22), 1.25)];
        let json = serde_json::to_string(&report(&snapshot)).unwrap();
        let config_map = report_config_map("team-a", "pod-1", json, None);
        assert_eq!(
            config_map.metadata.name.as_deref(),
            Some("policybind-usage-pod-1")
        );
        let labels_of = config_map.metadata.labels.as_ref().unwrap();
        assert_eq!(labels_of[labels::USAGE], "true");
        // What the admission policy compares with the writer's pod.
        assert_eq!(labels_of[labels::WRITER_POD], "pod-1");
        let parsed = policybind_operator::usage::UsageReport::from_config_map(&config_map)
            .expect("the operator parses the report");
        assert_eq!(parsed.0, report(&snapshot));
    }

    /// A restarted container's reporter: reads the pod's previous report, adds
    /// its decision summary to what was counted since, and writes the sum.
    #[tokio::test]
    async fn a_restarted_reporter_keeps_counting_the_pods_decisions() {
        use http::{Request, Response};
        use kube::client::Body;
        use policybind_crds::summary::{Example, ReportResult, SummaryKey};

        let (service, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "team-a");
        let settings = UsageReportSettings {
            namespace: "team-a".into(),
            pod: "bot-1".into(),
            interval: Duration::from_secs(10),
            ledger_home: None,
        };
        let key = SummaryKey::local("team-a/guard", "no-pii", ReportResult::Fail);
        let example = |s: i64| Example {
            time: Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap(),
            code: "DENY_PII".into(),
            model: None,
            subject: None,
            object: None,
        };
        let before = DecisionTally::new(Utc.timestamp_opt(1_700_000_000, 0).unwrap());
        for s in 0..5 {
            before.record(key.clone(), example(s));
        }
        let previous = serde_json::to_string(&before.snapshot()).unwrap();
        let tally = Arc::new(DecisionTally::new(Utc::now()));
        tally.record(key.clone(), example(9));
        let ledger: Arc<dyn UsageLedger> = Arc::new(InProcessLedger::new());
        let mut reporter =
            UsageReporter::new(client, &settings, ledger).with_decisions(tally.clone());
        let report = tokio::spawn(async move { reporter.report_once().await.map(|_| ()) });

        let path = "/api/v1/namespaces/team-a/configmaps/policybind-usage-bot-1";
        let (request, send) = api.next_request().await.unwrap();
        assert_eq!(
            (request.method().as_str(), request.uri().path()),
            ("GET", path)
        );
        let cm = report_config_map("team-a", "bot-1", "{}".into(), None);
        let mut cm = serde_json::to_value(cm).unwrap();
        cm["data"][keys::DECISIONS] = previous.into();
        send.send_response(Response::new(Body::from(serde_json::to_vec(&cm).unwrap())));

        let (request, send) = api.next_request().await.unwrap();
        assert_eq!(
            (request.method().as_str(), request.uri().path()),
            ("PATCH", path)
        );
        let body: serde_json::Value =
            serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        let written: DecisionSummary =
            serde_json::from_str(body["data"][keys::DECISIONS].as_str().unwrap()).unwrap();
        assert_eq!(written.entries[0].count, 6, "5 before the restart, 1 since");
        assert_eq!(written.since, Utc.timestamp_opt(1_700_000_000, 0).unwrap());
        send.send_response(Response::new(Body::from(
            serde_json::to_vec(&body).unwrap(),
        )));
        report.await.unwrap().unwrap();
    }
}
