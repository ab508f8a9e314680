//! AIBudget controller: keeps each AIBudget's spend in status, and rebuilds
//! the bundles of its namespace when one changes (docs/sidecar.md, "Budget
//! scopes").
//!
//! Spend is summed from the sidecars' usage reports of the AIBudget's own
//! namespace (the only namespace whose requests it covers), under its owner id
//! (`AIBudget:<ns>/<name>`, or `AIBudget:<ns>/<name>@<token>` per token), with
//! what replicas hold of it from the ledgers. Status is recomputed every
//! [`REFRESH`] and written only when it changed.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::api::{Api, Patch};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use policybind_crds::ai_budget::{self, OWNER_PREFIX};
use policybind_crds::conditions::{self, reasons, types};
use policybind_crds::{AIBudget, AIBudgetStatus, API_VERSION};
use policybind_engine::PolicySet;
use policybind_engine::bundle::{Bundle, BundleBudget};
use serde_json::json;

use crate::context::{Context, key_of, to_jiff};
use crate::controllers::{Tasks, Wiring, drain};
use crate::error::{Error, Result};
use crate::stores::{bump, watch};
use crate::usage::{CountedReport, owners_usage};

const CONTROLLER: &str = "ai_budget";
/// How often spend in status is brought up to date.
pub const REFRESH: Duration = Duration::from_secs(15);

/// The status an AIBudget should have now.
pub fn desired_status(
    budget: &AIBudget,
    reports: &[Arc<CountedReport>],
    ledgers: &crate::ledger::LedgerView,
    now: DateTime<Utc>,
) -> AIBudgetStatus {
    let namespace = budget.namespace().unwrap_or_default();
    let name = budget.name_any();
    let shared = ai_budget::owner_id(&namespace, &name);
    let per_token = format!("{shared}@");
    let here = reports
        .iter()
        .map(|r| r.as_ref())
        .filter(|r| r.namespace == namespace);
    let (usage, tokens) = if budget.spec.per_token {
        let usage = owners_usage(
            &budget.spec.budgets,
            here.clone(),
            |o| o.starts_with(&per_token),
            now,
        );
        let mut charged: Vec<&str> = here
            .flat_map(|r| r.report.0.keys())
            .filter(|o| o.starts_with(&per_token))
            .map(String::as_str)
            .collect();
        charged.sort_unstable();
        charged.dedup();
        (
            usage,
            Some(u32::try_from(charged.len()).unwrap_or(u32::MAX)),
        )
    } else {
        let usage = owners_usage(&budget.spec.budgets, here, |o| o == shared, now);
        (ledgers.with_holdings(&shared, usage), None)
    };
    let mut conditions = budget
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let (ready, reason, message) = match compile_check(budget) {
        Ok(()) => (
            true,
            reasons::COMPILED,
            format!(
                "in force for requests decided in namespace {namespace}{}",
                if budget.spec.per_token {
                    ", one copy per token"
                } else {
                    ""
                }
            ),
        ),
        Err(e) => (false, reasons::COMPILE_FAILED, e),
    };
    let generation = budget.meta().generation;
    conditions::set_condition(
        &mut conditions,
        conditions::condition(
            types::READY,
            ready,
            reason,
            message,
            generation,
            to_jiff(now),
        ),
    );
    AIBudgetStatus {
        observed_generation: generation,
        conditions,
        usage,
        tokens,
    }
}

