//! The audit trail as the request path sees it: append one event per decision,
//! synchronously, or learn that it cannot be recorded.
//!
//! A request whose decision cannot be recorded is denied with
//! `AUDIT_UNAVAILABLE`: an unrecorded decision is worse than a refused request.
//! The trait keeps the request path independent of the store; the
//! `policybind-audit` crate's [`AuditWriter`] (directory store in standalone
//! mode, ConfigMaps in a cluster) is the implementation in production, and
//! [`MemoryAudit`] serves tests.

use std::sync::Mutex;

use policybind_audit::AuditWriter;
use policybind_engine::audit::AuditEvent;

/// The audit trail cannot take a record now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit trail unavailable: {0}")]
pub struct AuditUnavailable(pub String);

/// Where decisions are recorded.
pub trait AuditSink: Send + Sync + 'static {
    /// Appends one event without waiting for I/O, or refuses it.
    fn append(&self, event: AuditEvent) -> Result<(), AuditUnavailable>;

    /// Counts a request refused before anyone was identified (missing or
    /// unknown token, a path that is not served): no record each, one summary
    /// record per interval with the counts by `kind`, so a flood cannot fill the
    /// queue and deny real traffic. `kind` must be a fixed string of the
    /// caller's code, never taken from the request.
    fn count_rejection(&self, kind: &'static str) {
        let _ = kind;
    }

    /// Records appended but not yet in the store, when the sink knows.
    fn backlog(&self) -> Option<u64> {
        None
    }
}

impl AuditSink for AuditWriter {
    fn append(&self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        // A refusal is counted and summarised by the writer (one log line and one
        // record per interval); callers need not log each one.
        AuditWriter::append(self, event)
            .map(|_| ())
            .map_err(|e| AuditUnavailable(e.to_string()))
    }

    fn count_rejection(&self, kind: &'static str) {
        AuditWriter::count_rejection(self, kind);
    }

    fn backlog(&self) -> Option<u64> {
        let stats = self.stats();
        Some(stats.last_seq.saturating_sub(stats.persisted_seq))
    }
}

/// Keeps events in memory; can be told to refuse (a full queue), for tests.
#[derive(Debug, Default)]
pub struct MemoryAudit {
    events: Mutex<Vec<AuditEvent>>,
    rejections: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    refuse: std::sync::atomic::AtomicBool,
}

impl MemoryAudit {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later append fail (or succeed again).
    pub fn set_refusing(&self, refuse: bool) {
        self.refuse
            .store(refuse, std::sync::atomic::Ordering::SeqCst);
    }

    /// Rejections counted so far, by kind.
    pub fn rejections(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.rejections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A copy of every event appended so far.
    pub fn events(&self) -> Vec<AuditEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl AuditSink for MemoryAudit {
    fn append(&self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AuditUnavailable("queue full (test)".into()));
        }
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
        Ok(())
    }

    fn count_rejection(&self, kind: &'static str) {
        *self
            .rejections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += 1;
    }
}

/// Why the audit trail could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuditSetupError {
    #[error("signing key {path}: {source}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("signing key: {0}")]
    Key(#[from] policybind_engine::audit::KeyError),
    #[error("no randomness available to generate a signing key: {0}")]
    Random(String),
    #[error(transparent)]
    Audit(#[from] policybind_audit::Error),
}

/// Reads the Ed25519 signing key at `path`, or creates one there (mode 0600) when
/// the file does not exist. Returns whether it was created.
///
/// A generated key suits standalone mode on one machine; a trail that others
/// must be able to trust needs a key kept apart from it.
pub fn load_or_create_signing_key(
    path: &std::path::Path,
) -> Result<(policybind_engine::audit::AuditSigningKey, bool), AuditSetupError> {
    use policybind_engine::audit::AuditSigningKey;
    let key_error = |source| AuditSetupError::KeyFile {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => return Ok((AuditSigningKey::from_key_material(&bytes)?, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(key_error(e)),
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| AuditSetupError::Random(e.to_string()))?;
    let key = AuditSigningKey::from_seed(&seed);
    let pem = key.to_pkcs8_pem()?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(key_error)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(key_error)?;
    std::io::Write::write_all(&mut file, pem.as_bytes()).map_err(key_error)?;
    Ok((key, true))
}

/// Segment size for the directory store: files have no object limit, and large
/// segments mean few fsyncs at high decision rates.
pub const DIRECTORY_SEGMENT_BYTES: usize = 4 << 20;

/// An audit writer over a directory store (standalone mode).
pub async fn directory_writer(
    dir: &std::path::Path,
    key: policybind_engine::audit::AuditSigningKey,
    writer: &str,
) -> Result<AuditWriter, AuditSetupError> {
    let store = policybind_audit::DirectoryStore::open(dir)?;
    let mut config = policybind_audit::AuditConfig::new(writer, key);
    // A local directory is written without a pace limit (every sealed segment and
    // the open one each flush); a short flush interval bounds what a hard kill
    // loses.
    config.flush_interval = std::time::Duration::from_millis(200);
    config.max_segment_bytes = DIRECTORY_SEGMENT_BYTES;
    Ok(AuditWriter::start(config, std::sync::Arc::new(store)).await?)
}

/// An audit writer over ConfigMaps in a namespace (in-cluster), its segments
/// labelled with the pod's name (the chart's admission policy lets a workload
/// write only segments of its own pod). About one API write per second; gzip
/// segments of up to 900 KiB hold about 7,000 decisions each.
pub async fn config_map_writer(
    client: kube::Client,
    namespace: &str,
    pod: &str,
    key: policybind_engine::audit::AuditSigningKey,
    writer: &str,
) -> Result<AuditWriter, AuditSetupError> {
    let store = policybind_audit::ConfigMapStore::new(client, namespace).with_pod(pod);
    let config = policybind_audit::AuditConfig::new(writer, key);
    Ok(AuditWriter::start(config, std::sync::Arc::new(store)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signing_key_is_created_once_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/signing-key.pem");
        let (first, created) = load_or_create_signing_key(&path).unwrap();
        assert!(created);
        let (second, created) = load_or_create_signing_key(&path).unwrap();
        assert!(!created);
        assert_eq!(first.key_id(), second.key_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
