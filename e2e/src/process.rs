//! Local processes that cannot outlive the test process.
//!
//! Each process is started under a small `sh` guard whose stdin is a pipe from
//! the test process. When that pipe closes (the guard is dropped, or the test
//! process exits or crashes) the guard sends SIGTERM to the process. No unsafe
//! code and no cooperation from the process is needed.
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Runs `"$@"`, and SIGTERMs it once stdin reaches end of file.
const GUARD: &str = r#"exec 3<&0
"$@" </dev/null 3<&- &
child=$!
{ read -r _ <&3; kill -TERM "$child" 2>/dev/null; } &
watcher=$!
wait "$child"
status=$?
kill "$watcher" 2>/dev/null
exit $status"#;

/// A running local process; dropping it stops the process.
#[derive(Debug)]
pub struct Process {
    name: String,
    program: PathBuf,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Start `program args` with extra environment, output to `log`.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
    ) -> Result<Process> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(GUARD)
            .arg("sh")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("start {name} ({})", program.display()))?;
        Ok(Process {
            name: name.to_string(),
            program: program.to_path_buf(),
            child,
            log,
        })
    }

    /// SIGKILL the process itself (not its guard), as the kernel's OOM killer
    /// or a `kill -9` would: no signal handler runs, nothing is flushed.
    /// Returns once it is gone.
    pub fn kill_hard(&self) -> Result<()> {
        let pid = self.program_pid()?;
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .context("run kill")?;
        if !status.success() {
            bail!("kill -KILL {pid} ({}) failed: {status}", self.name);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        // The guard waits for it, so it does not linger as a zombie.
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            if Instant::now() >= deadline {
                bail!("{} (pid {pid}) still running 10 s after SIGKILL", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The pid of the program under the guard: the guard's child whose
    /// command line starts with the program's path.
    fn program_pid(&self) -> Result<u32> {
        let guard = self.child.id();
        let program = self.program.as_os_str().as_encoded_bytes();
        for entry in std::fs::read_dir("/proc").context("read /proc")? {
            let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces, so split after `)`.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if parent == Some(guard) && cmdline.split(|b| *b == 0).next() == Some(program) {
                return Ok(pid);
            }
        }
        bail!("{} is not running under its guard (pid {guard})", self.name)
    }

    /// Fail if the process already exited, with the end of its log.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}; last log lines:\n{}",
                self.name,
                self.log_tail(40)
            );
        }
        Ok(())
    }

    /// The last `lines` lines of the process log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Where the process writes its output.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Closing stdin makes the guard stop the process; give it a moment to
        // shut down cleanly (the audit writer flushes on SIGTERM).
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ports [`free_port`] hands out: below the kernel's default ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768 upwards).
const FREE_PORTS: std::ops::Range<u32> = 20_000..32_000;

/// A TCP port on 127.0.0.1 that was free a moment ago, for a process started
/// next to listen on.
///
/// Not a port the kernel picks (`bind` to port 0): the kernel takes the same
/// ephemeral range for the local end of outgoing connections, so with
/// scenarios running side by side a client's connection could take the port
/// before the process bound it (a sidecar once exited with "Address already
/// in use" that way). Ports come in turn from a random start instead, so the
/// scenarios of one run never get the same one.
pub fn free_port() -> Result<u16> {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let random = RandomState::new().hash_one(std::process::id());
        AtomicU32::new((random % u64::from(FREE_PORTS.len() as u32)) as u32)
    });
    for _ in FREE_PORTS {
        let offset = next.fetch_add(1, Ordering::Relaxed) % FREE_PORTS.len() as u32;
        let port = u16::try_from(FREE_PORTS.start + offset).expect("below 65536");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1 in {FREE_PORTS:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_outside_the_ephemeral_range_and_not_repeated() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        assert!(ports.iter().all(|p| FREE_PORTS.contains(&u32::from(*p))));
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
        for port in ports {
            TcpListener::bind(("127.0.0.1", port)).expect("a port it gave is free");
        }
    }

    #[test]
    fn dropping_the_handle_stops_the_process() {
        let dir = std::env::temp_dir().join(format!("pb-e2e-process-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("pid");
        let mut process = Process::start(
            "sleeper",
            Path::new("sh"),
            &[
                "-c".into(),
                format!("echo $$ > {}; exec sleep 30", pid_file.display()),
            ],
            &[],
            dir.join("log"),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pid_file.exists()
            || std::fs::read_to_string(&pid_file)
                .unwrap()
                .trim()
                .is_empty()
        {
            assert!(Instant::now() < deadline, "process never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        process.check_running().unwrap();
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .to_string();
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        assert!(proc_dir.exists());
        let started = Instant::now();
        drop(process);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGTERM was not enough"
        );
        assert!(!proc_dir.exists(), "process {pid} outlived its handle");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn kill_hard_kills_the_program_and_not_only_its_guard() {
        let dir = std::env::temp_dir().join(format!("pb-e2e-kill-{}", std::process::id()));
        let mut process = Process::start(
            "sleeper",
            Path::new("/bin/sleep"),
            &["30".into()],
            &[],
            dir.join("log"),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let pid = loop {
            if let Ok(pid) = process.program_pid() {
                break pid;
            }
            assert!(Instant::now() < deadline, "sleep never started");
            std::thread::sleep(Duration::from_millis(20));
        };
        process.kill_hard().unwrap();
        assert!(!PathBuf::from(format!("/proc/{pid}")).exists());
        let deadline = Instant::now() + Duration::from_secs(5);
        while process.check_running().is_ok() {
            assert!(Instant::now() < deadline, "the guard outlived the program");
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_process_that_exits_is_reported_with_its_log() {
        let dir = std::env::temp_dir().join(format!("pb-e2e-exit-{}", std::process::id()));
        let mut process = Process::start(
            "failing",
            Path::new("sh"),
            &["-c".into(), "echo bad flag >&2; exit 2".into()],
            &[],
            dir.join("log"),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let error = process.check_running().unwrap_err().to_string();
        assert!(error.contains("failing exited"), "{error}");
        assert!(error.contains("bad flag"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
