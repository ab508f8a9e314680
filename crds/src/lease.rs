//! Leases of budget slices: the two documents through which replicas share one
//! budget (docs/operator.md, "Budgets across replicas").
//!
//! Each budget of a token, in one period, in one unit, is a *budget key*
//! ([`budget_key`]). Every replica (sidecar or gateway pod) says in its usage
//! report ([`super::wire::keys::LEASE_DEMAND`]) what it settled, what it holds in
//! flight and how much more it wants, per key ([`Demands`]). The operator, the
//! only authority, answers in the namespace's ledger
//! ([`super::wire::ledger_config_map`], key [`super::wire::keys::LEDGER`]) with
//! the total each pod was granted per key ([`Ledger`]). A replica admits a request
//! only while its own settled plus in-flight plus the request's estimate stays
//! within its grant.
//!
//! Rate limits are leased the same way, one key per calendar minute
//! ([`rate_key`]).
//!
//! Grants only grow within a period and are never handed back: a slice a pod
//! holds counts as spent for everyone else, whether the pod spends it, idles or
//! dies. That is what makes the sum safe without knowing what a dead pod spent
//! after its last report.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::BudgetPeriod;

/// The unit a budget key counts in.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    /// US dollars (`Budget.maxCostUsd`).
    Usd,
    /// Input plus output tokens (`Budget.maxTokens`).
    Tokens,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Usd => "usd",
            Unit::Tokens => "tokens",
        }
    }
}

/// `<token id>|<period>|<period start, RFC 3339 UTC>|<unit>`, e.g.
/// `team-a/bot|Day|2026-11-22T00:00:00Z|usd`. A new period is a new key, so a
/// key's grants never carry over a period boundary.
pub fn budget_key(token: &str, period: BudgetPeriod, start: DateTime<Utc>, unit: Unit) -> String {
    format!(
        "{token}|{}|{}|{}",
        period.as_str(),
        start.to_rfc3339_opts(SecondsFormat::Secs, true),
        unit.as_str()
    )
}

/// The parts of a budget key; `None` when it is not one.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyParts<'a> {
    pub token: &'a str,
    pub period: BudgetPeriod,
    pub start: DateTime<Utc>,
    pub unit: Unit,
}

/// Parses a [`budget_key`].
pub fn parse_budget_key(key: &str) -> Option<KeyParts<'_>> {
    let mut parts = key.split('|');
    let token = parts.next()?;
    let period = match parts.next()? {
        "Day" => BudgetPeriod::Day,
        "Week" => BudgetPeriod::Week,
        "Month" => BudgetPeriod::Month,
        _ => return None,
    };
    let start = DateTime::parse_from_rfc3339(parts.next()?)
        .ok()?
        .with_timezone(&Utc);
    let unit = match parts.next()? {
        "usd" => Unit::Usd,
        "tokens" => Unit::Tokens,
        _ => return None,
    };
    if parts.next().is_some() || token.is_empty() {
        return None;
    }
    Some(KeyParts {
        token,
        period,
        start,
        unit,
    })
}

/// What a rate key counts in one calendar minute.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RateUnit {
    /// Requests admitted (`RateLimit.requestsPerMinute`).
    Requests,
    /// Estimated input plus output tokens, corrected at settle
    /// (`RateLimit.tokensPerMinute`).
    Tokens,
}

impl RateUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            RateUnit::Requests => "requests",
            RateUnit::Tokens => "tokens",
        }
    }
}

/// A rate limit of a token in one calendar minute (UTC), leased like a budget
/// key: `<token id>|Minute|<minute start, RFC 3339 UTC>|<requests or tokens>`,
/// e.g. `team-a/bot|Minute|2026-11-22T15:04:00Z|requests`. The operator grants
/// at most the per-minute limit over all pods per minute, so across replicas
/// the requests admitted in one calendar minute never exceed
/// `requestsPerMinute`. `start` is truncated to its minute.
pub fn rate_key(token: &str, start: DateTime<Utc>, unit: RateUnit) -> String {
    let minute = minute_start(start);
    format!(
        "{token}|Minute|{}|{}",
        minute.to_rfc3339_opts(SecondsFormat::Secs, true),
        unit.as_str()
    )
}

/// In the last this-many seconds of a minute, the next minute's rate keys are
/// asked for (by replicas under load) and granted ahead (by the operator, to
/// the replicas holding this minute's key), so that a new minute does not
/// start with a wait for a grant.
pub const ASK_AHEAD_SECS: i64 = 10;

