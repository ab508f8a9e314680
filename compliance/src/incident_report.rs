//! The serious-incident report the EU AI Act's post-market obligations expect
//! (Art. 73), built from an Incident and the audit records it links.
//!
//! The structure follows what a market surveillance authority needs, in
//! PolicyBind's words: who reports, which AI system, what happened and how serious
//! it is, when the organisation learned of it and by when it must report, what the
//! audit trail proves, the cause, the corrective measures, whether and when the
//! authority was notified, and what is still open. An incomplete report is allowed
//! (an initial report may precede the complete one); its open items say what is
//! missing.
use chrono::{DateTime, Duration, Utc};
use policybind_crds::Incident;
use policybind_crds::incident::{HarmCategory, IncidentHarm};
use serde::{Deserialize, Serialize};

use crate::evidence::Snapshot;
use crate::model_card::{self, ModelCard};
use crate::report::{RENDERER_VERSION, TrailSummary};

/// Value of [`IncidentReport::format`].
pub const INCIDENT_REPORT_FORMAT: &str = "policybind-incident-report/v1";

/// When a serious incident must be reported, and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Deadline {
    pub days: u32,
    pub due: DateTime<Utc>,
    pub basis: String,
}

/// The reporting deadline of a harm, counted from `awareAt`: 2 days for a
/// widespread infringement or a serious disruption of critical infrastructure, 10
/// days when a person died, 15 days otherwise (Art. 73(2) to (4)).
pub fn reporting_deadline(harm: &IncidentHarm) -> Deadline {
    let (days, basis) = if harm.widespread
        || harm.category == HarmCategory::CriticalInfrastructureDisruption
    {
        (
            2,
            "Art. 73(3): widespread infringement or serious disruption of critical infrastructure",
        )
    } else if harm.category == HarmCategory::Death {
        (10, "Art. 73(4): death of a person")
    } else {
        (15, "Art. 73(2): at the latest 15 days after becoming aware")
    };
    Deadline {
        days,
        due: harm.aware_at + Duration::days(i64::from(days)),
        basis: basis.to_string(),
    }
}

/// The incident as recorded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IncidentFacts {
    pub namespace: String,
    pub name: String,
    pub pattern: String,
    pub subject: String,
    pub severity: String,
    pub state: String,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    pub occurrences: u64,
}

/// The harm and its deadline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Classification {
    pub category: String,
    pub description: String,
    pub aware_at: DateTime<Utc>,
    pub widespread: bool,
    pub deadline: Deadline,
}

/// One line of the timeline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TimelineLine {
    pub at: DateTime<Utc>,
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// `incident` (written by people), `status` (observed by the operator) or
    /// `audit <writer:seq>` (a verified record).
    pub source: String,
}

/// Where the authority notification stands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// `NotRequired` (not a serious incident), `Notified`, `NotifiedLate`, `Due`, `Overdue`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// A linked audit record, as found in the verified trail.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LinkedRecord {
    /// `writer:seq` as the Incident lists it.
    pub id: String,
    /// Whether the verified trail holds it.
    pub found: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// A serious-incident report.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IncidentReport {
    /// Always [`INCIDENT_REPORT_FORMAT`].
    pub format: String,
    pub renderer: u32,
    pub generator: String,
    pub generated_at: DateTime<Utc>,
    pub incident: IncidentFacts,
    /// Serious in the EU AI Act's sense (a harm is recorded).
    pub serious: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<Classification>,
    /// The AI system concerned, when the Incident names its ModelDeployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<ModelCard>,
    pub timeline: Vec<TimelineLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_cause: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation: Option<String>,
    pub notification: Notification,
    pub records: Vec<LinkedRecord>,
    pub trail: TrailSummary,
    /// What the report still lacks.
    pub open_items: Vec<String>,
}

fn linked_records(incident: &Incident, snapshot: &Snapshot) -> Vec<LinkedRecord> {
    let records: Vec<_> = snapshot
        .trail
        .iter()
        .flat_map(|t| t.records.iter())
        .collect();
    incident
        .spec
        .audit_records
        .iter()
        .map(|id| {
            let found = id.rsplit_once(':').and_then(|(writer, seq)| {
                let seq: u64 = seq.parse().ok()?;
                records.iter().find(|r| r.writer == writer && r.seq == seq)
            });
            LinkedRecord {
                id: id.clone(),
                found: found.is_some(),
                time: found.map(|r| r.time.to_string()),
                kind: found.map(|r| r.kind.to_string()),
                effect: found.and_then(|r| r.effect.map(|e| e.to_string())),
                model: found.and_then(|r| r.model.clone()),
                codes: found.map(|r| r.codes.clone()).unwrap_or_default(),
                decided_by: found.and_then(|r| match (&r.policy, &r.rule) {
                    (Some(p), Some(rule)) => Some(format!("{p}/{rule}")),
                    _ => None,
                }),
                hash: found.map(|r| r.hash.to_hex()),
            }
        })
        .collect()
}

