//! Incidents: violation patterns found in the decisions of the audit trail.
//!
//! The operator reads decision records from the audit segment ConfigMaps
//! (label `policybind.io/audit-segment`, data key `segment.json`, format in
//! `docs/audit.md`) and runs [`detect`], a pure function over a window of
//! records:
//!
//! - `RepeatedDenials`: at least `denials` (default 10) denied requests of one
//!   subject within `window` (default 10 minutes). Severity Medium.
//! - `SensitiveDataToRestrictedToken`: any PII finding (codes `PII_DETECTED` or
//!   `PII_REDACTED`) on a request made with a token whose
//!   `maxDataClassification` is Restricted. Severity High.
//! - `BudgetExhausted`: requests refused with `BUDGET_EXCEEDED`. Severity Low.
//!
//! One open incident per pattern and subject (labels `policybind.io/pattern` and
//! `policybind.io/subject-hash`): a recurrence updates its occurrence count and
//! last-seen time instead of raising another, so a noisy subject makes one
//! incident, not a storm. After an incident is Resolved, only records newer than
//! its last occurrence can raise a new one.

use policybind_crds::wire::labels;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, Patch};
use policybind_crds::incident::{IncidentState, Severity};
use policybind_crds::{
    API_VERSION, AccessToken, DataClassification, Effect, Incident, IncidentSpec, IncidentStatus,
};
use policybind_engine::audit::{AuditEvent, AuditRecord, RecordKind, Segment};
use serde_json::json;
use sha2::{Digest, Sha256};

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, Event};
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::controllers::{Tasks, Wiring};
use crate::error::Result;
use crate::stores::{drive, labelled, touched, watch};

/// Data key of a segment in an audit ConfigMap.
pub const SEGMENT_DATA_KEY: &str = "segment.json";

/// Pattern names.
pub mod patterns {
    pub const REPEATED_DENIALS: &str = "RepeatedDenials";
    pub const SENSITIVE_DATA_TO_RESTRICTED_TOKEN: &str = "SensitiveDataToRestrictedToken";
    pub const BUDGET_EXHAUSTED: &str = "BudgetExhausted";
}

/// Thresholds of the patterns.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentSettings {
    /// Denials of one subject within `window` that raise `RepeatedDenials`.
    pub denials: usize,
    /// Sliding window for `RepeatedDenials`, and how far back records are read.
    pub window: Duration,
    /// Raise `SensitiveDataToRestrictedToken`.
    pub pii_on_restricted_tokens: bool,
    /// Raise `BudgetExhausted`.
    pub budget_exhausted: bool,
}

impl Default for IncidentSettings {
    fn default() -> Self {
        IncidentSettings {
            denials: 10,
            window: Duration::from_secs(600),
            pii_on_restricted_tokens: true,
            budget_exhausted: true,
        }
    }
}

/// One pattern seen for one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub pattern: &'static str,
    pub subject: String,
    /// Namespace the incident goes to: the token's, else the record's.
    pub namespace: String,
    pub severity: Severity,
    pub occurrences: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// `writer:seq` of the first 50 records that show it.
    pub records: Vec<String>,
}

fn record_id(r: &AuditRecord) -> String {
    format!("{}:{}", r.writer, r.seq)
}

fn namespace_of(r: &AuditRecord) -> String {
    r.token_id
        .as_deref()
        .and_then(|t| t.split_once('/'))
        .map(|(ns, _)| ns.to_string())
        .or_else(|| r.namespace.clone())
        .unwrap_or_else(|| "default".into())
}

