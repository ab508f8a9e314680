//! Publishes the audit keyring: which verification key may sign for which
//! writers (docs/audit.md, "Keyring").
//!
//! Every writer signs its segments with its own key: the operator and the
//! webhook with the keys the chart mounts into them, each enforced namespace's
//! sidecars with the key in that namespace's Secret `policybind-audit-key`. A
//! verifier must know which key speaks for whom, or any key could sign for any
//! writer. The leader keeps the ConfigMap [`names::AUDIT_KEYRING`] (data key
//! [`keys::AUDIT_KEYRING`]) in its own namespace, where workloads cannot write,
//! up to date: the operator's key bound to [`writers::OPERATORS`], the
//! webhook's to [`writers::WEBHOOKS`], and every namespace's key to
//! [`writers::sidecars_of`] that namespace. `policybind audit verify
//! --cluster-keyring` reads it.
//!
//! Rotation keeps the trail verifiable: a key that is no longer in use (its
//! Secret was replaced or deleted) stays in the keyring with `retiredAt` set to
//! when the operator noticed, so it still verifies what it signed before; a key
//! is never removed. A key's `notBefore` is when its Secret was created, or the
//! Unix epoch when that is unknown (a key given as a file), so no genuine
//! segment is refused for being older than the publication.
//!
//! Every pass reads the published document first and builds on it, so entries
//! survive operator restarts; a document that does not parse is replaced (and
//! the operator says so in its log and its trail). Nothing is written when
//! nothing changed.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::Patch;
use policybind_crds::wire::{keys, names, writers};
use policybind_engine::audit::{AuditEvent, AuditVerifyingKey, KeyringDocument, KeyringEntry};
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::error::{Error, Result};

/// Label of publication failures in `policybind_operator_reconcile_errors_total`.
pub const CONTROLLER: &str = "audit_keyring";
/// Time between passes. A pass reads the cache and one ConfigMap (and the
/// webhook's key Secret), and writes only when something changed.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// A key in use now, and the writers it signs for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentKey {
    /// The public half.
    pub key: AuditVerifyingKey,
    /// Writer globs the key may sign for.
    pub writers: Vec<String>,
    /// When the key came into use (its Secret's creation), if known.
    pub since: Option<DateTime<Utc>>,
}

impl CurrentKey {
    /// The operator's own key, bound to every operator replica.
    pub fn operator(key: AuditVerifyingKey, since: Option<DateTime<Utc>>) -> Self {
        CurrentKey {
            key,
            writers: vec![writers::OPERATORS.to_string()],
            since,
        }
    }

    /// The webhook's key, bound to every webhook replica.
    pub fn webhook(key: AuditVerifyingKey, since: Option<DateTime<Utc>>) -> Self {
        CurrentKey {
            key,
            writers: vec![writers::WEBHOOKS.to_string()],
            since,
        }
    }
}

/// Where the keys that are not namespace keys come from.
#[derive(Clone, Debug, Default)]
pub struct FixedKeys {
    /// The operator's own key (none when it keeps no audit trail).
    pub operator: Option<CurrentKey>,
    /// Secret in the operator's namespace holding the webhook's signing key
    /// (data key `signing-key`); only its public half is published.
    pub webhook_secret: Option<String>,
}

/// What one pass changed, as `keyId (writers)` strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyringChanges {
    /// Keys published for the first time.
    pub added: Vec<String>,
    /// Keys no longer in use: retired now.
    pub retired: Vec<String>,
    /// Retired keys in use again: their retirement is lifted.
    pub restored: Vec<String>,
    /// Entries of the published document that did not check (not a valid key,
    /// id not matching, ...): dropped.
    pub dropped: Vec<String>,
}

impl KeyringChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.retired.is_empty()
            && self.restored.is_empty()
            && self.dropped.is_empty()
    }
}

fn describe(entry: &KeyringEntry) -> String {
    format!("{} ({})", entry.key_id, entry.writers.join(", "))
}

/// Whether `entry` is valid on its own (a document with just it compiles).
fn entry_checks(entry: &KeyringEntry) -> bool {
    KeyringDocument {
        keys: vec![entry.clone()],
        ..KeyringDocument::default()
    }
    .compile()
    .is_ok()
}

