//! Models (ModelDeployments): risk, approval, review date and compliance, as
//! the operator last wrote them in each status.
use kube::ResourceExt;
use policybind_crds::ModelDeployment;

use super::Context;
use crate::html::{escape, pill, table, time};

fn risk(model: &ModelDeployment) -> String {
    let status = model.status.as_ref();
    match status.and_then(|s| s.risk_level) {
        Some(level) => {
            let level = level.as_str();
            let score = status
                .and_then(|s| s.risk_score)
                .map(|s| format!(" <span class=\"note\">score {s}</span>"))
                .unwrap_or_default();
            format!("{}{score}", pill(level, level))
        }
        None => "<span class=\"note\">not assessed yet</span>".into(),
    }
}

fn approval(model: &ModelDeployment) -> String {
    let status = model.status.as_ref();
    let Some(state) = status.and_then(|s| s.approval) else {
        return "<span class=\"note\">-</span>".into();
    };
    let by = status
        .and_then(|s| s.approved_by.as_deref())
        .map(|b| format!("<br><span class=\"note\">by {}</span>", escape(b)))
        .unwrap_or_default();
    format!("{}{by}", pill(state.as_str(), state.as_str()))
}

fn review(model: &ModelDeployment, now: chrono::DateTime<chrono::Utc>) -> String {
    match model.status.as_ref().and_then(|s| s.next_review_at) {
        Some(at) if at < now => format!("<span class=\"bad\">{} (overdue)</span>", time(at)),
        Some(at) => time(at),
        None => "-".into(),
    }
}

fn compliance(model: &ModelDeployment) -> String {
    let entries = model
        .status
        .as_ref()
        .map(|s| s.compliance.as_slice())
        .unwrap_or_default();
    if entries.is_empty() {
        return "<span class=\"note\">not reported</span>".into();
    }
    entries
        .iter()
        .map(|entry| {
            let framework = serde_json::to_value(entry.framework)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            if entry.compliant {
                format!("<span class=\"good\">✓ {}</span>", escape(&framework))
            } else {
                format!(
                    "<span class=\"bad\" title=\"{}\">✗ {}</span> <span class=\"note\">{}</span>",
                    escape(&entry.message),
                    escape(&framework),
                    escape(&entry.reason)
                )
            }
        })
        .collect::<Vec<_>>()
        .join("<br>")
}

pub fn render(context: &Context<'_>) -> String {
    let models = context.visible(&context.snapshot.models);
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|model| {
            let spec = &model.spec;
            let suspended = if spec.suspended {
                " <span class=\"bad\">suspended</span>"
            } else {
                ""
            };
            vec![
                escape(&model.namespace().unwrap_or_default()),
                format!("{}{suspended}", escape(&model.name_any())),
                format!(
                    "{} <span class=\"note\">{}</span>",
                    escape(&spec.model),
                    escape(&spec.provider)
                ),
                escape(&spec.team),
                risk(model),
                approval(model),
                review(model, context.now),
                compliance(model),
            ]
        })
        .collect();
    let mut out = format!("<p>{} model deployment(s).</p>", rows.len());
    out.push_str(&table(
        &[
            "Namespace",
            "Name",
            "Model",
            "Team",
            "Risk",
            "Approval",
            "Next review",
            "Compliance",
        ],
        &rows,
        "No ModelDeployment.",
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Snapshot;
    use crate::views::testing::{as_team_a_viewer, now};
    use serde_json::json;

    #[test]
    fn models_show_risk_approval_overdue_review_and_compliance() {
        let model: ModelDeployment = serde_json::from_value(json!({
            "apiVersion": "policybind.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "support-agent", "namespace": "team-a"},
            "spec": {"provider": "openai", "model": "gpt-4o", "owner": "o", "team": "support",
                     "useCases": ["support"], "maxDataClassification": "Internal",
                     "risk": {"factors": {"customerFacing": true}}, "reviewIntervalDays": 90},
            "status": {"riskScore": 72, "riskLevel": "High", "approval": "Pending",
                       "nextReviewAt": "2026-11-01T00:00:00Z",
                       "compliance": [
                         {"framework": "eu-ai-act", "compliant": false, "reason": "NoIntendedPurpose", "message": "m"},
                         {"framework": "soc2", "compliant": true, "reason": "Ok", "message": "ok"}]}
        }))
        .unwrap();
        let mut snapshot = Snapshot::empty(now());
        snapshot.models = vec![model];
        let html = as_team_a_viewer(render, &snapshot);
        assert!(
            html.contains("<span class=\"pill High\">High</span>"),
            "{html}"
        );
        assert!(html.contains("score 72"));
        assert!(html.contains("<span class=\"pill Pending\">Pending</span>"));
        assert!(html.contains("2026-11-01 00:00:00Z (overdue)"));
        assert!(html.contains("✗ eu-ai-act") && html.contains("NoIntendedPurpose"));
        assert!(html.contains("✓ soc2"));
    }
}
