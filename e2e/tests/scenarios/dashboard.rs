//! The dashboard in a real browser: `policybind dashboard` runs under the
//! chart's dashboard ServiceAccount against the real API server, a viewer
//! ServiceAccount with a Role in this namespace only signs in, and headless
//! Chromium (Debian's, driven by Playwright: e2e/browser/dashboard.mjs) clicks
//! through every page, asserts what it shows and saves screenshots to
//! `target/dashboard-screenshots/`.
//!
//! Skips with a message (does not fail) when Chromium or e2e/browser's
//! node_modules are absent; `.ci/run` installs both before the e2e suite.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::ConfigMap;
use policybind_crds::wire;
use policybind_e2e::fixtures::{self, MODEL};
use policybind_e2e::flows::{RECONCILE_TIMEOUT, Serving, serving, time_until_refused};
use policybind_e2e::http::wait_ok;
use policybind_e2e::identity::{
    IDENTITY_KINDS, Rendered, apply_documents, kubeconfig_with_token, service_account_token,
};
use policybind_e2e::process::{Process, free_port};
use policybind_e2e::{Scenario, scenario};
use serde_json::{Value, json};

const VIEWER: &str = "dashboard-viewer";
const APPROVAL: &str = "e2e-go-live";
const INCIDENT: &str = "e2e-repeated-denials";
const BLOCK_POLICY: &str = "block-e2e";
const BLOCK_RULE: &str = "block";
const BLOCK_CODE: &str = "E2E_BLOCKED";
const BLOCK_MESSAGE: &str = "E2E: this model is blocked while the dashboard is tested";

/// Why the browser test cannot run here, if it cannot.
fn browser_missing(settings_root: &Path) -> Option<String> {
    let chromium = chromium();
    if !chromium.is_file() {
        return Some(format!(
            "{} not found (apt-get install -y chromium, or set POLICYBIND_E2E_CHROMIUM)",
            chromium.display()
        ));
    }
    let playwright = settings_root.join("e2e/browser/node_modules/playwright-core");
    if !playwright.is_dir() {
        return Some(format!(
            "{} not found (run `npm ci` in e2e/browser)",
            playwright.display()
        ));
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("node not found on PATH".into());
    }
    None
}

