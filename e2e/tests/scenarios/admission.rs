//! Admission: invalid policies are refused with their message; pods that
//! declare an unregistered or unapproved model are denied, an approved one is
//! admitted and gets the sidecar exactly once.
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use policybind_e2e::fixtures::{self, ModelDeployment, sidecar_count};
use policybind_e2e::flows::wait_model_approval;
use policybind_e2e::scenario;
use policybind_e2e::scenario::{ApplyError, Scenario};
use serde_json::Value;

/// Apply `manifest`, expecting the API server to refuse it; returns the message.
async fn refused(s: &Scenario, manifest: &Value) -> Result<String> {
    match s.try_apply(manifest).await {
        Ok(_) => bail!(
            "{} {} was admitted; expected a denial",
            manifest["kind"],
            manifest["metadata"]["name"]
        ),
        Err(ApplyError::Refused { code, message }) => {
            if !(400..500).contains(&code) {
                bail!("refused with {code} (not a 4xx denial): {message}");
            }
            Ok(message)
        }
        Err(error) => Err(error.into()),
    }
}

async fn create_pod(s: &Scenario, manifest: &Value) -> Result<Value> {
    let pod: Pod = serde_json::from_value(manifest.clone())?;
    let created = s.api::<Pod>().create(&PostParams::default(), &pod).await?;
    Ok(serde_json::to_value(created)?)
}

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn invalid_policy_is_rejected_with_its_message() {
    scenario("invalid-policy", |s| async move {
        let message = refused(&s, &fixtures::invalid_policy("broken-cel")).await?;
        // The webhook names the rule and field that does not compile.
        if !(message.contains("spec.rules[0].when") || message.contains("broken")) {
            bail!("denial does not say what is wrong: {message}");
        }
        let stored = s
            .get_json("policybind.io/v1alpha1", "AIPolicy", "broken-cel")
            .await?;
        assert!(stored.is_none(), "a refused policy must not be stored");
        // The valid counterpart is accepted: the denial was about the CEL.
        s.apply(&fixtures::policy(
            "fine",
            100,
            "Allow",
            &[fixtures::MODEL],
            "E2E_OK",
        ))
        .await?;
        Ok(())
    });
}

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn pod_with_unregistered_model_is_denied() {
    scenario("unregistered-model", |s| async move {
        s.enforce().await?;
        let message = refused(&s, &fixtures::model_pod("rogue", "no-such-model")).await?;
        if !message.contains("MODEL_NOT_REGISTERED") {
            bail!("denial lacks the MODEL_NOT_REGISTERED code: {message}");
        }
        Ok(())
    });
}

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn pod_with_unapproved_model_is_denied() {
    scenario("unapproved-model", |s| async move {
        s.enforce().await?;
        s.apply(&ModelDeployment::new("risky").high_risk().build())
            .await?;
        wait_model_approval(&s, "risky", &["Pending"]).await?;
        let message = refused(&s, &fixtures::model_pod("risky-server", "risky")).await?;
        if !message.contains("MODEL_NOT_APPROVED") {
            bail!("denial lacks the MODEL_NOT_APPROVED code: {message}");
        }
        // A suspended model is refused as well.
        s.apply(
            &ModelDeployment::new("paused")
                .serving("e2e-paused-model")
                .suspended()
                .build(),
        )
        .await?;
        s.wait_for(
            "the suspended model to be refused",
            std::time::Duration::from_secs(30),
            || async {
                match s
                    .try_apply_dry_run(&fixtures::model_pod("paused-server", "paused"))
                    .await
                {
                    Err(ApplyError::Refused { message, .. })
                        if message.contains("MODEL_SUSPENDED") =>
                    {
                        Ok(Some(()))
                    }
                    _ => Ok(None),
                }
            },
        )
        .await?;
        Ok(())
    });
}

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn approved_model_is_admitted_with_the_sidecar_exactly_once() {
    scenario("approved-model", |s| async move {
        s.enforce().await?;
        s.apply(&ModelDeployment::new("approved").build()).await?;
        wait_model_approval(&s, "approved", &["NotRequired", "Approved"]).await?;

        let pod = create_pod(&s, &fixtures::model_pod("server", "approved")).await?;
        assert_eq!(sidecar_count(&pod), 1, "injected pod: {pod:#}");
        // The server reports its real version, and from 1.29 on the sidecar is a
        // native one: a restartable init container that starts first, stops last.
        let version = s.client.apiserver_version().await?;
        let minor: u32 = version.minor.trim_end_matches('+').parse().unwrap_or(0);
        println!(
            "API server {} (major {}, minor {minor})",
            version.git_version, version.major
        );
        if version.git_version.starts_with("v0.0.0") {
            bail!(
                "the API server reports no real version: {}",
                version.git_version
            );
        }
        if version.major == "1" && minor >= 29 {
            let native = pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["name"] == "policybind-sidecar" && c["restartPolicy"] == "Always");
            if !native {
                bail!(
                    "a {} server should get a native sidecar: {pod:#}",
                    version.git_version
                );
            }
        }

        // Injection is idempotent: a pod that already carries the sidecar
        // (e.g. re-created from an exported spec) still has exactly one.
        let mut again = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "server-copy",
                "labels": pod["metadata"]["labels"],
                "annotations": pod["metadata"]["annotations"],
            },
            "spec": pod["spec"].clone(),
        });
        let spec = again["spec"].as_object_mut().context("pod spec")?;
        spec.remove("nodeName");
        let copy = create_pod(&s, &again).await?;
        assert_eq!(sidecar_count(&copy), 1, "re-injected pod: {copy:#}");

        // Opt-out annotation: admitted (the model is fine), no sidecar.
        let mut opted_out = fixtures::model_pod("no-sidecar", "approved");
        opted_out["metadata"]["annotations"]["policybind.io/inject"] = "false".into();
        let plain = create_pod(&s, &opted_out).await?;
        assert_eq!(sidecar_count(&plain), 0, "opted-out pod: {plain:#}");
        Ok(())
    });
}

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn namespaces_without_enforcement_are_left_alone() {
    scenario("not-enforced", |s| async move {
        // No policybind.io/enforce label and no policybind.io/inject pod label:
        // the webhooks are not even called.
        let pod = create_pod(&s, &fixtures::model_pod("elsewhere", "no-such-model")).await?;
        assert_eq!(sidecar_count(&pod), 0);
        // Opting one pod in brings validation (Ignore on failure) and injection.
        let mut opted_in = fixtures::model_pod("opted-in", "no-such-model");
        opted_in["metadata"]["labels"]["policybind.io/inject"] = "true".into();
        let message = refused(&s, &opted_in).await?;
        if !message.contains("MODEL_NOT_REGISTERED") {
            bail!("opted-in pod denial lacks MODEL_NOT_REGISTERED: {message}");
        }
        Ok(())
    });
}
