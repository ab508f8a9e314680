//! Budget ledgers: the operator grants replicas slices of each budget
//! (docs/operator.md, "Budgets across replicas"; the format is
//! [`policybind_crds::lease`]).
//!
//! Once a second the leader builds, for every enforced namespace, the ledger of
//! what each pod was granted per budget key, from the demands in the pods' usage
//! reports (the cache; no API read), and applies it to
//! `policybind-ledger.<namespace>` in its own namespace when it changed. So the
//! ledger is written at most once per second per namespace, and not at all while
//! nothing asks.
//!
//! The arithmetic ([`grant_round`]) keeps, for every key,
//! `Σ max(granted, settled) <= limit` over all pods that ever held a slice, live
//! or gone. Grants never shrink within a period: a gone pod's slice stays
//! counted as spent (it may have spent it after its last report), which is how
//! a `kill -9` can only under-spend.
//!
//! The ledgers written are also kept in memory ([`LedgerView`]), so that the
//! token controller can show in `AccessToken.status.usage` what replicas hold
//! (`heldUsd`, `heldTokens`, `holders`); a round that changes a token's grants
//! wakes that token.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use policybind_crds::access_token::PeriodUsage;
use policybind_crds::ai_budget::{self, Owner};
use policybind_crds::lease::{self, Demand, Demands, KeyLedger, Ledger, Unit};
use policybind_crds::wire::{self, field_managers, keys, labels};
use policybind_crds::{AIBudget, AccessToken, AccessTokenSpec, Budget, BudgetPeriod, BudgetWindow};
use policybind_engine::schedule;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::context::Context;
use crate::usage::named_after_its_pod;

/// Time between two ledger rounds: the highest write rate per namespace.
pub const ROUND: Duration = Duration::from_secs(1);

/// One pod's side of a budget key in a round.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PodSide {
    /// Whether the pod exists now; a gone pod gets no more grants.
    pub live: bool,
    /// Its latest report's demand for the key (zeros without one).
    pub demand: Demand,
}

fn usable(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { 0.0 }
}

/// Σ over every pod of the larger of its grant and what it settled: what the
/// key's pods have spent or may still spend.
pub fn committed(grants: &BTreeMap<String, f64>, pods: &BTreeMap<String, PodSide>) -> f64 {
    let names: BTreeSet<&String> = grants.keys().chain(pods.keys()).collect();
    names
        .into_iter()
        .map(|pod| {
            let granted = grants.get(pod).copied().unwrap_or(0.0);
            let settled = pods.get(pod).map_or(0.0, |p| usable(p.demand.settled));
            granted.max(settled)
        })
        .sum()
}

/// What is left of `limit` once [`committed`] is counted.
pub fn remaining(
    limit: f64,
    grants: &BTreeMap<String, f64>,
    pods: &BTreeMap<String, PodSide>,
) -> f64 {
    (limit - committed(grants, pods)).max(0.0)
}

/// One round for one key: grants each live pod that asks (on top of the grant
/// it saw) the smaller of what it wants and an equal share of what remains.
pub fn grant_round(
    limit: f64,
    previous: &BTreeMap<String, f64>,
    pods: &BTreeMap<String, PodSide>,
) -> KeyLedger {
    let mut grants = previous.clone();
    let mut left = remaining(limit, &grants, pods);
    let asking: Vec<(&String, f64)> = pods
        .iter()
        .filter(|(name, side)| {
            side.live && side.demand.basis == grants.get(*name).copied().unwrap_or(0.0)
        })
        .map(|(name, side)| (name, usable(side.demand.wanted)))
        .filter(|(_, wanted)| *wanted > 0.0)
        .collect();
    if !asking.is_empty() && left > 0.0 {
        let share = left / asking.len() as f64;
        for (name, wanted) in asking {
            let slice = wanted.min(share).min(left);
            left -= slice;
            *grants.entry(name.clone()).or_insert(0.0) += slice;
        }
    }
    KeyLedger {
        limit,
        remaining: remaining(limit, &grants, pods),
        grants,
    }
}

/// What a ledger round looks limits up in.
pub struct Limits<'a> {
    /// AccessTokens by `namespace/name`.
    pub tokens: &'a HashMap<String, Arc<AccessToken>>,
    /// AIBudgets by `namespace/name`.
    pub budgets: &'a HashMap<String, Arc<AIBudget>>,
}

/// What an owner id may be granted in one namespace's ledger.
struct OwnerLimits<'a> {
    budgets: &'a [Budget],
    rate: Option<&'a policybind_crds::RateLimit>,
}

impl<'a> Limits<'a> {
    /// The limits of `owner` in the ledger of `namespace`: a token valid
    /// there, or an AIBudget of that namespace itself (per-token ids only of
    /// a per-token AIBudget, and the other way round); `None` for anything
    /// else, a forged or malformed id included.
    fn owner_in(&self, owner: &str, namespace: &str) -> Option<OwnerLimits<'a>> {
        match ai_budget::parse_owner(owner)? {
            Owner::Token(id) => {
                let token = self.tokens.get(id)?;
                let (token_ns, _) = id.split_once('/')?;
                let spec: &AccessTokenSpec = &token.spec;
                policybind_engine::scope::spec_valid_in(token_ns, spec, namespace).then_some(
                    OwnerLimits {
                        budgets: &spec.budgets,
                        rate: spec.rate_limit.as_ref(),
                    },
                )
            }
            Owner::Budget {
                namespace: budget_ns,
                name,
                token,
            } => {
                let budget = self.budgets.get(&format!("{budget_ns}/{name}"))?;
                let applies = budget_ns == namespace && budget.spec.per_token == token.is_some();
                applies.then_some(OwnerLimits {
                    budgets: &budget.spec.budgets,
                    rate: budget.spec.rate_limit.as_ref(),
                })
            }
        }
    }
}

