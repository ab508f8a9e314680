//! Two `policybind serve` processes sharing budgets through one real
//! `redis-server` (`--budget-store redis://...`; Debian's package, which
//! `.ci/run` installs): what one spends, the other refuses; the password
//! never shows in the logs; Redis gone is `BUDGET_STORE_UNAVAILABLE`.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Serve;

const ALICE: &str = "pb-demo-alice-0000-DEMO-ONLY";
const PASSWORD: &str = "s3cret-for-redis";

struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(dir: &Path) -> (RedisServer, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--requirepass", PASSWORD])
        .current_dir(dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run redis-server ({e}): install it with `apt-get install -y redis-server` (.ci/run does)"
            )
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (RedisServer(child), port)
}

/// The quick start with alice's budget made tiny: 150 tokens a day.
fn tiny_budget_config(dir: &Path) -> PathBuf {
    common::quickstart_copy(dir, "", |tokens| {
        let tiny = tokens.replace("maxCostUsd: 5", "maxTokens: 150");
        assert_ne!(tiny, tokens, "the quick start's budget line changed");
        tiny
    })
}

#[test]
fn two_serve_processes_share_one_budget_through_redis() {
    let dir = tempfile::tempdir().unwrap();
    let (redis, port) = start_redis(dir.path());
    let config = tiny_budget_config(dir.path());
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}/0");
    let args = [
        "--default-output-tokens",
        "1",
        "--budget-store",
        url.as_str(),
    ];
    let (home_a, home_b) = (dir.path().join("a"), dir.path().join("b"));
    let a = Serve::start_with(&home_a, &config, &args);
    let b = Serve::start_with(&home_b, &config, &args);
    for log in [&a.log, &b.log] {
        assert!(!log.iter().any(|l| l.contains(PASSWORD)), "{log:?}");
        assert!(
            log.iter().any(|l| l.contains("shared through Redis")
                && l.contains(&format!("redis://***@127.0.0.1:{port}/0"))),
            "{log:?}"
        );
    }
    // About 180 tokens settled on A (the demo upstream echoes the prompt).
    let prompt = "word ".repeat(80);
    // A busy machine may miss the 200 ms budget of the very first call
    // (connection still being made): that is refused, and tried again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, _, body) = a.chat(ALICE, "gpt-4o-mini", &prompt);
        if !body.contains("BUDGET_STORE_UNAVAILABLE") || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.ends_with("200 OK"), "{status} {body}");
    // The settlement reaches Redis in the background.
    std::thread::sleep(Duration::from_millis(500));
    let (status, _, body) = b.chat(ALICE, "gpt-4o-mini", &prompt);
    assert!(status.ends_with("429 Too Many Requests"), "{status} {body}");
    assert!(body.contains("BUDGET_EXCEEDED"), "{body}");

    drop(redis);
    let (status, headers, body) = b.chat(ALICE, "gpt-4o-mini", "hi");
    assert!(
        status.ends_with("503 Service Unavailable"),
        "{status} {body}"
    );
    assert!(body.contains("BUDGET_STORE_UNAVAILABLE"), "{body}");
    assert_eq!(common::header(&headers, "retry-after"), Some("1"));
    assert!(!body.contains(PASSWORD), "{body}");
    a.stop();
    b.stop();
}
