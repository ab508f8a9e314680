//! The sidecar over real HTTP: a fake OpenAI-compatible upstream runs as its own
//! process on 127.0.0.1, the sidecar listens on an ephemeral port, and every
//! assertion is about what the caller got back or what reached the upstream.

mod common;

use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};

fn files() -> Vec<(&'static str, String)> {
    vec![
        ("base.yaml", base_manifests()),
        ("policy.yaml", POLICY.to_string()),
    ]
}

async fn start(upstream: &Upstream) -> Harness {
    let files = files();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    Harness::start(&upstream.url, &refs).await
}

#[tokio::test]
async fn allowed_request_is_forwarded_with_decision_headers_and_never_the_callers_token() {
    let upstream = Upstream::start().await;
    let sidecar = start(&upstream).await;
    let (status, headers, body) = sidecar
        .chat(Some(ALICE), "gpt-4o-mini", "Say hello", &[])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(header(&headers, "x-policybind-decision"), "Allow");
    assert_eq!(header(&headers, "x-policybind-codes"), "POLICY_ALLOW");
    assert!(!header(&headers, "x-policybind-request-id").is_empty());
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "You said: Say hello"
    );

    let received = upstream.received().await;
    assert_eq!(received.len(), 1);
    let sent_headers = received[0]["headers"].to_string();
    assert!(
        !sent_headers.contains(ALICE),
        "the PolicyBind token leaked upstream"
    );
    assert_eq!(
        received[0]["headers"]["x-request-id"],
        header(&headers, "x-policybind-request-id")
    );
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn each_token_failure_is_denied_with_its_own_code() {
    let upstream = Upstream::start().await;
    let sidecar = start(&upstream).await;
    for (token, code) in [
        (None, "TOKEN_MISSING"),
        (Some("not-a-known-token"), "TOKEN_UNKNOWN"),
        (Some(EXPIRED), "TOKEN_EXPIRED"),
        (Some(REVOKED), "TOKEN_REVOKED"),
    ] {
        let (status, headers, body) = sidecar.chat(token, "gpt-4o-mini", "hi", &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{code}: {body}");
        assert_eq!(body["error"]["code"], code);
        assert_eq!(body["error"]["type"], "authentication_error");
        assert_eq!(header(&headers, "x-policybind-decision"), "Deny");
        assert_eq!(header(&headers, "x-policybind-codes"), code);
    }
    // A valid token outside its scope.
    let (status, _, body) = sidecar.chat(Some(BOB), "gpt-4o", "hi", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "TOKEN_MODEL_NOT_ALLOWED");
    assert!(upstream.received().await.is_empty());
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn policy_denial_is_an_openai_style_error_and_nothing_reaches_the_upstream() {
    let upstream = Upstream::start().await;
    let sidecar = start(&upstream).await;
    let (status, headers, body) = sidecar
        .chat(
            Some(ALICE),
            "gpt-4o-mini",
            "tell me about the forbidden-topic",
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["type"], "permission_error");
    assert_eq!(body["error"]["code"], "POLICY_DENY");
    assert_eq!(body["error"]["message"], "that topic is off limits");
    assert_eq!(header(&headers, "x-policybind-decision"), "Deny");
    assert_eq!(
        header(&headers, "x-policybind-codes"),
        "POLICY_DENY,PII_DETECTED"
    );
    assert!(upstream.received().await.is_empty());
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn redaction_rewrites_the_prompt_the_upstream_receives() {
    let upstream = Upstream::start().await;
    let sidecar = start(&upstream).await;
    let (status, headers, body) = sidecar
        .chat(
            Some(ALICE),
            "gpt-4o-mini",
            "Mail jane.doe@example.com the invoice",
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(header(&headers, "x-policybind-decision"), "Redact");
    assert!(header(&headers, "x-policybind-codes").starts_with("PII_REDACTED"));
    let received = upstream.received().await;
    let content = received[0]["body"]["messages"][0]["content"]
        .as_str()
        .unwrap();
    assert_eq!(content, "Mail [REDACTED:EMAIL] the invoice");
    assert!(!received[0].to_string().contains("jane.doe"));
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn degrade_rewrites_model_and_max_tokens_the_upstream_receives() {
    let upstream = Upstream::start().await;
    let sidecar = start(&upstream).await;
    // 5,000 characters is about 1,250 tokens, above the rule's 1,000.
    let long = "word ".repeat(1000);
    let (status, headers, body) = sidecar
        .post(
            "/v1/chat/completions",
            Some(ALICE),
            json!({"model": "gpt-4o", "max_tokens": 500, "messages": [{"role": "user", "content": long}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(header(&headers, "x-policybind-decision"), "Degrade");
    let received = upstream.received().await;
    assert_eq!(received[0]["body"]["model"], "gpt-4o-mini");
    assert_eq!(received[0]["body"]["max_tokens"], 64);
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn require_approval_holds_the_request_until_a_human_approves_that_reference() {
    let upstream = Upstream::start().await;
    let sidecar = start(&upstream).await;
    let confidential = [("x-policybind-data-classification", "confidential")];
    let (status, headers, body) = sidecar
        .chat(
            Some(ALICE),
            "gpt-4o-mini",
            "quarterly numbers",
            &confidential,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(header(&headers, "x-policybind-decision"), "RequireApproval");
    assert_eq!(body["error"]["code"], "APPROVAL_REQUIRED");
    let reference = body["error"]["approval"]["reference"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(header(&headers, "x-policybind-approval"), reference);
    assert!(upstream.received().await.is_empty());

    // Still pending: repeating with the reference is held again, under the same reference.
    let with_ref = [
        confidential[0],
        ("x-policybind-approval", reference.as_str()),
    ];
    let (status, _, body) = sidecar
        .chat(Some(ALICE), "gpt-4o-mini", "quarterly numbers", &with_ref)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["approval"]["reference"], reference.as_str());

    // A human approves the manifest in the approvals directory.
    let path = sidecar.approvals.join(format!("{reference}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("phase: Pending"));
    assert!(text.contains("kind: ApprovalRequest"));
    let approved = text.replacen(
        "\nspec:\n",
        "\nspec:\n  decision:\n    state: Approved\n    approver: carol\n",
        1,
    );
    std::fs::write(&path, approved).unwrap();

    let (status, headers, body) = sidecar
        .chat(Some(ALICE), "gpt-4o-mini", "quarterly numbers", &with_ref)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(header(&headers, "x-policybind-decision"), "Allow");
    assert!(header(&headers, "x-policybind-codes").starts_with("APPROVAL_GRANTED"));
    assert_eq!(upstream.received().await.len(), 1);

    // The approval is for alice and that model only.
    let (status, _, _) = sidecar
        .chat(Some(ALICE), "gpt-4o", "quarterly numbers", &with_ref)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn streaming_is_passed_through_chunk_by_chunk_and_settled_with_the_final_usage() {
    let upstream = Upstream::start().await;
    let sidecar = start(&upstream).await;
    upstream.behave(json!({"chunkDelayMs": 150})).await;
    let request = common::request(
        Method::POST,
        &format!("{}/v1/chat/completions", sidecar.base),
        Some(TINY_BUDGET),
        &[],
        Some(
            json!({"model": "gpt-4o-mini", "stream": true, "max_tokens": 10,
                    "messages": [{"role": "user", "content": "one two three"}]}),
        ),
    );
    let response = send_raw(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(response.headers(), "x-policybind-decision"), "Allow");
    let mut body = response.into_body();
    let mut frames = vec![];
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            frames.push(String::from_utf8(data.to_vec()).unwrap());
        }
    }
    // A buffering proxy would deliver one frame holding everything.
    assert!(frames.len() > 3, "frames: {frames:?}");
    assert!(!frames[0].contains("[DONE]"));
    let all = frames.concat();
    assert!(all.ends_with("data: [DONE]\n\n"));
    let usage_line = all
        .lines()
        .find(|l| l.contains("\"usage\""))
        .expect("the sidecar asked for a usage chunk");
    let usage: Value = serde_json::from_str(usage_line.strip_prefix("data: ").unwrap()).unwrap();
    let total = usage["usage"]["total_tokens"].as_u64().unwrap();

    // The upstream was asked to report usage, and the budget was settled with it.
    let received = upstream.received().await;
    assert_eq!(received[0]["body"]["stream_options"]["include_usage"], true);
    let metrics = sidecar.metrics().await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("policybind_sidecar_budget_spent_tokens{") && l.contains("default/tiny")
        })
        .expect("budget metric");
    assert!(line.ends_with(&format!(" {total}")), "{line} vs {total}");
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn budget_exhaustion_is_denied_with_budget_exceeded() {
    let upstream = Upstream::start().await;
    let sidecar = start(&upstream).await;
    // Budget 300 tokens a day. Each call is estimated with gpt-4o-mini's own
    // tokenizer (o200k_base) plus 4 for the message and max_tokens 1, and
    // settled at what the upstream reports (400 characters / 4 + 3 words = 103): the
    // third call no longer fits (206 settled + the estimate > 300).
    let prompt = "abcdefghij".repeat(20) + &"a-b.".repeat(50);
    let estimate = policybind_engine::tokens::estimate("gpt-4o-mini", &prompt) + 4 + 1;
    assert!(
        (95..=197).contains(&estimate),
        "the arithmetic below needs 300 - 206 < estimate <= 300 - 103, got {estimate}"
    );
    let mut statuses = vec![];
    for _ in 0..3 {
        let (status, _, body) = sidecar
            .post(
                "/v1/chat/completions",
                Some(TINY_BUDGET),
                json!({"model": "gpt-4o-mini", "max_tokens": 1, "messages": [{"role": "user", "content": prompt}]}),
            )
            .await;
        statuses.push((status, body["error"]["code"].clone()));
    }
    assert_eq!(statuses[0].0, StatusCode::OK);
    assert_eq!(statuses[1].0, StatusCode::OK);
    assert_eq!(statuses[2].0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(statuses[2].1, "BUDGET_EXCEEDED");
    sidecar.stop().await;
    upstream.stop().await;
}

/// The settlement records of the trail: one per answer that reported no usage.
fn settlements(sidecar: &Harness) -> Vec<policybind_engine::audit::AuditEvent> {
    sidecar
        .audit
        .events()
        .into_iter()
        .filter(|e| e.detail.get("stage").map(String::as_str) == Some("settle"))
        .collect()
}

#[tokio::test]
async fn an_answer_without_usage_is_settled_on_what_is_known_and_recorded_as_estimated() {
    let upstream = Upstream::start().await;
    let sidecar = start(&upstream).await;
    let ask = |max_tokens: u64| {
        json!({"model": "gpt-4o-mini", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "Say hello"}]})
    };
    let input = policybind_engine::tokens::estimate("gpt-4o-mini", "Say hello") + 4;

    // JSON without `usage`: the estimate's input, the answer's text counted.
    upstream.behave(json!({"usage": false})).await;
    let (status, _, body) = sidecar
        .post("/v1/chat/completions", Some(TINY_BUDGET), ask(50))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("usage").is_none(), "{body}");
    let counted = policybind_engine::tokens::estimate("gpt-4o-mini", "You said: Say hello\n");
    let records = settlements(&sidecar);
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    let usage = record.usage.expect("the charged usage");
    assert_eq!((usage.input_tokens, usage.output_tokens), (input, counted));
    assert_eq!(record.detail["usage"], "estimated");
    assert_eq!(record.detail["usageBasis"], "counted-text");
    assert_eq!(record.token_id.as_deref(), Some("default/tiny"));
    assert_eq!(record.effect, Some(policybind_crds::Effect::Allow));
    let decision = sidecar
        .audit
        .events()
        .into_iter()
        .find(|e| e.detail.get("stage").map(String::as_str) == Some("policy"))
        .expect("the decision record");
    assert_eq!(record.request_id, decision.request_id, "same request");

    // An answer that is not JSON: the whole estimate (input and the output cap).
    upstream.behave(json!({"rawBody": "plain words"})).await;
    let (status, _, body) = sidecar
        .post("/v1/chat/completions", Some(TINY_BUDGET), ask(40))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "plain words");
    let records = settlements(&sidecar);
    assert_eq!(records.len(), 2);
    let usage = records[1].usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens), (input, 40));
    assert_eq!(records[1].detail["usageBasis"], "estimate");

    // Reported usage is charged as reported and adds no record.
    upstream.behave(json!({})).await;
    let (status, _, body) = sidecar
        .post("/v1/chat/completions", Some(TINY_BUDGET), ask(1))
        .await;
    assert_eq!(status, StatusCode::OK);
    let reported = body["usage"]["prompt_tokens"].as_u64().unwrap()
        + body["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(settlements(&sidecar).len(), 2);

    let metrics = sidecar.metrics().await;
    for (source, count) in [("provider", 1), ("counted-text", 1), ("estimate", 1)] {
        let line =
            format!("policybind_sidecar_usage_settlements_total{{source=\"{source}\"}} {count}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    // The budget was charged exactly what the records say.
    let spent = input + counted + input + 40 + reported;
    let line = format!(
        "policybind_sidecar_budget_spent_tokens{{token=\"default/tiny\",period=\"Day\"}} {spent}"
    );
    assert!(metrics.contains(&line), "{line} in {metrics}");
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn rate_limit_is_denied_with_rate_limited_and_retry_after() {
    let upstream = Upstream::start().await;
    let sidecar = start(&upstream).await;
    for _ in 0..2 {
        let (status, _, _) = sidecar.chat(Some(LIMITED), "gpt-4o-mini", "hi", &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, headers, body) = sidecar.chat(Some(LIMITED), "gpt-4o-mini", "hi", &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(header(&headers, "retry-after"), "30");
    // Other tokens are not limited by it.
    let (status, _, _) = sidecar.chat(Some(ALICE), "gpt-4o-mini", "hi", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        sidecar
            .metrics()
            .await
            .contains("policybind_sidecar_rate_limited_total{token=\"default/limited\"} 1")
    );
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn by_default_metrics_carry_no_token_label() {
    let upstream = Upstream::start().await;
    let files = files();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let sidecar = Harness::start_with(&upstream.url, &refs, |s| {
        s.metrics_token_labels = false;
    })
    .await;
    for token in [ALICE, TINY_BUDGET, LIMITED, LIMITED, LIMITED] {
        sidecar.chat(Some(token), "gpt-4o-mini", "hi", &[]).await;
    }
    let metrics = sidecar.metrics().await;
    assert!(
        metrics.contains("policybind_sidecar_rate_limited_total{token=\"\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("budget_spent"), "{metrics}");
    for token in ["default/alice", "default/tiny", "default/limited"] {
        assert!(!metrics.contains(token), "{token} in {metrics}");
    }
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn reload_applies_a_good_change_and_keeps_the_last_good_set_on_a_bad_one() {
    let upstream = Upstream::start().await;
    let sidecar = start(&upstream).await;
    let first = sidecar.fingerprint().expect("a set is in force");
    let (status, _, _) = sidecar.chat(Some(BOB), "gpt-4o-mini", "hi", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "research is not allowed yet");

    // Good change: allow research too.
    let policy = POLICY.replace("teams: [support]", "teams: [support, research]");
    std::fs::write(sidecar.config_dir().join("policy.yaml"), &policy).unwrap();
    let second = sidecar.wait_for_new_set(&first).await;
    let (status, headers, _) = sidecar.chat(Some(BOB), "gpt-4o-mini", "hi", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "x-policybind-decision"), "Allow");

    // Bad change: an unknown entity. Rejected; the second set stays in force.
    let broken = policy.replace("detected: [EMAIL, PHONE]", "detected: [NOT_AN_ENTITY]");
    std::fs::write(sidecar.config_dir().join("policy.yaml"), broken).unwrap();
    for _ in 0..100 {
        if sidecar
            .metrics()
            .await
            .contains("policybind_sidecar_reloads_total{result=\"rejected\"} 1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        sidecar
            .metrics()
            .await
            .contains("policybind_sidecar_reloads_total{result=\"rejected\"} 1")
    );
    assert_eq!(sidecar.fingerprint().as_deref(), Some(second.as_str()));
    let (status, _, _) = sidecar.chat(Some(BOB), "gpt-4o-mini", "hi", &[]).await;
    assert_eq!(status, StatusCode::OK);
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn without_a_valid_policy_set_every_request_is_denied_and_not_ready() {
    let upstream = Upstream::start().await;
    let broken = POLICY.replace("action: Allow", "action: Allw");
    let base = base_manifests();
    let sidecar = Harness::start(
        &upstream.url,
        &[("base.yaml", &base), ("policy.yaml", &broken)],
    )
    .await;
    let (status, headers, body) = sidecar.chat(Some(ALICE), "gpt-4o-mini", "hi", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "NO_POLICY_SET");
    assert_eq!(header(&headers, "x-policybind-decision"), "Deny");
    let (ready, _) = get_text(&format!("{}/readyz", sidecar.health)).await;
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE);
    let (live, _) = get_text(&format!("{}/healthz", sidecar.health)).await;
    assert_eq!(live, StatusCode::OK);
    assert!(upstream.received().await.is_empty());

    // Fixing the file brings the set in force.
    std::fs::write(sidecar.config_dir().join("policy.yaml"), POLICY).unwrap();
    sidecar.wait_for_new_set("").await;
    let (status, _, _) = sidecar.chat(Some(ALICE), "gpt-4o-mini", "hi", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let (ready, text) = get_text(&format!("{}/readyz", sidecar.health)).await;
    assert_eq!(ready, StatusCode::OK, "{text}");
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn every_decision_is_audited_with_the_bundle_fingerprint_and_no_prompt() {
    let upstream = Upstream::start().await;
    let sidecar = start(&upstream).await;
    let fingerprint = sidecar.fingerprint().unwrap();
    sidecar
        .chat(Some(ALICE), "gpt-4o-mini", "Mail jane.doe@example.com", &[])
        .await;
    sidecar.chat(Some(BOB), "gpt-4o", "hi", &[]).await;
    let events = sidecar.audit.events();
    assert_eq!(events.len(), 2);
    for event in &events {
        assert_eq!(event.fingerprint.as_deref(), Some(fingerprint.as_str()));
        assert!(event.request_id.is_some());
        assert!(!format!("{event:?}").contains("jane.doe"));
    }
    assert_eq!(events[0].token_id.as_deref(), Some("default/alice"));
    assert_eq!(events[0].codes[0], "PII_REDACTED");
    assert!(events[0].prompt_hash.is_some());
    assert_eq!(events[1].codes, vec!["TOKEN_MODEL_NOT_ALLOWED".to_string()]);
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn a_full_audit_queue_denies_with_audit_unavailable() {
    let upstream = Upstream::start().await;
    let sidecar = start(&upstream).await;
    sidecar.audit.set_refusing(true);
    let (status, headers, body) = sidecar.chat(Some(ALICE), "gpt-4o-mini", "hi", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "AUDIT_UNAVAILABLE");
    assert_eq!(header(&headers, "x-policybind-decision"), "Deny");
    assert!(upstream.received().await.is_empty());
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn a_dead_upstream_gives_502_and_a_slow_one_504_and_neither_consumes_budget() {
    let upstream = Upstream::start().await;
    let files = files();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let sidecar = Harness::start_with(&upstream.url, &refs, |s| {
        s.limits.upstream_timeout = Duration::from_millis(300);
    })
    .await;
    upstream.behave(json!({"delayMs": 2000})).await;
    let (status, headers, body) = sidecar
        .chat(Some(TINY_BUDGET), "gpt-4o-mini", "hi", &[])
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"]["code"], "upstream_timeout");
    assert_eq!(header(&headers, "x-policybind-decision"), "Allow");

    upstream.behave(json!({"failStatus": 500})).await;
    let (status, _, _) = sidecar
        .chat(Some(TINY_BUDGET), "gpt-4o-mini", "hi", &[])
        .await;
    assert_eq!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "the upstream's own error passes through"
    );

    upstream.stop().await;
    let (status, _, body) = sidecar
        .chat(Some(TINY_BUDGET), "gpt-4o-mini", "hi", &[])
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["error"]["code"], "upstream_unavailable");

    // Nothing was consumed: the day's budget is untouched.
    let metrics = sidecar.metrics().await;
    let spent = metrics.lines().find(|l| {
        l.starts_with("policybind_sidecar_budget_spent_tokens{") && l.contains("default/tiny")
    });
    assert!(spent.is_none_or(|l| l.ends_with(" 0")), "{spent:?}");
    sidecar.stop().await;
}

#[tokio::test]
async fn model_list_is_filtered_to_what_the_token_may_call() {
    let upstream = Upstream::start().await;
    let sidecar = start(&upstream).await;
    let url = format!("{}/v1/models", sidecar.base);
    let ids = |body: &Value| -> Vec<String> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, _, body) = send(Method::GET, &url, Some(ALICE), &[], None).await;
    assert_eq!(status, StatusCode::OK);
    // Answered from the registry, sorted, never forwarded.
    assert_eq!(ids(&body), vec!["gpt-4o", "gpt-4o-mini"]);
    assert_eq!(body["data"][0]["owned_by"], "self-hosted");
    let (_, _, body) = send(Method::GET, &url, Some(BOB), &[], None).await;
    assert_eq!(ids(&body), vec!["gpt-4o-mini"]);
    let (status, _, body) = send(Method::GET, &url, Some(REVOKED), &[], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "TOKEN_REVOKED");
    // The Anthropic SDK's shape when it asks.
    let (_, _, body) = send(
        Method::GET,
        &url,
        Some(BOB),
        &[("anthropic-version", "2023-06-01")],
        None,
    )
    .await;
    assert_eq!(body["data"][0]["type"], "model");
    assert_eq!(body["has_more"], false);
    assert!(
        upstream.received().await.is_empty(),
        "the list is never forwarded"
    );
    // Every listing is audited; when the trail refuses, so is the listing.
    let listed = sidecar
        .audit
        .events()
        .iter()
        .filter(|e| e.detail.get("endpoint").map(String::as_str) == Some("models"))
        .count();
    assert_eq!(listed, 4);
    sidecar.audit.set_refusing(true);
    let (status, _, body) = send(Method::GET, &url, Some(ALICE), &[], None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "AUDIT_UNAVAILABLE");
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn other_paths_are_refused_and_bodies_are_bounded() {
    let upstream = Upstream::start().await;
    let files = files();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let sidecar =
        Harness::start_with(&upstream.url, &refs, |s| s.limits.max_body_bytes = 10_000).await;
    let (status, _, body) = sidecar
        .post("/v1/fine_tuning/jobs", Some(ALICE), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "PATH_NOT_ALLOWED");
    let big = "x".repeat(20_000);
    let (status, _, body) = sidecar.chat(Some(ALICE), "gpt-4o-mini", &big, &[]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "REQUEST_INVALID");
    let (status, _, body) = sidecar
        .chat(
            Some(ALICE),
            "gpt-4o-mini",
            "hi",
            &[("x-policybind-data-classification", "Secret")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "REQUEST_INVALID");
    assert!(upstream.received().await.is_empty());
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn decide_api_has_its_own_port_needs_a_token_and_takes_no_fact_only_policybind_knows() {
    let upstream = Upstream::start().await;
    let sidecar = start(&upstream).await;
    let (status, headers, body) = sidecar
        .decide_post(
            "/v1/decide",
            Some(ALICE),
            json!({"model": "gpt-4o-mini", "prompt": "call me at jane@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["effect"], "Redact");
    assert_eq!(body["codes"][0], "PII_REDACTED");
    assert_eq!(body["facts"]["token"], "default/alice");
    assert_eq!(body["facts"]["subject"], "alice");
    assert_eq!(body["facts"]["namespace"], "default");
    assert_eq!(
        body["obligations"]["redact"]["replacement"],
        "[REDACTED:{entity}]"
    );
    assert_eq!(body["fingerprint"], sidecar.fingerprint().unwrap());
    assert_eq!(header(&headers, "x-policybind-decision"), "Redact");

    // No token, no decision: nobody can decide (and audit) in another's name.
    let (status, _, body) = sidecar
        .decide_post("/v1/decide", None, json!({"model": "gpt-4o"}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "TOKEN_MISSING");
    for (field, value) in [
        ("subject", json!("admin")),
        ("team", json!("platform")),
        ("namespace", json!("kube-system")),
        ("token", json!("default/bob")),
        ("time", json!("2020-01-01T00:00:00Z")),
        ("usage", json!([])),
        ("approved", json!(true)),
    ] {
        let mut body = json!({"model": "gpt-4o-mini"});
        body[field] = value;
        let (status, _, answer) = sidecar.decide_post("/v1/decide", Some(BOB), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(field));
    }
    let (_, _, body) = sidecar
        .decide_post("/v1/decide", Some(BOB), json!({"model": "gpt-4o"}))
        .await;
    assert_eq!(body["effect"], "Deny");
    assert_eq!(body["codes"][0], "TOKEN_MODEL_NOT_ALLOWED");
    // The main port does not serve it.
    let (status, _, body) = sidecar
        .post("/v1/decide", Some(ALICE), json!({"model": "gpt-4o-mini"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "PATH_NOT_ALLOWED");
    assert!(
        upstream.received().await.is_empty(),
        "the decision API never forwards"
    );
    let recorded: Vec<_> = sidecar
        .audit
        .events()
        .into_iter()
        .filter(|e| e.detail.get("endpoint").map(String::as_str) == Some("decide"))
        .collect();
    assert!(recorded.iter().all(|e| e.token_id.is_some()));
    assert_eq!(
        recorded.len(),
        2 + 7,
        "two decisions and seven refused bodies"
    );
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn policygate_clients_get_policygates_contract() {
    let upstream = Upstream::start().await;
    let sidecar = start(&upstream).await;
    let base = sidecar.decide.clone().unwrap();
    let (status, _, body) = send(Method::GET, &format!("{base}/health"), None, &[], None).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"status": "healthy"}))
    );
    let (_, _, version) = send(Method::GET, &format!("{base}/version"), None, &[], None).await;
    assert_eq!(version["policy_version"], sidecar.fingerprint().unwrap());

    let request = |model: &str, sensitivity: &str| {
        json!({"request_id": "corr-1", "action": "infer:run", "env": {"name": "prod"},
            "resource": {"type": "model_endpoint", "id": model, "sensitivity": sensitivity},
            "subject": {"type": "user", "id": "someone-else"}, "signals": {"caller_trust": "high"}})
    };
    let (status, _, body) = sidecar
        .decide_post("/evaluate", Some(ALICE), request("gpt-4o-mini", "internal"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["correlation_id"], "corr-1");
    assert_eq!(body["decision"], "ALLOW");
    assert_eq!(body["rationale_codes"], json!(["POLICY_ALLOW"]));
    assert_eq!(body["matched_rule_id"], "default/test-policy/allow-support");
    let fingerprint = sidecar.fingerprint().unwrap();
    assert_eq!(
        body["policy"]["policy_sha256"],
        fingerprint.trim_start_matches("sha256:")
    );
    assert!(body.get("obligations").is_none());

    // Restricted data is above alice's token (Confidential): blocked, with the code.
    let (_, _, body) = sidecar
        .decide_post(
            "/evaluate",
            Some(ALICE),
            request("gpt-4o-mini", "restricted"),
        )
        .await;
    assert_eq!(body["decision"], "BLOCK");
    assert_eq!(body["rationale_codes"][0], "DATA_CLASSIFICATION_EXCEEDED");
    let (_, _, body) = sidecar
        .decide_post("/evaluate", Some(BOB), request("gpt-4o", "public"))
        .await;
    assert_eq!(body["decision"], "BLOCK");
    assert_eq!(body["rationale_codes"][0], "TOKEN_MODEL_NOT_ALLOWED");
    let mut tool = request("gpt-4o-mini", "public");
    tool["action"] = json!("tool:invoke");
    let (_, _, body) = sidecar.decide_post("/evaluate", Some(ALICE), tool).await;
    assert_eq!(body["decision"], "BLOCK");
    assert_eq!(body["rationale_codes"], json!(["REQUEST_INVALID"]));
    let (status, _, body) = sidecar
        .decide_post("/evaluate", Some(ALICE), json!({"action": "infer:run"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["detail"].is_array());
    let (status, _, _) = sidecar
        .decide_post("/evaluate", None, request("gpt-4o-mini", "public"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn metrics_count_decisions_and_show_the_bundle_in_force() {
    let upstream = Upstream::start().await;
    let sidecar = start(&upstream).await;
    sidecar.chat(Some(ALICE), "gpt-4o-mini", "hi", &[]).await;
    sidecar.chat(None, "gpt-4o-mini", "hi", &[]).await;
    let metrics = sidecar.metrics().await;
    assert!(metrics.contains(
        "policybind_sidecar_decisions_total{effect=\"Allow\",code=\"POLICY_ALLOW\",policy=\"default/test-policy\"} 1"
    ), "{metrics}");
    assert!(metrics.contains(
        "policybind_sidecar_decisions_total{effect=\"Deny\",code=\"TOKEN_MISSING\",policy=\"\"} 1"
    ));
    let fingerprint = sidecar.fingerprint().unwrap();
    assert!(metrics.contains(&format!(
        "policybind_sidecar_bundle_info{{fingerprint=\"{fingerprint}\"}} 1"
    )));
    assert!(metrics.contains("policybind_sidecar_decide_duration_seconds_count 1"));
    // One forwarded request: the sidecar measured what it added to it.
    assert!(metrics.contains("policybind_sidecar_overhead_seconds_count 1"));
    assert!(metrics.contains("policybind_sidecar_upstream_duration_seconds_count{endpoint=\"chat_completions\",outcome=\"ok\"} 1"));
    assert!(metrics.contains("policybind_sidecar_bundle_age_seconds"));
    sidecar.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn concurrent_requests_never_overspend_a_budget() {
    let upstream = Upstream::start().await;
    let sidecar = start(&upstream).await;
    upstream.behave(json!({"delayMs": 500})).await;
    // 40 concurrent calls against a 300-token day budget, each reserving 106
    // (2 + 4 input, 100 output).
    let calls = (0..40).map(|_| sidecar.chat(Some(TINY_BUDGET), "gpt-4o-mini", "hi there", &[]));
    let results = futures::future::join_all(calls).await;
    let ok = results
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::OK)
        .count();
    let over = results
        .iter()
        .filter(|(_, _, b)| b["error"]["code"] == "BUDGET_EXCEEDED")
        .count();
    assert_eq!(ok + over, 40);
    // Only as many as the reservations fit are let through at once: 2 x 106 <= 300 < 3 x 106.
    assert_eq!(ok, 2, "{ok} forwarded");
    assert_eq!(upstream.received().await.len(), 2);
    sidecar.stop().await;
    upstream.stop().await;
}