/// The limit of a budget key in the ledger of `namespace`, if the key names a
/// current period of a budget its owner has: a token valid in `namespace`, or
/// an AIBudget of `namespace` itself (an AIBudget covers requests decided in
/// its own namespace only, so a pod elsewhere asking for its keys gets nothing).
///
/// A rolling window has a key per bucket (`ledgers`: every namespace's last
/// written ledger, this one's included). The current bucket's key may be
/// granted the limit less what the keys of the earlier buckets still in the
/// window committed, in every ledger. An earlier bucket's key stays in the
/// ledger while it is in the window, frozen: its limit is what was committed
/// under it, so nothing more is granted there.
fn limit_of(
    key: &str,
    namespace: &str,
    limits: &Limits<'_>,
    ledgers: &HashMap<String, Ledger>,
    now: DateTime<Utc>,
) -> Option<f64> {
    let parts = lease::parse_budget_key(key)?;
    let budgets = limits.owner_in(parts.token, namespace)?.budgets;
    let budget = budgets.iter().find(|b| b.period == parts.period)?;
    let limit = match parts.unit {
        Unit::Usd => budget.max_cost_usd,
        Unit::Tokens => budget.max_tokens.map(|t| t as f64),
    }?;
    if budget.window != BudgetWindow::Rolling {
        return (crate::usage::period_start_of(budgets, parts.period, now) == parts.start)
            .then_some(limit);
    }
    let current = schedule::bucket_start(parts.period, now);
    let counting = schedule::counting_start(parts.period, chrono_tz::UTC, true, now);
    if parts.start > current
        || parts.start < counting
        || schedule::bucket_start(parts.period, parts.start) != parts.start
    {
        return None;
    }
    if parts.start < current {
        let own = ledgers
            .get(namespace)
            .and_then(|l| l.keys.get(key))
            .map_or(0.0, committed_of);
        // The caller takes what other ledgers committed off again.
        return Some(own + committed_elsewhere(ledgers, namespace, key));
    }
    let earlier: f64 = ledgers
        .values()
        .flat_map(|l| l.budget_keys_from(parts.token, parts.period, counting))
        .filter(|(p, _)| p.unit == parts.unit && p.start < current)
        .map(|(_, k)| committed_of(k))
        .sum();
    Some(usable(limit - earlier))
}

/// What a key's pods have spent or may still spend, as its ledger entry says.
fn committed_of(k: &KeyLedger) -> f64 {
    let granted: f64 = k.grants.values().copied().map(usable).sum();
    usable(k.limit - k.remaining).max(granted)
}

/// What the ledgers of namespaces other than `namespace` committed of `key`:
/// a token valid in several namespaces has its keys in each of their ledgers,
/// and all of them together must stay within its limit.
fn committed_elsewhere(ledgers: &HashMap<String, Ledger>, namespace: &str, key: &str) -> f64 {
    ledgers
        .iter()
        .filter(|(ns, _)| ns.as_str() != namespace)
        .filter_map(|(_, ledger)| ledger.keys.get(key))
        .map(committed_of)
        .sum()
}

/// The limit of a rate key ([`lease::rate_key`]): the owner's requests or
/// tokens per minute, if the key names the current minute or the next one
/// (replicas ask ahead in the last seconds of a minute) and the owner applies
/// in `namespace` (a token valid there, or an AIBudget of that namespace).
/// Separate from [`limit_of`]: keys of one kind never parse as the other.
fn rate_limit_of(
    key: &str,
    namespace: &str,
    limits: &Limits<'_>,
    now: DateTime<Utc>,
) -> Option<f64> {
    let parts = lease::parse_rate_key(key)?;
    let this_minute = lease::minute_start(now);
    if parts.start != this_minute && parts.start != this_minute + chrono::Duration::minutes(1) {
        return None;
    }
    let rate = limits.owner_in(parts.token, namespace)?.rate?;
    match parts.unit {
        lease::RateUnit::Requests => rate.requests_per_minute.map(f64::from),
        lease::RateUnit::Tokens => rate.tokens_per_minute.map(|t| t as f64),
    }
}

/// The demands of every pod that reported in `namespace`, by pod name.
pub fn demands_in(reports: &[Arc<ConfigMap>], namespace: &str) -> BTreeMap<String, Demands> {
    reports
        .iter()
        .filter(|cm| cm.metadata.namespace.as_deref() == Some(namespace))
        .filter(|cm| named_after_its_pod(cm))
        .filter_map(|cm| {
            let pod = cm
                .metadata
                .labels
                .as_ref()?
                .get(labels::WRITER_POD)?
                .clone();
            let json = cm.data.as_ref()?.get(keys::LEASE_DEMAND)?;
            match serde_json::from_str::<Demands>(json) {
                Ok(demands) => Some((pod, demands)),
                Err(error) => {
                    debug!(%namespace, %pod, %error, "lease demand is malformed; ignored");
                    None
                }
            }
        })
        .collect()
}

