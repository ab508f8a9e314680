//! The sidecar's bundle source against a mocked API server that checks every
//! call: part 0 is listed and watched by name only (a `metadata.name` field
//! selector, which RBAC authorizes against the reader Role's resourceNames), the
//! other parts are read by name, and a bad bundle (gzip bomb, too many parts, a
//! part of another version) never replaces the set in force.

use std::collections::VecDeque;
use std::io::Write;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use policybind_crds::wire::{self, annotations, keys};
use policybind_engine::Bundle;
use policybind_engine::bundle_codec::{BundlePart, DecodeLimits, EncodedBundle, encode};
use policybind_sidecar::PolicyHolder;
use policybind_sidecar::cluster::{BundleSource, watch_bundle};
use policybind_sidecar::metrics::Metrics;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

type ApiServerHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const HOME: &str = "policybind-system";

/// A bundle of `seed`, encoded in `count` gzip parts.
fn bundle(seed: &str, count: usize) -> EncodedBundle {
    let mut bundle = Bundle::default();
    for i in 0..200 {
        bundle.namespace_labels.insert(
            format!("{seed}-namespace-{i}"),
            [("team".to_string(), format!("{seed}-{i}"))].into(),
        );
    }
    // Small parts force gzip; then cut the whole stream into `count` parts.
    let gzip_bytes: usize = encode(&bundle, 1000)
        .parts
        .iter()
        .map(BundlePart::len)
        .sum();
    let encoded = encode(&bundle, gzip_bytes.div_ceil(count));
    assert_eq!(encoded.parts.len(), count);
    encoded
}

/// The ConfigMap of part `index` of `encoded`, as the operator writes it.
fn part(encoded: &EncodedBundle, index: usize, announce: usize, rv: u32) -> Value {
    let mut cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": wire::bundle_part("team-a", index),
            "namespace": HOME,
            "resourceVersion": rv.to_string(),
            "annotations": {
                annotations::FINGERPRINT: encoded.fingerprint,
                annotations::BUNDLE_PART: format!("{index}/{announce}"),
            }
        }
    });
    match &encoded.parts[index] {
        BundlePart::Plain(json) => cm["data"] = json!({keys::BUNDLE_JSON: json}),
        BundlePart::Gzip(gz) => {
            use base64::Engine;
            cm["binaryData"] =
                json!({keys::BUNDLE_GZ: base64::engine::general_purpose::STANDARD.encode(gz)})
        }
    }
    cm
}

fn modified(object: &Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(&json!({"type": "MODIFIED", "object": object})).unwrap();
    line.push(b'\n');
    line
}

fn reply(send: tower_test::mock::SendResponse<Response<Body>>, status: StatusCode, body: Vec<u8>) {
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(body))
            .unwrap(),
    );
}

/// Serves the watcher: answers the list with `listed`, each watch with the next
/// batch of events (an exhausted script leaves the watch open), and GETs of
/// parts from `parts`, in order, failing on any other call.
struct Script {
    listed: Value,
    watches: VecDeque<Vec<u8>>,
    gets: VecDeque<(String, Value)>,
}

