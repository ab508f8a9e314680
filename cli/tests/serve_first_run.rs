//! The README's first command, as a new user runs it: `policybind serve --config
//! examples/quickstart` with no upstream and no state directory given. A real
//! process on loopback, plain HTTP over a TCP socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A running `policybind serve` and the lines it logged until it listened.
struct Serve {
    child: Child,
    addr: SocketAddr,
    log: Vec<String>,
}

impl Serve {
    fn start(home: &Path, extra: &[&str]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_policybind"))
            .current_dir(repo())
            .args(["serve", "--config", "examples/quickstart"])
            .args(["--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0"])
            // The decision API's default port may be taken by another test's server.
            .args(["--decide-listen", "127.0.0.1:0"])
            .args(extra)
            .env_clear()
            .env("HOME", home)
            .env("POLICYBIND_LOG_FORMAT", "json")
            .stderr(Stdio::piped())
            .spawn()
            .expect("policybind starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut log = vec![];
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            assert!(Instant::now() < deadline, "no listening line: {log:?}");
            let line = lines.next().expect("still running").unwrap();
            log.push(line.clone());
            let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
            if entry["message"] == "policybind enforcement point listening" {
                break entry["addr"].as_str().unwrap().parse().unwrap();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Serve { child, addr, log }
    }

    /// POSTs a chat completion; returns the status line, the headers (lower-case
    /// names) and the body.
    fn chat(
        &self,
        token: &str,
        model: &str,
        text: &str,
    ) -> (String, Vec<(String, String)>, String) {
        let body =
            serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}]})
                .to_string();
        let mut stream = TcpStream::connect(self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let mut head = head.lines();
        let status = head.next().unwrap().to_string();
        let headers = head
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        (status, headers, body.to_string())
    }

    fn stop(mut self) {
        // SIGINT, as Ctrl-C: the audit writer seals its last segment.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("serve did not stop on SIGINT");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn without_an_upstream_serve_answers_from_the_labelled_demo_and_keeps_state_outside_the_tree() {
    let home = tempfile::tempdir().unwrap();
    let serve = Serve::start(home.path(), &[]);
    let first = serve.log.first().unwrap();
    assert!(
        first.contains("built-in DEMO upstream") && first.contains("x-policybind-upstream: demo"),
        "the first log line says it: {first}"
    );
    // Not a terminal (a pipe, as under `kubectl logs`): no colour codes.
    assert!(
        !serve.log.iter().any(|l| l.contains('\u{1b}')),
        "ANSI escapes in a piped log: {first:?}"
    );
    let state = home.path().join(".local/state/policybind");
    assert!(
        serve
            .log
            .iter()
            .any(|l| l.contains(&state.join("audit").display().to_string())),
        "the state directory is printed at start: {:?}",
        serve.log
    );

    let (status, headers, body) =
        serve.chat("pb-demo-alice-0000-DEMO-ONLY", "gpt-4o-mini", "Say hello");
    assert!(status.ends_with("200 OK"), "{status} {body}");
    assert_eq!(header(&headers, "x-policybind-upstream"), Some("demo"));
    assert_eq!(header(&headers, "x-policybind-decision"), Some("Allow"));
    assert!(body.contains("You said: Say hello"), "{body}");

    // A denial never reaches the upstream, and still says which upstream is behind.
    let (status, headers, _) = serve.chat("pb-demo-bob-0000-DEMO-ONLY", "gpt-4o", "Say hello");
    assert!(status.ends_with("403 Forbidden"), "{status}");
    assert_eq!(header(&headers, "x-policybind-upstream"), Some("demo"));
    serve.stop();

    let audit: Vec<_> = std::fs::read_dir(state.join("audit"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(audit.contains(&"signing-key.pem".to_string()), "{audit:?}");
    assert!(
        audit
            .iter()
            .any(|f| f.starts_with("pb-audit-") && f.ends_with(".json")),
        "{audit:?}"
    );
    assert!(
        !repo().join("examples/quickstart/approvals").exists(),
        "nothing is written into the source tree"
    );
}

#[test]
fn with_an_upstream_responses_carry_no_demo_label() {
    let home = tempfile::tempdir().unwrap();
    let state = home.path().join("state");
    // Nothing listens on port 1: the request is allowed and the upstream is unavailable.
    let serve = Serve::start(
        home.path(),
        &[
            "--upstream",
            "http://127.0.0.1:1",
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    assert!(
        !serve.log.iter().any(|l| l.contains("DEMO")),
        "{:?}",
        serve.log
    );
    let (status, headers, _) = serve.chat("pb-demo-alice-0000-DEMO-ONLY", "gpt-4o-mini", "hi");
    assert!(status.ends_with("502 Bad Gateway"), "{status}");
    assert_eq!(header(&headers, "x-policybind-upstream"), None);
    serve.stop();
    assert!(
        state.join("audit/signing-key.pem").is_file(),
        "--state-dir is used"
    );
}
