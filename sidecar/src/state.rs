//! What every request shares: settings, the policy set holder, the ledger, the
//! audit trail, approvals, metrics, the upstream client and provider keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use http::HeaderMap;
use tokio::sync::Semaphore;

use crate::accounting::UsageLedger;
use crate::approvals::Approvals;
use crate::audit::AuditSink;
use crate::config::Settings;
use crate::credentials::Credentials;
use crate::metrics::Metrics;
use crate::rejections::Rejections;
use crate::source::PolicyHolder;
use crate::upstream::Upstream;

/// Everything the request path shares.
pub struct AppState {
    pub holder: Arc<PolicyHolder>,
    pub ledger: Arc<dyn UsageLedger>,
    pub audit: Arc<dyn AuditSink>,
    pub approvals: Approvals,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<Settings>,
    pub upstream: Upstream,
    pub credentials: Arc<Credentials>,
    pub rejections: Arc<Rejections>,
    pub(crate) concurrency: Arc<Semaphore>,
    pub(crate) ids: RequestIds,
}

/// The parts of [`AppState`] built outside it.
pub struct Parts {
    pub settings: Arc<Settings>,
    pub holder: Arc<PolicyHolder>,
    pub ledger: Arc<dyn UsageLedger>,
    pub audit: Arc<dyn AuditSink>,
    pub approvals: Approvals,
    pub metrics: Arc<Metrics>,
    pub upstream: Upstream,
    pub credentials: Arc<Credentials>,
    pub rejections: Arc<Rejections>,
}

impl AppState {
    pub fn new(parts: Parts) -> Arc<AppState> {
        Arc::new(AppState {
            concurrency: Arc::new(Semaphore::new(parts.settings.limits.max_concurrency)),
            holder: parts.holder,
            ledger: parts.ledger,
            audit: parts.audit,
            approvals: parts.approvals,
            metrics: parts.metrics,
            settings: parts.settings,
            upstream: parts.upstream,
            credentials: parts.credentials,
            rejections: parts.rejections,
            ids: RequestIds::new(),
        })
    }

    pub(crate) fn next_request_id(&self, headers: &HeaderMap) -> String {
        self.ids.next(headers)
    }
}

/// Request ids: the caller's `x-request-id` when it is a sane token, otherwise
/// a random per-process prefix and a counter (unique without a syscall per request).
pub(crate) struct RequestIds {
    prefix: String,
    counter: AtomicU64,
}

/// Longest caller-given request id kept.
pub const MAX_REQUEST_ID: usize = 64;

impl RequestIds {
    fn new() -> Self {
        let mut seed = [0u8; 6];
        // Without OS randomness, fall back to the clock: ids need only be unique.
        if getrandom::fill(&mut seed).is_err() {
            let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
            seed.copy_from_slice(&nanos.to_le_bytes()[..6]);
        }
        RequestIds {
            prefix: hex::encode(seed),
            counter: AtomicU64::new(0),
        }
    }

    /// A new id, whatever the caller sent.
    pub(crate) fn fresh(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}{:010x}", self.prefix, n)
    }

    fn next(&self, headers: &HeaderMap) -> String {
        if let Some(given) = headers.get("x-request-id").and_then(|v| v.to_str().ok())
            && !given.is_empty()
            && given.len() <= MAX_REQUEST_ID
            && given
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return given.to_string();
        }
        self.fresh()
    }
}
