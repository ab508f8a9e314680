//! Budget scopes: what a request is charged to (docs/sidecar.md, "Budget scopes").
//!
//! A request is charged to its token's own budgets and rate limit, and to every
//! AIBudget of the request's namespace whose scope it falls in: a namespace, a
//! team, an application (the token's `policybind.io/application` label) or a
//! label-selected group of tokens. A per-token AIBudget gives each token in scope
//! its own copy of its limits for the periods (and rate limit) the token does not
//! set itself: a default budget.
//!
//! The engine only says *what* is charged; the enforcement point's ledger counts
//! and refuses, in the order given here (the token first), so the first scope
//! used up names the refusal.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use policybind_crds::ai_budget::{self, BudgetScope};
use policybind_crds::{RateLimit, wire};

use crate::codes;
use crate::compile::{CompiledBudget, PolicySet};

/// An AIBudget, compiled.
#[derive(Debug, Clone)]
pub(crate) struct CompiledScope {
    pub namespace: String,
    pub name: String,
    pub scope: BudgetScope,
    pub team: Option<String>,
    pub application: Option<String>,
    pub selector: Option<LabelSelector>,
    pub per_token: bool,
    pub budgets: Vec<CompiledBudget>,
    pub rate: Option<RateLimit>,
}

/// Which kind of owner a charge is made to; names the refusal codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeKind {
    /// The token's own limits, or a per-token AIBudget's copy of them.
    Token,
    /// A shared AIBudget of this scope.
    Scope(BudgetScope),
}

impl ChargeKind {
    /// Code of a refusal because a budget is used up.
    pub fn budget_code(self) -> &'static str {
        match self {
            ChargeKind::Token => codes::BUDGET_EXCEEDED,
            ChargeKind::Scope(BudgetScope::Namespace) => codes::NAMESPACE_BUDGET_EXCEEDED,
            ChargeKind::Scope(BudgetScope::Team) => codes::TEAM_BUDGET_EXCEEDED,
            ChargeKind::Scope(BudgetScope::Application) => codes::APPLICATION_BUDGET_EXCEEDED,
            ChargeKind::Scope(BudgetScope::Tokens) => codes::GROUP_BUDGET_EXCEEDED,
        }
    }

    /// Code of a refusal because a rate limit is used up.
    pub fn rate_code(self) -> &'static str {
        match self {
            ChargeKind::Token => codes::RATE_LIMITED,
            ChargeKind::Scope(BudgetScope::Namespace) => codes::NAMESPACE_RATE_LIMITED,
            ChargeKind::Scope(BudgetScope::Team) => codes::TEAM_RATE_LIMITED,
            ChargeKind::Scope(BudgetScope::Application) => codes::APPLICATION_RATE_LIMITED,
            ChargeKind::Scope(BudgetScope::Tokens) => codes::GROUP_RATE_LIMITED,
        }
    }
}

/// One owner a request is charged to, with the limits that apply.
#[derive(Debug, Clone)]
pub struct Charge<'a> {
    /// Owner id in ledgers and usage reports: the token's `namespace/name`, or
    /// [`ai_budget::owner_id`] / [`ai_budget::per_token_owner_id`].
    pub owner: String,
    pub kind: ChargeKind,
    /// What the charge is, for messages: `token team-a/bot`, `AIBudget team-a/eng (Team)`.
    pub label: String,
    pub budgets: Cow<'a, [CompiledBudget]>,
    pub rate: Option<&'a RateLimit>,
}

impl Charge<'_> {
    fn is_empty(&self) -> bool {
        self.budgets.is_empty() && self.rate.is_none()
    }
}

impl PolicySet {
    /// Everything a request of `token_id` decided in `namespace` is charged to:
    /// the token first, then per-token defaults, then shared AIBudgets in name
    /// order. Owners with no limit are left out; an unknown token is charged to
    /// nothing (it was refused before).
    pub fn charges(&self, token_id: &str, namespace: &str) -> Vec<Charge<'_>> {
        let Some(&index) = self.token_by_id.get(token_id) else {
            return vec![];
        };
        let token = &self.tokens[index];
        let own = Charge {
            owner: token_id.to_string(),
            kind: ChargeKind::Token,
            label: format!("token {token_id}"),
            budgets: Cow::Borrowed(&token.budgets),
            rate: token.rate_limit.as_ref(),
        };
        let mut charges = vec![];
        let mut shared = vec![];
        for scope in self.scopes.iter().filter(|s| s.namespace == namespace) {
            if !scope.covers(&token.team, &token.labels) {
                continue;
            }
            let id = format!("{}/{}", scope.namespace, scope.name);
            if scope.per_token {
                let charge = scope.default_for(token_id, &own, &id);
                if !charge.is_empty() {
                    charges.push(charge);
                }
            } else {
                shared.push(Charge {
                    owner: ai_budget::owner_id(&scope.namespace, &scope.name),
                    kind: ChargeKind::Scope(scope.scope),
                    label: format!("AIBudget {id} ({})", scope.scope.as_str()),
                    budgets: Cow::Borrowed(&scope.budgets),
                    rate: scope.rate.as_ref(),
                });
            }
        }
        let mut all = Vec::with_capacity(1 + charges.len() + shared.len());
        if !own.is_empty() {
            all.push(own);
        }
        all.extend(charges);
        all.extend(shared);
        all
    }
}

