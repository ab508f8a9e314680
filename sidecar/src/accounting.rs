//! Usage accounting: rate limits and budgets (DESIGN.md section 5).
//!
//! The engine decides with the usage it is given (`Request::usage`) but keeps no
//! state; this module is the state. Every forwarded request goes through three
//! steps: [`UsageLedger::reserve`] the estimated cost and tokens before the call
//! (atomically checking rate limits and budgets, so concurrent requests cannot
//! together overspend), then either [`UsageLedger::settle`] with the actual usage
//! the upstream reported, or [`UsageLedger::release`] when the upstream failed and
//! nothing was consumed.
//!
//! The ledger is a trait because one process is only the first step: with several
//! replicas serving one token, a shared implementation (leases of the remaining
//! budget, DESIGN.md section 5) replaces [`InProcessLedger`] without touching the
//! request path.
//!
//! Rate limits are token buckets (a GCRA in effect): a bucket holds one minute's
//! allowance and refills continuously at allowance/60 per second, so a token may
//! burst up to its per-minute limit and then proceeds at the steady rate. Only
//! forwarded requests count; a denied request consumes nothing.
//!
//! Budgets are per calendar period (day, week from Monday, month) in the budget's
//! time zone; a period's tally starts at zero when the period rolls over. The bound
//! on overspend in one process is zero beyond the difference between estimates and
//! actual usage of requests already admitted: a request is admitted only if settled
//! plus reserved plus its own estimate fits.
//!
//! Arithmetic never wraps or poisons: token counts add with `saturating_add`
//! (a tally stops at `u64::MAX` rather than wrapping to zero), and dollar
//! amounts enter through [`Amount::new`] and add with
//! [`policybind_crds::common::add_usd`], which keep them finite, non-negative
//! and at most [`policybind_crds::common::MAX_USD`] (NaN counts as that
//! maximum: an amount that cannot be known exhausts a cost budget).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use policybind_crds::common::{add_usd, clamp_usd};
use policybind_crds::{BudgetPeriod, RateLimit};
use policybind_engine::compile::CompiledBudget;
use policybind_engine::request::UsageSoFar;

/// Cost and tokens of one request, estimated or actual.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Amount {
    /// US dollars.
    pub cost_usd: f64,
    /// Input plus output tokens.
    pub tokens: u64,
}

impl Amount {
    /// An amount whose cost is clamped ([`clamp_usd`]): what every ledger
    /// counts, whatever it was handed.
    pub fn new(cost_usd: f64, tokens: u64) -> Amount {
        Amount {
            cost_usd: clamp_usd(cost_usd),
            tokens,
        }
    }

    fn sanitized(self) -> Amount {
        Amount::new(self.cost_usd, self.tokens)
    }

    /// `self + other`, saturating and clamped.
    fn plus(self, other: Amount) -> Amount {
        Amount {
            cost_usd: add_usd(self.cost_usd, other.cost_usd),
            tokens: self.tokens.saturating_add(other.tokens),
        }
    }
}

/// Identifies one reservation until it is settled or released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReservationId(u64);

impl ReservationId {
    /// An id a ledger numbers itself.
    pub(crate) fn from_raw(id: u64) -> Self {
        ReservationId(id)
    }

    pub(crate) fn raw(self) -> u64 {
        self.0
    }
}

/// What one token settled in one budget period: the ledger's side of a usage
/// report (`crate::usage`). Reservations in flight are not included; they are
/// reported once they settle.
#[derive(Debug, Clone, PartialEq)]
pub struct SettledUsage {
    /// Token id, `namespace/name`.
    pub token: String,
    pub period: BudgetPeriod,
    /// Start of the period the amounts count in.
    pub period_start: DateTime<Utc>,
    pub settled: Amount,
    /// Requests settled in the period.
    pub requests: u64,
}

/// The limits of one token, taken from the compiled policy set.
#[derive(Debug, Clone, Copy)]
pub struct TokenLimits<'a> {
    pub rate: Option<&'a RateLimit>,
    pub budgets: &'a [CompiledBudget],
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("rate limit reached: {what}; retry after {retry_after:?}")]
    RateLimited {
        /// `requests per minute` or `tokens per minute`.
        what: &'static str,
        retry_after: Duration,
    },
    #[error("the {} budget would be exceeded", period.as_str())]
    BudgetExceeded { period: BudgetPeriod },
    /// This replica's share of a budget does not cover the request; it asked
    /// the operator for more (`crate::lease`). The caller may wait for
    /// [`UsageLedger::grant_changed`] and try again.
    #[error("this replica's share of the budget is spent; more was asked for")]
    AwaitingGrant,
    /// This replica cannot learn its share of a budget (not yet read, or the
    /// API server is away) and has spent what it holds: it refuses (fail closed).
    #[error(
        "this replica holds no budget lease that covers the request and cannot reach the operator's ledger"
    )]
    LeaseUnavailable,
    /// The shared budget store (Redis, `crate::redis_ledger`) cannot be
    /// reached in time or holds values PolicyBind did not write: refused
    /// (fail closed).
    #[error("the budget store cannot be used: {reason}")]
    StoreUnavailable { reason: String },
}