/// The next ledger of a namespace: keys of current periods only (the others are
/// dropped), each granted by [`grant_round`].
pub fn next_ledger(
    previous: &Ledger,
    demands: &BTreeMap<String, Demands>,
    live: &BTreeSet<String>,
    limit: impl Fn(&str) -> Option<f64>,
) -> Ledger {
    let keys: BTreeSet<&String> = previous
        .keys
        .keys()
        .chain(demands.values().flat_map(|d| d.keys()))
        .collect();
    let mut next = Ledger::default();
    for key in keys {
        let Some(limit) = limit(key) else { continue };
        let pods: BTreeMap<String, PodSide> = demands
            .iter()
            .filter_map(|(pod, d)| d.get(key).map(|demand| (pod, *demand)))
            .map(|(pod, demand)| {
                let side = PodSide {
                    live: live.contains(pod),
                    demand,
                };
                (pod.clone(), side)
            })
            .collect();
        let empty = BTreeMap::new();
        let before = previous.keys.get(key).map_or(&empty, |k| &k.grants);
        let round = grant_round(limit, before, &pods);
        // A key someone asked about is written even when nothing is left of
        // it (a rolling window whose earlier buckets took the whole limit, a
        // token whose other namespaces did): the pod then refuses with
        // BUDGET_EXCEEDED at once instead of waiting for a grant.
        if !round.grants.is_empty() || round.remaining < limit || !pods.is_empty() {
            next.keys.insert(key.clone(), round);
        }
    }
    next
}

/// In the last [`lease::ASK_AHEAD_SECS`] of a minute, grants each live pod
/// that holds a slice of a rate key of this minute a [`lease::least_slice`]
/// of the same key's next minute, unless it holds some already, within an
/// equal share of what the next minute has left. A replica whose traffic is
/// too sparse to ask ahead itself (it asks only while serving a request in
/// those seconds) then starts the new minute with a grant instead of waiting
/// about a second for one. What this strands is the least slice: about 1% of
/// the per-minute limit over all pods.
pub fn grant_next_minutes(
    ledger: &mut Ledger,
    live: &BTreeSet<String>,
    now: DateTime<Utc>,
    limit: impl Fn(&str) -> Option<f64>,
) {
    let minute = lease::minute_start(now);
    if now - minute < chrono::Duration::seconds(60 - lease::ASK_AHEAD_SECS) {
        return;
    }
    let next_minute = minute + chrono::Duration::minutes(1);
    let ahead: Vec<(String, Vec<String>)> = ledger
        .keys
        .iter()
        .filter_map(|(key, k)| {
            let parts = lease::parse_rate_key(key)?;
            if parts.start != minute {
                return None;
            }
            let holders = k
                .grants
                .iter()
                .filter(|(pod, granted)| **granted > 0.0 && live.contains(*pod))
                .map(|(pod, _)| pod.clone())
                .collect();
            Some((
                lease::rate_key(parts.token, next_minute, parts.unit),
                holders,
            ))
        })
        .collect();
    for (key, holders) in ahead {
        let Some(limit) = limit(&key) else { continue };
        let entry = ledger.keys.entry(key.clone()).or_insert_with(|| KeyLedger {
            limit,
            remaining: limit,
            grants: BTreeMap::new(),
        });
        let wanting: Vec<&String> = holders
            .iter()
            .filter(|pod| entry.grants.get(*pod).copied().unwrap_or(0.0) <= 0.0)
            .collect();
        if wanting.is_empty() {
            continue;
        }
        let count = holders.len().max(entry.grants.len());
        let least = lease::least_slice(limit, count);
        let mut left = usable(limit - entry.grants.values().copied().map(usable).sum::<f64>());
        let share = left / wanting.len() as f64;
        for pod in wanting {
            let slice = least.min(share).min(left);
            if slice <= 0.0 {
                break;
            }
            left -= slice;
            *entry.grants.entry(pod.clone()).or_insert(0.0) += slice;
        }
        entry.remaining = left;
        if entry.grants.is_empty() {
            ledger.keys.remove(&key);
        }
    }
}

/// The ledger ConfigMap of `namespace`.
pub fn ledger_config_map(home: &str, namespace: &str, ledger: &Ledger) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(wire::ledger_config_map(namespace)),
            namespace: Some(home.into()),
            labels: Some(BTreeMap::from([
                (labels::LEDGER.into(), namespace.into()),
                (labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into()),
            ])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            keys::LEDGER.into(),
            serde_json::to_string(ledger).expect("a ledger always serializes"),
        )])),
        ..Default::default()
    }
}

/// What replicas hold of one budget period, over every namespace's ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Held {
    /// Σ of the grants of the cost budget's key.
    pub usd: f64,
    /// Σ of the grants of the token budget's key.
    pub tokens: f64,
    /// Pods (namespace and name) with a grant of either key.
    pub holders: u32,
}

/// The ledgers last written, by namespace (the leader's memory of them).
#[derive(Debug, Default)]
pub struct LedgerView {
    ledgers: Mutex<HashMap<String, Ledger>>,
    /// Namespaces whose last write failed: the API server may have stored it
    /// all the same (a reply lost when it went away), and a pod may have read
    /// it, so the next round starts from what is stored, not from memory.
    unsure: Mutex<BTreeSet<String>>,
}

