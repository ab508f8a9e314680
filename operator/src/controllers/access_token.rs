//! AccessToken controller: issues the secret value, rotates it on request, and
//! keeps the token's phase, expiry and usage in status.
//!
//! The value is 32 bytes from the operating system's random source
//! (`getrandom`), encoded base64url without padding and prefixed `pb_` (46
//! characters; the prefix lets secret scanners recognise leaked tokens). It is
//! written once into a Secret owned by the token (`spec.secretName`, default
//! `<token>-token`, key `token`) and then only its SHA-256 is used: in bundles in
//! full, in status as a 12-character prefix. The value is never logged, never in
//! status, never in an event.
//!
//! Rotation: set the annotation `policybind.io/rotate` to a new value. The
//! controller writes a new value and keeps the previous hash (Secret key
//! `previous-sha256`, with the deadline in the annotation
//! `policybind.io/previous-valid-until`) valid for `rotationGraceSeconds`
//! (default 3600), so clients can switch without an outage.
//!
//! Expiry, the end of a rotation grace period and budget period boundaries are
//! acted on by requeueing at exactly that moment, not by polling.

use policybind_crds::wire::{annotations, keys, labels};
use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use policybind_crds::access_token::PeriodUsage;
use policybind_crds::ai_budget::{Owner, parse_owner};
use policybind_crds::conditions::{self, reasons as crd_reasons, types};
use policybind_crds::{API_VERSION, AccessToken, AccessTokenStatus, TokenPhase};
use policybind_engine::audit::AuditEvent;
use policybind_engine::bundle::{BundleToken, TokenHash};
use serde_json::json;

use futures::channel::mpsc::UnboundedReceiver;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, Event};

use crate::context::{Context, key_of, reasons, requeue_at, to_jiff};
use crate::controllers::{Tasks, Wiring, drain};
use crate::error::{Error, Result};
use crate::stores::{bump, drive, labelled, touched, watch};
use crate::usage::{
    CountedReport, UsageReport, current_period_end, current_usage, exhausted_period,
    named_after_its_pod, tokens_exhausted,
};

const CONTROLLER: &str = "access_token";
/// Secret key holding the hex SHA-256 of the previous value during a grace period.
pub const PREVIOUS_HASH_KEY: &str = "previous-sha256";
/// Prefix of every token value.
pub const TOKEN_PREFIX: &str = "pb_";
/// Default rotation grace period.
pub const DEFAULT_ROTATION_GRACE_SECONDS: u32 = 3600;

/// What the operator knows from a token's Secret, without the value itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretState {
    pub current_hash: String,
    pub previous: Option<TokenHash>,
    pub issued_at: Option<DateTime<Utc>>,
    pub rotation: Option<String>,
}

/// Name of the token's Secret.
pub fn secret_name(token: &AccessToken) -> String {
    token
        .spec
        .secret_name
        .clone()
        .unwrap_or_else(|| format!("{}-token", token.name_any()))
}

/// A new token value: `pb_` + base64url(32 random bytes).
pub fn generate_value() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
    Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// Reads a token Secret; `None` when it holds no value.
pub fn read_secret(secret: &Secret) -> Option<SecretState> {
    let data = secret.data.as_ref()?;
    let value = std::str::from_utf8(&data.get(keys::TOKEN)?.0).ok()?;
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let time = |key: &str| {
        annotations
            .get(key)
            .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let previous = data
        .get(PREVIOUS_HASH_KEY)
        .and_then(|h| String::from_utf8(h.0.clone()).ok())
        .map(|sha256| TokenHash {
            sha256,
            valid_until: time(annotations::PREVIOUS_VALID_UNTIL),
        });
    Some(SecretState {
        current_hash: policybind_engine::hash_token(value),
        previous,
        issued_at: time(annotations::ISSUED_AT),
        rotation: annotations.get(annotations::ROTATION).cloned(),
    })
}

/// Whether a Secret was made by the operator for this token.
pub fn is_ours(secret: &Secret, token: &AccessToken) -> bool {
    let labelled = secret.labels().get(labels::TOKEN) == Some(&token.name_any());
    let owned = secret
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == token.metadata.uid.as_ref());
    labelled && owned
}

/// What to do with the Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretPlan {
    /// The Secret is fine.
    Keep,
    /// No value yet: issue the first one.
    Issue,
    /// The rotate annotation asks for a new value.
    Rotate,
}

