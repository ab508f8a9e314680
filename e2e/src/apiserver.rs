//! The kube-apiserver of the bare control plane (`e2e/run.sh --bare`), which
//! an outage scenario stops and starts again.
//!
//! `run.sh` starts the API server through a script (`POLICYBIND_E2E_APISERVER_START`)
//! that runs it in the background with the same flags, port, certificates and
//! etcd every time, and writes its pid to `POLICYBIND_E2E_APISERVER_PIDFILE`;
//! `run.sh` stops whichever process that file names when the suite ends. In
//! other modes (kind, in-cluster) the API server is not the harness's to stop,
//! and [`ApiServer::from_env`] is `None`.
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::Client;

/// Environment variable naming the API server's pid file.
pub const PID_FILE_ENV: &str = "POLICYBIND_E2E_APISERVER_PIDFILE";
/// Environment variable naming the script that starts the API server.
pub const START_ENV: &str = "POLICYBIND_E2E_APISERVER_START";

/// The bare control plane's API server.
#[derive(Debug, Clone)]
pub struct ApiServer {
    pid_file: PathBuf,
    start_script: PathBuf,
}

impl ApiServer {
    /// The API server `run.sh --bare` started, if it did.
    pub fn from_env() -> Option<ApiServer> {
        Some(ApiServer {
            pid_file: std::env::var_os(PID_FILE_ENV)?.into(),
            start_script: std::env::var_os(START_ENV)?.into(),
        })
    }

    fn pid(&self) -> Result<u32> {
        let text = std::fs::read_to_string(&self.pid_file)
            .with_context(|| format!("read {}", self.pid_file.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{} holds no pid", self.pid_file.display()))
    }

    /// SIGKILL the API server (as a crash or a lost node would take it away:
    /// open connections reset, nothing answers) and wait until it is gone.
    pub fn kill(&self) -> Result<()> {
        let pid = self.pid()?;
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .context("run kill")?;
        if !status.success() {
            bail!("kill -KILL {pid} (kube-apiserver) failed: {status}");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        // Not a child of this process: gone when /proc says so (or a zombie
        // waiting for run.sh, which serves nothing either).
        while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        }) {
            if Instant::now() >= deadline {
                bail!("kube-apiserver (pid {pid}) still running 10 s after SIGKILL");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Start the API server again (same flags, port, certificates, etcd) and
    /// wait until it is ready; returns how long that took.
    pub async fn start(&self, client: &Client) -> Result<Duration> {
        let started = Instant::now();
        let status = tokio::process::Command::new("bash")
            .arg(&self.start_script)
            .status()
            .await
            .with_context(|| format!("run {}", self.start_script.display()))?;
        if !status.success() {
            bail!("{} failed: {status}", self.start_script.display());
        }
        loop {
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("a valid request");
            if client.request_text(request).await.is_ok_and(|t| t == "ok") {
                return Ok(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("kube-apiserver not ready 120 s after it was started again");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