/// The keyring to publish: `previous` with every `current` key present and
/// unretired, and every other entry retired at `now`. Pure, so the rules are
/// tested without a cluster.
pub fn next_keyring(
    previous: &KeyringDocument,
    current: &[CurrentKey],
    now: DateTime<Utc>,
) -> (KeyringDocument, KeyringChanges) {
    let mut changes = KeyringChanges::default();
    let mut entries: Vec<KeyringEntry> = Vec::with_capacity(previous.keys.len() + current.len());
    for entry in &previous.keys {
        if entry_checks(entry) {
            entries.push(entry.clone());
        } else {
            changes.dropped.push(describe(entry));
        }
    }
    let mut in_use = vec![false; entries.len()];
    for key in current {
        let key_id = key.key.key_id();
        let found = entries
            .iter()
            .position(|e| e.key_id == key_id && e.writers == key.writers);
        match found {
            Some(index) => {
                in_use[index] = true;
                if entries[index].retired_at.take().is_some() {
                    changes.restored.push(describe(&entries[index]));
                }
            }
            None => {
                let since = key.since.unwrap_or(DateTime::UNIX_EPOCH);
                // PEM encoding of a valid public key does not fail.
                let Ok(entry) = KeyringEntry::new(&key.key, key.writers.clone(), since) else {
                    continue;
                };
                changes.added.push(describe(&entry));
                entries.push(entry);
                in_use.push(true);
            }
        }
    }
    for (entry, used) in entries.iter_mut().zip(&in_use) {
        if !used && entry.retired_at.is_none() {
            // Retirement must come after the start of validity, even with a
            // clock behind the API server's.
            let at = now.max(entry.not_before + chrono::Duration::seconds(1));
            entry.retired_at = Some(at);
            changes.retired.push(describe(entry));
        }
    }
    entries.sort_by(|a, b| {
        (&a.writers, a.not_before, &a.key_id).cmp(&(&b.writers, b.not_before, &b.key_id))
    });
    let document = KeyringDocument {
        keys: entries,
        ..KeyringDocument::default()
    };
    (document, changes)
}

/// Every enforced namespace's key (the public half), from the cached
/// `policybind-audit-key` Secrets, bound to that namespace's sidecars and gateway replicas.
pub fn namespace_keys(ctx: &Context) -> Vec<CurrentKey> {
    crate::controllers::namespace::audit_public_keys(&ctx.stores)
        .into_iter()
        .map(|(namespace, public)| CurrentKey {
            key: public.key,
            writers: writers::enforcement_points_of(&namespace),
            since: public.created,
        })
        .collect()
}

/// The webhook's key, read from its Secret in the operator's namespace.
async fn webhook_key(ctx: &Context, secret: &str) -> Result<CurrentKey> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let secret = api.get(secret).await?;
    let key = policybind_audit::keys::signing_key_of(&secret).map_err(Error::Audit)?;
    Ok(CurrentKey::webhook(
        key.verifying_key(),
        policybind_audit::keys::secret_created(&secret),
    ))
}

/// The published document, if any: `Ok(None)` when there is none yet,
/// `Err(reason)` inside when it does not parse.
async fn published(ctx: &Context) -> Result<Option<std::result::Result<KeyringDocument, String>>> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let Some(config_map) = api.get_opt(names::AUDIT_KEYRING).await? else {
        return Ok(None);
    };
    let json = config_map
        .data
        .as_ref()
        .and_then(|data| data.get(keys::AUDIT_KEYRING));
    Ok(Some(match json {
        Some(json) => KeyringDocument::parse(json.as_bytes()).map_err(|e| e.to_string()),
        None => Err(format!("no data key {}", keys::AUDIT_KEYRING)),
    }))
}

/// One pass: read what is published, merge the keys in use, write if changed.
pub async fn publish_once(ctx: &Context, current: &[CurrentKey]) -> Result<KeyringChanges> {
    let (previous, unreadable) = match published(ctx).await? {
        None => (KeyringDocument::default(), None),
        Some(Ok(document)) => (document, None),
        Some(Err(reason)) => (KeyringDocument::default(), Some(reason)),
    };
    let (next, changes) = next_keyring(&previous, current, ctx.now());
    if unreadable.is_none() && next == previous {
        return Ok(changes);
    }
    if let Some(reason) = &unreadable {
        tracing::error!(%reason, configmap = names::AUDIT_KEYRING, "the published audit keyring did not parse; replacing it (retired keys it held are lost from it: restore them from a copy)");
        ctx.record(
            AuditEvent::lifecycle("audit-keyring-replaced").detail("reason", reason.clone()),
        );
    }
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let config_map = policybind_audit::keys::keyring_config_map(&ctx.settings.namespace, &next);
    api.patch(
        names::AUDIT_KEYRING,
        &Context::apply_params(),
        &Patch::Apply(&config_map),
    )
    .await?;
    record_changes(ctx, &changes);
    Ok(changes)
}

/// Logs and records (in the operator's own trail) what a pass changed.
fn record_changes(ctx: &Context, changes: &KeyringChanges) {
    let kinds = [
        ("audit-key-published", &changes.added),
        ("audit-key-retired", &changes.retired),
        ("audit-key-restored", &changes.restored),
        ("audit-key-dropped", &changes.dropped),
    ];
    for (kind, keys) in kinds {
        for key in keys {
            tracing::info!(key = %key, change = kind, "audit keyring");
            ctx.record(AuditEvent::lifecycle(kind).detail("key", key.clone()));
        }
    }
}

