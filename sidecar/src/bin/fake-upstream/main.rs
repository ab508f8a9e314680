//! A small model server for tests and benchmarks
//! ([`policybind_sidecar::fake_upstream`]), with its recording and control
//! endpoints.
//!
//! Usage: `fake-upstream [--listen 127.0.0.1:0] [--no-record] [--tls-dir DIR]`.
//! With `--tls-dir` it serves HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with a
//! certificate for `localhost` and `127.0.0.1` signed by a CA it generates,
//! written to `DIR/ca.pem`. Prints `listening on <addr>` as its first line of
//! stdout.
#![forbid(unsafe_code)]

mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;

use policybind_sidecar::fake_upstream::{Options, router};

struct Args {
    listen: SocketAddr,
    record: bool,
    tls_dir: Option<PathBuf>,
}

fn args() -> Args {
    let mut parsed = Args {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        record: true,
        tls_dir: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                parsed.listen = args
                    .next()
                    .and_then(|a| a.parse().ok())
                    .expect("--listen takes an address")
            }
            "--no-record" => parsed.record = false,
            "--tls-dir" => {
                parsed.tls_dir = Some(args.next().expect("--tls-dir takes a directory").into())
            }
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    parsed
}

#[tokio::main]
async fn main() {
    let args = args();
    let app = router(Options {
        record: args.record,
        controls: true,
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .expect("cannot bind");
    let addr = listener.local_addr().expect("bound");
    match args.tls_dir {
        Some(dir) => {
            let config = tls::server_config(&dir);
            println!("listening on {addr}");
            tls::serve(listener, config, app).await;
        }
        None => {
            println!("listening on {addr}");
            axum::serve(listener, app).await.expect("server failed");
        }
    }
}
