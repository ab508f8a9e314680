//! The ConfigMap store and the writer on it against a mocked API server that
//! checks every request exactly (kube-rs' `ApiServerVerifier` pattern): method,
//! path and query, content type and body. An unexpected or missing call fails the
//! test by timeout.
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use policybind_audit::naming::{segment_name, writer_key};
use policybind_audit::{AuditConfig, AuditWriter, ConfigMapStore, SegmentStore};
use policybind_crds::Effect;
use policybind_crds::wire::{field_managers::AUDIT as FIELD_MANAGER, keys::SEGMENT_GZ};
use policybind_engine::audit::{
    AuditEvent, AuditSigningKey, Chain, Hash256, NamedSegment, RecordTime, Segment, VerifyOptions,
    verify_segments,
};
use serde_json::{Value, json};

type ApiServerHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Respond = tower_test::mock::SendResponse<Response<Body>>;

const NAMESPACE: &str = "team-a";
const WRITER: &str = "sidecar/team-a/pod-1";

fn key() -> AuditSigningKey {
    AuditSigningKey::from_seed(&[8; 32])
}

fn keyring() -> policybind_engine::audit::Keyring {
    policybind_engine::audit::Keyring::single(
        key().verifying_key(),
        vec!["sidecar/team-a/*".into()],
    )
    .unwrap()
}

fn mocked() -> (kube::Client, ApiServerHandle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// The next request, or a failure if the code under test makes none.
async fn next_request(
    handle: &mut ApiServerHandle,
) -> (Method, String, Option<String>, Vec<u8>, Respond) {
    let (request, respond) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .expect("timed out waiting for an API request")
        .expect("service dropped");
    let method = request.method().clone();
    let uri = request.uri().to_string();
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string());
    let body = request.into_body().collect_bytes().await.unwrap().to_vec();
    (method, uri, content_type, body, respond)
}

/// No request follows within a short while (or the client is gone).
async fn assert_no_more_requests(handle: &mut ApiServerHandle) {
    let next = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
    assert!(
        matches!(next, Err(_) | Ok(None)),
        "unexpected extra request"
    );
}

