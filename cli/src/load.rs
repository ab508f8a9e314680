//! Reading manifests from files and directories for the offline tools.

use std::path::{Path, PathBuf};

use anyhow::Context;
use policybind_engine::manifest::{Manifests, parse_documents};

/// Every `.yaml` / `.yml` file under `path` (recursively), sorted so that results
/// do not depend on directory order. A file path is taken as it is.
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
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let p = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
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
