//! Usage reports against a mocked API server that checks the exact calls
//! (kube-rs' `ApiServerVerifier` pattern): the previous report is read back
//! once, the snapshot is applied with the sidecar's field manager, and an
//! unchanged snapshot makes no call.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use policybind_crds::BudgetPeriod;
use policybind_engine::compile::CompiledBudget;
use policybind_sidecar::accounting::{Amount, TokenLimits};
use policybind_sidecar::usage::{Reported, UsageReportSettings, UsageReporter};
use policybind_sidecar::{InProcessLedger, UsageLedger};
use serde_json::{Value, json};

type ApiServerHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn mocked() -> (kube::Client, ApiServerHandle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// One expected call: method, path and query; returns the request's content
/// type and JSON body to the caller's checks.
async fn expect(
    handle: &mut ApiServerHandle,
    method: Method,
    path_and_query: &str,
    respond_with: impl FnOnce(Option<String>, Value) -> (StatusCode, Value),
) {
    let (request, respond) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .expect("timed out waiting for an API request")
        .expect("service dropped");
    assert_eq!(request.method(), method);
    assert_eq!(
        request.uri().path_and_query().unwrap().as_str(),
        path_and_query
    );
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string());
    let body = request.into_body().collect_bytes().await.unwrap();
    let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (status, reply) = respond_with(content_type, sent);
    respond.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
}

const PATH: &str = "/api/v1/namespaces/team-a/configmaps/policybind-usage-pod-1";

fn not_found() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

fn settings() -> UsageReportSettings {
    UsageReportSettings {
        namespace: "team-a".into(),
        pod: "pod-1".into(),
        interval: Duration::from_secs(5),
        ledger_home: None,
    }
}

/// Charges `cost` and `tokens` to `token` against a daily budget, at 15:00 UTC
/// on 22 November 2026.
fn spend(ledger: &InProcessLedger, token: &str, cost_usd: f64, tokens: u64) {
    let budgets = [CompiledBudget {
        period: BudgetPeriod::Day,
        max_cost_usd: Some(100.0),
        max_tokens: None,
        tz: chrono_tz::UTC,
        rolling: false,
    }];
    let limits = TokenLimits {
        rate: None,
        budgets: &budgets,
    };
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 15, 0, 0).unwrap();
    let amount = Amount { cost_usd, tokens };
    let id = ledger.reserve(token, limits, amount, now).unwrap();
    ledger.settle(id, amount, now);
}

#[tokio::test]
async fn settled_usage_is_applied_once_and_an_unchanged_snapshot_makes_no_call() {
    let (client, mut handle) = mocked();
    let ledger = Arc::new(InProcessLedger::new());
    spend(&ledger, "team-a/bot", 1.25, 480);
    let mut reporter = UsageReporter::new(client, &settings(), ledger.clone());

    let server = tokio::spawn(async move {
        expect(&mut handle, Method::GET, PATH, |_, _| not_found()).await;
        expect(
            &mut handle,
            Method::PATCH,
            &format!("{PATH}?&force=true&fieldManager=policybind-sidecar"),
            |content_type, sent| {
                assert_eq!(
                    content_type.as_deref(),
                    Some("application/apply-patch+yaml")
                );
                let expected = json!({
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": "policybind-usage-pod-1",
                        "namespace": "team-a",
                        "labels": {"policybind.io/usage": "true", "policybind.io/pod": "pod-1"}
                    },
                    "data": {
                        "usage.json": r#"{"team-a/bot":[{"period":"Day","periodStart":"2026-11-22T00:00:00Z","costUsd":1.25,"tokens":480,"requests":1}]}"#
                    }
                });
                assert_eq!(sent, expected, "no owner reference, nothing else");
                (StatusCode::OK, sent)
            },
        )
        .await;
        // The handle is dropped here: any further call fails.
    });
    assert_eq!(reporter.report_once().await.unwrap(), Reported::Written);
    server.await.unwrap();

    assert_eq!(
        reporter.report_once().await.unwrap(),
        Reported::Unchanged,
        "an unchanged snapshot makes no call"
    );
    // A change is written (and here fails, the API server being gone): the
    // check above did not pass merely because nothing is ever written twice.
    spend(&ledger, "team-a/bot", 0.5, 20);
    assert!(reporter.report_once().await.is_err());
}

