//! A minimal HTTP/1.1 client for loopback endpoints (sidecar, health ports).
//!
//! One request per connection (`Connection: close`), bounded by a timeout. Kept
//! this small on purpose: the suite talks plain HTTP to local processes only.
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response: status, headers (lower-cased names) and body.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (null when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the sidecar's answer carries rationale `code`: in the
    /// `x-policybind-codes` header or in the error body.
    pub fn mentions(&self, code: &str) -> bool {
        self.header("x-policybind-codes")
            .is_some_and(|codes| codes.split(',').any(|c| c.trim() == code))
            || self.text().contains(code)
    }

    /// Status, codes header and body, for failure messages.
    pub fn summary(&self) -> String {
        format!(
            "{} [{}] {}",
            self.status,
            self.header("x-policybind-codes").unwrap_or(""),
            self.text()
        )
    }
}

/// Send one request to `addr` (host:port).
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response> {
    tokio::time::timeout(timeout, send(addr, method, path, headers, body))
        .await
        .with_context(|| format!("{method} http://{addr}{path} timed out after {timeout:?}"))?
}

async fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Response> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let body = body.unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> Result<Response> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("no HTTP response head in {} bytes", raw.len());
    };
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
            bail!("truncated chunked body");
        };
        let size_text = String::from_utf8_lossy(&data[..end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Poll `GET path` until it answers 200 or `timeout` passes.
pub async fn wait_ok(addr: &str, path: &str, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no answer");
    while tokio::time::Instant::now() < deadline {
        match request(addr, "GET", path, &[], None, Duration::from_secs(2)).await {
            Ok(response) if response.status == 200 => return Ok(()),
            Ok(response) => last = format!("status {}: {}", response.status, response.text()),
            Err(error) => last = format!("{error:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("http://{addr}{path} not ready after {timeout:?}: {last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_reassembled() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let response = parse(raw).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"abcde");
    }

    #[test]
    fn codes_are_found_in_the_header_or_the_body() {
        let raw = b"HTTP/1.1 401 Unauthorized\r\nX-PolicyBind-Codes: TOKEN_REVOKED, POLICY_DENY\r\n\r\n{}";
        let response = parse(raw).unwrap();
        assert!(response.mentions("TOKEN_REVOKED"));
        assert!(response.mentions("POLICY_DENY"));
        assert!(!response.mentions("TOKEN"));
        let raw = b"HTTP/1.1 403 Forbidden\r\n\r\n{\"error\":{\"code\":\"MODEL_NOT_APPROVED\"}}";
        assert!(parse(raw).unwrap().mentions("MODEL_NOT_APPROVED"));
    }

    #[test]
    fn plain_bodies_and_headers_are_kept() {
        let raw = b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n\r\n{\"a\":1}";
        let response = parse(raw).unwrap();
        assert_eq!(response.status, 403);
        assert_eq!(response.json()["a"], 1);
        assert_eq!(
            response.headers[0],
            ("content-type".into(), "application/json".into())
        );
    }
}
