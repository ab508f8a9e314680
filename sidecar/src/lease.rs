//! Budgets shared by replicas: this pod spends only slices the operator granted
//! it (docs/sidecar.md, "Budgets across replicas"; format in
//! [`policybind_crds::lease`]).
//!
//! [`LeasedLedger`] wraps the [`InProcessLedger`] (rate limits, this pod's
//! tallies) and adds one check to every reservation of a budgeted token: for
//! each budget key, what this pod settled plus what it holds in flight plus the
//! request's estimate must fit in the total the operator granted this pod. When
//! it does not, the pod asks for more (through its usage report, see
//! [`crate::usage`]) and the request waits for the grant up to
//! [`GRANT_WAIT`]; when the ledger says nothing remains the request is refused
//! with `BUDGET_EXCEEDED` at once.
//!
//! Slices are sized from this pod's own spend: it asks for about ten seconds of
//! its recent spend (at least four times the request that ran short, and at
//! least [`lease::least_slice`], 1% of the limit shared by the pods holding the
//! key), and asks ahead, as soon as what it holds unspent falls below two seconds of spend, so
//! that under steady load requests do not wait.
//!
//! Before the pod has read back its own report and the ledger once, it holds
//! nothing, so budgeted requests are refused with `BUDGET_LEASE_UNAVAILABLE`
//! (tokens without a budget are served). When the API server is away, the pod
//! keeps spending what it holds; once that is spent it refuses with
//! `BUDGET_LEASE_UNAVAILABLE` (fail closed) until the ledger can be read again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use policybind_crds::RateLimit;
use policybind_crds::lease::{self, Demand, Demands, Ledger, RateUnit, Unit};
use policybind_crds::wire::{self, keys};
use policybind_engine::compile::CompiledBudget;
use policybind_engine::request::UsageSoFar;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::accounting::{
    Amount, InProcessLedger, Refusal, ReservationId, SettledUsage, TokenLimits, UsageLedger,
};

/// Longest a request waits for a grant before it is refused.
pub const GRANT_WAIT: Duration = Duration::from_secs(3);
/// A ledger older than this means the API server is away: a request that needs
/// more than is held is refused at once instead of waiting.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// The ledger is read this often while this pod waits for a grant, else every
/// [`IDLE_READ`].
pub const EAGER_READ: Duration = Duration::from_millis(200);
pub const IDLE_READ: Duration = Duration::from_secs(2);
/// Spend over this window sizes a slice.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Ask ahead when the unspent grant is below this share of a slice (2 s of 10).
const LOW_WATER_SHARE: f64 = 0.2;
/// Rate keys of the next minute are asked for this long before it starts.
const ASK_AHEAD: chrono::Duration = chrono::Duration::seconds(lease::ASK_AHEAD_SECS);

/// Where this pod's grants come from.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// PolicyBind's own namespace (where the ledger lives).
    pub home: String,
    /// The namespace whose ledger applies (this pod's).
    pub namespace: String,
    /// This pod's name: its grants are filed under it.
    pub pod: String,
}

#[derive(Default)]
struct State {
    ledger: Ledger,
    ledger_read: bool,
    report_restored: bool,
    last_read: Option<Instant>,
    /// Budget key to the amount asked for on top of the current grant.
    wanted: HashMap<String, f64>,
    /// Reservation to its budget keys and amounts (in flight).
    pending: HashMap<ReservationId, (String, Vec<(String, f64)>)>,
    /// Token to its recent settled spend `(when, usd, tokens)`.
    spend: HashMap<String, VecDeque<(Instant, f64, f64)>>,
    /// Rate key to what this pod admitted in its minute: requests, or
    /// estimated tokens corrected at settle.
    minute_used: HashMap<String, f64>,
    /// Reservation to its tokens-per-minute key and estimate.
    rate_pending: HashMap<ReservationId, (String, f64)>,
}

impl State {
    fn ready(&self) -> bool {
        self.ledger_read && self.report_restored
    }

    fn fresh(&self) -> bool {
        self.last_read.is_some_and(|t| t.elapsed() < STALE_AFTER)
    }

