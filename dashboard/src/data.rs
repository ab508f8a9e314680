//! One snapshot of what the dashboard shows, read with the dashboard's own
//! identity and shared by every viewer; pages filter it per viewer.
//!
//! The snapshot is refreshed at most once per refresh interval (one list per
//! kind, one cluster-wide list of audit segment ConfigMaps, the published
//! keyring), so a hundred viewers cost the API server what one does.
//!
//! A namespace's trail is verified again only when it changed: each verified
//! trail is kept with its basis (the keyring and every segment's name and
//! resourceVersion), and a reload whose basis for the namespace is the same
//! reuses it. A live writer's namespace changes with each flush; quiet ones
//! (most, in a large cluster) cost one list and no verification.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use policybind_audit::{ConfigMapStore, RawSegment, StoredSegment};
use policybind_crds::wire::labels;
use policybind_crds::{
    AIPolicy, AccessToken, ApprovalRequest, ClusterAIPolicy, Incident, ModelDeployment,
};
use policybind_engine::audit::{
    AuditRecord, Keyring, VerifyOptions, VerifyReport, verify_documents,
};
use serde::de::DeserializeOwned;

use crate::auth::Shown;

/// Records kept per namespace for the decision pages (the newest); the
/// verification covers every record.
pub const RECORDS_KEPT_PER_NAMESPACE: usize = 100_000;

/// A namespace's audit trail: its records and their verification.
#[derive(Debug, Default)]
pub struct Trail {
    /// Records of every writer in the namespace, oldest first.
    pub records: Vec<AuditRecord>,
    /// Verification of every segment against the published keyring.
    pub report: VerifyReport,
}

/// Whether signatures could be checked.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyringState {
    /// The published keyring was read; it holds this many keys.
    Loaded { keys: usize },
    /// It could not be read: signatures are not checked and no writer is
    /// shown as verified.
    Unavailable(String),
}

/// Everything the pages show.
#[derive(Debug)]
pub struct Snapshot {
    pub taken_at: DateTime<Utc>,
    pub approvals: Vec<ApprovalRequest>,
    pub models: Vec<ModelDeployment>,
    pub tokens: Vec<AccessToken>,
    pub incidents: Vec<Incident>,
    /// `(policy as records name it, rule)` → the rule's message.
    pub rule_messages: HashMap<(String, String), String>,
    /// Audit trails by namespace (shared with the next snapshot when the
    /// namespace's segments did not change).
    pub trails: BTreeMap<String, Arc<Trail>>,
    pub keyring: KeyringState,
    /// What could not be read, for a banner (the page shows the rest).
    pub problems: Vec<String>,
}

impl Snapshot {
    /// An empty snapshot taken at `taken_at` (tests fill it).
    pub fn empty(taken_at: DateTime<Utc>) -> Self {
        Snapshot {
            taken_at,
            approvals: Vec::new(),
            models: Vec::new(),
            tokens: Vec::new(),
            incidents: Vec::new(),
            rule_messages: HashMap::new(),
            trails: BTreeMap::new(),
            keyring: KeyringState::Unavailable("not read".into()),
            problems: Vec::new(),
        }
    }

    /// Namespaces that hold objects of the kind `shown`: the only ones a
    /// viewer's access is asked about.
    pub fn namespaces_of(&self, shown: Shown) -> BTreeSet<String> {
        fn of<K: ResourceExt>(objects: &[K]) -> BTreeSet<String> {
            objects.iter().filter_map(|o| o.namespace()).collect()
        }
        match shown {
            Shown::AuditSegments => self.trails.keys().cloned().collect(),
            Shown::ApprovalRequests => of(&self.approvals),
            Shown::ModelDeployments => of(&self.models),
            Shown::AccessTokens => of(&self.tokens),
            Shown::Incidents => of(&self.incidents),
        }
    }
}

async fn list_all<K>(client: &Client, problems: &mut Vec<String>) -> Vec<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    match Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(error) => {
            problems.push(format!("listing {}: {error}", K::plural(&())));
            Vec::new()
        }
    }
}

/// Reads the snapshot. Nothing here fails the page: what cannot be read is
/// named in `problems` and left out.
/// What a namespace's verified trail was built from: the published keyring
/// (as JSON; `None` when it could not be read) and every segment's name and
/// resourceVersion. The API server changes the resourceVersion with every
/// write, so an equal basis means the same segments, verified the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailBasis {
    keyring: Option<String>,
    segments: Vec<(String, String)>,
}

