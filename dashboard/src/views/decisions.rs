//! Decisions over time, by effect (stacked columns) and by rationale code
//! (bars), from the audit records of the namespaces the viewer may see.
use std::collections::BTreeMap;

use chrono::{DateTime, Duration, DurationRound, Utc};
use policybind_crds::Effect;

use super::Context;
use crate::html::{escape, pill, table};
use crate::svg::{Series, horizontal_bars, stacked_columns};

/// Columns in the chart.
const BUCKETS: i64 = 24;
/// The longest window shown.
const WINDOW_HOURS: i64 = 24;
/// Bucket widths to choose from, so labels read well.
const STEPS_MINUTES: &[i64] = &[1, 2, 5, 10, 15, 30, 60];

/// Effects in stacking order, with their colours.
pub const EFFECTS: &[(Effect, &str)] = &[
    (Effect::Allow, "#2f9e55"),
    (Effect::Redact, "#4b7bd6"),
    (Effect::Degrade, "#8a63c9"),
    (Effect::RequireApproval, "#d98e04"),
    (Effect::Deny, "#c62d3f"),
];

/// The chart's start and bucket width: the last 24 hours, or less when the
/// trail is younger, in at most 24 columns of a readable width.
pub fn window(
    first_record: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, Duration) {
    let earliest = now - Duration::hours(WINDOW_HOURS);
    let start = first_record.map_or(earliest, |t| t.max(earliest));
    let span_minutes = (now - start).num_minutes().max(1);
    let step_minutes = STEPS_MINUTES
        .iter()
        .copied()
        .find(|step| step * BUCKETS >= span_minutes)
        .unwrap_or(60);
    let step = Duration::minutes(step_minutes);
    let aligned_end = now.duration_trunc(step).unwrap_or(now) + step;
    (aligned_end - step * BUCKETS as i32, step)
}

pub fn render(context: &Context<'_>) -> String {
    let first = context
        .records()
        .filter(|(_, r)| r.effect.is_some())
        .map(|(_, r)| r.time.get())
        .min();
    let (start, step) = window(first, context.now);
    let mut counts: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    let mut codes: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_effect: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (_, record) in context.records() {
        let at = record.time.get();
        if at < start || at > context.now + step {
            continue;
        }
        let Some(effect) = record.effect else {
            continue;
        };
        let bucket = ((at - start).num_seconds() / step.num_seconds().max(1)) as usize;
        let series = EFFECTS.iter().position(|(e, _)| *e == effect).unwrap_or(0);
        *counts
            .entry((bucket.min(BUCKETS as usize - 1), series))
            .or_default() += 1;
        *by_effect.entry(effect.as_str()).or_default() += 1;
        for code in &record.codes {
            *codes.entry(code.as_str()).or_default() += 1;
        }
    }
    let labels: Vec<String> = (0..BUCKETS)
        .map(|i| (start + step * i as i32).format("%H:%M").to_string())
        .collect();
    let series: Vec<Series<'_>> = EFFECTS
        .iter()
        .enumerate()
        .map(|(series, (effect, color))| Series {
            label: effect.as_str(),
            color,
            values: (0..BUCKETS as usize)
                .map(|i| counts.get(&(i, series)).copied().unwrap_or(0))
                .collect(),
        })
        .collect();
    let total: u64 = by_effect.values().sum();
    let mut out = format!(
        "<p>{total} decisions from {} to {} (UTC), {} minute(s) per column.</p>",
        start.format("%Y-%m-%d %H:%M"),
        context.now.format("%H:%M"),
        step.num_minutes()
    );
    out.push_str(&stacked_columns(
        "Decisions over time by effect",
        &labels,
        &series,
    ));
    let effect_rows: Vec<Vec<String>> = by_effect
        .iter()
        .map(|(effect, count)| vec![pill(effect, effect), count.to_string()])
        .collect();
    out.push_str("<h2>By effect</h2>");
    out.push_str(&table(
        &["Effect", "Decisions"],
        &effect_rows,
        "No decision in this window.",
    ));
    let mut code_rows: Vec<(String, u64)> = codes
        .into_iter()
        .map(|(code, count)| (code.to_string(), count))
        .collect();
    code_rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    code_rows.truncate(20);
    out.push_str("<h2>By rationale code</h2>");
    if code_rows.is_empty() {
        out.push_str("<p class=\"note\">No rationale code in this window.</p>");
    } else {
        out.push_str(&horizontal_bars(
            "Decisions by rationale code",
            &code_rows,
            "#3b5284",
        ));
        out.push_str(&format!(
            "<p class=\"note\">The {} most frequent codes; their meanings are on the Denials page and in the README's table of codes. {}</p>",
            code_rows.len(),
            escape("")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::data::{Snapshot, Trail};
    use crate::views::testing::{as_team_a_viewer, now, record};

    #[test]
    fn a_young_trail_gets_minute_columns_ending_now() {
        let (start, step) = window(Some(now() - Duration::minutes(10)), now());
        assert_eq!(step, Duration::minutes(1));
        assert_eq!(start, now() - Duration::minutes(23));
        let (start, step) = window(None, now());
        assert_eq!(step, Duration::minutes(60));
        assert_eq!(start, now() - Duration::hours(23));
    }

    #[test]
    fn columns_stack_effects_and_codes_are_counted_for_visible_namespaces_only() {
        let mut snapshot = Snapshot::empty(now());
        snapshot.trails.insert(
            "team-a".into(),
            Arc::new(Trail {
                records: vec![
                    record(1, 5, Effect::Allow, &["POLICY_ALLOW"]),
                    record(2, 5, Effect::Allow, &["POLICY_ALLOW"]),
                    record(3, 4, Effect::Deny, &["TOKEN_MISSING"]),
                ],
                ..Trail::default()
            }),
        );
        snapshot.trails.insert(
            "team-b".into(),
            Arc::new(Trail {
                records: vec![record(1, 3, Effect::Deny, &["SECRET_CODE_OF_B"])],
                ..Trail::default()
            }),
        );
        let html = as_team_a_viewer(render, &snapshot);
        assert!(html.contains("<p>3 decisions from"), "{html}");
        assert!(html.contains("data-series=\"Allow\" data-value=\"2\""));
        assert!(html.contains("data-series=\"Deny\" data-value=\"1\""));
        assert!(html.contains("TOKEN_MISSING"));
        assert!(!html.contains("SECRET_CODE_OF_B"));
    }
}