/// Where usage is counted. Implementations must be safe under concurrency:
/// `reserve` checks and records atomically.
pub trait UsageLedger: Send + Sync + 'static {
    /// Settled plus reserved usage of each budget period of a token, for the
    /// decision's facts.
    fn usage(&self, token: &str, budgets: &[CompiledBudget], now: DateTime<Utc>)
    -> Vec<UsageSoFar>;

    /// Checks the rate limits and budgets and, if the estimate fits, records it.
    fn reserve(
        &self,
        token: &str,
        limits: TokenLimits<'_>,
        estimate: Amount,
        now: DateTime<Utc>,
    ) -> Result<ReservationId, Refusal>;

    /// [`UsageLedger::usage`] for the request path: a ledger whose tallies
    /// live elsewhere (`crate::redis_ledger`) reads them without blocking.
    fn usage_shared<'a>(
        &'a self,
        token: &'a str,
        budgets: &'a [CompiledBudget],
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Vec<UsageSoFar>> {
        Box::pin(std::future::ready(self.usage(token, budgets, now)))
    }

    /// [`UsageLedger::reserve`] for the request path: a ledger whose tallies
    /// live elsewhere (`crate::redis_ledger`) reserves without blocking.
    fn reserve_shared<'a>(
        &'a self,
        token: &'a str,
        limits: TokenLimits<'a>,
        estimate: Amount,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<ReservationId, Refusal>> {
        Box::pin(std::future::ready(
            self.reserve(token, limits, estimate, now),
        ))
    }

    /// Replaces a reservation's estimate with the actual usage.
    fn settle(&self, id: ReservationId, actual: Amount, now: DateTime<Utc>);

    /// Drops a reservation; the request consumed nothing (upstream failure).
    /// The request still counts against the requests-per-minute limit.
    fn release(&self, id: ReservationId, now: DateTime<Utc>);

    /// Adds `more` to a reservation in flight, checked against the budgets
    /// like a new reservation (rate limits are not counted again): a stream
    /// that outgrew its estimate asks to go on. Refused with
    /// [`Refusal::BudgetExceeded`] when it does not fit. A ledger that cannot
    /// extend lets the stream go on (the default), settling what it produced.
    fn extend(
        &self,
        _id: ReservationId,
        _budgets: &[CompiledBudget],
        _more: Amount,
        _now: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        Ok(())
    }

    /// Undoes a reservation entirely, the request counted against no rate
    /// limit either: another owner the same request is charged to refused it
    /// (a request refused by any scope consumes nothing). Ledgers that cannot
    /// take a request back from a rate limit release it.
    fn cancel(&self, id: ReservationId, now: DateTime<Utc>) {
        self.release(id, now);
    }

    /// Settled usage of every token in the latest period of each budget it
    /// was charged against, for the usage report the operator sums into
    /// `AccessToken.status.usage`. Periods with nothing settled are left out.
    /// A period that has ended but saw no request since keeps its old start;
    /// the operator ignores entries of past periods.
    fn settled_usage(&self) -> Vec<SettledUsage>;

    /// Adds usage settled by an earlier run of this reporter (a restarted
    /// container keeps its pod name, hence its report), so that a restart does
    /// not reset what the token spent. The entries must be added to, not
    /// replace, the tallies: requests may have settled before the restore.
    fn restore(&self, settled: &[SettledUsage]);

    /// Notified when a reservation refused with [`Refusal::AwaitingGrant`] may
    /// now fit; `None` for ledgers that never refuse so.
    fn grant_changed(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
}

/// A token bucket over one minute.
#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    level: f64,
    updated: DateTime<Utc>,
}

impl Bucket {
    fn new(capacity: f64, now: DateTime<Utc>) -> Self {
        Bucket {
            capacity,
            level: capacity,
            updated: now,
        }
    }

    fn refill(&mut self, capacity: f64, now: DateTime<Utc>) {
        // A changed limit (policy reload) takes effect at once.
        self.capacity = capacity;
        let elapsed = (now - self.updated).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
        if elapsed > 0.0 {
            self.level = (self.level + elapsed * capacity / 60.0).min(capacity);
            self.updated = now;
        }
    }

    /// Time until `amount` would be available, or zero if it is now.
    fn wait_for(&self, amount: f64) -> Option<Duration> {
        if self.level >= amount {
            return None;
        }
        if amount > self.capacity {
            // Never satisfiable; a minute is the honest hint.
            return Some(Duration::from_secs(60));
        }
        let seconds = (amount - self.level) * 60.0 / self.capacity;
        Some(Duration::from_secs_f64(seconds.max(0.001)))
    }
}

#[derive(Debug, Clone)]
struct PeriodTally {
    period: BudgetPeriod,
    /// Start of the calendar period, or of the current bucket of a rolling
    /// window.
    start: DateTime<Utc>,
    settled: Amount,
    /// Requests settled in the period.
    requests: u64,
    reserved: Amount,
    /// A rolling window's earlier buckets still in it, oldest first.
    past: VecDeque<PastBucket>,
    /// Whether the budget is a rolling window; `None` until a request used
    /// the tally (it was only restored from a report).
    rolling: Option<bool>,
}

