//! A real OpenAI-compatible upstream on loopback: what the sidecar forwards to.
//!
//! It answers `POST /v1/chat/completions` with a fixed completion and usage, and
//! counts what reached it, so a scenario can tell "the sidecar let it through"
//! from "the sidecar answered itself".
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde_json::{Value, json};

/// A running upstream; it stops with the scenario's runtime.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Where it listens (127.0.0.1:port).
    pub addr: SocketAddr,
    received: Arc<AtomicU64>,
}

impl Upstream {
    /// Start on an ephemeral loopback port.
    pub async fn start() -> Result<Upstream> {
        let received = Arc::new(AtomicU64::new(0));
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind upstream")?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Upstream { addr, received })
    }

    /// The upstream URL the sidecar gets (`POLICYBIND_UPSTREAM`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many chat completions reached the upstream so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
}

async fn chat(State(received): State<Arc<AtomicU64>>, Json(request): Json<Value>) -> Json<Value> {
    received.fetch_add(1, Ordering::SeqCst);
    let model = request["model"].as_str().unwrap_or("unknown").to_string();
    Json(json!({
        "id": format!("chatcmpl-e2e-{}", received.load(Ordering::SeqCst)),
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "hello from the e2e upstream"},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}
    }))
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": "e2e-model", "object": "model"}]}))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn answers_chat_completions_and_counts_them() {
        let upstream = Upstream::start().await.unwrap();
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let response = crate::http::request(
            &upstream.addr.to_string(),
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            Some(body),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
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
}
