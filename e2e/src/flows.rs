//! Steps several scenarios share: a usable model, an issued token, a sidecar
//! that serves, and timing a change until the sidecar enforces it.
use policybind_crds::wire::keys;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

use crate::fixtures::{self, MODEL, ModelDeployment};
use crate::http::Response;
use crate::scenario::{Scenario, Sidecar};
use crate::upstream::Upstream;

/// How long the operator gets to bring a new object to its ready state.
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);

/// Wait until the operator reports the ModelDeployment `name` with the given
/// approval state(s) (`status.approval`).
pub async fn wait_model_approval(s: &Scenario, name: &str, states: &[&str]) -> Result<Value> {
    s.wait_for(
        &format!("ModelDeployment {name} with status.approval in {states:?}"),
        RECONCILE_TIMEOUT,
        || async {
            let object = s
                .get_json("policybind.io/v1alpha1", "ModelDeployment", name)
                .await?;
            Ok(object.filter(|o| {
                o["status"]["approval"]
                    .as_str()
                    .is_some_and(|state| states.contains(&state))
            }))
        },
    )
    .await
}

/// Wait until the AccessToken `name` has its Secret, and return the token value.
pub async fn wait_token_value(s: &Scenario, name: &str) -> Result<String> {
    let secret_name = s
        .wait_for(
            &format!("AccessToken {name} with status.secretName"),
            RECONCILE_TIMEOUT,
            || async {
                let object = s
                    .get_json("policybind.io/v1alpha1", "AccessToken", name)
                    .await?;
                Ok(object.and_then(|o| o["status"]["secretName"].as_str().map(str::to_string)))
            },
        )
        .await?;
    let secrets = s.api::<Secret>();
    let secret = s
        .wait_for(
            &format!("Secret {secret_name}"),
            RECONCILE_TIMEOUT,
            || async { Ok(secrets.get_opt(&secret_name).await?) },
        )
        .await?;
    let value = secret
        .data
        .as_ref()
        .and_then(|data| data.get(keys::TOKEN))
        .with_context(|| format!("Secret {secret_name} has no data key `token`"))?;
    let owner = secret
        .metadata
        .owner_references
        .as_ref()
        .and_then(|refs| refs.iter().find(|r| r.kind == "AccessToken"));
    if owner.is_none_or(|o| o.name != name) {
        bail!("Secret {secret_name} is not owned by AccessToken {name}");
    }
    String::from_utf8(value.0.clone()).context("token value is not UTF-8")
}

/// Everything needed to send allowed requests through a sidecar.
pub struct Serving {
    pub upstream: Upstream,
    pub sidecar: Sidecar,
    pub token: String,
    pub model_deployment: String,
}

/// Register a low-risk model, allow it, issue a token, start a sidecar and
/// wait until a request goes through to the upstream.
pub async fn serving(s: &Scenario) -> Result<Serving> {
    s.enforce().await?;
    let model_deployment = "e2e-model".to_string();
    s.apply(&ModelDeployment::new(&model_deployment).build())
        .await?;
    s.apply(&fixtures::policy(
        "allow-e2e",
        100,
        "Allow",
        &[MODEL],
        "E2E_ALLOWED",
    ))
    .await?;
    s.apply(&fixtures::access_token("e2e-token", &[MODEL]))
        .await?;
    wait_model_approval(s, &model_deployment, &["NotRequired", "Approved"]).await?;
    let token = wait_token_value(s, "e2e-token").await?;
    let pod = fixtures::model_pod("e2e-pod", &model_deployment);
    let (upstream, sidecar) = serve_through_pod(s, &pod, &token, MODEL).await?;
    Ok(Serving {
        upstream,
        sidecar,
        token,
        model_deployment,
    })
}

/// Create the model pod `pod` (admitted and injected by the webhook), run its
/// sidecar in front of a fresh fake upstream, and wait until a request with
/// `token` for `model` goes through to that upstream.
pub async fn serve_through_pod(
    s: &Scenario,
    pod: &Value,
    token: &str,
    model: &str,
) -> Result<(Upstream, Sidecar)> {
    let name = pod["metadata"]["name"]
        .as_str()
        .context("pod without a name")?;
    let upstream = Upstream::start().await?;
    s.create_pod(pod)
        .await
        .with_context(|| format!("create the model pod {name}"))?;
    let sidecar = s.start_sidecar(&upstream, name).await?;
    let first = s
        .wait_for(
            "the sidecar to let a request through",
            RECONCILE_TIMEOUT,
            || async {
                let response = sidecar.chat(Some(token), model).await?;
                Ok((response.status == 200).then_some(response))
            },
        )
        .await
        .with_context(|| format!("sidecar log:\n{}", sidecar.log_tail()))?;
    if upstream.received() == 0 {
        bail!(
            "sidecar answered 200 without calling the upstream: {}",
            first.summary()
        );
    }
    Ok((upstream, sidecar))
}

/// Send requests every 20 ms from `start` until one is refused (status 401,
/// 403 or 429) with one of `codes`; returns the time it took and the response.
pub async fn time_until_refused(
    serving: &Serving,
    start: Instant,
    codes: &[&str],
    limit: Duration,
) -> Result<(Duration, Response)> {
    let mut last = None;
    while start.elapsed() < limit * 3 {
        let response = serving.sidecar.chat(Some(&serving.token), MODEL).await?;
        if matches!(response.status, 401 | 403 | 429) && codes.iter().any(|c| response.mentions(c))
        {
            return Ok((start.elapsed(), response));
        }
        last = Some(response);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = last.map(|r| r.summary()).unwrap_or_default();
    bail!(
        "no refusal with {codes:?} within {:?}; last answer: {last}\nsidecar log:\n{}",
        limit * 3,
        serving.sidecar.log_tail()
    )
}

/// Print a measured propagation time and append it to the suite's report.
pub fn report_propagation(s: &Scenario, what: &str, took: Duration) {
    report_measurement(
        s,
        &format!(
            "propagation {what}: {} ms (limit {} ms, mode {:?})",
            took.as_millis(),
            s.settings.propagation_limit.as_millis(),
            s.settings.mode
        ),
    );
}

/// Print a measurement and append it to `target/e2e-logs/measurements.txt`,
/// the suite's report, which `e2e/run.sh` prints at the end (a passing test's
/// output is otherwise captured).
pub fn report_measurement(s: &Scenario, line: &str) {
    println!("{line}");
    let path = s.settings.log_dir.join("measurements.txt");
    let _ = std::fs::create_dir_all(&s.settings.log_dir);
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, format!("{line}\n").as_bytes()));
}
