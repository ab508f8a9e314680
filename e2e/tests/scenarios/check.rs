//! `policybind check` against the real API server, under the chart's read-only
//! `<release>-check` ServiceAccount (as the `helm test` pod runs it): healthy
//! after install, and naming the bundle an admin deleted.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::DeleteParams;
use policybind_crds::wire;
use policybind_e2e::identity::{kubeconfig_with_token, service_account_token};
use policybind_e2e::{Scenario, scenario};
use serde_json::Value;

/// A kubeconfig holding a token of the chart's check ServiceAccount.
async fn check_kubeconfig(s: &Scenario) -> anyhow::Result<PathBuf> {
    let account = format!("{}-check", s.settings.fullname());
    let token = service_account_token(
        &s.client,
        &s.settings.system_namespace,
        &account,
        None,
        Duration::from_secs(600),
    )
    .await?;
    let path = s
        .system
        .work_dir
        .join(format!("kubeconfig-check-{}", s.namespace));
    kubeconfig_with_token(&token, &path)
}

/// Runs `policybind check -o json` and returns its exit code and report.
async fn run_check(s: &Scenario, kubeconfig: &std::path::Path) -> anyhow::Result<(i32, Value)> {
    let lease = format!("{}-operator", s.settings.fullname());
    let output = s
        .policybind(&[
            "check",
            "--kubeconfig",
            &kubeconfig.to_string_lossy(),
            "--namespace",
            &s.settings.system_namespace,
            "--lease-name",
            &lease,
            "--output",
            "json",
        ])
        .await?;
    let code = output.status.code().unwrap_or(-1);
    if code == 2 {
        bail!(
            "check could not run: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let report = serde_json::from_slice(&output.stdout).context("check's JSON report")?;
    Ok((code, report))
}

/// Lines about the cluster as a whole and about this scenario's namespace;
/// other scenarios' namespaces change underneath while they run.
fn ours<'a>(report: &'a Value, namespace: &str) -> Vec<&'a Value> {
    report["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|line| {
            let text = line["check"].as_str().unwrap_or_default();
            let global = matches!(
                line["group"].as_str(),
                Some("crds" | "webhook" | "operator")
            ) || text.contains("operator/*")
                || text.contains("webhook/*")
                || text.starts_with("keyring ");
            global
                || text.contains(&format!(" {namespace} "))
                || text.contains(&format!("/{namespace}/"))
        })
        .collect()
}

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn check_passes_after_install_and_names_a_deleted_bundle() {
    scenario("check", |s| async move {
        s.enforce().await?;
        let home = s.settings.system_namespace.clone();
        let bundles: Api<ConfigMap> = Api::namespaced(s.client.clone(), &home);
        let bundle = wire::bundle_config_map(&s.namespace);
        // Not a propagation measurement (the enforcement scenarios are): a
        // `check` run itself takes a second or more on a loaded machine.
        let limit = s.settings.propagation_limit.max(Duration::from_secs(15));
        // The first bundle of a new namespace: not the propagation target, and the
        // operator may be busy with the other scenarios' namespaces.
        s.wait_for("the namespace's bundle", limit, || async {
            Ok(bundles.get_opt(&bundle).await?.map(|_| ()))
        })
        .await?;
        let kubeconfig = check_kubeconfig(&s).await?;
        // The keyring gains the namespace's key shortly after the bundle.
        let ns = s.namespace.clone();
        let healthy = s
            .wait_for("check to pass for this namespace", limit, || async {
                let (_, report) = run_check(&s, &kubeconfig).await?;
                let lines = ours(&report, &ns);
                let ok = lines.iter().all(|l| l["verdict"] != "fail");
                Ok(ok.then_some(report))
            })
            .await?;
        let lines = ours(&healthy, &ns);
        for expected in [
            format!("bundle of {ns} is present and current"),
            format!("an audit key signs for sidecars in {ns} (sidecar/{ns}/*)"),
        ] {
            assert!(
                lines.iter().any(|l| l["check"]
                    .as_str()
                    .is_some_and(|c| c.starts_with(&expected))),
                "no line {expected:?} in {healthy:#}"
            );
        }

        // An admin deletes the bundle. The operator rewrites it within its
        // debounce, so `check` either sees it missing (exit 1, the exact line)
        // or sees a new object (another uid) carrying the same fingerprint.
        let before = bundles.get(&bundle).await?;
        bundles.delete(&bundle, &DeleteParams::default()).await?;
        let (code, report) = run_check(&s, &kubeconfig).await?;
        let problem = format!(
            "bundle {home}/{bundle}: ConfigMap {bundle} is missing: new sidecars in {ns} cannot start and fail closed"
        );
        let failed = report["checks"].as_array().into_iter().flatten().find(|l| {
            l["verdict"] == "fail" && l["check"] == format!("bundle of {ns} is present and current")
        });
        match failed {
            Some(line) => {
                assert_eq!(code, 1, "{report:#}");
                assert_eq!(line["problem"], problem.as_str());
                assert!(
                    line["run"]
                        .as_str()
                        .unwrap()
                        .starts_with(&format!("kubectl -n {home} get configmap {bundle} -o yaml"))
                );
            }
            None => {
                let after = bundles.get(&bundle).await?;
                assert_ne!(
                    after.metadata.uid, before.metadata.uid,
                    "check passed on a deleted bundle: {report:#}"
                );
            }
        }
        s.wait_for(
            "check to pass again once the operator rewrote the bundle",
            limit,
            || async {
                let (_, report) = run_check(&s, &kubeconfig).await?;
                Ok(ours(&report, &ns)
                    .iter()
                    .all(|l| l["verdict"] != "fail")
                    .then_some(()))
            },
        )
        .await
    });
}
