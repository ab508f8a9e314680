//! Reports: requests through a sidecar and a refused pod show up, counted and
//! bounded, in the namespace's OpenReports `policybind-requests` and
//! `policybind-admission` (docs/operator.md, "Reports"). The Report CRD is the
//! test fixture e2e/fixtures/openreports-crd.yaml, applied before the operator
//! starts. When the namespace leaves enforcement, both reports are deleted.
use std::time::Duration;

use anyhow::{Context, bail};
use policybind_crds::wire::{labels, names};
use policybind_e2e::fixtures::{self, MODEL};
use policybind_e2e::flows::serving;
use policybind_e2e::scenario;
use policybind_e2e::scenario::Scenario;
use serde_json::Value;

/// Reports are written every 5 s in e2e (`reports.intervalSeconds`); sidecars
/// publish with their usage report every 5 s.
const REPORT_TIMEOUT: Duration = Duration::from_secs(60);

/// The Report `name` once `ready` holds for it.
async fn wait_report(
    s: &Scenario,
    name: &str,
    ready: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    s.wait_for(&format!("Report {name}"), REPORT_TIMEOUT, || async {
        let report = s
            .get_json("openreports.io/v1alpha1", "Report", name)
            .await?;
        Ok(report.filter(|r| ready(r)))
    })
    .await
}

fn result<'a>(report: &'a Value, policy: &str, rule: &str, outcome: &str) -> Option<&'a Value> {
    report["results"]
        .as_array()?
        .iter()
        .find(|r| r["policy"] == policy && r["rule"] == rule && r["result"] == outcome)
}

fn count(result: Option<&Value>) -> u64 {
    result
        .and_then(|r| r["properties"]["count"].as_str())
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn request_and_admission_decisions_reach_the_namespaces_reports() {
    scenario("reports", |s| async move {
        // One allowed request inside serving(), three more here, two with a
        // forged token.
        let serving = serving(&s).await?;
        for _ in 0..3 {
            let ok = serving.sidecar.chat(Some(&serving.token), MODEL).await?;
            assert_eq!(ok.status, 200, "{}", ok.text());
        }
        for _ in 0..2 {
            let forged = serving.sidecar.chat(Some("pb_forged-value"), MODEL).await?;
            assert_eq!(forged.status, 401, "{}", forged.summary());
        }
        // A pod declaring a model nobody registered: refused at admission.
        if s.try_apply(&fixtures::model_pod("rogue", "no-such-model"))
            .await
            .is_ok()
        {
            bail!("the pod of an unregistered model was admitted");
        }

        let allowed_policy = format!("{}/allow-e2e", s.namespace);
        let requests = wait_report(&s, names::REQUESTS_REPORT, |r| {
            count(result(r, &allowed_policy, "allow-rule", "pass")) >= 4
                && count(result(
                    r,
                    "policybind.io/built-in",
                    "authentication",
                    "fail",
                )) >= 2
        })
        .await
        .with_context(|| format!("sidecar log:\n{}", serving.sidecar.log_tail()))?;
        assert_eq!(requests["apiVersion"], "openreports.io/v1alpha1");
        assert_eq!(requests["source"], "policybind");
        assert_eq!(requests["scope"]["name"], s.namespace.as_str());
        assert!(
            requests["summary"]["pass"].as_u64().unwrap_or(0) >= 4,
            "{requests}"
        );
        assert!(
            requests["summary"]["fail"].as_u64().unwrap_or(0) >= 2,
            "{requests}"
        );
        let pass = result(&requests, &allowed_policy, "allow-rule", "pass").unwrap();
        assert_eq!(pass["scored"], true);
        assert!(
            pass["properties"]["codes"]
                .as_str()
                .unwrap_or("")
                .contains("E2E_ALLOWED"),
            "{pass}"
        );
        let example = pass["properties"]["example.1"].as_str().unwrap_or("");
        assert!(example.contains(&format!("model={MODEL}")), "{example}");
        assert!(
            pass["timestamp"]["seconds"].as_i64().unwrap_or(0) > 0,
            "{pass}"
        );
        let denied = result(
            &requests,
            "policybind.io/built-in",
            "authentication",
            "fail",
        )
        .unwrap();
        assert!(
            denied["properties"]["codes"]
                .as_str()
                .unwrap_or("")
                .contains("TOKEN_UNKNOWN"),
            "{denied}"
        );
        // Summaries, not secrets: neither the token nor the forged value appears.
        let text = requests.to_string();
        assert!(!text.contains(&serving.token) && !text.contains("pb_forged-value"));

        let admission = wait_report(&s, names::ADMISSION_REPORT, |r| {
            count(result(r, "policybind.io/admission", "validate-pod", "fail")) >= 1
                && count(result(r, "policybind.io/admission", "mutate-pod", "pass")) >= 1
        })
        .await?;
        let refused = result(
            &admission,
            "policybind.io/admission",
            "validate-pod",
            "fail",
        )
        .unwrap();
        assert!(
            refused["properties"]["codes"]
                .as_str()
                .unwrap_or("")
                .contains("MODEL_NOT_REGISTERED"),
            "{refused}"
        );
        let examples: Vec<&str> = (1..=3)
            .filter_map(|i| refused["properties"][format!("example.{i}")].as_str())
            .collect();
        assert!(
            examples.iter().any(|e| e.contains("object=Pod/rogue")),
            "{examples:?}"
        );

        // The namespace leaves enforcement: both reports go, deleted by the
        // operator under the chart's identity.
        drop(serving);
        s.label_namespace(labels::ENFORCE, "false").await?;
        for name in [names::REQUESTS_REPORT, names::ADMISSION_REPORT] {
            s.wait_for(
                &format!("Report {name} deleted once the namespace is not enforced"),
                REPORT_TIMEOUT,
                || async {
                    let report = s
                        .get_json("openreports.io/v1alpha1", "Report", name)
                        .await?;
                    Ok(report.is_none().then_some(()))
                },
            )
            .await?;
        }
        Ok(())
    });
}