fn timeline(
    incident: &Incident,
    records: &[LinkedRecord],
    snapshot: &Snapshot,
) -> Vec<TimelineLine> {
    let mut lines: Vec<TimelineLine> = incident
        .spec
        .timeline
        .iter()
        .map(|t| TimelineLine {
            at: t.at,
            event: t.event.clone(),
            actor: t.actor.clone(),
            source: "incident".into(),
        })
        .collect();
    let status = incident.status.as_ref();
    let observed = [
        (status.and_then(|s| s.first_seen_at), "pattern first seen"),
        (status.and_then(|s| s.last_seen_at), "pattern last seen"),
        (
            incident.spec.harm.as_ref().map(|h| h.aware_at),
            "organisation became aware of the harm",
        ),
    ];
    for (at, event) in observed {
        if let Some(at) = at {
            lines.push(TimelineLine {
                at,
                event: event.into(),
                actor: None,
                source: "status".into(),
            });
        }
    }
    for record in snapshot.trail.iter().flat_map(|t| t.records.iter()) {
        let id = format!("{}:{}", record.writer, record.seq);
        if records.iter().any(|r| r.found && r.id == id) {
            lines.push(TimelineLine {
                at: record.time.get(),
                event: format!(
                    "{} {} for {}{}",
                    record.kind,
                    record.effect.map(|e| e.to_string()).unwrap_or_default(),
                    record.subject.as_deref().unwrap_or("-"),
                    if record.codes.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", record.codes.join(", "))
                    }
                ),
                actor: None,
                source: format!("audit {id}"),
            });
        }
    }
    if let Some(n) = &incident.spec.authority_notification {
        lines.push(TimelineLine {
            at: n.notified_at,
            event: format!("{} notified", n.authority),
            actor: None,
            source: "incident".into(),
        });
    }
    lines.sort_by(|a, b| (a.at, &a.source).cmp(&(b.at, &b.source)));
    lines
}

fn notification(
    incident: &Incident,
    deadline: Option<&Deadline>,
    now: DateTime<Utc>,
) -> Notification {
    let n = incident.spec.authority_notification.as_ref();
    let status = match (deadline, n) {
        (None, None) => "NotRequired",
        (None, Some(_)) => "Notified",
        (Some(d), Some(n)) if n.notified_at <= d.due => "Notified",
        (Some(_), Some(_)) => "NotifiedLate",
        (Some(d), None) if d.due < now => "Overdue",
        (Some(_), None) => "Due",
    };
    Notification {
        status: status.into(),
        authority: n.map(|n| n.authority.clone()),
        notified_at: n.map(|n| n.notified_at),
        reference: n.and_then(|n| n.reference.clone()),
    }
}

fn open_items(report: &IncidentReport) -> Vec<String> {
    let mut open = Vec::new();
    if report.system.is_none() {
        open.push(
            "the AI system concerned is not named (spec.model) or not in the registry".into(),
        );
    }
    if report.root_cause.is_none() {
        open.push("root cause not yet established (spec.rootCause)".into());
    }
    if report.remediation.is_none() {
        open.push("corrective measures not yet recorded (spec.remediation)".into());
    }
    match report.notification.status.as_str() {
        "Due" => open.push("the authority has not been notified yet".into()),
        "Overdue" => {
            open.push("the authority has not been notified and the deadline has passed".into())
        }
        _ => {}
    }
    for record in report.records.iter().filter(|r| !r.found) {
        open.push(format!(
            "linked audit record {} is not in the verified trail",
            record.id
        ));
    }
    if !report.trail.examined {
        open.push("no audit trail was given, so no linked record is proven".into());
    }
    open
}

/// Builds the report of `incident` over `snapshot` (its trail and registry).
pub fn build(incident: &Incident, snapshot: &Snapshot, generator: &str) -> IncidentReport {
    let spec = &incident.spec;
    let namespace = incident
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let classification = spec.harm.as_ref().map(|h| Classification {
        category: h.category.as_str().to_string(),
        description: h.description.clone(),
        aware_at: h.aware_at,
        widespread: h.widespread,
        deadline: reporting_deadline(h),
    });
    let system = spec.model.as_ref().and_then(|name| {
        snapshot
            .models
            .iter()
            .find(|m| {
                m.metadata.name.as_ref() == Some(name)
                    && m.metadata.namespace.as_deref() == Some(namespace.as_str())
            })
            .map(|m| model_card::card(m, snapshot))
    });
    let records = linked_records(incident, snapshot);
    let mut report = IncidentReport {
        format: INCIDENT_REPORT_FORMAT.to_string(),
        renderer: RENDERER_VERSION,
        generator: generator.to_string(),
        generated_at: snapshot.now,
        incident: IncidentFacts {
            namespace,
            name: incident.metadata.name.clone().unwrap_or_default(),
            pattern: spec.pattern.clone(),
            subject: spec.subject.clone(),
            severity: format!("{:?}", spec.severity),
            state: format!("{:?}", spec.state),
            summary: spec.summary.clone(),
            assignee: spec.assignee.clone(),
            occurrences: incident.status.as_ref().map_or(0, |s| s.occurrences),
        },
        serious: spec.harm.is_some(),
        notification: notification(
            incident,
            classification.as_ref().map(|c| &c.deadline),
            snapshot.now,
        ),
        classification,
        system,
        timeline: timeline(incident, &records, snapshot),
        root_cause: spec.root_cause.clone(),
        remediation: spec.remediation.clone(),
        records,
        trail: crate::report::trail_summary_of(snapshot),
        open_items: Vec::new(),
    };
    report.open_items = open_items(&report);
    report
}
