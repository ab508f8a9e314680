//! Requests refused before anyone was identified (no token, an unknown token, a
//! path that is not served, no policy set in force): counted, and summarised
//! in one audit record per interval instead of one record each, so an
//! unauthenticated flood cannot fill the audit trail or crowd out the records
//! of real decisions.
//!
//! The audit engineer is adding a periodic summary API to the audit crate;
//! [`Rejections::run`] moves to it when it lands. Until then the summary is a
//! `Lifecycle` record with transition `unauthenticated-rejections` and one
//! detail per code (`TOKEN_MISSING=12`), plus `windowSeconds`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use policybind_engine::audit::AuditEvent;
use policybind_engine::codes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditSink;
use crate::metrics::CodeLabels;

/// The codes counted here, in summary order.
pub const COUNTED: [&str; 4] = [
    codes::TOKEN_MISSING,
    codes::TOKEN_UNKNOWN,
    codes::PATH_NOT_ALLOWED,
    codes::NO_POLICY_SET,
];

/// Counters of unauthenticated refusals since the last summary.
pub struct Rejections {
    counts: [AtomicU64; COUNTED.len()],
    total: Family<CodeLabels, Counter>,
}

impl Rejections {
    pub fn new(total: Family<CodeLabels, Counter>) -> Arc<Rejections> {
        Arc::new(Rejections {
            counts: Default::default(),
            total,
        })
    }

    /// Counts one refusal (codes not in [`COUNTED`] are ignored).
    pub fn count(&self, code: &str) {
        if let Some(i) = COUNTED.iter().position(|c| *c == code) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
            self.total
                .get_or_create(&CodeLabels {
                    code: code.to_string(),
                })
                .inc();
        }
    }

    /// The counts since the last call, zeroing them.
    pub fn take(&self) -> BTreeMap<&'static str, u64> {
        COUNTED
            .iter()
            .zip(&self.counts)
            .map(|(code, n)| (*code, n.swap(0, Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The summary record of `counts`, if there is anything to say.
    pub fn summary(
        counts: &BTreeMap<&'static str, u64>,
        namespace: &str,
        window: Duration,
    ) -> Option<AuditEvent> {
        if counts.is_empty() {
            return None;
        }
        let mut event =
            AuditEvent::lifecycle(policybind_crds::wire::transitions::UNAUTHENTICATED_REJECTIONS)
                .time(Utc::now())
                .namespace(namespace)
                .detail("windowSeconds", window.as_secs().to_string());
        for (code, n) in counts {
            event = event.detail(*code, n.to_string());
        }
        Some(event)
    }

    /// Appends a summary every `interval` and once more when stopped.
    pub async fn run(
        self: Arc<Self>,
        audit: Arc<dyn AuditSink>,
        namespace: String,
        interval: Duration,
        stop: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            let stopping = tokio::select! {
                _ = ticker.tick() => false,
                _ = stop.cancelled() => true,
            };
            let counts = self.take();
            if !counts.is_empty() {
                // One line per interval instead of one per refusal (those are
                // DEBUG): a flood cannot flood the log either.
                tracing::info!(
                    window_seconds = interval.as_secs(),
                    counts = ?counts,
                    "unauthenticated requests refused"
                );
            }
            if let Some(event) = Self::summary(&counts, &namespace, interval)
                && let Err(e) = audit.append(event)
            {
                tracing::warn!("unauthenticated refusals not summarised in the audit trail: {e}");
            }
            if stopping {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_and_summarised_once_per_window() {
        let rejections = Rejections::new(Family::default());
        for _ in 0..3 {
            rejections.count(codes::TOKEN_MISSING);
        }
        rejections.count(codes::PATH_NOT_ALLOWED);
        rejections.count(codes::POLICY_DENY);
        let counts = rejections.take();
        assert_eq!(counts.len(), 2);
        let event = Rejections::summary(&counts, "team-a", Duration::from_secs(60)).unwrap();
        assert_eq!(event.detail["TOKEN_MISSING"], "3");
        assert_eq!(event.detail["PATH_NOT_ALLOWED"], "1");
        assert_eq!(
            event.detail["transition"],
            policybind_crds::wire::transitions::UNAUTHENTICATED_REJECTIONS
        );
        assert!(rejections.take().is_empty());
        assert!(Rejections::summary(&rejections.take(), "team-a", Duration::ZERO).is_none());
    }
}
