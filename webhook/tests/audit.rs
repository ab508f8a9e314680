//! The webhook's own audit trail (issue 11 point 3) over real HTTPS: forged
//! identifiers never reach it, a trail that cannot take a record denies in
//! enforced namespaces, dry runs are not recorded, and one poisoned review does
//! not stop the records after it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Reply, default_view, fixture, start, start_with_sink};
use futures::FutureExt;
use futures::future::BoxFuture;
use policybind_audit::{DirectoryStore, RawSegment, SegmentObject, SegmentStore, StoreProfile};
use policybind_engine::audit::{Keyring, VerifyOptions};
use policybind_webhook::audit::WriterSink;
use policybind_webhook::config::AdmissionConfig;
use serde_json::{Value, json};

fn code(reply: &Reply) -> String {
    reply.response()["status"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The poison of issue 11: 250,000 control characters (about 1.5 MB once JSON
/// escapes them), in the field a forged review controls.
fn poisoned(field: &str) -> Value {
    let poison = "\u{1}".repeat(250_000);
    let mut review = fixture("pod-create.json");
    match field {
        "username" => review["request"]["userInfo"]["username"] = json!(poison),
        "uid" => review["request"]["uid"] = json!(poison),
        "namespace" => review["request"]["namespace"] = json!(poison),
        "name" => review["request"]["name"] = json!(poison),
        "model" => {
            review["request"]["object"]["metadata"]["annotations"]["policybind.io/model"] =
                json!(poison)
        }
        "group" => review["request"]["userInfo"]["groups"][0] = json!(poison),
        _ => unreachable!(),
    }
    review
}

#[tokio::test]
async fn a_forged_review_with_a_huge_identifier_is_denied_naming_the_field_and_never_recorded_raw()
{
    let harness = start(default_view(), AdmissionConfig::default()).await;
    for (field, path) in [
        ("username", "request.userInfo.username"),
        ("uid", "request.uid"),
        ("namespace", "request.namespace"),
        ("name", "request.name"),
        ("group", "request.userInfo.groups[0]"),
        ("model", "metadata.annotations[policybind.io/model]"),
    ] {
        for webhook in ["validate", "mutate"] {
            let review = poisoned(field);
            let reply = if webhook == "validate" {
                harness.validate(&review).await
            } else {
                harness.mutate(&review).await
            };
            assert_eq!(reply.status, 200, "{field} {webhook}");
            assert!(!reply.allowed(), "{field} {webhook}: admitted");
            assert_eq!(code(&reply), "REQUEST_INVALID", "{field} {webhook}");
            let message = reply.message();
            assert!(
                message.contains(&format!("{path} is 250000 bytes long; at most")),
                "{field} {webhook}: {message}"
            );
            assert!(
                message.len() < 300,
                "the value is not echoed: {}",
                message.len()
            );
        }
    }
    let records = harness.audit.records();
    assert_eq!(records.len(), 12);
    for record in &records {
        let text = format!("{record:?}");
        assert!(text.len() < 2_000, "record of {} bytes", text.len());
        assert!(
            !text.contains('\u{1}') && !text.contains("\\u{1}"),
            "{text}"
        );
        assert_eq!(record.subject, None);
        assert_eq!(record.request_id, None);
        assert_eq!(record.codes, ["REQUEST_INVALID"]);
        assert!(record.detail.contains_key("invalidField"));
    }
    assert_eq!(harness.metrics.invalid_identifiers.get(), 12);

    // A short control character is refused the same way.
    let mut review = fixture("pod-create.json");
    review["request"]["userInfo"]["username"] = json!("alice\u{1b}[31m@example.com");
    let reply = harness.validate(&review).await;
    assert!(
        reply
            .message()
            .contains("request.userInfo.username contains the control character U+001B at byte 5"),
        "{}",
        reply.message()
    );
}

#[tokio::test]
async fn in_an_enforced_namespace_an_admission_that_cannot_be_recorded_is_denied() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    harness.audit.refuse(true);
    let reply = harness.mutate(&fixture("pod-create.json")).await;
    assert!(!reply.allowed());
    assert_eq!(code(&reply), "AUDIT_UNAVAILABLE");
    assert!(reply.patch().is_none(), "a denial carries no patch");
    assert!(
        reply
            .message()
            .contains("namespace team-a is enforced, so nothing is admitted unrecorded"),
        "{}",
        reply.message()
    );
    // Elsewhere the admission proceeds, and the failure is counted.
    let mut elsewhere = fixture("pod-create.json");
    elsewhere["request"]["namespace"] = json!("team-b");
    let reply = harness.validate(&elsewhere).await;
    assert!(reply.allowed(), "{}", reply.message());
    let metrics = harness.metrics.encode();
    assert!(
        metrics.contains(
            "policybind_webhook_audit_records_total{result=\"failed\",reason=\"queue_full\"} 2"
        ),
        "{metrics}"
    );
    // Once the trail takes records again, so does admission.
    harness.audit.refuse(false);
    assert!(harness.admit(&fixture("pod-create.json")).await.allowed());
}

#[tokio::test]
async fn the_audit_requirement_can_be_turned_off() {
    let config = AdmissionConfig {
        require_audit_record: false,
        ..AdmissionConfig::default()
    };
    let harness = start(default_view(), config).await;
    harness.audit.refuse(true);
    let reply = harness.mutate(&fixture("pod-create.json")).await;
    assert!(reply.allowed(), "{}", reply.message());
    assert!(reply.patch().is_some());
}

#[tokio::test]
async fn dry_run_reviews_are_decided_but_not_recorded() {
    let harness = start(default_view(), AdmissionConfig::default()).await;
    let mut review = fixture("pod-create.json");
    review["request"]["dryRun"] = json!(true);
    let reply = harness.validate(&review).await;
    assert_eq!(code(&reply), "SIDECAR_MISSING", "decided as a real one");
    let reply = harness.mutate(&review).await;
    assert!(reply.patch().is_some(), "and injected as a real one");
    assert!(harness.audit.records().is_empty());
    // Even a trail that refuses everything does not deny a dry run.
    harness.audit.refuse(true);
    assert!(harness.mutate(&review).await.allowed());
    assert!(
        harness
            .metrics
            .encode()
            .contains("policybind_webhook_audit_records_total{result=\"dry_run\",reason=\"\"} 3")
    );
}

/// A store that refuses what the API server refuses: a segment over 1 MiB.
struct ApiServerSized(DirectoryStore);

const CONFIGMAP_LIMIT: usize = 1024 * 1024;

impl SegmentStore for ApiServerSized {
    fn put<'a>(
        &'a self,
        object: &'a SegmentObject,
    ) -> BoxFuture<'a, Result<(), policybind_audit::Error>> {
        let bytes = object.body.len();
        if bytes > CONFIGMAP_LIMIT {
            let error = std::io::Error::other(format!("request entity too large: {bytes} bytes"));
            return async move {
                Err(policybind_audit::Error::Io {
                    action: "store",
                    path: "configmap".into(),
                    source: error,
                })
            }
            .boxed();
        }
        self.0.put(object)
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<RawSegment>, policybind_audit::Error>> {
        self.0.list()
    }
    fn names<'a>(
        &'a self,
        writer: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, policybind_audit::Error>> {
        self.0.names(writer)
    }
    fn get<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<RawSegment>, policybind_audit::Error>> {
        self.0.get(name)
    }
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), policybind_audit::Error>> {
        self.0.delete(name)
    }
    fn profile(&self) -> StoreProfile {
        self.0.profile()
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
}

#[tokio::test]
async fn one_poisoned_review_does_not_stop_the_records_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ApiServerSized(DirectoryStore::open(dir.path()).unwrap()));
    let key = policybind_engine::audit::AuditSigningKey::from_seed(&[3; 32]);
    let trusted = key.verifying_key();
    let mut config = policybind_audit::AuditConfig::new("webhook/test", key);
    config.flush_interval = Duration::from_millis(20);
    let writer = policybind_audit::AuditWriter::start(config, store.clone())
        .await
        .unwrap();
    let harness = start_with_sink(
        default_view(),
        AdmissionConfig::default(),
        Arc::new(WriterSink::new(writer.clone())),
    )
    .await;

    assert_eq!(
        code(&harness.validate(&poisoned("username")).await),
        "REQUEST_INVALID"
    );
    for _ in 0..5 {
        assert!(harness.admit(&fixture("pod-create.json")).await.allowed());
    }
    writer.flush().await.unwrap();
    let stats = writer.stats();
    assert_eq!(
        stats.last_seq, 11,
        "1 denial + 5 injections + 5 validations"
    );
    assert_eq!(
        stats.persisted_seq, stats.last_seq,
        "every record is stored"
    );
    assert_eq!(
        stats.store_failures, 0,
        "no segment outgrew what the store takes"
    );

    writer.shutdown().await.unwrap();
    let segments = store.list().await.unwrap();
    let options = VerifyOptions {
        keyring: Some(Keyring::single(trusted, vec!["webhook/*".into()]).unwrap()),
        ..VerifyOptions::default()
    };
    let report = policybind_audit::verify_stored(segments, &options);
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(report.signatures_checked);
}
