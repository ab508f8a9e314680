//! Reading manifests from files and directories for the offline tools.

use std::path::{Path, PathBuf};

use anyhow::Context;
use policybind_engine::manifest::{Manifests, parse_documents};

/// Every manifest file under `path`, as every PolicyBind tool reads it
/// ([`policybind_engine::manifest::manifest_files`]): subdirectories holding a
/// `kustomization.yaml` are separate sets, skipped with a note.
pub fn yaml_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.exists() {
        anyhow::bail!("{}: no such file or directory", path.display());
    }
    let listed = policybind_engine::manifest::manifest_files(path, None)
        .with_context(|| format!("reading {}", path.display()))?;
    for skipped in &listed.separate_sets {
        eprintln!(
            "note: skipping {} (it has its own kustomization; name it directly to use it)",
            skipped.display()
        );
    }
    Ok(listed.files)
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