impl LedgerView {
    fn unsure(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.unsure.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ledger>> {
        self.ledgers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `namespace`'s ledger as written; returns the ids of the tokens
    /// whose grants changed.
    pub fn publish(&self, namespace: &str, ledger: &Ledger) -> BTreeSet<String> {
        let mut ledgers = self.lock();
        let empty = Ledger::default();
        let old = ledgers.get(namespace).unwrap_or(&empty);
        let changed = old
            .keys
            .keys()
            .chain(ledger.keys.keys())
            .filter(|key| {
                old.keys.get(*key).map(|k| &k.grants) != ledger.keys.get(*key).map(|k| &k.grants)
            })
            .filter_map(|key| lease::parse_budget_key(key).map(|p| p.token.to_string()))
            .collect();
        ledgers.insert(namespace.to_string(), ledger.clone());
        changed
    }

    /// `namespace`'s ledger as last written, if one was.
    pub fn get(&self, namespace: &str) -> Option<Ledger> {
        self.lock().get(namespace).cloned()
    }

    /// The namespaces with a ledger written.
    /// Every ledger last written, by namespace.
    pub fn all(&self) -> HashMap<String, Ledger> {
        self.lock().clone()
    }

    pub fn namespaces(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// What replicas hold of `token`'s budget of `period` starting at `start`:
    /// the key of that period, or, for a rolling window whose oldest counted
    /// bucket starts at `start`, the keys of every bucket since.
    pub fn held(&self, token: &str, period: BudgetPeriod, start: DateTime<Utc>) -> Held {
        let ledgers = self.lock();
        let mut held = Held::default();
        let mut holders = BTreeSet::new();
        for (namespace, ledger) in ledgers.iter() {
            for (parts, entry) in ledger.budget_keys_from(token, period, start) {
                let total = match parts.unit {
                    Unit::Usd => &mut held.usd,
                    Unit::Tokens => &mut held.tokens,
                };
                for (pod, grant) in entry.grants.iter().filter(|(_, g)| **g > 0.0) {
                    *total += usable(*grant);
                    holders.insert((namespace.as_str(), pod.as_str()));
                }
            }
        }
        held.holders = u32::try_from(holders.len()).unwrap_or(u32::MAX);
        held
    }

    /// `usage` with what replicas hold of each period filled in.
    pub fn with_holdings(&self, token: &str, mut usage: Vec<PeriodUsage>) -> Vec<PeriodUsage> {
        for entry in &mut usage {
            let held = self.held(token, entry.period, entry.period_start);
            entry.held_usd = (held.usd > 0.0).then_some(held.usd);
            // Grants of a token budget are whole numbers of tokens in practice;
            // the cast saturates.
            entry.held_tokens = (held.tokens > 0.0).then_some(held.tokens.round() as u64);
            entry.holders = (held.holders > 0).then_some(held.holders);
        }
        usage
    }
}

/// The ledgers the previous leader left, by namespace (so a new leader never
/// grants again what was already granted).
async fn load(api: &Api<ConfigMap>) -> Result<HashMap<String, Ledger>, kube::Error> {
    let list = api
        .list(&ListParams::default().labels(labels::LEDGER))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|cm| {
            let namespace = cm.metadata.labels.as_ref()?.get(labels::LEDGER)?.clone();
            if cm.metadata.name.as_deref() != Some(&wire::ledger_config_map(&namespace)) {
                return None;
            }
            let json = cm.data.as_ref()?.get(keys::LEDGER)?;
            Some((namespace, serde_json::from_str(json).ok()?))
        })
        .collect())
}

/// Runs ledger rounds every [`ROUND`] until `stop`, once every watch cache
/// has filled; a round that changes a token's grants wakes it through
/// `tokens` (its status shows them).
pub async fn run(
    ctx: Arc<Context>,
    stop: CancellationToken,
    tokens: UnboundedSender<ObjectRef<AccessToken>>,
) {
    let home = ctx.settings.namespace.clone();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &home);
    // No round from half-filled caches. A round looks every key's limit up in
    // the token and AIBudget caches and drops the keys it finds no limit for:
    // with the tokens not listed yet, a new leader's first round would drop
    // every key and take back the grants replicas hold and are spending, then
    // grant the period afresh, and the budget would be overspent.
    if !ctx.until_caches_filled(&stop, "budget granting").await {
        return;
    }
    loop {
        match load(&api).await {
            Ok(ledgers) => {
                for (namespace, ledger) in &ledgers {
                    wake(&tokens, ctx.state.ledgers.publish(namespace, ledger));
                }
                break;
            }
            Err(error) => warn!(%error, "reading the budget ledgers; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(ROUND) => {}
        }
    }
    let mut ticks = tokio::time::interval(ROUND);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        wake(&tokens, round(&ctx, &api, &home).await);
    }
}

fn wake(tokens: &UnboundedSender<ObjectRef<AccessToken>>, ids: BTreeSet<String>) {
    for (namespace, name) in ids.iter().filter_map(|id| id.split_once('/')) {
        let _ = tokens.unbounded_send(ObjectRef::new(name).within(namespace));
    }
}