/// Decides whether a value must be issued or rotated.
pub fn plan(token: &AccessToken, existing: Option<&SecretState>) -> SecretPlan {
    let requested = token.annotations().get(annotations::ROTATE);
    match existing {
        None => SecretPlan::Issue,
        Some(state) if requested.is_some() && requested != state.rotation.as_ref() => {
            SecretPlan::Rotate
        }
        Some(_) => SecretPlan::Keep,
    }
}

/// The Secret holding `value`, owned by the token. During a rotation `previous`
/// carries the old hash and its deadline.
pub fn build_secret(
    token: &AccessToken,
    value: &str,
    issued_at: DateTime<Utc>,
    previous: Option<&TokenHash>,
) -> Secret {
    let mut data = BTreeMap::from([(
        keys::TOKEN.to_string(),
        ByteString(value.as_bytes().to_vec()),
    )]);
    let mut annotations =
        BTreeMap::from([(annotations::ISSUED_AT.to_string(), issued_at.to_rfc3339())]);
    if let Some(rotation) = token.annotations().get(annotations::ROTATE) {
        annotations.insert(annotations::ROTATION.to_string(), rotation.clone());
    }
    if let Some(previous) = previous {
        data.insert(
            PREVIOUS_HASH_KEY.to_string(),
            ByteString(previous.sha256.as_bytes().to_vec()),
        );
        if let Some(until) = previous.valid_until {
            annotations.insert(
                annotations::PREVIOUS_VALID_UNTIL.to_string(),
                until.to_rfc3339(),
            );
        }
    }
    let mut secret = Secret {
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    secret.metadata.name = Some(secret_name(token));
    secret.metadata.namespace = token.namespace();
    secret.metadata.labels = Some(BTreeMap::from([
        (labels::TOKEN.to_string(), token.name_any()),
        (
            labels::MANAGED_BY.to_string(),
            labels::MANAGED_BY_VALUE.to_string(),
        ),
    ]));
    secret.metadata.annotations = Some(annotations);
    secret.metadata.owner_references = token.controller_owner_ref(&()).map(|o| vec![o]);
    secret
}

/// The previous hash kept valid after a rotation at `now`.
pub fn previous_after_rotation(
    token: &AccessToken,
    old: &SecretState,
    now: DateTime<Utc>,
) -> Option<TokenHash> {
    let grace = token
        .spec
        .rotation_grace_seconds
        .unwrap_or(DEFAULT_ROTATION_GRACE_SECONDS);
    (grace > 0).then(|| TokenHash {
        sha256: old.current_hash.clone(),
        valid_until: Some(now + chrono::Duration::seconds(i64::from(grace))),
    })
}

/// Phase of a token. Order matters: revoked beats expired beats not-yet-valid
/// beats exhausted.
pub fn phase(
    token: &AccessToken,
    secret: Option<&SecretState>,
    exhausted: bool,
    now: DateTime<Utc>,
) -> TokenPhase {
    let spec = &token.spec;
    if spec.revoked {
        TokenPhase::Revoked
    } else if spec.expires_at.is_some_and(|t| now >= t) {
        TokenPhase::Expired
    } else if secret.is_none() || spec.not_before.is_some_and(|t| now < t) {
        TokenPhase::Pending
    } else if exhausted {
        TokenPhase::Exhausted
    } else {
        TokenPhase::Active
    }
}

/// Hashes accepted in bundles at `now`: the current one and, during a grace
/// period, the previous one.
pub fn accepted_hashes(secret: &SecretState, now: DateTime<Utc>) -> Vec<TokenHash> {
    let mut hashes = vec![TokenHash {
        sha256: secret.current_hash.clone(),
        valid_until: None,
    }];
    if let Some(previous) = &secret.previous
        && previous.valid_until.is_some_and(|t| t > now)
    {
        hashes.push(previous.clone());
    }
    hashes
}

/// The token as it goes into bundles.
pub fn bundle_token(
    token: &AccessToken,
    secret: Option<&SecretState>,
    usage: &[PeriodUsage],
    now: DateTime<Utc>,
) -> BundleToken {
    let hashes = secret.map(|s| accepted_hashes(s, now)).unwrap_or_default();
    let mut bundle_token = BundleToken::from_token(token, hashes);
    bundle_token.exhausted = exhausted_period(&token.spec, usage).is_some();
    bundle_token.exhausted_cost_only =
        bundle_token.exhausted && !tokens_exhausted(&token.spec, usage);
    bundle_token
}

/// The status the token should have.
pub fn desired_status(
    token: &AccessToken,
    secret: Option<&SecretState>,
    usage: Vec<PeriodUsage>,
    now: DateTime<Utc>,
) -> AccessTokenStatus {
    let old = token.status.clone().unwrap_or_default();
    let exhausted = exhausted_period(&token.spec, &usage);
    let phase = phase(token, secret, exhausted.is_some(), now);
    let (ready, reason, message) = match phase {
        TokenPhase::Active => (true, crd_reasons::ISSUED, "issued and usable".to_string()),
        TokenPhase::Pending if secret.is_none() => (
            false,
            crd_reasons::NOT_YET_VALID,
            "value not issued yet".to_string(),
        ),
        TokenPhase::Pending => (
            false,
            crd_reasons::NOT_YET_VALID,
            format!(
                "valid from {}",
                token
                    .spec
                    .not_before
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            ),
        ),
        TokenPhase::Expired => (
            false,
            crd_reasons::EXPIRED,
            format!(
                "expired at {}",
                token
                    .spec
                    .expires_at
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            ),
        ),
        TokenPhase::Revoked => (
            false,
            crd_reasons::REVOKED,
            "spec.revoked is set".to_string(),
        ),
        TokenPhase::Exhausted => (
            false,
            crd_reasons::EXHAUSTED,
            format!(
                "{} budget used up until {}",
                exhausted.map(|p| p.as_str()).unwrap_or(""),
                exhausted
                    .map(|p| current_period_end(&token.spec, p, now).to_rfc3339())
                    .unwrap_or_default()
            ),
        ),
    };
    let mut list = old.conditions.clone();
    conditions::set_condition(
        &mut list,
        conditions::condition(
            types::READY,
            ready,
            reason,
            message,
            token.metadata.generation,
            to_jiff(now),
        ),
    );
    let previous_valid_until = secret
        .and_then(|s| s.previous.as_ref())
        .and_then(|p| p.valid_until)
        .filter(|t| *t > now);
    AccessTokenStatus {
        observed_generation: token.metadata.generation,
        conditions: list,
        phase: Some(phase),
        secret_name: Some(secret_name(token)),
        hash_prefix: secret.map(|s| s.current_hash[..12].to_string()),
        issued_at: secret.and_then(|s| s.issued_at),
        expires_at: token.spec.expires_at,
        rotation: secret.and_then(|s| s.rotation.clone()),
        previous_valid_until,
        usage,
    }
}

/// The next moment the token's state changes by itself: validity start, expiry,
/// end of a rotation grace period, end of a budget period.
pub fn next_change(
    token: &AccessToken,
    secret: Option<&SecretState>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let spec = &token.spec;
    let grace_end = secret
        .and_then(|s| s.previous.as_ref())
        .and_then(|p| p.valid_until);
    let period_ends = spec
        .budgets
        .iter()
        .map(|b| current_period_end(spec, b.period, now));
    [spec.not_before, spec.expires_at, grace_end]
        .into_iter()
        .flatten()
        .chain(period_ends)
        .filter(|t| *t > now)
        .min()
}

/// The usage reports the operator counts, from the cache: those named after
/// their pod, in enforced namespaces (see [`crate::usage`]). Parsed reports are
/// kept per ConfigMap version: every token reconcile reads all reports, and
/// parsing them each time would cost O(tokens x reports) at start.
pub fn usage_reports(ctx: &Context) -> Vec<Arc<CountedReport>> {
    let config_maps = ctx.stores.usage_reports.state();
    let mut enforced = crate::bundle::EnforcedNamespaces::new(
        &ctx.stores.namespaces,
        &ctx.stores.pods,
        &ctx.settings.namespace,
    );
    let mut cache = ctx.state.usage.lock().expect("usage cache lock poisoned");
    let mut live = std::collections::HashSet::new();
    let reports = config_maps
        .iter()
        .filter(|cm| named_after_its_pod(cm))
        .filter(|cm| {
            cm.metadata
                .namespace
                .as_deref()
                .is_some_and(|ns| enforced.contains(ns))
        })
        .filter_map(|cm| {
            let uid = cm
                .metadata
                .uid
                .clone()
                .unwrap_or_else(|| key_of(cm.as_ref()));
            let version = cm.metadata.resource_version.clone().unwrap_or_default();
            live.insert(uid.clone());
            if let Some((v, report)) = cache.get(&uid)
                && *v == version
            {
                return Some(report.clone());
            }
            let report = Arc::new(CountedReport {
                namespace: cm.metadata.namespace.clone()?,
                report: UsageReport::from_config_map(cm)?,
            });
            cache.insert(uid, (version, report.clone()));
            Some(report)
        })
        .collect();
    cache.retain(|uid, _| live.contains(uid));
    reports
}

/// The token's Secret from the cache, if it is there and ours.
pub fn cached_secret(ctx: &Context, token: &AccessToken) -> Option<Arc<Secret>> {
    let namespace = token.namespace()?;
    ctx.stores
        .token_secrets
        .get(&ObjectRef::new(&secret_name(token)).within(&namespace))
        .filter(|s| is_ours(s, token))
}

/// Reconciles one AccessToken.
pub async fn reconcile(token: Arc<AccessToken>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let now = ctx.now();
    let namespace = token
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = secret_name(&token);

    // The cache holds only Secrets we labelled. A miss may be a Secret someone
    // else owns under that name (never overwrite it) or one we just created that
    // the cache has not seen yet: ask the API server once.
    let mut secret = cached_secret(&ctx, &token);
    if secret.is_none()
        && let Some(found) = secrets.get_opt(&name).await?
    {
        if !is_ours(&found, &token) {
            let error = Error::SecretConflict(format!("{namespace}/{name}"));
            ctx.event(
                token.as_ref(),
                true,
                reasons::SECRET_CONFLICT,
                error.to_string(),
            )
            .await;
            return Err(error);
        }
        secret = Some(Arc::new(found));
    }
    let mut state = secret.as_deref().and_then(read_secret);

    let plan = plan(&token, state.as_ref());
    if plan != SecretPlan::Keep {
        let previous = match (&plan, &state) {
            (SecretPlan::Rotate, Some(old)) => previous_after_rotation(&token, old, now),
            _ => None,
        };
        let value = generate_value()?;
        let desired = build_secret(&token, &value, now, previous.as_ref());
        let written = secrets
            .patch(&name, &Context::apply_params(), &Patch::Apply(&desired))
            .await?;
        state = read_secret(&written);
        let (reason, note) = match plan {
            SecretPlan::Rotate => (
                "Rotated",
                format!(
                    "new value in Secret {name}; the previous one is accepted until {}",
                    previous
                        .and_then(|p| p.valid_until)
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "now (no grace period)".into())
                ),
            ),
            _ => ("Issued", format!("value written to Secret {name}")),
        };
        tracing::info!(token = %key_of(token.as_ref()), reason, "token secret written");
        ctx.record(
            AuditEvent::lifecycle(if plan == SecretPlan::Rotate {
                "token-rotated"
            } else {
                "token-issued"
            })
            .namespace(namespace.clone())
            .token_id(key_of(token.as_ref()))
            .subject(token.spec.subject.name.clone())
            .detail(
                "hashPrefix",
                state
                    .as_ref()
                    .map(|s| s.current_hash[..12].to_string())
                    .unwrap_or_default(),
            ),
        );
        ctx.event(token.as_ref(), false, reason, note).await;
    }

    let reports = usage_reports(&ctx);
    let usage = current_usage(
        &namespace,
        &token.name_any(),
        &token.spec,
        reports.iter().map(|r| r.as_ref()),
        now,
    );
    let usage = ctx
        .state
        .ledgers
        .with_holdings(&key_of(token.as_ref()), usage);
    let status = desired_status(&token, state.as_ref(), usage, now);
    let old_phase = token.status.as_ref().and_then(|s| s.phase);
    if token.status.as_ref() != Some(&status) {
        let api: Api<AccessToken> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({
            "apiVersion": API_VERSION,
            "kind": AccessToken::kind(&()),
            "status": status,
        });
        api.patch_status(
            &token.name_any(),
            &Context::apply_params(),
            &Patch::Apply(&patch),
        )
        .await?;
        if let Some(phase) = status.phase
            && old_phase.is_some_and(|old| old != phase)
            && phase != TokenPhase::Active
        {
            let message = conditions::find(&status.conditions, types::READY)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            ctx.event(token.as_ref(), true, phase.as_str(), message)
                .await;
        }
    }
    ctx.succeeded(&key_of(token.as_ref()));
    Ok(requeue_at(now, next_change(&token, state.as_ref(), now)))
}

