//! Budgets and rate limits shared by replicas through Redis
//! (`--budget-store redis://...`; docs/sidecar.md, "With Redis").
//!
//! Every replica counts in the same Redis keys, so the bound on overspend is
//! the one a single process has: the difference between the estimates and
//! the actual usage of requests admitted and still in flight, nothing per
//! replica. Each step is one Lua script, run atomically by Redis (sent by
//! EVALSHA, with an EVAL fallback when Redis does not know the script yet):
//! - reserve checks the requests- and tokens-per-minute limits (a GCRA on
//!   Redis' own clock, exact across replicas) and every budget key of the
//!   owner (settled plus reserved plus the estimate within the limit; the
//!   cost check is skipped for an estimate priced at zero), and only then
//!   records the reservation;
//! - settle and release take the reservation back and count what was spent.
//!
//! A reservation carries a deadline ([`RESERVATION_LEASE`]) that the replica
//! pushes on while the request is in flight ([`HEARTBEAT`]); the scripts free
//! reservations whose deadline passed, so a replica killed mid-request frees
//! what it held at most [`RESERVATION_LEASE`] after its last heartbeat.
//!
//! Dollars are counted as integer micro-dollars and tokens as integers, both
//! saturating at 2^53 - 1 (exact in Lua): no float drift between replicas.
//!
//! When Redis cannot be reached within [`COMMAND_TIMEOUT`], or holds values
//! PolicyBind did not write, budgeted and rate-limited requests are refused
//! with `BUDGET_STORE_UNAVAILABLE` (fail closed); the connection is re-made
//! in the background. Requests of owners without limits never touch Redis.
//!
//! This replica's own settled usage is also kept in an [`InProcessLedger`]
//! without limits: it feeds the usage report and the usage file, which count
//! per replica, while Redis holds the shared tally.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use policybind_crds::wire;
use policybind_engine::compile::CompiledBudget;
use policybind_engine::request::UsageSoFar;
use policybind_engine::schedule;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, Script};
use tracing::{debug, warn};

use crate::accounting::{
    Amount, InProcessLedger, Refusal, ReservationId, SettledUsage, TokenLimits, UsageLedger,
};

/// Longest a connection attempt or a command may take: the request path
/// never waits longer for Redis.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(200);
/// A reservation not pushed on for this long is freed by the next script
/// that touches its owner (a dead replica's reservations).
pub const RESERVATION_LEASE: Duration = Duration::from_secs(30);
/// How often this replica pushes on the deadlines of its reservations.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// How long a settlement that did not reach Redis is tried again.
pub const SETTLE_RETRY_FOR: Duration = Duration::from_secs(60);
/// Budget keys outlive their period by this much: requests in flight at the
/// boundary still settle into the period they were reserved in.
const PERIOD_MARGIN: chrono::Duration = chrono::Duration::hours(1);
/// Largest amount a script counts exactly (2^53 - 1).
const MAX_COUNT: u64 = (1 << 53) - 1;

const COMMON: &str = include_str!("redis_ledger/common.lua");
const RESERVE: &str = include_str!("redis_ledger/reserve.lua");
const SETTLE: &str = include_str!("redis_ledger/settle.lua");
/// Pushes the deadlines of reservations in flight on, by Redis' clock (as
/// the scripts purge by it). XX: a reservation already freed stays freed.
const HEARTBEAT_SCRIPT: &str = "local t = redis.call('TIME') \
    local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1]) \
    for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[i]) end \
    return 0";

/// How long reservations live without news from their replica, how often a
/// replica pushes them on, how long Redis may take. [`Timings::default`] is
/// [`RESERVATION_LEASE`], [`HEARTBEAT`] and [`COMMAND_TIMEOUT`]; tests
/// change them.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub lease: Duration,
    pub heartbeat: Duration,
    /// Longest a connection attempt or a command may take.
    pub command_timeout: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease: RESERVATION_LEASE,
            heartbeat: HEARTBEAT,
            command_timeout: COMMAND_TIMEOUT,
        }
    }
}

/// Why the budget store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("budget store {url}: {message}")]
    Url { url: String, message: String },
    #[error("budget store: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Where the Redis budget store is (`--budget-store redis://...`). Shown
