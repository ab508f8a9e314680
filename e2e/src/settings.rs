//! What the suite runs against, read once from the environment.
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// How PolicyBind's control plane parts run during the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Installed in the cluster with `helm install` before the suite starts.
    InCluster,
    /// Started by the harness as local processes; the webhook is registered by URL.
    OutOfCluster,
}

/// Suite settings. Every one has an environment variable (see e2e/README.md).
#[derive(Clone, Debug)]
pub struct Settings {
    /// `POLICYBIND_E2E_MODE`: `out-of-cluster` (default) or `in-cluster`.
    pub mode: Mode,
    /// `POLICYBIND_BIN`: the `policybind` binary (default `target/debug/policybind`).
    pub binary: PathBuf,
    /// `POLICYBIND_E2E_NAMESPACE`: where PolicyBind itself runs (release namespace).
    pub system_namespace: String,
    /// `POLICYBIND_E2E_RELEASE`: Helm release name (in-cluster), for object names.
    pub release: String,
    /// `POLICYBIND_E2E_PROPAGATION_LIMIT_MS`: how long a policy or token change
    /// may take to reach a sidecar (default 2000, the design target).
    pub propagation_limit: Duration,
    /// `POLICYBIND_E2E_WEBHOOK_HOST`: address the API server uses to reach the
    /// out-of-cluster webhook (default 127.0.0.1: a local control plane).
    pub webhook_host: String,
    /// `POLICYBIND_E2E_KEEP=1`: keep scenario namespaces after the run.
    pub keep_namespaces: bool,
    /// Workspace root (examples/, charts/).
    pub repo_root: PathBuf,
    /// Where process logs go: `target/e2e-logs/`.
    pub log_dir: PathBuf,
    /// `POLICYBIND_E2E_PYTHON`: the Python with helm-python-sdk that renders the
    /// chart (`e2e/render-chart.py`); default `python3`.
    pub python: String,
}

impl Settings {
    /// The settings of this run (read once).
    pub fn get() -> &'static Settings {
        static SETTINGS: OnceLock<Settings> = OnceLock::new();
        SETTINGS.get_or_init(Settings::from_env)
    }

    fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mode = match var("POLICYBIND_E2E_MODE").as_deref() {
            None | Some("out-of-cluster") => Mode::OutOfCluster,
            Some("in-cluster") => Mode::InCluster,
            Some(other) => panic!("POLICYBIND_E2E_MODE={other}: use in-cluster or out-of-cluster"),
        };
        let repo_root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("e2e/ sits in the workspace")
            .to_path_buf();
        let binary = var("POLICYBIND_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root.join("target/debug/policybind"));
        let system_namespace = var("POLICYBIND_E2E_NAMESPACE").unwrap_or_else(|| match mode {
            Mode::InCluster => "policybind-system".into(),
            Mode::OutOfCluster => "policybind-e2e-system".into(),
        });
        let propagation_limit = Duration::from_millis(
            var("POLICYBIND_E2E_PROPAGATION_LIMIT_MS")
                .map(|v| {
                    v.parse()
                        .expect("POLICYBIND_E2E_PROPAGATION_LIMIT_MS is milliseconds")
                })
                .unwrap_or(2000),
        );
        Settings {
            mode,
            binary,
            system_namespace,
            release: var("POLICYBIND_E2E_RELEASE").unwrap_or_else(|| match mode {
                Mode::InCluster => "policybind".into(),
                Mode::OutOfCluster => "policybind-e2e".into(),
            }),
            propagation_limit,
            webhook_host: var("POLICYBIND_E2E_WEBHOOK_HOST").unwrap_or_else(|| "127.0.0.1".into()),
            keep_namespaces: var("POLICYBIND_E2E_KEEP").is_some_and(|v| v == "1"),
            log_dir: repo_root.join("target/e2e-logs"),
            python: var("POLICYBIND_E2E_PYTHON").unwrap_or_else(|| "python3".into()),
            repo_root,
        }
    }

    /// Name prefix of the chart's objects for this release (the chart's
    /// `policybind.fullname`).
    pub fn fullname(&self) -> String {
        if self.release.contains("policybind") {
            self.release.clone()
        } else {
            format!("{}-policybind", self.release)
        }
    }

    /// Name of the webhook configurations (both kinds) PolicyBind registers.
    pub fn webhook_configuration_name(&self) -> String {
        format!("{}-webhook", self.fullname())
    }
}
