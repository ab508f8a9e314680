//! Compliance on a real API server: an evidence gate blocks the approval of a
//! model whose evaluation results fail it, the approver is told which gate and
//! value, and the approval goes through once the evidence passes.
use std::time::Duration;

use anyhow::{Context, Result, bail};
use policybind_e2e::flows::wait_model_approval;
use policybind_e2e::scenario;
use policybind_e2e::scenario::{ApplyError, Scenario};
use serde_json::{Value, json};

fn risky_model(fairness: f64) -> Value {
    json!({
        "apiVersion": "policybind.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "scoring"},
        "spec": {
            "provider": "self-hosted",
            "model": "e2e-scoring",
            "owner": "e2e@example.com",
            "team": "e2e",
            "risk": {"level": "High"},
            "evaluations": [{
                "metric": "subgroup-fairness-delta", "value": fairness,
                "dataset": "holdout", "date": "2026-11-01", "source": "fairness suite"
            }]
        }
    })
}

/// The operator's ApprovalRequest for the model, once it has opened it.
async fn approval_request(s: &Scenario) -> Result<Value> {
    let model = wait_model_approval(s, "scoring", &["Pending"]).await?;
    let name = model["status"]["approvalRequest"]
        .as_str()
        .context("status.approvalRequest")?
        .to_string();
    s.wait_for(
        &format!("ApprovalRequest {name}"),
        Duration::from_secs(30),
        || async {
            s.get_json("policybind.io/v1alpha1", "ApprovalRequest", &name)
                .await
        },
    )
    .await
}

fn decided(request: &Value, approver: &str) -> Value {
    json!({
        "apiVersion": "policybind.io/v1alpha1",
        "kind": "ApprovalRequest",
        "metadata": {"name": request["metadata"]["name"]},
        "spec": {
            "target": request["spec"]["target"],
            "requester": request["spec"]["requester"],
            "reason": request["spec"]["reason"],
            "decision": {"state": "Approved", "approver": approver, "comment": "e2e"}
        }
    })
}

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn an_evidence_gate_blocks_an_approval_until_the_evidence_passes() {
    scenario("evidence-gate", |s| async move {
        // A cluster-scoped gate, confined to this scenario's namespace so that
        // parallel scenarios are not governed by it.
        let gate = json!({
            "apiVersion": "policybind.io/v1alpha1",
            "kind": "EvidenceGate",
            "metadata": {"name": format!("{}-fairness", s.namespace)},
            "spec": {
                "appliesTo": {"minRiskLevel": "High", "namespaces": [s.namespace]},
                "thresholds": [{"name": "fairness", "metric": "subgroup-fairness-delta", "max": 0.05}]
            }
        });
        s.apply(&gate).await?;
        s.apply(&risky_model(0.09)).await?;
        let request = approval_request(&s).await?;

        let approver = "risk-board@example.com";
        s.grant(approver, "policybind-approver").await?;
        let board = s.as_user(approver).await?;
        // The webhook judges from watch caches; an approval it admits before they
        // hold the new gate and evidence cannot be retried (it is then decided).
        // Give the watches time to deliver both, as a reviewer's pace would.
        tokio::time::sleep(Duration::from_secs(3)).await;
        // The webhook's gate cache follows a watch: retry until it has the gate.
        let message = s
            .wait_for(
                "the approval to be refused by the evidence gate",
                Duration::from_secs(30),
                || async {
                    match board.try_apply(&decided(&request, approver)).await {
                        Err(ApplyError::Refused { message, .. })
                            if message.contains("EVIDENCE_GATE_FAILED") =>
                        {
                            Ok(Some(message))
                        }
                        Err(ApplyError::Refused { message, .. }) => {
                            bail!("refused for another reason: {message}")
                        }
                        Err(error) => Err(error.into()),
                        Ok(_) => bail!("the approval was admitted although the gate fails"),
                    }
                },
            )
            .await?;
        if !(message.contains("fairness") && message.contains("0.09")) {
            bail!("the refusal does not name the gate and its value: {message}");
        }
        println!("evidence gate: {message}");

        // New evidence that passes: the same approval now goes through.
        s.apply(&risky_model(0.02)).await?;
        s.wait_for(
            "the approval to be admitted once the evidence passes",
            Duration::from_secs(30),
            || async {
                match board.try_apply(&decided(&request, approver)).await {
                    Ok(_) => Ok(Some(())),
                    Err(ApplyError::Refused { message, .. })
                        if message.contains("EVIDENCE_GATE_FAILED") =>
                    {
                        Ok(None)
                    }
                    Err(error) => Err(error.into()),
                }
            },
        )
        .await?;
        wait_model_approval(&s, "scoring", &["Approved"]).await?;
        // The cluster-scoped gate does not go with the namespace.
        s.delete(&gate).await?;
        Ok(())
    });
}