/// What was settled in one earlier bucket of a rolling window.
#[derive(Debug, Clone)]
struct PastBucket {
    start: DateTime<Utc>,
    settled: Amount,
    requests: u64,
}

impl PeriodTally {
    /// Settled in the earlier buckets still in the window.
    fn past_settled(&self) -> Amount {
        self.past
            .iter()
            .fold(Amount::default(), |sum, b| sum.plus(b.settled))
    }

    /// Settled plus reserved, over the whole window.
    fn counted(&self) -> Amount {
        self.settled.plus(self.reserved).plus(self.past_settled())
    }
}

#[derive(Debug, Default)]
struct TokenState {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    periods: Vec<PeriodTally>,
}

impl TokenState {
    /// Refuses when a rate bucket cannot take one more request of `tokens`;
    /// changes nothing but the buckets' refill (and drops limits no longer set).
    fn check_rate(
        &mut self,
        rate: Option<&RateLimit>,
        tokens: u64,
        now: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        let rpm = rate.and_then(|r| r.requests_per_minute).map(f64::from);
        let tpm = rate.and_then(|r| r.tokens_per_minute).map(|t| t as f64);
        let checks = [
            (&mut self.requests, rpm, 1.0, "requests per minute"),
            (&mut self.tokens, tpm, tokens as f64, "tokens per minute"),
        ];
        for (slot, capacity, amount, what) in checks {
            let Some(capacity) = capacity else {
                *slot = None;
                continue;
            };
            let bucket = slot.get_or_insert_with(|| Bucket::new(capacity, now));
            bucket.refill(capacity, now);
            if let Some(retry_after) = bucket.wait_for(amount) {
                return Err(Refusal::RateLimited { what, retry_after });
            }
        }
        Ok(())
    }

    /// Refuses when `estimate` would take a budget over its limit.
    fn check_budgets(
        &mut self,
        budgets: &[CompiledBudget],
        estimate: Amount,
        now: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        for budget in budgets {
            let tally = self.tally(budget, now);
            // A request priced at zero never takes a cost budget over.
            let total = tally.counted().plus(estimate);
            let over_cost = budget
                .max_cost_usd
                .is_some_and(|max| estimate.cost_usd > 0.0 && total.cost_usd > max);
            let over_tokens = budget.max_tokens.is_some_and(|max| total.tokens > max);
            if over_cost || over_tokens {
                return Err(Refusal::BudgetExceeded {
                    period: budget.period,
                });
            }
        }
        Ok(())
    }

    fn tally(&mut self, budget: &CompiledBudget, now: DateTime<Utc>) -> &mut PeriodTally {
        let start = budget.tally_start(now);
        let index = match self.periods.iter().position(|p| p.period == budget.period) {
            Some(i) => i,
            None => {
                self.periods.push(PeriodTally {
                    period: budget.period,
                    start,
                    settled: Amount::default(),
                    requests: 0,
                    reserved: Amount::default(),
                    past: VecDeque::new(),
                    rolling: Some(budget.rolling),
                });
                self.periods.len() - 1
            }
        };
        let tally = &mut self.periods[index];
        tally.rolling = Some(budget.rolling);
        if tally.start < start {
            // A new period or bucket: what was settled belongs to the old one.
            // A rolling window keeps it while it is in the window. Reservations
            // still in flight stay counted until they settle or are released.
            // (Kept even when empty: a request reserved in it may settle later.)
            if budget.rolling {
                tally.past.push_back(PastBucket {
                    start: tally.start,
                    settled: tally.settled,
                    requests: tally.requests,
                });
            }
            tally.start = start;
            tally.settled = Amount::default();
            tally.requests = 0;
        }
        if budget.rolling {
            let counting = budget.counting_start(now);
            while tally.past.front().is_some_and(|b| b.start < counting) {
                tally.past.pop_front();
            }
        } else {
            // (A calendar period's start was just computed: no second time-zone
            // lookup on the request path.)
            tally.past.clear();
        }
        tally
    }
}

#[derive(Debug)]
struct Pending {
    token: String,
    estimate: Amount,
    /// Period and period start each budget was reserved in.
    periods: Vec<(BudgetPeriod, DateTime<Utc>)>,
    took_tokens: bool,
}

#[derive(Debug, Default)]
struct Inner {
    tokens: HashMap<String, TokenState>,
    pending: HashMap<u64, Pending>,
    next: u64,
}

/// A [`UsageLedger`] for one process: one mutex over all state. The critical
/// section is a few arithmetic operations, far below the cost of the HTTP call
/// it guards.
#[derive(Debug, Default)]
pub struct InProcessLedger {
    inner: Mutex<Inner>,
}

impl InProcessLedger {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the tallies half-written
        // in a way worse than losing one request's accounting; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Settled plus reserved under each budget's current tally only: the
    /// calendar period, or the current bucket of a rolling window (what a
    /// lease key of that bucket is checked with).
    pub fn tally_usage(
        &self,
        token: &str,
        budgets: &[CompiledBudget],
        now: DateTime<Utc>,
    ) -> Vec<UsageSoFar> {
        self.usage_by(token, budgets, now, |t| t.settled.plus(t.reserved))
    }

