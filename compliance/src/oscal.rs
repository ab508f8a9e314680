//! OSCAL Assessment Results for a report, so OSCAL tools (OSCAL Compass / trestle
//! and others) can read PolicyBind's findings.
//!
//! One result covers the report's period; one observation per evidence finding
//! (method EXAMINE, plus TEST for the trail verification); one finding per control,
//! targeting the control id as an objective, with state `satisfied` or
//! `not-satisfied` and the exact PolicyBind status in a property of the PolicyBind
//! namespace ([`NAMESPACE`]):
//!
//! | PolicyBind status    | state         | reason |
//! |----------------------|---------------|--------|
//! | Satisfied            | satisfied     | pass   |
//! | PartiallyEvidenced   | not-satisfied | other  |
//! | NotSatisfied         | not-satisfied | fail   |
//! | NotEvidenced         | not-satisfied | other  |
//! | NotApplicable        | satisfied     | other  |
//!
//! A partially evidenced control is never reported as satisfied: the part outside
//! PolicyBind was not assessed. UUIDs are name-based (v5) from the report digest,
//! so the same report always gives the same document. The shape is checked in the
//! tests against NIST's published OSCAL 1.2.3 JSON Schema.
use serde_json::{Value, json};
use uuid::Uuid;

use crate::evidence::{EvidenceKind, Finding};
use crate::report::{ControlResult, ControlStatus, Report};

/// Namespace of PolicyBind's OSCAL properties.
pub const NAMESPACE: &str = "https://policybind.io/ns/oscal";
/// OSCAL version the documents declare.
pub const OSCAL_VERSION: &str = "1.1.2";
/// Namespace of the name-based UUIDs.
const UUID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2b8e_4d7a_4c1e_9a5b_3e8f_0d2c_7b61);

fn uuid(digest: &str, path: &str) -> String {
    Uuid::new_v5(&UUID_NAMESPACE, format!("{digest}/{path}").as_bytes()).to_string()
}

fn prop(name: &str, value: &str) -> Value {
    json!({"name": name, "ns": NAMESPACE, "value": value})
}

/// Trims and replaces empty text, as OSCAL strings must be non-empty without
/// leading or trailing white space.
fn text(value: &str, fallback: &str) -> String {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        fallback.to_string()
    } else {
        trimmed.to_string()
    }
}

fn observation(digest: &str, f: &Finding, collected: &str) -> Value {
    let mut description = text(&f.summary, f.kind.title());
    for issue in &f.issues {
        description.push_str(&format!("\n\n- Issue: {issue}"));
    }
    for note in &f.notes {
        description.push_str(&format!("\n\n- Note: {note}"));
    }
    let mut evidence: Vec<Value> = f
        .objects
        .iter()
        .map(|o| {
            let name = o
                .namespace
                .as_ref()
                .map_or(o.name.clone(), |ns| format!("{ns}/{}", o.name));
            json!({"description": text(&format!("{} {name}: {}", o.kind, o.detail), "object")})
        })
        .collect();
    evidence.extend(f.records.iter().map(|r| {
        json!({"description": format!("{}: audit records of writer {} from seq {} to {} ({} matching)", r.what, r.writer, r.first_seq, r.last_seq, r.count)})
    }));
    evidence.extend(f.approvers.iter().map(|a| {
        json!({"description": format!("{} {} by {} (requested by {}; ApprovalRequest {})", a.decision, a.target, a.approver, a.requester, a.request)})
    }));
    let mut methods = vec!["EXAMINE"];
    if f.kind == EvidenceKind::AuditTrail {
        methods.push("TEST");
    }
    let mut value = json!({
        "uuid": uuid(digest, &format!("observation/{}", f.kind.id())),
        "title": f.kind.title(),
        "description": description,
        "props": [prop("evidence-kind", f.kind.id()), prop("evidence-status", f.status.as_str())],
        "methods": methods,
        "collected": collected,
    });
    if !evidence.is_empty() {
        value["relevant-evidence"] = Value::Array(evidence);
    }
    value
}

