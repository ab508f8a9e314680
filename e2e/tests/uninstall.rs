//! Uninstall leaves nothing behind but what docs/install.md says stays.
//!
//! Destructive, so it runs only with POLICYBIND_E2E_UNINSTALL=1, after every
//! other scenario (e2e/run.sh runs it last). In-cluster it runs `helm uninstall`
//! (binary from POLICYBIND_E2E_HELM, default `helm`); out-of-cluster it does
//! what uninstalling means there: stop the processes, remove the webhook
//! registrations.
use policybind_crds::wire::{labels, names};
use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use policybind_e2e::fixtures::{self, MODEL};
use policybind_e2e::{Mode, scenario};

#[test]
#[ignore = "e2e: destructive, needs POLICYBIND_E2E_UNINSTALL=1 (e2e/run.sh runs it last)"]
fn uninstall_leaves_only_what_the_docs_say() {
    if std::env::var("POLICYBIND_E2E_UNINSTALL").as_deref() != Ok("1") {
        eprintln!("skipped: set POLICYBIND_E2E_UNINSTALL=1 to uninstall PolicyBind");
        return;
    }
    scenario("uninstall", |s| async move {
        // Leave some state behind first: a token with its Secret, a policy.
        s.enforce().await?;
        s.apply(&fixtures::access_token("left-behind", &[MODEL]))
            .await?;
        s.apply(&fixtures::policy(
            "left-behind",
            100,
            "Allow",
            &[MODEL],
            "E2E",
        ))
        .await?;
        policybind_e2e::flows::wait_token_value(&s, "left-behind").await?;

        let settings = s.settings;
        let system_ns = settings.system_namespace.clone();
        let fullname = s.system.fullname.clone();
        match settings.mode {
            Mode::InCluster => {
                let helm = std::env::var("POLICYBIND_E2E_HELM").unwrap_or_else(|_| "helm".into());
                let out = tokio::process::Command::new(&helm)
                    .args([
                        "uninstall",
                        &settings.release,
                        "--namespace",
                        &system_ns,
                        "--wait",
                    ])
                    .output()
                    .await
                    .with_context(|| format!("run {helm} uninstall"))?;
                if !out.status.success() {
                    bail!(
                        "helm uninstall failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            Mode::OutOfCluster => s.system.uninstall_local(&s.client, settings).await?,
        }

        // Gone: everything the chart (or the harness) installed.
        let webhook_name = settings.webhook_configuration_name();
        let validating: Api<ValidatingWebhookConfiguration> = Api::all(s.client.clone());
        let mutating: Api<MutatingWebhookConfiguration> = Api::all(s.client.clone());
        s.wait_for(
            "webhook configurations to go",
            Duration::from_secs(60),
            || async {
                Ok((validating.get_opt(&webhook_name).await?.is_none()
                    && mutating.get_opt(&webhook_name).await?.is_none())
                .then_some(()))
            },
        )
        .await?;
        if settings.mode == Mode::InCluster {
            let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &system_ns);
            let services: Api<Service> = Api::namespaced(s.client.clone(), &system_ns);
            let accounts: Api<ServiceAccount> = Api::namespaced(s.client.clone(), &system_ns);
            let roles: Api<ClusterRole> = Api::all(s.client.clone());
            let bindings: Api<ClusterRoleBinding> = Api::all(s.client.clone());
            for suffix in ["operator", "webhook"] {
                let name = format!("{fullname}-{suffix}");
                assert!(
                    deployments.get_opt(&name).await?.is_none(),
                    "Deployment {name} left"
                );
                let metrics = format!("{name}-metrics");
                assert!(
                    services.get_opt(&metrics).await?.is_none(),
                    "Service {metrics} left"
                );
                assert!(
                    accounts.get_opt(&name).await?.is_none(),
                    "ServiceAccount {name} left"
                );
                assert!(
                    roles.get_opt(&name).await?.is_none(),
                    "ClusterRole {name} left"
                );
                assert!(
                    bindings.get_opt(&name).await?.is_none(),
                    "ClusterRoleBinding {name} left"
                );
            }
            let webhook_service = format!("{fullname}-webhook");
            assert!(
                services.get_opt(&webhook_service).await?.is_none(),
                "Service {webhook_service} left"
            );
            for name in [
                "policybind-admin",
                "policybind-approver",
                "policybind-auditor",
                "policybind-developer",
            ] {
                assert!(
                    roles.get_opt(name).await?.is_none(),
                    "ClusterRole {name} left"
                );
            }
        }

        // Stays, as documented: CRDs and the objects in them, token Secrets.
        let crds: Api<CustomResourceDefinition> = Api::all(s.client.clone());
        for crd in policybind_crds::crds() {
            let name = crd.name_any();
            assert!(
                crds.get_opt(&name).await?.is_some(),
                "CRD {name} was removed"
            );
        }
        assert!(
            s.get_json("policybind.io/v1alpha1", "AccessToken", "left-behind")
                .await?
                .is_some(),
            "AccessTokens stay with their CRD"
        );

        // In the release namespace, only the documented runtime objects remain.
        let documented_secrets: BTreeSet<String> = [
            format!("{fullname}-webhook-tls"),
            format!("{fullname}-operator-key"),
            format!("{fullname}-webhook-key"),
        ]
        .into();
        let documented_leases: BTreeSet<String> = [format!("{fullname}-operator")].into();
        let mut unexpected = Vec::new();
        let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &system_ns);
        for secret in secrets.list(&ListParams::default()).await?.items {
            let name = secret.name_any();
            let helm_release = secret.type_.as_deref() == Some("helm.sh/release.v1");
            if !documented_secrets.contains(&name) && !helm_release {
                unexpected.push(format!("Secret {name}"));
            }
        }
        let config_maps: Api<ConfigMap> = Api::namespaced(s.client.clone(), &system_ns);
        for config_map in config_maps.list(&ListParams::default()).await?.items {
            let name = config_map.name_any();
            let audit = config_map.labels().contains_key(labels::AUDIT_SEGMENT);
            // Bundles (and their reader Roles) are documented: owned by their
            // Namespace, written by the operator, which is gone.
            let bundle = config_map.labels().contains_key(labels::BUNDLE);
            // The control plane publishes its CA bundles into every namespace
            // (OpenShift-derived builds add the service CA).
            let control_plane =
                ["kube-root-ca.crt", "openshift-service-ca.crt"].contains(&name.as_str());
            // The published audit keyring stays with the keys (documented).
            let keyring = name == names::AUDIT_KEYRING;
            // Budget ledgers stay so a reinstall never grants spent budget again
            // (documented).
            let ledger = config_map.labels().contains_key(labels::LEDGER);
            // The webhook replicas' admission summaries (documented; the
            // Reports are sums of them).
            let summary = config_map.labels().contains_key(labels::ADMISSION_SUMMARY);
            if !control_plane && !audit && !bundle && !keyring && !ledger && !summary {
                unexpected.push(format!("ConfigMap {name}"));
            }
        }
        let leases: Api<Lease> = Api::namespaced(s.client.clone(), &system_ns);
        for lease in leases.list(&ListParams::default()).await?.items {
            if !documented_leases.contains(&lease.name_any()) {
                unexpected.push(format!("Lease {}", lease.name_any()));
            }
        }
        if !unexpected.is_empty() {
            bail!(
                "left behind in {system_ns} but not documented in docs/install.md: {unexpected:?}"
            );
        }
        Ok(())
    });
}