#[tokio::test]
async fn a_restarted_container_continues_from_its_previous_report() {
    let (client, mut handle) = mocked();
    let ledger = Arc::new(InProcessLedger::new());
    let mut reporter = UsageReporter::new(client, &settings(), ledger.clone());
    let previous = r#"{"team-a/bot":[{"period":"Day","periodStart":"2026-11-22T00:00:00Z","costUsd":2.0,"tokens":900,"requests":4}]}"#;

    let server = tokio::spawn(async move {
        expect(&mut handle, Method::GET, PATH, |_, _| {
            (
                StatusCode::OK,
                json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "policybind-usage-pod-1", "namespace": "team-a",
                                 "labels": {"policybind.io/usage": "true", "policybind.io/pod": "pod-1"}},
                    "data": {"usage.json": previous}
                }),
            )
        })
        .await;
        handle
    });
    // Nothing new since the restart: the report in the cluster stays as it is.
    assert_eq!(reporter.report_once().await.unwrap(), Reported::Unchanged);
    let mut handle = server.await.unwrap();

    spend(&ledger, "team-a/bot", 0.5, 100);
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            Method::PATCH,
            &format!("{PATH}?&force=true&fieldManager=policybind-sidecar"),
            |_, sent| {
                assert_eq!(
                    sent["data"]["usage.json"],
                    r#"{"team-a/bot":[{"period":"Day","periodStart":"2026-11-22T00:00:00Z","costUsd":2.5,"tokens":1000,"requests":5}]}"#
                );
                (StatusCode::OK, sent)
            },
        )
        .await;
    });
    assert_eq!(reporter.report_once().await.unwrap(), Reported::Written);
    server.await.unwrap();
}

/// An empty bundle for `namespace`, compiled, and its fingerprint.
fn loaded(namespace: &str) -> (policybind_sidecar::source::Loaded, String) {
    let bundle = policybind_engine::bundle::Bundle {
        namespace: Some(namespace.into()),
        ..Default::default()
    };
    let set = policybind_engine::compile::PolicySet::compile(&bundle).unwrap();
    let fingerprint = set.fingerprint().to_string();
    let loaded = policybind_sidecar::source::Loaded {
        set,
        loaded_at: Utc::now(),
        origin: "test".into(),
    };
    (loaded, fingerprint)
}

#[tokio::test]
async fn the_report_names_the_bundle_in_force_and_a_new_bundle_is_reported_without_new_usage() {
    let (client, mut handle) = mocked();
    let ledger = Arc::new(InProcessLedger::new());
    let (first_bundle, first) = loaded("team-a");
    let holder = policybind_sidecar::PolicyHolder::new();
    holder.swap(first_bundle);
    let mut reporter =
        UsageReporter::new(client, &settings(), ledger.clone()).with_bundle(holder.clone());
    let patch = format!("{PATH}?&force=true&fieldManager=policybind-sidecar");
    let (second_bundle, second) = loaded("team-b");
    let expected = [first.clone(), second.clone()];
    let server = tokio::spawn(async move {
        expect(&mut handle, Method::GET, PATH, |_, _| not_found()).await;
        for fingerprint in expected {
            expect(&mut handle, Method::PATCH, &patch, |_, sent| {
                assert_eq!(
                    sent["metadata"]["annotations"]["policybind.io/fingerprint"],
                    fingerprint.as_str()
                );
                (StatusCode::OK, sent)
            })
            .await;
        }
    });
    assert_eq!(reporter.report_once().await.unwrap(), Reported::Written);
    assert_eq!(reporter.report_once().await.unwrap(), Reported::Unchanged);
    holder.swap(second_bundle);
    assert_eq!(reporter.report_once().await.unwrap(), Reported::Written);
    server.await.unwrap();
}