/// Verified trails by namespace, with what each was built from.
pub type VerifiedTrails = BTreeMap<String, (TrailBasis, Arc<Trail>)>;

/// Splits the listed segments into trails that can be reused from
/// `previous` (same basis) and namespaces that must be verified again.
pub fn reuse_unchanged(
    segments: BTreeMap<String, Vec<ConfigMap>>,
    keyring: Option<&str>,
    previous: &VerifiedTrails,
) -> (
    VerifiedTrails,
    BTreeMap<String, (TrailBasis, Vec<RawSegment>)>,
) {
    let mut reused = VerifiedTrails::new();
    let mut changed = BTreeMap::new();
    for (namespace, config_maps) in segments {
        let mut names: Vec<(String, String)> = config_maps
            .iter()
            .map(|cm| {
                (
                    cm.name_any(),
                    cm.metadata.resource_version.clone().unwrap_or_default(),
                )
            })
            .collect();
        names.sort();
        let basis = TrailBasis {
            keyring: keyring.map(str::to_string),
            segments: names,
        };
        match previous.get(&namespace) {
            // A segment without a resourceVersion (never from an API server)
            // is never taken as unchanged.
            Some((before, trail))
                if *before == basis && basis.segments.iter().all(|(_, v)| !v.is_empty()) =>
            {
                reused.insert(namespace, (basis, trail.clone()));
            }
            _ => {
                let raw = config_maps.iter().map(ConfigMapStore::raw).collect();
                changed.insert(namespace, (basis, raw));
            }
        }
    }
    (reused, changed)
}

/// Reads everything but the trails of namespaces whose segments are as in
/// `previous`; returns the snapshot and its verified trails for the next load.
pub async fn load(
    client: &Client,
    system_namespace: &str,
    previous: &VerifiedTrails,
) -> (Snapshot, VerifiedTrails) {
    let mut snapshot = Snapshot::empty(Utc::now());
    let problems = &mut snapshot.problems;
    snapshot.approvals = list_all(client, problems).await;
    snapshot.models = list_all(client, problems).await;
    snapshot.tokens = list_all(client, problems).await;
    snapshot.incidents = list_all(client, problems).await;
    let policies: Vec<AIPolicy> = list_all(client, problems).await;
    let cluster_policies = match Api::<ClusterAIPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(error) => {
            problems.push(format!("listing clusteraipolicies: {error}"));
            Vec::new()
        }
    };
    snapshot.rule_messages = rule_messages(&policies, &cluster_policies);
    let segments = list_segments(client, problems).await;
    let keyring =
        match policybind_audit::keys::keyring_from_config_map(client.clone(), system_namespace)
            .await
        {
            Ok(document) => document
                .compile()
                .map(|keyring| {
                    (
                        document.keys.len(),
                        keyring,
                        serde_json::to_string(&document).ok(),
                    )
                })
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
    snapshot.keyring = match &keyring {
        Ok((keys, _, _)) => KeyringState::Loaded { keys: *keys },
        Err(error) => KeyringState::Unavailable(format!(
            "the published keyring (ConfigMap {system_namespace}/{}) could not be read: {error}",
            policybind_crds::wire::names::AUDIT_KEYRING
        )),
    };
    let (keyring, keyring_basis) = match keyring {
        Ok((_, keyring, basis)) => (Some(keyring), basis),
        Err(_) => (None, None),
    };
    let (mut verified, changed) = reuse_unchanged(segments, keyring_basis.as_deref(), previous);
    let built = tokio::task::spawn_blocking(move || {
        changed
            .into_iter()
            .map(|(namespace, (basis, raw))| {
                let trail = build_trail(&namespace, raw, keyring.as_ref());
                (namespace, (basis, Arc::new(trail)))
            })
            .collect::<VerifiedTrails>()
    })
    .await;
    verified.extend(built.unwrap_or_default());
    snapshot.trails = verified
        .iter()
        .map(|(namespace, (_, trail))| (namespace.clone(), trail.clone()))
        .collect();
    (snapshot, verified)
}