impl CompiledScope {
    /// Whether a token of `team` with `labels` falls in this scope (the
    /// namespace was checked by the caller).
    fn covers(&self, team: &str, labels: &BTreeMap<String, String>) -> bool {
        let in_scope = match self.scope {
            BudgetScope::Namespace | BudgetScope::Tokens => true,
            BudgetScope::Team => self.team.as_deref() == Some(team),
            BudgetScope::Application => {
                labels.get(wire::labels::APPLICATION).map(String::as_str)
                    == self.application.as_deref()
            }
        };
        in_scope
            && self
                .selector
                .as_ref()
                .is_none_or(|s| crate::selector::matches(s, labels))
    }

    /// A token's own copy of a per-token AIBudget: the budgets of periods the
    /// token does not set, and the rate limit if the token sets none.
    fn default_for<'a>(&'a self, token_id: &str, own: &Charge<'a>, id: &str) -> Charge<'a> {
        let budgets: Vec<CompiledBudget> = self
            .budgets
            .iter()
            .filter(|b| !own.budgets.iter().any(|o| o.period == b.period))
            .cloned()
            .collect();
        Charge {
            owner: ai_budget::per_token_owner_id(&self.namespace, &self.name, token_id),
            kind: ChargeKind::Token,
            label: format!("AIBudget {id} (default for token {token_id})"),
            budgets: Cow::Owned(budgets),
            rate: if own.rate.is_none() {
                self.rate.as_ref()
            } else {
                None
            },
        }
    }
}