    /// Ten seconds of this pod's recent spend of `token` in `unit`.
    fn slice(&mut self, token: &str, unit: Unit) -> f64 {
        let Some(spend) = self.spend.get_mut(token) else {
            return 0.0;
        };
        while spend
            .front()
            .is_some_and(|(t, _, _)| t.elapsed() > RATE_WINDOW)
        {
            spend.pop_front();
        }
        spend
            .iter()
            .map(|(_, usd, tokens)| if unit == Unit::Usd { *usd } else { *tokens })
            .sum()
    }

    /// Ten seconds of this pod's recent requests (`Requests`) or settled
    /// tokens (`Tokens`) of `token`.
    fn rate_slice(&mut self, token: &str, unit: RateUnit) -> f64 {
        let tokens = self.slice(token, Unit::Tokens);
        match unit {
            RateUnit::Tokens => tokens,
            RateUnit::Requests => self.spend.get(token).map_or(0, VecDeque::len) as f64,
        }
    }

    /// Counts `amount` in `key`'s minute, forgetting minutes before the last.
    fn count_in_minute(&mut self, key: &str, amount: f64, now: DateTime<Utc>) {
        let previous = lease::minute_start(now) - chrono::Duration::minutes(1);
        self.minute_used
            .retain(|k, _| lease::parse_rate_key(k).is_some_and(|p| p.start >= previous));
        let used = self.minute_used.entry(key.to_string()).or_insert(0.0);
        *used = (*used + amount).max(0.0);
    }

    fn in_flight(&self, key: &str) -> f64 {
        self.pending
            .values()
            .flat_map(|(_, keys)| keys.iter())
            .filter(|(k, _)| k == key)
            .map(|(_, a)| a)
            .sum()
    }
}

/// The budget keys of a token's budgets now, with the amount of `estimate`
/// each would take and the usage so far it is checked with.
fn keys_of(
    token: &str,
    budgets: &[CompiledBudget],
    usage: &[UsageSoFar],
    estimate: Amount,
    now: DateTime<Utc>,
) -> Vec<(String, usize, f64, f64)> {
    let mut keys = Vec::new();
    for (index, budget) in budgets.iter().enumerate() {
        let start = budget.tally_start(now);
        let used = usage.get(index);
        // A request priced at zero needs no slice of a cost budget.
        if budget.max_cost_usd.is_some() && estimate.cost_usd > 0.0 {
            let key = lease::budget_key(token, budget.period, start, Unit::Usd);
            keys.push((
                key,
                index,
                used.map_or(0.0, |u| u.cost_usd),
                estimate.cost_usd,
            ));
        }
        if budget.max_tokens.is_some() {
            let key = lease::budget_key(token, budget.period, start, Unit::Tokens);
            let used = used.map_or(0.0, |u| u.tokens as f64);
            keys.push((key, index, used, estimate.tokens as f64));
        }
    }
    keys
}

/// A [`UsageLedger`] that spends only what the operator granted this pod.
pub struct LeasedLedger {
    inner: InProcessLedger,
    pod: String,
    state: Mutex<State>,
    /// Wakes requests waiting for a grant.
    granted: Arc<Notify>,
    /// Wakes the usage reporter when this pod asks for more.
    asking: Arc<Notify>,
}