/// The start of the calendar minute (UTC) containing `time`.
pub fn minute_start(time: DateTime<Utc>) -> DateTime<Utc> {
    let seconds = time.timestamp().div_euclid(60) * 60;
    DateTime::from_timestamp(seconds, 0).unwrap_or(time)
}

/// The parts of a [`rate_key`].
#[derive(Debug, Clone, PartialEq)]
pub struct RateKeyParts<'a> {
    pub token: &'a str,
    pub start: DateTime<Utc>,
    pub unit: RateUnit,
}

/// Parses a [`rate_key`]; `None` when it is not one (budget keys included).
pub fn parse_rate_key(key: &str) -> Option<RateKeyParts<'_>> {
    let mut parts = key.split('|');
    let token = parts.next()?;
    if parts.next()? != "Minute" {
        return None;
    }
    let start = DateTime::parse_from_rfc3339(parts.next()?)
        .ok()?
        .with_timezone(&Utc);
    let unit = match parts.next()? {
        "requests" => RateUnit::Requests,
        "tokens" => RateUnit::Tokens,
        _ => return None,
    };
    if parts.next().is_some() || token.is_empty() || minute_start(start) != start {
        return None;
    }
    Some(RateKeyParts { token, start, unit })
}

/// What one replica says about one budget key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Demand {
    /// Settled in the key's period by this pod (across its restarts).
    pub settled: f64,
    /// Estimates of requests admitted and not yet settled.
    pub in_flight: f64,
    /// How much more the pod asks to be granted (0: nothing).
    pub wanted: f64,
    /// The grant the pod held when it asked: the operator grants `wanted` only
    /// on top of exactly this grant, so a report read twice grants once.
    pub basis: f64,
}

/// A pod's demands, by budget key.
pub type Demands = BTreeMap<String, Demand>;

/// What the operator granted per budget key, in one namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    /// Budget key to its state.
    pub keys: BTreeMap<String, KeyLedger>,
}

/// One budget key of a ledger.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyLedger {
    /// The budget's limit.
    pub limit: f64,
    /// What is left to grant: the limit less, for every pod, the larger of its
    /// grant and what it settled. Zero means the budget is used up.
    pub remaining: f64,
    /// Pod name to the total granted to it in the period.
    pub grants: BTreeMap<String, f64>,
}

impl Ledger {
    /// What `pod` was granted under `key` (zero when nothing).
    pub fn granted(&self, key: &str, pod: &str) -> f64 {
        self.keys
            .get(key)
            .and_then(|k| k.grants.get(pod))
            .copied()
            .unwrap_or(0.0)
    }

    /// The budget keys of `token`'s budget of `period` whose start is `start`
    /// or later, either unit, oldest first. Keys sort by owner, period and
    /// then start (RFC 3339 in UTC sorts by time), so this is a range of the
    /// map, not a scan of every key.
    pub fn budget_keys_from<'a>(
        &'a self,
        token: &'a str,
        period: BudgetPeriod,
        start: DateTime<Utc>,
    ) -> impl Iterator<Item = (KeyParts<'a>, &'a KeyLedger)> + 'a {
        let prefix = format!("{token}|{}|", period.as_str());
        let from = format!(
            "{prefix}{}|",
            start.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        self.keys
            .range(from..)
            .take_while(move |(key, _)| key.starts_with(&prefix))
            .filter_map(|(key, entry)| Some((parse_budget_key(key)?, entry)))
    }

    /// The pods that hold a slice of `key`, counting `pod` even before its
    /// first grant.
    pub fn holders(&self, key: &str, pod: &str) -> usize {
        let grants = self.keys.get(key).map(|k| &k.grants);
        let others = grants.map_or(0, |g| g.keys().filter(|p| *p != pod).count());
        others + 1
    }
}

/// The least share of a key's limit that the replicas holding it ask for at
/// once, split evenly among them ([`least_slice`]).
pub const LEAST_SLICE_SHARE: f64 = 0.01;

