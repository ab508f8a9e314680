//! A real `policybind serve` process on loopback, for the CLI's process tests.
// Each test binary uses part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A copy of the quick start in `<dir>/config` with its tokens.yaml passed
/// through `edit_tokens` and `extra` written as `extra.yaml` (when not empty).
pub fn quickstart_copy(
    dir: &Path,
    extra: &str,
    edit_tokens: impl Fn(String) -> String,
) -> std::path::PathBuf {
    let config = dir.join("config");
    let quickstart = repo().join("examples/quickstart");
    std::fs::create_dir_all(config.join("standalone")).unwrap();
    for file in [
        "models.yaml",
        "policy.yaml",
        "standalone/demo-token-values.yaml",
    ] {
        std::fs::copy(quickstart.join(file), config.join(file)).unwrap();
    }
    let tokens = std::fs::read_to_string(quickstart.join("tokens.yaml")).unwrap();
    std::fs::write(config.join("tokens.yaml"), edit_tokens(tokens)).unwrap();
    if !extra.is_empty() {
        std::fs::write(config.join("extra.yaml"), extra).unwrap();
    }
    config
}

/// A running `policybind serve` and the lines it logged until it listened.
pub struct Serve {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Vec<String>,
}

impl Serve {
    /// `policybind serve --config examples/quickstart` with `extra` arguments.
    pub fn start(home: &Path, extra: &[&str]) -> Serve {
        Serve::start_with(home, Path::new("examples/quickstart"), extra)
    }

    /// `policybind serve --config <config>` (relative to the repository) with
    /// `extra` arguments, `HOME` set to `home` and nothing else in the environment.
    pub fn start_with(home: &Path, config: &Path, extra: &[&str]) -> Serve {
        let mut child = serve_command(home, config, extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("policybind starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut log = vec![];
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            assert!(Instant::now() < deadline, "no listening line: {log:?}");
            let line = lines.next().expect("still running").unwrap();
            log.push(line.clone());
            let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
            if entry["message"] == "policybind enforcement point listening" {
                break entry["addr"].as_str().unwrap().parse().unwrap();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Serve { child, addr, log }
    }

    /// POSTs a chat completion; returns the status line, the headers (lower-case
    /// names) and the body.
    pub fn chat(
        &self,
        token: &str,
        model: &str,
        text: &str,
    ) -> (String, Vec<(String, String)>, String) {
        let body =
            serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}]});
        let response = self.post_chat(token, &body);
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let mut head = head.lines();
        let status = head.next().unwrap().to_string();
        let headers = head
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        (status, headers, body.to_string())
    }

    /// POSTs `body` to `/v1/chat/completions` and reads the whole raw
    /// response (status line, headers and body; streams to their end).
    pub fn post_chat(&self, token: &str, body: &serde_json::Value) -> String {
        let body = body.to_string();
        let mut stream = TcpStream::connect(self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    pub fn stop(mut self) {
        // SIGINT, as Ctrl-C: the audit writer seals its last segment.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("serve did not stop on SIGINT");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    /// A test that failed before `stop` leaves no process behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The command line of `policybind serve` the tests run.
pub fn serve_command(home: &Path, config: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_policybind"));
    command
        .current_dir(repo())
        .args(["serve", "--config"])
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0"])
        // The decision API's default port may be taken by another test's server.
        .args(["--decide-listen", "127.0.0.1:0"])
        .args(extra)
        .env_clear()
        .env("HOME", home)
        .env("POLICYBIND_LOG_FORMAT", "json");
    command
}
