//! Hostile scenarios (DESIGN.md sections 9 and 11): what a workload, or someone
//! who can create pods, tries in order to change what is enforced. Every
//! attempt runs under the identity the attacker really has (the pod's own
//! ServiceAccount token, or an impersonated user with ordinary rights), and each
//! asserts the safe outcome.
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use policybind_crds::wire::{labels, names};
use policybind_e2e::fixtures::{self, ModelDeployment};
use policybind_e2e::flows::{serving, wait_model_approval};
use policybind_e2e::identity::{client_as_service_account, client_as_user};
use policybind_e2e::scenario;
use policybind_e2e::scenario::Scenario;
use serde_json::json;

/// The API server refused `result` with 403 (RBAC) or 4xx (admission); returns
/// its message.
fn refused<T>(what: &str, result: kube::Result<T>) -> Result<String> {
    match result {
        Ok(_) => bail!("{what} was allowed; expected a refusal"),
        Err(kube::Error::Api(status)) if (400..500).contains(&status.code) => {
            Ok(format!("{} {}", status.code, status.message))
        }
        Err(other) => Err(other).context(what.to_string()),
    }
}

/// A client holding the token the kubelet would mount into `pod`: its
/// ServiceAccount's, bound to the pod. The model container has exactly this.
async fn workload_client(s: &Scenario, pod: &str) -> Result<Client> {
    let stored: Pod = s.api::<Pod>().get(pod).await?;
    let account = stored
        .spec
        .as_ref()
        .and_then(|spec| spec.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let uid = stored.metadata.uid.clone().context("pod uid")?;
    client_as_service_account(
        &s.client,
        &s.namespace,
        &account,
        Some((pod, &uid)),
        &s.system.work_dir.join("hostile"),
    )
    .await
}

/// Where the operator keeps this namespace's bundle: every ConfigMap labelled as
/// a bundle that belongs to the namespace, in any namespace.
async fn bundle_config_maps(s: &Scenario) -> Result<Vec<ConfigMap>> {
    let all: Api<ConfigMap> = Api::all(s.client.clone());
    let bundles = all
        .list(&ListParams::default().labels(&format!("{}=true", labels::BUNDLE)))
        .await?;
    Ok(bundles
        .items
        .into_iter()
        .filter(|cm| {
            cm.metadata.namespace.as_deref() == Some(s.namespace.as_str())
                || cm
                    .metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.ends_with(&format!(".{}", s.namespace)))
        })
        .collect())
}

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn a_workload_cannot_rewrite_its_bundle_forge_usage_or_read_keys() {
    scenario("hostile-workload", |s| async move {
        let serving = serving(&s).await?;
        let workload = workload_client(&s, "e2e-pod").await?;

        // 1. Rewrite the bundle: default Allow and an extra token hash.
        let bundles = bundle_config_maps(&s).await?;
        if bundles.is_empty() {
            bail!("no bundle ConfigMap found for namespace {}", s.namespace);
        }
        for bundle in &bundles {
            let namespace = bundle.metadata.namespace.clone().unwrap_or_default();
            let name = bundle.metadata.name.clone().unwrap_or_default();
            let api: Api<ConfigMap> = Api::namespaced(workload.clone(), &namespace);
            let forged = json!({"data": {"bundle.json": "{\"format\":1,\"defaultEffect\":\"Allow\",\"policies\":[],\"models\":[],\"tokens\":[]}"}});
            let message = refused(
                &format!("patch ConfigMap {namespace}/{name} as the workload"),
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&forged))
                    .await,
            )?;
            println!("hostile: patch bundle {namespace}/{name}: {message}");
            let message = refused(
                &format!("delete ConfigMap {namespace}/{name} as the workload"),
                api.delete(&name, &Default::default()).await,
            )?;
            println!("hostile: delete bundle {namespace}/{name}: {message}");
        }

        // 2. Forge another pod's usage report (to exhaust or reset a token).
        let config_maps: Api<ConfigMap> = Api::namespaced(workload.clone(), &s.namespace);
        let forged_report: ConfigMap = serde_json::from_value(json!({
            "metadata": {
                "name": format!("{}victim-pod", names::USAGE_REPORT_PREFIX),
                "labels": {labels::USAGE: "true", labels::WRITER_POD: "victim-pod"}
            },
            "data": {"usage.json": "{}"}
        }))?;
        let message = refused(
            "create another pod's usage report as the workload",
            config_maps
                .create(&PostParams::default(), &forged_report)
                .await,
        )?;
        println!("hostile: forge another pod's usage report: {message}");

        // 3. Read the namespace's audit signing key, or any Secret.
        let secrets: Api<Secret> = Api::namespaced(workload.clone(), &s.namespace);
        let message = refused(
            "read the audit key Secret as the workload",
            secrets.get(names::AUDIT_KEY_SECRET).await,
        )?;
        println!("hostile: read audit key: {message}");

        // The sidecar still enforces what the operator published.
        let still = serving
            .sidecar
            .chat(Some(&serving.token), fixtures::MODEL)
            .await?;
        if still.status != 200 {
            bail!(
                "the sidecar stopped serving after the attempts: {}",
                still.summary()
            );
        }
        Ok(())
    });
}

