//! Settled usage kept in a file, so that a standalone `policybind serve`
//! (DESIGN.md section 8) never resets spend on restart (issue 13 point 3).
//!
//! In a cluster the usage report ConfigMap plays this part ([`crate::usage`]);
//! without one, the ledger's settled usage is written to one JSON file in the
//! state directory (`<state-dir>/usage.json` by default):
//!
//! - **Read before serving.** [`UsageFile::load`] runs before any port is
//!   bound and its entries are added to the ledger ([`UsageLedger::restore`]).
//!   A missing file is a first run (nothing spent). A file that cannot be read
//!   or parsed stops the start with an error naming it: starting at zero would
//!   silently hand out the whole budget again (fail closed). To reset spend on
//!   purpose, stop the process and delete (or move away) the file.
//! - **Written atomically.** [`UsageFile::save`] writes a temporary file beside
//!   it, flushes it to disk, renames it over the old one and flushes the
//!   directory, so a crash leaves either the old or the new file, never half of
//!   one.
//! - **At most about once a second and at shutdown.** [`UsagePersister::run`]
//!   writes only when the snapshot changed, and once more after the servers
//!   drained. What a hard kill (`kill -9`, power loss) loses is at most the
//!   last interval's settlements.
//! - **One process per file.** An exclusive lock on `<file>.lock`, held while
//!   the process runs, refuses a second process on the same file, which would
//!   otherwise overwrite the first one's spend.
//!
//! The format is the usage report's (token id to `PeriodUsage` entries, the
//! entry type of `AccessToken.status.usage`) inside a versioned envelope:
//! `{"version":1,"usage":{"default/alice":[{"period":"Day",...}]}}`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use policybind_crds::access_token::PeriodUsage;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use crate::accounting::{SettledUsage, UsageLedger};
use crate::usage::{report, snapshot};

/// Version of the file format this build reads and writes.
const FORMAT_VERSION: u32 = 1;

/// Why the usage file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UsageFileError {
    #[error(
        "usage file {path}: cannot be read ({source}); refusing to serve rather than restart spend at zero"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "usage file {path} is not a usage file this version reads: {reason}; refusing to serve \
         rather than restart spend at zero. To reset spend on purpose, stop policybind and delete \
         or move the file"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("usage file {path}: cannot be written ({source})")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("usage file {path} is in use by another process (lock {lock} is held)")]
    Locked { path: PathBuf, lock: PathBuf },
}

/// The file's content.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    version: u32,
    usage: BTreeMap<String, Vec<PeriodUsage>>,
}

/// One usage file, locked for this process while the value lives.
#[derive(Debug)]
pub struct UsageFile {
    path: PathBuf,
    /// Held open: the exclusive lock is released when it closes.
    _lock: File,
}

impl UsageFile {
    /// Takes the file's lock, creating the directory if needed.
    pub fn open(path: impl Into<PathBuf>) -> Result<UsageFile, UsageFileError> {
        let path = path.into();
        let write_error = |source| UsageFileError::Write {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(write_error)?;
        }
        let lock_path = sibling(&path, ".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(write_error)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(UsageFileError::Locked {
                    path,
                    lock: lock_path,
                });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(write_error(source)),
        }
        Ok(UsageFile { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The usage stored, empty when there is no file yet.
    pub fn load(&self) -> Result<Vec<SettledUsage>, UsageFileError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => {
                return Err(UsageFileError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let corrupt = |reason: String| UsageFileError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if stored.version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                stored.version
            )));
        }
        let entries = snapshot(stored.usage);
        if let Some(bad) = entries
            .iter()
            .find(|e| !(e.settled.cost_usd.is_finite() && e.settled.cost_usd >= 0.0))
        {
            return Err(corrupt(format!(
                "token {} has a cost of {} USD (must be a finite amount, zero or more)",
                bad.token, bad.settled.cost_usd
            )));
        }
        Ok(entries)
    }

    /// Writes `usage` in place of the file, atomically (see the module docs).
    pub fn save(&self, usage: &[SettledUsage]) -> Result<(), UsageFileError> {
        self.save_json(&render(usage))
    }

    fn save_json(&self, json: &str) -> Result<(), UsageFileError> {
        policybind_audit::directory::write_atomically(&self.path, json.as_bytes(), true).map_err(
            |error| UsageFileError::Write {
                path: self.path.clone(),
                source: std::io::Error::other(error),
            },
        )
    }
}

/// `<path><suffix>`, beside `path`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The file's JSON for a snapshot; equal snapshots give equal text.
fn render(usage: &[SettledUsage]) -> String {
    let stored = Stored {
        version: FORMAT_VERSION,
        usage: report(usage),
    };
    serde_json::to_string(&stored).expect("usage always serializes")
}

/// Writes a ledger's settled usage to its file when it changed.
pub struct UsagePersister {
    file: Arc<UsageFile>,
    ledger: Arc<dyn UsageLedger>,
    /// JSON last written (or read at start).
    last_written: Option<String>,
}