/// Compiles the AIBudget alone: what the API server's schema cannot check
/// (time zones, selector operators) shows in its Ready condition.
fn compile_check(budget: &AIBudget) -> std::result::Result<(), String> {
    let mut bundle = Bundle::default();
    bundle.budgets.push(BundleBudget::from_budget(budget));
    PolicySet::compile(&bundle)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn reconcile(budget: Arc<AIBudget>, ctx: Arc<Context>) -> Result<Action> {
    let now = ctx.now();
    let reports = crate::controllers::access_token::usage_reports(&ctx);
    let status = desired_status(&budget, &reports, &ctx.state.ledgers, now);
    if budget.status.as_ref() != Some(&status) {
        let namespace = budget.namespace().unwrap_or_default();
        let api: Api<AIBudget> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({
            "apiVersion": API_VERSION,
            "kind": AIBudget::kind(&()),
            "status": status,
        });
        api.patch_status(
            &budget.name_any(),
            &Context::apply_params(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    ctx.succeeded(&key_of(budget.as_ref()));
    Ok(Action::requeue(REFRESH))
}

fn error_policy(budget: Arc<AIBudget>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.backoff(CONTROLLER, &key_of(budget.as_ref()), error)
}

/// Whether an owner id in a report or demand is an AIBudget's.
pub fn is_budget_owner(owner: &str) -> bool {
    owner.starts_with(OWNER_PREFIX)
}

/// Watches AIBudgets: a change rebuilds the bundles; the controller keeps status.
pub fn run(w: &Wiring, budgets: Writer<AIBudget>) -> Tasks {
    let ctx = &w.ctx;
    let stream = watch(
        watcher::watcher(Api::<AIBudget>::all(w.client.clone()), Default::default()),
        budgets,
        bump(ctx),
    )
    .applied_objects();
    let controller = Controller::for_stream(stream, ctx.stores.budgets.clone())
        .with_config(w.config(Some(Duration::from_millis(100))))
        .graceful_shutdown_on(w.graceful())
        .run(super::once_listed(reconcile), error_policy, ctx.clone());
    Tasks {
        main: vec![drain(controller)],
        side: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::UsageReport;
    use policybind_crds::BudgetPeriod;
    use policybind_crds::access_token::PeriodUsage;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn aibudget(spec: serde_json::Value) -> AIBudget {
        let mut budget = AIBudget::new("eng", serde_json::from_value(spec).unwrap());
        budget.metadata.namespace = Some("team-a".into());
        budget.metadata.generation = Some(3);
        budget
    }

    fn report(namespace: &str, entries: &[(&str, f64)]) -> Arc<CountedReport> {
        let day = at("2026-11-22T00:00:00Z");
        Arc::new(CountedReport {
            namespace: namespace.into(),
            report: UsageReport(
                entries
                    .iter()
                    .map(|(owner, usd)| {
                        let entry = PeriodUsage::settled(BudgetPeriod::Day, day, *usd, 10, 1);
                        (owner.to_string(), vec![entry])
                    })
                    .collect(),
            ),
        })
    }

    #[test]
    fn status_sums_the_spend_of_its_own_namespace_under_its_owner_id() {
        let now = at("2026-11-22T15:00:00Z");
        let budget = aibudget(serde_json::json!({"scope": "Team", "team": "eng",
            "budgets": [{"period": "Day", "maxCostUsd": 2.0}]}));
        let reports = vec![
            report(
                "team-a",
                &[("AIBudget:team-a/eng", 0.5), ("team-a/bot", 9.0)],
            ),
            report("team-a", &[("AIBudget:team-a/eng", 0.25)]),
            // A report from another namespace counts for nothing.
            report("team-b", &[("AIBudget:team-a/eng", 100.0)]),
        ];
        let status = desired_status(&budget, &reports, &Default::default(), now);
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.usage.len(), 1);
        assert_eq!(status.usage[0].cost_usd, 0.75);
        assert_eq!(status.usage[0].requests, 2);
        assert_eq!(status.usage[0].resets_at, Some(at("2026-11-23T00:00:00Z")));
        assert_eq!(status.tokens, None);
        assert!(conditions::is_true(&status.conditions, types::READY));
    }

    #[test]
    fn a_per_token_budget_shows_the_sum_and_how_many_tokens_were_charged() {
        let now = at("2026-11-22T15:00:00Z");
        let budget = aibudget(serde_json::json!({"scope": "Namespace", "perToken": true,
            "budgets": [{"period": "Day", "maxCostUsd": 1.0, "timeZone": "Mars/Olympus"}]}));
        let reports = vec![
            report("team-a", &[("AIBudget:team-a/eng@team-a/bot", 0.5)]),
            report("team-a", &[("AIBudget:team-a/eng@team-b/other", 0.25)]),
            report("team-a", &[("AIBudget:team-a/eng@team-a/bot", 0.125)]),
        ];
        let status = desired_status(&budget, &reports, &Default::default(), now);
        assert_eq!(status.usage[0].cost_usd, 0.875);
        assert_eq!(status.tokens, Some(2));
        // An unknown time zone: not Ready, and the reason says so.
        let ready = conditions::find(&status.conditions, types::READY).unwrap();
        assert_eq!(ready.status, "False");
        assert!(ready.message.contains("timeZone"), "{}", ready.message);
    }
}
