//! AIBudget (namespaced): budgets and rate limits for a team, a namespace, an
//! application or a group of tokens chosen by label selector, and default
//! budgets for tokens that set none (docs/sidecar.md, "Budget scopes").
//!
//! A token's own `spec.budgets` and `spec.rateLimit` cover that token. An
//! AIBudget covers requests decided in its namespace that fall in its scope; a
//! request is charged to its token and to every AIBudget it falls in, and is
//! refused by the first one that is used up, with that scope's code. Replicas
//! share an AIBudget through the same leases as a token's budget.
//!
//! It is its own kind rather than a field of AccessToken because it is owned by
//! whoever pays (a team lead, a namespace admin), not by whoever holds a token,
//! and because one object must cover many tokens, including tokens created
//! after it (selector-chosen defaults).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::access_token::PeriodUsage;
use crate::common::{Budget, RateLimit};

/// Budgets and rate limits shared by everything in a scope, or given to each token in it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policybind.io",
    version = "v1alpha1",
    kind = "AIBudget",
    doc = "AIBudget: cost, token and rate limits for a team, a namespace, an application or a label-selected group of AccessTokens, or default limits for each token of such a group. Requests decided in the AIBudget's namespace are charged to every AIBudget they fall in, as well as to their token's own budgets.",
    plural = "aibudgets",
    shortname = "aibudget",
    category = "policybind",
    namespaced,
    status = "AIBudgetStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Scope","type":"string","jsonPath":".spec.scope"}"#,
    printcolumn = r#"{"name":"Per-Token","type":"boolean","jsonPath":".spec.perToken"}"#,
    printcolumn = r#"{"name":"Spent-USD","type":"number","jsonPath":".status.usage[0].costUsd"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.scope != 'Team' || has(self.team)", "message": "scope Team needs spec.team"},
    {"rule": "self.scope != 'Application' || has(self.application)", "message": "scope Application needs spec.application"},
    {"rule": "self.scope != 'Tokens' || has(self.tokenSelector)", "message": "scope Tokens needs spec.tokenSelector"},
    {"rule": "size(self.budgets) > 0 || has(self.rateLimit)", "message": "an AIBudget needs budgets or a rateLimit"},
    {"rule": "self.budgets.all(b, self.budgets.exists_one(c, c.period == b.period))", "message": "one budget per period"},
]))]
pub struct AIBudgetSpec {
    /// What the limits cover. `Namespace`: every request decided in this namespace.
    /// `Team`: requests whose AccessToken's `spec.team` is `team`. `Application`:
    /// requests whose AccessToken carries the label `policybind.io/application` with
    /// the value `application`. `Tokens`: requests whose AccessToken matches
    /// `tokenSelector`. Only requests decided in this namespace count, whatever
    /// namespace their token lives in.
    pub scope: BudgetScope,
    /// Team name (scope Team), compared with the AccessToken's `spec.team`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub team: Option<String>,
    /// Application name (scope Application), compared with the AccessToken's
    /// `policybind.io/application` label. The label is on the token, not on the calling
    /// pod, because an enforcement point cannot verify a caller's pod labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub application: Option<String>,
    /// Label selector over AccessTokens (scope Tokens): a group of tokens, including
    /// tokens created later. Under other scopes it narrows the scope further.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_selector: Option<LabelSelector>,
    /// `false` (default): one budget shared by every request in scope (a group budget).
    /// `true`: each token in scope gets its own copy of these limits, as a default:
    /// a token that sets a budget of its own for a period, or a rate limit of its own,
    /// keeps its own for that period or limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_token: bool,
    /// Budgets per period, at most one per period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub budgets: Vec<Budget>,
    /// Requests and tokens per minute, across every replica serving requests in scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// What an AIBudget covers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum BudgetScope {
    /// Every request decided in the AIBudget's namespace.
    Namespace,
    /// Requests of tokens whose `spec.team` is the AIBudget's `team`.
    Team,
    /// Requests of tokens labelled `policybind.io/application=<application>`.
    Application,
    /// Requests of tokens matching the AIBudget's `tokenSelector`.
    Tokens,
}

