//! The directory store: one JSON file per segment, for standalone mode
//! (`policybind serve`) and for keeping exported segments.
//!
//! Every write goes to a temporary file that is renamed over the segment's file, so
//! a reader never sees half a segment. Sealing writes are fsynced (file, then
//! directory) before `put` returns; flushes of the open segment are not, because
//! they happen several times a second and the data is rewritten and synced at
//! seal anyway. So a process crash loses nothing that was flushed, while a power
//! loss can lose the open segment's flushes since the last fsync (see
//! `docs/audit.md`).
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::Error;
use crate::encoding::Encoding;
use crate::naming::{SEGMENT_NAME_PREFIX, writer_key};
use crate::store::{RawSegment, SegmentObject, SegmentStore, StoreProfile};

/// Largest segment file the writer makes: files have no API server limit, but a
/// segment is read whole by the verifier and by a restarting writer.
pub const MAX_FILE_BYTES: usize = 64 << 20;

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

    /// The file of the segment object `name`.
    pub fn path_of(&self, name: &str) -> PathBuf {
        if Path::new(name).is_absolute() || name.contains(std::path::MAIN_SEPARATOR) {
            return PathBuf::from(name);
        }
        let file = if name.ends_with(".json") {
            name.to_string()
        } else {
            format!("{name}.json")
        };
        self.dir.join(file)
    }

    /// Every segment file (all writers), sorted: for readers that fetch files
    /// one at a time, such as the verifier.
    pub fn segment_paths(&self) -> Result<Vec<PathBuf>, Error> {
        self.segment_files(SEGMENT_NAME_PREFIX)
    }

    /// Read one segment file.
    pub fn read(path: &Path) -> RawSegment {
        let json = fs::read(path).map_err(|e| format!("cannot read: {e}"));
        RawSegment {
            name: path.display().to_string(),
            size_bytes: json.as_ref().map_or(0, |j| j.len() as u64),
            json,
        }
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

/// Write `bytes` to `path` through a temporary file (`<path>` with extension
/// `json.tmp`) and a rename; with `durable`, fsync the file before and the
/// directory after the rename. Readers see the old file or the new one, never
/// part of one.
pub fn write_atomically(path: &Path, bytes: &[u8], durable: bool) -> Result<(), Error> {
    let tmp = path.with_extension("json.tmp");
    let mut file = fs::File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(bytes).map_err(io("write", &tmp))?;
    if durable {
        file.sync_all().map_err(io("fsync", &tmp))?;
    }
    drop(file);
    fs::rename(&tmp, path).map_err(io("rename", path))?;
    if durable && let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        // The rename is durable only once the directory entry is synced.
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory", parent))?;
    }
    Ok(())
}

impl SegmentStore for DirectoryStore {
    fn put<'a>(&'a self, object: &'a SegmentObject) -> BoxFuture<'a, Result<(), Error>> {
        // Blocking file I/O off the async workers; the body is shared with
        // the closure, not copied.
        let path = self.path_of(&object.name);
        let body = object.body.clone();
        let durable = object.sealed;
        async move {
            tokio::task::spawn_blocking(move || write_atomically(&path, &body, durable))
                .await
                .map_err(|_| Error::TaskGone)?
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<RawSegment>, Error>> {
        let store = self.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                Ok(store
                    .segment_paths()?
                    .iter()
                    .map(|path| DirectoryStore::read(path))
                    .collect())
            })
            .await
            .map_err(|_| Error::TaskGone)?
        }
        .boxed()
    }

    fn names<'a>(&'a self, writer: &'a str) -> BoxFuture<'a, Result<Vec<String>, Error>> {
        let store = self.clone();
        let prefix = format!("{SEGMENT_NAME_PREFIX}{}-", writer_key(writer));
        async move {
            tokio::task::spawn_blocking(move || {
                Ok(store
                    .segment_files(&prefix)?
                    .iter()
                    .filter_map(|path| path.file_stem()?.to_str().map(str::to_string))
                    .collect())
            })
            .await
            .map_err(|_| Error::TaskGone)?
        }
        .boxed()
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<RawSegment>, Error>> {
        let path = self.path_of(name);
        async move {
            tokio::task::spawn_blocking(move || {
                Ok(path.exists().then(|| DirectoryStore::read(&path)))
            })
            .await
            .map_err(|_| Error::TaskGone)?
        }
        .boxed()
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        let path = self.path_of(name);
        async move {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io("delete", &path)(e)),
            }
        }
        .boxed()
    }

    fn profile(&self) -> StoreProfile {
        StoreProfile {
            encoding: Encoding::Json,
            max_object_bytes: MAX_FILE_BYTES,
            writes_per_flush: None,
        }
    }

    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }
}