/// Publishes once the caches are filled, then whenever the namespace keys change
/// (within a second) and every `interval` until `shutdown`. Runs on the leader only, like the controllers.
pub async fn keyring_loop(
    ctx: Arc<Context>,
    fixed: FixedKeys,
    interval: Duration,
    shutdown: CancellationToken,
) {
    if fixed.webhook_secret.is_none() {
        tracing::warn!(
            "the webhook's audit key is not published: no --webhook-audit-key-secret; its segments will not verify with the published keyring"
        );
    }
    // An empty cache would retire every namespace's key: wait until it is filled.
    if !ctx
        .until_caches_filled(&shutdown, "the audit keyring")
        .await
    {
        return;
    }
    let mut webhook_problem: Option<String> = None;
    let mut published: Option<Vec<(String, Vec<String>)>> = None;
    let mut last_pass = tokio::time::Instant::now();
    loop {
        // A new namespace key is published within a second of reaching the cache
        // (its sidecars' first segments must verify with the published keyring);
        // otherwise one full pass per interval (the webhook's key is read then).
        let seen = key_summary(&namespace_keys(&ctx));
        let due = published.as_ref() != Some(&seen) || last_pass.elapsed() >= interval;
        if due {
            last_pass = tokio::time::Instant::now();
            if publish_pass(&ctx, &fixed, &mut webhook_problem).await {
                published = Some(seen);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CACHE_POLL.min(interval)) => {}
        }
    }
}

/// How often the cached namespace keys are compared with the published ones.
const CACHE_POLL: Duration = Duration::from_secs(1);

/// Key ids and their writers, to notice a changed set without an API call.
fn key_summary(keys: &[CurrentKey]) -> Vec<(String, Vec<String>)> {
    let mut summary: Vec<_> = keys
        .iter()
        .map(|k| (k.key.key_id().to_string(), k.writers.clone()))
        .collect();
    summary.sort();
    summary
}