impl LeasedLedger {
    pub fn new(pod: &str) -> Self {
        LeasedLedger {
            inner: InProcessLedger::new(),
            pod: pod.to_string(),
            state: Mutex::new(State::default()),
            granted: Arc::new(Notify::new()),
            asking: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notified when this pod asks for more; the reporter writes then.
    pub fn asking(&self) -> Arc<Notify> {
        self.asking.clone()
    }

    /// Takes a ledger read from the API server.
    pub fn apply_ledger(&self, ledger: Ledger) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let pod = &self.pod;
        let old = &state.ledger;
        // A request is answered once its grant moved or nothing remains.
        state.wanted.retain(|key, _| {
            let before = old.granted(key, pod);
            let exhausted = ledger.keys.get(key).is_some_and(|k| k.remaining <= 0.0);
            ledger.granted(key, pod) <= before && !exhausted
        });
        state.ledger = ledger;
        state.ledger_read = true;
        state.last_read = Some(Instant::now());
        drop(guard);
        self.granted.notify_waiters();
    }

    /// The reporter read back this pod's previous report (or found none).
    pub fn report_restored(&self) {
        self.lock().report_restored = true;
        self.granted.notify_waiters();
    }

    /// What this pod tells the operator, per budget key.
    pub fn demands(&self) -> Demands {
        let settled = self.inner.settled_usage();
        let state = self.lock();
        let mut keys: Vec<&String> = state
            .ledger
            .keys
            .iter()
            .filter(|(_, k)| k.grants.contains_key(&self.pod))
            .map(|(key, _)| key)
            .chain(state.wanted.keys())
            .collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter_map(|key| {
                if lease::parse_rate_key(key).is_some() {
                    // What this pod admitted in the minute, in flight included.
                    let demand = Demand {
                        settled: state.minute_used.get(key).copied().unwrap_or(0.0),
                        in_flight: 0.0,
                        wanted: state.wanted.get(key).copied().unwrap_or(0.0),
                        basis: state.ledger.granted(key, &self.pod),
                    };
                    return Some((key.clone(), demand));
                }
                let parts = lease::parse_budget_key(key)?;
                let settled = settled
                    .iter()
                    .find(|s| {
                        s.token == parts.token
                            && s.period == parts.period
                            && s.period_start == parts.start
                    })
                    .map_or(0.0, |s| match parts.unit {
                        Unit::Usd => s.settled.cost_usd,
                        Unit::Tokens => s.settled.tokens as f64,
                    });
                let demand = Demand {
                    settled,
                    in_flight: state.in_flight(key),
                    wanted: state.wanted.get(key).copied().unwrap_or(0.0),
                    basis: state.ledger.granted(key, &self.pod),
                };
                Some((key.clone(), demand))
            })
            .collect()
    }

    /// A request short of a grant: the reporter is woken to ask for it, and
    /// the request waits for it while the ledger is fresh, else fails closed.
    fn short(&self, state: &State) -> Refusal {
        self.asking.notify_one();
        if state.fresh() {
            Refusal::AwaitingGrant
        } else {
            Refusal::LeaseUnavailable
        }
    }

    /// Checks the grants for `estimate`; asks for more where short.
    fn check_grants(
        &self,
        state: &mut State,
        token: &str,
        budgets: &[CompiledBudget],
        estimate: Amount,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, f64)>, Refusal> {
        // A key is one calendar period, or one bucket of a rolling window.
        let usage = self.inner.tally_usage(token, budgets, now);
        let mut short = false;
        let mut taken = Vec::new();
        for (key, index, used, need) in keys_of(token, budgets, &usage, estimate, now) {
            let held = state.ledger.granted(&key, &self.pod);
            let unit = lease::parse_budget_key(&key).map_or(Unit::Usd, |p| p.unit);
            let limit = match unit {
                Unit::Usd => budgets[index].max_cost_usd.unwrap_or(0.0),
                Unit::Tokens => budgets[index].max_tokens.map_or(0.0, |t| t as f64),
            };
            // A rolling window has a key per bucket, and a slice left unspent
            // in a bucket stays counted for the whole window: its least slice
            // is a bucket's share, so that all of them together stay about 1%.
            let budget = &budgets[index];
            let per_key = if budget.rolling {
                limit / f64::from(policybind_engine::schedule::window_buckets(budget.period) + 1)
            } else {
                limit
            };
            let least = lease::least_slice(per_key, state.ledger.holders(&key, &self.pod));
            let slice = state.slice(token, unit).max(need * 4.0).max(least);
            if used + need > held {
                let exhausted = state
                    .ledger
                    .keys
                    .get(&key)
                    .is_some_and(|k| k.remaining <= 0.0);
                if exhausted {
                    return Err(Refusal::BudgetExceeded {
                        period: budgets[index].period,
                    });
                }
                state.wanted.insert(key.clone(), slice);
                short = true;
            } else if held - used - need < slice * LOW_WATER_SHARE {
                // Ask ahead, so the next requests need not wait.
                state.wanted.entry(key.clone()).or_insert(slice);
                self.asking.notify_one();
            }
            taken.push((key, need));
        }
        if short {
            return Err(self.short(state));
        }
        Ok(taken)
    }
}

/// The rate keys a request of `estimate` takes now: `(key, unit, limit, need)`.
fn rate_keys_of(
    token: &str,
    rate: Option<&RateLimit>,
    estimate: Amount,
    now: DateTime<Utc>,
) -> Vec<(String, RateUnit, f64, f64)> {
    let Some(rate) = rate else {
        return vec![];
    };
    let limits = [
        (
            RateUnit::Requests,
            rate.requests_per_minute.map(f64::from),
            1.0,
        ),
        (
            RateUnit::Tokens,
            rate.tokens_per_minute.map(|t| t as f64),
            estimate.tokens as f64,
        ),
    ];
    limits
        .into_iter()
        .filter_map(|(unit, limit, need)| {
            Some((lease::rate_key(token, now, unit), unit, limit?, need))
        })
        .collect()
}

impl LeasedLedger {
    /// Checks the grants of this minute's rate keys for `estimate`; asks for
    /// more where short, and in the last [`ASK_AHEAD`] of a minute asks for
    /// the next minute's, so that steady load does not wait at the boundary.
    fn check_rate_grants(
        &self,
        state: &mut State,
        token: &str,
        rate: Option<&RateLimit>,
        estimate: Amount,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, RateUnit, f64)>, Refusal> {
        let minute = lease::minute_start(now);
        // Asks for minutes gone are moot (the operator drops their keys).
        state
            .wanted
            .retain(|k, _| lease::parse_rate_key(k).is_none_or(|p| p.start >= minute));
        let ask_ahead = now - minute >= chrono::Duration::seconds(60) - ASK_AHEAD;
        let mut short = false;
        let mut taken = Vec::new();
        for (key, unit, limit, need) in rate_keys_of(token, rate, estimate, now) {
            let used = state.minute_used.get(&key).copied().unwrap_or(0.0);
            let held = state.ledger.granted(&key, &self.pod);
            let least = lease::least_slice(limit, state.ledger.holders(&key, &self.pod));
            let slice = state
                .rate_slice(token, unit)
                .max(need * 4.0)
                .max(least)
                .min(limit);
            if used + need > held {
                if state
                    .ledger
                    .keys
                    .get(&key)
                    .is_some_and(|k| k.remaining <= 0.0)
                {
                    let next = minute + chrono::Duration::minutes(1);
                    return Err(Refusal::RateLimited {
                        what: match unit {
                            RateUnit::Requests => "requests per minute",
                            RateUnit::Tokens => "tokens per minute",
                        },
                        retry_after: (next - now).to_std().unwrap_or_default(),
                    });
                }
                state.wanted.insert(key.clone(), slice);
                short = true;
            } else if held - used - need < slice * LOW_WATER_SHARE {
                state.wanted.entry(key.clone()).or_insert(slice);
                self.asking.notify_one();
            }
            if ask_ahead {
                let next = lease::rate_key(token, minute + chrono::Duration::minutes(1), unit);
                if state.ledger.granted(&next, &self.pod) < slice * LOW_WATER_SHARE {
                    state.wanted.entry(next).or_insert(slice);
                    self.asking.notify_one();
                }
            }
            taken.push((key, unit, need));
        }
        if short {
            return Err(self.short(state));
        }
        Ok(taken)
    }
}

impl UsageLedger for LeasedLedger {
    fn usage(
        &self,
        token: &str,
        budgets: &[CompiledBudget],
        now: DateTime<Utc>,
    ) -> Vec<UsageSoFar> {
        self.inner.usage(token, budgets, now)
    }