/// Compiles every AIBudget; a problem is an error of the whole set, as for tokens.
pub(crate) fn compile_scopes(
    budgets: &[crate::bundle::BundleBudget],
    errors: &mut crate::compile::Errors,
) -> Vec<CompiledScope> {
    let mut scopes = vec![];
    for budget in budgets {
        let resource = format!("AIBudget {}", budget.id());
        let before = errors.list.len();
        let spec = &budget.spec;
        let compiled = crate::compile::compile_budgets(&spec.budgets, &resource, errors);
        let required = match spec.scope {
            BudgetScope::Team => spec.team.is_none().then_some("spec.team"),
            BudgetScope::Application => spec.application.is_none().then_some("spec.application"),
            BudgetScope::Tokens => spec
                .token_selector
                .is_none()
                .then_some("spec.tokenSelector"),
            BudgetScope::Namespace => None,
        };
        if let Some(field) = required {
            let reason = format!("scope {} needs {field}", spec.scope.as_str());
            errors.push(&resource, None, field.into(), reason);
        }
        if let Some(Err(reason)) = spec.token_selector.as_ref().map(crate::selector::validate) {
            errors.push(&resource, None, "spec.tokenSelector".into(), reason);
        }
        if spec.budgets.is_empty() && spec.rate_limit.is_none() {
            let reason = "an AIBudget needs budgets or a rateLimit";
            errors.push(&resource, None, "spec".into(), reason);
        }
        for (i, b) in spec.budgets.iter().enumerate() {
            if spec.budgets[..i].iter().any(|a| a.period == b.period) {
                let reason = format!("a second {} budget; one per period", b.period.as_str());
                errors.push(&resource, None, format!("spec.budgets[{i}]"), reason);
            }
        }
        if errors.list.len() > before {
            continue;
        }
        scopes.push(CompiledScope {
            namespace: budget.namespace.clone(),
            name: budget.name.clone(),
            scope: spec.scope,
            team: spec.team.clone(),
            application: spec.application.clone(),
            selector: spec.token_selector.clone(),
            per_token: spec.per_token,
            budgets: compiled,
            rate: spec.rate_limit.clone(),
        });
    }
    scopes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    scopes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{Bundle, BundleBudget, BundleToken};
    use policybind_crds::AIBudgetSpec;
    use serde_json::json;

    fn token(
        ns: &str,
        name: &str,
        team: &str,
        labels: &[(&str, &str)],
        spec: serde_json::Value,
    ) -> BundleToken {
        let mut base = json!({
            "subject": {"kind": "User", "name": name}, "team": team, "allowedModels": ["*"],
        });
        base.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        BundleToken {
            namespace: ns.into(),
            name: name.into(),
            spec: serde_json::from_value(base).unwrap(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            hashes: vec![],
            exhausted: false,
            exhausted_cost_only: false,
        }
    }

    fn budget(ns: &str, name: &str, spec: serde_json::Value) -> BundleBudget {
        let spec: AIBudgetSpec = serde_json::from_value(spec).unwrap();
        BundleBudget {
            namespace: ns.into(),
            name: name.into(),
            spec,
        }
    }

    fn set(tokens: Vec<BundleToken>, budgets: Vec<BundleBudget>) -> PolicySet {
        PolicySet::compile(&Bundle {
            tokens,
            budgets,
            ..Default::default()
        })
        .unwrap()
    }

    fn owners(set: &PolicySet, token: &str, ns: &str) -> Vec<(String, ChargeKind)> {
        set.charges(token, ns)
            .into_iter()
            .map(|c| (c.owner, c.kind))
            .collect()
    }

    #[test]
    fn a_request_is_charged_to_its_token_then_defaults_then_every_scope_it_falls_in() {
        let day = json!([{"period": "Day", "maxCostUsd": 1.0}]);
        let set = set(
            vec![
                token(
                    "a",
                    "bot",
                    "eng",
                    &[("policybind.io/application", "shop"), ("tier", "trial")],
                    json!({"budgets": day}),
                ),
                token("a", "other", "ops", &[], json!({})),
            ],
            vec![
                budget("a", "ns", json!({"scope": "Namespace", "budgets": day})),
                budget(
                    "a",
                    "team",
                    json!({"scope": "Team", "team": "eng", "budgets": day}),
                ),
                budget(
                    "a",
                    "app",
                    json!({"scope": "Application", "application": "shop", "rateLimit": {"requestsPerMinute": 5}}),
                ),
                budget(
                    "a",
                    "trial",
                    json!({"scope": "Tokens", "tokenSelector": {"matchLabels": {"tier": "trial"}}, "perToken": true,
                    "budgets": [{"period": "Day", "maxCostUsd": 0.5}, {"period": "Month", "maxCostUsd": 3.0}]}),
                ),
                budget(
                    "b",
                    "elsewhere",
                    json!({"scope": "Namespace", "budgets": day}),
                ),
            ],
        );
        assert_eq!(
            owners(&set, "a/bot", "a"),
            vec![
                ("a/bot".into(), ChargeKind::Token),
                ("AIBudget:a/trial@a/bot".into(), ChargeKind::Token),
                (
                    "AIBudget:a/app".into(),
                    ChargeKind::Scope(BudgetScope::Application)
                ),
                (
                    "AIBudget:a/ns".into(),
                    ChargeKind::Scope(BudgetScope::Namespace)
                ),
                (
                    "AIBudget:a/team".into(),
                    ChargeKind::Scope(BudgetScope::Team)
                ),
            ]
        );
        // The default keeps only the Month budget: the token sets its own Day one.
        let charges = set.charges("a/bot", "a");
        let periods: Vec<_> = charges[1].budgets.iter().map(|b| b.period).collect();
        assert_eq!(periods, vec![policybind_crds::BudgetPeriod::Month]);
        // Another team, no labels, no limits of its own: only the namespace.
        assert_eq!(
            owners(&set, "a/other", "a"),
            vec![(
                "AIBudget:a/ns".into(),
                ChargeKind::Scope(BudgetScope::Namespace)
            )]
        );
        // In namespace b only b's AIBudgets count, whatever the token's home.
        assert_eq!(
            owners(&set, "a/bot", "b"),
            vec![
                ("a/bot".into(), ChargeKind::Token),
                (
                    "AIBudget:b/elsewhere".into(),
                    ChargeKind::Scope(BudgetScope::Namespace)
                ),
            ]
        );
        assert!(set.charges("a/unknown", "a").is_empty());
    }

    #[test]
    fn an_aibudget_that_cannot_be_enforced_does_not_compile() {
        let bundle = Bundle {
            budgets: vec![
                budget(
                    "a",
                    "no-team",
                    json!({"scope": "Team", "budgets": [{"period": "Day", "maxTokens": 5}]}),
                ),
                budget(
                    "a",
                    "bad-tz",
                    json!({"scope": "Namespace", "budgets": [{"period": "Day", "maxTokens": 5, "timeZone": "Mars/Olympus"}]}),
                ),
                budget("a", "empty", json!({"scope": "Namespace"})),
                budget(
                    "a",
                    "twice",
                    json!({"scope": "Namespace", "budgets": [{"period": "Day", "maxTokens": 5}, {"period": "Day", "maxTokens": 6}]}),
                ),
                budget(
                    "a",
                    "bad-op",
                    json!({"scope": "Tokens", "tokenSelector": {"matchExpressions": [{"key": "k", "operator": "In"}]}, "rateLimit": {"requestsPerMinute": 1}}),
                ),
            ],
            ..Default::default()
        };
        let errors = PolicySet::compile(&bundle)
            .expect_err("must not compile")
            .to_string();
        for expected in [
            "AIBudget a/no-team",
            "spec.team",
            "AIBudget a/bad-tz",
            "timeZone",
            "AIBudget a/empty",
            "needs budgets or a rateLimit",
            "AIBudget a/twice",
            "one per period",
            "AIBudget a/bad-op",
            "spec.tokenSelector",
        ] {
            assert!(errors.contains(expected), "{expected:?} not in {errors}");
        }
    }
}
