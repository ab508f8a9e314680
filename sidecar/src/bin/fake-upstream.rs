//! A small OpenAI-compatible model server for tests and benchmarks
//! ([`policybind_sidecar::fake_upstream`]), with its recording and control endpoints.
//!
//! Usage: `fake-upstream [--listen 127.0.0.1:0] [--no-record]`. Prints
//! `listening on <addr>` as its first line of stdout.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use policybind_sidecar::fake_upstream::Options;

#[tokio::main]
async fn main() {
    let mut listen: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let mut record = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                listen = args
                    .next()
                    .and_then(|a| a.parse().ok())
                    .expect("--listen takes an address")
            }
            "--no-record" => record = false,
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .expect("cannot bind");
    println!("listening on {}", listener.local_addr().expect("bound"));
    axum::serve(
        listener,
        policybind_sidecar::fake_upstream::router(Options {
            record,
            controls: true,
        }),
    )
    .await
    .expect("server failed");
}
