//! Where the policy set comes from, and the atomic swap that puts a new one in force.
//!
//! The request path reads the set in force from a [`PolicyHolder`]: one `Arc`
//! clone under a read lock, so a decision always sees one whole set, never half
//! of an old and half of a new one. Loaders compile a candidate first and swap
//! only when it compiled: a bad change is rejected and logged, and the last good
//! set stays in force. With no set at all, the request path denies everything
//! (`NO_POLICY_SET`): the sidecar fails closed.
//!
//! Standalone mode reads a directory of the same YAML manifests users apply
//! (DESIGN.md section 8) and polls it for changes: polling by content hash also
//! works on volume mounts and network file systems, where file events are
//! unreliable. In a cluster, the operator's bundle is the source (DESIGN.md
//! section 4, see [`crate::cluster`]); it is never mounted, because a mounted
//! ConfigMap must sit in the workload's own namespace, where the workload could
//! write it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use policybind_engine::manifest::{Manifests, parse_documents};
use policybind_engine::{Bundle, PolicySet};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::metrics::{Metrics, ReloadLabels};

/// A compiled set with where and when it was loaded.
#[derive(Debug)]
pub struct Loaded {
    pub set: PolicySet,
    pub loaded_at: DateTime<Utc>,
    /// Human description of the source (directory, ConfigMap), for logs.
    pub origin: String,
}

/// Holds the policy set in force. Cheap to read on every request.
#[derive(Default)]
pub struct PolicyHolder {
    current: RwLock<Option<Arc<Loaded>>>,
}

impl PolicyHolder {
    pub fn new() -> Arc<PolicyHolder> {
        Arc::new(PolicyHolder::default())
    }

    /// The set in force, if any.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts a new set in force.
    pub fn swap(&self, loaded: Loaded) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(loaded));
    }

    /// Takes the set out of force (every request is then denied). For tests and
    /// for a source that reports its bundle deleted on purpose.
    pub fn clear(&self) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Why a candidate set was not put in force.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Manifest(#[from] policybind_engine::manifest::ManifestError),
    #[error("the policy set does not compile:\n{0}")]
    Compile(#[from] policybind_engine::CompileErrors),
    #[error("the bundle cannot be read: {0}")]
    Bundle(String),
}

impl SourceError {
    /// Short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::Io { .. } => "io",
            SourceError::Manifest(_) => "manifest",
            SourceError::Compile(_) => "compile",
            SourceError::Bundle(_) => "bundle",
        }
    }
}

/// The manifest files of a directory, as `policybind test` reads it
/// ([`policybind_engine::manifest::manifest_files`]): a subdirectory with its own
/// `kustomization.yaml` is a separate set and is not read.
fn manifest_files(dir: &Path, exclude: Option<&Path>) -> Result<Vec<PathBuf>, SourceError> {
    policybind_engine::manifest::manifest_files(dir, exclude)
        .map(|listed| listed.files)
        .map_err(|source| SourceError::Io {
            path: dir.display().to_string(),
            source,
        })
}

/// The contents of a directory's manifests and a hash over them.
pub struct DirectorySnapshot {
    pub digest: [u8; 32],
    files: Vec<(PathBuf, String)>,
}

