//! A small model server: the `fake-upstream` binary of tests and benchmarks,
//! and the built-in demo upstream of `policybind serve` when no `--upstream` is
//! given.
//!
//! It speaks the APIs the enforcement point serves: OpenAI's
//! `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//! `/v1/responses` and `/v1/models`, and Anthropic's `/v1/messages`, each with
//! server-sent event streaming the way the providers stream (including usage:
//! OpenAI's final chunk when `stream_options.include_usage` is set, the
//! responses API's `response.completed`, Anthropic's `message_start` and
//! `message_delta`). The reply echoes the last message ("You said: ..."), so
//! what reached the model is visible.
//!
//! With controls (the binary), it also records every request (path, HTTP
//! version, headers, body) so tests can check what really reached the model:
//! redaction, degrade, the provider key in the provider's header, never the
//! PolicyBind token. Control endpoints:
//!
//! - `GET /__received`: the recorded requests, oldest first; `DELETE` forgets them;
//! - `POST /__behaviour`: `{"delayMs": 0, "failStatus": null, "streamUsage": true,
//!   "chunkDelayMs": 0, "reply": null, "gzip": false,
//!   "requireKey": {"header": "x-api-key", "value": "..."}, "usage": true,
//!   "rawBody": null}` for every later request.
//!   `reply` replaces the answer (default: "You said: <last message>"); `gzip`
//!   compresses every answer whatever the request accepts; `requireKey`
//!   answers 401 unless the header carries exactly that value; `usage: false`
//!   leaves `usage` out of whole JSON answers (as some servers do); `rawBody`
//!   answers 200 with that text (`text/plain`) instead of JSON.
//!
//! The demo upstream has no controls and records nothing.

mod apis;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// How the server answers, changed through `POST /__behaviour`.
#[derive(Clone)]
struct Behaviour {
    delay_ms: u64,
    fail_status: Option<u16>,
    stream_usage: bool,
    chunk_delay_ms: u64,
    reply: Option<String>,
    gzip: bool,
    require_key: Option<(String, String)>,
    /// Whole JSON answers carry `usage`.
    usage: bool,
    /// Answer this text instead of JSON.
    raw_body: Option<String>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            delay_ms: 0,
            fail_status: None,
            stream_usage: true,
            chunk_delay_ms: 0,
            reply: None,
            gzip: false,
            require_key: None,
            usage: true,
            raw_body: None,
        }
    }
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
        behaviour: Mutex::new(Behaviour::default()),
    });
    let mut app = Router::new()
        .route("/v1/models", get(apis::models))
        .route("/v1/chat/completions", post(model_call))
        .route("/v1/completions", post(model_call))
        .route("/v1/embeddings", post(model_call))
        .route("/v1/responses", post(model_call))
        .route("/v1/messages", post(model_call));
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

async fn other(
    uri: Uri,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&state, &uri, Version::HTTP_11, &headers, &body);
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
    b.reply = v["reply"].as_str().map(str::to_string);
    b.gzip = v["gzip"].as_bool().unwrap_or(false);
    b.usage = v["usage"].as_bool().unwrap_or(true);
    b.raw_body = v["rawBody"].as_str().map(str::to_string);
    b.require_key = match (
        v["requireKey"]["header"].as_str(),
        v["requireKey"]["value"].as_str(),
    ) {
        (Some(h), Some(value)) => Some((h.to_ascii_lowercase(), value.to_string())),
        _ => None,
    };
    StatusCode::NO_CONTENT
}

fn record(state: &Shared, uri: &Uri, version: Version, headers: &HeaderMap, body: &[u8]) {
    if !state.record {
        return;
    }
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
        .collect();
    let mut received = lock(&state.received);
    if received.len() >= 10_000 {
        received.remove(0);
    }
    received.push(
        json!({"path": uri.path(), "query": uri.query(), "version": format!("{version:?}"),
        "headers": headers, "body": body}),
    );
}

async fn model_call(
    State(state): State<AppState>,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&state, &uri, version, &headers, &body);
    let b = lock(&state.behaviour).clone();
    if b.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(b.delay_ms)).await;
    }
    if let Some((header, value)) = &b.require_key
        && headers.get(header.as_str()).and_then(|v| v.to_str().ok()) != Some(value.as_str())
    {
        let error =
            json!({"error": {"message": "invalid provider key", "type": "authentication_error"}});
        return (StatusCode::UNAUTHORIZED, axum::Json(error)).into_response();
    }
    if let Some(status) = b.fail_status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let error = json!({"error": {"message": "fake failure", "type": "server_error"}});
        return (status, axum::Json(error)).into_response();
    }
    if let Some(raw) = b.raw_body {
        return (StatusCode::OK, raw).into_response();
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let response = apis::answer(uri.path(), &body, &b);
    if b.gzip {
        apis::gzip(response).await
    } else {
        response
    }
}