/// Finds the patterns in `records` (any order) as of `now`. `restricted_tokens`
/// holds the ids (`namespace/name`) of tokens allowed Restricted data.
pub fn detect(
    records: &[&AuditRecord],
    restricted_tokens: &std::collections::HashSet<String>,
    settings: &IncidentSettings,
    now: DateTime<Utc>,
) -> Vec<Finding> {
    let window = chrono::Duration::from_std(settings.window).unwrap_or(chrono::Duration::MAX);
    let mut decisions: Vec<&AuditRecord> = records
        .iter()
        .copied()
        .filter(|r| r.kind == RecordKind::Decision && r.subject.is_some())
        .filter(|r| r.time.get() > now - window && r.time.get() <= now)
        .collect();
    decisions
        .sort_by(|a, b| (a.time.get(), &a.writer, a.seq).cmp(&(b.time.get(), &b.writer, b.seq)));

    let mut groups: BTreeMap<(&'static str, String), Vec<&AuditRecord>> = BTreeMap::new();
    for r in &decisions {
        let subject = r.subject.clone().unwrap_or_default();
        if r.effect == Some(Effect::Deny) {
            groups
                .entry((patterns::REPEATED_DENIALS, subject.clone()))
                .or_default()
                .push(r);
        }
        let pii = r.codes.iter().any(|c| {
            c == policybind_engine::codes::PII_DETECTED
                || c == policybind_engine::codes::PII_REDACTED
        });
        if settings.pii_on_restricted_tokens
            && pii
            && r.token_id
                .as_ref()
                .is_some_and(|t| restricted_tokens.contains(t))
        {
            groups
                .entry((
                    patterns::SENSITIVE_DATA_TO_RESTRICTED_TOKEN,
                    subject.clone(),
                ))
                .or_default()
                .push(r);
        }
        if settings.budget_exhausted
            && r.codes
                .iter()
                .any(|c| c == policybind_engine::codes::BUDGET_EXCEEDED)
        {
            groups
                .entry((patterns::BUDGET_EXHAUSTED, subject))
                .or_default()
                .push(r);
        }
    }

    groups
        .into_iter()
        .filter_map(|((pattern, subject), hits)| {
            let (severity, threshold) = match pattern {
                patterns::REPEATED_DENIALS => (Severity::Medium, settings.denials.max(1)),
                patterns::SENSITIVE_DATA_TO_RESTRICTED_TOKEN => (Severity::High, 1),
                _ => (Severity::Low, 1),
            };
            if hits.len() < threshold {
                return None;
            }
            Some(Finding {
                pattern,
                namespace: namespace_of(hits[0]),
                subject,
                severity,
                occurrences: hits.len() as u64,
                first_seen: hits[0].time.get(),
                last_seen: hits[hits.len() - 1].time.get(),
                records: hits.iter().take(50).map(|r| record_id(r)).collect(),
            })
        })
        .collect()
}

/// Short, label-safe hash of a subject.
pub fn subject_hash(subject: &str) -> String {
    hex::encode(Sha256::digest(subject.as_bytes()))[..16].to_string()
}

fn kebab(pattern: &str) -> String {
    let mut out = String::new();
    for (i, c) in pattern.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// What to do about one finding, given the incidents that exist.
#[derive(Debug, Clone, PartialEq)]
pub enum IncidentAction {
    /// Nothing new.
    None,
    /// Raise a new incident.
    Create(Box<Incident>),
    /// Update the status of the open one.
    Update {
        name: String,
        status: IncidentStatus,
    },
}

/// Decides what a finding means for the incidents of its pattern and subject.
pub fn plan_incident<'a>(
    finding: &Finding,
    existing: impl IntoIterator<Item = &'a Incident>,
) -> IncidentAction {
    let hash = subject_hash(&finding.subject);
    let same: Vec<&Incident> = existing
        .into_iter()
        .filter(|i| {
            i.metadata.namespace.as_deref() == Some(finding.namespace.as_str())
                && i.spec.pattern == finding.pattern
                && i.spec.subject == finding.subject
        })
        .collect();
    if let Some(open) = same.iter().find(|i| i.spec.state.is_open()) {
        let old = open.status.clone().unwrap_or_default();
        let status = IncidentStatus {
            observed_generation: open.metadata.generation,
            conditions: old.conditions.clone(),
            // The window slides; an incident's count never goes down.
            occurrences: old.occurrences.max(finding.occurrences),
            first_seen_at: old.first_seen_at.or(Some(finding.first_seen)),
            last_seen_at: Some(
                old.last_seen_at
                    .map_or(finding.last_seen, |t| t.max(finding.last_seen)),
            ),
        };
        return if open.status.as_ref() == Some(&status) {
            IncidentAction::None
        } else {
            IncidentAction::Update {
                name: open.name_any(),
                status,
            }
        };
    }
    let resolved_until = same
        .iter()
        .filter_map(|i| i.status.as_ref().and_then(|s| s.last_seen_at))
        .max();
    if resolved_until.is_some_and(|t| finding.last_seen <= t) {
        return IncidentAction::None;
    }
    // The name must be the same in every scan until the watch shows the new
    // incident (a repeated apply is then harmless), and must differ from a
    // resolved incident of the same pattern and subject (which must stay resolved).
    let since = match resolved_until {
        Some(t) => finding.first_seen.max(t + chrono::Duration::seconds(1)),
        None => finding.first_seen,
    };
    let name = format!(
        "{}-{}-{}",
        kebab(finding.pattern),
        &hash[..8],
        since.timestamp()
    );
    let mut incident = Incident::new(
        &name,
        IncidentSpec {
            pattern: finding.pattern.to_string(),
            subject: finding.subject.clone(),
            severity: finding.severity,
            state: IncidentState::Open,
            summary: format!(
                "{} for {}: {} occurrence(s) between {} and {}",
                finding.pattern,
                finding.subject,
                finding.occurrences,
                finding.first_seen.to_rfc3339(),
                finding.last_seen.to_rfc3339()
            ),
            assignee: None,
            audit_records: finding.records.clone(),
            model: None,
            harm: None,
            root_cause: None,
            remediation: None,
            timeline: Vec::new(),
            authority_notification: None,
        },
    );
    incident.metadata.namespace = Some(finding.namespace.clone());
    incident.metadata.labels = Some(BTreeMap::from([
        (
            labels::INCIDENT_PATTERN.to_string(),
            finding.pattern.to_string(),
        ),
        (labels::INCIDENT_SUBJECT_HASH.to_string(), hash),
        (
            labels::MANAGED_BY.to_string(),
            labels::MANAGED_BY_VALUE.to_string(),
        ),
    ]));
    IncidentAction::Create(Box::new(incident))
}

/// Reads the records of audit segment ConfigMaps (gzip or, as earlier versions
/// wrote them, plain JSON). Unreadable segments are skipped: verification is
/// `policybind audit verify`'s job, not this scan's.
pub fn records_of(config_maps: &[Arc<ConfigMap>]) -> Vec<AuditRecord> {
    config_maps
        .iter()
        .filter_map(|cm| policybind_audit::ConfigMapStore::document_of(cm).1.ok())
        .filter_map(|json| serde_json::from_slice::<Segment>(&json).ok())
        .flat_map(|segment| segment.records)
        .collect()
}

/// One scan: detect patterns in the cached audit segments and raise or update
/// incidents. Run after audit segments change (debounced) and periodically.
pub async fn scan(ctx: &Context) -> Result<()> {
    let _timer = ctx.metrics.reconcile("incident");
    let now = ctx.now();
    let segments = ctx.stores.audit_segments.state();
    let records = records_of(&segments);
    let refs: Vec<&AuditRecord> = records.iter().collect();
    let restricted = ctx
        .stores
        .tokens
        .state()
        .iter()
        .filter(|t: &&Arc<AccessToken>| {
            t.spec.max_data_classification == DataClassification::Restricted
        })
        .map(|t| format!("{}/{}", t.namespace().unwrap_or_default(), t.name_any()))
        .collect();
    let findings = detect(&refs, &restricted, &ctx.settings.incidents, now);
    let incidents = ctx.stores.incidents.state();
    // Creations within this scan count as existing for the next findings.
    let mut created: HashMap<String, Incident> = HashMap::new();
    for finding in findings {
        let existing = incidents.iter().map(|i| i.as_ref()).chain(created.values());
        match plan_incident(&finding, existing) {
            IncidentAction::None => {}
            IncidentAction::Create(incident) => {
                let api: Api<Incident> = Api::namespaced(ctx.client.clone(), &finding.namespace);
                let name = incident.name_any();
                let written = api
                    .patch(
                        &name,
                        &Context::apply_params(),
                        &Patch::Apply(incident.as_ref()),
                    )
                    .await?;
                let status = IncidentStatus {
                    observed_generation: written.metadata.generation,
                    conditions: vec![],
                    occurrences: finding.occurrences,
                    first_seen_at: Some(finding.first_seen),
                    last_seen_at: Some(finding.last_seen),
                };
                let patch =
                    json!({ "apiVersion": API_VERSION, "kind": "Incident", "status": status });
                api.patch_status(&name, &Context::apply_params(), &Patch::Apply(&patch))
                    .await?;
                ctx.event(
                    &written,
                    true,
                    finding.pattern,
                    incident.spec.summary.clone(),
                )
                .await;
                ctx.record(
                    AuditEvent::lifecycle("incident-raised")
                        .namespace(finding.namespace.clone())
                        .subject(finding.subject.clone())
                        .detail("incident", name.clone())
                        .detail("pattern", finding.pattern)
                        .detail("occurrences", finding.occurrences.to_string()),
                );
                tracing::warn!(incident = %name, namespace = %finding.namespace, pattern = finding.pattern, "incident raised");
                let mut remembered = *incident;
                remembered.status = Some(status);
                created.insert(name, remembered);
            }
            IncidentAction::Update { name, status } => {
                let api: Api<Incident> = Api::namespaced(ctx.client.clone(), &finding.namespace);
                let patch =
                    json!({ "apiVersion": API_VERSION, "kind": "Incident", "status": status });
                api.patch_status(&name, &Context::apply_params(), &Patch::Apply(&patch))
                    .await?;
            }
        }
    }
    Ok(())
}

/// Watches Incidents (a cache: scans raise and update them) and audit segment
/// ConfigMaps in every namespace (label `policybind.io/audit-segment`, trimmed in
/// the cache to the decision records the scan needs), and scans after segments
/// change and every minute.
pub fn run(
    w: &Wiring,
    incidents: Writer<Incident>,
    segments: Writer<ConfigMap>,
    changed: UnboundedReceiver<()>,
) -> Tasks {
    let incidents = drive(watch(
        watcher::watcher(Api::<Incident>::all(w.client.clone()), Default::default()),
        incidents,
        |_: &Event<Incident>| {},
    ));
    let window = w.ctx.settings.incidents.window;
    let audit = w.triggers.audit.clone();
    let segments = drive(watch(
        watcher::watcher(
            Api::<ConfigMap>::all(w.client.clone()),
            labelled(labels::AUDIT_SEGMENT),
        )
        .modify(move |cm| trim_segment(cm, window)),
        segments,
        move |event: &Event<ConfigMap>| {
            if !touched(event).is_empty() {
                let _ = audit.unbounded_send(());
            }
        },
    ));
    Tasks {
        main: vec![Box::pin(scan_loop(
            w.ctx.clone(),
            changed,
            w.shutdown.clone(),
        ))],
        side: vec![Box::pin(incidents), Box::pin(segments)],
    }
}

/// Keeps only the decision records of the last two incident windows in the
/// cached copy of an audit segment: the scan needs no more, and segments are
/// large.
fn trim_segment(cm: &mut ConfigMap, window: Duration) {
    // Segments are gzip (or plain JSON from earlier versions); the trimmed copy
    // is kept as plain JSON, which `records_of` reads too.
    let Ok(json) = policybind_audit::ConfigMapStore::document_of(cm).1 else {
        return;
    };
    let Ok(mut segment) = serde_json::from_slice::<policybind_engine::audit::Segment>(&json) else {
        return;
    };
    let horizon = chrono::Utc::now()
        - chrono::Duration::from_std(window * 2).unwrap_or(chrono::Duration::hours(1));
    segment.records.retain(|r| {
        r.kind == policybind_engine::audit::RecordKind::Decision && r.time.get() > horizon
    });
    if let Ok(trimmed) = serde_json::to_string(&segment) {
        cm.binary_data = None;
        cm.data = Some([(SEGMENT_DATA_KEY.to_string(), trimmed)].into());
    }
}

/// Scans for incidents after audit segments change (debounced) and every minute.
async fn scan_loop(
    ctx: Arc<Context>,
    mut changes: UnboundedReceiver<()>,
    shutdown: CancellationToken,
) {
    if !ctx
        .until_caches_filled(&shutdown, "the incident scan")
        .await
    {
        return;
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changes.next() => {
                // Segments are flushed about once per second per writer; coalesce.
                tokio::time::sleep(Duration::from_secs(2)).await;
                while changes.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        if let Err(error) = scan(&ctx).await {
            ctx.metrics.failed("incident", &error);
            tracing::warn!(%error, "incident scan failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policybind_engine::audit::{Hash256, RecordTime};
    use std::collections::HashSet;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn record(seq: u64, time: &str, subject: &str, effect: Effect, codes: &[&str]) -> AuditRecord {
        serde_json::from_value::<AuditRecord>(json!({
            "seq": seq,
            "time": RecordTime::new(at(time)),
            "writer": "sidecar/team-a/pod-1",
            "kind": "Decision",
            "subject": subject,
            "token_id": "team-a/bot",
            "effect": effect,
            "codes": codes,
            "prev_hash": Hash256::ZERO,
            "hash": Hash256::ZERO,
        }))
        .expect("record fixture matches the audit record format")
    }

    fn denials(n: u64, subject: &str) -> Vec<AuditRecord> {
        (0..n)
            .map(|i| {
                record(
                    i + 1,
                    &format!("2026-11-22T12:0{}:{:02}Z", i / 60, i % 60),
                    subject,
                    Effect::Deny,
                    &["POLICY_DENY"],
                )
            })
            .collect()
    }

    fn settings() -> IncidentSettings {
        IncidentSettings {
            denials: 5,
            ..Default::default()
        }
    }

    #[test]
    fn denials_at_the_threshold_within_the_window_raise_one_finding() {
        let records = denials(5, "alice");
        let refs: Vec<&AuditRecord> = records.iter().collect();
        let found = detect(
            &refs,
            &HashSet::new(),
            &settings(),
            at("2026-11-22T12:05:00Z"),
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pattern, patterns::REPEATED_DENIALS);
        assert_eq!(found[0].occurrences, 5);
        assert_eq!(found[0].namespace, "team-a");
        assert_eq!(found[0].records[0], "sidecar/team-a/pod-1:1");
    }

    #[test]
    fn denials_below_the_threshold_or_outside_the_window_raise_nothing() {
        let records = denials(4, "alice");
        let refs: Vec<&AuditRecord> = records.iter().collect();
        assert!(
            detect(
                &refs,
                &HashSet::new(),
                &settings(),
                at("2026-11-22T12:05:00Z")
            )
            .is_empty()
        );
        let records = denials(5, "alice");
        let refs: Vec<&AuditRecord> = records.iter().collect();
        assert!(
            detect(
                &refs,
                &HashSet::new(),
                &settings(),
                at("2026-11-22T13:00:00Z")
            )
            .is_empty()
        );
    }

    #[test]
    fn pii_on_a_restricted_token_raises_at_once() {
        let records = [record(
            1,
            "2026-11-22T12:00:00Z",
            "bob",
            Effect::Redact,
            &["PII_REDACTED"],
        )];
        let refs: Vec<&AuditRecord> = records.iter().collect();
        let restricted = HashSet::from(["team-a/bot".to_string()]);
        let found = detect(&refs, &restricted, &settings(), at("2026-11-22T12:01:00Z"));
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].pattern,
            patterns::SENSITIVE_DATA_TO_RESTRICTED_TOKEN
        );
        assert_eq!(found[0].severity, Severity::High);
        assert!(
            detect(
                &refs,
                &HashSet::new(),
                &settings(),
                at("2026-11-22T12:01:00Z")
            )
            .is_empty()
        );
    }

    #[test]
    fn open_incident_absorbs_recurrences_instead_of_a_new_one() {
        let records = denials(6, "alice");
        let refs: Vec<&AuditRecord> = records.iter().collect();
        let finding = &detect(
            &refs,
            &HashSet::new(),
            &settings(),
            at("2026-11-22T12:05:00Z"),
        )[0];
        let IncidentAction::Create(mut incident) = plan_incident(finding, []) else {
            panic!("expected a new incident");
        };
        assert_eq!(incident.metadata.namespace.as_deref(), Some("team-a"));
        assert!(incident.name_any().starts_with("repeated-denials-"));
        incident.status = Some(IncidentStatus {
            occurrences: 5,
            first_seen_at: Some(finding.first_seen),
            last_seen_at: Some(at("2026-11-22T12:00:04Z")),
            ..Default::default()
        });
        match plan_incident(finding, [incident.as_ref()]) {
            IncidentAction::Update { status, .. } => assert_eq!(status.occurrences, 6),
            other => panic!("expected an update, got {other:?}"),
        }
        incident.status.as_mut().unwrap().occurrences = 6;
        incident.status.as_mut().unwrap().last_seen_at = Some(finding.last_seen);
        assert_eq!(
            plan_incident(finding, [incident.as_ref()]),
            IncidentAction::None
        );
    }

    #[test]
    fn resolved_incident_is_not_reraised_for_the_same_records() {
        let records = denials(6, "alice");
        let refs: Vec<&AuditRecord> = records.iter().collect();
        let finding = &detect(
            &refs,
            &HashSet::new(),
            &settings(),
            at("2026-11-22T12:05:00Z"),
        )[0];
        let IncidentAction::Create(mut incident) = plan_incident(finding, []) else {
            panic!("expected a new incident");
        };
        incident.spec.state = IncidentState::Resolved;
        incident.status = Some(IncidentStatus {
            last_seen_at: Some(finding.last_seen),
            ..Default::default()
        });
        assert_eq!(
            plan_incident(finding, [incident.as_ref()]),
            IncidentAction::None
        );
    }
}
