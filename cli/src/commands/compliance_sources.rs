//! Where `policybind report` and `policybind token` read from: a cluster
//! (kubeconfig) or manifest files and directories, plus an audit trail (directories,
//! exported files, or the cluster's audit ConfigMaps).
use std::path::PathBuf;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams};
use kube::{Client, Resource, ResourceExt};
use policybind_audit::{ConfigMapStore, DirectoryStore, RawSegment, SegmentStore, verify_stored};
use policybind_compliance::evidence::{Scope, Snapshot, Trail};
use policybind_crds::wire::labels;
use policybind_crds::{
    AIPolicy, AccessToken, ApprovalRequest, ClusterAIPolicy, EvidenceGate, Incident,
    ModelDeployment,
};
use policybind_engine::audit::{
    AuditSigningKey, AuditVerifyingKey, EXPORT_FORMAT, ExportBundle, Keyring, VerifyOptions,
};
use policybind_engine::manifest::Object;
use serde::de::DeserializeOwned;

use super::report::parse_time;

/// Sources of objects and of the audit trail.
#[derive(clap::Args, Debug, Clone)]
pub struct Sources {
    /// Manifest files or directories (as applied with kubectl). Without any, objects are
    /// read from the cluster of the kubeconfig.
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// Only this namespace: its objects, models shared cluster-wide, tokens valid there,
    /// cluster-wide policies and gates, and audit records of this namespace.
    #[arg(long, short = 'n', value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Audit records at or after this time (RFC 3339 or YYYY-MM-DD, UTC).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Audit records before this time (RFC 3339 or YYYY-MM-DD, UTC).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// The report's "now" (ages evaluation results, overdue reviews, deadlines). Default: the
    /// current time.
    #[arg(long, value_parser = parse_time)]
    pub now: Option<DateTime<Utc>>,
    /// Audit segments in this directory (a directory store or retention sink). Repeatable.
    #[arg(long = "audit-dir", value_name = "DIR")]
    pub audit_dirs: Vec<PathBuf>,
    /// An audit file: a segment, JSON lines of segments, or an export bundle. Repeatable.
    #[arg(long = "audit-file", value_name = "FILE")]
    pub audit_files: Vec<PathBuf>,
    /// In a cluster: read the audit ConfigMaps of this namespace. Default: the --namespace,
    /// or every namespace holding audit segments. Repeatable.
    #[arg(long = "audit-namespace", value_name = "NAMESPACE")]
    pub audit_namespaces: Vec<String>,
    /// In a cluster: do not read the audit trail.
    #[arg(long)]
    pub no_audit: bool,
    /// Trusted audit verification key (as for `policybind audit verify --key`). Repeatable.
    /// It is trusted for the writers --audit-key-writers names, by default every writer;
    /// with one key per writer, pass the keyring instead (--audit-keyring).
    #[arg(long = "audit-key", value_name = "FILE")]
    pub audit_keys: Vec<PathBuf>,
    /// Writers the --audit-key keys may sign for (`sidecar/team-a/*`; `**` is every
    /// writer, the default). Repeatable.
    #[arg(
        long = "audit-key-writers",
        value_name = "PATTERN",
        requires = "audit_keys"
    )]
    pub audit_key_writers: Vec<String>,
    /// Trusted audit keyring (as for `policybind audit verify --keyring`: keys bound to the
    /// writers each may sign for, the one the operator publishes in ConfigMap
    /// policybind-audit-keys). Repeatable.
    #[arg(long = "audit-keyring", value_name = "FILE")]
    pub audit_keyrings: Vec<PathBuf>,
    /// Check the trail's hashes and chains but not its signatures (the report then says the
    /// trail is not proven).
    #[arg(long, conflicts_with_all = ["audit_keys", "audit_keyrings"])]
    pub no_audit_signatures: bool,
    /// Kubeconfig (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

impl Sources {
    pub fn namespace_hint(&self) -> String {
        self.namespace
            .as_ref()
            .map_or(String::new(), |ns| format!(" (namespace {ns})"))
    }

    fn offline(&self) -> bool {
        !self.files.is_empty()
    }
}

/// What was read.
pub struct Loaded {
    pub snapshot: Snapshot,
    /// Where everything came from, for the report.
    pub descriptions: Vec<String>,
}