    /// `amount` of each budget's tally of `token`, as the engine's usage.
    fn usage_by(
        &self,
        token: &str,
        budgets: &[CompiledBudget],
        now: DateTime<Utc>,
        amount: impl Fn(&PeriodTally) -> Amount,
    ) -> Vec<UsageSoFar> {
        if budgets.is_empty() {
            return vec![];
        }
        let mut inner = self.lock();
        let state = inner.tokens.entry(token.to_string()).or_default();
        budgets
            .iter()
            .map(|b| {
                let total = amount(state.tally(b, now));
                UsageSoFar {
                    period: b.period,
                    cost_usd: total.cost_usd,
                    tokens: total.tokens,
                }
            })
            .collect()
    }

    /// Number of reservations in flight (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.lock().pending.len()
    }
}

impl UsageLedger for InProcessLedger {
    fn usage(
        &self,
        token: &str,
        budgets: &[CompiledBudget],
        now: DateTime<Utc>,
    ) -> Vec<UsageSoFar> {
        // The whole window: a rolling window's earlier buckets count.
        self.usage_by(token, budgets, now, PeriodTally::counted)
    }

    fn reserve(
        &self,
        token: &str,
        limits: TokenLimits<'_>,
        estimate: Amount,
        now: DateTime<Utc>,
    ) -> Result<ReservationId, Refusal> {
        let estimate = estimate.sanitized();
        let mut inner = self.lock();
        let state = inner.tokens.entry(token.to_string()).or_default();

        // Check everything first, then commit: a refused request leaves no trace.
        state.check_rate(limits.rate, estimate.tokens, now)?;
        state.check_budgets(limits.budgets, estimate, now)?;

        if let Some(bucket) = &mut state.requests {
            bucket.level -= 1.0;
        }
        if let Some(bucket) = &mut state.tokens {
            bucket.level -= estimate.tokens as f64;
        }
        let mut periods = Vec::with_capacity(limits.budgets.len());
        for budget in limits.budgets {
            let tally = state.tally(budget, now);
            tally.reserved = tally.reserved.plus(estimate);
            periods.push((budget.period, tally.start));
        }
        let took_tokens = state.tokens.is_some();
        // 2^64 reservations are out of reach; wrapping would still only reuse
        // ids long settled.
        inner.next = inner.next.wrapping_add(1);
        let id = inner.next;
        inner.pending.insert(
            id,
            Pending {
                token: token.to_string(),
                estimate,
                periods,
                took_tokens,
            },
        );
        Ok(ReservationId(id))
    }

    fn settle(&self, id: ReservationId, actual: Amount, _now: DateTime<Utc>) {
        let actual = actual.sanitized();
        let mut inner = self.lock();
        let Some(pending) = inner.pending.remove(&id.0) else {
            return;
        };
        let Some(state) = inner.tokens.get_mut(&pending.token) else {
            return;
        };
        if pending.took_tokens
            && let Some(bucket) = &mut state.tokens
        {
            // Refund an overestimate, charge an underestimate (the bucket may go
            // below zero, which delays the next request accordingly).
            bucket.level = (bucket.level + pending.estimate.tokens as f64 - actual.tokens as f64)
                .min(bucket.capacity);
        }
        for (period, start) in &pending.periods {
            if let Some(tally) = state.periods.iter_mut().find(|t| t.period == *period) {
                unreserve(tally, pending.estimate);
                if tally.start == *start {
                    tally.settled = tally.settled.plus(actual);
                    tally.requests = tally.requests.saturating_add(1);
                } else if let Some(bucket) = tally.past.iter_mut().find(|b| b.start == *start) {
                    // Reserved in an earlier bucket of a rolling window: the
                    // spend is counted where it was reserved.
                    bucket.settled = bucket.settled.plus(actual);
                    bucket.requests = bucket.requests.saturating_add(1);
                }
            }
        }
    }

    fn release(&self, id: ReservationId, _now: DateTime<Utc>) {
        let mut inner = self.lock();
        let Some(pending) = inner.pending.remove(&id.0) else {
            return;
        };
        let Some(state) = inner.tokens.get_mut(&pending.token) else {
            return;
        };
        if pending.took_tokens
            && let Some(bucket) = &mut state.tokens
        {
            bucket.level = (bucket.level + pending.estimate.tokens as f64).min(bucket.capacity);
        }
        for (period, _) in &pending.periods {
            if let Some(tally) = state.periods.iter_mut().find(|t| t.period == *period) {
                unreserve(tally, pending.estimate);
            }
        }
    }