/// (Debug) without its credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisStoreSettings {
    /// `redis://[user[:password]@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// Used when the URL carries no password
    /// ([`policybind_crds::wire::env::BUDGET_STORE_PASSWORD`]).
    pub password: Option<String>,
    /// PEM CA certificates trusted for `rediss://` instead of the platform's
    /// roots ([`policybind_crds::wire::env::BUDGET_STORE_CA_FILE`]).
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for RedisStoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreSettings")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// `redis://user:secret@host/0` shown as `redis://***@host/0`: URLs are
/// logged and put in errors only through this.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// Dollars as integer micro-dollars, clamped like [`Amount::new`] and then
/// to what a script counts exactly.
pub fn micro_usd(usd: f64) -> u64 {
    let micros = policybind_crds::common::clamp_usd(usd) * 1e6;
    (micros.round() as u64).min(MAX_COUNT)
}

fn micro_to_usd(micros: u64) -> f64 {
    micros as f64 / 1e6
}

/// The Redis keys of one owner (a token id or a scope id). The owner is
/// escaped inside one hash tag, so that every key a script touches lives in
/// one Redis Cluster slot and no owner's keys can spell another's.
#[derive(Debug, Clone)]
struct OwnerKeys {
    tag: String,
}

impl OwnerKeys {
    fn new(owner: &str) -> Self {
        let escaped = owner
            .replace('%', "%25")
            .replace('{', "%7B")
            .replace('}', "%7D")
            .replace(' ', "%20");
        OwnerKeys {
            tag: format!("{}{{{escaped}}}", wire::BUDGET_STORE_KEY_PREFIX),
        }
    }

    fn key(&self, what: &str) -> String {
        format!("{}:{what}", self.tag)
    }

    /// What every budget key of this owner starts with.
    fn budget_prefix(&self) -> String {
        self.key("b:")
    }

    /// The key of `budget`'s tally at `now`: its calendar period, or the
    /// current bucket of its rolling window (`...:b:Day-rolling:<start>`).
    fn budget(&self, budget: &CompiledBudget, now: DateTime<Utc>) -> String {
        self.budget_at(budget, budget.tally_start(now))
    }

    fn budget_at(&self, budget: &CompiledBudget, start: DateTime<Utc>) -> String {
        let rolling = if budget.rolling { "-rolling" } else { "" };
        format!(
            "{}{}{rolling}:{}",
            self.budget_prefix(),
            budget.period.as_str(),
            start.timestamp()
        )
    }

    /// The keys of the earlier buckets still in `budget`'s rolling window at
    /// `now`, oldest first (none for a calendar budget).
    fn earlier(&self, budget: &CompiledBudget, now: DateTime<Utc>) -> Vec<String> {
        if !budget.rolling {
            return vec![];
        }
        let len = schedule::bucket_len(budget.period);
        let current = budget.tally_start(now);
        (1..=schedule::window_buckets(budget.period))
            .rev()
            .map(|back| self.budget_at(budget, current - len * back))
            .collect()
    }
}

/// When a budget key of `budget` may go: the end of its period plus a margin,
/// or, for a rolling window's bucket, once the bucket has left the window.
fn expire_at(budget: &CompiledBudget, now: DateTime<Utc>) -> i64 {
    let end = if budget.rolling {
        let len = schedule::bucket_len(budget.period);
        budget.tally_start(now) + len * (schedule::window_buckets(budget.period) + 1)
    } else {
        budget.tally_end(now)
    };
    (end + PERIOD_MARGIN).timestamp()
}

/// A reservation this replica holds.
#[derive(Debug, Clone)]
struct Pending {
    owner: String,
    /// The member in the owner's reservation set; `None` when nothing was
    /// recorded in Redis (no limits).
    member: Option<String>,
    budget_keys: Vec<(String, i64)>,
    took_tokens: bool,
    tokens_per_minute: u64,
    local: ReservationId,
}

struct Shared {
    conn: ConnectionManager,
    reserve: Script,
    settle: Script,
    heartbeat: Script,
    /// Distinguishes this replica's reservation ids from every other's.
    instance: String,
    next: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    /// This replica's own tallies, without limits (usage report, usage file).
    local: InProcessLedger,
    /// Settlements given up after [`SETTLE_RETRY_FOR`].
    lost_settlements: AtomicU64,
    timings: Timings,
}

