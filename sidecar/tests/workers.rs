//! The main port served by worker threads (`Settings::workers`): every
//! worker decides, audits, settles and forwards like the single-runtime
//! server, and a shutdown lets the requests in progress on every worker finish.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

const POLICY: &str = r#"
apiVersion: policybind.io/v1alpha1
kind: AIPolicy
metadata: {name: allow-support, namespace: default}
spec:
  rules:
    - name: allow
      match: {teams: [support]}
      action: Allow
"#;

async fn start(upstream: &Upstream, workers: usize) -> Harness {
    let base = base_manifests();
    let files = [("base.yaml", base.as_str()), ("policy.yaml", POLICY)];
    Harness::start_with(&upstream.url, &files, |s| s.workers = workers).await
}

#[tokio::test]
async fn concurrent_requests_over_several_workers_are_each_decided_audited_and_forwarded() {
    let upstream = Upstream::start().await;
    let sidecar = start(&upstream, 3).await;
    // Separate connections, so the kernel spreads them over the workers.
    let calls = (0..24).map(|i| {
        let sidecar = &sidecar;
        async move {
            let text = format!("hello {i}");
            let (status, headers, body) =
                sidecar.chat(Some(ALICE), "gpt-4o-mini", &text, &[]).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(header(&headers, "x-policybind-decision"), "Allow");
            assert_eq!(
                body["choices"][0]["message"]["content"],
                format!("You said: {text}")
            );
            header(&headers, "x-policybind-request-id").to_string()
        }
    });
    let mut ids = futures::future::join_all(calls).await;
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 24, "every request has its own id");

    let recorded: Vec<_> = sidecar
        .audit
        .events()
        .into_iter()
        .filter_map(|e| e.request_id)
        .collect();
    for id in &ids {
        assert_eq!(
            recorded.iter().filter(|r| *r == id).count(),
            1,
            "one decision record for {id}"
        );
    }
    assert_eq!(upstream.received().await.len(), 24);
    let metrics = sidecar.metrics().await;
    assert!(
        metrics.contains(r#"policybind_sidecar_usage_settlements_total{source="provider"} 24"#),
        "every answer settled: {metrics}"
    );
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn shutdown_lets_a_request_in_progress_on_a_worker_finish() {
    let upstream = Upstream::start().await;
    upstream.behave(serde_json::json!({"delayMs": 600})).await;
    let sidecar = start(&upstream, 2).await;
    let base = sidecar.base.clone();
    let slow = tokio::spawn(async move {
        let body = serde_json::json!({"model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "slow"}]});
        send(
            http::Method::POST,
            &format!("{base}/v1/chat/completions"),
            Some(ALICE),
            &[],
            Some(body),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = sidecar.base.trim_start_matches("http://").to_string();
    sidecar.stop().await;
    let (status, _, body) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "no worker accepts after shutdown"
    );
    upstream.stop().await;
}
