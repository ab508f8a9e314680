//! Where `policybind audit` reads from: directories, files and namespaces, and
//! which keys it trusts.
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, bail};
use policybind_audit::{ConfigMapStore, DirectoryStore, RawSegment, SegmentStore, StoredSegment};
use policybind_engine::audit::proof::{PROOF_FORMAT, ProofDocument};
use policybind_engine::audit::{
    AuditSigningKey, AuditVerifyingKey, EXPORT_FORMAT, ExportBundle, Keyring, SignedNote,
    VerifyOptions, VerifyReport, checkpoint::parse_notes, verify_documents,
};

use super::{KeyArgs, SourceArgs};

/// A segment document to read: a file, read when its turn comes, or already in
/// memory.
pub(super) enum Document {
    File(PathBuf),
    Raw(RawSegment),
}

impl Document {
    fn read(self) -> RawSegment {
        match self {
            Document::File(path) => DirectoryStore::read(&path),
            Document::Raw(raw) => raw,
        }
    }
}

/// Everything found in the sources.
pub(super) struct Loaded {
    pub documents: Vec<Document>,
    pub bundles: Vec<(String, ExportBundle)>,
    pub proofs: Vec<(String, ProofDocument)>,
}

impl Loaded {
    /// Verify every segment document, each read, parsed and checked on some
    /// core and then dropped.
    pub fn verify(self, options: &VerifyOptions) -> VerifyReport {
        let documents: Vec<Mutex<Option<Document>>> = self
            .documents
            .into_iter()
            .map(|d| Mutex::new(Some(d)))
            .collect();
        verify_documents(
            documents.len(),
            |i| {
                let document = documents[i]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .expect("each document is read once");
                let raw = document.read();
                (raw.name, raw.json)
            },
            options,
        )
    }

    /// Every segment document, parsed (for export, tail and proofs).
    pub fn parse(self) -> Vec<StoredSegment> {
        let raw: Vec<RawSegment> = self.documents.into_iter().map(Document::read).collect();
        StoredSegment::parse_many(raw)
    }
}

pub(super) async fn load(sources: &SourceArgs) -> anyhow::Result<Loaded> {
    if sources.dirs.is_empty() && sources.files.is_empty() && sources.namespaces.is_empty() {
        bail!("no source given: pass --dir, --file or --namespace");
    }
    let mut loaded = Loaded {
        documents: Vec::new(),
        bundles: Vec::new(),
        proofs: Vec::new(),
    };
    for dir in &sources.dirs {
        if !dir.is_dir() {
            bail!("{} is not a directory", dir.display());
        }
        let paths = DirectoryStore::open(dir)?.segment_paths()?;
        loaded
            .documents
            .extend(paths.into_iter().map(Document::File));
    }
    for file in &sources.files {
        load_file(file, &mut loaded)?;
    }
    if !sources.namespaces.is_empty() {
        let client = kube_client(sources.kubeconfig.as_deref(), sources.context.as_deref()).await?;
        for namespace in &sources.namespaces {
            let store = ConfigMapStore::new(client.clone(), namespace);
            let segments = store
                .list()
                .await
                .with_context(|| format!("listing audit segments in namespace {namespace}"))?;
            loaded.documents.extend(segments.into_iter().map(|mut s| {
                s.name = format!("{namespace}/{}", s.name);
                Document::Raw(s)
            }));
        }
    }
    Ok(loaded)
}

/// One JSON document: an export bundle, a proof, or a segment.
fn load_document(
    name: String,
    bytes: &[u8],
    value: serde_json::Value,
    loaded: &mut Loaded,
) -> anyhow::Result<()> {
    match value.get("format").and_then(|f| f.as_str()) {
        Some(EXPORT_FORMAT) => {
            let bundle: ExportBundle = serde_json::from_value(value)
                .with_context(|| format!("{name} is not a valid export bundle"))?;
            loaded.bundles.push((name, bundle));
        }
        Some(PROOF_FORMAT) => {
            let proof: ProofDocument = serde_json::from_value(value)
                .with_context(|| format!("{name} is not a valid proof"))?;
            loaded.proofs.push((name, proof));
        }
        _ => loaded.documents.push(Document::Raw(RawSegment {
            name,
            size_bytes: bytes.len() as u64,
            json: Ok(bytes.to_vec()),
        })),
    }
    Ok(())
}