/// A [`UsageLedger`] whose tallies and rate limits live in Redis.
#[derive(Clone)]
pub struct RedisLedger {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLedger")
            .field("instance", &self.shared.instance)
            .finish_non_exhaustive()
    }
}

impl RedisLedger {
    /// A ledger on the Redis at `url` (`redis://[user[:password]@]host:port[/db]`,
    /// or `rediss://` for TLS: the server's certificate is checked against the
    /// platform's roots, or only against `ca_file` when given, and its host
    /// name must match; there is no way to turn the check off). A CA file that
    /// cannot be read or holds no certificate is an error here, at start, not
    /// at the first request. `password`, when given, is used
    /// unless the URL has one. Does not wait for Redis: a Redis that is away
    /// refuses requests (fail closed) until it is back. Must be called inside
    /// a Tokio runtime; the heartbeat runs on it until the ledger is dropped.
    pub fn connect(store: &RedisStoreSettings) -> Result<RedisLedger, StoreError> {
        Self::connect_with(store, Timings::default())
    }

    /// [`RedisLedger::connect`] with other [`Timings`].
    pub fn connect_with(
        store: &RedisStoreSettings,
        timings: Timings,
    ) -> Result<RedisLedger, StoreError> {
        let (url, password) = (store.url.as_str(), store.password.as_deref());
        let shown = redact_url(url);
        let mut info = url.into_connection_info().map_err(|e| StoreError::Url {
            url: shown.clone(),
            message: format!("not a Redis URL: {}", e.category()),
        })?;
        if let Some(password) = password.filter(|_| info.redis_settings().password().is_none()) {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        let client = match (&store.ca_file, tls) {
            (Some(path), true) => {
                let pem = std::fs::read(path).map_err(|e| StoreError::Url {
                    url: shown.clone(),
                    message: format!("cannot read the CA file {}: {e}", path.display()),
                })?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(StoreError::Url {
                        url: shown,
                        message: format!("the CA file {} holds no PEM certificate", path.display()),
                    });
                }
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )?
            }
            (Some(path), false) => {
                return Err(StoreError::Url {
                    url: shown,
                    message: format!(
                        "a CA file ({}) is given but the URL is not rediss:// (TLS)",
                        path.display()
                    ),
                });
            }
            (None, _) => redis::Client::open(info)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timings.command_timeout))
            .set_response_timeout(Some(timings.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        let ledger = RedisLedger {
            shared: Arc::new(Shared {
                conn,
                reserve: Script::new(&format!("{COMMON}\n{RESERVE}")),
                settle: Script::new(&format!("{COMMON}\n{SETTLE}")),
                heartbeat: Script::new(HEARTBEAT_SCRIPT),
                instance: random_instance(),
                next: AtomicU64::new(0),
                pending: Mutex::new(HashMap::new()),
                local: InProcessLedger::new(),
                lost_settlements: AtomicU64::new(0),
                timings,
            }),
            runtime: tokio::runtime::Handle::current(),
        };
        ledger
            .runtime
            .spawn(heartbeat(Arc::downgrade(&ledger.shared), timings.heartbeat));
        // Load the scripts now, so that the first request pays one EVALSHA
        // rather than a connect, a NOSCRIPT and an EVAL.
        let shared = ledger.shared.clone();
        ledger.runtime.spawn(async move {
            let mut conn = shared.conn.clone();
            for script in [&shared.reserve, &shared.settle, &shared.heartbeat] {
                if let Err(e) = script.prepare_invoke().load_async(&mut conn).await {
                    debug!("budget store: script not loaded ahead: {}", e.category());
                }
            }
        });
        tracing::info!(url = %shown, instance = %ledger.shared.instance,
            "budgets and rate limits shared through Redis");
        Ok(ledger)
    }

    /// Reservations in flight on this replica.
    pub fn in_flight(&self) -> usize {
        self.shared.lock_pending().len()
    }

    /// Settlements that could not reach Redis within [`SETTLE_RETRY_FOR`].
    pub fn lost_settlements(&self) -> u64 {
        self.shared.lost_settlements.load(Ordering::Relaxed)
    }

    /// Runs `future` to completion from synchronous code: on a multi-thread
    /// runtime the worker is handed over while it waits; elsewhere (a
    /// current-thread runtime cannot wait on itself) `None`.
    fn block_on<F: Future>(&self, future: F) -> Option<F::Output> {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                Some(tokio::task::block_in_place(|| handle.block_on(future)))
            }
            Ok(_) => None,
            Err(_) => Some(self.runtime.block_on(future)),
        }
    }

    async fn reserve_in_store(
        &self,
        owner: &str,
        limits: TokenLimits<'_>,
        estimate: Amount,
        now: DateTime<Utc>,
    ) -> Result<ReservationId, Refusal> {
        let estimate = Amount::new(estimate.cost_usd, estimate.tokens);
        let rpm = limits
            .rate
            .and_then(|r| r.requests_per_minute)
            .map_or(0, u64::from);
        let tpm = limits.rate.and_then(|r| r.tokens_per_minute).unwrap_or(0);
        let shared = &self.shared;
        let number = shared.next.fetch_add(1, Ordering::Relaxed);
        let keys = OwnerKeys::new(owner);
        let budget_keys: Vec<(String, i64)> = limits
            .budgets
            .iter()
            .map(|b| (keys.budget(b, now), expire_at(b, now)))
            .collect();
        let limited = rpm > 0 || tpm > 0 || !budget_keys.is_empty();
        let member = limited.then(|| format!("{}-{number}", shared.instance));
        if let Some(member) = &member {
            let call = ReserveCall {
                keys: &keys,
                member,
                budgets: limits.budgets,
                budget_keys: &budget_keys,
                estimate,
                rpm,
                tpm,
                now,
            };
            shared.run_reserve(call).await?;
        }
        let local = shared.reserve_locally(owner, limits.budgets, estimate, now);
        shared.lock_pending().insert(
            number,
            Pending {
                owner: owner.to_string(),
                member,
                budget_keys,
                took_tokens: tpm > 0,
                tokens_per_minute: tpm,
                local,
            },
        );
        Ok(ReservationId::from_raw(number))
    }

    /// Settles or releases in Redis from a background task, retrying while
    /// Redis is away for up to [`SETTLE_RETRY_FOR`] (each retry is
    /// idempotent: the script remembers ids it has done for ten minutes).
    fn finish(&self, id: ReservationId, actual: Option<Amount>, now: DateTime<Utc>) {
        let Some(pending) = self.shared.lock_pending().remove(&id.raw()) else {
            return;
        };
        match actual {
            Some(actual) => self.shared.local.settle(pending.local, actual, now),
            None => self.shared.local.release(pending.local, now),
        }
        if pending.member.is_none() {
            return;
        }
        let shared = self.shared.clone();
        self.runtime.spawn(async move {
            let deadline = tokio::time::Instant::now() + SETTLE_RETRY_FOR;
            let mut wait = Duration::from_millis(50);
            loop {
                match shared.run_settle(&pending, actual).await {
                    Ok(()) => return,
                    Err(e) if tokio::time::Instant::now() + wait >= deadline => {
                        shared.lost_settlements.fetch_add(1, Ordering::Relaxed);
                        warn!(owner = %pending.owner, "settlement lost, Redis unreachable: {e}");
                        return;
                    }
                    Err(e) => debug!(owner = %pending.owner, "settlement retried: {e}"),
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        });
    }

    async fn read_usage(
        &self,
        owner: &str,
        budgets: &[CompiledBudget],
        now: DateTime<Utc>,
    ) -> Result<Vec<UsageSoFar>, String> {
        let keys = OwnerKeys::new(owner);
        let mut pipe = redis::pipe();
        // A rolling window's earlier buckets count too: each budget reads
        // its earlier buckets and then its current key.
        let per_budget: Vec<usize> = budgets
            .iter()
            .map(|budget| {
                let earlier = keys.earlier(budget, now);
                for key in earlier.iter().chain([&keys.budget(budget, now)]) {
                    pipe.cmd("HMGET")
                        .arg(key)
                        .arg(&["cost", "tokens", "rcost", "rtokens"]);
                }
                earlier.len() + 1
            })
            .collect();
        let mut conn = self.shared.conn.clone();
        let rows: Vec<Vec<Option<String>>> = timed(
            self.shared.timings.command_timeout,
            pipe.query_async(&mut conn),
        )
        .await?;
        let mut rows = rows.into_iter();
        budgets
            .iter()
            .zip(per_budget)
            .map(|(budget, count)| {
                let (mut cost, mut tokens) = (0u64, 0u64);
                for row in rows.by_ref().take(count) {
                    let field = |i: usize| parse_count(row.get(i).cloned().flatten());
                    cost = cost.saturating_add(field(0)?).saturating_add(field(2)?);
                    tokens = tokens.saturating_add(field(1)?).saturating_add(field(3)?);
                }
                Ok(UsageSoFar {
                    period: budget.period,
                    cost_usd: micro_to_usd(cost),
                    tokens,
                })
            })
            .collect()
    }
}

/// One reservation to record.
struct ReserveCall<'a> {
    keys: &'a OwnerKeys,
    member: &'a str,
    budgets: &'a [CompiledBudget],
    budget_keys: &'a [(String, i64)],
    estimate: Amount,
    rpm: u64,
    tpm: u64,
    now: DateTime<Utc>,
}