fn chromium() -> PathBuf {
    std::env::var_os("POLICYBIND_E2E_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn a_viewer_clicks_through_every_dashboard_page_in_chromium() {
    if let Some(why) = browser_missing(&policybind_e2e::Settings::get().repo_root) {
        println!("SKIPPED dashboard browser test: {why}");
        return;
    }
    scenario("dashboard", |s| async move {
        let serving = serving(&s).await?;
        make_decisions(&s, &serving).await?;
        wait_for_usage(&s).await?;
        // Stop the sidecar: it seals its segments, so the trail verifies.
        drop(serving);
        let verified = s.audit_verify().await?;
        if !verified.status.success() {
            bail!(
                "audit verify fails before the dashboard looks:\n{}",
                String::from_utf8_lossy(&verified.stdout)
            );
        }
        create_queue_items(&s).await?;
        let viewer_token = create_viewer(&s).await?;
        let (dashboard, url) = start_dashboard(&s).await?;
        let result = run_browser(&s, &url, &viewer_token).await;
        if result.is_err() {
            eprintln!("dashboard log:\n{}", dashboard.log_tail(40));
        }
        result
    });
}

/// Allowed requests, one without a token, then a Deny rule with a message
/// until the sidecar enforces it; the token gets a budget to burn.
async fn make_decisions(s: &Scenario, serving: &Serving) -> Result<()> {
    let mut token = fixtures::access_token("e2e-token", &[MODEL]);
    token["spec"]["budgets"] = json!([{"period": "Day", "maxCostUsd": 5.0, "maxTokens": 100000}]);
    s.apply(&token).await?;
    // Requests count against the budget once the sidecar holds the bundle
    // with it: send until its usage report carries the token's spend.
    let reports = s.api::<ConfigMap>();
    s.wait_for(
        "the sidecar's usage report to count the token's spend",
        RECONCILE_TIMEOUT,
        || async {
            serving.sidecar.chat(Some(&serving.token), MODEL).await?;
            let report = reports.get_opt("policybind-usage-e2e-pod").await?;
            let counted = report
                .and_then(|cm| cm.data)
                .and_then(|d| d.get(wire::keys::USAGE).cloned())
                .is_some_and(|json| json.contains("e2e-token"));
            Ok(counted.then_some(()))
        },
    )
    .await?;
    serving.sidecar.chat(None, MODEL).await?;
    s.apply(&json!({
        "apiVersion": "policybind.io/v1alpha1",
        "kind": "AIPolicy",
        "metadata": {"name": BLOCK_POLICY},
        "spec": {"priority": 500, "rules": [{
            "name": BLOCK_RULE, "match": {"models": [MODEL]}, "action": "Deny",
            "code": BLOCK_CODE, "message": BLOCK_MESSAGE,
        }]}
    }))
    .await?;
    time_until_refused(
        serving,
        Instant::now(),
        &[BLOCK_CODE],
        Duration::from_secs(10),
    )
    .await?;
    Ok(())
}

/// Until the operator reports the token's usage of the day in its status.
async fn wait_for_usage(s: &Scenario) -> Result<()> {
    let waited = s
        .wait_for(
            "AccessToken e2e-token with usage in its status",
            Duration::from_secs(90),
            || async {
                let token = s
                    .get_json("policybind.io/v1alpha1", "AccessToken", "e2e-token")
                    .await?;
                Ok(token.filter(|t| {
                    t["status"]["usage"]
                        .as_array()
                        .is_some_and(|usage| usage.iter().any(|u| u["tokens"].as_u64() > Some(0)))
                }))
            },
        )
        .await;
    if let Err(error) = waited {
        let token = s
            .get_json("policybind.io/v1alpha1", "AccessToken", "e2e-token")
            .await?;
        let reports = s
            .api::<ConfigMap>()
            .list(&kube::api::ListParams::default().labels(wire::labels::USAGE))
            .await?;
        let reports: Vec<_> = reports
            .items
            .into_iter()
            .map(|cm| (cm.metadata.name, cm.data))
            .collect();
        bail!(
            "{error:#}\ntoken status: {}\nusage reports: {reports:?}",
            token.map(|t| t["status"].to_string()).unwrap_or_default()
        );
    }
    Ok(())
}

/// A pending ApprovalRequest and an open Incident.
async fn create_queue_items(s: &Scenario) -> Result<()> {
    s.apply(&json!({
        "apiVersion": "policybind.io/v1alpha1",
        "kind": "ApprovalRequest",
        "metadata": {"name": APPROVAL},
        "spec": {
            "target": {"kind": "ModelDeployment", "name": "e2e-model"},
            "requester": "e2e-requester@example.com",
            "reason": "Go-live review for the dashboard test",
        }
    }))
    .await?;
    s.apply(&json!({
        "apiVersion": "policybind.io/v1alpha1",
        "kind": "Incident",
        "metadata": {"name": INCIDENT},
        "spec": {
            "pattern": "repeated-denials",
            "subject": "team:e2e",
            "severity": "High",
            "state": "Open",
            "summary": "Requests to the blocked model kept coming",
        }
    }))
    .await?;
    Ok(())
}

/// A ServiceAccount that may list what the pages show in this namespace only;
/// returns its token.
async fn create_viewer(s: &Scenario) -> Result<String> {
    s.apply(&json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": VIEWER}}))
        .await?;
    s.apply(&json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": VIEWER},
        "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]},
            {"apiGroups": ["policybind.io"],
             "resources": ["approvalrequests", "modeldeployments", "accesstokens", "incidents"],
             "verbs": ["list"]},
        ]
    }))
    .await?;
    s.apply(&json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": VIEWER},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": VIEWER},
        "subjects": [{"kind": "ServiceAccount", "name": VIEWER, "namespace": s.namespace}],
    }))
    .await?;
    service_account_token(
        &s.client,
        &s.namespace,
        VIEWER,
        None,
        Duration::from_secs(900),
    )
    .await
}