    fn reserve(
        &self,
        token: &str,
        limits: TokenLimits<'_>,
        estimate: Amount,
        now: DateTime<Utc>,
    ) -> Result<ReservationId, Refusal> {
        let rated = limits
            .rate
            .is_some_and(|r| r.requests_per_minute.is_some() || r.tokens_per_minute.is_some());
        if limits.budgets.is_empty() && !rated {
            return self.inner.reserve(token, limits, estimate, now);
        }
        // One lock over check and reservation: concurrent requests cannot
        // together take more than the grant.
        let mut state = self.lock();
        if !state.ready() {
            return Err(Refusal::LeaseUnavailable);
        }
        let budgets = self.check_grants(&mut state, token, limits.budgets, estimate, now);
        // Rate keys are asked for even when a budget is short.
        let rates = self.check_rate_grants(&mut state, token, limits.rate, estimate, now);
        let (taken, rates) = (budgets?, rates?);
        // The process's own token bucket still smooths bursts within a minute.
        let id = self.inner.reserve(token, limits, estimate, now)?;
        for (key, unit, need) in rates {
            state.count_in_minute(&key, need, now);
            if unit == RateUnit::Tokens {
                state.rate_pending.insert(id, (key, need));
            }
        }
        state.pending.insert(id, (token.to_string(), taken));
        Ok(id)
    }