fn respond_json(respond: Respond, status: StatusCode, body: &Value) {
    respond.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn sealed_segment(first_seq: u64, count: u64) -> Segment {
    let mut chain = Chain::resume(WRITER, first_seq - 1, Hash256::ZERO);
    let time = RecordTime::new(chrono::DateTime::from_timestamp(1_780_000_000, 0).unwrap());
    let records = (0..count)
        .map(|_| chain.append(AuditEvent::decision(Effect::Allow).subject("team-a"), time))
        .collect();
    let mut segment = Segment::open(Hash256::ZERO, records);
    segment.seal(time, &key());
    segment
}

/// The segment a ConfigMap body (as JSON) holds: gzip under `binaryData`.
fn segment_in(config_map: &Value) -> Segment {
    use base64::Engine;
    let encoded = config_map["binaryData"][SEGMENT_GZ]
        .as_str()
        .expect("binaryData");
    let gzip = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let json = policybind_audit::encoding::gunzip(&gzip).unwrap();
    serde_json::from_slice(&json).unwrap()
}

fn config_map_json(segment: &Segment) -> Value {
    serde_json::to_value(ConfigMapStore::config_map_for(segment)).unwrap()
}

fn apply_path(name: &str) -> String {
    format!(
        "/api/v1/namespaces/{NAMESPACE}/configmaps/{name}?&force=true&fieldManager={FIELD_MANAGER}"
    )
}

#[tokio::test]
async fn sealed_segment_is_one_server_side_apply_of_an_immutable_labelled_config_map() {
    let (client, mut handle) = mocked();
    let store = ConfigMapStore::new(client, NAMESPACE);
    let segment = sealed_segment(1, 3);
    let name = segment_name(WRITER, 1);
    let expected = segment.clone();
    let object = policybind_audit::SegmentObject {
        name: name.clone(),
        writer: WRITER.into(),
        sealed: true,
        body: policybind_audit::encoding::gzip_member(&policybind_audit::store::encode_segment(
            &segment,
        ))
        .into(),
    };
    let server = tokio::spawn(async move {
        let (method, uri, content_type, body, respond) = next_request(&mut handle).await;
        assert_eq!(method, Method::PATCH);
        assert_eq!(uri, apply_path(&name));
        assert_eq!(
            content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["apiVersion"], "v1");
        assert_eq!(body["kind"], "ConfigMap");
        assert_eq!(body["metadata"]["name"], name.as_str());
        assert_eq!(
            body["metadata"]["labels"],
            json!({ "policybind.io/audit-segment": writer_key(WRITER) })
        );
        assert_eq!(body["immutable"], true);
        assert!(body.get("data").is_none(), "{body}");
        assert_eq!(segment_in(&body), expected);
        respond_json(respond, StatusCode::OK, &body);
        handle
    });
    store.put(&object).await.unwrap();
    let mut handle = server.await.unwrap();
    // Exactly one request.
    assert_no_more_requests(&mut handle).await;
}

#[tokio::test]
async fn extra_labels_of_the_caller_go_on_every_segment_but_never_replace_the_segment_label() {
    let (client, mut handle) = mocked();
    let store = ConfigMapStore::new(client, NAMESPACE).with_labels(
        [
            ("policybind.io/pod".to_string(), "bot-1".to_string()),
            (
                "policybind.io/audit-segment".to_string(),
                "forged".to_string(),
            ),
        ]
        .into(),
    );
    let object = policybind_audit::SegmentObject {
        name: segment_name(WRITER, 1),
        writer: WRITER.into(),
        sealed: true,
        body: policybind_audit::encoding::gzip_member(b"{}").into(),
    };
    let server = tokio::spawn(async move {
        let (_, _, _, body, respond) = next_request(&mut handle).await;
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body["metadata"]["labels"],
            json!({ "policybind.io/audit-segment": writer_key(WRITER), "policybind.io/pod": "bot-1" })
        );
        respond_json(respond, StatusCode::OK, &body);
    });
    store.put(&object).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn open_segment_is_applied_without_immutable_and_labelled_with_its_pod() {
    let (client, mut handle) = mocked();
    let store = ConfigMapStore::new(client, NAMESPACE).with_pod("pod-1");
    let object = policybind_audit::SegmentObject {
        name: segment_name(WRITER, 1),
        writer: WRITER.into(),
        sealed: false,
        body: policybind_audit::encoding::gzip_member(b"{}").into(),
    };
    let server = tokio::spawn(async move {
        let (_, _, _, body, respond) = next_request(&mut handle).await;
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert!(body.get("immutable").is_none(), "{body}");
        assert_eq!(body["metadata"]["labels"]["policybind.io/pod"], "pod-1");
        respond_json(respond, StatusCode::OK, &body);
    });
    store.put(&object).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn segments_of_earlier_versions_in_plain_data_are_still_read() {
    let segment = sealed_segment(1, 2);
    let mut config_map = ConfigMapStore::config_map_for(&segment);
    config_map.binary_data = None;
    config_map.data = Some(
        [(
            policybind_crds::wire::keys::SEGMENT.to_string(),
            String::from_utf8(policybind_audit::store::encode_segment(&segment)).unwrap(),
        )]
        .into(),
    );
    let (_, json) = ConfigMapStore::document_of(&config_map);
    let parsed: Segment = serde_json::from_slice(&json.unwrap()).unwrap();
    assert_eq!(parsed, segment);
}

#[tokio::test]
async fn list_selects_by_label_pages_with_continue_tokens_and_sorts_by_name() {
    let (client, mut handle) = mocked();
    let store = ConfigMapStore::new(client, NAMESPACE);
    let first = sealed_segment(1, 2);
    let second = sealed_segment(3, 2);
    let (first_json, second_json) = (config_map_json(&first), config_map_json(&second));
    let server = tokio::spawn(async move {
        let base = format!(
            "/api/v1/namespaces/{NAMESPACE}/configmaps?&labelSelector=policybind.io%2Faudit-segment&limit=20"
        );
        let (method, uri, _, _, respond) = next_request(&mut handle).await;
        assert_eq!((method, uri.as_str()), (Method::GET, base.as_str()));
        respond_json(
            respond,
            StatusCode::OK,
            &json!({ "apiVersion": "v1", "kind": "ConfigMapList",
                     "metadata": { "continue": "page-2" }, "items": [second_json] }),
        );
        let (method, uri, _, _, respond) = next_request(&mut handle).await;
        assert_eq!(
            (method, uri),
            (Method::GET, format!("{base}&continue=page-2"))
        );
        respond_json(
            respond,
            StatusCode::OK,
            &json!({ "apiVersion": "v1", "kind": "ConfigMapList",
                     "metadata": {}, "items": [first_json] }),
        );
    });
    let listed = store.list().await.unwrap();
    server.await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        [segment_name(WRITER, 1), segment_name(WRITER, 3)]
    );
    assert_eq!(listed[0].clone().parse().content.unwrap(), first);
}

#[tokio::test]
async fn delete_of_an_already_deleted_segment_succeeds() {
    let (client, mut handle) = mocked();
    let store = ConfigMapStore::new(client, NAMESPACE);
    let server = tokio::spawn(async move {
        let (method, uri, _, _, respond) = next_request(&mut handle).await;
        assert_eq!(method, Method::DELETE);
        assert_eq!(
            uri,
            format!("/api/v1/namespaces/{NAMESPACE}/configmaps/pb-audit-x?")
        );
        respond_json(
            respond,
            StatusCode::NOT_FOUND,
            &json!({ "apiVersion": "v1", "kind": "Status", "status": "Failure",
                     "reason": "NotFound", "code": 404, "message": "not found" }),
        );
    });
    store.delete("pb-audit-x").await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn writer_lists_once_writes_one_batch_per_interval_retries_when_the_api_is_away_and_seals_on_shutdown()
 {
    let (client, mut handle) = mocked();
    let store = Arc::new(ConfigMapStore::new(client, NAMESPACE));
    let interval = Duration::from_millis(300);
    let mut config = AuditConfig::new(WRITER, key());
    config.flush_interval = interval;
    config.max_retry_backoff = Duration::from_millis(600);
    let name = segment_name(WRITER, 1);

    let server = tokio::spawn(async move {
        // Start: the names of the writer's segments, by its label value,
        // metadata only.
        let (method, uri, _, _, respond) = next_request(&mut handle).await;
        assert_eq!(method, Method::GET);
        assert_eq!(
            uri,
            format!(
                "/api/v1/namespaces/{NAMESPACE}/configmaps?&labelSelector=policybind.io%2Faudit-segment%3D{}&limit=500",
                writer_key(WRITER)
            )
        );
        respond_json(
            respond,
            StatusCode::OK,
            &json!({ "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                     "metadata": {}, "items": [] }),
        );

        // First batch: the API server is away.
        let (method, uri, _, failed_body, respond) = next_request(&mut handle).await;
        assert_eq!(
            (method, uri.as_str()),
            (Method::PATCH, apply_path(&name).as_str())
        );
        let failed_at = tokio::time::Instant::now();
        respond_json(
            respond,
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "apiVersion": "v1", "kind": "Status", "status": "Failure",
                     "reason": "ServiceUnavailable", "code": 503, "message": "away" }),
        );

        // The retry carries every record appended so far, not fewer.
        let (method, uri, _, body, respond) = next_request(&mut handle).await;
        assert_eq!(
            (method, uri.as_str()),
            (Method::PATCH, apply_path(&name).as_str())
        );
        assert!(
            failed_at.elapsed() >= interval,
            "retried after {:?}",
            failed_at.elapsed()
        );
        let failed: Value = serde_json::from_slice(&failed_body).unwrap();
        let retried: Value = serde_json::from_slice(&body).unwrap();
        let records = |v: &Value| -> Segment { segment_in(v) };
        assert!(records(&retried).records.len() >= records(&failed).records.len());
        assert!(retried.get("immutable").is_none());
        let mut last_write = tokio::time::Instant::now();
        respond_json(respond, StatusCode::OK, &retried);

        // Until shutdown: at most one write per interval; then the sealed segment,
        // immutable, written at once.
        let sealed = loop {
            let (method, uri, _, body, respond) = next_request(&mut handle).await;
            // Measured from request to request (not from our answer, which
            // comes later), with a few milliseconds for the timer's jitter.
            let since = last_write.elapsed();
            last_write = tokio::time::Instant::now();
            assert_eq!(
                (method, uri.as_str()),
                (Method::PATCH, apply_path(&name).as_str())
            );
            let body: Value = serde_json::from_slice(&body).unwrap();
            respond_json(respond, StatusCode::OK, &body);
            if body["immutable"] == true {
                break body;
            }
            assert!(
                since + Duration::from_millis(20) >= interval,
                "wrote again after {since:?}"
            );
        };
        (handle, records(&sealed))
    });

    let writer = AuditWriter::start(config, store).await.unwrap();
    for i in 0..100 {
        writer
            .append(AuditEvent::decision(Effect::Allow).request_id(format!("r{i}")))
            .unwrap();
    }
    // Let the first write fail and the retry succeed, appending meanwhile.
    tokio::time::sleep(interval * 3).await;
    for i in 100..200 {
        writer
            .append(AuditEvent::decision(Effect::Deny).request_id(format!("r{i}")))
            .unwrap();
    }
    let report = writer.shutdown().await.unwrap();
    let (mut handle, sealed) = server.await.unwrap();
    assert_eq!(report.persisted_seq, 200);
    assert_eq!(sealed.records.len(), 200);
    assert!(sealed.is_sealed());
    let verified = verify_segments(
        &[NamedSegment {
            name: "sealed".into(),
            segment: sealed,
        }],
        &VerifyOptions {
            keyring: Some(keyring()),
            require_genesis: true,
            ..VerifyOptions::default()
        },
    );
    assert!(verified.is_ok(), "{:?}", verified.problems);
    assert_no_more_requests(&mut handle).await;
}

#[tokio::test]
async fn signing_key_is_read_from_the_secret_data_key() {
    use base64::Engine;
    let (client, mut handle) = mocked();
    let pem = key().to_pkcs8_pem().unwrap();
    let server = tokio::spawn(async move {
        let (method, uri, _, _, respond) = next_request(&mut handle).await;
        assert_eq!(method, Method::GET);
        assert_eq!(
            uri,
            "/api/v1/namespaces/policybind-system/secrets/audit-key"
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode(pem);
        respond_json(
            respond,
            StatusCode::OK,
            &json!({ "apiVersion": "v1", "kind": "Secret",
                     "metadata": { "name": "audit-key", "namespace": "policybind-system" },
                     "data": { "signing-key": encoded } }),
        );
    });
    let loaded =
        policybind_audit::keys::signing_key_from_secret(client, "policybind-system", "audit-key")
            .await
            .unwrap();
    server.await.unwrap();
    assert_eq!(loaded.key_id(), key().key_id());
}

#[tokio::test]
async fn retention_exports_then_deletes_the_oldest_config_maps_in_sequence_order() {
    let (client, mut handle) = mocked();
    let store = ConfigMapStore::new(client, NAMESPACE);
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = policybind_audit::DirectorySink::new(sink_dir.path()).unwrap();
    // Three consecutive sealed segments of one writer.
    let mut chain = Chain::new(WRITER);
    let mut prev = Hash256::ZERO;
    let segments: Vec<Segment> = (0..3)
        .map(|s| {
            let time =
                RecordTime::new(chrono::DateTime::from_timestamp(1_780_000_000 + s, 0).unwrap());
            let records = (0..5)
                .map(|_| chain.append(AuditEvent::decision(Effect::Allow), time))
                .collect();
            let mut segment = Segment::open(prev, records);
            segment.seal(time, &key());
            prev = segment.header.last_hash;
            segment
        })
        .collect();
    let items: Vec<Value> = segments.iter().map(config_map_json).collect();
    let names: Vec<String> = segments
        .iter()
        .map(|s| segment_name(WRITER, s.header.first_seq))
        .collect();
    let expected_deletes = names[..2].to_vec();
    let server = tokio::spawn(async move {
        let (method, _, _, _, respond) = next_request(&mut handle).await;
        assert_eq!(method, Method::GET);
        respond_json(
            respond,
            StatusCode::OK,
            &json!({ "apiVersion": "v1", "kind": "ConfigMapList", "metadata": {}, "items": items }),
        );
        for name in expected_deletes {
            let (method, uri, _, _, respond) = next_request(&mut handle).await;
            assert_eq!(method, Method::DELETE);
            assert_eq!(
                uri,
                format!("/api/v1/namespaces/{NAMESPACE}/configmaps/{name}?")
            );
            respond_json(
                respond,
                StatusCode::OK,
                &json!({ "apiVersion": "v1", "kind": "Status", "status": "Success" }),
            );
        }
        assert_no_more_requests(&mut handle).await;
    });
    // A budget of zero: everything but the writer's newest segment goes.
    let report = policybind_audit::enforce_retention(
        &store,
        &sink,
        &policybind_audit::RetentionPolicy::new(0),
    )
    .await
    .unwrap();
    drop(store);
    server.await.unwrap();
    assert_eq!(report.removed, names[..2].to_vec());
    // The sink holds them before they were deleted, and they verify with the kept one.
    let mut exported = policybind_audit::DirectoryStore::open(sink_dir.path())
        .unwrap()
        .list()
        .await
        .unwrap();
    assert_eq!(exported.len(), 2);
    exported.push(policybind_audit::RawSegment {
        name: "kept".into(),
        size_bytes: 0,
        json: Ok(policybind_audit::store::encode_segment(&segments[2])),
    });
    let verified = policybind_audit::verify_stored(
        exported,
        &VerifyOptions {
            keyring: Some(keyring()),
            require_genesis: true,
            ..VerifyOptions::default()
        },
    );
    assert!(verified.is_ok(), "{:?}", verified.problems);
}
