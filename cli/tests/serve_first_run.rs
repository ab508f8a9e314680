//! The README's first command, as a new user runs it: `policybind serve --config
//! examples/quickstart` with no upstream and no state directory given. A real
//! process on loopback, plain HTTP over a TCP socket.

mod common;

use common::{Serve, header, repo};

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
