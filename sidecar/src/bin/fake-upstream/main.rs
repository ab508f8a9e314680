//! A small model server for tests and benchmarks, speaking the APIs the
//! enforcement point serves: OpenAI's `/v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings`, `/v1/responses` and `/v1/models`, and
//! Anthropic's `/v1/messages`, each with server-sent event streaming the way
//! the providers stream (including usage: OpenAI's final chunk when
//! `stream_options.include_usage` is set, the responses API's
//! `response.completed`, Anthropic's `message_start` and `message_delta`).
//!
//! It records every request it receives (path, HTTP version, headers, body) so
//! tests can check what really reached the model: redaction, degrade, the
//! provider key in the provider's header, never the PolicyBind token.
//! Control endpoints:
//!
//! - `GET /__received`: the recorded requests, oldest first; `DELETE` forgets them;
//! - `POST /__behaviour`: `{"delayMs": 0, "failStatus": null, "streamUsage": true,
//!   "chunkDelayMs": 0, "reply": null, "gzip": false,
//!   "requireKey": {"header": "x-api-key", "value": "..."}}` for every later request.
//!   `reply` replaces the answer (default: "You said: <last message>"); `gzip`
//!   compresses every answer whatever the request accepts; `requireKey`
//!   answers 401 unless the header carries exactly that value.
//!
//! Usage: `fake-upstream [--listen 127.0.0.1:0] [--no-record] [--tls-dir DIR]`.
//! With `--tls-dir` it serves HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with a
//! certificate for `localhost` and `127.0.0.1` signed by a CA it generates,
//! written to `DIR/ca.pem`. Prints `listening on <addr>` as its first line of
//! stdout.
#![forbid(unsafe_code)]

mod apis;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

#[derive(Clone, Default)]
pub struct Behaviour {
    pub delay_ms: u64,
    pub fail_status: Option<u16>,
    pub stream_usage: bool,
    pub chunk_delay_ms: u64,
    pub reply: Option<String>,
    pub gzip: bool,
    pub require_key: Option<(String, String)>,
}

pub struct Shared {
    record: bool,
    received: Mutex<Vec<Value>>,
    behaviour: Mutex<Behaviour>,
}

pub type AppState = Arc<Shared>;

struct Options {
    listen: SocketAddr,
    record: bool,
    tls_dir: Option<PathBuf>,
}

fn options() -> Options {
    let mut options = Options {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        record: true,
        tls_dir: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                options.listen = args
                    .next()
                    .and_then(|a| a.parse().ok())
                    .expect("--listen takes an address")
            }
            "--no-record" => options.record = false,
            "--tls-dir" => {
                options.tls_dir = Some(args.next().expect("--tls-dir takes a directory").into())
            }
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    options
}

#[tokio::main]
async fn main() {
    let options = options();
    let state = Arc::new(Shared {
        record: options.record,
        received: Mutex::new(vec![]),
        behaviour: Mutex::new(Behaviour {
            stream_usage: true,
            ..Default::default()
        }),
    });
    let app = Router::new()
        .route("/v1/models", get(apis::models))
        .route("/v1/chat/completions", post(model_call))
        .route("/v1/completions", post(model_call))
        .route("/v1/embeddings", post(model_call))
        .route("/v1/responses", post(model_call))
        .route("/v1/messages", post(model_call))
        .route("/__received", get(received).delete(clear))
        .route("/__behaviour", post(behaviour))
        .fallback(other)
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .expect("cannot bind");
    let addr = listener.local_addr().expect("bound");
    match options.tls_dir {
        Some(dir) => {
            let config = tls::server_config(&dir);
            println!("listening on {addr}");
            tls::serve(listener, config, app).await;
        }
        None => {
            println!("listening on {addr}");
            axum::serve(listener, app).await.expect("server failed");
        }
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let response = apis::answer(uri.path(), &body, &b);
    if b.gzip {
        apis::gzip(response).await
    } else {
        response
    }
}
