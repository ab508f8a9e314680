//! The replica's admission summary: every admission decision that carried a
//! code (admitted, refused, injected, admitted with a warning) counted by the
//! namespace it concerns, the review (`<webhook>-<kind>`, e.g. `mutate-pod`,
//! `validate-modeldeployment`) and its OpenReports result, with the latest
//! examples ([`policybind_crds::summary`]).
//!
//! Each replica applies the ConfigMap [`wire::admission_summary_name`] of its
//! pod in PolicyBind's own namespace (where workloads cannot write), labelled
//! [`labels::ADMISSION_SUMMARY`], every interval when it changed and once at
//! shutdown; at start it reads its previous summary back, so a restart neither
//! loses nor repeats counts. The operator sums the replicas' summaries into the
//! `policybind-admission` Report of each namespace (docs/operator.md,
//! "Reports"). Reviews of cluster-scoped objects are not reported.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::core::admission::AdmissionRequest;
use policybind_crds::summary::{
    DecisionSummary, DecisionTally, Example, ReportResult, SummaryKey, subject_hash,
};
use policybind_crds::wire::{self, field_managers, keys, labels};
use tokio_util::sync::CancellationToken;

use crate::verdict::Verdict;

/// Policy name of every admission result.
pub const ADMISSION_POLICY: &str = "policybind.io/admission";
/// Longest a single summary call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The OpenReports result of a verdict: refused is `fail`, admitted with a
/// warning is `warn`, admitted (injected or not) is `pass`.
pub fn result_of(verdict: &Verdict) -> ReportResult {
    if !verdict.allowed {
        ReportResult::Fail
    } else if !verdict.warnings.is_empty() {
        ReportResult::Warn
    } else {
        ReportResult::Pass
    }
}

/// Counts one review's verdict (those without a code concern nothing
/// PolicyBind governs; reviews of cluster-scoped objects have no namespace
/// report).
pub fn record(
    tally: &DecisionTally,
    webhook: &str,
    request: &AdmissionRequest<DynamicObject>,
    verdict: &Verdict,
) {
    let (Some(code), Some(namespace)) = (verdict.code, request.namespace.as_ref()) else {
        return;
    };
    let kind = request.kind.kind.to_ascii_lowercase();
    let object =
        (!request.name.is_empty()).then(|| format!("{}/{}", request.kind.kind, request.name));
    tally.record(
        SummaryKey {
            namespace: Some(namespace.clone()),
            policy: ADMISSION_POLICY.into(),
            rule: format!("{webhook}-{kind}"),
            result: result_of(verdict),
        },
        Example {
            time: Utc::now(),
            code: code.to_string(),
            model: verdict.model.clone(),
            subject: request.user_info.username.as_deref().map(subject_hash),
            object,
        },
    );
}

/// Publishes one replica's summary.
pub struct SummaryPublisher {
    api: Api<ConfigMap>,
    namespace: String,
    pod: String,
    name: String,
    tally: Arc<DecisionTally>,
    restored: bool,
    last: Option<String>,
}

/// Why a summary was not published; logged, retried at the next tick.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("reading the previous summary: {0}")]
    Restore(#[source] kube::Error),
    #[error("applying the summary: {0}")]
    Apply(#[source] kube::Error),
    #[error("the API server did not answer within {CALL_TIMEOUT:?}")]
    Timeout,
}

impl SummaryPublisher {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        pod: &str,
        tally: Arc<DecisionTally>,
    ) -> Self {
        SummaryPublisher {
            api: Api::namespaced(client, namespace),
            namespace: namespace.into(),
            pod: pod.into(),
            name: wire::admission_summary_name(pod),
            tally,
            restored: false,
            last: None,
        }
    }

    /// The ConfigMap holding `json`.
    pub fn config_map(&self, json: String) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (labels::ADMISSION_SUMMARY.into(), "true".into()),
                    (labels::WRITER_POD.into(), self.pod.clone()),
                    (labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into()),
                ])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(keys::DECISIONS.into(), json)])),
            ..Default::default()
        }
    }

    /// Restores the previous summary once, then applies the tally when it
    /// changed. True when a write was made.
    pub async fn publish_once(&mut self) -> Result<bool, PublishError> {
        if !self.restored {
            let previous = tokio::time::timeout(CALL_TIMEOUT, self.api.get_opt(&self.name))
                .await
                .map_err(|_| PublishError::Timeout)?
                .map_err(PublishError::Restore)?;
            let json = previous
                .as_ref()
                .and_then(|cm| cm.data.as_ref())
                .and_then(|d| d.get(keys::DECISIONS));
            if let Some(json) = json {
                match DecisionSummary::parse(json) {
                    Ok(parsed) => self.tally.restore(parsed),
                    Err(error) => tracing::warn!(configmap = %self.name, %error,
                        "previous admission summary is unreadable; counting starts over"),
                }
            }
            self.restored = true;
        }
        let json =
            serde_json::to_string(&self.tally.snapshot()).expect("a summary always serializes");
        if self.last.as_deref() == Some(json.as_str()) {
            return Ok(false);
        }
        let params = PatchParams::apply(field_managers::WEBHOOK).force();
        let config_map = self.config_map(json.clone());
        tokio::time::timeout(
            CALL_TIMEOUT,
            self.api
                .patch(&self.name, &params, &Patch::Apply(&config_map)),
        )
        .await
        .map_err(|_| PublishError::Timeout)?
        .map_err(PublishError::Apply)?;
        self.last = Some(json);
        Ok(true)
    }

    /// Publishes every `interval` until `stop`, then once more.
    pub async fn run(mut self, interval: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let result = self.publish_once().await;
            self.log(result);
        }
        let result = self.publish_once().await;
        self.log(result);
    }

    fn log(&self, result: Result<bool, PublishError>) {
        if let Err(error) = result {
            tracing::warn!(configmap = %self.name, %error,
                "admission summary not published; retrying at the next tick");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_map_to_openreports_results() {
        let allowed = Verdict::allow(policybind_engine::codes::POLICY_ALLOW);
        assert_eq!(result_of(&allowed), ReportResult::Pass);
        let mut warned = allowed.clone();
        warned.warnings.push("sidecar not injected".into());
        assert_eq!(result_of(&warned), ReportResult::Warn);
        let denied = Verdict::deny(policybind_engine::codes::AUDIT_UNAVAILABLE, "no");
        assert_eq!(result_of(&denied), ReportResult::Fail);
    }
}
