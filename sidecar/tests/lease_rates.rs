//! Rate limits across replicas with leases: three sidecars' [`LeasedLedger`]s
//! and the operator's grant rounds (`policybind_operator::ledger::next_ledger`,
//! the arithmetic the leader runs once a second) on a simulated clock, the
//! API server in between replaced by handing demands and ledgers over
//! directly. The bound: the requests admitted in one calendar minute, over
//! all replicas, never exceed `requestsPerMinute`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, TimeZone, Utc};
use policybind_crds::RateLimit;
use policybind_crds::lease::{self, Ledger};
use policybind_operator::ledger::next_ledger;
use policybind_sidecar::UsageLedger;
use policybind_sidecar::accounting::{Amount, Refusal, TokenLimits};
use policybind_sidecar::lease::LeasedLedger;

const TOKEN: &str = "team-a/bot";
const RPM: u32 = 120;

/// What the operator's `rate_limit_of` answers for this token: the limit of
/// rate keys of the current or the next minute.
fn limit(key: &str, now: DateTime<Utc>) -> Option<f64> {
    let parts = lease::parse_rate_key(key)?;
    let minute = lease::minute_start(now);
    (parts.start == minute || parts.start == minute + Duration::minutes(1)).then(|| {
        match parts.unit {
            lease::RateUnit::Requests => f64::from(RPM),
            lease::RateUnit::Tokens => f64::MAX,
        }
    })
}

#[test]
fn three_replicas_never_admit_more_than_requests_per_minute_in_a_minute() {
    let pods = ["pod-a", "pod-b", "pod-c"];
    let replicas: Vec<LeasedLedger> = pods.iter().map(|p| LeasedLedger::new(p)).collect();
    for replica in &replicas {
        replica.report_restored();
        replica.apply_ledger(Ledger::default());
    }
    let live: BTreeSet<String> = pods.iter().map(|p| p.to_string()).collect();
    let rate = RateLimit {
        requests_per_minute: Some(RPM),
        tokens_per_minute: None,
    };
    let limits = TokenLimits {
        rate: Some(&rate),
        budgets: &[],
    };
    let start = Utc.with_ymd_and_hms(2026, 11, 22, 15, 0, 0).unwrap();
    let mut ledger = Ledger::default();
    let mut admitted: BTreeMap<DateTime<Utc>, u32> = BTreeMap::new();
    let mut refused_rate = 0;
    // Four minutes at 50 ms steps; each replica tries a request every step
    // (20/s each, 3600/min together: far above the limit).
    for step in 0..(4 * 60 * 20) {
        let now = start + Duration::milliseconds(50 * step);
        for replica in &replicas {
            match replica.reserve(TOKEN, limits, Amount::new(0.0, 1), now) {
                Ok(id) => {
                    *admitted.entry(lease::minute_start(now)).or_default() += 1;
                    replica.settle(id, Amount::new(0.0, 1), now);
                }
                Err(Refusal::RateLimited { .. }) => refused_rate += 1,
                Err(Refusal::AwaitingGrant | Refusal::LeaseUnavailable) => {}
                Err(other) => panic!("unexpected refusal {other:?}"),
            }
        }
        // The operator's round, once a simulated second.
        if step % 20 == 19 {
            let demands: BTreeMap<String, _> = pods
                .iter()
                .zip(&replicas)
                .map(|(pod, r)| (pod.to_string(), r.demands()))
                .collect();
            ledger = next_ledger(&ledger, &demands, &live, |key| limit(key, now));
            for replica in &replicas {
                replica.apply_ledger(ledger.clone());
            }
        }
    }
    eprintln!(
        "admitted per minute: {:?}",
        admitted.values().collect::<Vec<_>>()
    );
    assert_eq!(admitted.len(), 4, "{admitted:?}");
    for (minute, count) in &admitted {
        assert!(
            *count <= RPM,
            "{count} requests admitted in the minute of {minute}"
        );
    }
    // Not a bound, a sign the leases work at all: each minute after the
    // first is nearly used up (the first waits for the first grants).
    let used: Vec<u32> = admitted.values().copied().collect();
    assert!(used[1..].iter().all(|c| *c >= RPM * 3 / 4), "{used:?}");
    assert!(refused_rate > 0, "the limit was reached");
}