impl Shared {
    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        // A panic while holding the lock leaves at most one entry behind.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run_reserve(&self, call: ReserveCall<'_>) -> Result<(), Refusal> {
        let keys = call.keys;
        let keep_until = call
            .budget_keys
            .iter()
            .map(|(_, at)| *at)
            .max()
            .unwrap_or(0)
            .max((call.now + chrono::Duration::hours(1)).timestamp());
        let mut invocation = self.reserve.prepare_invoke();
        invocation
            .key(keys.key("res"))
            .key(keys.key("resd"))
            .key(keys.key("done"))
            .key(keys.key("rpm"))
            .key(keys.key("tpm"))
            .arg(keys.budget_prefix())
            .arg(call.member)
            .arg(self.timings.lease.as_millis() as u64)
            .arg(micro_usd(call.estimate.cost_usd))
            .arg(call.estimate.tokens.min(MAX_COUNT))
            .arg(call.rpm.min(MAX_COUNT))
            .arg(call.tpm.min(MAX_COUNT))
            .arg(keep_until)
            .arg(call.budget_keys.len());
        let mut earlier = Vec::new();
        for (budget, (key, expire_at)) in call.budgets.iter().zip(call.budget_keys) {
            let max_cost = budget.max_cost_usd.map_or(-1, |m| micro_usd(m) as i64);
            let max_tokens = budget.max_tokens.map_or(-1, |m| m.min(MAX_COUNT) as i64);
            let before = keys.earlier(budget, call.now);
            invocation
                .key(key)
                .arg(max_cost)
                .arg(max_tokens)
                .arg(*expire_at)
                .arg(before.len());
            earlier.extend(before);
        }
        for key in earlier {
            invocation.key(key);
        }
        let mut conn = self.conn.clone();
        let answer: (i64, i64, i64) = timed(
            self.timings.command_timeout,
            invocation.invoke_async(&mut conn),
        )
        .await
        .map_err(|reason| Refusal::StoreUnavailable { reason })?;
        refusal_of(answer, call.budgets)
    }

    fn reserve_locally(
        &self,
        owner: &str,
        budgets: &[CompiledBudget],
        estimate: Amount,
        now: DateTime<Utc>,
    ) -> ReservationId {
        let unlimited: Vec<CompiledBudget> = budgets
            .iter()
            .map(|b| CompiledBudget {
                max_cost_usd: None,
                max_tokens: None,
                ..b.clone()
            })
            .collect();
        let limits = TokenLimits {
            rate: None,
            budgets: &unlimited,
        };
        self.local
            .reserve(owner, limits, estimate, now)
            .expect("a ledger without limits refuses nothing")
    }

    async fn run_settle(&self, pending: &Pending, actual: Option<Amount>) -> Result<(), String> {
        let keys = OwnerKeys::new(&pending.owner);
        let actual = actual.map(|a| Amount::new(a.cost_usd, a.tokens));
        let mut invocation = self.settle.prepare_invoke();
        invocation
            .key(keys.key("res"))
            .key(keys.key("resd"))
            .key(keys.key("done"))
            .key(keys.key("tpm"))
            .arg(keys.budget_prefix())
            .arg(pending.member.as_deref().unwrap_or_default())
            .arg(actual.map_or(0, |a| micro_usd(a.cost_usd)))
            .arg(actual.map_or(0, |a| a.tokens.min(MAX_COUNT)))
            .arg(if actual.is_some() { "1" } else { "0" })
            .arg(if pending.took_tokens {
                pending.tokens_per_minute.min(MAX_COUNT)
            } else {
                0
            });
        for (key, expire_at) in &pending.budget_keys {
            invocation.key(key).arg(*expire_at);
        }
        let mut conn = self.conn.clone();
        let done: i64 = timed(
            self.timings.command_timeout,
            invocation.invoke_async(&mut conn),
        )
        .await?;
        if done == 2 {
            debug!(owner = %pending.owner, "settled a reservation that had expired");
        }
        Ok(())
    }

    /// Pushes on the deadlines of this replica's reservations in flight.
    async fn push_deadlines(&self) -> Result<(), String> {
        let mut by_owner: HashMap<String, Vec<String>> = HashMap::new();
        for pending in self.lock_pending().values() {
            if let Some(member) = &pending.member {
                by_owner
                    .entry(pending.owner.clone())
                    .or_default()
                    .push(member.clone());
            }
        }
        if by_owner.is_empty() {
            return Ok(());
        }
        for (owner, members) in by_owner {
            let mut invocation = self.heartbeat.prepare_invoke();
            invocation
                .key(OwnerKeys::new(&owner).key("res"))
                .arg(self.timings.lease.as_millis() as u64);
            for member in members {
                invocation.arg(member);
            }
            let mut conn = self.conn.clone();
            timed(
                self.timings.command_timeout,
                invocation.invoke_async::<()>(&mut conn),
            )
            .await?;
        }
        Ok(())
    }
}