    fn extend(
        &self,
        id: ReservationId,
        budgets: &[CompiledBudget],
        more: Amount,
        now: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        let more = more.sanitized();
        let mut inner = self.lock();
        let Inner {
            tokens, pending, ..
        } = &mut *inner;
        let Some(pending) = pending.get_mut(&id.0) else {
            return Ok(());
        };
        let state = tokens.entry(pending.token.clone()).or_default();
        state.check_budgets(budgets, more, now)?;
        for (period, start) in &pending.periods {
            if let Some(tally) = state.periods.iter_mut().find(|t| t.period == *period)
                && (tally.start == *start || tally.past.iter().any(|b| b.start == *start))
            {
                tally.reserved = tally.reserved.plus(more);
            }
        }
        pending.estimate = pending.estimate.plus(more);
        Ok(())
    }

    fn cancel(&self, id: ReservationId, now: DateTime<Utc>) {
        let token = self.lock().pending.get(&id.0).map(|p| p.token.clone());
        self.release(id, now);
        if let Some(token) = token
            && let Some(bucket) = self
                .lock()
                .tokens
                .get_mut(&token)
                .and_then(|s| s.requests.as_mut())
        {
            bucket.level = (bucket.level + 1.0).min(bucket.capacity);
        }
    }

    fn settled_usage(&self) -> Vec<SettledUsage> {
        let inner = self.lock();
        inner
            .tokens
            .iter()
            .flat_map(|(token, state)| {
                // A rolling window is reported bucket by bucket, the earlier
                // ones still in the window included.
                state.periods.iter().flat_map(move |t| {
                    t.past
                        .iter()
                        .map(|b| (b.start, b.settled, b.requests))
                        .chain([(t.start, t.settled, t.requests)])
                        .filter(|(_, settled, requests)| {
                            *requests > 0 || *settled != Amount::default()
                        })
                        .map(move |(start, settled, requests)| SettledUsage {
                            token: token.clone(),
                            period: t.period,
                            period_start: start,
                            settled,
                            requests,
                        })
                })
            })
            .collect()
    }

    fn restore(&self, settled: &[SettledUsage]) {
        let mut inner = self.lock();
        for entry in settled {
            let restored = entry.settled.sanitized();
            let state = inner.tokens.entry(entry.token.clone()).or_default();
            let tally = match state
                .periods
                .iter_mut()
                .position(|t| t.period == entry.period)
            {
                Some(i) => &mut state.periods[i],
                None => {
                    state.periods.push(PeriodTally {
                        period: entry.period,
                        start: entry.period_start,
                        settled: Amount::default(),
                        requests: 0,
                        reserved: Amount::default(),
                        past: VecDeque::new(),
                        rolling: None,
                    });
                    state.periods.last_mut().expect("just pushed")
                }
            };
            if tally.rolling == Some(false) && entry.period_start != tally.start {
                // This run already counts another calendar period: the entry
                // is of a past one.
                continue;
            }
            if entry.period_start > tally.start {
                // Newer than what this run counts: that becomes an earlier bucket.
                let current = PastBucket {
                    start: tally.start,
                    settled: tally.settled,
                    requests: tally.requests,
                };
                tally.past.push_back(current);
                tally.start = entry.period_start;
                tally.settled = Amount::default();
                tally.requests = 0;
            }
            if entry.period_start == tally.start {
                tally.settled = tally.settled.plus(restored);
                tally.requests = tally.requests.saturating_add(entry.requests);
            } else {
                // An earlier bucket (of a rolling window; a calendar budget
                // drops it at its next use, as a past period).
                match tally
                    .past
                    .iter()
                    .position(|b| b.start >= entry.period_start)
                {
                    Some(i) if tally.past[i].start == entry.period_start => {
                        let bucket = &mut tally.past[i];
                        bucket.settled = bucket.settled.plus(restored);
                        bucket.requests = bucket.requests.saturating_add(entry.requests);
                    }
                    at => tally.past.insert(
                        at.unwrap_or(tally.past.len()),
                        PastBucket {
                            start: entry.period_start,
                            settled: restored,
                            requests: entry.requests,
                        },
                    ),
                }
            }
        }
    }
}

