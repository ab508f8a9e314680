//! Reading manifests from files and directories for the offline tools.

use std::path::{Path, PathBuf};

use anyhow::Context;
use policybind_engine::manifest::{Manifests, parse_documents};

/// Marks a directory as a set of its own (as kustomize does): it is skipped when a
/// parent directory is read, and read when named directly.
const SEPARATE_SET_MARKERS: &[&str] = &["kustomization.yaml", "kustomization.yml", "Kustomization"];

fn is_separate_set(dir: &Path) -> bool {
    SEPARATE_SET_MARKERS.iter().any(|m| dir.join(m).is_file())
}

/// Every `.yaml` / `.yml` file under `path` (recursively), sorted so that results
/// do not depend on directory order. A file path is taken as it is. Hidden
/// entries are skipped, and so are subdirectories holding a `kustomization.yaml`:
/// those are separate sets (the quick start, GitOps repositories) whose objects
/// would otherwise be mixed into this one; name them directly to read them.
pub fn yaml_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        anyhow::bail!("{}: no such file or directory", path.display());
    }
    let mut files = vec![];
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let entry = entry?;
            let p = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            if p.is_dir() {
                if is_separate_set(&p) {
                    eprintln!(
                        "note: skipping {} (it has its own kustomization; name it directly to use it)",
                        p.display()
                    );
                } else {
                    stack.push(p);
                }
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Parses every manifest under the given paths.
pub fn manifests(paths: &[PathBuf]) -> anyhow::Result<Manifests> {
    let mut manifests = Manifests::default();
    for path in paths {
        for file in yaml_files(path)? {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let objects = parse_documents(&file.display().to_string(), &text)?;
            manifests.extend(objects);
        }
    }
    Ok(manifests)
}
