//! Standalone mode end to end with the real audit writer: decisions land in the
//! directory store as sealed, signed segments.

mod common;

use std::sync::Arc;

use common::*;
use http::StatusCode;
use policybind_audit::SegmentStore;
use policybind_sidecar::audit::{directory_writer, load_or_create_signing_key};

#[tokio::test]
async fn decisions_are_written_to_the_audit_directory_as_sealed_signed_segments() {
    let upstream = Upstream::start().await;
    let audit_dir = tempfile::tempdir().unwrap();
    let (key, _) = load_or_create_signing_key(&audit_dir.path().join("signing-key.pem")).unwrap();
    let verifying = key.verifying_key();
    let writer = directory_writer(audit_dir.path(), key, "standalone/test")
        .await
        .unwrap();

    let base = base_manifests();
    let sidecar = Harness::start_full(
        &upstream.url,
        &[("base.yaml", &base), ("policy.yaml", POLICY)],
        |_| {},
        Some(Arc::new(writer.clone())),
    )
    .await;
    let (status, headers, _) = sidecar.chat(Some(ALICE), "gpt-4o-mini", "hello", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let allowed_id = header(&headers, "x-policybind-request-id").to_string();
    let (status, _, _) = sidecar.chat(None, "gpt-4o-mini", "hello", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    sidecar.stop().await;
    writer.shutdown().await.unwrap();

    // The trail is read back through the store: segments parse, are sealed and
    // signed with the key in force (chain verification itself is tested with the
    // audit crate and `policybind audit verify`).
    let store = policybind_audit::DirectoryStore::open(audit_dir.path()).unwrap();
    let segments = store.list().await.unwrap();
    assert_eq!(segments.len(), 1);
    let segment = segments[0]
        .clone()
        .parse()
        .content
        .expect("the segment parses");
    assert_eq!(segment.header.record_count, 2);
    assert!(segment.signature.is_some() && segment.header.sealed_at.is_some());
    assert_eq!(segment.header.key_id.as_deref(), Some(verifying.key_id()));
    let text: String = std::fs::read_dir(audit_dir.path())
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    assert!(text.contains(&allowed_id));
    assert!(text.contains("TOKEN_MISSING"));
    assert!(!text.contains(ALICE), "token values never reach the trail");
    upstream.stop().await;
}
