//! The enforcement point as a gateway to several providers: HTTPS upstreams
//! signed by a test CA, per-model routing, provider keys from mounted Secret
//! files, every model API with streaming, usage settled from each provider's
//! fields (compressed or not), the output policy, extra paths, and refusals
//! that name themselves. The upstreams are real processes on loopback.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};

const OPENAI_KEY: &str = "sk-openai-test-1";
const ANTHROPIC_KEY: &str = "sk-ant-test-1";

/// Models on three routes: `gpt-4o` (openai, HTTPS, key), `claude` (anthropic,
/// HTTPS, key), `llama` (self-hosted, the default upstream); and three that
/// cannot be reached: a key that is not mounted, bedrock, no endpoint at all
/// is covered by `llama` when the gateway has no default upstream.
fn manifests(tls_url: &str) -> String {
    let model = |name: &str, provider: &str, extra: &str| {
        format!(
            "---\napiVersion: policybind.io/v1alpha1\nkind: ModelDeployment\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  provider: {provider}\n  model: {name}\n  owner: platform\n  team: platform\n  maxDataClassification: Confidential\n  pricing: {{inputPer1kTokensUsd: 0.001, outputPer1kTokensUsd: 0.002}}\n{extra}"
        )
    };
    let mut out = String::new();
    out += &model(
        "gpt-4o",
        "openai",
        &format!("  endpoint: {tls_url}/v1\n  credentials: {{secretRef: {{name: openai-key}}}}\n"),
    );
    out += &model(
        "claude",
        "anthropic",
        &format!(
            "  endpoint: {tls_url}\n  credentials: {{secretRef: {{name: anthropic-key, key: token}}}}\n"
        ),
    );
    out += &model("llama", "self-hosted", "");
    out += &model(
        "unkeyed",
        "openai",
        &format!("  endpoint: {tls_url}/v1\n  credentials: {{secretRef: {{name: not-mounted}}}}\n"),
    );
    out += &model("titan", "bedrock", "");
    out += r#"---
apiVersion: policybind.io/v1alpha1
kind: AccessToken
metadata: {name: alice, namespace: default}
spec:
  subject: {kind: User, name: alice}
  team: support
  allowedModels: ["*"]
  maxDataClassification: Confidential
  budgets: [{period: Day, maxTokens: 1000000, timeZone: UTC}]
---
apiVersion: v1
kind: Secret
metadata: {name: alice-token, namespace: default}
stringData: {token: test-alice-value}
---
apiVersion: policybind.io/v1alpha1
kind: AccessToken
metadata: {name: limited, namespace: default}
spec:
  subject: {kind: User, name: limited}
  team: support
  allowedModels: ["*"]
  rateLimit: {requestsPerMinute: 2}
---
apiVersion: v1
kind: Secret
metadata: {name: limited-token, namespace: default}
stringData: {token: test-limited-value}
---
apiVersion: policybind.io/v1alpha1
kind: AIPolicy
metadata: {name: gateway, namespace: default}
spec:
  rules:
    - name: no-secrets
      conditions: {detected: [SECRET]}
      action: Deny
      code: SECRET_DETECTED
      message: secrets must not pass
    - name: redact-personal-data
      conditions: {detected: [EMAIL, PHONE]}
      action: Redact
    - name: allow-support
      match: {teams: [support]}
      action: Allow
"#;
    out
}

struct Gateway {
    tls: Upstream,
    plain: Upstream,
    sidecar: Harness,
    credentials: tempfile::TempDir,
}

fn write_key(dir: &Path, secret: &str, key: &str, value: &str) {
    std::fs::create_dir_all(dir.join(secret)).unwrap();
    std::fs::write(dir.join(secret).join(key), value).unwrap();
}

async fn gateway() -> Gateway {
    let tls = Upstream::start_tls().await;
    let plain = Upstream::start().await;
    let credentials = tempfile::tempdir().unwrap();
    write_key(credentials.path(), "openai-key", "api-key", OPENAI_KEY);
    write_key(
        credentials.path(),
        "anthropic-key",
        "token",
        &format!("{ANTHROPIC_KEY}\n"),
    );
    let text = manifests(&tls.url);
    let ca = tls.ca_file();
    let dir = credentials.path().to_path_buf();
    let sidecar = Harness::start_with(&plain.url, &[("all.yaml", &text)], move |s| {
        s.upstream_ca_file = Some(ca);
        s.credentials.dir = Some(dir);
        s.credentials.refresh = Duration::from_millis(50);
        s.extra_paths = vec!["/tokenize".into()];
        s.rejection_summary_interval = Duration::from_millis(200);
    })
    .await;
    Gateway {
        tls,
        plain,
        sidecar,
        credentials,
    }
}