fn unreserve(tally: &mut PeriodTally, estimate: Amount) {
    tally.reserved.cost_usd = clamp_usd(tally.reserved.cost_usd - estimate.cost_usd);
    tally.reserved.tokens = tally.reserved.tokens.saturating_sub(estimate.tokens);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use chrono::TimeZone;

    use super::*;

    fn budget(max_cost: Option<f64>, max_tokens: Option<u64>) -> CompiledBudget {
        CompiledBudget {
            period: BudgetPeriod::Day,
            max_cost_usd: max_cost,
            max_tokens,
            tz: chrono_tz::UTC,
            rolling: false,
        }
    }

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 10, h, m, s).unwrap()
    }

    #[test]
    fn a_rolling_day_counts_the_last_24_hours_bucket_by_bucket_across_a_restart() {
        let rolling = [CompiledBudget {
            rolling: true,
            ..budget(Some(1.0), None)
        }];
        let limits = TokenLimits {
            rate: None,
            budgets: &rolling,
        };
        let day = |d: u32, h: u32, m: u32| Utc.with_ymd_and_hms(2026, 3, d, h, m, 0).unwrap();
        let ledger = InProcessLedger::new();
        let spend = |ledger: &InProcessLedger, cost: f64, at: DateTime<Utc>| {
            ledger
                .reserve("ns/bot", limits, amount(cost, 1), at)
                .map(|id| ledger.settle(id, amount(cost, 1), at))
        };
        spend(&ledger, 0.6, day(10, 10, 30)).unwrap();
        // Reserved at 10:59, settled at 11:01: it counts in the 10:00 bucket.
        let late = ledger
            .reserve("ns/bot", limits, amount(0.3, 1), day(10, 10, 59))
            .unwrap();
        ledger.settle(late, amount(0.3, 1), day(10, 11, 1));
        spend(&ledger, 0.05, day(10, 14, 0)).unwrap();
        // Past midnight a calendar day would start again; the window does not.
        let refused = Err(Refusal::BudgetExceeded {
            period: BudgetPeriod::Day,
        });
        assert_eq!(spend(&ledger, 0.2, day(11, 9, 0)), refused);
        let usage = ledger.usage("ns/bot", &rolling, day(11, 9, 0));
        assert!((usage[0].cost_usd - 0.95).abs() < 1e-9, "{usage:?}");

        // A restart: the report, bucket by bucket, is read back.
        let report = ledger.settled_usage();
        let starts: Vec<_> = report.iter().map(|e| e.period_start).collect();
        assert!(
            starts.contains(&day(10, 10, 0)) && starts.contains(&day(10, 14, 0)),
            "{report:?}"
        );
        let restarted = InProcessLedger::new();
        restarted.restore(&report);
        for ledger in [&ledger, &restarted] {
            // At 10:30 the next day the 10:00 bucket is still in the window
            // (never released early)...
            assert_eq!(spend(ledger, 0.2, day(11, 10, 30)), refused);
            // ...and from 11:00 it has left it: 0.05 remains counted.
            let usage = ledger.usage("ns/bot", &rolling, day(11, 11, 0));
            assert!((usage[0].cost_usd - 0.05).abs() < 1e-9, "{usage:?}");
            assert_eq!(spend(ledger, 0.9, day(11, 11, 0)), Ok(()));
            assert_eq!(spend(ledger, 0.1, day(11, 11, 5)), refused);
        }
        // A calendar day, for contrast, starts again at midnight.
        let calendar = [budget(Some(1.0), None)];
        let daily = InProcessLedger::new();
        let limits = TokenLimits {
            rate: None,
            budgets: &calendar,
        };
        let id = daily
            .reserve("ns/bot", limits, amount(0.95, 1), day(10, 23, 0))
            .unwrap();
        daily.settle(id, amount(0.95, 1), day(10, 23, 0));
        assert!(
            daily
                .reserve("ns/bot", limits, amount(0.9, 1), day(11, 0, 0))
                .is_ok()
        );
    }

    fn amount(cost: f64, tokens: u64) -> Amount {
        Amount {
            cost_usd: cost,
            tokens,
        }
    }

    #[test]
    fn reservation_counts_until_settled_with_actual_usage() {
        let ledger = InProcessLedger::new();
        let budgets = [budget(Some(1.0), None)];
        let limits = TokenLimits {
            rate: None,
            budgets: &budgets,
        };
        let id = ledger
            .reserve("ns/t", limits, amount(0.4, 100), at(10, 0, 0))
            .unwrap();
        assert_eq!(
            ledger.usage("ns/t", &budgets, at(10, 0, 1))[0].cost_usd,
            0.4
        );
        ledger.settle(id, amount(0.1, 20), at(10, 0, 2));
        let usage = ledger.usage("ns/t", &budgets, at(10, 0, 3));
        assert!((usage[0].cost_usd - 0.1).abs() < 1e-12);
        assert_eq!(usage[0].tokens, 20);
        assert_eq!(ledger.in_flight(), 0);
    }

    #[test]
    fn a_request_priced_at_zero_passes_a_spent_cost_budget_but_not_a_spent_token_budget() {
        let ledger = InProcessLedger::new();
        let budgets = [budget(Some(1.0), Some(1_000))];
        let limits = TokenLimits {
            rate: None,
            budgets: &budgets,
        };
        let id = ledger
            .reserve("t", limits, amount(0.9, 10), at(10, 0, 0))
            .unwrap();
        // Settled above the limit: priced requests are refused from now on.
        ledger.settle(id, amount(1.2, 10), at(10, 0, 1));
        assert!(
            ledger
                .reserve("t", limits, amount(0.01, 10), at(10, 0, 2))
                .is_err()
        );
        let free = ledger
            .reserve("t", limits, amount(0.0, 500), at(10, 0, 2))
            .expect("a free model stays usable");
        ledger.settle(free, amount(0.0, 990), at(10, 0, 3));
        // The token budget still counts free requests.
        assert_eq!(
            ledger.reserve("t", limits, amount(0.0, 10), at(10, 0, 4)),
            Err(Refusal::BudgetExceeded {
                period: BudgetPeriod::Day
            })
        );
    }

    #[test]
    fn budget_refuses_an_estimate_that_does_not_fit() {
        let ledger = InProcessLedger::new();
        let budgets = [budget(Some(1.0), None)];
        let limits = TokenLimits {
            rate: None,
            budgets: &budgets,
        };
        ledger
            .reserve("t", limits, amount(0.7, 1), at(10, 0, 0))
            .unwrap();
        assert_eq!(
            ledger.reserve("t", limits, amount(0.4, 1), at(10, 0, 0)),
            Err(Refusal::BudgetExceeded {
                period: BudgetPeriod::Day
            })
        );
        // Other tokens are unaffected.
        ledger
            .reserve("u", limits, amount(0.4, 1), at(10, 0, 0))
            .unwrap();
    }

    #[test]
    fn released_reservation_frees_the_budget() {
        let ledger = InProcessLedger::new();
        let budgets = [budget(None, Some(100))];
        let limits = TokenLimits {
            rate: None,
            budgets: &budgets,
        };
        let id = ledger
            .reserve("t", limits, amount(0.0, 80), at(10, 0, 0))
            .unwrap();
        assert!(
            ledger
                .reserve("t", limits, amount(0.0, 80), at(10, 0, 0))
                .is_err()
        );
        ledger.release(id, at(10, 0, 1));
        ledger
            .reserve("t", limits, amount(0.0, 80), at(10, 0, 1))
            .unwrap();
    }

    #[test]
    fn budget_resets_when_the_calendar_day_rolls_over_in_the_budget_time_zone() {
        let ledger = InProcessLedger::new();
        let tz: chrono_tz::Tz = "America/New_York".parse().unwrap();
        let budgets = [CompiledBudget {
            tz,
            ..budget(Some(1.0), None)
        }];
        let limits = TokenLimits {
            rate: None,
            budgets: &budgets,
        };
        // 03:00 UTC is still the previous day in New York (EDT, UTC-4, on 10 March 2026).
        let id = ledger
            .reserve("t", limits, amount(0.9, 1), at(3, 0, 0))
            .unwrap();
        ledger.settle(id, amount(0.9, 1), at(3, 0, 1));
        assert!(
            ledger
                .reserve("t", limits, amount(0.5, 1), at(3, 30, 0))
                .is_err()
        );
        // 04:00 UTC is midnight in New York: a new day, a fresh budget.
        ledger
            .reserve("t", limits, amount(0.5, 1), at(4, 0, 0))
            .unwrap();
    }

    #[test]
    fn requests_per_minute_allow_a_burst_then_the_steady_rate() {
        let ledger = InProcessLedger::new();
        let rate = RateLimit {
            requests_per_minute: Some(6),
            tokens_per_minute: None,
        };
        let limits = TokenLimits {
            rate: Some(&rate),
            budgets: &[],
        };
        for _ in 0..6 {
            let id = ledger
                .reserve("t", limits, amount(0.0, 1), at(10, 0, 0))
                .unwrap();
            ledger.settle(id, amount(0.0, 1), at(10, 0, 0));
        }
        match ledger.reserve("t", limits, amount(0.0, 1), at(10, 0, 0)) {
            Err(Refusal::RateLimited { retry_after, .. }) => {
                assert_eq!(retry_after, Duration::from_secs(10))
            }
            other => panic!("expected rate limited, got {other:?}"),
        }
        // 6 per minute refills one every 10 seconds.
        ledger
            .reserve("t", limits, amount(0.0, 1), at(10, 0, 10))
            .unwrap();
        assert!(
            ledger
                .reserve("t", limits, amount(0.0, 1), at(10, 0, 11))
                .is_err()
        );
    }

    #[test]
    fn tokens_per_minute_are_charged_with_actual_usage() {
        let ledger = InProcessLedger::new();
        let rate = RateLimit {
            requests_per_minute: None,
            tokens_per_minute: Some(1000),
        };
        let limits = TokenLimits {
            rate: Some(&rate),
            budgets: &[],
        };
        let id = ledger
            .reserve("t", limits, amount(0.0, 900), at(10, 0, 0))
            .unwrap();
        assert!(
            ledger
                .reserve("t", limits, amount(0.0, 200), at(10, 0, 0))
                .is_err()
        );
        // The call used far less than estimated: the rest is refunded.
        ledger.settle(id, amount(0.0, 100), at(10, 0, 0));
        ledger
            .reserve("t", limits, amount(0.0, 800), at(10, 0, 0))
            .unwrap();
        // A single request larger than a minute's allowance is never admitted.
        assert!(
            ledger
                .reserve("t", limits, amount(0.0, 5000), at(11, 0, 0))
                .is_err()
        );
    }

    /// One step of a ledger's life, with any amounts a caller could hand it.
    #[derive(Debug, Clone)]
    enum Step {
        Reserve(f64, u64),
        Settle(usize, f64, u64),
        Release(usize),
        Restore(f64, u64),
    }

    fn any_usd() -> impl proptest::strategy::Strategy<Value = f64> {
        use proptest::prelude::*;
        prop_oneof![
            0.0..2.0f64,
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MAX),
            -5.0..0.0f64,
        ]
    }

    fn any_tokens() -> impl proptest::strategy::Strategy<Value = u64> {
        use proptest::prelude::*;
        prop_oneof![0..1_000u64, Just(u64::MAX), Just(u64::MAX - 1)]
    }

    fn any_step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (any_usd(), any_tokens()).prop_map(|(c, t)| Step::Reserve(c, t)),
            (0..8usize, any_usd(), any_tokens()).prop_map(|(i, c, t)| Step::Settle(i, c, t)),
            (0..8usize).prop_map(Step::Release),
            (any_usd(), any_tokens()).prop_map(|(c, t)| Step::Restore(c, t)),
        ]
    }

    proptest::proptest! {
        /// Whatever amounts arrive (NaN, infinities, negatives, u64::MAX),
        /// nothing panics or wraps: the tally stays a finite dollar amount in
        /// [0, MAX_USD], and settled tokens and cost never go down.
        #[test]
        fn any_amounts_keep_the_tallies_finite_and_monotone(
            steps in proptest::collection::vec(any_step(), 1..40)
        ) {
            use policybind_crds::common::MAX_USD;
            let ledger = InProcessLedger::new();
            let budgets = [budget(Some(1e9), Some(u64::MAX))];
            let limits = TokenLimits { rate: None, budgets: &budgets };
            let now = at(10, 0, 0);
            let mut ids = vec![];
            let mut settled = Amount::default();
            for step in steps {
                match step {
                    Step::Reserve(cost, tokens) => {
                        if let Ok(id) = ledger.reserve("t", limits, amount(cost, tokens), now) {
                            ids.push(id);
                        }
                    }
                    Step::Settle(i, cost, tokens) if !ids.is_empty() => {
                        let id = ids.remove(i % ids.len());
                        ledger.settle(id, amount(cost, tokens), now);
                    }
                    Step::Release(i) if !ids.is_empty() => {
                        ledger.release(ids.remove(i % ids.len()), now);
                    }
                    Step::Restore(cost, tokens) => ledger.restore(&[SettledUsage {
                        token: "t".into(),
                        period: BudgetPeriod::Day,
                        period_start: at(0, 0, 0),
                        settled: amount(cost, tokens),
                        requests: u64::MAX,
                    }]),
                    Step::Settle(..) | Step::Release(_) => {}
                }
                let usage = ledger.usage("t", &budgets, now);
                let cost = usage[0].cost_usd;
                proptest::prop_assert!((0.0..=MAX_USD).contains(&cost), "cost {cost}");
                let now_settled = ledger
                    .settled_usage()
                    .first()
                    .map_or(Amount::default(), |s| s.settled);
                proptest::prop_assert!(now_settled.cost_usd >= settled.cost_usd);
                proptest::prop_assert!(now_settled.tokens >= settled.tokens);
                proptest::prop_assert!(now_settled.cost_usd.is_finite());
                settled = now_settled;
            }
        }
    }

    #[test]
    fn a_cost_that_cannot_be_known_exhausts_the_budget_rather_than_passing_it() {
        let ledger = InProcessLedger::new();
        let budgets = [budget(Some(1.0), None)];
        let limits = TokenLimits {
            rate: None,
            budgets: &budgets,
        };
        // NaN compares false with everything: unclamped, it would pass the check.
        assert_eq!(
            ledger.reserve("t", limits, amount(f64::NAN, 1), at(10, 0, 0)),
            Err(Refusal::BudgetExceeded {
                period: BudgetPeriod::Day
            })
        );
        let id = ledger
            .reserve("t", limits, amount(0.5, 1), at(10, 0, 0))
            .unwrap();
        ledger.settle(id, amount(f64::NAN, 1), at(10, 0, 1));
        assert!(
            ledger
                .reserve("t", limits, amount(0.01, 1), at(10, 0, 2))
                .is_err()
        );
        assert_eq!(
            ledger.usage("t", &budgets, at(10, 0, 2))[0].cost_usd,
            policybind_crds::common::MAX_USD
        );
    }

    #[test]
    fn concurrent_reservations_never_overspend_the_budget() {
        let ledger = Arc::new(InProcessLedger::new());
        let budgets = Arc::new([budget(Some(10.0), None)]);
        let admitted = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let ledger = ledger.clone();
                let budgets = budgets.clone();
                let admitted = admitted.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let limits = TokenLimits {
                            rate: None,
                            budgets: &budgets[..],
                        };
                        if let Ok(id) = ledger.reserve("t", limits, amount(0.01, 1), at(10, 0, 0)) {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            // Half settle at the estimate, half fail upstream and release.
                            if i % 2 == 0 {
                                ledger.settle(id, amount(0.01, 1), at(10, 0, 0));
                            } else {
                                ledger.release(id, at(10, 0, 0));
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let usage = ledger.usage("t", &budgets[..], at(10, 0, 0));
        assert!(
            usage[0].cost_usd <= 10.0 + 1e-9,
            "spent {}",
            usage[0].cost_usd
        );
        // 4000 attempts at 0.01 against 10.0: the budget fills up exactly.
        assert!(
            (usage[0].cost_usd - 10.0).abs() < 0.011,
            "spent {}",
            usage[0].cost_usd
        );
        assert!(admitted.load(Ordering::Relaxed) >= 1000);
        assert_eq!(ledger.in_flight(), 0);
    }
}