async fn heartbeat(shared: Weak<Shared>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(e) = shared.push_deadlines().await {
            warn!("budget store: reservation deadlines not pushed on: {e}");
        }
    }
}

/// Runs a Redis call within `limit` ([`COMMAND_TIMEOUT`] by default) (the client's own timeouts do
/// not bound a reconnect), turning every failure into a reason to refuse.
async fn timed<T>(
    limit: Duration,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if e.to_string().contains("POLICYBIND_CORRUPT") => {
            Err("Redis holds budget values PolicyBind did not write".to_string())
        }
        Ok(Err(e)) => Err(format!("Redis: {}", e.category())),
        Err(_) => Err(format!(
            "Redis did not answer within {} ms",
            limit.as_millis()
        )),
    }
}

/// What the reserve script answered.
fn refusal_of(answer: (i64, i64, i64), budgets: &[CompiledBudget]) -> Result<(), Refusal> {
    let wait = Duration::from_micros(answer.2.max(1) as u64);
    match answer.0 {
        0 => Ok(()),
        1 => Err(Refusal::RateLimited {
            what: "requests per minute",
            retry_after: wait,
        }),
        2 => Err(Refusal::RateLimited {
            what: "tokens per minute",
            retry_after: wait,
        }),
        3 => match usize::try_from(answer.1 - 1)
            .ok()
            .and_then(|i| budgets.get(i))
        {
            Some(budget) => Err(Refusal::BudgetExceeded {
                period: budget.period,
            }),
            None => Err(Refusal::StoreUnavailable {
                reason: "the budget script named no budget".to_string(),
            }),
        },
        _ => Err(Refusal::StoreUnavailable {
            reason: "the budget script answered what it never answers".to_string(),
        }),
    }
}