/// `policybind dashboard` under the chart's dashboard ServiceAccount (its
/// identity applied from the chart rendered with `dashboard.enabled`).
async fn start_dashboard(s: &Scenario) -> Result<(Process, String)> {
    let settings = s.settings;
    let name = format!("{}-dashboard", settings.fullname());
    let rendered = Rendered::render(
        settings,
        &settings.release,
        &settings.system_namespace,
        &json!({"webhook": {"replicas": 1, "certificate": {"mode": "self-signed"}},
                "dashboard": {"enabled": true}}),
    )?;
    let identity: Vec<&Value> = rendered
        .of_kinds(IDENTITY_KINDS)
        .filter(|d| d["metadata"]["name"] == name.as_str())
        .collect();
    if identity.len() != 5 {
        bail!(
            "the chart renders {} dashboard identity documents, expected 5",
            identity.len()
        );
    }
    apply_documents(&s.client, identity).await?;
    let token = service_account_token(
        &s.client,
        &settings.system_namespace,
        &name,
        None,
        Duration::from_secs(900),
    )
    .await?;
    let kubeconfig = kubeconfig_with_token(
        &token,
        &s.system
            .work_dir
            .join(format!("kubeconfig-dashboard-{}", s.namespace)),
    )?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let process = Process::start(
        "dashboard",
        &settings.binary,
        &[
            "dashboard".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--listen".into(),
            listen.clone(),
            "--namespace".into(),
            settings.system_namespace.clone(),
            "--refresh".into(),
            "1s".into(),
        ],
        &[("RUST_LOG".into(), "info".into())],
        settings
            .log_dir
            .join(format!("dashboard-{}.log", s.namespace)),
    )?;
    wait_ok(&listen, "/healthz", Duration::from_secs(20)).await?;
    Ok((process, format!("http://{listen}")))
}

/// Runs e2e/browser/dashboard.mjs in Chromium as the viewer.
async fn run_browser(s: &Scenario, url: &str, viewer_token: &str) -> Result<()> {
    let root = &s.settings.repo_root;
    let screenshots = root.join("target/dashboard-screenshots");
    let expect = json!({
        "user": format!("system:serviceaccount:{}:{VIEWER}", s.namespace),
        "namespace": s.namespace,
        "hidden": s.settings.system_namespace,
        "model": "e2e-model",
        "token": "e2e-token",
        "approval": APPROVAL,
        "incident": INCIDENT,
        "allowCode": "E2E_ALLOWED",
        "denyCode": BLOCK_CODE,
        "policy": format!("{}/{BLOCK_POLICY}", s.namespace),
        "rule": BLOCK_RULE,
        "message": BLOCK_MESSAGE,
    });
    let output = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new("node")
            .arg("dashboard.mjs")
            .current_dir(root.join("e2e/browser"))
            .env("DASHBOARD_URL", url)
            .env("DASHBOARD_TOKEN", viewer_token)
            .env("DASHBOARD_EXPECT", expect.to_string())
            .env("SCREENSHOT_DIR", &screenshots)
            .env("CHROMIUM", chromium())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the browser test did not finish within 180 s")?
    .context("run node e2e/browser/dashboard.mjs")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "the browser test failed ({}):\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The script's last line: every page's size and load time.
    let report = screenshots.join("browser-report.json");
    std::fs::write(&report, stdout.trim())
        .with_context(|| format!("write {}", report.display()))?;
    println!(
        "browser test passed: screenshots and browser-report.json in {}",
        screenshots.display()
    );
    Ok(())
}