pub fn error_policy(token: Arc<AccessToken>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.backoff(CONTROLLER, &key_of(token.as_ref()), error)
}

/// Watches AccessTokens, their Secrets (label `policybind.io/token`) and the
/// sidecars' usage reports (label `policybind.io/usage`): a Secret or report
/// that changes wakes its token and may change every bundle.
pub fn run(
    w: &Wiring,
    tokens: Writer<AccessToken>,
    secrets: Writer<Secret>,
    usage_reports: Writer<ConfigMap>,
    wake: UnboundedReceiver<ObjectRef<AccessToken>>,
) -> Tasks {
    let ctx = &w.ctx;
    let stream = watch(
        watcher::watcher(
            Api::<AccessToken>::all(w.client.clone()),
            Default::default(),
        ),
        tokens,
        bump(ctx),
    )
    .applied_objects();
    let controller = Controller::for_stream(stream, ctx.stores.tokens.clone())
        .with_config(w.config(Some(std::time::Duration::from_millis(100))))
        .reconcile_on(wake)
        .graceful_shutdown_on(w.graceful())
        .run(super::once_listed(reconcile), error_policy, ctx.clone());
    let secrets = {
        let (ctx, tokens) = (ctx.clone(), w.triggers.tokens.clone());
        drive(watch(
            watcher::watcher(
                Api::<Secret>::all(w.client.clone()),
                labelled(labels::TOKEN),
            ),
            secrets,
            move |event: &Event<Secret>| {
                ctx.bundles_changed();
                for secret in touched(event) {
                    if let (Some(ns), Some(token)) =
                        (secret.namespace(), secret.labels().get(labels::TOKEN))
                    {
                        let _ = tokens.unbounded_send(ObjectRef::new(token).within(&ns));
                    }
                }
            },
        ))
    };
    let reports = {
        let (ctx, tokens) = (ctx.clone(), w.triggers.tokens.clone());
        drive(watch(
            watcher::watcher(
                Api::<ConfigMap>::all(w.client.clone()),
                labelled(&format!("{}=true", labels::USAGE)),
            ),
            usage_reports,
            move |event: &Event<ConfigMap>| {
                let changed = touched(event);
                if !changed.is_empty() {
                    ctx.bundles_changed();
                }
                for cm in changed {
                    let report = UsageReport::from_config_map(&cm).unwrap_or_default();
                    let owners = report.0.keys().filter_map(|id| match parse_owner(id) {
                        Some(Owner::Token(token)) => token.split_once('/'),
                        _ => None,
                    });
                    for (ns, name) in owners {
                        let _ = tokens.unbounded_send(ObjectRef::new(name).within(ns));
                    }
                }
            },
        ))
    };
    Tasks {
        main: vec![drain(controller)],
        side: vec![Box::pin(secrets), Box::pin(reports)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::token;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn state(hash: &str) -> SecretState {
        SecretState {
            current_hash: hash.repeat(64 / hash.len()),
            previous: None,
            issued_at: Some(at("2026-11-01T00:00:00Z")),
            rotation: None,
        }
    }

    #[test]
    fn generated_values_have_the_prefix_and_256_bits_and_differ() {
        let a = generate_value().unwrap();
        let b = generate_value().unwrap();
        assert!(a.starts_with("pb_"));
        assert_eq!(URL_SAFE_NO_PAD.decode(&a[3..]).unwrap().len(), 32);
        assert_eq!(a.len(), 46);
        assert_ne!(a, b);
    }

    #[test]
    fn secret_round_trips_hash_issue_time_rotation_and_previous() {
        let t = token("team-a", "bot").rotate("r1").build();
        let previous = TokenHash {
            sha256: "ab".repeat(32),
            valid_until: Some(at("2026-11-22T13:00:00Z")),
        };
        let secret = build_secret(&t, "pb_value", at("2026-11-22T12:00:00Z"), Some(&previous));
        assert_eq!(secret.metadata.name.as_deref(), Some("bot-token"));
        assert!(is_ours(&secret, &t));
        let read = read_secret(&secret).unwrap();
        assert_eq!(read.current_hash, policybind_engine::hash_token("pb_value"));
        assert_eq!(read.previous, Some(previous));
        assert_eq!(read.issued_at, Some(at("2026-11-22T12:00:00Z")));
        assert_eq!(read.rotation.as_deref(), Some("r1"));
    }

    #[test]
    fn missing_secret_is_issued_and_new_rotate_value_rotates_once() {
        let t = token("team-a", "bot").build();
        assert_eq!(plan(&t, None), SecretPlan::Issue);
        assert_eq!(plan(&t, Some(&state("a"))), SecretPlan::Keep);
        let rotating = token("team-a", "bot").rotate("2026-11-22").build();
        assert_eq!(plan(&rotating, Some(&state("a"))), SecretPlan::Rotate);
        let mut handled = state("a");
        handled.rotation = Some("2026-11-22".into());
        assert_eq!(plan(&rotating, Some(&handled)), SecretPlan::Keep);
    }

    #[test]
    fn rotation_keeps_the_previous_hash_for_the_grace_period_only() {
        let t = token("team-a", "bot").build();
        let now = at("2026-11-22T12:00:00Z");
        let mut rotated = state("b");
        rotated.previous = previous_after_rotation(&t, &state("a"), now);
        assert_eq!(
            rotated.previous.as_ref().unwrap().valid_until,
            Some(at("2026-11-22T13:00:00Z"))
        );
        assert_eq!(accepted_hashes(&rotated, now).len(), 2);
        assert_eq!(
            accepted_hashes(&rotated, at("2026-11-22T13:00:00Z")).len(),
            1
        );
        assert_eq!(
            next_change(&t, Some(&rotated), now),
            Some(at("2026-11-22T13:00:00Z"))
        );
    }

    #[test]
    fn phases_follow_revocation_expiry_and_budget_in_that_order() {
        let now = at("2026-11-22T12:00:00Z");
        let s = state("a");
        let active = token("team-a", "bot").build();
        assert_eq!(phase(&active, Some(&s), false, now), TokenPhase::Active);
        assert_eq!(phase(&active, Some(&s), true, now), TokenPhase::Exhausted);
        assert_eq!(phase(&active, None, false, now), TokenPhase::Pending);
        let expired = token("team-a", "bot")
            .expires("2026-11-22T12:00:00Z")
            .build();
        assert_eq!(phase(&expired, Some(&s), true, now), TokenPhase::Expired);
        let revoked = token("team-a", "bot")
            .expires("2026-11-01T00:00:00Z")
            .revoked()
            .build();
        assert_eq!(phase(&revoked, Some(&s), true, now), TokenPhase::Revoked);
    }

    #[test]
    fn expiry_is_the_next_change_so_the_controller_requeues_at_that_moment() {
        let t = token("team-a", "bot")
            .expires("2026-11-22T18:30:00Z")
            .build();
        let now = at("2026-11-22T12:00:00Z");
        assert_eq!(
            next_change(&t, Some(&state("a")), now),
            Some(at("2026-11-22T18:30:00Z"))
        );
        assert_eq!(
            requeue_at(now, next_change(&t, Some(&state("a")), now)),
            Action::requeue(std::time::Duration::from_secs(3600))
        );
        let soon = token("team-a", "bot")
            .expires("2026-11-22T12:00:42Z")
            .build();
        assert_eq!(
            requeue_at(now, next_change(&soon, Some(&state("a")), now)),
            Action::requeue(std::time::Duration::from_secs(42))
        );
    }

    #[test]
    fn status_shows_hash_prefix_and_never_the_value() {
        let t = token("team-a", "bot").build();
        let secret = build_secret(&t, "pb_supersecretvalue", at("2026-11-22T12:00:00Z"), None);
        let s = read_secret(&secret).unwrap();
        let status = desired_status(&t, Some(&s), vec![], at("2026-11-22T12:00:00Z"));
        assert_eq!(status.hash_prefix.as_deref(), Some(&s.current_hash[..12]));
        assert_eq!(status.phase, Some(TokenPhase::Active));
        let json = serde_json::to_string(&status).unwrap();
        assert!(!json.contains("supersecret"));
        assert!(!json.contains(&s.current_hash));
    }

    #[test]
    fn unchanged_token_gives_an_identical_status() {
        let mut t = token("team-a", "bot").build();
        let s = state("a");
        let first = desired_status(&t, Some(&s), vec![], at("2026-11-22T12:00:00Z"));
        t.status = Some(first.clone());
        assert_eq!(
            desired_status(&t, Some(&s), vec![], at("2026-11-22T12:05:00Z")),
            first
        );
    }
}