fn load_file(path: &Path, loaded: &mut Loaded) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display().to_string();
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        return load_document(name, &bytes, value, loaded);
    }
    // Otherwise JSON lines: segments (the stdout sink's format) or proofs. A
    // line that does not parse is reported as a malformed segment, not skipped.
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = 0;
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        lines += 1;
        let line_name = format!("{name}:{}", number + 1);
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(value) => load_document(line_name, line.as_bytes(), value, loaded)?,
            Err(_) => loaded.documents.push(Document::Raw(RawSegment {
                name: line_name,
                size_bytes: line.len() as u64,
                json: Ok(line.as_bytes().to_vec()),
            })),
        }
    }
    if lines == 0 {
        bail!("{name} holds no segments");
    }
    Ok(())
}

pub(super) use crate::commands::cluster::client as kube_client;

/// A verification key file (a signing key file is accepted too: its public
/// half is used).
pub(super) fn verifying_key(path: &Path) -> anyhow::Result<AuditVerifyingKey> {
    let bytes = std::fs::read(path).with_context(|| format!("reading key {}", path.display()))?;
    AuditVerifyingKey::from_key_material(&bytes)
        .or_else(|e| {
            AuditSigningKey::from_key_material(&bytes)
                .map(|k| k.verifying_key())
                .map_err(|_| e)
        })
        .with_context(|| format!("key {}", path.display()))
}

/// The keyring the options ask for; `None` with `--no-signatures`.
pub(super) async fn keyring(
    keys: &KeyArgs,
    sources: &SourceArgs,
) -> anyhow::Result<Option<Keyring>> {
    if keys.no_signatures {
        return Ok(None);
    }
    let mut keyring = Keyring::default();
    for path in &keys.keyrings {
        keyring = keyring.merge(policybind_audit::keys::keyring_from_file(path)?);
    }
    if let Some(namespace) = &keys.cluster_keyring {
        let client = kube_client(sources.kubeconfig.as_deref(), sources.context.as_deref()).await?;
        let document = policybind_audit::keys::keyring_from_config_map(client, namespace)
            .await
            .with_context(|| {
                format!("reading the published audit keyring in namespace {namespace}")
            })?;
        // Parsed and checked above; compiling again cannot fail.
        keyring = keyring.merge(document.compile()?);
    }
    if !keys.keys.is_empty() && keys.key_writers.is_empty() {
        bail!(
            "--key needs --key-writers PATTERN: say which writers the key may sign for (for example 'sidecar/team-a/*'; '**' trusts it for every writer)"
        );
    }
    for path in &keys.keys {
        keyring = keyring.merge(Keyring::single(
            verifying_key(path)?,
            keys.key_writers.clone(),
        )?);
    }
    if keyring.is_empty() {
        bail!(
            "no trusted key: pass --cluster-keyring (the keyring the operator publishes in ConfigMap policybind-audit-keys), --keyring FILE (a pinned copy), or --key FILE --key-writers PATTERN, or --no-signatures to check hashes and chains only"
        );
    }
    Ok(Some(keyring))
}

/// Checkpoint notes from files.
pub(super) fn checkpoints(paths: &[PathBuf]) -> anyhow::Result<Vec<SignedNote>> {
    let mut notes = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading checkpoint file {}", path.display()))?;
        notes.extend(
            parse_notes(&text).with_context(|| format!("checkpoint file {}", path.display()))?,
        );
    }
    Ok(notes)
}