impl UsagePersister {
    /// `restored` is what was loaded into the ledger at start, so an unchanged
    /// ledger writes nothing.
    pub fn new(
        file: UsageFile,
        ledger: Arc<dyn UsageLedger>,
        restored: &[SettledUsage],
    ) -> UsagePersister {
        UsagePersister {
            file: Arc::new(file),
            ledger,
            last_written: Some(render(restored)),
        }
    }

    /// Writes the snapshot if it differs from the last one written; returns
    /// whether it wrote.
    pub async fn persist_once(&mut self) -> Result<bool, UsageFileError> {
        let json = render(&self.ledger.settled_usage());
        if self.last_written.as_deref() == Some(json.as_str()) {
            return Ok(false);
        }
        let file = self.file.clone();
        let written = json.clone();
        tokio::task::spawn_blocking(move || file.save_json(&written))
            .await
            .map_err(|e| UsageFileError::Write {
                path: self.file.path.clone(),
                source: std::io::Error::other(e),
            })??;
        self.last_written = Some(json);
        Ok(true)
    }

    /// Persists every `interval` until `stop` is cancelled, then once more.
    /// Cancel `stop` after the servers drained, so the last write holds every
    /// request that finished.
    pub async fn run(mut self, interval: Duration, stop: CancellationToken) {
        let mut rounds = crate::rounds::Rounds::new(interval, stop);
        while rounds.next().await {
            let result = self.persist_once().await;
            self.log(result);
        }
    }

    fn log(&self, result: Result<bool, UsageFileError>) {
        match result {
            Ok(true) => debug!(path = %self.file.path.display(), "usage persisted"),
            Ok(false) => {}
            Err(error) => error!(
                %error,
                "settled usage not persisted; a restart now would forget spend since the last write"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use policybind_crds::BudgetPeriod;

    use super::*;
    use crate::accounting::{Amount, InProcessLedger};

    fn entry(token: &str, cost_usd: f64) -> SettledUsage {
        SettledUsage {
            token: token.into(),
            period: BudgetPeriod::Day,
            period_start: Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(),
            settled: Amount {
                cost_usd,
                tokens: 42,
            },
            requests: 3,
        }
    }

    #[test]
    fn saved_usage_reads_back_and_a_missing_file_is_a_first_run() {
        let dir = tempfile::tempdir().unwrap();
        let file = UsageFile::open(dir.path().join("state/usage.json")).unwrap();
        assert_eq!(file.load().unwrap(), vec![]);
        let usage = vec![entry("default/alice", 0.25), entry("default/bob", 1.5)];
        file.save(&usage).unwrap();
        assert_eq!(file.load().unwrap(), usage);
        assert!(
            !dir.path().join("state/usage.json.tmp").exists(),
            "the temporary file was renamed"
        );
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(text.starts_with(r#"{"version":1,"usage":{"default/alice":[{"period":"Day""#));
    }

    #[test]
    fn a_corrupt_file_is_refused_with_its_path_and_how_to_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.json");
        let file = UsageFile::open(&path).unwrap();
        for bad in [
            "",
            "{\"version\":1,\"usage\":{\"default/alice\":[",
            "{\"version\":2,\"usage\":{}}",
            "{\"version\":1,\"usage\":{},\"extra\":1}",
            r#"{"version":1,"usage":{"a/b":[{"period":"Day","periodStart":"2026-12-01T00:00:00Z","costUsd":-5.0,"tokens":1,"requests":1}]}}"#,
        ] {
            std::fs::write(&path, bad).unwrap();
            let error = file.load().unwrap_err().to_string();
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert!(error.contains("delete or move the file"), "{error}");
        }
    }

    #[test]
    fn a_second_process_on_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.json");
        let first = UsageFile::open(&path).unwrap();
        assert!(matches!(
            UsageFile::open(&path),
            Err(UsageFileError::Locked { .. })
        ));
        drop(first);
        UsageFile::open(&path).expect("the lock is released with the file");
    }

    #[tokio::test]
    async fn the_persister_writes_only_when_the_ledger_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.json");
        let file = UsageFile::open(&path).unwrap();
        let restored = vec![entry("default/alice", 0.5)];
        let ledger = Arc::new(InProcessLedger::new());
        ledger.restore(&restored);
        let mut persister = UsagePersister::new(file, ledger.clone(), &restored);
        assert!(!persister.persist_once().await.unwrap(), "nothing new");
        assert!(!path.exists());
        ledger.restore(&[entry("default/alice", 0.25)]);
        assert!(persister.persist_once().await.unwrap());
        let reread = UsageFile {
            path: path.clone(),
            _lock: File::open(&path).unwrap(),
        };
        assert_eq!(reread.load().unwrap()[0].settled.cost_usd, 0.75);
        assert!(!persister.persist_once().await.unwrap());
    }
}