    fn settle(&self, id: ReservationId, actual: Amount, now: DateTime<Utc>) {
        self.inner.settle(id, actual, now);
        let mut state = self.lock();
        if let Some((key, estimate)) = state.rate_pending.remove(&id) {
            state.count_in_minute(&key, actual.tokens as f64 - estimate, now);
        }
        if let Some((token, _)) = state.pending.remove(&id) {
            state.spend.entry(token).or_default().push_back((
                Instant::now(),
                actual.cost_usd,
                actual.tokens as f64,
            ));
        }
    }

    fn release(&self, id: ReservationId, now: DateTime<Utc>) {
        self.inner.release(id, now);
        let mut state = self.lock();
        state.pending.remove(&id);
        // The request still counts against requests per minute; its
        // estimated tokens are given back.
        if let Some((key, estimate)) = state.rate_pending.remove(&id) {
            state.count_in_minute(&key, -estimate, now);
        }
    }

    fn extend(
        &self,
        id: ReservationId,
        budgets: &[CompiledBudget],
        more: Amount,
        now: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        let mut state = self.lock();
        let Some(token) = state.pending.get(&id).map(|(t, _)| t.clone()) else {
            return Ok(());
        };
        if budgets.is_empty() {
            return self.inner.extend(id, budgets, more, now);
        }
        let taken = self.check_grants(&mut state, &token, budgets, more, now)?;
        self.inner.extend(id, budgets, more, now)?;
        if let Some((_, keys)) = state.pending.get_mut(&id) {
            keys.extend(taken);
        }
        Ok(())
    }

    fn cancel(&self, id: ReservationId, now: DateTime<Utc>) {
        self.inner.cancel(id, now);
        self.lock().pending.remove(&id);
    }

    fn settled_usage(&self) -> Vec<SettledUsage> {
        self.inner.settled_usage()
    }

    fn restore(&self, settled: &[SettledUsage]) {
        self.inner.restore(settled);
    }

    fn grant_changed(&self) -> Option<Arc<Notify>> {
        Some(self.granted.clone())
    }
}

/// Reads the namespace's ledger: often while this pod waits for a grant, else
/// every [`IDLE_READ`], until `stop`.
pub async fn watch_ledger(
    client: kube::Client,
    settings: LeaseSettings,
    ledger: Arc<LeasedLedger>,
    stop: CancellationToken,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &settings.home);
    let name = wire::ledger_config_map(&settings.namespace);
    let asking = ledger.asking();
    loop {
        match tokio::time::timeout(STALE_AFTER, api.get_opt(&name)).await {
            Ok(Ok(found)) => {
                let json = found
                    .as_ref()
                    .and_then(|cm| cm.data.as_ref()?.get(keys::LEDGER));
                match json.map(|j| serde_json::from_str::<Ledger>(j)) {
                    None => ledger.apply_ledger(Ledger::default()),
                    Some(Ok(read)) => ledger.apply_ledger(read),
                    Some(Err(error)) => {
                        warn!(configmap = %name, %error, "budget ledger is malformed")
                    }
                }
            }
            Ok(Err(error)) => debug!(configmap = %name, %error, "budget ledger not read"),
            Err(_) => debug!(configmap = %name, "budget ledger read timed out"),
        }
        let wait = if ledger.lock().wanted.is_empty() {
            IDLE_READ
        } else {
            EAGER_READ
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = asking.notified() => tokio::time::sleep(EAGER_READ).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use policybind_crds::BudgetPeriod;
    use policybind_crds::lease::KeyLedger;
    use std::collections::BTreeMap;

    const TOKEN: &str = "team-a/bot";

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 15, 0, 0).unwrap()
    }

    fn key() -> String {
        let start = Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap();
        lease::budget_key(TOKEN, BudgetPeriod::Day, start, Unit::Usd)
    }

    fn budgets() -> [CompiledBudget; 1] {
        [CompiledBudget {
            period: BudgetPeriod::Day,
            max_cost_usd: Some(1.0),
            max_tokens: None,
            tz: chrono_tz::UTC,
            rolling: false,
        }]
    }

    fn ledger_granting(grant: f64, remaining: f64) -> Ledger {
        Ledger {
            keys: BTreeMap::from([(
                key(),
                KeyLedger {
                    limit: 1.0,
                    remaining,
                    grants: BTreeMap::from([("pod-1".to_string(), grant)]),
                },
            )]),
        }
    }

