//! Usage reports: how sidecars tell the operator what each token spent.
//!
//! Every sidecar pod writes one ConfigMap labelled [`labels::USAGE`]`=true` in its
//! namespace, with data key [`keys::USAGE`] holding a [`UsageReport`] as JSON:
//!
//! ```json
//! { "team-a/chat-bot": [ { "period": "Day", "periodStart": "2026-11-22T00:00:00Z",
//!                          "costUsd": 1.25, "tokens": 48000, "requests": 31 } ] }
//! ```
//!
//! Keys are token ids (`namespace/name`); values are that pod's settled usage per
//! budget period, each with the start of the period it counts. The operator sums
//! every counted report's entries for a token's *current* periods into
//! `AccessToken.status.usage` and marks the token exhausted in every bundle when a
//! current-period budget is used up. Entries of past periods are ignored, so a
//! sidecar need not clear them at a period boundary.
//!
//! Any pod with a service account may try to write such a ConfigMap, so a report
//! counts only when it could have come from a sidecar that serves the token:
//!
//! - it sits in an enforced namespace (where sidecars run),
//! - it carries [`labels::WRITER_POD`] and is named after that pod
//!   ([`wire::usage_report_name`]); the chart's admission policy lets a service
//!   account write only the report of the pod its token is bound to,
//! - and its entries count only for tokens valid in its namespace
//!   ([`policybind_engine::scope::spec_valid_in`]).
//!
//! So a workload can inflate the usage of the tokens its own namespace's
//! sidecars serve (which its own sidecar could do anyway), never another team's.

use policybind_crds::wire::{self, keys, labels};
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ConfigMap;
use policybind_crds::access_token::PeriodUsage;
use policybind_crds::{AccessTokenSpec, Budget, BudgetPeriod};
use serde::{Deserialize, Serialize};

/// One sidecar's report: token id (`namespace/name`) to usage per period.
/// The entry type is the same as `AccessToken.status.usage`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UsageReport(pub BTreeMap<String, Vec<PeriodUsage>>);

impl UsageReport {
    /// Reads the report from a usage ConfigMap. A malformed report is skipped
    /// (logged) rather than failing every token: one broken sidecar must not
    /// stall the accounting of all others.
    pub fn from_config_map(config_map: &ConfigMap) -> Option<UsageReport> {
        let json = config_map.data.as_ref()?.get(keys::USAGE)?;
        match serde_json::from_str(json) {
            Ok(report) => Some(report),
            Err(error) => {
                tracing::warn!(
                    configmap = config_map.metadata.name.as_deref().unwrap_or(""),
                    namespace = config_map.metadata.namespace.as_deref().unwrap_or(""),
                    %error,
                    "ignoring malformed usage report"
                );
                None
            }
        }
    }
}

fn budget_time_zone(budgets: &[Budget], period: BudgetPeriod) -> chrono_tz::Tz {
    budgets
        .iter()
        .find(|b| b.period == period)
        .and_then(|b| policybind_engine::schedule::parse_time_zone(&b.time_zone).ok())
        .unwrap_or(chrono_tz::UTC)
}

/// Start of the current period of `period` for a token: in the time zone of the
/// token's budget for that period, UTC when it has none.
pub fn current_period_start(
    spec: &AccessTokenSpec,
    period: BudgetPeriod,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    period_start_of(&spec.budgets, period, now)
}

/// Start of the current period of `period` in the time zone of the budget of
/// that period among `budgets` (UTC without one). For a rolling window: the
/// start of the oldest bucket still counted
/// ([`policybind_engine::schedule::counting_start`]).
pub fn period_start_of(
    budgets: &[Budget],
    period: BudgetPeriod,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    policybind_engine::schedule::counting_start(
        period,
        budget_time_zone(budgets, period),
        is_rolling(budgets, period),
        now,
    )
}

/// Whether the budget of `period` among `budgets` is a rolling window.
pub fn is_rolling(budgets: &[Budget], period: BudgetPeriod) -> bool {
    budgets
        .iter()
        .any(|b| b.period == period && b.window == policybind_crds::BudgetWindow::Rolling)
}