impl BudgetScope {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetScope::Namespace => "Namespace",
            BudgetScope::Team => "Team",
            BudgetScope::Application => "Application",
            BudgetScope::Tokens => "Tokens",
        }
    }
}

impl AIBudgetSpec {
    /// The budget of a period, if any.
    pub fn budget(&self, period: crate::BudgetPeriod) -> Option<&Budget> {
        self.budgets.iter().find(|b| b.period == period)
    }
}

/// Observed state of an AIBudget.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AIBudgetStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: the AIBudget is valid and in every bundle of its namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Spend in each budget's current period, summed over every replica's usage report
    /// (for a per-token AIBudget: over every token in scope), with what replicas hold
    /// of it and when it resets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<PeriodUsage>,
    /// Per-token AIBudgets: the number of tokens charged in the current periods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u32>,
}

/// Prefix of the owner id an AIBudget is charged under in ledgers, usage reports
/// and budget keys; a token's owner id is its `namespace/name`.
pub const OWNER_PREFIX: &str = "AIBudget:";

/// Owner id of a shared AIBudget: `AIBudget:<namespace>/<name>`.
pub fn owner_id(namespace: &str, name: &str) -> String {
    format!("{OWNER_PREFIX}{namespace}/{name}")
}

/// Owner id of one token's copy of a per-token AIBudget:
/// `AIBudget:<namespace>/<name>@<token namespace>/<token name>`.
pub fn per_token_owner_id(namespace: &str, name: &str, token: &str) -> String {
    format!("{OWNER_PREFIX}{namespace}/{name}@{token}")
}

/// An owner id taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    /// A token, `namespace/name`.
    Token(&'a str),
    /// An AIBudget, and for a per-token one the token it is charged for.
    Budget {
        namespace: &'a str,
        name: &'a str,
        token: Option<&'a str>,
    },
}

/// Parses an owner id; `None` for anything malformed (a report or demand written
/// by a workload may hold any string).
pub fn parse_owner(id: &str) -> Option<Owner<'_>> {
    let Some(rest) = id.strip_prefix(OWNER_PREFIX) else {
        let (ns, name) = id.split_once('/')?;
        return (!ns.is_empty() && !name.is_empty() && !name.contains('/'))
            .then_some(Owner::Token(id));
    };
    let (budget, token) = match rest.split_once('@') {
        Some((budget, token)) => (budget, Some(token)),
        None => (rest, None),
    };
    let (namespace, name) = budget.split_once('/')?;
    if namespace.is_empty() || name.is_empty() || name.contains('/') {
        return None;
    }
    if let Some(token) = token
        && parse_owner(token).and_then(|o| match o {
            Owner::Token(t) => Some(t),
            Owner::Budget { .. } => None,
        }) != Some(token)
    {
        return None;
    }
    Some(Owner::Budget {
        namespace,
        name,
        token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_ids_round_trip_and_garbage_is_refused() {
        assert_eq!(parse_owner("team-a/bot"), Some(Owner::Token("team-a/bot")));
        let shared = owner_id("team-a", "monthly");
        assert_eq!(
            parse_owner(&shared),
            Some(Owner::Budget {
                namespace: "team-a",
                name: "monthly",
                token: None
            })
        );
        let each = per_token_owner_id("team-a", "default", "team-b/bot");
        assert_eq!(
            parse_owner(&each),
            Some(Owner::Budget {
                namespace: "team-a",
                name: "default",
                token: Some("team-b/bot")
            })
        );
        for bad in [
            "",
            "bot",
            "/bot",
            "a/b/c",
            "AIBudget:",
            "AIBudget:x",
            "AIBudget:x/",
            "AIBudget:x/y@",
            "AIBudget:x/y@z",
            "AIBudget:x/y@AIBudget:a/b",
        ] {
            assert_eq!(parse_owner(bad), None, "{bad:?}");
        }
    }
}