    fn reserve(ledger: &LeasedLedger, cost: f64) -> Result<ReservationId, Refusal> {
        let budgets = budgets();
        let limits = TokenLimits {
            rate: None,
            budgets: &budgets,
        };
        let amount = Amount {
            cost_usd: cost,
            tokens: 10,
        };
        ledger.reserve(TOKEN, limits, amount, now())
    }

    fn ready(grant: f64, remaining: f64) -> LeasedLedger {
        let ledger = LeasedLedger::new("pod-1");
        ledger.report_restored();
        ledger.apply_ledger(ledger_granting(grant, remaining));
        ledger
    }

    #[test]
    fn nothing_is_spent_before_the_report_and_the_ledger_were_read() {
        let ledger = LeasedLedger::new("pod-1");
        assert_eq!(reserve(&ledger, 0.01), Err(Refusal::LeaseUnavailable));
        ledger.apply_ledger(ledger_granting(0.5, 0.5));
        assert_eq!(reserve(&ledger, 0.01), Err(Refusal::LeaseUnavailable));
        ledger.report_restored();
        assert!(reserve(&ledger, 0.01).is_ok());
    }

    #[test]
    fn a_replica_spends_only_its_grant_then_asks_on_top_of_what_it_holds() {
        let ledger = ready(0.3, 0.7);
        let first = reserve(&ledger, 0.1).unwrap();
        let second = reserve(&ledger, 0.1).unwrap();
        ledger.settle(
            first,
            Amount {
                cost_usd: 0.1,
                tokens: 10,
            },
            now(),
        );
        // 0.1 settled + 0.1 in flight + 0.2 > 0.3 held.
        assert_eq!(reserve(&ledger, 0.2), Err(Refusal::AwaitingGrant));
        let demand = ledger.demands()[&key()];
        assert_eq!(demand.basis, 0.3);
        assert!((demand.settled - 0.1).abs() < 1e-12);
        assert!((demand.in_flight - 0.1).abs() < 1e-12);
        assert!(
            demand.wanted >= 0.8 - 1e-12,
            "at least four times the request"
        );
        // The operator grants more: the request fits, the ask is answered.
        ledger.apply_ledger(ledger_granting(0.6, 0.4));
        assert!(reserve(&ledger, 0.2).is_ok());
        ledger.release(second, now());
        assert_eq!(ledger.demands()[&key()].basis, 0.6);
    }

    #[test]
    fn nothing_left_in_the_ledger_is_budget_exceeded_at_once() {
        let ledger = ready(0.05, 0.0);
        assert_eq!(
            reserve(&ledger, 0.1),
            Err(Refusal::BudgetExceeded {
                period: BudgetPeriod::Day
            })
        );
    }

    #[test]
    fn a_request_priced_at_zero_needs_no_slice_of_a_spent_cost_budget() {
        let ledger = ready(0.0, 0.0);
        assert!(reserve(&ledger, 0.0).is_ok());
        assert_eq!(
            reserve(&ledger, 0.01),
            Err(Refusal::BudgetExceeded {
                period: BudgetPeriod::Day
            })
        );
    }

    #[test]
    fn with_the_api_server_away_a_replica_spends_what_it_holds_then_fails_closed() {
        let ledger = ready(0.25, 0.75);
        ledger.lock().last_read = Instant::now().checked_sub(STALE_AFTER * 2);
        assert!(reserve(&ledger, 0.1).is_ok());
        assert!(reserve(&ledger, 0.1).is_ok());
        assert_eq!(reserve(&ledger, 0.1), Err(Refusal::LeaseUnavailable));
    }

    #[test]
    fn a_token_without_a_budget_needs_no_lease() {
        let ledger = LeasedLedger::new("pod-1");
        let limits = TokenLimits {
            rate: None,
            budgets: &[],
        };
        assert!(
            ledger
                .reserve(TOKEN, limits, Amount::default(), now())
                .is_ok()
        );
    }