/// One round over every namespace; returns the ids of the tokens whose
/// grants changed.
pub(crate) async fn round(ctx: &Context, api: &Api<ConfigMap>, home: &str) -> BTreeSet<String> {
    let mut changed = BTreeSet::new();
    let now = ctx.now();
    let reports = ctx.stores.usage_reports.state();
    let budgets: HashMap<String, Arc<AIBudget>> = ctx
        .stores
        .budgets
        .state()
        .into_iter()
        .map(|b| (crate::context::key_of(b.as_ref()), b))
        .collect();
    let tokens: HashMap<String, Arc<AccessToken>> = ctx
        .stores
        .tokens
        .state()
        .into_iter()
        .filter_map(|t| {
            Some((
                format!(
                    "{}/{}",
                    t.metadata.namespace.clone()?,
                    t.metadata.name.clone()?
                ),
                t,
            ))
        })
        .collect();
    let mut enforced =
        crate::bundle::EnforcedNamespaces::new(&ctx.stores.namespaces, &ctx.stores.pods, home);
    let namespaces: BTreeSet<String> = reports
        .iter()
        .filter_map(|cm| cm.metadata.namespace.clone())
        .chain(ctx.state.ledgers.namespaces())
        .collect();
    for namespace in namespaces {
        if !enforced.contains(&namespace) {
            continue;
        }
        let live: BTreeSet<String> = ctx
            .stores
            .pods
            .state()
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()))
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        if ctx.state.ledgers.unsure().contains(&namespace) {
            // Read back what is stored before granting anything more: grants
            // computed from an older ledger would take back a slice a pod may
            // already be spending.
            match api.get_opt(&wire::ledger_config_map(&namespace)).await {
                Ok(stored) => {
                    let stored = stored
                        .as_ref()
                        .and_then(|cm| cm.data.as_ref()?.get(keys::LEDGER))
                        .and_then(|json| serde_json::from_str::<Ledger>(json).ok());
                    if let Some(stored) = stored {
                        changed.extend(ctx.state.ledgers.publish(&namespace, &stored));
                    }
                    ctx.state.ledgers.unsure().remove(&namespace);
                }
                Err(error) => {
                    debug!(%namespace, %error, "reading back the budget ledger; retrying next round");
                    continue;
                }
            }
        }
        let written = ctx.state.ledgers.get(&namespace);
        let previous = written.clone().unwrap_or_default();
        let demands = demands_in(&reports, &namespace);
        let limits = Limits {
            tokens: &tokens,
            budgets: &budgets,
        };
        let others = ctx.state.ledgers.all();
        let limit = |key: &str| {
            let limit = limit_of(key, &namespace, &limits, &others, now)
                .or_else(|| rate_limit_of(key, &namespace, &limits, now))?;
            Some(usable(
                limit - committed_elsewhere(&others, &namespace, key),
            ))
        };
        let mut next = next_ledger(&previous, &demands, &live, limit);
        grant_next_minutes(&mut next, &live, now, limit);
        if next == previous && written.is_some() {
            continue;
        }
        let cm = ledger_config_map(home, &namespace, &next);
        let params = PatchParams::apply(field_managers::OPERATOR).force();
        match api
            .patch(
                &wire::ledger_config_map(&namespace),
                &params,
                &Patch::Apply(&cm),
            )
            .await
        {
            Ok(_) => {
                ctx.metrics
                    .ledger_writes
                    .get_or_create(&crate::metrics::NamespaceLabels {
                        namespace: namespace.clone(),
                    })
                    .inc();
                changed.extend(ctx.state.ledgers.publish(&namespace, &next));
            }
            Err(error) => {
                ctx.state.ledgers.unsure().insert(namespace.clone());
                warn!(%namespace, %error, "writing the budget ledger; reading it back and retrying next round")
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn side(live: bool, settled: f64, wanted: f64, basis: f64) -> PodSide {
        PodSide {
            live,
            demand: Demand {
                settled,
                in_flight: 0.0,
                wanted,
                basis,
            },
        }
    }

    fn pods(list: &[(&str, PodSide)]) -> BTreeMap<String, PodSide> {
        list.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    }

    #[test]
    fn three_pods_asking_for_more_than_remains_share_it_equally() {
        let asking = pods(&[
            ("a", side(true, 0.0, 1.0, 0.0)),
            ("b", side(true, 0.0, 1.0, 0.0)),
            ("c", side(true, 0.0, 1.0, 0.0)),
        ]);
        let round = grant_round(0.9, &BTreeMap::new(), &asking);
        for pod in ["a", "b", "c"] {
            assert!((round.grants[pod] - 0.3).abs() < 1e-12);
        }
        assert!(round.remaining < 1e-12);
    }

    #[test]
    fn a_demand_already_granted_is_not_granted_again() {
        let asking = pods(&[("a", side(true, 0.0, 0.1, 0.0))]);
        let first = grant_round(1.0, &BTreeMap::new(), &asking);
        assert_eq!(first.grants["a"], 0.1);
        // The same report read again: its basis is no longer the grant.
        let second = grant_round(1.0, &first.grants, &asking);
        assert_eq!(second.grants["a"], 0.1);
        let asks_again = pods(&[("a", side(true, 0.05, 0.1, 0.1))]);
        let third = grant_round(1.0, &first.grants, &asks_again);
        assert!((third.grants["a"] - 0.2).abs() < 1e-12);
    }

    #[test]
    fn a_gone_pod_keeps_its_whole_grant_counted_and_gets_no_more() {
        let previous = BTreeMap::from([("dead".to_string(), 0.4)]);
        // It reported 0.1 settled before it died; 0.4 stays charged.
        let now = pods(&[
            ("dead", side(false, 0.1, 0.5, 0.4)),
            ("live", side(true, 0.0, 1.0, 0.0)),
        ]);
        let round = grant_round(1.0, &previous, &now);
        assert_eq!(round.grants["dead"], 0.4);
        assert!((round.grants["live"] - 0.6).abs() < 1e-12);
        assert_eq!(round.remaining, 0.0);
    }

    #[test]
    fn settled_beyond_a_grant_counts_and_hostile_numbers_count_for_nothing() {
        let previous = BTreeMap::from([("a".to_string(), 0.2)]);
        // a underestimated: settled 0.5 on a 0.2 grant.
        let now = pods(&[
            ("a", side(true, 0.5, 0.0, 0.2)),
            ("b", side(true, f64::NAN, f64::INFINITY, 0.0)),
            ("c", side(true, -5.0, -1.0, 0.0)),
        ]);
        let round = grant_round(1.0, &previous, &now);
        assert!((round.remaining - 0.5).abs() < 1e-12);
        assert!(!round.grants.contains_key("b"));
        assert!(!round.grants.contains_key("c"));
    }

    #[test]
    fn keys_of_other_periods_or_without_a_limit_are_dropped() {
        let key = "team-a/bot|Day|2026-11-22T00:00:00Z|usd".to_string();
        let stale = "team-a/bot|Day|2026-11-21T00:00:00Z|usd".to_string();
        let demands = BTreeMap::from([(
            "pod-1".to_string(),
            Demands::from([
                (key.clone(), side(true, 0.0, 0.25, 0.0).demand),
                (stale.clone(), side(true, 0.0, 0.25, 0.0).demand),
            ]),
        )]);
        let live = BTreeSet::from(["pod-1".to_string()]);
        let ledger = next_ledger(&Ledger::default(), &demands, &live, |k| {
            (k == key).then_some(1.0)
        });
        assert_eq!(ledger.keys.len(), 1);
        assert_eq!(ledger.granted(&key, "pod-1"), 0.25);
        assert_eq!(ledger.keys[&key].remaining, 0.75);
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn aibudget(namespace: &str, name: &str, spec: serde_json::Value) -> Arc<AIBudget> {
        let mut budget = AIBudget::new(name, serde_json::from_value(spec).unwrap());
        budget.metadata.namespace = Some(namespace.into());
        Arc::new(budget)
    }

    #[test]
    fn an_aibudget_key_has_a_limit_only_in_the_ledger_of_its_own_namespace() {
        let now = at("2026-11-22T15:00:00Z");
        let tokens = HashMap::new();
        let budgets = HashMap::from([
            (
                "team-a/eng".to_string(),
                aibudget(
                    "team-a",
                    "eng",
                    serde_json::json!({"scope": "Team", "team": "eng",
                    "budgets": [{"period": "Day", "maxCostUsd": 2.0}]}),
                ),
            ),
            (
                "team-a/trial".to_string(),
                aibudget(
                    "team-a",
                    "trial",
                    serde_json::json!({"scope": "Namespace", "perToken": true,
                    "budgets": [{"period": "Day", "maxTokens": 100}]}),
                ),
            ),
        ]);
        let limits = Limits {
            tokens: &tokens,
            budgets: &budgets,
        };
        let day = "2026-11-22T00:00:00Z";
        let shared = format!("AIBudget:team-a/eng|Day|{day}|usd");
        assert_eq!(
            limit_of(&shared, "team-a", &limits, &HashMap::new(), now),
            Some(2.0)
        );
        // A pod of another namespace asking for it gets nothing.
        assert_eq!(
            limit_of(&shared, "team-b", &limits, &HashMap::new(), now),
            None
        );
        // A per-token copy only of a per-token AIBudget, and the other way round.
        let copy = format!("AIBudget:team-a/trial@team-b/bot|Day|{day}|tokens");
        assert_eq!(
            limit_of(&copy, "team-a", &limits, &HashMap::new(), now),
            Some(100.0)
        );
        let forged = format!("AIBudget:team-a/eng@team-b/bot|Day|{day}|usd");
        assert_eq!(
            limit_of(&forged, "team-a", &limits, &HashMap::new(), now),
            None
        );
        let whole = format!("AIBudget:team-a/trial|Day|{day}|tokens");
        assert_eq!(
            limit_of(&whole, "team-a", &limits, &HashMap::new(), now),
            None
        );
        // Another period, another unit, garbage: nothing.
        let yesterday = "AIBudget:team-a/eng|Day|2026-11-21T00:00:00Z|usd";
        assert_eq!(
            limit_of(yesterday, "team-a", &limits, &HashMap::new(), now),
            None
        );
        let tokens_unit = format!("AIBudget:team-a/eng|Day|{day}|tokens");
        assert_eq!(
            limit_of(&tokens_unit, "team-a", &limits, &HashMap::new(), now),
            None
        );
        assert_eq!(
            limit_of(
                &format!("AIBudget:|Day|{day}|usd"),
                "team-a",
                &limits,
                &HashMap::new(),
                now
            ),
            None
        );
    }

    #[test]
    fn a_token_valid_in_two_namespaces_is_granted_its_limit_once_across_both_ledgers() {
        let key = "team-a/bot|Day|2026-11-22T00:00:00Z|usd".to_string();
        let asking = |pod: &str| {
            BTreeMap::from([(
                pod.to_string(),
                Demands::from([(key.clone(), side(true, 0.0, 0.8, 0.0).demand)]),
            )])
        };
        let mut ledgers: HashMap<String, Ledger> = HashMap::new();
        for (namespace, pod) in [("team-a", "pod-a"), ("team-b", "pod-b")] {
            let live = BTreeSet::from([pod.to_string()]);
            let next = next_ledger(&Ledger::default(), &asking(pod), &live, |k| {
                (k == key).then(|| usable(1.0 - committed_elsewhere(&ledgers, namespace, k)))
            });
            ledgers.insert(namespace.to_string(), next);
        }
        let a = ledgers["team-a"].granted(&key, "pod-a");
        let b = ledgers["team-b"].granted(&key, "pod-b");
        assert_eq!(a, 0.8);
        assert!((b - 0.2).abs() < 1e-12, "{b}");
        assert!(a + b <= 1.0 + 1e-12);
    }

    fn token_with_rate(rpm: Option<u32>, tpm: Option<u64>) -> HashMap<String, Arc<AccessToken>> {
        let mut token = crate::testing::token("team-a", "bot").build();
        token.spec.rate_limit = Some(policybind_crds::RateLimit {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
        });
        HashMap::from([("team-a/bot".to_string(), Arc::new(token))])
    }

    #[test]
    fn rate_keys_of_this_minute_and_the_next_have_the_tokens_limits() {
        use chrono::TimeZone;
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 15, 4, 55).unwrap();
        let tokens = token_with_rate(Some(60), Some(10_000));
        let key = |minute: u32, unit| {
            let at = Utc.with_ymd_and_hms(2026, 11, 22, 15, minute, 0).unwrap();
            lease::rate_key("team-a/bot", at, unit)
        };
        let budgets = HashMap::new();
        let limits = Limits {
            tokens: &tokens,
            budgets: &budgets,
        };
        let of = |k: &str| rate_limit_of(k, "team-a", &limits, now);
        assert_eq!(of(&key(4, lease::RateUnit::Requests)), Some(60.0));
        assert_eq!(of(&key(5, lease::RateUnit::Tokens)), Some(10_000.0));
        // Past minutes and minutes too far ahead are dropped.
        assert_eq!(of(&key(3, lease::RateUnit::Requests)), None);
        assert_eq!(of(&key(6, lease::RateUnit::Requests)), None);
        // Not valid in another namespace; a budget key is not a rate key.
        let elsewhere = rate_limit_of(&key(4, lease::RateUnit::Requests), "team-b", &limits, now);
        assert_eq!(elsewhere, None);
        assert_eq!(of("team-a/bot|Day|2026-11-22T00:00:00Z|usd"), None);
        let no_tpm = token_with_rate(Some(60), None);
        let limits = Limits {
            tokens: &no_tpm,
            budgets: &budgets,
        };
        let tokens_key = key(4, lease::RateUnit::Tokens);
        assert_eq!(rate_limit_of(&tokens_key, "team-a", &limits, now), None);
    }

    #[test]
    fn a_rolling_windows_current_bucket_gets_the_limit_less_the_earlier_buckets_in_the_window() {
        use chrono::TimeZone;
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 10, 30, 0).unwrap();
        let token = crate::testing::token("team-a", "bot")
            .budget(policybind_crds::Budget {
                period: BudgetPeriod::Day,
                window: BudgetWindow::Rolling,
                max_cost_usd: Some(1.0),
                max_tokens: None,
                time_zone: "UTC".into(),
            })
            .build();
        let tokens = HashMap::from([("team-a/bot".to_string(), Arc::new(token))]);
        let budgets = HashMap::new();
        let limits = Limits {
            tokens: &tokens,
            budgets: &budgets,
        };
        let key = |at: &str| format!("team-a/bot|Day|{at}|usd");
        let entry = |pod: &str, granted: f64| KeyLedger {
            limit: granted,
            remaining: 0.0,
            grants: BTreeMap::from([(pod.to_string(), granted)]),
        };
        let mut team_a = Ledger::default();
        // Earlier buckets in the window (from 2026-11-21T10:00), here and in
        // another namespace's ledger, and one that has left it.
        team_a
            .keys
            .insert(key("2026-11-22T05:00:00Z"), entry("pod-1", 0.3));
        team_a
            .keys
            .insert(key("2026-11-21T10:00:00Z"), entry("pod-1", 0.1));
        team_a
            .keys
            .insert(key("2026-11-21T09:00:00Z"), entry("pod-1", 0.5));
        let mut team_b = Ledger::default();
        team_b
            .keys
            .insert(key("2026-11-22T08:00:00Z"), entry("pod-9", 0.2));
        let ledgers = HashMap::from([
            ("team-a".to_string(), team_a.clone()),
            ("team-b".to_string(), team_b),
        ]);
        let of = |k: &str| limit_of(k, "team-a", &limits, &ledgers, now);
        // 1.0 - (0.3 + 0.1 + 0.2): what left the window no longer counts.
        let current = of(&key("2026-11-22T10:00:00Z")).unwrap();
        assert!((current - 0.4).abs() < 1e-12, "{current}");
        // An earlier bucket is kept, frozen at what it committed.
        assert_eq!(of(&key("2026-11-22T05:00:00Z")), Some(0.3));
        // Gone from the window, not yet begun, or not a bucket start: no key.
        assert_eq!(of(&key("2026-11-21T09:00:00Z")), None);
        assert_eq!(of(&key("2026-11-22T11:00:00Z")), None);
        assert_eq!(of(&key("2026-11-22T10:15:00Z")), None);
        // A round: a pod asking for the whole limit gets what the window
        // left; the earlier bucket keeps its grant and grants nothing more;
        // the bucket that left the window is dropped.
        let demands = BTreeMap::from([(
            "pod-2".to_string(),
            Demands::from([
                (
                    key("2026-11-22T10:00:00Z"),
                    side(true, 0.0, 1.0, 0.0).demand,
                ),
                (
                    key("2026-11-22T05:00:00Z"),
                    side(true, 0.0, 1.0, 0.0).demand,
                ),
            ]),
        )]);
        let live = BTreeSet::from(["pod-1".to_string(), "pod-2".to_string()]);
        let next = next_ledger(&team_a, &demands, &live, |k| {
            Some(usable(of(k)? - committed_elsewhere(&ledgers, "team-a", k)))
        });
        assert!((next.granted(&key("2026-11-22T10:00:00Z"), "pod-2") - 0.4).abs() < 1e-12);
        assert_eq!(next.granted(&key("2026-11-22T05:00:00Z"), "pod-2"), 0.0);
        assert_eq!(next.granted(&key("2026-11-22T05:00:00Z"), "pod-1"), 0.3);
        assert!(!next.keys.contains_key(&key("2026-11-21T09:00:00Z")));

        // When the earlier buckets took the whole limit, the current bucket's
        // key is still written, with nothing left: the pod asking refuses
        // BUDGET_EXCEEDED at once rather than wait for a grant that never comes.
        let mut full = team_a.clone();
        full.keys
            .insert(key("2026-11-22T06:00:00Z"), entry("pod-1", 0.6));
        let ledgers = HashMap::from([("team-a".to_string(), full.clone())]);
        let of = |k: &str| limit_of(k, "team-a", &limits, &ledgers, now);
        assert_eq!(of(&key("2026-11-22T10:00:00Z")), Some(0.0));
        let next = next_ledger(&full, &demands, &live, of);
        let current = &next.keys[&key("2026-11-22T10:00:00Z")];
        assert_eq!((current.remaining, current.grants.len()), (0.0, 0));
    }

    #[test]
    fn holders_of_this_minutes_rate_key_are_granted_the_next_minute_ahead() {
        let this = lease::rate_key(
            "ns/bot",
            at("2026-11-22T15:04:00Z"),
            lease::RateUnit::Requests,
        );
        let next = lease::rate_key(
            "ns/bot",
            at("2026-11-22T15:05:00Z"),
            lease::RateUnit::Requests,
        );
        let mut ledger = Ledger::default();
        ledger.keys.insert(
            this.clone(),
            KeyLedger {
                limit: 10_000.0,
                remaining: 9_000.0,
                grants: BTreeMap::from([
                    ("live-1".to_string(), 600.0),
                    ("live-2".to_string(), 400.0),
                    ("gone".to_string(), 0.0),
                ]),
            },
        );
        let live: BTreeSet<String> = ["live-1", "live-2", "idle"].map(String::from).into();
        let limit = |_: &str| Some(10_000.0);
        // Not before the last ten seconds of the minute.
        let mut early = ledger.clone();
        grant_next_minutes(&mut early, &live, at("2026-11-22T15:04:49Z"), limit);
        assert_eq!(early, ledger);
        let mut ahead = ledger.clone();
        grant_next_minutes(&mut ahead, &live, at("2026-11-22T15:04:50Z"), limit);
        let granted = &ahead.keys[&next];
        // 1% of the limit between the two pods that held this minute's key;
        // nothing for a gone pod or one that held nothing.
        assert_eq!(
            granted.grants,
            BTreeMap::from([("live-1".to_string(), 50.0), ("live-2".to_string(), 50.0)])
        );
        assert_eq!(granted.remaining, 9_900.0);
        // Once granted, a later round adds nothing.
        let again = {
            let mut l = ahead.clone();
            grant_next_minutes(&mut l, &live, at("2026-11-22T15:04:58Z"), limit);
            l
        };
        assert_eq!(again, ahead);
        // Never past what the next minute has left.
        let mut tight = ledger.clone();
        tight.keys.insert(
            next.clone(),
            KeyLedger {
                limit: 10_000.0,
                remaining: 30.0,
                grants: BTreeMap::from([("other".to_string(), 9_970.0)]),
            },
        );
        grant_next_minutes(&mut tight, &live, at("2026-11-22T15:04:55Z"), limit);
        let total: f64 = tight.keys[&next].grants.values().sum();
        assert!(total <= 10_000.0 + 1e-9, "{total}");
        assert_eq!(tight.keys[&next].remaining, 0.0);
        // A key the owner has no limit for (revoked token, gone rate limit) is
        // not granted ahead.
        let mut none = ledger.clone();
        grant_next_minutes(&mut none, &live, at("2026-11-22T15:04:55Z"), |_| None);
        assert!(!none.keys.contains_key(&next));
    }

    fn any_side() -> impl Strategy<Value = PodSide> {
        (any::<bool>(), 0.0..2.0f64, 0.0..2.0f64, any::<bool>()).prop_map(
            |(live, settled, wanted, fresh)| PodSide {
                live,
                demand: Demand {
                    settled,
                    in_flight: 0.0,
                    wanted,
                    // Either asking on the grant it saw (filled in below) or stale.
                    basis: if fresh { -1.0 } else { 7.0 },
                },
            },
        )
    }

    proptest! {
        /// Over any sequence of rounds, with pods spending up to their grants,
        /// Σ grants never exceed the limit, and grants never shrink.
        #[test]
        fn grants_never_exceed_the_limit(
            limit in 0.0..5.0f64,
            rounds in prop::collection::vec(prop::collection::vec(any_side(), 1..6), 1..12),
        ) {
            let mut grants: BTreeMap<String, f64> = BTreeMap::new();
            for round in rounds {
                let pods: BTreeMap<String, PodSide> = round
                    .into_iter()
                    .enumerate()
                    .map(|(i, mut side)| {
                        let name = format!("pod-{i}");
                        let held = grants.get(&name).copied().unwrap_or(0.0);
                        if side.demand.basis < 0.0 {
                            side.demand.basis = held;
                        }
                        // A pod admits only within its grant.
                        side.demand.settled = side.demand.settled.min(held);
                        (name, side)
                    })
                    .collect();
                let next = grant_round(limit, &grants, &pods);
                for (pod, before) in &grants {
                    prop_assert!(next.grants[pod] >= *before);
                }
                let total: f64 = next.grants.values().sum();
                prop_assert!(total <= limit * (1.0 + 1e-12) + 1e-12, "{total} > {limit}");
                prop_assert!(next.remaining >= 0.0);
                grants = next.grants;
            }
        }

        /// Pods that settled beyond their grants (underestimates) never make the
        /// operator grant more: Σ max(granted, settled) never grows past the
        /// larger of the limit and what it already was.
        #[test]
        fn overspent_pods_never_unlock_more_grants(
            limit in 0.0..5.0f64,
            previous in prop::collection::vec(0.0..2.0f64, 1..6),
            sides in prop::collection::vec(any_side(), 1..6),
        ) {
            let grants: BTreeMap<String, f64> = previous
                .iter()
                .enumerate()
                .map(|(i, g)| (format!("pod-{i}"), *g))
                .collect();
            let pods: BTreeMap<String, PodSide> = sides
                .into_iter()
                .enumerate()
                .map(|(i, mut s)| {
                    let name = format!("pod-{i}");
                    if s.demand.basis < 0.0 {
                        s.demand.basis = grants.get(&name).copied().unwrap_or(0.0);
                    }
                    (name, s)
                })
                .collect();
            let before = committed(&grants, &pods);
            let next = grant_round(limit, &grants, &pods);
            let after = committed(&next.grants, &pods);
            prop_assert!(after <= before.max(limit) * (1.0 + 1e-12) + 1e-12);
        }
    }
}
