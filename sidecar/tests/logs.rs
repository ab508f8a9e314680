//! The one log line of a request names its outcome: a refused request says
//! which step refused it and with which code, next to the engine's decision.
//! A refusal before anyone was identified logs nothing at INFO (it is counted
//! and summarised), so an unauthenticated flood cannot flood the log.
//! (Its own test binary: it installs the process-wide log subscriber.)

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use http::StatusCode;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// The `request done` line of a request id.
    fn line_of(&self, request_id: &str) -> String {
        self.find(request_id)
            .unwrap_or_else(|| panic!("no log line for {request_id}"))
    }

    fn find(&self, request_id: &str) -> Option<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .find(|l| l.contains("request done") && l.contains(request_id))
            .map(str::to_string)
    }
}

#[tokio::test]
async fn a_refused_requests_log_line_names_the_refusal_stage_and_the_decision() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_env_filter("info")
        .init();
    let upstream = Upstream::start().await;
    let files = [
        ("base.yaml", base_manifests()),
        ("policy.yaml", POLICY.to_string()),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let sidecar = Harness::start(&upstream.url, &refs).await;

    for _ in 0..2 {
        let (status, _, _) = sidecar.chat(Some(LIMITED), "gpt-4o-mini", "hi", &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, headers, _) = sidecar.chat(Some(LIMITED), "gpt-4o-mini", "hi", &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let line = captured.line_of(header(&headers, "x-policybind-request-id"));
    for part in [
        r#"effect="Deny""#,
        r#"code="RATE_LIMITED""#,
        r#"stage="rate""#,
        r#"decided="Allow""#,
        "status=429",
    ] {
        assert!(line.contains(part), "{part} missing from: {line}");
    }

    sidecar.audit.set_refusing(true);
    let (status, headers, _) = sidecar.chat(Some(ALICE), "gpt-4o-mini", "hi", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let line = captured.line_of(header(&headers, "x-policybind-request-id"));
    for part in [
        r#"effect="Deny""#,
        r#"code="AUDIT_UNAVAILABLE""#,
        r#"stage="audit""#,
        r#"decided="Allow""#,
        "status=503",
    ] {
        assert!(line.contains(part), "{part} missing from: {line}");
    }
    assert!(!line.contains("POLICY_ALLOW"), "{line}");

    let (status, headers, _) = sidecar.chat(None, "gpt-4o-mini", "hi", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let request_id = header(&headers, "x-policybind-request-id");
    assert_eq!(captured.find(request_id), None, "an INFO line for a 401");
    let (status, headers, _) = sidecar
        .chat(Some("pb-not-a-token"), "gpt-4o-mini", "hi", &[])
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let request_id = header(&headers, "x-policybind-request-id");
    assert_eq!(captured.find(request_id), None, "an INFO line for a 401");
    sidecar.stop().await;
    upstream.stop().await;
}
