//! A small OpenAI-compatible model server: the `fake-upstream` binary of tests
//! and benchmarks, and the built-in demo upstream of `policybind serve` when no
//! `--upstream` is given.
//!
//! It answers `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings` and
//! `/v1/models` the way vLLM does (including SSE streaming with a final `usage`
//! chunk when `stream_options.include_usage` is set). The reply echoes the last
//! message ("You said: ..."), so what reached the model is visible. With
//! controls (the binary), it also records every request so tests can check what
//! really reached the model (redaction, degrade, no PolicyBind token):
//!
//! - `GET /__received`: the recorded requests (`path`, `headers`, `body`), oldest first;
//! - `DELETE /__received`: forget them;
//! - `POST /__behaviour`: `{"delayMs": 0, "failStatus": null, "streamUsage": true,
//!   "chunkDelayMs": 0}` for every later request.
//!
//! The demo upstream has no controls and records nothing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

#[derive(Clone, Copy)]
struct Behaviour {
    delay_ms: u64,
    fail_status: Option<u16>,
    stream_usage: bool,
    chunk_delay_ms: u64,
}

struct Shared {
    record: bool,
    received: Mutex<Vec<Value>>,
    behaviour: Mutex<Behaviour>,
}

type AppState = Arc<Shared>;

/// What the server keeps and offers besides the model endpoints.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Record every model request for `GET /__received` (the last 10,000).
    pub record: bool,
    /// Serve the `/__received` and `/__behaviour` control endpoints.
    pub controls: bool,
}

impl Options {
    /// The demo upstream of `policybind serve`: nothing kept, no controls.
    pub const DEMO: Options = Options {
        record: false,
        controls: false,
    };
}

/// The server's routes.
pub fn router(options: Options) -> Router {
    let state = Arc::new(Shared {
        record: options.record,
        received: Mutex::new(vec![]),
        behaviour: Mutex::new(Behaviour {
            delay_ms: 0,
            fail_status: None,
            stream_usage: true,
            chunk_delay_ms: 0,
        }),
    });
    let mut app = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(model_call))
        .route("/v1/completions", post(model_call))
        .route("/v1/embeddings", post(model_call));
    if options.controls {
        app = app
            .route("/__received", get(received).delete(clear))
            .route("/__behaviour", post(behaviour));
    }
    app.fallback(other).with_state(state)
}

/// Starts the demo upstream (no controls) on `listen` in the background and
/// returns the address it is bound to. It runs until the process ends.
pub async fn spawn_demo(listen: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router(Options::DEMO)).await {
            tracing::error!(%error, "the demo upstream stopped");
        }
    });
    Ok(addr)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn models() -> Response {
    let data: Vec<Value> = ["gpt-4o-mini", "gpt-4o", "llama-3-8b", "unregistered-model"]
        .iter()
        .map(|id| json!({"id": id, "object": "model", "owned_by": "fake"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn other(uri: Uri) -> Response {
    (StatusCode::OK, format!("fake upstream: {}", uri.path())).into_response()
}

async fn received(State(state): State<AppState>) -> Response {
    axum::Json(Value::Array(lock(&state.received).clone())).into_response()
}

async fn clear(State(state): State<AppState>) -> StatusCode {
    lock(&state.received).clear();
    StatusCode::NO_CONTENT
}

async fn behaviour(State(state): State<AppState>, axum::Json(v): axum::Json<Value>) -> StatusCode {
    let mut b = lock(&state.behaviour);
    b.delay_ms = v["delayMs"].as_u64().unwrap_or(0);
    b.fail_status = v["failStatus"].as_u64().map(|s| s as u16);
    b.stream_usage = v["streamUsage"].as_bool().unwrap_or(true);
    b.chunk_delay_ms = v["chunkDelayMs"].as_u64().unwrap_or(0);
    StatusCode::NO_CONTENT
}

/// All prompt text, and the last message (what the reply echoes).
fn text_of(body: &Value) -> (String, String) {
    if let Some(messages) = body["messages"].as_array() {
        let texts: Vec<&str> = messages
            .iter()
            .filter_map(|m| m["content"].as_str())
            .collect();
        return (texts.join(" "), texts.last().unwrap_or(&"").to_string());
    }
    match &body["prompt"] {
        Value::String(s) => (s.clone(), s.clone()),
        _ => (String::new(), String::new()),
    }
}

async fn model_call(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if state.record {
        let headers: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
            .collect();
        let mut received = lock(&state.received);
        if received.len() >= 10_000 {
            received.remove(0);
        }
        received.push(json!({"path": uri.path(), "headers": headers, "body": body}));
    }
    let b = *lock(&state.behaviour);
    if b.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(b.delay_ms)).await;
    }
    if let Some(status) = b.fail_status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (
            status,
            axum::Json(json!({"error": {"message": "fake failure", "type": "server_error"}})),
        )
            .into_response();
    }
    let model = body["model"].as_str().unwrap_or("unknown").to_string();
    let (prompt, last) = text_of(&body);
    let prompt_tokens = (prompt.chars().count() as u64).div_ceil(4);
    if uri.path() == "/v1/embeddings" {
        return axum::Json(json!({
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }))
        .into_response();
    }
    // The reply echoes the last message, so what the model received is visible.
    let reply = format!("You said: {last}");
    let words: Vec<String> = reply.split_inclusive(' ').map(str::to_string).collect();
    let completion_tokens = words.len() as u64;
    let chat = uri.path() == "/v1/chat/completions";
    if body["stream"].as_bool() == Some(true) {
        let include_usage =
            b.stream_usage && body["stream_options"]["include_usage"].as_bool() == Some(true);
        let chunk_delay = Duration::from_millis(b.chunk_delay_ms);
        let stream = async_stream(
            model,
            chat,
            words,
            include_usage,
            prompt_tokens,
            chunk_delay,
        );
        return Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(Body::from_stream(stream))
            .expect("valid response");
    }
    let text = reply;
    let choice = if chat {
        json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})
    } else {
        json!({"index": 0, "text": text, "finish_reason": "stop"})
    };
    axum::Json(json!({
        "id": "fake-1",
        "object": if chat { "chat.completion" } else { "text_completion" },
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }))
    .into_response()
}

fn async_stream(
    model: String,
    chat: bool,
    words: Vec<String>,
    include_usage: bool,
    prompt_tokens: u64,
    chunk_delay: Duration,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    let mut events: Vec<String> = words
        .iter()
        .map(|w| {
            let choice = if chat {
                json!({"index": 0, "delta": {"content": w}, "finish_reason": null})
            } else {
                json!({"index": 0, "text": w, "finish_reason": null})
            };
            let chunk = json!({"id": "fake-1", "object": "chat.completion.chunk", "model": model, "choices": [choice]});
            format!("data: {chunk}\n\n")
        })
        .collect();
    if include_usage {
        let n = words.len() as u64;
        let chunk = json!({"id": "fake-1", "object": "chat.completion.chunk", "model": model, "choices": [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}});
        events.push(format!("data: {chunk}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_string());
    futures::stream::unfold(events.into_iter(), move |mut it| async move {
        let next = it.next()?;
        if !chunk_delay.is_zero() {
            tokio::time::sleep(chunk_delay).await;
        }
        Some((Ok(Bytes::from(next)), it))
    })
}
