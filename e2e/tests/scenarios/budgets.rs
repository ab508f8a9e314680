//! Budgets shared by replicas (docs/operator.md, "Budgets across replicas"):
//! three sidecars, each under its own pod's ServiceAccount token, saturate one
//! token with a small daily budget. Together they must not spend more than the
//! budget plus the stated bound (the difference between estimates and actual
//! usage of requests in flight; zero here, since the fake upstream reports less
//! than the sidecars estimate). The token's status then shows what the
//! replicas hold (`heldUsd`, `holders`) and when the period resets.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use policybind_e2e::fixtures::{self, MODEL};
use policybind_e2e::flows::{self, serving};
use policybind_e2e::scenario;
use serde_json::json;

/// What one request through the fake upstream costs: 12 input tokens at
/// $0.001/1k plus 6 output tokens at $0.002/1k.
const COST_PER_REQUEST: f64 = 12.0 * 0.001 / 1000.0 + 6.0 * 0.002 / 1000.0;
/// Room for 100 requests.
const LIMIT_USD: f64 = 100.0 * COST_PER_REQUEST;
/// Requests in flight per sidecar.
const CONCURRENCY: usize = 4;
/// Longest a replica may take to serve, then to enforce the budget.
const SETTLE: Duration = Duration::from_secs(60);
/// Longest the saturation runs.
const RUN_LIMIT: Duration = Duration::from_secs(120);

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn three_replicas_never_overspend_a_shared_budget() {
    scenario("budgets-replicas", |s| async move {
        let serving = serving(&s).await?;
        let tokens = kube::Api::<kube::api::DynamicObject>::namespaced_with(
            s.client.clone(),
            &s.namespace,
            &s.resource_of(&json!({"apiVersion": "policybind.io/v1alpha1", "kind": "AccessToken"}))
                .await?
                .0,
        );
        let mut sidecars = vec![serving.sidecar];
        for name in ["e2e-pod-2", "e2e-pod-3"] {
            s.create_pod(&fixtures::model_pod(name, &serving.model_deployment))
                .await?;
            let sidecar = s.start_sidecar(&serving.upstream, name).await?;
            s.wait_for("the new sidecar to serve", SETTLE, || async {
                let response = sidecar.chat(Some(&serving.token), MODEL).await?;
                Ok((response.status == 200).then_some(()))
            })
            .await?;
            sidecars.push(sidecar);
        }
        tokens
            .patch(
                "e2e-token",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"budgets": [
                    {"period": "Day", "maxCostUsd": LIMIT_USD,
                     "timeZone": fixtures::zone_far_from_midnight()}
                ]}})),
            )
            .await?;
        // Each replica enforces the budget once its report asks for a lease.
        let reports = s.api::<ConfigMap>();
        for (sidecar, pod) in sidecars.iter().zip(["e2e-pod", "e2e-pod-2", "e2e-pod-3"]) {
            s.wait_for("the replica to lease the budget", SETTLE, || async {
                sidecar.chat(Some(&serving.token), MODEL).await?;
                let report = reports.get_opt(&format!("policybind-usage-{pod}")).await?;
                let leasing = report
                    .and_then(|cm| cm.data)
                    .and_then(|d| d.get("leases.json").cloned())
                    .is_some_and(|json| json.contains("|usd"));
                Ok(leasing.then_some(()))
            })
            .await?;
        }
        let before = serving.upstream.received();
        let started = Instant::now();
        let refused_lease = Arc::new(AtomicU64::new(0));
        let ok = Arc::new(AtomicU64::new(0));
        let sidecars: Vec<Arc<_>> = sidecars.into_iter().map(Arc::new).collect();
        let mut workers = Vec::new();
        for sidecar in &sidecars {
            for _ in 0..CONCURRENCY {
                let (sidecar, token) = (sidecar.clone(), serving.token.clone());
                let (ok, refused_lease) = (ok.clone(), refused_lease.clone());
                workers.push(tokio::spawn(async move {
                    // Until this worker sees the budget spent 5 times in a row.
                    let mut exceeded = 0;
                    while exceeded < 5 && started.elapsed() < RUN_LIMIT {
                        let response = sidecar.chat(Some(&token), MODEL).await?;
                        match response.status {
                            200 => {
                                ok.fetch_add(1, Ordering::SeqCst);
                                exceeded = 0;
                            }
                            _ if response.mentions("BUDGET_EXCEEDED") => exceeded += 1,
                            _ if response.mentions("BUDGET_LEASE_UNAVAILABLE") => {
                                refused_lease.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            _ => bail!("unexpected answer: {}", response.summary()),
                        }
                    }
                    anyhow::Ok(exceeded >= 5)
                }));
            }
        }
        let mut all_saw_exhaustion = true;
        for worker in workers {
            all_saw_exhaustion &= worker.await??;
        }
        let took = started.elapsed();
        let admitted = serving.upstream.received() - before;
        let spent = admitted as f64 * COST_PER_REQUEST;
        flows::report_measurement(
            &s,
            &format!(
                "budgets: 3 replicas x {CONCURRENCY} workers, limit ${LIMIT_USD:.6} (100 requests): \
                 {admitted} admitted (${spent:.6}, {:.1}% of the limit), {} lease refusals, in {took:?}",
                100.0 * spent / LIMIT_USD,
                refused_lease.load(Ordering::SeqCst),
            ),
        );
        if spent > LIMIT_USD * (1.0 + 1e-9) {
            bail!(
                "replicas together spent ${spent:.6} of a ${LIMIT_USD:.6} budget ({admitted} requests)"
            );
        }
        if !all_saw_exhaustion {
            bail!(
                "the budget was not used up within {RUN_LIMIT:?}: {admitted} of 100 requests admitted"
            );
        }
        // Requests admitted while replicas were being set up spent part of the
        // budget before the count started, so fewer than 100 remain for it.
        // Grants a replica holds but does not spend are lost to the others
        // until the period ends: most of the budget must still be usable.
        if admitted < 30 {
            bail!("only {admitted} of 100 requests were admitted before the budget read as spent");
        }
        // What the replicas hold shows in the token's status, within the limit.
        let day = s
            .wait_for(
                "AccessToken e2e-token's status to show the replicas' grants",
                SETTLE,
                || async {
                    let token = s
                        .get_json("policybind.io/v1alpha1", "AccessToken", "e2e-token")
                        .await?;
                    Ok(token.and_then(|t| {
                        t["status"]["usage"]
                            .as_array()?
                            .iter()
                            .find(|u| {
                                u["period"] == "Day"
                                    && u["holders"].as_u64().is_some_and(|h| h >= 1)
                            })
                            .cloned()
                    }))
                },
            )
            .await?;
        let held = day["heldUsd"].as_f64().unwrap_or_default();
        if held <= 0.0 || held > LIMIT_USD * (1.0 + 1e-9) || day["resetsAt"].as_str().is_none() {
            bail!("status.usage of the day does not show grants within the limit: {day}");
        }
        flows::report_measurement(
            &s,
            &format!(
                "budgets: AccessToken status of the day: costUsd {}, heldUsd {held:.6} ({:.1}% of the limit) by {} holders, resetsAt {}",
                day["costUsd"],
                100.0 * held / LIMIT_USD,
                day["holders"],
                day["resetsAt"]
            ),
        );
        Ok(())
    });
}
