//! Budget scopes on a real API server (docs/sidecar.md, "Budget scopes"): an
//! AIBudget the webhook cannot enforce is refused at apply time; a Team
//! AIBudget reaches the sidecar in its namespace's bundle, is leased from the
//! operator's ledger like a token's budget (each process under its chart
//! identity), refuses with TEAM_BUDGET_EXCEEDED once spent, and shows its
//! spend and holdings in status.

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
