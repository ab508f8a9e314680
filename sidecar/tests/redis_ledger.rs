//! The Redis budget store against a real `redis-server` (Debian's
//! `redis-server` package; `.ci/run` installs it). Several [`RedisLedger`]s
//! on one Redis stand for replicas.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use policybind_crds::{BudgetPeriod, RateLimit};
use policybind_engine::compile::CompiledBudget;
use policybind_sidecar::accounting::{Amount, Refusal, TokenLimits, UsageLedger};
use policybind_sidecar::redis_ledger::{RedisLedger, RedisStoreSettings, Timings};

/// A `redis-server` on a free loopback port, without persistence, killed
/// when dropped.
struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = spawn_redis(dir.path(), port);
        let server = RedisServer { child, port, dir };
        server.wait_ready();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn store(&self) -> RedisStoreSettings {
        RedisStoreSettings {
            url: self.url(),
            password: None,
            ca_file: None,
        }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["PING"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// Runs one command with `redis-cli` (the hostile writer's tool).
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (Debian's redis-tools, installed with redis-server)");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts Redis again on the same port (empty: no persistence).
    fn restart(&mut self) {
        self.kill();
        self.child = spawn_redis(self.dir.path(), self.port);
        self.wait_ready();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_redis(dir: &Path, port: u16) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run redis-server ({e}): these tests need a real Redis; \
                 install it with `apt-get install -y redis-server` (.ci/run does)"
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn day_budget(max_cost: Option<f64>, max_tokens: Option<u64>) -> Vec<CompiledBudget> {
    vec![CompiledBudget {
        period: BudgetPeriod::Day,
        max_cost_usd: max_cost,
        max_tokens,
        tz: chrono_tz::UTC,
        rolling: false,
    }]
}

/// Generous command timeouts: a test on a busy machine must not fail for
/// Redis' latency (the 200 ms default is for the request path).
fn patient() -> Timings {
    Timings {
        command_timeout: Duration::from_secs(2),
        ..Timings::default()
    }
}

fn connect(store: &RedisStoreSettings) -> RedisLedger {
    RedisLedger::connect_with(store, patient()).unwrap()
}

fn replicas(redis: &RedisServer, n: usize) -> Vec<Arc<RedisLedger>> {
    (0..n).map(|_| Arc::new(connect(&redis.store()))).collect()
}

fn no_rate(budgets: &[CompiledBudget]) -> TokenLimits<'_> {
    TokenLimits {
        rate: None,
        budgets,
    }
}

/// Waits until background settlements reached Redis.
async fn settled_in_redis(ledger: &RedisLedger, owner: &str, budgets: &[CompiledBudget]) -> f64 {
    tokio::time::sleep(Duration::from_millis(200)).await;
    ledger.usage_shared(owner, budgets, Utc::now()).await[0].cost_usd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_reserving_at_once_never_exceed_the_budget() {
    let redis = RedisServer::start();
    let budgets = day_budget(Some(1.0), None);
    let ledgers = replicas(&redis, 3);
    // 3 replicas x 40 concurrent reservations of $0.03: 120 ask, 33 fit.
    let mut tasks = Vec::new();
    for ledger in &ledgers {
        for _ in 0..40 {
            let (ledger, budgets) = (ledger.clone(), budgets.clone());
            tasks.push(tokio::spawn(async move {
                let limits = no_rate(&budgets);
                ledger
                    .reserve_shared("team-a/bot", limits, Amount::new(0.03, 10), Utc::now())
                    .await
            }));
        }
    }
    let mut admitted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(Refusal::BudgetExceeded { period }) => assert_eq!(period, BudgetPeriod::Day),
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    assert_eq!(admitted, 33, "exactly floor(1.00 / 0.03) fit");
    let usage = ledgers[0]
        .usage_shared("team-a/bot", &budgets, Utc::now())
        .await;
    assert!((usage[0].cost_usd - 0.99).abs() < 1e-9, "{usage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_window_is_shared_by_replicas_and_releases_spend_as_it_ages() {
    let redis = RedisServer::start();
    let rolling = vec![CompiledBudget {
        rolling: true,
        ..day_budget(Some(1.0), None).remove(0)
    }];
    let calendar = day_budget(Some(1.0), None);
    let ledgers = replicas(&redis, 2);
    let (a, b) = (&ledgers[0], &ledgers[1]);
    let limits = no_rate(&rolling);
    // Budget keys follow the time a request is decided at, so the window can
    // be walked here; a day ahead, so that the keys' expiry lies in the future.
    let hour = |h: i64| {
        let base = Utc::now() + chrono::Duration::days(2);
        policybind_engine::schedule::bucket_start(BudgetPeriod::Day, base)
            + chrono::Duration::hours(h)
            + chrono::Duration::minutes(30)
    };
    let spent = a
        .reserve_shared("ns/tok", limits, Amount::new(0.6, 1), hour(0))
        .await
        .unwrap();
    a.settle(spent, Amount::new(0.6, 1), hour(0));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later = b
        .reserve_shared("ns/tok", limits, Amount::new(0.3, 1), hour(5))
        .await
        .unwrap();
    b.settle(later, Amount::new(0.3, 1), hour(5));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Another replica, 24 hours on (the first bucket is still in the window):
    // 0.9 counted, so 0.2 does not fit.
    let refused = b
        .reserve_shared("ns/tok", limits, Amount::new(0.2, 1), hour(24))
        .await;
    assert!(
        matches!(refused, Err(Refusal::BudgetExceeded { .. })),
        "{refused:?}"
    );
    let usage = a.usage_shared("ns/tok", &rolling, hour(24)).await;
    assert!((usage[0].cost_usd - 0.9).abs() < 1e-9, "{usage:?}");
    // An hour later the first bucket has left: 0.3 counted, 0.7 fits.
    let usage = a.usage_shared("ns/tok", &rolling, hour(25)).await;
    assert!((usage[0].cost_usd - 0.3).abs() < 1e-9, "{usage:?}");
    a.reserve_shared("ns/tok", limits, Amount::new(0.7, 1), hour(25))
        .await
        .expect("0.3 + 0.7 fits once the first bucket left");
    // A calendar budget of the same token and period is counted apart.
    let day = a.usage_shared("ns/tok", &calendar, hour(0)).await;
    assert_eq!(day[0].cost_usd, 0.0, "{day:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_corrects_and_release_frees() {
    let redis = RedisServer::start();
    let budgets = day_budget(Some(1.0), Some(1000));
    let ledgers = replicas(&redis, 2);
    let (a, b) = (&ledgers[0], &ledgers[1]);
    let limits = no_rate(&budgets);
    let now = Utc::now();
    let first = a
        .reserve_shared("ns/tok", limits, Amount::new(0.6, 600), now)
        .await
        .unwrap();
    // B sees A's reservation and cannot take the rest.
    let refused = b
        .reserve_shared("ns/tok", limits, Amount::new(0.6, 10), now)
        .await;
    assert!(matches!(refused, Err(Refusal::BudgetExceeded { .. })));
    // A spent less than it estimated: the difference is free again.
    a.settle(first, Amount::new(0.2, 100), now);
    assert!((settled_in_redis(b, "ns/tok", &budgets).await - 0.2).abs() < 1e-9);
    let second = b
        .reserve_shared("ns/tok", limits, Amount::new(0.6, 10), now)
        .await
        .unwrap();
    let third = b
        .reserve_shared("ns/tok", limits, Amount::new(0.3, 10), now)
        .await;
    assert!(matches!(third, Err(Refusal::BudgetExceeded { .. })));
    // A failed upstream gives the reservation back.
    b.release(second, now);
    assert!((settled_in_redis(a, "ns/tok", &budgets).await - 0.2).abs() < 1e-9);
    b.reserve_shared("ns/tok", limits, Amount::new(0.7, 10), now)
        .await
        .expect("0.2 settled + 0.7 fits in 1.0");
    // Each replica reports only what it settled itself.
    assert_eq!(a.settled_usage().len(), 1);
    assert!(b.settled_usage().is_empty());
    // A request priced at zero skips the cost check; its tokens still count.
    let zero = b
        .reserve_shared("ns/tok", limits, Amount::new(0.0, 100), now)
        .await;
    assert!(zero.is_ok(), "{zero:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_reservations_are_freed_after_their_lease() {
    let redis = RedisServer::start();
    let budgets = day_budget(Some(1.0), None);
    let timings = Timings {
        lease: Duration::from_millis(1500),
        heartbeat: Duration::from_millis(300),
        ..patient()
    };
    let alive = RedisLedger::connect_with(&redis.store(), timings).unwrap();
    let doomed = RedisLedger::connect_with(&redis.store(), timings).unwrap();
    let limits = no_rate(&budgets);
    let now = Utc::now();
    let kept = alive
        .reserve_shared("ns/tok", limits, Amount::new(0.4, 1), now)
        .await
        .unwrap();
    doomed
        .reserve_shared("ns/tok", limits, Amount::new(0.5, 1), now)
        .await
        .unwrap();
    // The replica dies without settling: no release, no more heartbeats.
    drop(doomed);
    let refused = alive
        .reserve_shared("ns/tok", limits, Amount::new(0.5, 1), now)
        .await;
    assert!(matches!(refused, Err(Refusal::BudgetExceeded { .. })));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The dead replica's 0.5 is free; the live one's 0.4, pushed on by its
    // heartbeat past its own lease, still counts.
    alive
        .reserve_shared("ns/tok", limits, Amount::new(0.5, 1), now)
        .await
        .expect("the dead replica's reservation was freed");
    let over = alive
        .reserve_shared("ns/tok", limits, Amount::new(0.2, 1), now)
        .await;
    assert!(
        matches!(over, Err(Refusal::BudgetExceeded { .. })),
        "{over:?}"
    );
    // Settled 0.4 plus the 0.5 in flight.
    alive.settle(kept, Amount::new(0.4, 1), now);
    assert!((settled_in_redis(&alive, "ns/tok", &budgets).await - 0.9).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_three_replicas() {
    let redis = RedisServer::start();
    let rate = RateLimit {
        requests_per_minute: Some(30),
        tokens_per_minute: None,
    };
    let ledgers = replicas(&redis, 3);
    let started = Instant::now();
    let mut admitted = 0u64;
    for round in 0..90 {
        let ledger = &ledgers[round % 3];
        let limits = TokenLimits {
            rate: Some(&rate),
            budgets: &[],
        };
        match ledger
            .reserve_shared("ns/tok", limits, Amount::new(0.0, 1), Utc::now())
            .await
        {
            Ok(id) => {
                admitted += 1;
                ledger.release(id, Utc::now());
            }
            Err(Refusal::RateLimited { what, retry_after }) => {
                assert_eq!(what, "requests per minute");
                assert!(retry_after <= Duration::from_secs(2), "{retry_after:?}");
            }
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    // The burst is one minute's allowance; it refills at 30/min = 1 per 2 s.
    let refilled = (started.elapsed().as_secs_f64() / 2.0).ceil() as u64;
    assert!(
        (30..=30 + refilled).contains(&admitted),
        "{admitted} admitted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_per_minute_refund_an_overestimate() {
    let redis = RedisServer::start();
    let rate = RateLimit {
        requests_per_minute: None,
        tokens_per_minute: Some(1000),
    };
    let ledgers = replicas(&redis, 2);
    let limits = TokenLimits {
        rate: Some(&rate),
        budgets: &[],
    };
    let now = Utc::now();
    let big = ledgers[0]
        .reserve_shared("ns/tok", limits, Amount::new(0.0, 900), now)
        .await
        .unwrap();
    let refused = ledgers[1]
        .reserve_shared("ns/tok", limits, Amount::new(0.0, 200), now)
        .await;
    assert!(matches!(
        refused,
        Err(Refusal::RateLimited {
            what: "tokens per minute",
            ..
        })
    ));
    ledgers[0].settle(big, Amount::new(0.0, 100), now);
    tokio::time::sleep(Duration::from_millis(200)).await;
    ledgers[1]
        .reserve_shared("ns/tok", limits, Amount::new(0.0, 800), now)
        .await
        .expect("800 of the 900 estimated were refunded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_away_fails_closed_then_recovers() {
    let mut redis = RedisServer::start();
    let budgets = day_budget(Some(10.0), None);
    // The request path's own timeouts (200 ms).
    let ledger = RedisLedger::connect(&redis.store()).unwrap();
    let limits = no_rate(&budgets);
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = ledger
        .reserve_shared("ns/tok", limits, Amount::new(0.1, 1), Utc::now())
        .await
    {
        assert!(Instant::now() < deadline, "never reached Redis: {e:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let refused = ledger
            .reserve_shared("ns/tok", limits, Amount::new(0.1, 1), Utc::now())
            .await;
        assert!(
            matches!(refused, Err(Refusal::StoreUnavailable { .. })),
            "{refused:?}"
        );
        // Not a timing assertion on speed: only that the request path does
        // not hang on a dead Redis.
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // An owner without limits is served without Redis.
    let unlimited = ledger
        .reserve_shared("ns/free", no_rate(&[]), Amount::new(0.1, 1), Utc::now())
        .await;
    assert!(unlimited.is_ok());
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ledger
            .reserve_shared("ns/tok", limits, Amount::new(0.1, 1), Utc::now())
            .await
        {
            Ok(_) => break,
            Err(Refusal::StoreUnavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("no recovery: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_redis_fails_closed() {
    let redis = RedisServer::start();
    let budgets = day_budget(Some(1.0), Some(1_000));
    let ledger = connect(&redis.store());
    let limits = no_rate(&budgets);
    let now = Utc::now();
    ledger
        .reserve_shared("ns/tok", limits, Amount::new(0.1, 1), now)
        .await
        .unwrap();
    let keys = redis.cli(&["KEYS", "policybind:{ns/tok}:b:*"]);
    let budget_key = keys.trim().to_string();
    assert!(budget_key.contains(":b:Day:"), "{keys}");
    let refused_with = |cost: &'static str| {
        let (ledger, budgets, redis, key) = (&ledger, &budgets, &redis, &budget_key);
        async move {
            redis.cli(&["HSET", key, "cost", cost]);
            ledger
                .reserve_shared("ns/tok", no_rate(budgets), Amount::new(0.1, 1), now)
                .await
        }
    };
    // A hostile writer that zeroes the tally cannot be told from a real
    // zero; one that writes what PolicyBind never writes is refused.
    for garbage in ["abc", "-5", "1.5", "1e3", "99999999999999999999", ""] {
        let answer = refused_with(garbage).await;
        assert!(
            matches!(answer, Err(Refusal::StoreUnavailable { .. })),
            "{garbage:?}: {answer:?}"
        );
    }
    redis.cli(&["HSET", &budget_key, "cost", "0"]);
    // A key of the wrong type.
    redis.cli(&["DEL", "policybind:{ns/tok}:res"]);
    redis.cli(&["SET", "policybind:{ns/tok}:res", "x"]);
    let answer = ledger
        .reserve_shared("ns/tok", limits, Amount::new(0.1, 1), now)
        .await;
    assert!(
        matches!(answer, Err(Refusal::StoreUnavailable { .. })),
        "{answer:?}"
    );
    redis.cli(&["DEL", "policybind:{ns/tok}:res"]);
    // An expired reservation record that points at another owner's keys.
    redis.cli(&["ZADD", "policybind:{ns/tok}:res", "0", "evil"]);
    redis.cli(&[
        "HSET",
        "policybind:{ns/tok}:resd",
        "evil",
        "0 0 0 policybind:{ns/other}:b:Day:0",
    ]);
    let answer = ledger
        .reserve_shared("ns/tok", limits, Amount::new(0.1, 1), now)
        .await;
    assert!(
        matches!(answer, Err(Refusal::StoreUnavailable { .. })),
        "{answer:?}"
    );
    // A garbage rate-limit state.
    redis.cli(&["DEL", "policybind:{ns/tok}:res", "policybind:{ns/tok}:resd"]);
    redis.cli(&["SET", "policybind:{ns/tok}:rpm", "soon"]);
    let rate = RateLimit {
        requests_per_minute: Some(100),
        tokens_per_minute: None,
    };
    let answer = ledger
        .reserve_shared(
            "ns/tok",
            TokenLimits {
                rate: Some(&rate),
                budgets: &budgets,
            },
            Amount::new(0.1, 1),
            now,
        )
        .await;
    assert!(
        matches!(answer, Err(Refusal::StoreUnavailable { .. })),
        "{answer:?}"
    );
    // Once the garbage is gone, requests pass again.
    redis.cli(&["DEL", "policybind:{ns/tok}:rpm"]);
    ledger
        .reserve_shared("ns/tok", limits, Amount::new(0.1, 1), now)
        .await
        .expect("clean again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_from_the_settings_is_used_and_a_wrong_one_refused() {
    let redis = RedisServer::start();
    redis.cli(&["CONFIG", "SET", "requirepass", "s3cret"]);
    let budgets = day_budget(Some(1.0), None);
    let limits = no_rate(&budgets);
    let mut store = redis.store();
    store.password = Some("s3cret".into());
    let ledger = connect(&store);
    ledger
        .reserve_shared("ns/tok", limits, Amount::new(0.1, 1), Utc::now())
        .await
        .expect("authenticated");
    store.password = Some("wrong".into());
    let wrong = connect(&store);
    let refused = wrong
        .reserve_shared("ns/tok", limits, Amount::new(0.1, 1), Utc::now())
        .await;
    match refused {
        Err(Refusal::StoreUnavailable { reason }) => {
            assert!(!reason.contains("wrong"), "the password leaked: {reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_is_enough_and_nothing_less_passes() {
    let redis = RedisServer::start();
    let acl = [
        "~policybind:*",
        "+@read",
        "+@write",
        "+@scripting",
        "-@dangerous",
    ];
    redis.cli(
        &[
            &["ACL", "SETUSER", "pb", "on", ">pw"][..],
            &acl[..],
            &["+time"],
        ]
        .concat(),
    );
    redis.cli(&[&["ACL", "SETUSER", "notime", "on", ">pw"][..], &acl[..]].concat());
    let budgets = day_budget(Some(1.0), None);
    let rate = RateLimit {
        requests_per_minute: Some(100),
        tokens_per_minute: Some(10_000),
    };
    let limits = TokenLimits {
        rate: Some(&rate),
        budgets: &budgets,
    };
    let store = |user: &str| RedisStoreSettings {
        url: format!("redis://{user}@127.0.0.1:{}/0", redis.port),
        password: Some("pw".into()),
        ca_file: None,
    };
    let timings = Timings {
        lease: Duration::from_secs(2),
        heartbeat: Duration::from_millis(200),
        ..patient()
    };
    let ledger = RedisLedger::connect_with(&store("pb"), timings).unwrap();
    let now = Utc::now();
    let kept = ledger
        .reserve_shared("ns/tok", limits, Amount::new(0.1, 10), now)
        .await
        .expect("reserve under the ACL");
    let freed = ledger
        .reserve_shared("ns/tok", limits, Amount::new(0.1, 10), now)
        .await
        .unwrap();
    // Heartbeats keep the first past its lease.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ledger.settle(kept, Amount::new(0.2, 10), now);
    ledger.release(freed, now);
    assert!((settled_in_redis(&ledger, "ns/tok", &budgets).await - 0.2).abs() < 1e-9);
    assert_eq!(ledger.lost_settlements(), 0);
    let denied = connect(&store("notime"));
    let refused = denied
        .reserve_shared("ns/tok", limits, Amount::new(0.1, 10), now)
        .await;
    assert!(
        matches!(refused, Err(Refusal::StoreUnavailable { .. })),
        "{refused:?}"
    );
}

/// A CA, and a server certificate for `localhost` and 127.0.0.1 signed by it,
/// written as PEM files into `dir` (`<name>-ca.pem`, `<name>-cert.pem`,
/// `<name>-key.pem`).
fn test_ca(dir: &Path, name: &str) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join(format!("{name}-ca.pem")), ca_cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}-cert.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_works_and_an_untrusted_or_plain_connection_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    test_ca(dir.path(), "redis");
    test_ca(dir.path(), "other");
    let port = free_port();
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // Debian's redis-server is built with TLS: only a TLS port, no plain one.
    let _redis = KillOnDrop(
        Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-cert-file", &file("redis-cert.pem")])
            .args(["--tls-key-file", &file("redis-key.pem")])
            .args(["--tls-ca-cert-file", &file("redis-ca.pem")])
            .args(["--tls-auth-clients", "no"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install -y redis-server)"),
    );
    let budgets = day_budget(Some(1.0), None);
    let limits = no_rate(&budgets);
    let store = |url: String, ca: Option<&str>| RedisStoreSettings {
        url,
        password: None,
        ca_file: ca.map(|name| dir.path().join(name)),
    };
    let tls_url = format!("rediss://localhost:{port}/0");
    let trusted = connect(&store(tls_url.clone(), Some("redis-ca.pem")));
    // The server may still be starting: retry for a while.
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        match trusted
            .reserve_shared("ns/tok", limits, Amount::new(0.4, 1), Utc::now())
            .await
        {
            Ok(id) => break id,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "never reached Redis over TLS: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    trusted.settle(id, Amount::new(0.4, 1), Utc::now());
    assert!((settled_in_redis(&trusted, "ns/tok", &budgets).await - 0.4).abs() < 1e-9);
    // The same budget, read over TLS by a second replica.
    let second = connect(&store(tls_url.clone(), Some("redis-ca.pem")));
    assert!(
        (second.usage_shared("ns/tok", &budgets, Utc::now()).await[0].cost_usd - 0.4).abs() < 1e-9
    );
    // A server whose certificate another CA signed is not trusted; nor is a
    // plain connection to the TLS port answered: both fail closed.
    for refused_store in [
        store(tls_url.clone(), Some("other-ca.pem")),
        store(tls_url.clone(), None),
        store(format!("redis://localhost:{port}/0"), None),
    ] {
        let ledger = connect(&refused_store);
        let refused = ledger
            .reserve_shared("ns/tok", limits, Amount::new(0.1, 1), Utc::now())
            .await;
        assert!(
            matches!(refused, Err(Refusal::StoreUnavailable { .. })),
            "{refused_store:?}: {refused:?}"
        );
    }
    // Mistakes in the settings are errors at start.
    let not_pem = dir.path().join("not-pem");
    std::fs::write(&not_pem, "hello").unwrap();
    for (bad, expected) in [
        (
            store(tls_url.clone(), Some("missing.pem")),
            "cannot read the CA file",
        ),
        (
            store(tls_url.clone(), Some("not-pem")),
            "holds no PEM certificate",
        ),
        (
            store(format!("redis://localhost:{port}/0"), Some("redis-ca.pem")),
            "not rediss://",
        ),
    ] {
        let error = RedisLedger::connect_with(&bad, patient())
            .err()
            .unwrap_or_else(|| panic!("{bad:?} was accepted"));
        assert!(error.to_string().contains(expected), "{error}");
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