/// The least a replica asks for at once under a key of `limit` held by
/// `holders` replicas: 1% of the limit among them. Without it a pod whose
/// recent spend is small (a quiet pod, or one that just started) would ask for
/// a few requests' worth and wait for the operator's next round (about a
/// second) every few requests. What a slice strands is bounded: all replicas
/// together hold at most about 1% of the limit unspent this way, and the
/// operator never grants more than an equal share of what remains.
pub fn least_slice(limit: f64, holders: usize) -> f64 {
    if limit.is_finite() && limit > 0.0 {
        limit * LEAST_SLICE_SHARE / holders.max(1) as f64
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_keys_from_is_one_owners_period_from_a_start_and_no_more() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let mut ledger = Ledger::default();
        for (token, period, start, unit) in [
            (
                "ns/bot",
                BudgetPeriod::Day,
                "2026-11-22T09:00:00Z",
                Unit::Usd,
            ),
            (
                "ns/bot",
                BudgetPeriod::Day,
                "2026-11-22T10:00:00Z",
                Unit::Usd,
            ),
            (
                "ns/bot",
                BudgetPeriod::Day,
                "2026-11-22T10:00:00Z",
                Unit::Tokens,
            ),
            (
                "ns/bot",
                BudgetPeriod::Week,
                "2026-11-22T12:00:00Z",
                Unit::Usd,
            ),
            (
                "ns/bot2",
                BudgetPeriod::Day,
                "2026-11-22T11:00:00Z",
                Unit::Usd,
            ),
            (
                "ns/bo",
                BudgetPeriod::Day,
                "2026-11-22T11:00:00Z",
                Unit::Usd,
            ),
        ] {
            ledger.keys.insert(
                budget_key(token, period, at(start), unit),
                KeyLedger::default(),
            );
        }
        ledger.keys.insert(
            rate_key("ns/bot", at("2026-11-22T10:00:00Z"), RateUnit::Requests),
            KeyLedger::default(),
        );
        let found: Vec<_> = ledger
            .budget_keys_from("ns/bot", BudgetPeriod::Day, at("2026-11-22T10:00:00Z"))
            .map(|(p, _)| (p.start, p.unit))
            .collect();
        assert_eq!(
            found,
            [
                (at("2026-11-22T10:00:00Z"), Unit::Tokens),
                (at("2026-11-22T10:00:00Z"), Unit::Usd)
            ]
        );
    }
    use chrono::TimeZone;

    #[test]
    fn budget_key_round_trips_and_rejects_other_strings() {
        let start = Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap();
        let key = budget_key("team-a/bot", BudgetPeriod::Day, start, Unit::Usd);
        assert_eq!(key, "team-a/bot|Day|2026-11-22T00:00:00Z|usd");
        let parts = parse_budget_key(&key).unwrap();
        assert_eq!(parts.token, "team-a/bot");
        assert_eq!(parts.period, BudgetPeriod::Day);
        assert_eq!(parts.start, start);
        assert_eq!(parts.unit, Unit::Usd);
        for bad in [
            "",
            "a|Day",
            "a|Year|2026-11-22T00:00:00Z|usd",
            "a|Day|x|usd",
            "|Day|2026-11-22T00:00:00Z|usd",
            "a|Day|2026-11-22T00:00:00Z|usd|x",
        ] {
            assert!(parse_budget_key(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn rate_keys_round_trip_and_are_not_budget_keys() {
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 15, 4, 37).unwrap();
        let key = rate_key("team-a/bot", at, RateUnit::Requests);
        assert_eq!(key, "team-a/bot|Minute|2026-11-22T15:04:00Z|requests");
        let parts = parse_rate_key(&key).unwrap();
        assert_eq!(parts.token, "team-a/bot");
        assert_eq!(parts.start, minute_start(at));
        assert_eq!(parts.unit, RateUnit::Requests);
        assert!(parse_budget_key(&key).is_none());
        assert!(parse_rate_key("team-a/bot|Day|2026-11-22T00:00:00Z|usd").is_none());
        for bad in [
            "a|Minute|2026-11-22T15:04:30Z|requests",
            "a|Minute|2026-11-22T15:04:00Z|usd",
            "|Minute|2026-11-22T15:04:00Z|tokens",
            "a|Minute|x|tokens",
            "a|Minute|2026-11-22T15:04:00Z|tokens|x",
        ] {
            assert!(parse_rate_key(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ledger_json_is_the_documented_format() {
        let ledger = Ledger {
            keys: BTreeMap::from([(
                "team-a/bot|Day|2026-11-22T00:00:00Z|usd".to_string(),
                KeyLedger {
                    limit: 1.0,
                    remaining: 0.5,
                    grants: BTreeMap::from([("pod-1".to_string(), 0.5)]),
                },
            )]),
        };
        assert_eq!(
            serde_json::to_string(&ledger).unwrap(),
            r#"{"keys":{"team-a/bot|Day|2026-11-22T00:00:00Z|usd":{"limit":1.0,"remaining":0.5,"grants":{"pod-1":0.5}}}}"#
        );
        assert_eq!(
            ledger.granted("team-a/bot|Day|2026-11-22T00:00:00Z|usd", "pod-1"),
            0.5
        );
        assert_eq!(
            ledger.granted("team-a/bot|Day|2026-11-22T00:00:00Z|usd", "pod-2"),
            0.0
        );
    }
}