/// Every audit segment ConfigMap in the cluster, by namespace.
async fn list_segments(
    client: &Client,
    problems: &mut Vec<String>,
) -> BTreeMap<String, Vec<ConfigMap>> {
    let mut by_namespace: BTreeMap<String, Vec<ConfigMap>> = BTreeMap::new();
    let api = Api::<ConfigMap>::all(client.clone());
    let mut params = ListParams::default()
        .labels(labels::AUDIT_SEGMENT)
        .limit(200);
    loop {
        let page = match api.list(&params).await {
            Ok(page) => page,
            Err(error) => {
                problems.push(format!("listing audit segment ConfigMaps: {error}"));
                break;
            }
        };
        for config_map in page.items {
            let namespace = config_map.namespace().unwrap_or_default();
            by_namespace.entry(namespace).or_default().push(config_map);
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    by_namespace
}

/// Verifies and parses one namespace's segments (pure; CPU-bound).
pub fn build_trail(namespace: &str, mut raw: Vec<RawSegment>, keyring: Option<&Keyring>) -> Trail {
    raw.sort_by(|a, b| a.name.cmp(&b.name));
    let options = VerifyOptions {
        keyring: keyring.cloned(),
        // The open tail of a live writer is normal; it is shown as unproven.
        allow_open_tail: true,
        ..VerifyOptions::default()
    };
    let report = verify_documents(
        raw.len(),
        |i| (format!("{namespace}/{}", raw[i].name), raw[i].json.clone()),
        &options,
    );
    let mut records: Vec<AuditRecord> = StoredSegment::parse_many(raw)
        .into_iter()
        .filter_map(|stored| stored.content.ok())
        .flat_map(|segment| segment.records)
        .collect();
    records.sort_by(|a, b| a.time.get().cmp(&b.time.get()).then(a.seq.cmp(&b.seq)));
    if records.len() > RECORDS_KEPT_PER_NAMESPACE {
        records.drain(..records.len() - RECORDS_KEPT_PER_NAMESPACE);
    }
    Trail { records, report }
}

/// Rule messages by the policy name audit records carry: `namespace/name`
/// for an AIPolicy, `name` for a ClusterAIPolicy.
fn rule_messages(
    policies: &[AIPolicy],
    cluster_policies: &[ClusterAIPolicy],
) -> HashMap<(String, String), String> {
    let mut messages = HashMap::new();
    for policy in policies {
        let id = format!(
            "{}/{}",
            policy.namespace().unwrap_or_default(),
            policy.name_any()
        );
        for rule in &policy.spec.rules {
            if let Some(message) = &rule.message {
                messages.insert((id.clone(), rule.name.clone()), message.clone());
            }
        }
    }
    for policy in cluster_policies {
        for rule in &policy.spec.rules {
            if let Some(message) = &rule.message {
                messages.insert((policy.name_any(), rule.name.clone()), message.clone());
            }
        }
    }
    messages
}

/// The shared snapshot, reloaded when older than the refresh interval. One
/// reload at a time: concurrent pages wait for it instead of each listing.
pub struct SnapshotCache {
    client: Client,
    system_namespace: String,
    refresh: Duration,
    current: tokio::sync::Mutex<Current>,
}

#[derive(Default)]
struct Current {
    snapshot: Option<(Instant, Arc<Snapshot>)>,
    verified: VerifiedTrails,
}

impl SnapshotCache {
    pub fn new(client: Client, system_namespace: String, refresh: Duration) -> Self {
        SnapshotCache {
            client,
            system_namespace,
            refresh,
            current: tokio::sync::Mutex::new(Current::default()),
        }
    }

    pub async fn get(&self) -> Arc<Snapshot> {
        let mut current = self.current.lock().await;
        if let Some((at, snapshot)) = current.snapshot.as_ref()
            && at.elapsed() < self.refresh
        {
            return snapshot.clone();
        }
        let (snapshot, verified) =
            load(&self.client, &self.system_namespace, &current.verified).await;
        let snapshot = Arc::new(snapshot);
        current.snapshot = Some((Instant::now(), snapshot.clone()));
        current.verified = verified;
        snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policybind_crds::Effect;
    use policybind_engine::audit::{
        AuditEvent, AuditSigningKey, Chain, Hash256, RecordTime, Segment,
    };

    /// A sealed segment of `count` decisions by `writer`, signed with `key`.
    fn sealed(writer: &str, count: usize, key: &AuditSigningKey) -> Vec<u8> {
        let at = RecordTime::new("2026-12-01T12:00:00Z".parse().unwrap());
        let mut chain = Chain::new(writer);
        let records = (0..count)
            .map(|_| chain.append(AuditEvent::decision(Effect::Deny), at))
            .collect();
        let mut segment = Segment::open(Hash256::ZERO, records);
        segment.seal(at, key);
        serde_json::to_vec(&segment).unwrap()
    }

    fn trail_of(json: Vec<u8>, keyring: &Keyring) -> Trail {
        let raw = RawSegment {
            name: "seg-1".into(),
            size_bytes: json.len() as u64,
            json: Ok(json),
        };
        build_trail("team-a", vec![raw], Some(keyring))
    }

    fn segment(name: &str, resource_version: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm.metadata.namespace = Some("team-a".into());
        cm.metadata.resource_version = Some(resource_version.into());
        cm
    }

    fn listed(segments: &[(&str, &str)]) -> BTreeMap<String, Vec<ConfigMap>> {
        BTreeMap::from([(
            "team-a".to_string(),
            segments.iter().map(|(n, v)| segment(n, v)).collect(),
        )])
    }

    #[test]
    fn a_trail_is_verified_again_only_when_a_segment_or_the_keyring_changed() {
        let first = [("seg-1", "10"), ("seg-2", "11")];
        let (reused, changed) = reuse_unchanged(listed(&first), Some("k1"), &VerifiedTrails::new());
        assert!(reused.is_empty());
        let (basis, _) = changed.get("team-a").unwrap().clone();
        let trail = Arc::new(Trail::default());
        let previous = VerifiedTrails::from([("team-a".to_string(), (basis, trail.clone()))]);

        // Same segments (in another order), same keyring: the same trail.
        let reordered = [("seg-2", "11"), ("seg-1", "10")];
        let (reused, changed) = reuse_unchanged(listed(&reordered), Some("k1"), &previous);
        assert!(changed.is_empty());
        assert!(Arc::ptr_eq(&reused["team-a"].1, &trail));

        // A flushed open tail, a new segment, a deleted one, another keyring.
        for (segments, keyring) in [
            (&[("seg-1", "10"), ("seg-2", "12")][..], Some("k1")),
            (
                &[("seg-1", "10"), ("seg-2", "11"), ("seg-3", "13")][..],
                Some("k1"),
            ),
            (&[("seg-2", "11")][..], Some("k1")),
            (&first[..], Some("k2")),
            (&first[..], None),
        ] {
            let (reused, changed) = reuse_unchanged(listed(segments), keyring, &previous);
            assert!(reused.is_empty(), "{segments:?} {keyring:?}");
            assert_eq!(changed["team-a"].1.len(), segments.len());
        }

        // Without resourceVersions nothing is taken as unchanged.
        let unversioned = [("seg-1", "")];
        let (_, changed) = reuse_unchanged(listed(&unversioned), None, &VerifiedTrails::new());
        let (basis, _) = changed["team-a"].clone();
        let previous = VerifiedTrails::from([("team-a".to_string(), (basis, trail))]);
        let (reused, _) = reuse_unchanged(listed(&unversioned), None, &previous);
        assert!(reused.is_empty());

        // A namespace with no segment left has no trail.
        let (reused, changed) = reuse_unchanged(BTreeMap::new(), Some("k1"), &previous);
        assert!(reused.is_empty() && changed.is_empty());
    }

    #[test]
    fn a_signed_trail_verifies_against_the_keyring_and_an_edit_is_found() {
        let key = AuditSigningKey::from_seed(&[7; 32]);
        let keyring =
            Keyring::single(key.verifying_key(), vec!["sidecar/team-a/*".into()]).unwrap();
        let json = sealed("sidecar/team-a/pod-1", 3, &key);
        let trail = trail_of(json.clone(), &keyring);
        assert!(trail.report.is_ok(), "{:?}", trail.report.problems);
        assert_eq!(trail.records.len(), 3);
        assert_eq!(trail.report.writers[0].sealed_segments, 1);

        let edited = String::from_utf8(json)
            .unwrap()
            .replacen("\"Deny\"", "\"Allow\"", 1);
        let trail = trail_of(edited.into_bytes(), &keyring);
        assert!(!trail.report.is_ok());
        assert_eq!(trail.report.problems[0].writer, "sidecar/team-a/pod-1");
    }

    #[test]
    fn a_key_not_bound_to_the_writer_is_not_trusted() {
        let key = AuditSigningKey::from_seed(&[7; 32]);
        let keyring =
            Keyring::single(key.verifying_key(), vec!["sidecar/team-b/*".into()]).unwrap();
        let trail = trail_of(sealed("sidecar/team-a/pod-1", 2, &key), &keyring);
        assert!(!trail.report.is_ok());
    }
}