async fn create_pod_as(
    client: &Client,
    namespace: &str,
    manifest: &serde_json::Value,
) -> kube::Result<Pod> {
    let pod: Pod = serde_json::from_value(manifest.clone()).expect("a pod manifest");
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
}

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn opting_a_model_pod_out_of_enforcement_takes_a_right() {
    scenario("hostile-opt-out", |s| async move {
        s.enforce().await?;
        s.apply(&ModelDeployment::new("served").build()).await?;
        wait_model_approval(&s, "served", &["NotRequired", "Approved"]).await?;
        let mut opted_out = fixtures::model_pod("no-sidecar", "served");
        opted_out["metadata"]["annotations"]["policybind.io/inject"] = json!("false");

        // A developer who may create pods, but not exempt them.
        s.grant("dev@example.com", "edit").await?;
        let developer = client_as_user("dev@example.com", &["system:authenticated"]).await?;
        let message = refused(
            "an opted-out model pod by a developer",
            create_pod_as(&developer, &s.namespace, &opted_out).await,
        )?;
        println!("hostile: opt-out without the right: {message}");

        // An administrator of PolicyBind in the namespace may.
        s.grant("lead@example.com", "edit").await?;
        s.grant("lead@example.com", "policybind-admin").await?;
        let lead = client_as_user("lead@example.com", &["system:authenticated"]).await?;
        let pod = create_pod_as(&lead, &s.namespace, &opted_out)
            .await
            .context("an opted-out model pod by someone with the right")?;
        let value = serde_json::to_value(&pod)?;
        if fixtures::sidecar_count(&value) != 0 {
            bail!("the opted-out pod was injected: {value:#}");
        }
        println!("hostile: opt-out with the right: admitted without sidecar");
        Ok(())
    });
}

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn a_model_pod_without_the_sidecar_is_denied_in_an_enforced_namespace() {
    scenario("hostile-no-sidecar", |s| async move {
        s.enforce().await?;
        s.apply(&ModelDeployment::new("served").build()).await?;
        wait_model_approval(&s, "served", &["NotRequired", "Approved"]).await?;
        // The model server's port is not named for the sidecar to take over, so
        // nothing can be injected: the pod would serve the model unguarded.
        let mut unguarded = fixtures::model_pod("unguarded", "served");
        unguarded["spec"]["containers"][0]["ports"][0]["name"] = json!("api");
        s.grant("dev@example.com", "edit").await?;
        let developer = client_as_user("dev@example.com", &["system:authenticated"]).await?;
        let message = refused(
            "a model pod that cannot get the sidecar",
            create_pod_as(&developer, &s.namespace, &unguarded).await,
        )?;
        println!("hostile: model pod without sidecar: {message}");

        // An ordinary web service in the same namespace is untouched.
        let web = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "web", "image": "nginx:1.27",
                "ports": [{"name": "http", "containerPort": 80}]}]}
        });
        let pod = create_pod_as(&developer, &s.namespace, &web)
            .await
            .context("an ordinary web pod in an enforced namespace")?;
        let value = serde_json::to_value(&pod)?;
        if fixtures::sidecar_count(&value) != 0 {
            bail!("an ordinary web pod got the sidecar: {value:#}");
        }
        Ok(())
    });
}
