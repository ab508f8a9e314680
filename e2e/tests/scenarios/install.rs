//! CRDs install and every example applies.
use std::path::{Path, PathBuf};

use anyhow::bail;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use policybind_e2e::scenario;
use policybind_e2e::scenario::ApplyError;
use serde_json::Value;

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn every_crd_is_established() {
    scenario("crds-established", |s| async move {
        let api: Api<CustomResourceDefinition> = Api::all(s.client.clone());
        for crd in policybind_crds::crds() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let served = api.get(&name).await?;
            let established = served
                .status
                .and_then(|status| status.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if !established {
                bail!("CRD {name} is not Established");
            }
            // What is served is what the API types say (no stale CRD).
            let versions: Vec<_> = served
                .spec
                .versions
                .iter()
                .map(|v| v.name.clone())
                .collect();
            let expected: Vec<_> = crd.spec.versions.iter().map(|v| v.name.clone()).collect();
            assert_eq!(versions, expected, "versions of {name}");
        }
        Ok(())
    });
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            // GitOps examples are Argo CD / Flux objects for those tools' clusters.
            if path.file_name().is_some_and(|n| n == "gitops") {
                continue;
            }
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

/// Order in which a user would apply the examples: registry first, then what
/// refers to it.
fn apply_rank(kind: &str) -> u8 {
    match kind {
        "ModelDeployment" => 0,
        "ClusterAIPolicy" | "AIPolicy" => 1,
        "AccessToken" => 2,
        "ApprovalRequest" => 3,
        _ => 4,
    }
}

/// Create `document` without its decision as its `spec.requester` (a
/// PolicyBind admin of the namespace), then apply it whole as `approver` (a
/// policybind-approver there).
async fn apply_as_requester_then_approver(
    s: &policybind_e2e::Scenario,
    document: &Value,
    approver: &str,
) -> Result<kube::api::DynamicObject, ApplyError> {
    let requester = document["spec"]["requester"]
        .as_str()
        .unwrap_or("requester@example.com");
    let setup = async {
        s.grant(requester, "policybind-admin").await?;
        s.grant(approver, "policybind-approver").await?;
        anyhow::Ok((s.as_user(requester).await?, s.as_user(approver).await?))
    };
    let (as_requester, as_approver) = setup.await.map_err(ApplyError::Other)?;
    let mut request = document.clone();
    if let Some(spec) = request["spec"].as_object_mut() {
        spec.remove("decision");
    }
    as_requester.try_apply(&request).await?;
    as_approver.try_apply(document).await
}

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn every_example_applies() {
    scenario("examples-apply", |s| async move {
        let mut files = Vec::new();
        yaml_files(&s.settings.repo_root.join("examples"), &mut files);
        let mut documents: Vec<(String, Value)> = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file)?;
            for document in serde_yaml::Deserializer::from_str(&text) {
                let value: Value = serde::Deserialize::deserialize(document)?;
                if value.get("kind").is_some() && value.get("apiVersion").is_some() {
                    documents.push((file.display().to_string(), value));
                }
            }
        }
        documents.sort_by_key(|(_, doc)| apply_rank(doc["kind"].as_str().unwrap_or_default()));
        s.enforce().await?;
        let (mut applied, mut not_served, mut failures) = (0, Vec::new(), Vec::new());
        for (file, document) in &documents {
            let kind = document["kind"].as_str().unwrap_or_default();
            let name = document["metadata"]["name"].as_str().unwrap_or_default();
            if kind == "Namespace" {
                continue; // every scenario brings its own namespace
            }
            let Ok((_, caps)) = s.resource_of(document).await else {
                // e.g. PolicyTest: read by `policybind test`, not an API kind.
                not_served.push(format!("{kind} {name} ({file})"));
                continue;
            };
            // Cluster-scoped examples (ClusterAIPolicy) would govern every other
            // scenario's namespace: admission checks them, nothing is stored.
            let result = if caps.scope == kube::discovery::Scope::Cluster {
                s.try_apply_dry_run(document).await
            } else if let Some(approver) = document["spec"]["decision"]["approver"].as_str() {
                // A decided ApprovalRequest is written by two people, as in
                // real use: its requester asks, the approver it names decides.
                // Only that approver may write the decision (the webhook checks).
                apply_as_requester_then_approver(&s, document, approver).await
            } else {
                s.try_apply(document).await
            };
            match result {
                Ok(_) => applied += 1,
                Err(ApplyError::Refused { code, message }) => {
                    failures.push(format!("{kind} {name} ({file}): {code} {message}"))
                }
                Err(error) => failures.push(format!("{kind} {name} ({file}): {error}")),
            }
        }
        println!("applied {applied} example objects; not API kinds: {not_served:?}");
        if !failures.is_empty() {
            bail!("examples refused:\n{}", failures.join("\n"));
        }
        if applied == 0 {
            bail!("no example applied: is examples/ empty?");
        }
        Ok(())
    });
}