/// End of the current period (when an exhausted budget resets).
pub fn current_period_end(
    spec: &AccessTokenSpec,
    period: BudgetPeriod,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    period_end_of(&spec.budgets, period, now)
}

/// End of the current period of `period` among `budgets`; for a rolling
/// window, the end of the current bucket, when the oldest counted spend next
/// leaves the window.
pub fn period_end_of(
    budgets: &[Budget],
    period: BudgetPeriod,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    policybind_engine::schedule::tally_end(
        period,
        budget_time_zone(budgets, period),
        is_rolling(budgets, period),
        now,
    )
}

/// Sums the entries for the token `token_namespace/token_name` that belong to the
/// token's current periods, from the reports of namespaces where the token is
/// valid (a report from anywhere else counts for nothing). Periods with a budget
/// are always listed (zero when nothing was reported), so `status.usage` shows
/// every budget.
pub fn current_usage<'a>(
    token_namespace: &str,
    token_name: &str,
    spec: &AccessTokenSpec,
    reports: impl IntoIterator<Item = &'a CountedReport>,
    now: DateTime<Utc>,
) -> Vec<PeriodUsage> {
    let token_id = format!("{token_namespace}/{token_name}");
    let counted = reports
        .into_iter()
        .filter(|r| policybind_engine::scope::spec_valid_in(token_namespace, spec, &r.namespace));
    owners_usage(&spec.budgets, counted, |owner| owner == token_id, now)
}

/// Sums the entries of every owner `owns` accepts that belong to the current
/// periods of `budgets`, over `reports` (already filtered to the namespaces
/// that count). Periods with a budget are always listed. Costs are summed in
/// nano-dollars: the order of reports (cache order) must not change the
/// result, or an unchanged cluster would produce a different status and a
/// needless write.
pub fn owners_usage<'a>(
    budgets: &[Budget],
    reports: impl IntoIterator<Item = &'a CountedReport>,
    owns: impl Fn(&str) -> bool,
    now: DateTime<Utc>,
) -> Vec<PeriodUsage> {
    let periods = [BudgetPeriod::Day, BudgetPeriod::Week, BudgetPeriod::Month];
    let starts: Vec<DateTime<Utc>> = periods
        .iter()
        .map(|&p| period_start_of(budgets, p, now))
        .collect();
    // A rolling window is reported bucket by bucket: every bucket from the
    // oldest counted to the current one is summed.
    let rolling: Vec<Option<DateTime<Utc>>> = periods
        .iter()
        .map(|&p| is_rolling(budgets, p).then(|| policybind_engine::schedule::bucket_start(p, now)))
        .collect();
    // (nano-dollars, tokens, requests, seen)
    let mut sums = [(0u128, 0u64, 0u64, false); 3];
    for counted in reports {
        for (owner, entries) in &counted.report.0 {
            if !owns(owner) {
                continue;
            }
            for entry in entries {
                let i = periods.iter().position(|&p| p == entry.period).unwrap_or(0);
                let counts = match rolling[i] {
                    Some(current) => {
                        entry.period_start >= starts[i] && entry.period_start <= current
                    }
                    None => entry.period_start == starts[i],
                };
                if !counts {
                    continue;
                }
                let sum = &mut sums[i];
                // A report is written by the workload's pod too: any number may
                // be in it (1e308, negative). Clamped, then summed without wrapping.
                let nanos =
                    (policybind_crds::common::clamp_usd(entry.cost_usd) * 1e9).round() as u128;
                sum.0 = sum.0.saturating_add(nanos);
                sum.1 = sum.1.saturating_add(entry.tokens);
                sum.2 = sum.2.saturating_add(entry.requests);
                sum.3 = true;
            }
        }
    }
    periods
        .iter()
        .enumerate()
        .filter(|(i, p)| sums[*i].3 || budgets.iter().any(|b| b.period == **p))
        .map(|(i, &period)| PeriodUsage {
            resets_at: Some(period_end_of(budgets, period, now)),
            ..PeriodUsage::settled(
                period,
                starts[i],
                policybind_crds::common::clamp_usd(sums[i].0 as f64 / 1e9),
                sums[i].1,
                sums[i].2,
            )
        })
        .collect()
}