/// Reads objects and the trail, and builds the snapshot for the scope.
pub async fn load(sources: &Sources) -> anyhow::Result<Loaded> {
    let scope = Scope {
        namespace: sources.namespace.clone(),
        since: sources.since,
        until: sources.until,
    };
    let now = sources.now.unwrap_or_else(Utc::now);
    let mut descriptions = Vec::new();
    let (objects, client) = if sources.offline() {
        let manifests = crate::load::manifests(&sources.files)?;
        let paths: Vec<String> = sources
            .files
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        descriptions.push(format!("manifests: {}", paths.join(", ")));
        (
            manifests
                .objects
                .into_iter()
                .map(|(_, o)| o)
                .collect::<Vec<_>>(),
            None,
        )
    } else {
        let client =
            super::cluster::client(sources.kubeconfig.as_deref(), sources.context.as_deref())
                .await?;
        descriptions.push("cluster objects (kubeconfig)".to_string());
        (cluster_objects(&client).await?, Some(client))
    };
    let mut snapshot = Snapshot::from_objects(objects, scope, now);
    snapshot.trail = trail(sources, client.as_ref(), &mut descriptions).await?;
    Ok(Loaded {
        snapshot,
        descriptions,
    })
}

async fn list_all<K>(client: &Client, optional: bool) -> anyhow::Result<Vec<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    match api.list(&ListParams::default()).await {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(status)) if optional && status.code == 404 => {
            eprintln!(
                "note: the cluster does not serve {}; none are read",
                K::plural(&())
            );
            Ok(Vec::new())
        }
        Err(error) => Err(error).with_context(|| format!("listing {}", K::plural(&()))),
    }
}

async fn cluster_objects(client: &Client) -> anyhow::Result<Vec<Object>> {
    let mut objects: Vec<Object> = Vec::new();
    objects.extend(
        list_all::<ModelDeployment>(client, false)
            .await?
            .into_iter()
            .map(Object::ModelDeployment),
    );
    objects.extend(
        list_all::<ApprovalRequest>(client, false)
            .await?
            .into_iter()
            .map(Object::ApprovalRequest),
    );
    objects.extend(
        list_all::<AIPolicy>(client, false)
            .await?
            .into_iter()
            .map(Object::AIPolicy),
    );
    objects.extend(
        list_all::<ClusterAIPolicy>(client, false)
            .await?
            .into_iter()
            .map(Object::ClusterAIPolicy),
    );
    objects.extend(
        list_all::<AccessToken>(client, false)
            .await?
            .into_iter()
            .map(Object::AccessToken),
    );
    objects.extend(
        list_all::<Incident>(client, false)
            .await?
            .into_iter()
            .map(Object::Incident),
    );
    // EvidenceGate is newer than the other kinds: a cluster whose CRDs predate it has none.
    objects.extend(
        list_all::<EvidenceGate>(client, true)
            .await?
            .into_iter()
            .map(Object::EvidenceGate),
    );
    for namespace in list_all::<Namespace>(client, false).await? {
        objects.push(Object::Namespace(
            namespace.name_any(),
            namespace.labels().clone(),
        ));
    }
    Ok(objects)
}

fn audit_options(sources: &Sources) -> anyhow::Result<VerifyOptions> {
    if sources.no_audit_signatures {
        return Ok(VerifyOptions {
            keyring: None,
            allow_open_tail: true,
            ..VerifyOptions::default()
        });
    }
    if sources.audit_keys.is_empty() && sources.audit_keyrings.is_empty() {
        bail!(
            "the audit trail is read: pass --audit-keyring <keyring> or --audit-key <verification key> (or --no-audit-signatures; the report then says the trail is not proven)"
        );
    }
    let mut keyring = Keyring::default();
    for path in &sources.audit_keyrings {
        keyring = keyring.merge(policybind_audit::keys::keyring_from_file(path)?);
    }
    let writers = if sources.audit_key_writers.is_empty() {
        vec!["**".to_string()]
    } else {
        sources.audit_key_writers.clone()
    };
    for path in &sources.audit_keys {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading key {}", path.display()))?;
        let key = AuditVerifyingKey::from_key_material(&bytes)
            .or_else(|e| {
                AuditSigningKey::from_key_material(&bytes)
                    .map(|k| k.verifying_key())
                    .map_err(|_| e)
            })
            .with_context(|| format!("key {}", path.display()))?;
        keyring = keyring.merge(Keyring::single(key, writers.clone())?);
    }
    // A report covers a period that may end now: records of a writer's open last
    // segment are counted as unproven, not as a broken trail.
    Ok(VerifyOptions {
        keyring: Some(keyring),
        allow_open_tail: true,
        ..VerifyOptions::default()
    })
}

