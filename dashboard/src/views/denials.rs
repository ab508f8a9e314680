//! Recent denials with their explanation: the codes and what they mean, the
//! policy and rule that decided, and the rule's message.
use std::collections::BTreeMap;

use policybind_crds::Effect;
use policybind_crds::wire::transitions;
use policybind_engine::audit::{AuditRecord, RecordKind};
use policybind_engine::codes;

use super::Context;
use crate::html::{escape, pill, table, time};

/// Rows shown at most.
pub const SHOWN: usize = 200;

pub fn render(context: &Context<'_>) -> String {
    // The newest SHOWN of each namespace, then the newest SHOWN of those.
    let mut denials: Vec<(&str, &AuditRecord)> = context
        .visible_trails()
        .flat_map(|(namespace, trail)| {
            trail
                .records
                .iter()
                .rev()
                .filter(|r| matches!(r.effect, Some(Effect::Deny | Effect::RequireApproval)))
                .take(SHOWN)
                .map(move |r| (namespace, r))
        })
        .collect();
    denials.sort_by_key(|(_, r)| std::cmp::Reverse(r.time.get()));
    denials.truncate(SHOWN);
    let rows: Vec<Vec<String>> = denials
        .iter()
        .map(|(namespace, record)| {
            let effect = record.effect.map_or("", |e| e.as_str());
            let decided_by = match (&record.policy, &record.rule) {
                (Some(policy), Some(rule)) => format!("{} / {}", escape(policy), escape(rule)),
                (Some(policy), None) => escape(policy),
                _ => "<span class=\"note\">before any policy</span>".to_string(),
            };
            vec![
                time(record.time.get()),
                escape(namespace),
                format!(
                    "{}<br><span class=\"note\">{}</span>",
                    pill(effect, effect),
                    escape(record.kind.as_str())
                ),
                escape(record.subject.as_deref().unwrap_or("-")),
                escape(record.model.as_deref().unwrap_or("-")),
                record
                    .codes
                    .iter()
                    .map(|c| format!("<code>{}</code>", escape(c)))
                    .collect::<Vec<_>>()
                    .join("<br>"),
                decided_by,
                escape(&reason(context, record)),
            ]
        })
        .collect();
    let mut out = format!(
        "<p>The {} most recent denials (Deny and RequireApproval), newest first.</p>",
        rows.len()
    );
    out.push_str(&table(
        &[
            "Time (UTC)",
            "Namespace",
            "Effect",
            "Subject",
            "Model",
            "Codes",
            "Policy / rule",
            "Reason",
        ],
        &rows,
        "No denial recorded.",
    ));
    out.push_str(&unidentified(context));
    out
}

/// Requests refused before anyone was identified: sidecars summarise them in
/// one `Lifecycle` record per interval (so a flood cannot fill the trail), one
/// detail per code with its count. Added up per namespace and code.
fn unidentified(context: &Context<'_>) -> String {
    let mut counts: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (namespace, record) in context.records() {
        if record.kind != RecordKind::Lifecycle
            || record.detail.get("transition").map(String::as_str)
                != Some(transitions::UNAUTHENTICATED_REJECTIONS)
        {
            continue;
        }
        for (code, count) in &record.detail {
            if let (Some(_), Ok(count)) = (codes::info(code), count.parse::<u64>()) {
                *counts.entry((namespace, code.as_str())).or_default() += count;
            }
        }
    }
    let rows: Vec<Vec<String>> = counts
        .iter()
        .map(|((namespace, code), count)| {
            vec![
                escape(namespace),
                format!("<code>{}</code>", escape(code)),
                count.to_string(),
                escape(codes::info(code).map_or("", |info| info.meaning)),
            ]
        })
        .collect();
    format!(
        "<h2>Refused before identification</h2><p class=\"note\">Requests with no token or an unknown one are \
         counted by the sidecars and recorded as one summary per interval, not one record each.</p>{}",
        table(
            &["Namespace", "Code", "Requests", "Meaning"],
            &rows,
            "None recorded."
        )
    )
}

/// The rule's message when the deciding rule has one, else what the codes mean.
fn reason(context: &Context<'_>, record: &AuditRecord) -> String {
    if let (Some(policy), Some(rule)) = (&record.policy, &record.rule)
        && let Some(message) = context
            .snapshot
            .rule_messages
            .get(&(policy.clone(), rule.clone()))
    {
        return message.clone();
    }
    let meanings: Vec<&str> = record
        .codes
        .iter()
        .filter_map(|c| codes::info(c).map(|info| info.meaning))
        .collect();
    if meanings.is_empty() {
        "-".to_string()
    } else {
        meanings.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::data::{Snapshot, Trail};
    use crate::views::testing::{as_team_a_viewer, now, record};

    #[test]
    fn denials_show_codes_rule_and_message_newest_first() {
        let mut snapshot = Snapshot::empty(now());
        let mut summary = record(4, 2, Effect::Deny, &[]);
        summary.kind = RecordKind::Lifecycle;
        summary.effect = None;
        summary.detail = BTreeMap::from([
            (
                "transition".into(),
                transitions::UNAUTHENTICATED_REJECTIONS.into(),
            ),
            ("TOKEN_UNKNOWN".into(), "12".into()),
            ("windowSeconds".into(), "10".into()),
        ]);
        let mut by_rule = record(2, 1, Effect::Deny, &["E2E_BLOCKED"]);
        by_rule.policy = Some("team-a/block".into());
        by_rule.rule = Some("no-gpt".into());
        snapshot.rule_messages.insert(
            ("team-a/block".into(), "no-gpt".into()),
            "GPT is <off> for team A".into(),
        );
        snapshot.trails.insert(
            "team-a".into(),
            Arc::new(Trail {
                records: vec![
                    record(1, 5, Effect::Deny, &["TOKEN_MISSING"]),
                    by_rule,
                    record(3, 0, Effect::Allow, &["POLICY_ALLOW"]),
                    summary,
                ],
                ..Trail::default()
            }),
        );
        let html = as_team_a_viewer(render, &snapshot);
        assert!(html.contains("The 2 most recent denials"));
        assert!(html.contains("team-a/block / no-gpt"));
        assert!(html.contains("GPT is &lt;off&gt; for team A"));
        assert!(html.contains("The request carries no `Authorization: Bearer` token."));
        assert!(html.find("E2E_BLOCKED").unwrap() < html.find("TOKEN_MISSING").unwrap());
        assert!(!html.contains("POLICY_ALLOW"));
        assert!(
            html.contains("<td><code>TOKEN_UNKNOWN</code></td><td>12</td>"),
            "{html}"
        );
        assert!(!html.contains("windowSeconds"));
    }

    #[test]
    fn a_hidden_namespace_shows_no_denial() {
        let mut snapshot = Snapshot::empty(now());
        snapshot.trails.insert(
            "team-b".into(),
            Arc::new(Trail {
                records: vec![record(1, 5, Effect::Deny, &["TOKEN_MISSING"])],
                ..Trail::default()
            }),
        );
        let html = as_team_a_viewer(render, &snapshot);
        assert!(html.contains("No denial recorded."));
    }
}
