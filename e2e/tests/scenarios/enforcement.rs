//! Tokens, sidecar and propagation: an AccessToken gets its Secret and the
//! sidecar accepts it; a policy change and a revocation reach the sidecar
//! within the propagation limit (measured and reported).
use std::time::{Duration, Instant};

use anyhow::bail;
use kube::api::{Patch, PatchParams};
use policybind_e2e::fixtures::{self, MODEL};
use policybind_e2e::flows::{report_propagation, serving, time_until_refused};
use policybind_e2e::scenario;
use serde_json::json;

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn access_token_gets_its_secret_and_the_sidecar_accepts_it() {
    scenario("token-accepted", |s| async move {
        // serving() waits for the Secret (owned by the token) and for a request
        // with its value to reach the upstream through the sidecar.
        let serving = serving(&s).await?;
        let before = serving.upstream.received();

        let missing = serving.sidecar.chat(None, MODEL).await?;
        if missing.status != 401 || !missing.mentions("TOKEN_MISSING") {
            bail!(
                "no token: expected 401 TOKEN_MISSING, got {}",
                missing.summary()
            );
        }
        let forged = serving
            .sidecar
            .chat(Some("pb_not-a-real-token"), MODEL)
            .await?;
        if forged.status != 401 || !forged.mentions("TOKEN_UNKNOWN") {
            bail!(
                "forged token: expected 401 TOKEN_UNKNOWN, got {}",
                forged.summary()
            );
        }
        let other_model = serving
            .sidecar
            .chat(Some(&serving.token), "some-other-model")
            .await?;
        if other_model.status != 403 {
            bail!(
                "model outside the token's scope: expected 403, got {}",
                other_model.summary()
            );
        }
        assert_eq!(
            serving.upstream.received(),
            before,
            "refused requests must not reach the upstream"
        );

        let ok = serving.sidecar.chat(Some(&serving.token), MODEL).await?;
        assert_eq!(ok.status, 200, "{}", ok.text());
        assert_eq!(
            ok.json()["choices"][0]["message"]["content"],
            "hello from the e2e upstream"
        );
        assert_eq!(serving.upstream.received(), before + 1);

        // The token value appears nowhere but in its Secret.
        let token_object = s
            .get_json("policybind.io/v1alpha1", "AccessToken", "e2e-token")
            .await?;
        assert!(
            !token_object
                .unwrap_or_default()
                .to_string()
                .contains(&serving.token)
        );
        Ok(())
    });
}

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn policy_change_reaches_the_sidecar_within_the_propagation_limit() {
    scenario("policy-propagation", |s| async move {
        let serving = serving(&s).await?;
        let start = Instant::now();
        s.apply(&fixtures::policy(
            "deny-e2e",
            900,
            "Deny",
            &[MODEL],
            "E2E_DENIED_BY_POLICY",
        ))
        .await?;
        let (took, response) = time_until_refused(
            &serving,
            start,
            &["E2E_DENIED_BY_POLICY", "POLICY_DENY"],
            s.settings.propagation_limit,
        )
        .await?;
        report_propagation(&s, "policy change", took);
        assert_eq!(response.status, 403, "{}", response.text());
        if took > s.settings.propagation_limit {
            bail!(
                "policy change took {took:?} to reach the sidecar (limit {:?})",
                s.settings.propagation_limit
            );
        }
        Ok(())
    });
}

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn revoked_token_is_denied_within_the_propagation_limit() {
    scenario("token-revocation", |s| async move {
        let serving = serving(&s).await?;
        let tokens = kube::Api::<kube::api::DynamicObject>::namespaced_with(
            s.client.clone(),
            &s.namespace,
            &s.resource_of(&json!({"apiVersion": "policybind.io/v1alpha1", "kind": "AccessToken"}))
                .await?
                .0,
        );
        let start = Instant::now();
        tokens
            .patch(
                "e2e-token",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"revoked": true}})),
            )
            .await?;
        let (took, response) = time_until_refused(
            &serving,
            start,
            &["TOKEN_REVOKED", "TOKEN_UNKNOWN"],
            s.settings.propagation_limit,
        )
        .await?;
        report_propagation(&s, "token revocation", took);
        if !(response.mentions("TOKEN_REVOKED") || response.mentions("TOKEN_UNKNOWN")) {
            bail!(
                "revoked token refused for another reason: {}",
                response.summary()
            );
        }
        if took > s.settings.propagation_limit {
            bail!(
                "revocation took {took:?} to reach the sidecar (limit {:?})",
                s.settings.propagation_limit
            );
        }
        // And it stays refused.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let later = serving.sidecar.chat(Some(&serving.token), MODEL).await?;
        assert!(
            matches!(later.status, 401 | 403),
            "{} {}",
            later.status,
            later.text()
        );
        Ok(())
    });
}
