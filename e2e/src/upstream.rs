//! A real OpenAI-compatible upstream on loopback: what the sidecar forwards to.
//!
//! It answers `POST /v1/chat/completions` with a fixed completion and usage
//! (streamed as server-sent events when the request says `"stream": true`),
//! and counts what reached it and the usage it reported, so a scenario can
//! tell "the sidecar let it through" from "the sidecar answered itself", and
//! knows what a provider would bill. Usage is counted when a completion is
//! answered, streamed or not: a provider bills a stream whose client went away.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, body::Bytes};
use serde_json::{Value, json};

/// A request carrying this header is answered but not counted: a scenario
/// timing the upstream directly, beside what sidecars send it.
pub const UNCOUNTED_HEADER: &str = "x-e2e-uncounted";

/// Tokens one completion reports in `usage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// How the upstream answers.
#[derive(Clone, Copy, Debug)]
pub struct Answers {
    /// What a completion reports.
    pub usage: Usage,
    /// Every `overrun_every`-th completion reports [`Answers::overrun`]
    /// instead (0: never): more than a sidecar estimated, as when a prompt
    /// tokenizes worse than the estimate.
    pub overrun_every: u64,
    /// What an overrunning completion reports.
    pub overrun: Usage,
    /// Content chunks of a streamed answer, and the pause before each.
    pub stream_chunks: u32,
    pub chunk_delay: Duration,
}

impl Default for Answers {
    fn default() -> Self {
        let usage = Usage {
            prompt_tokens: 12,
            completion_tokens: 6,
        };
        Answers {
            usage,
            overrun_every: 0,
            overrun: usage,
            stream_chunks: 3,
            chunk_delay: Duration::ZERO,
        }
    }
}

/// What reached the upstream so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Completions answered (streamed or not).
    pub completions: u64,
    /// Of which streamed.
    pub streams: u64,
    /// Of which reported [`Answers::overrun`].
    pub overruns: u64,
}

#[derive(Debug, Default)]
struct Counters {
    completions: AtomicU64,
    streams: AtomicU64,
    overruns: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    answers: Answers,
    counters: Counters,
}

/// A running upstream; it stops with the scenario's runtime.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Where it listens (127.0.0.1:port).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Upstream {
    /// Start on an ephemeral loopback port, answering with the defaults.
    pub async fn start() -> Result<Upstream> {
        Upstream::start_with(Answers::default()).await
    }

    /// Start on an ephemeral loopback port, answering as `answers` says.
    pub async fn start_with(answers: Answers) -> Result<Upstream> {
        let shared = Arc::new(Shared {
            answers,
            counters: Counters::default(),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind upstream")?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Upstream { addr, shared })
    }

    /// The upstream URL the sidecar gets (`POLICYBIND_UPSTREAM`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many chat completions reached the upstream so far.
    pub fn received(&self) -> u64 {
        self.shared.counters.completions.load(Ordering::SeqCst)
    }

    /// What reached the upstream so far.
    pub fn tally(&self) -> Tally {
        let counters = &self.shared.counters;
        Tally {
            completions: counters.completions.load(Ordering::SeqCst),
            streams: counters.streams.load(Ordering::SeqCst),
            overruns: counters.overruns.load(Ordering::SeqCst),
        }
    }

    /// How it answers.
    pub fn answers(&self) -> Answers {
        self.shared.answers
    }
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (axum::http::StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let counters = &shared.counters;
    let answers = shared.answers;
    let counted = !headers.contains_key(UNCOUNTED_HEADER);
    let number = if counted {
        counters.completions.fetch_add(1, Ordering::SeqCst) + 1
    } else {
        0
    };
    let usage = if counted && answers.overrun_every > 0 && number % answers.overrun_every == 0 {
        counters.overruns.fetch_add(1, Ordering::SeqCst);
        answers.overrun
    } else {
        answers.usage
    };
    let usage = json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens
    });
    let model = request["model"].as_str().unwrap_or("unknown").to_string();
    let id = format!("chatcmpl-e2e-{number}");
    if request["stream"].as_bool() == Some(true) {
        if counted {
            counters.streams.fetch_add(1, Ordering::SeqCst);
        }
        let with_usage = request["stream_options"]["include_usage"].as_bool() == Some(true);
        return stream(&answers, &id, &model, with_usage.then_some(usage));
    }
    Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "hello from the e2e upstream"},
            "finish_reason": "stop"
        }],
        "usage": usage
    }))
    .into_response()
}

/// The answer as server-sent events, the way OpenAI streams: content chunks,
/// the usage chunk when asked for (`stream_options.include_usage`), `[DONE]`.
fn stream(answers: &Answers, id: &str, model: &str, usage: Option<Value>) -> Response {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events: Vec<String> = (0..answers.stream_chunks)
        .map(|n| chunk(json!({"content": format!("part {n} ")}), Value::Null).to_string())
        .collect();
    events.push(chunk(json!({}), json!("stop")).to_string());
    if let Some(usage) = usage {
        events.push(
            json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [], "usage": usage})
            .to_string(),
        );
    }
    events.push("[DONE]".to_string());
    let delay = answers.chunk_delay;
    let body = futures::stream::unfold(events.into_iter(), move |mut events| async move {
        let event = events.next()?;
        tokio::time::sleep(delay).await;
        Some((
            Ok::<_, std::convert::Infallible>(Bytes::from(format!("data: {event}\n\n"))),
            events,
        ))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(body))
        .expect("a valid response")
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": "e2e-model", "object": "model"}]}))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// One chat completion POST to the fake upstream.
    async fn chat(upstream: &Upstream, body: &'static [u8]) -> crate::http::Response {
        crate::http::request(
            &upstream.addr.to_string(),
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            Some(body),
            Duration::from_secs(5),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn answers_chat_completions_and_counts_them() {
        let upstream = Upstream::start().await.unwrap();
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let response = chat(&upstream, body).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.json()["model"], "m");
        assert_eq!(response.json()["usage"]["total_tokens"], 18);
        assert_eq!(upstream.received(), 1);
        crate::http::wait_ok(
            &upstream.addr.to_string(),
            "/healthz",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(upstream.received(), 1, "health checks are not completions");
    }

    #[tokio::test]
    async fn every_nth_completion_overruns_and_streams_carry_usage() {
        let overrun = Usage {
            prompt_tokens: 100,
            completion_tokens: 50,
        };
        let upstream = Upstream::start_with(Answers {
            overrun_every: 2,
            overrun,
            ..Answers::default()
        })
        .await
        .unwrap();
        let send = |body: &'static [u8]| chat(&upstream, body);
        let first = send(br#"{"model":"m","messages":[]}"#).await;
        assert_eq!(first.json()["usage"]["total_tokens"], 18);
        let second = send(
            br#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .await;
        let text = second.text();
        assert!(text.contains(r#""total_tokens":150"#), "{text}");
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        assert_eq!(
            upstream.tally(),
            Tally {
                completions: 2,
                streams: 1,
                overruns: 1
            }
        );
    }
}
