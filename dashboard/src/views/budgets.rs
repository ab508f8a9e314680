//! Budgets and their burn: each AccessToken budget (spec) against the usage
//! the operator reports for the current period (status), as meters.
use kube::ResourceExt;
use policybind_crds::AccessToken;
use policybind_crds::access_token::PeriodUsage;

use super::Context;
use crate::html::{escape, pill, table};
use crate::svg::meter;

/// The usage reported for `period`: the entry with the latest period start
/// (the current period; earlier ones are history).
fn usage_of(token: &AccessToken, period: policybind_crds::BudgetPeriod) -> Option<&PeriodUsage> {
    token
        .status
        .as_ref()?
        .usage
        .iter()
        .filter(|u| u.period == period)
        .max_by_key(|u| u.period_start)
}

fn limit_cell(used: f64, limit: Option<f64>, unit: &str, caption: &str) -> String {
    match limit {
        Some(limit) => format!(
            "{} <span class=\"note\">{} of {} {unit}</span>",
            meter(used, limit, caption),
            format_amount(used, unit),
            format_amount(limit, unit)
        ),
        None => format!(
            "<span class=\"note\">{} {unit}, no limit</span>",
            format_amount(used, unit)
        ),
    }
}

fn format_amount(value: f64, unit: &str) -> String {
    if unit == "USD" && value != 0.0 && value.abs() < 1.0 {
        // Small spend (a few hundred tokens) would read as 0.00.
        format!("{value:.4}")
    } else if unit == "USD" {
        format!("{value:.2}")
    } else {
        format!("{value:.0}")
    }
}

pub fn render(context: &Context<'_>) -> String {
    let tokens = context.visible(&context.snapshot.tokens);
    let mut rows = Vec::new();
    for token in &tokens {
        let phase = token
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "-".into());
        let subject = format!("{:?} {}", token.spec.subject.kind, token.spec.subject.name);
        if token.spec.budgets.is_empty() {
            rows.push(vec![
                escape(&token.namespace().unwrap_or_default()),
                escape(&token.name_any()),
                escape(&subject),
                pill(&phase, &phase),
                "-".into(),
                "<span class=\"note\">no budget</span>".into(),
                String::new(),
            ]);
        }
        for budget in &token.spec.budgets {
            let usage = usage_of(token, budget.period);
            let cost = usage.map_or(0.0, |u| u.cost_usd);
            let used_tokens = usage.map_or(0, |u| u.tokens);
            let name = token.name_any();
            rows.push(vec![
                escape(&token.namespace().unwrap_or_default()),
                escape(&name),
                escape(&subject),
                pill(&phase, &phase),
                format!(
                    "{}{}<br><span class=\"note\">{} requests</span>",
                    budget.period.as_str(),
                    if budget.window == policybind_crds::BudgetWindow::Rolling {
                        " (rolling)"
                    } else {
                        ""
                    },
                    usage.map_or(0, |u| u.requests)
                ),
                limit_cell(
                    cost,
                    budget.max_cost_usd,
                    "USD",
                    &format!("{name} cost {}", budget.period.as_str()),
                ),
                limit_cell(
                    used_tokens as f64,
                    budget.max_tokens.map(|t| t as f64),
                    "tokens",
                    &format!("{name} tokens {}", budget.period.as_str()),
                ),
            ]);
        }
    }
    let mut out = format!(
        "<p>{} access token(s). Usage is what the operator last reported in each token's status for the current period.</p>",
        tokens.len()
    );
    out.push_str(&table(
        &[
            "Namespace",
            "Token",
            "Subject",
            "Phase",
            "Period",
            "Cost",
            "Tokens",
        ],
        &rows,
        "No AccessToken.",
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
    fn burn_is_the_current_periods_usage_against_the_limit() {
        let token: AccessToken = serde_json::from_value(json!({
            "apiVersion": "policybind.io/v1alpha1", "kind": "AccessToken",
            "metadata": {"name": "dana", "namespace": "team-a"},
            "spec": {"subject": {"kind": "User", "name": "dana"}, "team": "a",
                     "allowedModels": ["gpt-4o"], "maxDataClassification": "Internal",
                     "budgets": [{"period": "Day", "maxCostUsd": 10.0, "maxTokens": 1000}]},
            "status": {"phase": "Active", "usage": [
                {"period": "Day", "periodStart": "2026-11-30T00:00:00Z", "costUsd": 9.5, "tokens": 100, "requests": 3},
                {"period": "Day", "periodStart": "2026-12-01T00:00:00Z", "costUsd": 2.5, "tokens": 900, "requests": 7}]}
        }))
        .unwrap();
        let mut snapshot = Snapshot::empty(now());
        snapshot.tokens = vec![token];
        let html = as_team_a_viewer(render, &snapshot);
        assert!(html.contains("data-fraction=\"0.25\""), "{html}");
        assert!(html.contains("2.50 of 10.00 USD"));
        assert!(html.contains("data-fraction=\"0.9\""));
        assert!(html.contains("7 requests"));
        // 25 % of a 220 px meter.
        assert!(html.contains("width=\"55.0\""));
    }
}
