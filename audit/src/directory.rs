//! The directory store: one JSON file per segment, for standalone mode
//! (`policybind serve`) and for keeping exported segments.
//!
//! Every write goes to a temporary file that is renamed over the segment's file, so
//! a reader never sees half a segment. Sealing writes are fsynced (file, then
//! directory) before `put` returns; flushes of the open segment are not, because
//! they happen every second and the data is rewritten and synced at seal anyway.
//! So a process crash loses nothing that was flushed, while a power loss can lose
//! the open segment's flushes since the last fsync (see `docs/audit.md`).
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use futures::FutureExt;
use futures::future::BoxFuture;
use policybind_engine::audit::Segment;

use crate::Error;
use crate::naming::{SEGMENT_NAME_PREFIX, segment_name, writer_key};
use crate::store::{SegmentStore, StoredSegment, encode_segment};

/// Segments as files `pb-audit-<writer key>-<first seq>.json` in one directory.
#[derive(Clone, Debug)]
pub struct DirectoryStore {
    dir: PathBuf,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

impl DirectoryStore {
    /// A store in `dir`, created if missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, Error> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
        Ok(DirectoryStore { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file a segment of `writer` starting at `first_seq` is stored in.
    pub fn path_for(&self, writer: &str, first_seq: u64) -> PathBuf {
        self.dir
            .join(format!("{}.json", segment_name(writer, first_seq)))
    }

    fn put_blocking(&self, segment: &Segment) -> Result<(), Error> {
        let path = self.path_for(&segment.header.writer, segment.header.first_seq);
        let durable = segment.is_sealed();
        write_atomically(&path, &encode_segment(segment), durable)
    }

    fn segment_files(&self, prefix: &str) -> Result<Vec<PathBuf>, Error> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io("read directory", &self.dir))? {
            let entry = entry.map_err(io("read directory", &self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(prefix) && name.ends_with(".json") {
                files.push(entry.path());
            }
        }
        files.sort();
        Ok(files)
    }
}

/// Write `bytes` to `path` through a temporary file and a rename; with `durable`,
/// fsync the file before and the directory after the rename.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], durable: bool) -> Result<(), Error> {
    let tmp = path.with_extension("json.tmp");
    let mut file = fs::File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(bytes).map_err(io("write", &tmp))?;
    if durable {
        file.sync_all().map_err(io("fsync", &tmp))?;
    }
    drop(file);
    fs::rename(&tmp, path).map_err(io("rename", path))?;
    if durable && let Some(parent) = path.parent() {
        // The rename is durable only once the directory entry is synced.
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory", parent))?;
    }
    Ok(())
}

impl SegmentStore for DirectoryStore {
    fn put<'a>(&'a self, segment: &'a Segment) -> BoxFuture<'a, Result<(), Error>> {
        // Blocking file I/O off the async workers; the clone is cheap next to an
        // fsync and lets the closure be 'static.
        let store = self.clone();
        let segment = segment.clone();
        async move {
            tokio::task::spawn_blocking(move || store.put_blocking(&segment))
                .await
                .map_err(|_| Error::TaskGone)?
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<StoredSegment>, Error>> {
        let store = self.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let documents = store
                    .segment_files(SEGMENT_NAME_PREFIX)?
                    .iter()
                    .map(|path| {
                        let bytes = fs::read(path).map_err(io("read", path))?;
                        Ok((path.display().to_string(), bytes))
                    })
                    .collect::<Result<Vec<_>, Error>>()?;
                Ok(StoredSegment::parse_many(documents))
            })
            .await
            .map_err(|_| Error::TaskGone)?
        }
        .boxed()
    }

    fn latest<'a>(&'a self, writer: &'a str) -> BoxFuture<'a, Result<Option<Segment>, Error>> {
        let store = self.clone();
        let prefix = format!("{SEGMENT_NAME_PREFIX}{}-", writer_key(writer));
        async move {
            tokio::task::spawn_blocking(move || {
                let files = store.segment_files(&prefix)?;
                let Some(path) = files.last() else {
                    return Ok(None);
                };
                let bytes = fs::read(path).map_err(io("read", path))?;
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| Error::Format {
                        name: path.display().to_string(),
                        source,
                    })
            })
            .await
            .map_err(|_| Error::TaskGone)?
        }
        .boxed()
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        // `list` names segments by path; accept a bare file name too.
        let path = if Path::new(name).is_absolute() || name.contains(std::path::MAIN_SEPARATOR) {
            PathBuf::from(name)
        } else {
            self.dir.join(name)
        };
        async move {
            tokio::fs::remove_file(&path)
                .await
                .map_err(io("delete", &path))
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }
}
