//! Sustained load through the Redis budget store: what a request pays on
//! its path (the usage read for the decision's facts plus the reservation;
//! the settlement runs in the background) at a given concurrency.
//!
//! `cargo run --release -p policybind-sidecar --example redis_ledger_load --
//!  redis://127.0.0.1:6390/0 [seconds per run, default 10]`
//!
//! Runs at 1 and 16 concurrent callers on one ledger, each for the given
//! time, against a token with a day budget far above what the run spends and
//! a rate limit far above what it sends, so that every check runs and no
//! request is refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use policybind_crds::{BudgetPeriod, RateLimit};
use policybind_engine::compile::CompiledBudget;
use policybind_sidecar::accounting::{Amount, TokenLimits, UsageLedger};
use policybind_sidecar::redis_ledger::{RedisLedger, RedisStoreSettings};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .expect("usage: redis_ledger_load REDIS_URL [SECONDS]");
    let seconds: u64 = args.next().map_or(10, |s| s.parse().expect("seconds"));
    let store = RedisStoreSettings {
        url,
        password: None,
        ca_file: None,
    };
    let ledger = Arc::new(RedisLedger::connect(&store).expect("redis url"));
    for concurrency in [1usize, 16] {
        run(&ledger, concurrency, Duration::from_secs(seconds)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("settlements lost: {}", ledger.lost_settlements());
}

async fn run(ledger: &Arc<RedisLedger>, concurrency: usize, length: Duration) {
    let owner = format!("bench/token-{concurrency}");
    let until = Instant::now() + length;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (ledger, owner) = (ledger.clone(), owner.clone());
        tasks.push(tokio::spawn(async move {
            let budgets = vec![CompiledBudget {
                period: BudgetPeriod::Day,
                max_cost_usd: Some(1e9),
                max_tokens: Some(1 << 50),
                tz: chrono_tz::UTC,
                rolling: false,
            }];
            let rate = RateLimit {
                requests_per_minute: Some(u32::MAX),
                tokens_per_minute: Some(1 << 50),
            };
            let mut latencies = Vec::new();
            while Instant::now() < until {
                let started = Instant::now();
                let now = Utc::now();
                ledger.usage_shared(&owner, &budgets, now).await;
                let limits = TokenLimits {
                    rate: Some(&rate),
                    budgets: &budgets,
                };
                let id = ledger
                    .reserve_shared(&owner, limits, Amount::new(0.002, 600), now)
                    .await
                    .expect("admitted");
                latencies.push(started.elapsed());
                ledger.settle(id, Amount::new(0.0015, 450), Utc::now());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    all.sort();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    println!(
        "concurrency {concurrency:>2}: {:>7.0} requests/s, usage read + reserve p50 {:?} p99 {:?} ({} requests in {:?})",
        all.len() as f64 / length.as_secs_f64(),
        at(0.50),
        at(0.99),
        all.len(),
        length
    );
}
