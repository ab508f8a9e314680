//! Budget scopes on a real API server (docs/sidecar.md, "Budget scopes"): an
//! AIBudget the webhook cannot enforce is refused at apply time; a Team
//! AIBudget reaches the sidecar in its namespace's bundle, is leased from the
//! operator's ledger like a token's budget (each process under its chart
//! identity), refuses with TEAM_BUDGET_EXCEEDED once spent, and shows its
//! spend and holdings in status. A rolling window (docs/sidecar.md, "Rolling
//! windows") is leased per UTC bucket and counted over the last 24 hours.

use std::time::Duration;

use anyhow::bail;
use policybind_e2e::fixtures::{MODEL, TEAM};
use policybind_e2e::flows::{self, serving};
use policybind_e2e::scenario;
use serde_json::json;

/// Longest the operator and the sidecar may take to act on the AIBudget.
const SETTLE: Duration = Duration::from_secs(60);
/// Tokens the team may spend: a handful of the fake upstream's requests.
const TEAM_TOKENS: u64 = 200;

fn team_budget(time_zone: &str) -> serde_json::Value {
    json!({
        "apiVersion": "policybind.io/v1alpha1",
        "kind": "AIBudget",
        "metadata": {"name": "e2e-team"},
        "spec": {
            "scope": "Team",
            "team": TEAM,
            "budgets": [{"period": "Day", "maxTokens": TEAM_TOKENS, "timeZone": time_zone}],
        }
    })
}

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn a_team_budget_is_leased_enforced_with_its_code_and_shows_its_spend() {
    scenario("scopes", |s| async move {
        let serving = serving(&s).await?;
        match s.try_apply(&team_budget("Mars/Olympus")).await {
            Ok(_) => bail!("an AIBudget with an unknown time zone was admitted"),
            Err(e) if e.to_string().contains("timeZone") => {}
            Err(e) => bail!("refused for another reason: {e}"),
        }
        s.apply(&team_budget("Europe/Berlin")).await?;
        let served = std::sync::atomic::AtomicU64::new(0);
        let refusal = s
            .wait_for("the team budget to refuse", SETTLE, || async {
                let response = serving.sidecar.chat(Some(&serving.token), MODEL).await?;
                match response.status {
                    200 => {
                        served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Ok(None)
                    }
                    _ if response.mentions("TEAM_BUDGET_EXCEEDED") => Ok(Some(response)),
                    // Until the operator granted the sidecar a slice.
                    _ if response.mentions("BUDGET_LEASE_UNAVAILABLE") => Ok(None),
                    _ => bail!("unexpected answer: {}", response.summary()),
                }
            })
            .await?;
        if !refusal.mentions("AIBudget") || refusal.status != 429 {
            bail!(
                "the refusal does not name the AIBudget: {}",
                refusal.summary()
            );
        }
        let usage = s
            .wait_for(
                "AIBudget e2e-team's status to show the spend",
                SETTLE,
                || async {
                    let budget = s
                        .get_json("policybind.io/v1alpha1", "AIBudget", "e2e-team")
                        .await?;
                    Ok(budget.and_then(|b| {
                        let ready = b["status"]["conditions"]
                            .as_array()?
                            .iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True");
                        let day = b["status"]["usage"].as_array()?.first()?.clone();
                        (ready && day["tokens"].as_u64().unwrap_or(0) > 0).then_some(day)
                    }))
                },
            )
            .await?;
        let served = served.into_inner();
        let spent = usage["tokens"].as_u64().unwrap_or(0);
        if spent > TEAM_TOKENS {
            bail!("the team spent {spent} tokens of {TEAM_TOKENS}: {usage}");
        }
        flows::report_measurement(
            &s,
            &format!(
                "scopes: Team AIBudget of {TEAM_TOKENS} tokens/day: {served} served before \
                 TEAM_BUDGET_EXCEEDED; status tokens {spent}, heldTokens {}, holders {}, resetsAt {}",
                usage["heldTokens"], usage["holders"], usage["resetsAt"]
            ),
        );
        Ok(())
    });
}

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn a_rolling_budget_is_leased_per_bucket_and_counts_the_last_24_hours() {
    scenario("scopes-rolling", |s| async move {
        let serving = serving(&s).await?;
        s.apply(&json!({
            "apiVersion": "policybind.io/v1alpha1",
            "kind": "AIBudget",
            "metadata": {"name": "e2e-rolling"},
            "spec": {
                "scope": "Namespace",
                "budgets": [{"period": "Day", "window": "Rolling", "maxTokens": TEAM_TOKENS}],
            }
        }))
        .await?;
        let served = std::sync::atomic::AtomicU64::new(0);
        s.wait_for("the rolling budget to refuse", SETTLE, || async {
            let response = serving.sidecar.chat(Some(&serving.token), MODEL).await?;
            match response.status {
                200 => {
                    served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(None)
                }
                _ if response.mentions("NAMESPACE_BUDGET_EXCEEDED") => Ok(Some(())),
                _ if response.mentions("BUDGET_LEASE_UNAVAILABLE") => Ok(None),
                _ => bail!("unexpected answer: {}", response.summary()),
            }
        })
        .await?;
        // The window counts from the start of this UTC hour, a day back.
        let now = chrono::Utc::now();
        let bucket =
            policybind_engine::schedule::bucket_start(policybind_crds::BudgetPeriod::Day, now);
        let window_start = bucket - chrono::Duration::hours(24);
        let usage = s
            .wait_for(
                "AIBudget e2e-rolling's status to show the spend",
                SETTLE,
                || async {
                    let budget = s
                        .get_json("policybind.io/v1alpha1", "AIBudget", "e2e-rolling")
                        .await?;
                    Ok(budget.and_then(|b| {
                        let day = b["status"]["usage"].as_array()?.first()?.clone();
                        (day["tokens"].as_u64().unwrap_or(0) > 0).then_some(day)
                    }))
                },
            )
            .await?;
        let start: chrono::DateTime<chrono::Utc> =
            usage["periodStart"].as_str().unwrap_or_default().parse()?;
        let resets: chrono::DateTime<chrono::Utc> =
            usage["resetsAt"].as_str().unwrap_or_default().parse()?;
        // (Within an hour boundary crossed during the run.)
        let hour = chrono::Duration::hours(1);
        if !(start == window_start || start == window_start + hour)
            || !(resets == bucket + hour || resets == bucket + hour * 2)
        {
            bail!("status is not a rolling day from {window_start}: {usage}");
        }
        let spent = usage["tokens"].as_u64().unwrap_or(0);
        if spent > TEAM_TOKENS {
            bail!("spent {spent} tokens of {TEAM_TOKENS}: {usage}");
        }
        // The operator's ledger leased the window's current bucket.
        let ledger: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(s.client.clone(), &s.settings.system_namespace);
        let cm = ledger
            .get(&format!("policybind-ledger.{}", s.namespace))
            .await?;
        let json = cm
            .data
            .as_ref()
            .and_then(|d| d.get("ledger.json"))
            .cloned()
            .unwrap_or_default();
        let owner = format!("AIBudget:{}/e2e-rolling", s.namespace);
        let leased: Vec<String> = serde_json::from_str::<serde_json::Value>(&json)?["keys"]
            .as_object()
            .map(|keys| {
                keys.keys()
                    .filter(|k| k.starts_with(&format!("{owner}|Day|")))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let bucket_key = |b: chrono::DateTime<chrono::Utc>| {
            format!(
                "{owner}|Day|{}|tokens",
                b.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        };
        if !leased
            .iter()
            .any(|k| *k == bucket_key(bucket) || *k == bucket_key(bucket + hour))
        {
            bail!("no key of the current bucket in the ledger: {leased:?}");
        }
        flows::report_measurement(
            &s,
            &format!(
                "scopes: rolling Day AIBudget of {TEAM_TOKENS} tokens: {} served before \
                 NAMESPACE_BUDGET_EXCEEDED; status tokens {spent}, periodStart {start}, \
                 resetsAt {resets}; ledger keys {leased:?}",
                served.into_inner()
            ),
        );
        Ok(())
    });
}
