//! The floor for the side-by-side benchmark: a reverse proxy built on the
//! sidecar's own stack (axum on tokio, hyper-util's pooled HTTP/1 client,
//! one single-threaded runtime per worker thread sharing one listening
//! socket, `TCP_NODELAY` both ways) that does no policy work at all. It reads
//! the request body, forwards it with the caller's headers, reads the answer
//! and passes it back.
//!
//! What it costs per request is what any proxy on this stack costs before it
//! decides anything: `sidecar/bench/side-by-side.sh` runs it next to the
//! sidecar and nginx so the report separates the stack's share of the gap to
//! nginx from the policy pipeline's.
//!
//! `cargo run --release -p policybind-sidecar --example bare_proxy --
//!  127.0.0.1:18095 http://127.0.0.1:18000 [workers, default 2]`
use std::net::SocketAddr;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use policybind_sidecar::config::Limits;

#[derive(Clone)]
struct Upstream {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    /// The sidecar's default body limits, bounding what is read either way.
    limits: Limits,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bare_proxy LISTEN UPSTREAM_URL [WORKERS]";
    let listen: SocketAddr = args.next().expect(usage).parse().expect(usage);
    let base = args.next().expect(usage).trim_end_matches('/').to_string();
    let workers: usize = args.next().map_or(2, |w| w.parse().expect(usage));
    let listener = std::net::TcpListener::bind(listen).expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let threads: Vec<_> = (0..workers.max(1))
        .map(|index| {
            let listener = listener.try_clone().expect("clone listener");
            let base = base.clone();
            std::thread::Builder::new()
                .name(format!("bare-proxy-{index}"))
                .spawn(move || worker(listener, base))
                .expect("spawn worker")
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().expect("worker"));
}

/// One worker: its own runtime, its own upstream connection pool.
fn worker(listener: std::net::TcpListener, base: String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(http);
        let app = Router::new().fallback(any(forward)).with_state(Upstream {
            base,
            client,
            limits: Limits::default(),
        });
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await.expect("serve");
    });
}

async fn forward(State(upstream): State<Upstream>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, upstream.limits.max_body_bytes).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut outgoing = hyper::Request::new(Full::new(body));
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = match format!("{}{path}", upstream.base).parse() {
        Ok(uri) => uri,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    *outgoing.headers_mut() = parts.headers;
    outgoing.headers_mut().remove(header::HOST);
    let Ok(answer) = upstream.client.request(outgoing).await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let (parts, body) = answer.into_parts();
    match Limited::new(body, upstream.limits.max_response_bytes)
        .collect()
        .await
    {
        Ok(collected) => Response::from_parts(parts, Body::from(collected.to_bytes())),
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}