/// One publication: the fixed keys, the webhook's and every namespace's. False when
/// nothing was published (the webhook's key unreadable, or the write failed).
async fn publish_pass(
    ctx: &Context,
    fixed: &FixedKeys,
    webhook_problem: &mut Option<String>,
) -> bool {
    let mut current: Vec<CurrentKey> = fixed.operator.iter().cloned().collect();
    if let Some(secret) = &fixed.webhook_secret {
        match webhook_key(ctx, secret).await {
            Ok(key) => {
                current.push(key);
                *webhook_problem = None;
            }
            Err(error) => {
                // Without the webhook's key this pass, its entry would be
                // retired: skip the pass instead.
                let message = error.to_string();
                if webhook_problem.as_deref() != Some(message.as_str()) {
                    tracing::warn!(secret, %error, "cannot read the webhook's audit key; the keyring is not updated until it can");
                }
                *webhook_problem = Some(message);
                ctx.metrics.failed(CONTROLLER, &error);
                return false;
            }
        }
    }
    current.extend(namespace_keys(ctx));
    match publish_once(ctx, &current).await {
        Ok(_) => true,
        Err(error) => {
            ctx.metrics.failed(CONTROLLER, &error);
            tracing::warn!(%error, "audit keyring not published; retrying");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policybind_engine::audit::AuditSigningKey;
    use std::collections::BTreeMap;

    fn by_key_id(document: &KeyringDocument) -> BTreeMap<&str, Vec<&KeyringEntry>> {
        let mut map: BTreeMap<&str, Vec<&KeyringEntry>> = BTreeMap::new();
        for entry in &document.keys {
            map.entry(entry.key_id.as_str()).or_default().push(entry);
        }
        map
    }

    fn key(seed: u8) -> AuditVerifyingKey {
        AuditSigningKey::from_seed(&[seed; 32]).verifying_key()
    }

    fn at(day: u32) -> DateTime<Utc> {
        format!("2026-11-{day:02}T00:00:00Z").parse().unwrap()
    }

    fn namespace_key(seed: u8, namespace: &str, day: u32) -> CurrentKey {
        CurrentKey {
            key: key(seed),
            writers: writers::enforcement_points_of(namespace),
            since: Some(at(day)),
        }
    }

    #[test]
    fn every_key_in_use_is_published_bound_to_its_writers() {
        let current = [
            CurrentKey::operator(key(1), None),
            CurrentKey::webhook(key(2), Some(at(1))),
            namespace_key(3, "team-a", 2),
        ];
        let (document, changes) = next_keyring(&KeyringDocument::default(), &current, at(10));
        assert_eq!(changes.added.len(), 3);
        let keyring = document.compile().unwrap();
        let day = Some(at(11));
        assert!(
            keyring
                .key_for(key(1).key_id(), "operator/policybind-operator-0", day)
                .is_ok()
        );
        assert!(
            keyring
                .key_for(key(2).key_id(), "webhook/wh-1", day)
                .is_ok()
        );
        assert!(
            keyring
                .key_for(key(3).key_id(), "sidecar/team-a/bot-1", day)
                .is_ok()
        );
        // Bound to its writers only.
        assert!(
            keyring
                .key_for(key(3).key_id(), "sidecar/team-b/bot-1", day)
                .is_err()
        );
        assert!(
            keyring
                .key_for(key(3).key_id(), "webhook/wh-1", day)
                .is_err()
        );
        assert!(
            keyring
                .key_for(key(2).key_id(), "operator/policybind-operator-0", day)
                .is_err()
        );
        // A file key's start is unknown: the epoch, so nothing genuine is refused.
        let operator = &by_key_id(&document)[key(1).key_id()][0];
        assert_eq!(operator.not_before, DateTime::UNIX_EPOCH);
        assert_eq!(by_key_id(&document)[key(3).key_id()][0].not_before, at(2));
    }

    #[test]
    fn an_unchanged_cluster_changes_nothing() {
        let current = [
            namespace_key(3, "team-a", 2),
            CurrentKey::operator(key(1), None),
        ];
        let (first, _) = next_keyring(&KeyringDocument::default(), &current, at(10));
        let (second, changes) = next_keyring(&first, &current, at(20));
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(second, first);
        // Order of discovery does not matter either.
        let reversed: Vec<_> = current.iter().rev().cloned().collect();
        assert_eq!(next_keyring(&first, &reversed, at(20)).0, first);
    }

    #[test]
    fn a_rotated_key_is_retired_not_removed_and_still_verifies_what_it_signed_before() {
        let (first, _) = next_keyring(
            &KeyringDocument::default(),
            &[namespace_key(3, "team-a", 2)],
            at(10),
        );
        // The Secret was replaced on day 12 with a new key.
        let (second, changes) = next_keyring(&first, &[namespace_key(4, "team-a", 12)], at(12));
        assert_eq!(changes.retired.len(), 1);
        assert_eq!(changes.added.len(), 1);
        let keyring = second.compile().unwrap();
        let writer = "sidecar/team-a/bot-1";
        assert!(
            keyring
                .key_for(key(3).key_id(), writer, Some(at(11)))
                .is_ok()
        );
        assert!(
            keyring
                .key_for(key(3).key_id(), writer, Some(at(13)))
                .is_err(),
            "the old key signs nothing after its retirement"
        );
        assert!(
            keyring
                .key_for(key(4).key_id(), writer, Some(at(13)))
                .is_ok()
        );
        assert!(
            keyring
                .key_for(key(4).key_id(), writer, Some(at(11)))
                .is_err(),
            "the new key signed nothing before its Secret existed"
        );
        // Retirement is kept as first noticed.
        let (third, changes) = next_keyring(&second, &[namespace_key(4, "team-a", 12)], at(20));
        assert!(changes.is_empty());
        assert_eq!(third, second);
        // A key brought back is in use again.
        let (fourth, changes) = next_keyring(&third, &[namespace_key(3, "team-a", 2)], at(21));
        assert_eq!(changes.restored.len(), 1);
        assert_eq!(changes.retired.len(), 1);
        assert!(
            fourth
                .compile()
                .unwrap()
                .key_for(key(3).key_id(), writer, Some(at(22)))
                .is_ok()
        );
    }

    #[test]
    fn entries_that_do_not_check_are_dropped_and_said_so() {
        let (mut document, _) = next_keyring(
            &KeyringDocument::default(),
            &[namespace_key(3, "team-a", 2)],
            at(10),
        );
        let mut forged = document.keys[0].clone();
        forged.key_id = "0000000000000000".into();
        forged.writers = vec!["**".into()];
        document.keys.push(forged);
        let (next, changes) = next_keyring(&document, &[namespace_key(3, "team-a", 2)], at(11));
        assert_eq!(changes.dropped.len(), 1, "{changes:?}");
        assert_eq!(next.keys.len(), 1);
        next.compile().unwrap();
    }

    #[test]
    fn retirement_comes_after_the_start_even_with_a_slow_clock() {
        let (first, _) = next_keyring(
            &KeyringDocument::default(),
            &[namespace_key(3, "team-a", 15)],
            at(10),
        );
        let (second, changes) = next_keyring(&first, &[], at(10));
        assert_eq!(changes.retired.len(), 1);
        second.compile().unwrap();
    }
}
