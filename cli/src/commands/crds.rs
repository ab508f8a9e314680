//! `policybind crds`: the CustomResourceDefinitions generated from the API types.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct CrdsArgs {
    /// Write one file per CRD into this directory (e.g. charts/policybind/crds)
    /// instead of printing a multi-document stream to stdout.
    #[arg(long, value_name = "DIR")]
    write: Option<PathBuf>,
    /// With --write: do not write; exit 1 if any file differs from the types (CI drift check).
    #[arg(long, requires = "write")]
    check: bool,
}

pub fn run(args: CrdsArgs) -> anyhow::Result<ExitCode> {
    let Some(dir) = args.write else {
        print!("{}", policybind_crds::all_crds_yaml());
        return Ok(ExitCode::SUCCESS);
    };
    let mut drifted = vec![];
    for crd in policybind_crds::crds() {
        let path = dir.join(policybind_crds::crd_file_name(&crd));
        let want = policybind_crds::crd_yaml(&crd);
        if args.check {
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            if have != want {
                drifted.push(path.display().to_string());
            }
        } else {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(&path, want).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    if drifted.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "CRDs out of date with the types: {}\nrun: cargo run -p policybind -- crds --write {}",
            drifted.join(", "),
            dir.display()
        );
        Ok(ExitCode::from(1))
    }
}