    fn rate_ledger(requests: f64, remaining: f64, at: DateTime<Utc>) -> LeasedLedger {
        let ledger = LeasedLedger::new("pod-1");
        ledger.report_restored();
        let key = lease::rate_key(TOKEN, at, RateUnit::Requests);
        ledger.apply_ledger(Ledger {
            keys: BTreeMap::from([(
                key,
                KeyLedger {
                    limit: 10.0,
                    remaining,
                    grants: BTreeMap::from([("pod-1".to_string(), requests)]),
                },
            )]),
        });
        ledger
    }

    fn rated(ledger: &LeasedLedger, at: DateTime<Utc>) -> Result<ReservationId, Refusal> {
        let rate = RateLimit {
            requests_per_minute: Some(10),
            tokens_per_minute: None,
        };
        let limits = TokenLimits {
            rate: Some(&rate),
            budgets: &[],
        };
        ledger.reserve(TOKEN, limits, Amount::new(0.0, 10), at)
    }

    #[test]
    fn requests_per_minute_are_spent_from_this_minutes_grant_then_asked_for() {
        let at = now();
        let ledger = rate_ledger(3.0, 7.0, at);
        for _ in 0..3 {
            let id = rated(&ledger, at).unwrap();
            // A failed request still counts against requests per minute.
            ledger.release(id, at);
        }
        assert_eq!(rated(&ledger, at), Err(Refusal::AwaitingGrant));
        let key = lease::rate_key(TOKEN, at, RateUnit::Requests);
        let demand = ledger.demands()[&key];
        assert_eq!(demand.settled, 3.0);
        assert_eq!(demand.basis, 3.0);
        assert!(demand.wanted >= 4.0, "{demand:?}");
        // The next minute is a new key: nothing is held there yet; the ask
        // for the minute gone is dropped.
        let next = at + chrono::Duration::minutes(1);
        assert_eq!(rated(&ledger, next), Err(Refusal::AwaitingGrant));
        let demands = ledger.demands();
        assert_eq!(demands[&key].wanted, 0.0, "{demands:?}");
        assert!(demands[&lease::rate_key(TOKEN, next, RateUnit::Requests)].wanted > 0.0);
    }

    #[test]
    fn a_rolling_window_is_leased_bucket_by_bucket() {
        let rolling = [CompiledBudget {
            rolling: true,
            ..budgets()[0].clone()
        }];
        let limits = TokenLimits {
            rate: None,
            budgets: &rolling,
        };
        let at = |h: u32| Utc.with_ymd_and_hms(2026, 11, 22, h, 30, 0).unwrap();
        let bucket = |h: u32| {
            let start = Utc.with_ymd_and_hms(2026, 11, 22, h, 0, 0).unwrap();
            lease::budget_key(TOKEN, BudgetPeriod::Day, start, Unit::Usd)
        };
        let granting = |keys: &[(String, f64)]| Ledger {
            keys: keys
                .iter()
                .map(|(key, grant)| {
                    let entry = KeyLedger {
                        limit: 1.0,
                        remaining: 0.5,
                        grants: BTreeMap::from([("pod-1".to_string(), *grant)]),
                    };
                    (key.clone(), entry)
                })
                .collect(),
        };
        let ledger = LeasedLedger::new("pod-1");
        ledger.report_restored();
        ledger.apply_ledger(granting(&[(bucket(10), 0.3)]));
        let spend = |cost: f64, h: u32| {
            ledger
                .reserve(TOKEN, limits, Amount::new(cost, 1), at(h))
                .map(|id| ledger.settle(id, Amount::new(cost, 1), at(h)))
        };
        spend(0.3, 10).unwrap();
        // The next bucket is a new key: nothing held there yet. It asks as for
        // any key: its recent spend (0.3), at least four times the request.
        assert_eq!(spend(0.1, 11), Err(Refusal::AwaitingGrant));
        let demands = ledger.demands();
        let asked = demands[&bucket(11)].wanted;
        assert!((asked - 0.4).abs() < 1e-12, "{demands:?}");
        // Granted: spent against that bucket's own grant, whatever the window
        // already counts (the operator takes the earlier buckets off the
        // grant it gives); the earlier bucket's key is still reported.
        ledger.apply_ledger(granting(&[(bucket(10), 0.3), (bucket(11), 0.4)]));
        spend(0.1, 11).unwrap();
        let demands = ledger.demands();
        assert!(
            (demands[&bucket(10)].settled - 0.3).abs() < 1e-12,
            "{demands:?}"
        );
        assert!(
            (demands[&bucket(11)].settled - 0.1).abs() < 1e-12,
            "{demands:?}"
        );
        // The engine's view of the token is the whole window.
        let usage = ledger.usage(TOKEN, &rolling, at(11));
        assert!((usage[0].cost_usd - 0.4).abs() < 1e-12, "{usage:?}");
    }