/// A report the operator counts, with the namespace it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct CountedReport {
    pub namespace: String,
    pub report: UsageReport,
}

/// Whether a usage ConfigMap is named after the pod its label names: the only
/// name under which the admission policy lets that pod's sidecar write it.
pub fn named_after_its_pod(config_map: &ConfigMap) -> bool {
    let pod = config_map
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::WRITER_POD));
    match (pod, config_map.metadata.name.as_deref()) {
        (Some(pod), Some(name)) => !pod.is_empty() && wire::usage_report_name(pod) == name,
        _ => false,
    }
}

/// The first period whose budget is used up, if any.
pub fn exhausted_period(spec: &AccessTokenSpec, usage: &[PeriodUsage]) -> Option<BudgetPeriod> {
    usage.iter().find_map(|u| {
        let budget = spec.budget(u.period)?;
        let over_cost = budget.max_cost_usd.is_some_and(|max| u.cost_usd >= max);
        let over_tokens = budget.max_tokens.is_some_and(|max| u.tokens >= max);
        (over_cost || over_tokens).then_some(u.period)
    })
}

/// Whether a token-count limit of a period is used up (cost limits aside):
/// when only cost limits are, models priced at zero stay usable.
pub fn tokens_exhausted(spec: &AccessTokenSpec, usage: &[PeriodUsage]) -> bool {
    usage.iter().any(|u| {
        spec.budget(u.period)
            .and_then(|b| b.max_tokens)
            .is_some_and(|max| u.tokens >= max)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::token;
    use policybind_crds::Budget;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn entry(period: BudgetPeriod, start: &str, cost: f64, tokens: u64) -> PeriodUsage {
        PeriodUsage::settled(period, at(start), cost, tokens, 1)
    }

    /// A report written in the token's own namespace, `team-a`.
    fn report(id: &str, entries: Vec<PeriodUsage>) -> CountedReport {
        report_from("team-a", id, entries)
    }

    fn report_from(namespace: &str, id: &str, entries: Vec<PeriodUsage>) -> CountedReport {
        CountedReport {
            namespace: namespace.into(),
            report: UsageReport(BTreeMap::from([(id.to_string(), entries)])),
        }
    }

    fn day_budget(max_cost: f64) -> Budget {
        Budget {
            period: BudgetPeriod::Day,
            max_cost_usd: Some(max_cost),
            max_tokens: None,
            time_zone: "UTC".into(),
            window: Default::default(),
        }
    }

    #[test]
    fn hostile_amounts_in_reports_neither_wrap_nor_poison_the_sum() {
        let spec = token("team-a", "bot").budget(day_budget(10.0)).spec();
        let now = at("2026-11-22T15:00:00Z");
        let day = "2026-11-22T00:00:00Z";
        let reports: Vec<CountedReport> = [1e300, f64::MAX, -5.0, 1.5]
            .into_iter()
            .map(|cost| {
                report(
                    "team-a/bot",
                    vec![entry(BudgetPeriod::Day, day, cost, u64::MAX)],
                )
            })
            .collect();
        let usage = current_usage("team-a", "bot", &spec, &reports, now);
        // Two amounts clamped to the maximum, a negative one counted as zero.
        let expected = policybind_crds::common::MAX_USD;
        assert_eq!(usage[0].cost_usd, expected);
        assert_eq!(usage[0].tokens, u64::MAX, "saturated, not wrapped");
        assert_eq!(usage[0].requests, 4);
    }

    #[test]
    fn a_rolling_window_sums_the_buckets_of_the_last_day_from_every_sidecar() {
        let budget = policybind_crds::Budget {
            window: policybind_crds::BudgetWindow::Rolling,
            ..day_budget(1.0)
        };
        let spec = token("team-a", "bot").budget(budget).spec();
        let now = at("2026-11-22T15:20:00Z");
        let reports = [
            report(
                "team-a/bot",
                vec![
                    // Left the window (it counts from 2026-11-21T15:00).
                    entry(BudgetPeriod::Day, "2026-11-21T14:00:00Z", 5.0, 500),
                    entry(BudgetPeriod::Day, "2026-11-21T15:00:00Z", 0.25, 25),
                    entry(BudgetPeriod::Day, "2026-11-22T15:00:00Z", 0.5, 50),
                ],
            ),
            report(
                "team-a/bot",
                vec![entry(BudgetPeriod::Day, "2026-11-22T09:00:00Z", 0.3, 30)],
            ),
        ];
        let usage = current_usage("team-a", "bot", &spec, &reports, now);
        assert_eq!(usage.len(), 1);
        assert!((usage[0].cost_usd - 1.05).abs() < 1e-9, "{usage:?}");
        assert_eq!(usage[0].tokens, 105);
        assert_eq!(usage[0].period_start, at("2026-11-21T15:00:00Z"));
        // When the oldest counted bucket next leaves the window.
        assert_eq!(usage[0].resets_at, Some(at("2026-11-22T16:00:00Z")));
        assert_eq!(exhausted_period(&spec, &usage), Some(BudgetPeriod::Day));
    }

    #[test]
    fn report_json_matches_the_documented_format() {
        let json = r#"{"team-a/bot":[{"period":"Day","periodStart":"2026-11-22T00:00:00Z","costUsd":1.5,"tokens":10,"requests":2}]}"#;
        let parsed: UsageReport = serde_json::from_str(json).unwrap();
        assert_eq!(parsed.0["team-a/bot"][0].tokens, 10);
        assert_eq!(serde_json::to_string(&parsed).unwrap(), json);
    }

    #[test]
    fn reports_of_several_sidecars_add_up_for_the_current_period_only() {
        let spec = token("team-a", "bot").budget(day_budget(10.0)).spec();
        let now = at("2026-11-22T15:00:00Z");
        let reports = [
            report(
                "team-a/bot",
                vec![
                    entry(BudgetPeriod::Day, "2026-11-22T00:00:00Z", 1.1, 100),
                    entry(BudgetPeriod::Day, "2026-11-21T00:00:00Z", 50.0, 9999),
                ],
            ),
            report(
                "team-a/bot",
                vec![entry(BudgetPeriod::Day, "2026-11-22T00:00:00Z", 2.2, 200)],
            ),
            report(
                "team-a/other",
                vec![entry(BudgetPeriod::Day, "2026-11-22T00:00:00Z", 7.0, 7)],
            ),
        ];
        let usage = current_usage("team-a", "bot", &spec, &reports, now);
        assert_eq!(usage.len(), 1);
        assert!((usage[0].cost_usd - 3.3).abs() < 1e-9);
        assert_eq!(usage[0].tokens, 300);
        assert_eq!(usage[0].requests, 2);
        assert_eq!(exhausted_period(&spec, &usage), None);
    }

    #[test]
    fn sum_does_not_depend_on_report_order() {
        let spec = token("team-a", "bot").budget(day_budget(10.0)).spec();
        let now = at("2026-11-22T15:00:00Z");
        let costs = [0.1, 0.2, 0.3, 0.7, 1e-7, 3.3333];
        let reports: Vec<CountedReport> = costs
            .iter()
            .map(|&c| {
                report(
                    "team-a/bot",
                    vec![entry(BudgetPeriod::Day, "2026-11-22T00:00:00Z", c, 1)],
                )
            })
            .collect();
        let forward = current_usage("team-a", "bot", &spec, reports.iter(), now);
        let backward = current_usage("team-a", "bot", &spec, reports.iter().rev(), now);
        assert_eq!(forward, backward);
    }

    #[test]
    fn budget_used_up_in_the_current_period_is_exhausted() {
        let spec = token("team-a", "bot").budget(day_budget(3.0)).spec();
        let now = at("2026-11-22T15:00:00Z");
        let reports = [report(
            "team-a/bot",
            vec![entry(BudgetPeriod::Day, "2026-11-22T00:00:00Z", 3.0, 1)],
        )];
        let usage = current_usage("team-a", "bot", &spec, &reports, now);
        assert_eq!(exhausted_period(&spec, &usage), Some(BudgetPeriod::Day));
    }

    #[test]
    fn budget_period_without_reports_shows_zero_usage() {
        let spec = token("team-a", "bot").budget(day_budget(3.0)).spec();
        let usage = current_usage("team-a", "bot", &spec, &[], at("2026-11-22T15:00:00Z"));
        assert_eq!(
            usage,
            vec![entry(BudgetPeriod::Day, "2026-11-22T00:00:00Z", 0.0, 0)]
                .into_iter()
                .map(|mut u| {
                    u.requests = 0;
                    u.resets_at = Some(at("2026-11-23T00:00:00Z"));
                    u
                })
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_report_from_a_namespace_where_the_token_is_not_valid_counts_for_nothing() {
        let spec = token("team-a", "bot").budget(day_budget(3.0)).spec();
        let now = at("2026-11-22T15:00:00Z");
        let day = |cost| vec![entry(BudgetPeriod::Day, "2026-11-22T00:00:00Z", cost, 1)];
        // A workload of team-b forges a report that spends team-a's budget.
        let forged = report_from("team-b", "team-a/bot", day(3.0));
        let usage = current_usage("team-a", "bot", &spec, [&forged], now);
        assert_eq!(usage[0].cost_usd, 0.0);
        assert_eq!(exhausted_period(&spec, &usage), None);
        // Where the token's spec names team-b, team-b's sidecars serve it: counted.
        let mut shared = token("team-a", "bot").budget(day_budget(3.0)).spec();
        shared.additional_namespaces = vec!["team-b".into()];
        let usage = current_usage("team-a", "bot", &shared, [&forged], now);
        assert_eq!(exhausted_period(&shared, &usage), Some(BudgetPeriod::Day));
    }

    #[test]
    fn a_report_counts_only_under_the_name_its_pod_label_gives() {
        let config_map = |name: &str, pod: Option<&str>| {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(name.into());
            let mut l = BTreeMap::from([(labels::USAGE.to_string(), "true".to_string())]);
            if let Some(pod) = pod {
                l.insert(labels::WRITER_POD.into(), pod.into());
            }
            cm.metadata.labels = Some(l);
            cm
        };
        assert!(named_after_its_pod(&config_map(
            "policybind-usage-bot-1",
            Some("bot-1")
        )));
        // Another pod's name under this pod's label, or no label at all.
        assert!(!named_after_its_pod(&config_map(
            "policybind-usage-victim",
            Some("bot-1")
        )));
        assert!(!named_after_its_pod(&config_map(
            "policybind-usage-bot-1",
            None
        )));
        assert!(!named_after_its_pod(&config_map(
            "policybind-usage-",
            Some("")
        )));
    }

    #[test]
    fn only_spent_token_limits_count_as_tokens_exhausted() {
        let mut spec = token("team-a", "bot").spec();
        spec.budgets = vec![Budget {
            period: BudgetPeriod::Day,
            max_cost_usd: Some(1.0),
            max_tokens: Some(1_000),
            time_zone: "UTC".into(),
            window: Default::default(),
        }];
        let cost_spent = [entry(BudgetPeriod::Day, "2026-11-23T00:00:00Z", 1.5, 10)];
        assert!(exhausted_period(&spec, &cost_spent).is_some());
        assert!(!tokens_exhausted(&spec, &cost_spent));
        let tokens_spent = [entry(BudgetPeriod::Day, "2026-11-23T00:00:00Z", 0.1, 1_000)];
        assert!(tokens_exhausted(&spec, &tokens_spent));
    }
}