/// Reads every manifest file of a directory.
pub fn read_directory(
    dir: &Path,
    exclude: Option<&Path>,
) -> Result<DirectorySnapshot, SourceError> {
    let mut hasher = Sha256::new();
    let mut files = vec![];
    for path in manifest_files(dir, exclude)? {
        let text = std::fs::read_to_string(&path).map_err(|source| SourceError::Io {
            path: path.display().to_string(),
            source,
        })?;
        hasher.update(path.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
        files.push((path, text));
    }
    Ok(DirectorySnapshot {
        digest: hasher.finalize().into(),
        files,
    })
}

impl DirectorySnapshot {
    /// The bundle the manifests describe, for one namespace.
    pub fn bundle(&self, namespace: &str) -> Result<Bundle, SourceError> {
        let mut manifests = Manifests::default();
        for (path, text) in &self.files {
            manifests.extend(parse_documents(&path.display().to_string(), text)?);
        }
        Ok(manifests.bundle(Some(namespace)))
    }
}

/// Compiles the manifests of a directory.
pub fn load_directory(
    dir: &Path,
    exclude: Option<&Path>,
    namespace: &str,
) -> Result<(PolicySet, [u8; 32]), SourceError> {
    let snapshot = read_directory(dir, exclude)?;
    let bundle = snapshot.bundle(namespace)?;
    Ok((PolicySet::compile(&bundle)?, snapshot.digest))
}

/// Puts a compiled set in force, with logs and metrics.
pub fn install(holder: &PolicyHolder, metrics: &Metrics, set: PolicySet, origin: String) {
    let now = Utc::now();
    let (rules, policies, models, tokens) = set.counts();
    let fingerprint = set.fingerprint().to_string();
    let previous = holder.current().map(|l| l.set.fingerprint().to_string());
    if previous.as_deref() != Some(fingerprint.as_str()) {
        info!(
            %fingerprint, %origin, rules, policies, models, tokens,
            previous = previous.as_deref().unwrap_or("none"),
            "policy set in force"
        );
    }
    metrics.bundle_loaded(&fingerprint, now);
    metrics
        .reloads
        .get_or_create(&ReloadLabels {
            result: "ok".into(),
        })
        .inc();
    holder.swap(Loaded {
        set,
        loaded_at: now,
        origin,
    });
}

/// Records a rejected candidate; the last good set stays in force.
pub fn reject(holder: &PolicyHolder, metrics: &Metrics, error: &SourceError, origin: &str) {
    let in_force = holder
        .current()
        .map(|l| l.set.fingerprint().to_string())
        .unwrap_or_else(|| "none (every request is denied)".into());
    error!(
        kind = error.kind(),
        %origin,
        in_force = %in_force,
        "policy change rejected; the last good set stays in force: {error}"
    );
    metrics
        .reloads
        .get_or_create(&ReloadLabels {
            result: "rejected".into(),
        })
        .inc();
}

/// A directory source: remembers what it last read so an unchanged directory
/// costs one read per interval and a bad change is reported once.
pub struct DirectoryWatcher {
    pub dir: PathBuf,
    /// A subdirectory that is not policy (the approvals directory).
    pub exclude: Option<PathBuf>,
    pub namespace: String,
    last_digest: Option<[u8; 32]>,
    last_error: Option<String>,
}

impl DirectoryWatcher {
    pub fn new(dir: PathBuf, exclude: Option<PathBuf>, namespace: String) -> Self {
        DirectoryWatcher {
            dir,
            exclude,
            namespace,
            last_digest: None,
            last_error: None,
        }
    }

    fn digest(&self) -> Result<[u8; 32], SourceError> {
        Ok(read_directory(&self.dir, self.exclude.as_deref())?.digest)
    }

    /// Reads the directory once and swaps in its set if it changed and compiles.
    /// Blocking (file reads, compiling).
    pub fn poll(&mut self, holder: &PolicyHolder, metrics: &Metrics) {
        let origin = format!("directory {}", self.dir.display());
        let digest = match self.digest() {
            Ok(d) => d,
            Err(e) => {
                // Unreadable (being replaced, permissions): keep what is in force.
                self.report(holder, metrics, &e, &origin);
                return;
            }
        };
        if Some(digest) == self.last_digest {
            return;
        }
        match load_directory(&self.dir, self.exclude.as_deref(), &self.namespace) {
            Ok((set, digest)) => {
                self.last_digest = Some(digest);
                self.last_error = None;
                install(holder, metrics, set, origin);
            }
            Err(e) => {
                self.last_digest = Some(digest);
                self.report(holder, metrics, &e, &origin);
            }
        }
    }

    fn report(&mut self, holder: &PolicyHolder, metrics: &Metrics, e: &SourceError, origin: &str) {
        let text = e.to_string();
        if self.last_error.as_deref() != Some(text.as_str()) {
            reject(holder, metrics, e, origin);
            self.last_error = Some(text);
        }
    }

    /// Polls every `interval` until `stop` is cancelled.
    pub async fn run(
        mut self,
        interval: Duration,
        holder: Arc<PolicyHolder>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let (h, m) = (holder.clone(), metrics.clone());
            match tokio::task::spawn_blocking(move || {
                self.poll(&h, &m);
                self
            })
            .await
            {
                Ok(watcher) => self = watcher,
                Err(e) => {
                    warn!("policy directory reader failed: {e}");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_of_the_excluded_approvals_directory_are_not_policy() {
        let dir = tempfile::tempdir().unwrap();
        let approvals = dir.path().join("approvals");
        std::fs::create_dir(&approvals).unwrap();
        std::fs::write(approvals.join("broken.yaml"), "kind: [not valid").unwrap();
        let holder = PolicyHolder::new();
        let metrics = Metrics::new();
        let mut watcher =
            DirectoryWatcher::new(dir.path().into(), Some(approvals), "default".into());
        watcher.poll(&holder, &metrics);
        assert!(
            holder.current().is_some(),
            "an empty policy directory compiles"
        );
    }
}