async fn serve(mut handle: ApiServerHandle, mut script: Script) {
    let part0 = wire::bundle_config_map("team-a");
    let mut open_watches = vec![];
    while let Some((request, send)) = handle.next_request().await {
        assert_eq!(request.method(), Method::GET, "{}", request.uri());
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or("").to_string();
        if path == format!("/api/v1/namespaces/{HOME}/configmaps") {
            // List and watch by name only, in PolicyBind's namespace.
            assert!(
                query.contains(&format!("fieldSelector=metadata.name%3D{part0}")),
                "{query}"
            );
            assert!(!query.contains("labelSelector"), "{query}");
            if query.contains("watch=true") {
                match script.watches.pop_front() {
                    Some(events) => reply(send, StatusCode::OK, events),
                    None => open_watches.push(send),
                }
            } else {
                let list = json!({"apiVersion": "v1", "kind": "ConfigMapList",
                                  "metadata": {"resourceVersion": "1"},
                                  "items": [script.listed.clone()]});
                reply(send, StatusCode::OK, serde_json::to_vec(&list).unwrap());
            }
            continue;
        }
        let (expected, answer) = script
            .gets
            .pop_front()
            .unwrap_or_else(|| panic!("unexpected GET {path}"));
        assert_eq!(
            path,
            format!("/api/v1/namespaces/{HOME}/configmaps/{expected}")
        );
        reply(send, StatusCode::OK, serde_json::to_vec(&answer).unwrap());
    }
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn parts_are_read_by_name_and_bad_bundles_never_replace_the_set_in_force() {
    let good = bundle("one", 3);
    let next = bundle("two", 2);

    // A gzip bomb: 32 MiB of spaces in one small part, over a 1 MiB limit.
    let bomb = EncodedBundle {
        fingerprint: "sha256:bomb".into(),
        parts: vec![BundlePart::Gzip(gzip(&vec![b' '; 32 << 20]))],
        json_bytes: 32 << 20,
    };
    let mut many = part(&next, 0, 2, 12);
    many["metadata"]["annotations"][annotations::BUNDLE_PART] = json!("0/17");
    many["metadata"]["annotations"][annotations::FINGERPRINT] = json!("sha256:many");

    let script = Script {
        listed: part(&good, 0, 3, 1),
        watches: [
            // The bomb, twice (a new resourceVersion, the same fingerprint).
            modified(&part(&bomb, 0, 1, 10)),
            modified(&part(&bomb, 0, 1, 11)),
            // 17 parts announced: refused before any part is read.
            modified(&many),
            // A good two-part bundle whose part 1 is not written yet.
            modified(&part(&next, 0, 2, 13)),
        ]
        .into_iter()
        .collect(),
        gets: [
            (wire::bundle_part("team-a", 1), part(&good, 1, 3, 2)),
            (wire::bundle_part("team-a", 2), part(&good, 2, 3, 3)),
            // Part 1 still of the old version: wait and read again.
            (wire::bundle_part("team-a", 1), part(&good, 1, 3, 2)),
            (wire::bundle_part("team-a", 1), part(&next, 1, 2, 14)),
        ]
        .into_iter()
        .collect(),
    };

    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let server = tokio::spawn(serve(handle, script));
    let holder = PolicyHolder::new();
    let metrics = Metrics::new();
    let stop = CancellationToken::new();
    let source = BundleSource {
        namespace: HOME.into(),
        name: wire::bundle_config_map("team-a"),
        limits: DecodeLimits {
            max_json_bytes: 1 << 20,
            ..DecodeLimits::default()
        },
    };
    let watch = tokio::spawn(watch_bundle(
        client,
        source,
        holder.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    let fingerprint = || holder.current().map(|l| l.set.fingerprint().to_string());

    wait_for("the next bundle", || {
        fingerprint().as_deref() == Some(next.fingerprint.as_str())
    })
    .await;
    let text = metrics.encode(chrono::Utc::now());
    // Each bad fingerprint counted once, by reason; the good ones went in force.
    assert!(
        text.contains(r#"policybind_sidecar_bundle_rejected_total{reason="too_large"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"policybind_sidecar_bundle_rejected_total{reason="too_many_parts"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"policybind_sidecar_reloads_total{result="ok"} 2"#),
        "{text}"
    );
    stop.cancel();
    watch.await.unwrap();
    server.abort();
}

#[tokio::test]
async fn until_a_first_good_bundle_arrives_nothing_is_in_force() {
    let bomb = EncodedBundle {
        fingerprint: "sha256:bomb".into(),
        parts: vec![BundlePart::Gzip(gzip(&vec![b' '; 4 << 20]))],
        json_bytes: 4 << 20,
    };
    let script = Script {
        listed: part(&bomb, 0, 1, 1),
        watches: VecDeque::new(),
        gets: VecDeque::new(),
    };
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let server = tokio::spawn(serve(handle, script));
    let holder = PolicyHolder::new();
    let metrics = Metrics::new();
    let stop = CancellationToken::new();
    let source = BundleSource {
        namespace: HOME.into(),
        name: wire::bundle_config_map("team-a"),
        limits: DecodeLimits {
            max_json_bytes: 1 << 20,
            ..DecodeLimits::default()
        },
    };
    let watch = tokio::spawn(watch_bundle(
        client,
        source,
        holder.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    let m = metrics.clone();
    wait_for("the rejection", move || {
        m.encode(chrono::Utc::now())
            .contains(r#"policybind_sidecar_bundle_rejected_total{reason="too_large"} 1"#)
    })
    .await;
    assert!(holder.current().is_none(), "fail closed: no set in force");
    stop.cancel();
    watch.await.unwrap();
    server.abort();
}