    #[test]
    fn a_quiet_pod_under_a_large_limit_asks_for_a_share_of_the_limit_not_a_few_requests() {
        let at = now();
        let key = lease::rate_key(TOKEN, at, RateUnit::Requests);
        let ledger = LeasedLedger::new("pod-1");
        ledger.report_restored();
        let grant = |requests: f64| Ledger {
            keys: BTreeMap::from([(
                key.clone(),
                KeyLedger {
                    limit: 100_000.0,
                    remaining: 100_000.0 - requests,
                    grants: BTreeMap::from([
                        ("pod-1".to_string(), requests),
                        ("pod-2".to_string(), 0.0),
                    ]),
                },
            )]),
        };
        ledger.apply_ledger(grant(0.0));
        let rate = RateLimit {
            requests_per_minute: Some(100_000),
            tokens_per_minute: None,
        };
        let limits = || TokenLimits {
            rate: Some(&rate),
            budgets: &[],
        };
        let one = || ledger.reserve(TOKEN, limits(), Amount::new(0.0, 10), at);
        assert_eq!(one(), Err(Refusal::AwaitingGrant));
        // 1% of 100 000 requests between the two pods holding the key: 500,
        // where ten seconds of spend (none) or four requests would be a few.
        assert_eq!(ledger.demands()[&key].wanted, 500.0);
        ledger.apply_ledger(grant(500.0));
        for _ in 0..400 {
            one().unwrap();
        }
        assert_eq!(
            ledger.demands()[&key].wanted,
            0.0,
            "no ask while 20% is left"
        );
        one().unwrap();
        assert!(
            ledger.demands()[&key].wanted >= 500.0,
            "asks ahead once less than a fifth of the slice is left"
        );
    }

    #[test]
    fn nothing_left_of_a_minute_is_rate_limited_until_the_next() {
        let at = now() + chrono::Duration::seconds(20);
        let ledger = rate_ledger(1.0, 0.0, at);
        rated(&ledger, at).unwrap();
        match rated(&ledger, at) {
            Err(Refusal::RateLimited { what, retry_after }) => {
                assert_eq!(what, "requests per minute");
                assert_eq!(retry_after, Duration::from_secs(40));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_next_minute_is_asked_for_in_the_last_seconds_of_this_one() {
        let early = now() + chrono::Duration::seconds(30);
        let ledger = rate_ledger(5.0, 5.0, early);
        rated(&ledger, early).unwrap();
        let next = lease::rate_key(
            TOKEN,
            now() + chrono::Duration::minutes(1),
            RateUnit::Requests,
        );
        assert!(!ledger.demands().contains_key(&next));
        let late = now() + chrono::Duration::seconds(55);
        rated(&ledger, late).unwrap();
        let demand = ledger.demands()[&next];
        assert!(demand.wanted > 0.0 && demand.basis == 0.0, "{demand:?}");
    }

    #[test]
    fn tokens_per_minute_count_estimates_corrected_at_settle() {
        let at = now();
        let ledger = LeasedLedger::new("pod-1");
        ledger.report_restored();
        let key = lease::rate_key(TOKEN, at, RateUnit::Tokens);
        ledger.apply_ledger(Ledger {
            keys: BTreeMap::from([(
                key.clone(),
                KeyLedger {
                    limit: 1000.0,
                    remaining: 0.0,
                    grants: BTreeMap::from([("pod-1".to_string(), 1000.0)]),
                },
            )]),
        });
        let rate = RateLimit {
            requests_per_minute: None,
            tokens_per_minute: Some(1000),
        };
        let limits = TokenLimits {
            rate: Some(&rate),
            budgets: &[],
        };
        let id = ledger
            .reserve(TOKEN, limits, Amount::new(0.0, 800), at)
            .unwrap();
        assert!(matches!(
            ledger.reserve(TOKEN, limits, Amount::new(0.0, 300), at),
            Err(Refusal::RateLimited { .. })
        ));
        ledger.settle(id, Amount::new(0.0, 100), at);
        assert_eq!(ledger.demands()[&key].settled, 100.0);
    }
}