/// A count read from Redis: absent is zero; anything but a decimal integer
/// up to 2^53 - 1 was not written by PolicyBind.
fn parse_count(value: Option<String>) -> Result<u64, String> {
    match value {
        None => Ok(0),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= MAX_COUNT)
            .ok_or_else(|| "Redis holds budget values PolicyBind did not write".to_string()),
    }
}

fn random_instance() -> String {
    let mut bytes = [0u8; 12];
    // Without randomness two replicas could share ids; the pid and the time
    // still keep them apart in practice.
    if getrandom::fill(&mut bytes).is_err() {
        let seed =
            std::process::id() as u128 ^ Utc::now().timestamp_nanos_opt().unwrap_or(0) as u128;
        bytes.copy_from_slice(&seed.to_le_bytes()[..12]);
    }
    hex::encode(bytes)
}

impl UsageLedger for RedisLedger {
    fn usage(
        &self,
        token: &str,
        budgets: &[CompiledBudget],
        now: DateTime<Utc>,
    ) -> Vec<UsageSoFar> {
        if budgets.is_empty() {
            return vec![];
        }
        match self.block_on(self.read_usage(token, budgets, now)) {
            Some(Ok(usage)) => usage,
            // The reservation decides (and refuses while Redis is away):
            // this replica's own tally is the best it knows meanwhile.
            _ => self.shared.local.usage(token, budgets, now),
        }
    }

