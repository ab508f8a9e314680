//! Incidents: open ones first, most severe first, with how often the pattern
//! was seen and where its evidence is.
use kube::ResourceExt;
use policybind_crds::Incident;
use policybind_crds::incident::{IncidentState, Severity};

use super::Context;
use crate::html::{escape, pill, table, time};

fn severity_rank(severity: Severity) -> u8 {
    match severity {
        Severity::Critical => 0,
        Severity::High => 1,
        Severity::Medium => 2,
        Severity::Low => 3,
    }
}

pub fn render(context: &Context<'_>) -> String {
    let mut incidents = context.visible(&context.snapshot.incidents);
    incidents.sort_by_key(|i| {
        (
            i.spec.state == IncidentState::Resolved,
            severity_rank(i.spec.severity),
            std::cmp::Reverse(i.status.as_ref().and_then(|s| s.last_seen_at)),
        )
    });
    let open = incidents
        .iter()
        .filter(|i| i.spec.state != IncidentState::Resolved)
        .count();
    let rows: Vec<Vec<String>> = incidents.iter().map(|incident| row(incident)).collect();
    let mut out = format!("<p>{} incident(s), {open} not resolved.</p>", rows.len());
    out.push_str(&table(
        &[
            "Namespace",
            "Name",
            "Severity",
            "State",
            "Pattern",
            "Subject",
            "Summary",
            "Seen",
            "Evidence",
        ],
        &rows,
        "No incident.",
    ));
    out
}

fn row(incident: &Incident) -> Vec<String> {
    let spec = &incident.spec;
    let severity = format!("{:?}", spec.severity);
    let state = format!("{:?}", spec.state);
    let status = incident.status.as_ref();
    let seen = match status {
        Some(s) => format!(
            "{} time(s){}",
            s.occurrences,
            s.last_seen_at
                .map(|t| format!("<br><span class=\"note\">last {}</span>", time(t)))
                .unwrap_or_default()
        ),
        None => "-".into(),
    };
    let assignee = spec
        .assignee
        .as_deref()
        .map(|a| format!("<br><span class=\"note\">assigned to {}</span>", escape(a)))
        .unwrap_or_default();
    vec![
        escape(&incident.namespace().unwrap_or_default()),
        escape(&incident.name_any()),
        pill(&severity, &severity),
        format!("{}{assignee}", escape(&state)),
        format!("<code>{}</code>", escape(&spec.pattern)),
        escape(&spec.subject),
        escape(&spec.summary),
        seen,
        format!("{} audit record(s)", spec.audit_records.len()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Snapshot;
    use crate::views::testing::{as_team_a_viewer, now};
    use serde_json::json;

    fn incident(name: &str, severity: &str, state: &str) -> Incident {
        serde_json::from_value(json!({
            "apiVersion": "policybind.io/v1alpha1", "kind": "Incident",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {"pattern": "repeated-denials", "subject": "user:dana", "severity": severity,
                     "state": state, "summary": format!("{name} summary"), "auditRecords": ["a", "b"]},
            "status": {"occurrences": 4}
        }))
        .unwrap()
    }

    #[test]
    fn open_and_severe_incidents_come_first() {
        let mut snapshot = Snapshot::empty(now());
        snapshot.incidents = vec![
            incident("old", "Critical", "Resolved"),
            incident("minor", "Low", "Open"),
            incident("major", "High", "Investigating"),
        ];
        let html = as_team_a_viewer(render, &snapshot);
        assert!(html.contains("3 incident(s), 2 not resolved."));
        let (major, minor, old) = (
            html.find("major summary").unwrap(),
            html.find("minor summary").unwrap(),
            html.find("old summary").unwrap(),
        );
        assert!(major < minor && minor < old);
        assert!(html.contains("4 time(s)") && html.contains("2 audit record(s)"));
    }
}