impl Gateway {
    async fn stop(self) {
        self.sidecar.stop().await;
        self.tls.stop().await;
        self.plain.stop().await;
    }

    async fn call(&self, path: &str, body: Value) -> (StatusCode, http::HeaderMap, Value) {
        self.call_with(path, body, &[]).await
    }

    async fn call_with(
        &self,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> (StatusCode, http::HeaderMap, Value) {
        let url = format!("{}{path}", self.sidecar.base);
        send(Method::POST, &url, Some(ALICE), headers, Some(body)).await
    }

    /// The raw text of a streamed answer.
    async fn stream(&self, path: &str, body: Value) -> (StatusCode, String) {
        let url = format!("{}{path}", self.sidecar.base);
        let response = send_raw(request(Method::POST, &url, Some(ALICE), &[], Some(body))).await;
        let status = response.status();
        assert!(response.headers().get("content-encoding").is_none());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    /// Tokens settled against alice's day budget, once nothing is in flight.
    async fn spent_tokens(&self) -> u64 {
        let mut last = String::new();
        for _ in 0..50 {
            let metrics = self.sidecar.metrics().await;
            if metrics.contains("policybind_sidecar_in_flight_requests 0") {
                last = metrics;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        last.lines()
            .find(|l| {
                l.starts_with("policybind_sidecar_budget_spent_tokens{")
                    && l.contains("default/alice")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

fn messages(model: &str, text: &str) -> Value {
    json!({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn each_model_goes_to_its_provider_over_https_with_the_key_in_the_providers_header() {
    let g = gateway().await;
    let (status, _, body) = g
        .call("/v1/chat/completions", chat("gpt-4o", "Say hi"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "You said: Say hi");
    let (status, _, body) = g.call("/v1/messages", messages("claude", "Say hi")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["content"][0]["text"], "You said: Say hi");
    let (status, _, _) = g
        .call("/v1/chat/completions", chat("llama", "Say hi"))
        .await;
    assert_eq!(status, StatusCode::OK);

    let tls = g.tls.received().await;
    assert_eq!(tls.len(), 2);
    let (openai, anthropic) = (&tls[0], &tls[1]);
    assert_eq!(openai["path"], "/v1/chat/completions");
    assert_eq!(openai["version"], "HTTP/2.0", "HTTP/2 negotiated by ALPN");
    assert_eq!(
        openai["headers"]["authorization"],
        format!("Bearer {OPENAI_KEY}")
    );
    assert!(openai["headers"].get("x-api-key").is_none());
    assert_eq!(anthropic["path"], "/v1/messages");
    assert_eq!(anthropic["headers"]["x-api-key"], ANTHROPIC_KEY);
    assert_eq!(anthropic["headers"]["anthropic-version"], "2023-06-01");
    assert!(anthropic["headers"].get("authorization").is_none());
    let plain = g.plain.received().await;
    assert_eq!(plain.len(), 1);
    assert_eq!(plain[0]["body"]["model"], "llama");
    assert!(
        plain[0]["headers"].get("authorization").is_none(),
        "no key configured for the default upstream"
    );
    for received in tls.iter().chain(&plain) {
        assert!(
            !received.to_string().contains(ALICE),
            "the caller's token went upstream"
        );
    }
    for event in g.sidecar.audit.events() {
        let text = format!("{event:?}");
        assert!(
            !text.contains(OPENAI_KEY) && !text.contains(ANTHROPIC_KEY),
            "a key reached the audit trail"
        );
    }
    g.stop().await;
}

/// `policybind serve` labels its demo upstream's answers; an answer from a
/// provider's endpoint must never carry the demo label.
#[tokio::test]
async fn a_labelled_default_upstream_never_labels_a_providers_answer() {
    let tls = Upstream::start_tls().await;
    let plain = Upstream::start().await;
    let credentials = tempfile::tempdir().unwrap();
    write_key(credentials.path(), "openai-key", "api-key", OPENAI_KEY);
    let (ca, dir) = (tls.ca_file(), credentials.path().to_path_buf());
    let text = manifests(&tls.url);
    let sidecar = Harness::start_with(&plain.url, &[("all.yaml", &text)], move |s| {
        s.upstream_ca_file = Some(ca);
        s.credentials.dir = Some(dir);
        s.upstream_label = Some("demo".into());
    })
    .await;
    let url = format!("{}/v1/chat/completions", sidecar.base);
    let call = |model: &str| {
        send(
            Method::POST,
            &url,
            Some(ALICE),
            &[],
            Some(chat(model, "hi")),
        )
    };
    let (status, headers, _) = call("gpt-4o").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "x-policybind-upstream"), "openai");
    let (status, headers, _) = call("llama").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "x-policybind-upstream"), "demo");
    // A refusal reaches no upstream and still says which one is behind.
    let (status, headers, _) = call("titan").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&headers, "x-policybind-upstream"), "demo");
    sidecar.stop().await;
    tls.stop().await;
    plain.stop().await;
}

#[tokio::test]
async fn a_rotated_key_file_is_used_without_a_restart() {
    let g = gateway().await;
    g.call("/v1/chat/completions", chat("gpt-4o", "one")).await;
    write_key(
        g.credentials.path(),
        "openai-key",
        "api-key",
        "sk-openai-rotated",
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    let (status, _, _) = g.call("/v1/chat/completions", chat("gpt-4o", "two")).await;
    assert_eq!(status, StatusCode::OK);
    let received = g.tls.received().await;
    assert_eq!(
        received[0]["headers"]["authorization"],
        format!("Bearer {OPENAI_KEY}")
    );
    assert_eq!(
        received[1]["headers"]["authorization"],
        "Bearer sk-openai-rotated"
    );
    g.stop().await;
}

#[tokio::test]
async fn models_that_cannot_be_reached_are_refused_with_their_own_stage_and_audited() {
    let g = gateway().await;
    for model in ["unkeyed", "titan"] {
        let (status, headers, body) = g.call("/v1/chat/completions", chat(model, "hi")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{model}: {body}");
        assert_eq!(body["error"]["code"], "ROUTE_UNAVAILABLE");
        assert_eq!(header(&headers, "x-policybind-decision"), "Deny");
        assert_eq!(
            header(&headers, "x-policybind-codes"),
            "ROUTE_UNAVAILABLE,POLICY_ALLOW"
        );
    }
    // Anthropic's model through OpenAI's API: the caller's mistake.
    let (status, _, body) = g.call("/v1/chat/completions", chat("claude", "hi")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(g.tls.received().await.is_empty());
    let events = g.sidecar.audit.events();
    assert_eq!(events.len(), 3);
    for event in &events {
        assert_eq!(event.detail["stage"], "route");
        assert_eq!(event.detail["decidedEffect"], "Allow");
        assert_eq!(event.effect, Some(policybind_crds::Effect::Deny));
    }
    assert!(events[0].codes.contains(&"ROUTE_UNAVAILABLE".to_string()));
    g.stop().await;
}

#[tokio::test]
async fn anthropic_and_responses_usage_is_settled_streamed_or_not() {
    let g = gateway().await;
    // "Say hi": 2 prompt tokens; "You said: Say hi": 4 words. 6 tokens a call.
    let (status, _, body) = g
        .call(
            "/v1/responses",
            json!({"model": "gpt-4o", "input": "Say hi"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"][0]["content"][0]["text"], "You said: Say hi");
    assert_eq!(g.spent_tokens().await, 6);
    let (status, text) = g
        .stream(
            "/v1/responses",
            json!({"model": "gpt-4o", "input": "Say hi", "stream": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("event: response.completed"), "{text}");
    assert_eq!(g.spent_tokens().await, 12);
    let mut streamed = messages("claude", "Say hi");
    streamed["stream"] = json!(true);
    let (status, text) = g.stream("/v1/messages", streamed).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("event: message_stop"), "{text}");
    assert_eq!(g.spent_tokens().await, 18);
    g.stop().await;
}

#[tokio::test]
async fn compressed_answers_are_decoded_passed_on_and_settled() {
    let g = gateway().await;
    g.tls.behave(json!({"gzip": true})).await;
    let (status, headers, body) = g
        .call("/v1/chat/completions", chat("gpt-4o", "Say hi"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(body["choices"][0]["message"]["content"], "You said: Say hi");
    assert_eq!(g.spent_tokens().await, 6);
    let mut streamed = messages("claude", "Say hi");
    streamed["stream"] = json!(true);
    let (_, text) = g.stream("/v1/messages", streamed).await;
    assert_eq!(anthropic_text(&text), "You said: Say hi", "{text}");
    assert_eq!(g.spent_tokens().await, 12);
    g.stop().await;
}

/// The text a client assembles from a chat stream.
fn chat_text(wire: &str) -> String {
    wire.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect()
}

/// The text a client assembles from an Anthropic stream.
fn anthropic_text(wire: &str) -> String {
    wire.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v["type"] == "content_block_delta")
        .filter_map(|v| {
            v.pointer("/delta/text")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test]
async fn personal_data_in_answers_is_redacted_whole_and_streamed() {
    let g = gateway().await;
    g.tls
        .behave(json!({"reply": "Write to jane.doe@example.com or call +1 415 555 2671 today."}))
        .await;
    let (status, _, body) = g.call("/v1/chat/completions", chat("gpt-4o", "who?")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Write to [REDACTED:EMAIL] or call [REDACTED:PHONE] today."
    );
    let mut streamed = chat("gpt-4o", "who?");
    streamed["stream"] = json!(true);
    let (_, wire) = g.stream("/v1/chat/completions", streamed).await;
    assert!(
        !wire.contains("jane.doe") && !wire.contains("2671"),
        "{wire}"
    );
    assert_eq!(
        chat_text(&wire),
        "Write to [REDACTED:EMAIL] or call [REDACTED:PHONE] today."
    );
    let mut anthropic = messages("claude", "who?");
    anthropic["stream"] = json!(true);
    let (_, wire) = g.stream("/v1/messages", anthropic).await;
    assert!(!wire.contains("jane.doe"), "{wire}");
    assert_eq!(
        anthropic_text(&wire),
        "Write to [REDACTED:EMAIL] or call [REDACTED:PHONE] today."
    );
    let outputs: Vec<_> = g
        .sidecar
        .audit
        .events()
        .into_iter()
        .filter(|e| e.detail.get("stage").map(String::as_str) == Some("output"))
        .collect();
    assert_eq!(outputs.len(), 3);
    assert_eq!(outputs[0].detail["redactedEntities"], "EMAIL,PHONE");
    assert_eq!(outputs[0].codes, vec!["PII_REDACTED".to_string()]);
    g.stop().await;
}

#[tokio::test]
async fn a_secret_in_an_answer_blocks_it_whole_and_ends_a_stream_with_the_code() {
    let g = gateway().await;
    g.tls
        .behave(json!({"reply": "Here you go: AKIAIOSFODNN7EXAMPLE enjoy"}))
        .await;
    let (status, headers, body) = g.call("/v1/messages", messages("claude", "key?")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["code"], "SECRET_DETECTED");
    assert_eq!(header(&headers, "x-policybind-decision"), "Deny");
    let mut streamed = chat("gpt-4o", "key?");
    streamed["stream"] = json!(true);
    let (status, wire) = g.stream("/v1/chat/completions", streamed).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "headers were sent before the answer was seen"
    );
    assert!(!wire.contains("AKIA"), "{wire}");
    assert!(!wire.contains("[DONE]"));
    let last: Value = serde_json::from_str(
        wire.trim_end()
            .lines()
            .last()
            .unwrap()
            .strip_prefix("data: ")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["error"]["code"], "SECRET_DETECTED");
    let blocked = g
        .sidecar
        .audit
        .events()
        .into_iter()
        .filter(|e| e.detail.get("stage").map(String::as_str) == Some("output"))
        .count();
    assert_eq!(blocked, 2);
    g.stop().await;
}

#[tokio::test]
async fn an_extra_path_is_decided_redacted_and_audited_like_any_model_call() {
    let g = gateway().await;
    let (status, _, body) = g
        .call(
            "/tokenize",
            json!({"model": "llama", "prompt": "mail a.b@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let received = g.plain.received().await;
    assert_eq!(received[0]["path"], "/tokenize");
    assert_eq!(received[0]["body"]["prompt"], "mail [REDACTED:EMAIL]");
    let (status, _, body) = g.call("/tokenize", json!({"prompt": "no model"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "REQUEST_INVALID");
    let (status, _, _) = send(
        Method::POST,
        &format!("{}/tokenize", g.sidecar.base),
        None,
        &[],
        Some(json!({"model": "llama"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    g.sidecar.audit.set_refusing(true);
    let (status, _, body) = g
        .call("/tokenize", json!({"model": "llama", "prompt": "x"}))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "AUDIT_UNAVAILABLE");
    assert_eq!(
        g.plain.received().await.len(),
        1,
        "nothing passes undecided or unaudited"
    );
    g.stop().await;
}

#[tokio::test]
async fn unauthenticated_refusals_are_counted_and_summarised_not_recorded_one_by_one() {
    let g = gateway().await;
    let base = &g.sidecar.base;
    for _ in 0..5 {
        send(
            Method::POST,
            &format!("{base}/v1/chat/completions"),
            None,
            &[],
            Some(chat("gpt-4o", "x")),
        )
        .await;
    }
    for _ in 0..3 {
        send(
            Method::POST,
            &format!("{base}/v1/files"),
            Some(ALICE),
            &[],
            Some(json!({})),
        )
        .await;
    }
    send(
        Method::POST,
        &format!("{base}/v1/chat/completions"),
        Some("wrong"),
        &[],
        Some(chat("gpt-4o", "x")),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = g.sidecar.audit.events();
    assert!(
        events
            .iter()
            .all(|e| e.kind == policybind_engine::audit::RecordKind::Lifecycle),
        "{events:?}"
    );
    let total = |code: &str| -> u64 {
        events
            .iter()
            .filter_map(|e| e.detail.get(code))
            .map(|n| n.parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(
        (
            total("TOKEN_MISSING"),
            total("PATH_NOT_ALLOWED"),
            total("TOKEN_UNKNOWN")
        ),
        (5, 3, 1)
    );
    let metrics = g.sidecar.metrics().await;
    assert!(
        metrics.contains(
            "policybind_sidecar_unauthenticated_rejections_total{code=\"TOKEN_MISSING\"} 5"
        ),
        "{metrics}"
    );
    g.stop().await;
}

#[tokio::test]
async fn hostile_identifiers_are_refused_naming_the_field() {
    let g = gateway().await;
    let (status, _, body) = g
        .call("/v1/chat/completions", chat("gpt-4o\u{1b}[2J", "x"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("model"),
        "{body}"
    );
    let long = "u".repeat(300);
    let (status, _, body) = g
        .call_with(
            "/v1/chat/completions",
            chat("gpt-4o", "x"),
            &[("x-policybind-use-case", &long)],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-policybind-use-case")
    );
    assert!(g.tls.received().await.is_empty());
    g.stop().await;
}

#[tokio::test]
async fn budget_and_rate_refusals_keep_the_decision_and_add_their_own_stage() {
    let g = gateway().await;
    let url = format!("{}/v1/chat/completions", g.sidecar.base);
    for _ in 0..2 {
        send(
            Method::POST,
            &url,
            Some(LIMITED),
            &[],
            Some(chat("llama", "x")),
        )
        .await;
    }
    let (status, headers, body) = send(
        Method::POST,
        &url,
        Some(LIMITED),
        &[],
        Some(chat("llama", "x")),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
    assert_eq!(
        header(&headers, "x-policybind-codes"),
        "RATE_LIMITED,POLICY_ALLOW"
    );
    assert!(!header(&headers, "retry-after").is_empty());
    let last = g.sidecar.audit.events().pop().unwrap();
    assert_eq!(last.detail["stage"], "rate");
    assert_eq!(last.detail["decidedEffect"], "Allow");
    assert_eq!(
        last.policy.as_deref(),
        Some("default/gateway"),
        "the deciding rule is kept"
    );
    g.stop().await;
}