    fn usage_shared<'a>(
        &'a self,
        token: &'a str,
        budgets: &'a [CompiledBudget],
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Vec<UsageSoFar>> {
        Box::pin(async move {
            if budgets.is_empty() {
                return vec![];
            }
            match self.read_usage(token, budgets, now).await {
                Ok(usage) => usage,
                Err(_) => self.shared.local.usage(token, budgets, now),
            }
        })
    }

    fn reserve(
        &self,
        token: &str,
        limits: TokenLimits<'_>,
        estimate: Amount,
        now: DateTime<Utc>,
    ) -> Result<ReservationId, Refusal> {
        self.block_on(self.reserve_in_store(token, limits, estimate, now))
            .unwrap_or_else(|| {
                Err(Refusal::StoreUnavailable {
                    reason: "cannot wait for Redis on a current-thread runtime".to_string(),
                })
            })
    }

    fn reserve_shared<'a>(
        &'a self,
        token: &'a str,
        limits: TokenLimits<'a>,
        estimate: Amount,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<ReservationId, Refusal>> {
        Box::pin(self.reserve_in_store(token, limits, estimate, now))
    }

    fn settle(&self, id: ReservationId, actual: Amount, now: DateTime<Utc>) {
        self.finish(id, Some(actual), now);
    }

    fn release(&self, id: ReservationId, now: DateTime<Utc>) {
        self.finish(id, None, now);
    }

    fn settled_usage(&self) -> Vec<SettledUsage> {
        self.shared.local.settled_usage()
    }

    /// Restores this replica's own tally only (for its report): the shared
    /// tally is Redis', which survives this process.
    fn restore(&self, settled: &[SettledUsage]) {
        self.shared.local.restore(settled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_credentials() {
        assert_eq!(
            redact_url("redis://user:s3cret@redis.policybind:6379/2"),
            "redis://***@redis.policybind:6379/2"
        );
        assert_eq!(redact_url("redis://:p@w@host/0"), "redis://***@host/0");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn dollars_become_clamped_micro_dollars() {
        assert_eq!(micro_usd(1.0), 1_000_000);
        assert_eq!(micro_usd(0.000_000_4), 0);
        assert_eq!(micro_usd(0.000_000_6), 1);
        assert_eq!(micro_usd(-3.0), 0);
        assert_eq!(micro_usd(f64::NAN), MAX_COUNT, "unknown fails closed");
        assert_eq!(micro_usd(f64::INFINITY), MAX_COUNT);
    }

    #[test]
    fn owners_cannot_spell_each_others_keys() {
        let a = OwnerKeys::new("team-a/bot");
        assert_eq!(a.key("res"), "policybind:{team-a/bot}:res");
        let tricky = OwnerKeys::new("x}:res{");
        assert_eq!(tricky.key("res"), "policybind:{x%7D:res%7B}:res");
        assert_ne!(OwnerKeys::new("a%7D").tag, OwnerKeys::new("a}").tag);
    }

    #[test]
    fn counts_from_redis_are_integers_or_refused() {
        assert_eq!(parse_count(None), Ok(0));
        assert_eq!(parse_count(Some("42".into())), Ok(42));
        for bad in ["-1", "1.5", "abc", "", "9007199254740992", "1e3"] {
            assert!(parse_count(Some(bad.into())).is_err(), "{bad}");
        }
    }
}