async fn trail(
    sources: &Sources,
    client: Option<&Client>,
    descriptions: &mut Vec<String>,
) -> anyhow::Result<Option<Trail>> {
    let mut stored: Vec<RawSegment> = Vec::new();
    let mut bundles: Vec<(String, ExportBundle)> = Vec::new();
    let mut from = Vec::new();
    for dir in &sources.audit_dirs {
        if !dir.is_dir() {
            bail!("{} is not a directory", dir.display());
        }
        stored.extend(DirectoryStore::open(dir)?.list().await?);
        from.push(format!("directory {}", dir.display()));
    }
    for file in &sources.audit_files {
        read_audit_file(file, &mut stored, &mut bundles)?;
        from.push(format!("file {}", file.display()));
    }
    if let Some(client) = client
        && !sources.no_audit
    {
        for namespace in audit_namespaces(sources, client).await? {
            let segments = ConfigMapStore::new(client.clone(), &namespace)
                .list()
                .await
                .with_context(|| format!("listing audit segments in namespace {namespace}"))?;
            stored.extend(segments.into_iter().map(|mut s| {
                s.name = format!("{namespace}/{}", s.name);
                s
            }));
            from.push(format!("audit ConfigMaps of namespace {namespace}"));
        }
    }
    if from.is_empty() {
        return Ok(None);
    }
    let options = audit_options(sources)?;
    let source = from.join(", ");
    descriptions.push(format!("audit trail: {source}"));
    if !bundles.is_empty() && stored.is_empty() {
        let (_, bundle) = &bundles[0];
        if bundles.len() > 1 {
            bail!("pass one export bundle at a time (or segments)");
        }
        return Ok(Some(Trail::from_export(source, bundle, &options)));
    }
    if !bundles.is_empty() {
        bail!("mix of export bundles and segments: pass one kind");
    }
    let records = stored
        .iter()
        .filter_map(|s| s.clone().parse().content.ok())
        .flat_map(|s| s.records)
        .collect();
    let verification = verify_stored(stored, &options);
    Ok(Some(Trail::new(source, verification, records)))
}

fn read_audit_file(
    path: &PathBuf,
    stored: &mut Vec<RawSegment>,
    bundles: &mut Vec<(String, ExportBundle)>,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display().to_string();
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        if value.get("format").and_then(|f| f.as_str()) == Some(EXPORT_FORMAT) {
            let bundle = serde_json::from_value(value)
                .with_context(|| format!("{name} is not a valid export bundle"))?;
            bundles.push((name, bundle));
        } else {
            stored.push(RawSegment {
                name,
                size_bytes: bytes.len() as u64,
                json: Ok(bytes),
            });
        }
        return Ok(());
    }
    // JSON lines, one segment per line; a line that does not parse is kept as a
    // malformed segment, so verification reports it.
    let text = String::from_utf8_lossy(&bytes);
    let before = stored.len();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        stored.push(RawSegment {
            name: format!("{name}:{}", number + 1),
            size_bytes: line.len() as u64,
            json: Ok(line.as_bytes().to_vec()),
        });
    }
    if stored.len() == before {
        bail!("{name} holds no segment");
    }
    Ok(())
}

async fn audit_namespaces(sources: &Sources, client: &Client) -> anyhow::Result<Vec<String>> {
    if !sources.audit_namespaces.is_empty() {
        return Ok(sources.audit_namespaces.clone());
    }
    if let Some(namespace) = &sources.namespace {
        return Ok(vec![namespace.clone()]);
    }
    let api: Api<ConfigMap> = Api::all(client.clone());
    let list = api
        .list_metadata(&ListParams::default().labels(labels::AUDIT_SEGMENT))
        .await
        .context("listing audit segment ConfigMaps")?;
    let mut namespaces: Vec<String> = list
        .items
        .iter()
        .filter_map(|m| m.metadata.namespace.clone())
        .collect();
    namespaces.sort();
    namespaces.dedup();
    Ok(namespaces)
}