fn finding(digest: &str, control: &ControlResult, report: &Report) -> Value {
    let (state, reason) = match control.status {
        ControlStatus::Satisfied => ("satisfied", "pass"),
        ControlStatus::PartiallyEvidenced => ("not-satisfied", "other"),
        ControlStatus::NotSatisfied => ("not-satisfied", "fail"),
        ControlStatus::NotEvidenced => ("not-satisfied", "other"),
        ControlStatus::NotApplicable => ("satisfied", "other"),
    };
    let mut description = text(&control.description, &control.title);
    for r in &control.reasons {
        description.push_str(&format!("\n\n- Not satisfied: {r}"));
    }
    if let Some(outside) = &control.outside_policy_bind {
        description.push_str(&format!(
            "\n\n- Not evidenced by PolicyBind: {}",
            outside.trim()
        ));
    }
    let mut status = json!({"state": state, "reason": reason});
    status["remarks"] = Value::String(format!(
        "PolicyBind status {} ({})",
        control.status.as_str(),
        control.status.label()
    ));
    let mut value = json!({
        "uuid": uuid(digest, &format!("finding/{}", control.id)),
        "title": format!("{} {}", control.references.join(", "), control.title).trim().to_string(),
        "description": description,
        "props": [prop("control-status", control.status.as_str())],
        "target": {"type": "objective-id", "target-id": control.id, "status": status},
    });
    let related: Vec<Value> = control
        .evidence
        .iter()
        .filter(|k| report.finding(**k).is_some())
        .map(|k| json!({"observation-uuid": uuid(digest, &format!("observation/{}", k.id()))}))
        .collect();
    if !related.is_empty() {
        value["related-observations"] = Value::Array(related);
    }
    value
}

/// The Assessment Results document of `report`, whose canonical JSON has `digest`.
pub fn assessment_results(report: &Report, digest: &str) -> Value {
    let generated = report
        .generated_at
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let start = report.scope.since.map_or(generated.clone(), |t| {
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    });
    let end = report.scope.until.map_or(generated.clone(), |t| {
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    });
    let framework = &report.catalog.framework;
    let mut result = json!({
        "uuid": uuid(digest, "result"),
        "title": format!("{}: PolicyBind evidence", report.catalog.title),
        "description": format!(
            "Controls of the {} catalog (version {}) assessed against the PolicyBind registry, policies, tokens, incidents and audit trail{}.",
            framework,
            report.catalog.version,
            report.scope.namespace.as_ref().map_or(String::new(), |ns| format!(" of namespace {ns}"))
        ),
        "start": start,
        "props": [prop("report-sha256", digest)],
        "reviewed-controls": {"control-selections": [{
            "include-controls": report.controls.iter().map(|c| json!({"control-id": c.id})).collect::<Vec<_>>()
        }]},
        "observations": report.evidence.iter().map(|f| observation(digest, f, &generated)).collect::<Vec<_>>(),
        "findings": report.controls.iter().map(|c| finding(digest, c, report)).collect::<Vec<_>>(),
    });
    if end != start {
        result["end"] = Value::String(end);
    }
    json!({"assessment-results": {
        "uuid": uuid(digest, "assessment-results"),
        "metadata": {
            "title": format!("{}: PolicyBind assessment results", report.catalog.title),
            "last-modified": generated,
            "version": report.catalog.version,
            "oscal-version": OSCAL_VERSION,
            "props": [prop("framework", framework), prop("report-sha256", digest), prop("generator", &report.generator)],
        },
        "import-ap": {
            "href": format!("{framework}.json"),
            "remarks": "PolicyBind has no separate assessment plan: the catalog, scope and period recorded in the referenced signed report define what was assessed.",
        },
        "results": [result],
    }})
}
