//! Reconcilers against a mocked API server (the kube-rs `ApiServerVerifier`
//! pattern): every request is checked for method, path, field manager and body,
//! in order, and the second reconcile of an unchanged object must make no call
//! at all (any request fails the test instead of being answered).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use futures::Future;
use http::{Request, Response};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::PartialObjectMeta;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use kube::{Client, Resource, ResourceExt};
use policybind_crds::model_deployment::RiskFactors;
use policybind_crds::{
    AIPolicy, AccessToken, AccessTokenStatus, ApprovalRequest, ClusterAIPolicy, Incident,
    ModelDeployment, ModelDeploymentStatus,
};
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

use crate::context::{Context, Settings, Stores};
use crate::metrics::Metrics;
use crate::testing::{model, namespace, policy, rule, token};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn now() -> DateTime<Utc> {
    "2026-11-22T12:00:00Z".parse().unwrap()
}

fn ready<K>() -> (reflector::Store<K>, Writer<K>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let (store, mut writer) = reflector::store::<K>();
    writer.apply_watcher_event(&Event::InitDone);
    (store, writer)
}

/// Writers of the caches a test fills.
struct Writers {
    models: Writer<ModelDeployment>,
    tokens: Writer<AccessToken>,
    approvals: Writer<ApprovalRequest>,
    namespaces: Writer<Namespace>,
    token_secrets: Writer<Secret>,
    bundles: Writer<ConfigMap>,
    roles: Writer<Role>,
    role_bindings: Writer<RoleBinding>,
    network_policies: Writer<NetworkPolicy>,
    audit_keys: Writer<Secret>,
    usage_reports: Writer<ConfigMap>,
    pods: Writer<PartialObjectMeta<Pod>>,
    incidents: Writer<Incident>,
    audit_segments: Writer<ConfigMap>,
    _rest: Vec<Box<dyn std::any::Any>>,
}

struct Env {
    ctx: Arc<Context>,
    api: ApiHandle,
    w: Writers,
}

fn env() -> Env {
    env_with(Settings::default())
}

fn env_with(settings: Settings) -> Env {
    env_filled(settings, Unlisted::None)
}

/// A cache that has not listed yet, until the test sends it its first list
/// (`Event::Init`, `InitApply`..., `InitDone`), as after a restart.
#[derive(PartialEq)]
enum Unlisted {
    None,
    Tokens,
    Bundles,
}

/// An operator whose caches are all filled but the one named.
fn env_filled(settings: Settings, unlisted: Unlisted) -> Env {
    fn cache<K>(listed: bool) -> (reflector::Store<K>, Writer<K>)
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        if listed {
            ready::<K>()
        } else {
            reflector::store::<K>()
        }
    }
    let (service, api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (policies, policies_w) = ready::<AIPolicy>();
    let (cluster_policies, cluster_policies_w) = ready::<ClusterAIPolicy>();
    let (models, models_w) = ready::<ModelDeployment>();
    let (tokens, tokens_w) = cache::<AccessToken>(unlisted != Unlisted::Tokens);
    let (approvals, approvals_w) = ready::<ApprovalRequest>();
    let (incidents, incidents_w) = ready::<Incident>();
    let (namespaces, namespaces_w) = ready::<Namespace>();
    let (token_secrets, token_secrets_w) = ready::<Secret>();
    let (usage_reports, usage_w) = ready::<ConfigMap>();
    let (bundles, bundles_w) = cache::<ConfigMap>(unlisted != Unlisted::Bundles);
    let (audit_segments, audit_w) = ready::<ConfigMap>();
    let (roles, roles_w) = ready::<Role>();
    let (role_bindings, role_bindings_w) = ready::<RoleBinding>();
    let (network_policies, network_policies_w) = ready::<NetworkPolicy>();
    let (audit_keys, audit_keys_w) = ready::<Secret>();
    let (pods, pods_w) = ready::<PartialObjectMeta<Pod>>();
    let (evidence_gates, evidence_gates_w) = ready::<policybind_crds::EvidenceGate>();
    let (budgets, budgets_w) = ready::<policybind_crds::AIBudget>();
    let stores = Stores {
        policies,
        cluster_policies,
        models,
        tokens,
        approvals,
        incidents,
        namespaces,
        token_secrets,
        usage_reports,
        bundles,
        audit_segments,
        roles,
        role_bindings,
        network_policies,
        audit_keys,
        pods,
        evidence_gates,
        budgets,
    };
    let ctx = Arc::new(Context::new(
        client,
        stores,
        settings,
        Arc::new(Metrics::default()),
        Arc::new(now),
        None,
    ));
    Env {
        ctx,
        api,
        w: Writers {
            models: models_w,
            tokens: tokens_w,
            approvals: approvals_w,
            namespaces: namespaces_w,
            token_secrets: token_secrets_w,
            bundles: bundles_w,
            roles: roles_w,
            role_bindings: role_bindings_w,
            network_policies: network_policies_w,
            audit_keys: audit_keys_w,
            usage_reports: usage_w,
            pods: pods_w,
            incidents: incidents_w,
            audit_segments: audit_w,
            _rest: vec![
                Box::new(policies_w),
                Box::new(cluster_policies_w),
                Box::new(evidence_gates_w),
                Box::new(budgets_w),
            ],
        },
    }
}

/// Waits for the next request and checks method and path. Apply patches must
/// use the operator's field manager and force.
async fn expect(
    api: &mut ApiHandle,
    method: &str,
    path: &str,
) -> (Value, SendResponse<Response<Body>>) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
        .expect("client dropped");
    let uri = request.uri().clone();
    assert_eq!(
        (request.method().as_str(), uri.path()),
        (method, path),
        "unexpected request {uri}"
    );
    if method == "PATCH" {
        let query = uri.query().unwrap_or("");
        let manager = if uri.path().contains("/apis/openreports.io/")
            || uri.path().contains("/apis/wgpolicyk8s.io/")
        {
            "fieldManager=policybind-reports"
        } else {
            "fieldManager=policybind-operator"
        };
        assert!(query.contains(manager), "{uri}");
        assert!(query.contains("force=true"), "{uri}");
        assert_eq!(
            request.headers().get("content-type").unwrap(),
            "application/apply-patch+yaml"
        );
    }
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (body, send)
}

fn reply(send: SendResponse<Response<Body>>, code: u16, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

/// Answers an event creation.
async fn expect_event(api: &mut ApiHandle, namespace: &str, reason: &str) {
    let (body, send) = expect(
        api,
        "POST",
        &format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events"),
    )
    .await;
    assert_eq!(body["reason"], reason, "{body}");
    reply(send, 201, &body);
}

/// Runs `reconcile` and fails on any API call.
async fn expect_no_call<F: Future<Output = crate::Result<Action>>>(
    api: &mut ApiHandle,
    reconcile: F,
) -> Action {
    tokio::select! {
        result = reconcile => result.expect("reconcile succeeds"),
        request = api.next_request() => {
            let (request, _) = request.expect("client dropped");
            panic!("unexpected call on an unchanged object: {} {}", request.method(), request.uri());
        }
    }
}

/// Runs `reconcile`, expects it to fail, and fails on any API call.
async fn expect_no_call_err<F: Future<Output = crate::Result<Action>>>(
    api: &mut ApiHandle,
    reconcile: F,
) -> crate::Error {
    tokio::select! {
        result = reconcile => result.expect_err("reconcile fails"),
        request = api.next_request() => {
            let (request, _) = request.expect("client dropped");
            panic!("unexpected call: {} {}", request.method(), request.uri());
        }
    }
}

/// Reconciles AccessToken team-a/bot, whose Secret is issued, answering its
/// one call (the status patch); returns the patch.
async fn reconcile_bot_status(env: &mut Env, t: &AccessToken) -> Value {
    let reconcile = tokio::spawn(crate::controllers::access_token::reconcile(
        Arc::new(t.clone()),
        env.ctx.clone(),
    ));
    let (status, send) = expect(
        &mut env.api,
        "PATCH",
        "/apis/policybind.io/v1alpha1/namespaces/team-a/accesstokens/bot/status",
    )
    .await;
    reply(send, 200, &with_status(t, &status));
    tokio::time::timeout(Duration::from_secs(5), reconcile)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    status
}

fn with_status<K: serde::Serialize>(object: &K, body: &Value) -> Value {
    let mut value = serde_json::to_value(object).unwrap();
    value["status"] = body["status"].clone();
    value
}

#[tokio::test]
async fn new_token_gets_a_secret_and_status_then_a_second_reconcile_makes_no_call() {
    let mut env = env();
    let t = token("team-a", "bot")
        .expires("2026-11-22T18:00:00Z")
        .build();
    let ctx = env.ctx.clone();
    let object = Arc::new(t.clone());
    let reconcile = tokio::spawn(crate::controllers::access_token::reconcile(object, ctx));

    // Not in the cache: ask once whether someone else owns the name.
    let (_, send) = expect(
        &mut env.api,
        "GET",
        "/api/v1/namespaces/team-a/secrets/bot-token",
    )
    .await;
    reply(send, 404, &not_found());
    let (secret, send) = expect(
        &mut env.api,
        "PATCH",
        "/api/v1/namespaces/team-a/secrets/bot-token",
    )
    .await;
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["uid"],
        "uid-team-a-bot"
    );
    assert_eq!(secret["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(secret["metadata"]["labels"]["policybind.io/token"], "bot");
    let encoded = secret["data"]["token"].as_str().unwrap();
    let value = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap();
    assert!(value.starts_with("pb_") && value.len() == 46);
    reply(send, 200, &secret);
    expect_event(&mut env.api, "team-a", "Issued").await;
    let (status, send) = expect(
        &mut env.api,
        "PATCH",
        "/apis/policybind.io/v1alpha1/namespaces/team-a/accesstokens/bot/status",
    )
    .await;
    assert_eq!(status["kind"], "AccessToken");
    assert_eq!(status["status"]["phase"], "Active");
    let hash = policybind_engine::hash_token(&value);
    assert_eq!(status["status"]["hashPrefix"], hash[..12]);
    assert!(
        !status.to_string().contains(&value),
        "status must never hold the value"
    );
    assert!(
        !status.to_string().contains(&hash),
        "status holds only the hash prefix"
    );
    reply(send, 200, &with_status(&t, &status));
    let action = tokio::time::timeout(Duration::from_secs(5), reconcile)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Requeued for the expiry, capped at an hour.
    assert_eq!(action, Action::requeue(Duration::from_secs(3600)));

    // The caches now hold the Secret and the status: nothing to do.
    let secret: Secret = serde_json::from_value(secret).unwrap();
    env.w
        .token_secrets
        .apply_watcher_event(&Event::Apply(secret));
    let mut again = t.clone();
    again.status =
        Some(serde_json::from_value::<AccessTokenStatus>(status["status"].clone()).unwrap());
    env.w
        .tokens
        .apply_watcher_event(&Event::Apply(again.clone()));
    let ctx = env.ctx.clone();
    expect_no_call(
        &mut env.api,
        crate::controllers::access_token::reconcile(Arc::new(again), ctx),
    )
    .await;
}

#[tokio::test]
async fn rotation_writes_a_new_value_and_keeps_the_old_hash_for_the_grace_period() {
    let mut env = env();
    let t = token("team-a", "bot").build();
    let old = crate::controllers::access_token::build_secret(
        &t,
        "pb_old",
        now() - chrono::Duration::days(1),
        None,
    );
    env.w.token_secrets.apply_watcher_event(&Event::Apply(old));
    let rotating = token("team-a", "bot").rotate("2026-11-22").build();
    let ctx = env.ctx.clone();
    let reconcile = tokio::spawn(crate::controllers::access_token::reconcile(
        Arc::new(rotating.clone()),
        ctx,
    ));
    let (secret, send) = expect(
        &mut env.api,
        "PATCH",
        "/api/v1/namespaces/team-a/secrets/bot-token",
    )
    .await;
    let previous = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["previous-sha256"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(previous).unwrap(),
        policybind_engine::hash_token("pb_old")
    );
    assert_eq!(
        secret["metadata"]["annotations"]["policybind.io/previous-valid-until"],
        "2026-11-22T13:00:00+00:00"
    );
    assert_eq!(
        secret["metadata"]["annotations"]["policybind.io/rotation"],
        "2026-11-22"
    );
    reply(send, 200, &secret);
    expect_event(&mut env.api, "team-a", "Rotated").await;
    let (status, send) = expect(
        &mut env.api,
        "PATCH",
        "/apis/policybind.io/v1alpha1/namespaces/team-a/accesstokens/bot/status",
    )
    .await;
    assert_eq!(status["status"]["rotation"], "2026-11-22");
    assert_eq!(
        status["status"]["previousValidUntil"],
        "2026-11-22T13:00:00Z"
    );
    reply(send, 200, &with_status(&rotating, &status));
    let action = tokio::time::timeout(Duration::from_secs(5), reconcile)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(3600)),
        "requeue at the end of the grace period"
    );
}

#[tokio::test]
async fn secret_of_the_same_name_owned_by_someone_else_is_left_alone() {
    let mut env = env();
    let t = token("team-a", "bot").build();
    let ctx = env.ctx.clone();
    let reconcile = tokio::spawn(crate::controllers::access_token::reconcile(
        Arc::new(t),
        ctx,
    ));
    let (_, send) = expect(
        &mut env.api,
        "GET",
        "/api/v1/namespaces/team-a/secrets/bot-token",
    )
    .await;
    reply(
        send,
        200,
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bot-token", "namespace": "team-a"}, "data": {"token": "dXNlcg=="}}),
    );
    expect_event(&mut env.api, "team-a", "SecretConflict").await;
    let result = tokio::time::timeout(Duration::from_secs(5), reconcile)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(result, Err(crate::Error::SecretConflict(_))));
}

#[tokio::test]
async fn high_risk_model_raises_an_approval_request_then_a_second_reconcile_makes_no_call() {
    let mut env = env();
    let m = model("team-a", "support-bot")
        .factors(RiskFactors {
            customer_facing: true,
            automated_decisions: true,
            tool_use: true,
            ..Default::default()
        })
        .build();
    let name = crate::controllers::model_deployment::approval_request_name(&m);
    let ctx = env.ctx.clone();
    let reconcile = tokio::spawn(crate::controllers::model_deployment::reconcile(
        Arc::new(m.clone()),
        ctx,
    ));
    let (request, send) = expect(
        &mut env.api,
        "PATCH",
        &format!("/apis/policybind.io/v1alpha1/namespaces/team-a/approvalrequests/{name}"),
    )
    .await;
    assert_eq!(request["kind"], "ApprovalRequest");
    assert_eq!(request["spec"]["target"]["kind"], "ModelDeployment");
    assert_eq!(request["spec"]["target"]["name"], "support-bot");
    assert_eq!(
        request["metadata"]["ownerReferences"][0]["kind"],
        "ModelDeployment"
    );
    reply(send, 200, &request);
    expect_event(&mut env.api, "team-a", "ApprovalRequested").await;
    let (status, send) = expect(
        &mut env.api,
        "PATCH",
        "/apis/policybind.io/v1alpha1/namespaces/team-a/modeldeployments/support-bot/status",
    )
    .await;
    assert_eq!(status["status"]["riskScore"], 60);
    assert_eq!(status["status"]["riskLevel"], "High");
    assert_eq!(status["status"]["approval"], "Pending");
    assert_eq!(status["status"]["nextReviewAt"], "2027-01-30T00:00:00Z");
    reply(send, 200, &with_status(&m, &status));
    // Approved=False is news, and so is Compliant=False (a High-risk model with
    // no registry fields and no approval fails every framework); Suspended=False
    // is not.
    expect_event(&mut env.api, "team-a", "ApprovalPending").await;
    let compliant = status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Compliant")
        .unwrap()
        .clone();
    assert_eq!(compliant["status"], "False");
    assert_eq!(status["status"]["compliance"].as_array().unwrap().len(), 4);
    expect_event(
        &mut env.api,
        "team-a",
        compliant["reason"].as_str().unwrap(),
    )
    .await;
    let action = tokio::time::timeout(Duration::from_secs(5), reconcile)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(3600)));

    let request: ApprovalRequest = serde_json::from_value(request).unwrap();
    env.w.approvals.apply_watcher_event(&Event::Apply(request));
    let mut again = m.clone();
    again.status =
        Some(serde_json::from_value::<ModelDeploymentStatus>(status["status"].clone()).unwrap());
    env.w
        .models
        .apply_watcher_event(&Event::Apply(again.clone()));
    let ctx = env.ctx.clone();
    expect_no_call(
        &mut env.api,
        crate::controllers::model_deployment::reconcile(Arc::new(again), ctx),
    )
    .await;
}

#[tokio::test]
async fn broken_policy_reports_the_compile_error_then_a_second_reconcile_makes_no_call() {
    let mut env = env();
    let mut r = rule("broken", "Deny", &["gpt-*"]);
    r.when = Some("request.model ==".into());
    let p = policy("team-a", "chat", vec![r]);
    let ctx = env.ctx.clone();
    let reconcile = tokio::spawn(crate::controllers::ai_policy::reconcile(
        Arc::new(p.clone()),
        ctx,
    ));
    let (status, send) = expect(
        &mut env.api,
        "PATCH",
        "/apis/policybind.io/v1alpha1/namespaces/team-a/aipolicies/chat/status",
    )
    .await;
    let ready = &status["status"]["conditions"][0];
    assert_eq!(ready["type"], "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "CompileFailed");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .starts_with("AIPolicy team-a/chat rule \"broken\": spec.rules[0].when")
    );
    reply(send, 200, &with_status(&p, &status));
    expect_event(&mut env.api, "team-a", "CompileFailed").await;
    tokio::time::timeout(Duration::from_secs(5), reconcile)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let mut again = p.clone();
    again.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    let ctx = env.ctx.clone();
    expect_no_call(
        &mut env.api,
        crate::controllers::ai_policy::reconcile(Arc::new(again), ctx),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_renewals_hang_stops_before_its_lease_could_expire() {
    // The API server takes every request and never answers (a connection to
    // one that went away without closing it). Before renewals had a timeout
    // the renewal loop waited on the first of them for good, and the replica
    // acted on as leader while another took the Lease over.
    let Env { ctx, mut api, .. } = env();
    let held = tokio::spawn(async move {
        let mut unanswered = Vec::new();
        while let Some(request) = api.next_request().await {
            unanswered.push(request);
        }
    });
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(ctx.client.clone(), HOME);
    let settings = crate::leader::LeaseSettings::new(HOME, "policybind-operator", "me");
    let started = tokio::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(300),
        crate::leader::hold(
            leases,
            settings.clone(),
            tokio_util::sync::CancellationToken::new(),
        ),
    )
    .await
    .expect("the renewal loop never gave up");
    assert!(
        matches!(result, Err(crate::Error::LostLeadership(_))),
        "{result:?}"
    );
    assert!(
        started.elapsed() < settings.duration,
        "gave up after {:?}, the Lease lasts {:?}",
        started.elapsed(),
        settings.duration
    );
    held.abort();
}

#[tokio::test]
async fn the_caches_wait_ends_even_when_a_controller_took_the_stores_wake() {
    // A controller's runner waits on its own store too, and kube-runtime
    // wakes only the last of the two to poll: here the runner polls last.
    let mut env = env_filled(Settings::default(), Unlisted::Tokens);
    let ours = {
        let ctx = env.ctx.clone();
        tokio::spawn(async move { ctx.caches_filled().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let runner = {
        let tokens = env.ctx.stores.tokens.clone();
        tokio::spawn(async move { tokens.wait_until_ready().await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    env.w.tokens.apply_watcher_event(&Event::Init);
    env.w.tokens.apply_watcher_event(&Event::InitDone);
    tokio::time::timeout(Duration::from_secs(1), ours)
        .await
        .expect("the caches wait saw the filled store")
        .unwrap()
        .unwrap();
    runner.abort();
}

#[tokio::test]
async fn every_task_waiting_for_the_caches_is_woken_when_they_fill() {
    // Reconciles of many objects wait at once after a start. kube-runtime's
    // Store::wait_until_ready wakes only the last of them: the others slept
    // on to their 120 s timeout (a terminated operator lingered that long,
    // draining them). Each must be done within a second of the caches filling.
    let mut env = env_filled(Settings::default(), Unlisted::Tokens);
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let ctx = env.ctx.clone();
            tokio::spawn(async move { ctx.caches_filled().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    env.w.tokens.apply_watcher_event(&Event::Init);
    env.w.tokens.apply_watcher_event(&Event::InitDone);
    for (i, waiter) in waiters.into_iter().enumerate() {
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap_or_else(|_| panic!("waiter {i} was not woken"))
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_a_broken_policy_keeps_its_last_good_version_once_the_bundles_are_listed() {
    use policybind_engine::bundle::{Bundle, BundlePolicy};
    use policybind_engine::bundle_codec as codec;
    // The deny rule in force, written in team-a's bundle before the restart;
    // since then someone applied a version that does not compile.
    let good = policy("team-a", "chat", vec![rule("deny-gpt", "Deny", &["gpt-*"])]);
    let bundle = Bundle {
        namespace: Some("team-a".into()),
        policies: vec![BundlePolicy::from_ai_policy(&good)],
        ..Default::default()
    };
    let encoded = codec::encode(&bundle, codec::DEFAULT_MAX_PART_BYTES);
    let written = crate::controllers::namespace::bundle_config_maps(HOME, "team-a", None, &encoded);
    let mut broken = good.clone();
    broken.spec.rules[0].when = Some("request.model ==".into());

    let mut env = env_filled(
        Settings {
            namespace: HOME.into(),
            ..Settings::default()
        },
        Unlisted::Bundles,
    );
    // As the controller runs it (every reconciler goes through once_listed).
    let mut reconcile = crate::controllers::once_listed(crate::controllers::ai_policy::reconcile);
    let reconcile = tokio::spawn(reconcile(Arc::new(broken.clone()), env.ctx.clone()));
    // Run at once, the reconcile recovered nothing from the empty bundle
    // cache and let the deny rule leave the next bundles.
    tokio::select! {
        request = env.api.next_request() => {
            let (request, _) = request.expect("client dropped");
            panic!("a call before the bundles listed: {} {}", request.method(), request.uri());
        }
        () = tokio::time::sleep(Duration::from_secs(10)) => {}
    }
    env.w.bundles.apply_watcher_event(&Event::Init);
    for cm in written {
        env.w.bundles.apply_watcher_event(&Event::InitApply(cm));
    }
    env.w.bundles.apply_watcher_event(&Event::InitDone);
    let (status, send) = expect(
        &mut env.api,
        "PATCH",
        "/apis/policybind.io/v1alpha1/namespaces/team-a/aipolicies/chat/status",
    )
    .await;
    reply(send, 200, &with_status(&broken, &status));
    expect_event(&mut env.api, "team-a", "CompileFailed").await;
    reconcile.await.unwrap().unwrap();
    assert_eq!(
        env.ctx
            .state
            .policies
            .in_force(&BundlePolicy::from_ai_policy(&broken)),
        Some(BundlePolicy::from_ai_policy(&good))
    );
}

const HOME: &str = "policybind-system";
const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces";

fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})
}

/// Answers one expected request with what it sent (as the API server would).
async fn echo(api: &mut ApiHandle, method: &str, path: &str) -> Value {
    let (body, send) = expect(api, method, path).await;
    reply(send, if method == "POST" { 201 } else { 200 }, &body);
    body
}

/// What the first reconcile of an enforced `team-a` writes, answered and fed
/// back into the caches as the watches would.
struct Written {
    bundle: Value,
    reader_role: Value,
    reader_binding: Value,
    sidecar_binding: Value,
    network_policy: Value,
    audit_key: Value,
}

impl Written {
    fn feed(&self, w: &mut Writers) {
        fn de<K: serde::de::DeserializeOwned>(v: &Value) -> K {
            serde_json::from_value(v.clone()).unwrap()
        }
        w.bundles
            .apply_watcher_event(&Event::Apply(de(&self.bundle)));
        w.roles
            .apply_watcher_event(&Event::Apply(de(&self.reader_role)));
        w.role_bindings
            .apply_watcher_event(&Event::Apply(de(&self.reader_binding)));
        w.role_bindings
            .apply_watcher_event(&Event::Apply(de(&self.sidecar_binding)));
        w.network_policies
            .apply_watcher_event(&Event::Apply(de(&self.network_policy)));
        let mut key: Secret = de(&self.audit_key);
        key.metadata.namespace = Some("team-a".into());
        w.audit_keys.apply_watcher_event(&Event::Apply(key));
    }
}

/// Runs the first reconcile of an enforced `team-a` with one token, checking
/// every call, and returns what was written.
async fn first_reconcile(env: &mut Env, ns: &Namespace) -> Written {
    let ctx = env.ctx.clone();
    let reconcile = tokio::spawn(crate::controllers::namespace::reconcile(
        Arc::new(ns.clone()),
        ctx,
    ));
    let api = &mut env.api;
    let bundle = echo(
        api,
        "PATCH",
        &format!("/api/v1/namespaces/{HOME}/configmaps/policybind-bundle.team-a"),
    )
    .await;
    let reader_role = echo(
        api,
        "PATCH",
        &format!("{RBAC}/{HOME}/roles/policybind-bundle-reader.team-a"),
    )
    .await;
    let reader_binding = echo(
        api,
        "PATCH",
        &format!("{RBAC}/{HOME}/rolebindings/policybind-bundle-reader.team-a"),
    )
    .await;
    let sidecar_binding = echo(
        api,
        "PATCH",
        &format!("{RBAC}/team-a/rolebindings/policybind-sidecar"),
    )
    .await;
    let network_policy = echo(
        api,
        "PATCH",
        "/apis/networking.k8s.io/v1/namespaces/team-a/networkpolicies/policybind-model-ports",
    )
    .await;
    let audit_key = echo(api, "POST", "/api/v1/namespaces/team-a/secrets").await;
    tokio::time::timeout(Duration::from_secs(5), reconcile)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    Written {
        bundle,
        reader_role,
        reader_binding,
        sidecar_binding,
        network_policy,
        audit_key,
    }
}

fn enforced_team_a(env: &mut Env) -> Namespace {
    let t = token("team-a", "bot").build();
    let secret = crate::controllers::access_token::build_secret(&t, "pb_value", now(), None);
    env.w.tokens.apply_watcher_event(&Event::Apply(t));
    env.w
        .token_secrets
        .apply_watcher_event(&Event::Apply(secret));
    let ns = namespace("team-a", true);
    env.w
        .namespaces
        .apply_watcher_event(&Event::Apply(ns.clone()));
    env.ctx.bundles_changed();
    ns
}

#[tokio::test]
async fn enforced_namespace_gets_bundle_reader_rbac_network_policy_and_key_then_a_rebuild_makes_no_call()
 {
    let mut env = env();
    let ns = enforced_team_a(&mut env);
    let written = first_reconcile(&mut env, &ns).await;

    // The bundle, in the operator's namespace, owned by the Namespace.
    let cm = &written.bundle;
    assert_eq!(cm["metadata"]["namespace"], HOME);
    assert_eq!(cm["metadata"]["labels"]["policybind.io/bundle"], "true");
    assert_eq!(
        cm["metadata"]["labels"]["policybind.io/bundle-namespace"],
        "team-a"
    );
    assert_eq!(
        cm["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "policybind"
    );
    assert_eq!(
        cm["metadata"]["ownerReferences"],
        json!([{"apiVersion": "v1", "kind": "Namespace", "name": "team-a",
                "uid": ns.metadata.uid.clone().unwrap()}])
    );
    assert_eq!(
        cm["metadata"]["annotations"]["policybind.io/bundle-part"],
        "0/1"
    );
    let json = cm["data"]["bundle.json"].as_str().unwrap();
    let bundle: policybind_engine::Bundle = serde_json::from_str(json).unwrap();
    assert_eq!(
        cm["metadata"]["annotations"]["policybind.io/fingerprint"],
        bundle.fingerprint()
    );
    assert_eq!(
        bundle.tokens[0].hashes[0].sha256,
        policybind_engine::hash_token("pb_value")
    );
    assert!(
        !json.contains("pb_value"),
        "bundles hold hashes, never values"
    );

    // Read access to exactly this namespace's bundle names and budget ledger,
    // for its accounts.
    let rule = &written.reader_role["rules"][0];
    assert_eq!(rule["verbs"], json!(["get", "list", "watch"]));
    assert_eq!(rule["resources"], json!(["configmaps"]));
    let names = rule["resourceNames"].as_array().unwrap();
    assert_eq!(names.len(), policybind_crds::wire::MAX_BUNDLE_PARTS + 1);
    assert_eq!(names.last().unwrap(), "policybind-ledger.team-a");
    assert_eq!(names[0], "policybind-bundle.team-a");
    assert_eq!(names[1], "policybind-bundle.team-a.1");
    let group = json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                        "name": "system:serviceaccounts:team-a"}]);
    assert_eq!(written.reader_binding["subjects"], group);
    assert_eq!(
        written.reader_binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
               "name": "policybind-bundle-reader.team-a"})
    );

    // The chart's sidecar ClusterRole, bound in team-a only.
    assert_eq!(written.sidecar_binding["subjects"], group);
    assert_eq!(
        written.sidecar_binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
               "name": "policybind-sidecar"})
    );

    // Ingress to injected pods on the sidecar's ports only.
    assert_eq!(
        written.network_policy["spec"],
        json!({
            "podSelector": {"matchLabels": {"policybind.io/injected": "true"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": "http", "protocol": "TCP"},
                                   {"port": "pb-health", "protocol": "TCP"}]}]
        })
    );

    // A fresh signing key, named by its id.
    let key = &written.audit_key;
    assert_eq!(key["metadata"]["name"], "policybind-audit-key");
    assert_eq!(key["metadata"]["labels"]["policybind.io/audit-key"], "true");
    let pem = base64::engine::general_purpose::STANDARD
        .decode(key["data"]["signing-key"].as_str().unwrap())
        .unwrap();
    let parsed =
        policybind_engine::audit::AuditSigningKey::from_key_material(&pem).expect("a PKCS#8 key");
    assert_eq!(
        key["metadata"]["annotations"]["policybind.io/audit-key-id"],
        parsed.key_id()
    );

    written.feed(&mut env.w);
    let ctx = env.ctx.clone();
    expect_no_call(
        &mut env.api,
        crate::controllers::namespace::reconcile(Arc::new(ns.clone()), ctx.clone()),
    )
    .await;
    // A new input epoch with the same content still writes nothing.
    env.ctx.bundles_changed();
    expect_no_call(
        &mut env.api,
        crate::controllers::namespace::reconcile(Arc::new(ns), ctx),
    )
    .await;
}

#[tokio::test]
async fn an_audit_key_is_never_regenerated_even_one_the_operator_did_not_make() {
    let mut env = env();
    let ns = enforced_team_a(&mut env);
    let written = first_reconcile(&mut env, &ns).await;
    written.feed(&mut env.w);
    // An administrator brought their own key: same name, none of our labels.
    let mut brought: Secret = serde_json::from_value(written.audit_key.clone()).unwrap();
    brought.metadata.namespace = Some("team-a".into());
    brought.metadata.labels = None;
    brought.metadata.annotations = None;
    env.w.audit_keys.apply_watcher_event(&Event::Apply(brought));
    expect_no_call(
        &mut env.api,
        crate::controllers::namespace::reconcile(Arc::new(ns), env.ctx.clone()),
    )
    .await;
}

#[tokio::test]
async fn the_layout_before_is_removed_and_a_binding_of_the_old_role_is_replaced() {
    let mut env = env();
    let ns = enforced_team_a(&mut env);
    let written = first_reconcile(&mut env, &ns).await;
    written.feed(&mut env.w);
    let managed =
        json!({"app.kubernetes.io/managed-by": "policybind", "policybind.io/bundle": "true"});
    let legacy = |name: &str, labels: &Value| -> ConfigMap {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "team-a", "labels": labels},
            "data": {"bundle.json": "{}"}
        }))
        .unwrap()
    };
    for cm in [
        legacy("policybind-bundle", &managed),
        legacy("policybind-bundle-1", &managed),
        // Labelled as ours by someone else, under another name: left alone.
        legacy("my-settings", &managed),
        // Named like a bundle but without our label: not ours, left alone.
        legacy(
            "policybind-bundle-2",
            &json!({"policybind.io/bundle": "true"}),
        ),
    ] {
        env.w.bundles.apply_watcher_event(&Event::Apply(cm));
    }
    let old_role: Role = serde_json::from_value(json!({
        "metadata": {"name": "policybind-sidecar", "namespace": "team-a",
                     "labels": {"app.kubernetes.io/managed-by": "policybind"}},
        "rules": []
    }))
    .unwrap();
    env.w.roles.apply_watcher_event(&Event::Apply(old_role));
    let mut old_binding: RoleBinding =
        serde_json::from_value(written.sidecar_binding.clone()).unwrap();
    old_binding.role_ref.kind = "Role".into();
    env.w
        .role_bindings
        .apply_watcher_event(&Event::Apply(old_binding));

    let reconcile = tokio::spawn(crate::controllers::namespace::reconcile(
        Arc::new(ns),
        env.ctx.clone(),
    ));
    let api = &mut env.api;
    // A RoleBinding's roleRef cannot change: delete, then apply.
    let (_, send) = expect(
        api,
        "DELETE",
        &format!("{RBAC}/team-a/rolebindings/policybind-sidecar"),
    )
    .await;
    reply(send, 200, &success());
    let binding = echo(
        api,
        "PATCH",
        &format!("{RBAC}/team-a/rolebindings/policybind-sidecar"),
    )
    .await;
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    let mut deleted = vec![];
    for _ in 0..2 {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(request.method(), "DELETE");
        deleted.push(request.uri().path().to_string());
        reply(send, 200, &success());
    }
    deleted.sort();
    assert_eq!(
        deleted,
        vec![
            "/api/v1/namespaces/team-a/configmaps/policybind-bundle",
            "/api/v1/namespaces/team-a/configmaps/policybind-bundle-1",
        ]
    );
    let (_, send) = expect(
        api,
        "DELETE",
        &format!("{RBAC}/team-a/roles/policybind-sidecar"),
    )
    .await;
    reply(send, 200, &success());
    tokio::time::timeout(Duration::from_secs(5), reconcile)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn an_edited_bundle_or_network_policy_is_replaced_whole_not_merged() {
    let mut env = env();
    let ns = enforced_team_a(&mut env);
    let written = first_reconcile(&mut env, &ns).await;
    written.feed(&mut env.w);
    // Someone adds a forged plain part beside the operator's, and narrows the
    // NetworkPolicy with an extra label: apply would keep both.
    let mut bundle: ConfigMap = serde_json::from_value(written.bundle.clone()).unwrap();
    bundle.metadata.resource_version = Some("41".into());
    bundle.binary_data = Some(
        [(
            "bundle.json.gz".to_string(),
            k8s_openapi::ByteString(vec![0x1f, 0x8b]),
        )]
        .into(),
    );
    env.w.bundles.apply_watcher_event(&Event::Apply(bundle));
    let mut policy: NetworkPolicy = serde_json::from_value(written.network_policy.clone()).unwrap();
    policy.metadata.resource_version = Some("42".into());
    let spec = policy.spec.as_mut().unwrap();
    spec.pod_selector
        .as_mut()
        .unwrap()
        .match_labels
        .as_mut()
        .unwrap()
        .insert("nobody".into(), "matches".into());
    env.w
        .network_policies
        .apply_watcher_event(&Event::Apply(policy));

    let reconcile = tokio::spawn(crate::controllers::namespace::reconcile(
        Arc::new(ns),
        env.ctx.clone(),
    ));
    let (replaced, send) = expect(
        &mut env.api,
        "PUT",
        &format!("/api/v1/namespaces/{HOME}/configmaps/policybind-bundle.team-a"),
    )
    .await;
    assert_eq!(replaced["metadata"]["resourceVersion"], "41");
    assert!(replaced.get("binaryData").is_none(), "{replaced}");
    assert_eq!(replaced["data"], written.bundle["data"]);
    reply(send, 200, &replaced);
    let (replaced, send) = expect(
        &mut env.api,
        "PUT",
        "/apis/networking.k8s.io/v1/namespaces/team-a/networkpolicies/policybind-model-ports",
    )
    .await;
    assert_eq!(replaced["metadata"]["resourceVersion"], "42");
    assert_eq!(replaced["spec"], written.network_policy["spec"]);
    reply(send, 200, &replaced);
    tokio::time::timeout(Duration::from_secs(5), reconcile)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn namespace_that_stops_being_enforced_loses_all_but_its_audit_key() {
    let mut env = env();
    let ns = enforced_team_a(&mut env);
    let written = first_reconcile(&mut env, &ns).await;
    written.feed(&mut env.w);
    let not_enforced = namespace("team-a", false);
    env.w
        .namespaces
        .apply_watcher_event(&Event::Apply(not_enforced.clone()));
    let reconcile = tokio::spawn(crate::controllers::namespace::reconcile(
        Arc::new(not_enforced),
        env.ctx.clone(),
    ));
    for path in [
        format!("/api/v1/namespaces/{HOME}/configmaps/policybind-bundle.team-a"),
        format!("{RBAC}/{HOME}/rolebindings/policybind-bundle-reader.team-a"),
        format!("{RBAC}/{HOME}/roles/policybind-bundle-reader.team-a"),
        format!("{RBAC}/team-a/rolebindings/policybind-sidecar"),
        "/apis/networking.k8s.io/v1/namespaces/team-a/networkpolicies/policybind-model-ports"
            .to_string(),
    ] {
        let (_, send) = expect(&mut env.api, "DELETE", &path).await;
        reply(send, 200, &success());
    }
    let action = tokio::time::timeout(Duration::from_secs(5), reconcile)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_bundle_sidecars_would_refuse_is_not_written() {
    let mut env = env_with(Settings {
        bundle_limits: policybind_engine::bundle_codec::DecodeLimits {
            max_json_bytes: 64,
            ..Default::default()
        },
        ..Settings::default()
    });
    let ns = enforced_team_a(&mut env);
    let error = expect_no_call_err(
        &mut env.api,
        crate::controllers::namespace::reconcile(Arc::new(ns), env.ctx.clone()),
    )
    .await;
    assert_eq!(error.metric_label(), "bundle_refused");
}

#[tokio::test]
async fn the_operators_own_namespace_is_never_enforced() {
    let mut env = env();
    let home = namespace(HOME, true);
    env.w
        .namespaces
        .apply_watcher_event(&Event::Apply(home.clone()));
    let action = expect_no_call(
        &mut env.api,
        crate::controllers::namespace::reconcile(Arc::new(home), env.ctx.clone()),
    )
    .await;
    assert_eq!(action, Action::await_change());
}

fn usage_report(namespace: &str, name: &str, pod: &str, token: &str, cost: f64) -> ConfigMap {
    let report = json!({token: [{"period": "Day", "periodStart": "2026-11-22T00:00:00Z",
                                 "costUsd": cost, "tokens": 10, "requests": 1}]});
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace,
                     "uid": format!("uid-{namespace}-{name}"), "resourceVersion": "1",
                     "labels": {"policybind.io/usage": "true", "policybind.io/pod": pod}},
        "data": {"usage.json": report.to_string()}
    }))
    .unwrap()
}

#[tokio::test]
async fn only_reports_a_sidecar_serving_the_token_could_write_count_against_its_budget() {
    let mut env = env();
    let mut t = token("team-a", "bot")
        .budget(policybind_crds::Budget {
            period: policybind_crds::BudgetPeriod::Day,
            max_cost_usd: Some(3.0),
            max_tokens: None,
            time_zone: "UTC".into(),
            window: Default::default(),
        })
        .build();
    // Valid in team-c (enforced by a pod's opt-in) and team-e (not enforced).
    t.spec.additional_namespaces = vec!["team-c".into(), "team-e".into()];
    let secret = crate::controllers::access_token::build_secret(&t, "pb_value", now(), None);
    env.w
        .token_secrets
        .apply_watcher_event(&Event::Apply(secret));
    env.w.tokens.apply_watcher_event(&Event::Apply(t.clone()));
    for (name, enforced) in [
        ("team-a", true),
        ("team-b", true),
        ("team-c", false),
        ("team-e", false),
    ] {
        env.w
            .namespaces
            .apply_watcher_event(&Event::Apply(namespace(name, enforced)));
    }
    let opted_in: PartialObjectMeta<Pod> = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "opted", "namespace": "team-c",
                     "labels": {"policybind.io/enforce": "true"}}
    }))
    .unwrap();
    env.w.pods.apply_watcher_event(&Event::Apply(opted_in));
    for report in [
        // Counted: the token's own namespace, named after its pod.
        usage_report(
            "team-a",
            "policybind-usage-bot-1",
            "bot-1",
            "team-a/bot",
            1.0,
        ),
        // Counted: team-c is enforced and the token is valid there.
        usage_report("team-c", "policybind-usage-c-1", "c-1", "team-a/bot", 0.5),
        // Forged in team-b, where the token is not valid: would exhaust it.
        usage_report("team-b", "policybind-usage-evil", "evil", "team-a/bot", 5.0),
        // Another pod's report name under this pod's label.
        usage_report(
            "team-a",
            "policybind-usage-victim",
            "bot-1",
            "team-a/bot",
            5.0,
        ),
        // team-e names the token but runs no sidecars: not enforced.
        usage_report("team-e", "policybind-usage-e-1", "e-1", "team-a/bot", 5.0),
    ] {
        env.w
            .usage_reports
            .apply_watcher_event(&Event::Apply(report));
    }
    let status = reconcile_bot_status(&mut env, &t).await;
    assert_eq!(status["status"]["phase"], "Active", "{status}");
    let usage = &status["status"]["usage"][0];
    assert_eq!(usage["costUsd"], 1.5, "{status}");
    assert_eq!(usage["requests"], 2, "{status}");
}

#[tokio::test]
async fn status_shows_spend_the_reset_time_and_what_replicas_hold() {
    use policybind_crds::lease::{KeyLedger, Ledger};
    use std::collections::BTreeMap;
    let mut env = env();
    let t = token("team-a", "bot")
        .budget(policybind_crds::Budget {
            period: policybind_crds::BudgetPeriod::Day,
            max_cost_usd: Some(3.0),
            max_tokens: Some(1000),
            time_zone: "Europe/Berlin".into(),
            window: Default::default(),
        })
        .build();
    let secret = crate::controllers::access_token::build_secret(&t, "pb_value", now(), None);
    env.w
        .token_secrets
        .apply_watcher_event(&Event::Apply(secret));
    env.w.tokens.apply_watcher_event(&Event::Apply(t.clone()));
    env.w
        .namespaces
        .apply_watcher_event(&Event::Apply(namespace("team-a", true)));
    // The Berlin day of 2026-11-22 starts at 23:00 UTC the day before.
    let report = json!({"team-a/bot": [{"period": "Day", "periodStart": "2026-11-21T23:00:00Z",
        "costUsd": 1.0, "tokens": 10, "requests": 1}]});
    let mut cm = usage_report(
        "team-a",
        "policybind-usage-bot-1",
        "bot-1",
        "team-a/bot",
        0.0,
    );
    cm.data
        .as_mut()
        .unwrap()
        .insert("usage.json".into(), report.to_string());
    env.w.usage_reports.apply_watcher_event(&Event::Apply(cm));
    let key = |start: &str, unit: &str| format!("team-a/bot|Day|{start}|{unit}");
    let entry = |grants: &[(&str, f64)]| KeyLedger {
        limit: 3.0,
        remaining: 1.0,
        grants: grants.iter().map(|(p, g)| (p.to_string(), *g)).collect(),
    };
    let today = "2026-11-21T23:00:00Z";
    let team_a = Ledger {
        keys: BTreeMap::from([
            (key(today, "usd"), entry(&[("bot-1", 0.5), ("bot-2", 0.25)])),
            (key(today, "tokens"), entry(&[("bot-1", 200.0)])),
            // Yesterday's grants and another token's count for nothing here.
            (key("2026-11-20T23:00:00Z", "usd"), entry(&[("bot-1", 2.0)])),
            (
                format!("team-a/other|Day|{today}|usd"),
                entry(&[("bot-3", 2.0)]),
            ),
        ]),
    };
    // The token is granted in every namespace it is served in.
    let team_c = Ledger {
        keys: BTreeMap::from([(key(today, "usd"), entry(&[("c-1", 0.125)]))]),
    };
    env.ctx.state.ledgers.publish("team-a", &team_a);
    env.ctx.state.ledgers.publish("team-c", &team_c);

    let status = reconcile_bot_status(&mut env, &t).await;
    assert_eq!(
        status["status"]["usage"],
        json!([{"period": "Day", "periodStart": "2026-11-21T23:00:00Z",
                "costUsd": 1.0, "tokens": 10, "requests": 1,
                "resetsAt": "2026-11-22T23:00:00Z",
                "heldUsd": 0.875, "heldTokens": 200, "holders": 3}]),
        "{status}"
    );
}

#[tokio::test]
async fn approval_decision_is_recorded_once() {
    let mut env = env();
    let m = model("team-a", "support-bot")
        .level(policybind_crds::RiskLevel::High)
        .build();
    let state = crate::controllers::model_deployment::evaluate(
        &m,
        [],
        now(),
        Duration::from_secs(7 * 86400),
    );
    let mut request =
        crate::controllers::model_deployment::desired_approval_request(&m, &state, "operator")
            .unwrap();
    request.metadata.creation_timestamp = m.metadata.creation_timestamp.clone();
    request.metadata.generation = Some(2);
    request.spec.decision = Some(policybind_crds::approval_request::ApprovalDecision {
        state: policybind_crds::approval_request::DecisionState::Approved,
        approver: "alice".into(),
        comment: None,
    });
    let name = request.name_any();
    let ctx = env.ctx.clone();
    let reconcile = tokio::spawn(crate::controllers::approval_request::reconcile(
        Arc::new(request.clone()),
        ctx,
    ));
    let (status, send) = expect(
        &mut env.api,
        "PATCH",
        &format!("/apis/policybind.io/v1alpha1/namespaces/team-a/approvalrequests/{name}/status"),
    )
    .await;
    assert_eq!(status["status"]["phase"], "Approved");
    assert_eq!(status["status"]["decidedAt"], "2026-11-22T12:00:00Z");
    reply(send, 200, &with_status(&request, &status));
    expect_event(&mut env.api, "team-a", "Approved").await;
    tokio::time::timeout(Duration::from_secs(5), reconcile)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let mut again = request.clone();
    again.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    let ctx = env.ctx.clone();
    expect_no_call(
        &mut env.api,
        crate::controllers::approval_request::reconcile(Arc::new(again), ctx),
    )
    .await;
}

#[tokio::test]
async fn missing_crds_stop_the_start_with_a_clear_message() {
    let (service, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let check = tokio::spawn(async move { crate::check_crds(&client).await });
    let (_, send) = expect(&mut api, "GET", "/apis/policybind.io/v1alpha1/aipolicies").await;
    reply(send, 404, &not_found());
    let error = tokio::time::timeout(Duration::from_secs(5), check)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(error.metric_label(), "crd_missing");
    let message = error.to_string();
    assert!(
        message.contains("aipolicies.policybind.io is not installed"),
        "{message}"
    );
    assert!(message.contains("policybind crds"), "{message}");
}

#[tokio::test]
async fn repeated_denials_raise_one_incident_and_a_second_scan_makes_no_call() {
    use policybind_engine::audit::{AuditEvent, Chain, Hash256, RecordTime, Segment};
    let mut env = env();
    let mut chain = Chain::new("sidecar/team-a/pod-1");
    let first = now() - chrono::Duration::seconds(60);
    let records: Vec<_> = (0..10)
        .map(|i| {
            let at = first + chrono::Duration::seconds(i);
            chain.append(
                AuditEvent::decision(policybind_crds::Effect::Deny)
                    .time(at)
                    .subject("mallory")
                    .token_id("team-a/bot")
                    .code("POLICY_DENY"),
                RecordTime::new(at),
            )
        })
        .collect();
    let segment = Segment::open(Hash256::ZERO, records);
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("pb-audit-segment".into());
    cm.metadata.namespace = Some("team-a".into());
    cm.data = Some(
        [(
            "segment.json".to_string(),
            serde_json::to_string(&segment).unwrap(),
        )]
        .into(),
    );
    env.w.audit_segments.apply_watcher_event(&Event::Apply(cm));
    let name = format!(
        "repeated-denials-{}-{}",
        &crate::controllers::incident::subject_hash("mallory")[..8],
        first.timestamp()
    );

    let ctx = env.ctx.clone();
    let scan = tokio::spawn(async move { crate::controllers::incident::scan(&ctx).await });
    let path = format!("/apis/policybind.io/v1alpha1/namespaces/team-a/incidents/{name}");
    let (incident, send) = expect(&mut env.api, "PATCH", &path).await;
    assert_eq!(incident["spec"]["pattern"], "RepeatedDenials");
    assert_eq!(incident["spec"]["subject"], "mallory");
    assert_eq!(incident["spec"]["severity"], "Medium");
    assert_eq!(
        incident["spec"]["auditRecords"][0],
        "sidecar/team-a/pod-1:1"
    );
    assert_eq!(
        incident["metadata"]["labels"]["policybind.io/pattern"],
        "RepeatedDenials"
    );
    reply(send, 200, &incident);
    let (status, send) = expect(&mut env.api, "PATCH", &format!("{path}/status")).await;
    assert_eq!(status["status"]["occurrences"], 10);
    let written = with_status(
        &serde_json::from_value::<Incident>(incident.clone()).unwrap(),
        &status,
    );
    reply(send, 200, &written);
    expect_event(&mut env.api, "team-a", "RepeatedDenials").await;
    tokio::time::timeout(Duration::from_secs(5), scan)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    env.w
        .incidents
        .apply_watcher_event(&Event::Apply(serde_json::from_value(written).unwrap()));
    let ctx = env.ctx.clone();
    tokio::select! {
        result = crate::controllers::incident::scan(&ctx) => result.expect("scan succeeds"),
        request = env.api.next_request() => {
            let (request, _) = request.expect("client dropped");
            panic!("unexpected call on an unchanged trail: {} {}", request.method(), request.uri());
        }
    }
}

#[tokio::test]
async fn approval_flows_back_to_the_model_and_into_its_status() {
    let mut env = env();
    let m = model("team-a", "support-bot")
        .level(policybind_crds::RiskLevel::Critical)
        .build();
    let ttl = Duration::from_secs(7 * 86400);
    let pending = crate::controllers::model_deployment::evaluate(&m, [], now(), ttl);
    let mut before = m.clone();
    before.status = Some(crate::controllers::model_deployment::desired_status(
        &m,
        &pending,
        &[],
        0,
        now(),
    ));
    let mut request =
        crate::controllers::model_deployment::desired_approval_request(&m, &pending, "operator")
            .unwrap();
    request.metadata.creation_timestamp = m.metadata.creation_timestamp.clone();
    request.spec.decision = Some(policybind_crds::approval_request::ApprovalDecision {
        state: policybind_crds::approval_request::DecisionState::Approved,
        approver: "alice".into(),
        comment: None,
    });
    env.w.approvals.apply_watcher_event(&Event::Apply(request));
    let ctx = env.ctx.clone();
    let reconcile = tokio::spawn(crate::controllers::model_deployment::reconcile(
        Arc::new(before.clone()),
        ctx,
    ));
    let (status, send) = expect(
        &mut env.api,
        "PATCH",
        "/apis/policybind.io/v1alpha1/namespaces/team-a/modeldeployments/support-bot/status",
    )
    .await;
    assert_eq!(status["status"]["approval"], "Approved");
    assert_eq!(status["status"]["approvedBy"], "alice");
    reply(send, 200, &with_status(&before, &status));
    expect_event(&mut env.api, "team-a", "ApprovalGranted").await;
    tokio::time::timeout(Duration::from_secs(5), reconcile)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A retention sink that remembers what it was given, so the test can check that
/// a segment reached the sink before its ConfigMap is deleted.
#[derive(Default)]
struct RecordingSink {
    exported: std::sync::Mutex<Vec<String>>,
}

impl policybind_audit::AuditSink for RecordingSink {
    fn export<'a>(
        &'a self,
        segments: &'a [policybind_audit::StoredSegment],
    ) -> futures::future::BoxFuture<'a, Result<(), policybind_audit::Error>> {
        let names = segments.iter().map(|s| s.name.clone());
        self.exported.lock().unwrap().extend(names);
        Box::pin(futures::future::ready(Ok(())))
    }

    fn describe(&self) -> String {
        "recording".into()
    }
}

#[tokio::test]
async fn retention_lists_segment_namespaces_once_then_exports_before_deleting_in_each() {
    use policybind_audit::ConfigMapStore;
    use policybind_engine::audit::{
        AuditEvent, AuditSigningKey, Chain, Hash256, RecordTime, Segment,
    };
    let mut env = env();
    let key = AuditSigningKey::from_seed(&[8; 32]);
    // team-a: three sealed segments of one writer; team-b: one.
    let sealed_run = |writer: &str, count: i64| {
        let mut chain = Chain::new(writer);
        let mut prev = Hash256::ZERO;
        (0..count)
            .map(|s| {
                let time = RecordTime::new(now() + chrono::Duration::seconds(s));
                let records = (0..3)
                    .map(|_| {
                        chain.append(AuditEvent::decision(policybind_crds::Effect::Allow), time)
                    })
                    .collect();
                let mut segment = Segment::open(prev, records);
                segment.seal(time, &key);
                prev = segment.header.last_hash;
                serde_json::to_value(ConfigMapStore::config_map_for(&segment)).unwrap()
            })
            .collect::<Vec<Value>>()
    };
    let team_a = sealed_run("sidecar/team-a/pod-1", 3);
    let team_b = sealed_run("sidecar/team-b/pod-1", 1);
    let name = |cm: &Value| cm["metadata"]["name"].as_str().unwrap().to_string();
    let meta = |ns: &str, cm: &Value| {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
               "metadata": {"name": name(cm), "namespace": ns}})
    };

    let sink = Arc::new(RecordingSink::default());
    let client = env.ctx.client.clone();
    let metrics = env.ctx.metrics.clone();
    let pass = {
        let sink = sink.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // A budget of one byte: all but each writer's newest sealed segment go.
            let policy = policybind_audit::RetentionPolicy::new(1);
            let shutdown = tokio_util::sync::CancellationToken::new();
            crate::audit_retention::run_once(&client, &policy, sink.as_ref(), &metrics, &shutdown)
                .await
        })
    };

    // One list across namespaces, by label, metadata only.
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), env.api.next_request())
        .await
        .expect("timed out waiting for the namespace list")
        .expect("client dropped");
    assert_eq!(request.method(), "GET");
    assert_eq!(request.uri().path(), "/api/v1/configmaps");
    let query = request.uri().query().unwrap_or("").to_string();
    assert!(
        query.contains("labelSelector=policybind.io%2Faudit-segment"),
        "{query}"
    );
    let accept = request.headers()[http::header::ACCEPT].to_str().unwrap();
    assert!(accept.contains("as=PartialObjectMetadataList"), "{accept}");
    let mut items: Vec<Value> = team_b.iter().map(|cm| meta("team-b", cm)).collect();
    items.extend(team_a.iter().map(|cm| meta("team-a", cm)));
    reply(
        send,
        200,
        &json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                "metadata": {}, "items": items}),
    );

    // team-a: its segments are read, the two oldest exported, then deleted.
    let (_, send) = expect(&mut env.api, "GET", "/api/v1/namespaces/team-a/configmaps").await;
    reply(
        send,
        200,
        &json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {}, "items": team_a}),
    );
    for cm in &team_a[..2] {
        let path = format!("/api/v1/namespaces/team-a/configmaps/{}", name(cm));
        let (_, send) = expect(&mut env.api, "DELETE", &path).await;
        assert!(
            sink.exported.lock().unwrap().contains(&name(cm)),
            "{} deleted before the sink had it",
            name(cm)
        );
        reply(
            send,
            200,
            &json!({"apiVersion": "v1", "kind": "Status", "status": "Success"}),
        );
    }
    // team-b: its one segment is its writer's newest; it stays.
    let (_, send) = expect(&mut env.api, "GET", "/api/v1/namespaces/team-b/configmaps").await;
    reply(
        send,
        200,
        &json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {}, "items": team_b}),
    );
    tokio::select! {
        result = pass => result.expect("retention pass does not panic"),
        request = env.api.next_request() => {
            let (request, _) = request.expect("client dropped");
            panic!("unexpected call after the pass: {} {}", request.method(), request.uri());
        }
    }
    assert_eq!(
        *sink.exported.lock().unwrap(),
        team_a[..2].iter().map(name).collect::<Vec<_>>()
    );
    assert!(
        metrics
            .encode()
            .contains("policybind_operator_audit_segments_removed_total{namespace=\"team-a\"} 2"),
        "{}",
        metrics.encode()
    );
}

#[tokio::test]
async fn retention_failure_in_one_namespace_is_counted_and_the_next_namespace_still_runs() {
    let mut env = env();
    let sink = Arc::new(RecordingSink::default());
    let client = env.ctx.client.clone();
    let metrics = env.ctx.metrics.clone();
    let pass = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let policy = policybind_audit::RetentionPolicy::new(1);
            let shutdown = tokio_util::sync::CancellationToken::new();
            crate::audit_retention::run_once(&client, &policy, sink.as_ref(), &metrics, &shutdown)
                .await
        })
    };
    let meta = |ns: &str| {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
               "metadata": {"name": "pb-audit-x", "namespace": ns}})
    };
    let (_, send) = expect(&mut env.api, "GET", "/api/v1/configmaps").await;
    reply(
        send,
        200,
        &json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                "metadata": {}, "items": [meta("team-a"), meta("team-b")]}),
    );
    let (_, send) = expect(&mut env.api, "GET", "/api/v1/namespaces/team-a/configmaps").await;
    reply(
        send,
        403,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "Forbidden", "code": 403, "message": "forbidden"}),
    );
    let (_, send) = expect(&mut env.api, "GET", "/api/v1/namespaces/team-b/configmaps").await;
    reply(
        send,
        200,
        &json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {}, "items": []}),
    );
    tokio::time::timeout(Duration::from_secs(5), pass)
        .await
        .expect("the pass ends")
        .expect("retention pass does not panic");
    assert!(
        metrics.encode().contains(
            "policybind_operator_reconcile_errors_total{controller=\"audit_retention\",error=\"audit\"} 1"
        ),
        "{}",
        metrics.encode()
    );
}

/// A namespace key Secret as the API server returns it (with its creation time).
fn namespace_key_secret(namespace: &str, seed: u8, created: &str) -> Secret {
    let key = policybind_engine::audit::AuditSigningKey::from_seed(&[seed; 32]);
    let mut secret = crate::controllers::namespace::audit_key_secret(namespace, &key).unwrap();
    secret.metadata.creation_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(created.parse().unwrap()),
    );
    secret
}

fn public(seed: u8) -> policybind_engine::audit::AuditVerifyingKey {
    policybind_engine::audit::AuditSigningKey::from_seed(&[seed; 32]).verifying_key()
}

#[tokio::test]
async fn the_keyring_binds_each_key_to_its_writers_and_an_unchanged_cluster_writes_nothing() {
    use crate::audit_keyring::{CurrentKey, namespace_keys, publish_once};
    let mut env = env();
    env.w
        .audit_keys
        .apply_watcher_event(&Event::Apply(namespace_key_secret(
            "team-a",
            7,
            "2026-11-01T00:00:00Z",
        )));
    let mut current = vec![
        CurrentKey::operator(public(1), None),
        CurrentKey::webhook(public(2), Some("2026-10-01T00:00:00Z".parse().unwrap())),
    ];
    current.extend(namespace_keys(&env.ctx));
    let path = format!("/api/v1/namespaces/{HOME}/configmaps/policybind-audit-keys");

    // First pass: nothing published yet, so one apply.
    let pass = {
        let ctx = env.ctx.clone();
        let current = current.clone();
        tokio::spawn(async move { publish_once(&ctx, &current).await })
    };
    let (_, send) = expect(&mut env.api, "GET", &path).await;
    reply(send, 404, &not_found());
    let published = echo(&mut env.api, "PATCH", &path).await;
    let changes = pass.await.unwrap().unwrap();
    assert_eq!(changes.added.len(), 3, "{changes:?}");
    assert_eq!(published["metadata"]["namespace"], HOME);
    assert_eq!(
        published["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "policybind"
    );
    let json = published["data"]["keys.json"].as_str().unwrap();
    let (document, keyring) =
        policybind_audit::keys::keyring_from_bytes(json.as_bytes(), "test").unwrap();
    let day = Some("2026-11-20T00:00:00Z".parse().unwrap());
    let allowed =
        |seed: u8, writer: &str| keyring.key_for(public(seed).key_id(), writer, day).is_ok();
    assert!(allowed(1, "operator/policybind-operator-0"));
    assert!(allowed(2, "webhook/policybind-webhook-1"));
    assert!(allowed(7, "sidecar/team-a/bot-1"));
    assert!(!allowed(7, "sidecar/team-b/bot-1"));
    assert!(!allowed(7, "webhook/policybind-webhook-1"));
    assert!(!allowed(2, "sidecar/team-a/bot-1"));
    let team_a = document
        .keys
        .iter()
        .find(|e| e.key_id == public(7).key_id())
        .unwrap();
    assert_eq!(team_a.not_before.to_rfc3339(), "2026-11-01T00:00:00+00:00");

    // Second pass over the same keys: one read, no write.
    let pass = {
        let ctx = env.ctx.clone();
        let current = current.clone();
        tokio::spawn(async move { publish_once(&ctx, &current).await })
    };
    let (_, send) = expect(&mut env.api, "GET", &path).await;
    reply(send, 200, &published);
    tokio::select! {
        changes = pass => assert!(changes.unwrap().unwrap().is_empty()),
        request = env.api.next_request() => {
            let (request, _) = request.expect("client dropped");
            panic!("unexpected call: {} {}", request.method(), request.uri());
        }
    }

    // team-a's Secret is replaced by a new key: the old one is retired, not removed.
    env.w
        .audit_keys
        .apply_watcher_event(&Event::Apply(namespace_key_secret(
            "team-a",
            8,
            "2026-11-21T00:00:00Z",
        )));
    let mut rotated = current[..2].to_vec();
    rotated.extend(namespace_keys(&env.ctx));
    let pass = {
        let ctx = env.ctx.clone();
        tokio::spawn(async move { publish_once(&ctx, &rotated).await })
    };
    let (_, send) = expect(&mut env.api, "GET", &path).await;
    reply(send, 200, &published);
    let republished = echo(&mut env.api, "PATCH", &path).await;
    let changes = pass.await.unwrap().unwrap();
    assert_eq!(
        (changes.added.len(), changes.retired.len()),
        (1, 1),
        "{changes:?}"
    );
    let json = republished["data"]["keys.json"].as_str().unwrap();
    let (_, keyring) = policybind_audit::keys::keyring_from_bytes(json.as_bytes(), "test").unwrap();
    let writer = "sidecar/team-a/bot-1";
    let before = Some("2026-11-20T00:00:00Z".parse().unwrap());
    let after = Some("2026-11-23T00:00:00Z".parse().unwrap());
    assert!(keyring.key_for(public(7).key_id(), writer, before).is_ok());
    assert!(keyring.key_for(public(7).key_id(), writer, after).is_err());
    assert!(keyring.key_for(public(8).key_id(), writer, after).is_ok());
}

#[tokio::test]
async fn a_published_keyring_that_does_not_parse_is_replaced() {
    use crate::audit_keyring::{CurrentKey, publish_once};
    let mut env = env();
    let path = format!("/api/v1/namespaces/{HOME}/configmaps/policybind-audit-keys");
    let pass = {
        let ctx = env.ctx.clone();
        tokio::spawn(
            async move { publish_once(&ctx, &[CurrentKey::operator(public(1), None)]).await },
        )
    };
    let (_, send) = expect(&mut env.api, "GET", &path).await;
    reply(
        send,
        200,
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "policybind-audit-keys", "namespace": HOME},
                "data": {"keys.json": "{\"format\": \"something-else\", \"keys\": []}"}}),
    );
    let published = echo(&mut env.api, "PATCH", &path).await;
    pass.await.unwrap().unwrap();
    let json = published["data"]["keys.json"].as_str().unwrap();
    let (document, _) =
        policybind_audit::keys::keyring_from_bytes(json.as_bytes(), "test").unwrap();
    assert_eq!(document.keys.len(), 1);
}

fn lease_report(pod: &str, demands: Value) -> ConfigMap {
    let mut cm = usage_report(
        "team-a",
        &format!("policybind-usage-{pod}"),
        pod,
        "team-a/bot",
        0.0,
    );
    cm.data
        .as_mut()
        .unwrap()
        .insert("leases.json".into(), demands.to_string());
    cm
}

fn live_pod(name: &str) -> PartialObjectMeta<Pod> {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "team-a"}
    }))
    .unwrap()
}

/// An operator in [`HOME`] with the enforced namespace `team-a` and its token
/// `bot` with a $1 day budget, for ledger rounds.
fn ledger_env() -> Env {
    let mut env = env_with(Settings {
        namespace: HOME.into(),
        ..Settings::default()
    });
    env.w.tokens.apply_watcher_event(&Event::Apply(day_bot()));
    env.w
        .namespaces
        .apply_watcher_event(&Event::Apply(namespace("team-a", true)));
    env
}

/// Token `team-a/bot` with a $1 day budget.
fn day_bot() -> AccessToken {
    token("team-a", "bot")
        .budget(policybind_crds::Budget {
            period: policybind_crds::BudgetPeriod::Day,
            max_cost_usd: Some(1.0),
            max_tokens: None,
            time_zone: "UTC".into(),
            window: Default::default(),
        })
        .build()
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_grants_nothing_before_its_caches_are_filled_and_keeps_the_grants_it_finds() {
    // A new leader (a failover, or the operator restarted after an API
    // server outage) whose AccessToken cache has not listed yet.
    let mut env = env_filled(
        Settings {
            namespace: HOME.into(),
            ..Settings::default()
        },
        Unlisted::Tokens,
    );
    env.w
        .namespaces
        .apply_watcher_event(&Event::Apply(namespace("team-a", true)));
    env.w
        .pods
        .apply_watcher_event(&Event::Apply(live_pod("p1")));
    let key = "team-a/bot|Day|2026-11-22T00:00:00Z|usd";
    // p1 holds 0.3 from the previous leader, has spent 0.25 and asks for more.
    env.w
        .usage_reports
        .apply_watcher_event(&Event::Apply(lease_report(
            "p1",
            json!({key: {"settled": 0.25, "inFlight": 0.0, "wanted": 0.2, "basis": 0.3}}),
        )));
    let stored = {
        let mut ledger = policybind_crds::lease::Ledger::default();
        ledger.keys.insert(
            key.into(),
            policybind_crds::lease::KeyLedger {
                limit: 1.0,
                remaining: 0.7,
                grants: [("p1".to_string(), 0.3)].into(),
            },
        );
        ledger
    };
    let (tx, _rx) = futures::channel::mpsc::unbounded();
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(crate::ledger::run(env.ctx.clone(), stop.clone(), tx));

    // Rounds of a second each pass (time is paused and advances when all is
    // idle): not a call while the tokens are not listed. Before the fix the
    // first round found no limit for the key, dropped it and wrote a ledger
    // without p1's grant.
    tokio::select! {
        request = env.api.next_request() => {
            let (request, _) = request.expect("client dropped");
            panic!("a call before the caches filled: {} {}", request.method(), request.uri());
        }
        () = tokio::time::sleep(crate::ledger::ROUND * 5) => {}
    }

    // The first list of the AccessTokens arrives.
    env.w.tokens.apply_watcher_event(&Event::Init);
    env.w
        .tokens
        .apply_watcher_event(&Event::InitApply(day_bot()));
    env.w.tokens.apply_watcher_event(&Event::InitDone);
    // Now the previous leader's ledgers are read, and the next round starts
    // from them: p1 keeps its 0.3 and gets the 0.2 it asked on top.
    let (_, send) = expect(
        &mut env.api,
        "GET",
        &format!("/api/v1/namespaces/{HOME}/configmaps"),
    )
    .await;
    let item = crate::ledger::ledger_config_map(HOME, "team-a", &stored);
    reply(
        send,
        200,
        &json!({"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {}, "items": [item]}),
    );
    let path = format!("/api/v1/namespaces/{HOME}/configmaps/policybind-ledger.team-a");
    let (body, send) = expect(&mut env.api, "PATCH", &path).await;
    reply(send, 200, &body);
    let ledger: policybind_crds::lease::Ledger =
        serde_json::from_str(body["data"]["ledger.json"].as_str().unwrap()).unwrap();
    assert!(
        (ledger.granted(key, "p1") - 0.5).abs() < 1e-12,
        "{ledger:?}"
    );
    stop.cancel();
    run.await.unwrap();
}

#[tokio::test]
async fn the_ledger_grants_live_pods_that_ask_once_and_an_unchanged_round_writes_nothing() {
    let mut env = ledger_env();
    let key = "team-a/bot|Day|2026-11-22T00:00:00Z|usd";
    let stale = "team-a/bot|Day|2026-11-21T00:00:00Z|usd";
    let ask = |wanted: f64| {
        json!({key: {"settled": 0.0, "inFlight": 0.0, "wanted": wanted, "basis": 0.0},
                                   stale: {"settled": 0.0, "inFlight": 0.0, "wanted": 5.0, "basis": 0.0}})
    };
    env.w
        .pods
        .apply_watcher_event(&Event::Apply(live_pod("p1")));
    env.w
        .pods
        .apply_watcher_event(&Event::Apply(live_pod("p2")));
    for (pod, wanted) in [("p1", 0.3), ("p2", 0.9), ("gone", 0.5)] {
        env.w
            .usage_reports
            .apply_watcher_event(&Event::Apply(lease_report(pod, ask(wanted))));
    }
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(env.ctx.client.clone(), HOME);
    let ctx = env.ctx.clone();
    let round = tokio::spawn(async move {
        let changed = crate::ledger::round(&ctx, &api, HOME).await;
        (api, changed)
    });
    let path = format!("/api/v1/namespaces/{HOME}/configmaps/policybind-ledger.team-a");
    let (body, send) = expect(&mut env.api, "PATCH", &path).await;
    reply(send, 200, &body);
    let (api, changed) = round.await.unwrap();
    // The token whose grants changed is woken, and its status can show them.
    assert_eq!(
        changed,
        std::collections::BTreeSet::from(["team-a/bot".to_string()])
    );
    let held = env.ctx.state.ledgers.held(
        "team-a/bot",
        policybind_crds::BudgetPeriod::Day,
        "2026-11-22T00:00:00Z".parse().unwrap(),
    );
    assert!(
        (held.usd - 0.8).abs() < 1e-12 && held.holders == 2,
        "{held:?}"
    );
    assert_eq!(body["metadata"]["labels"]["policybind.io/ledger"], "team-a");
    let ledger: policybind_crds::lease::Ledger =
        serde_json::from_str(body["data"]["ledger.json"].as_str().unwrap()).unwrap();
    // p1 gets what it asked; p2 at most an equal share of what remained; the
    // pod that is gone nothing; the key of yesterday is dropped.
    assert_eq!(ledger.keys.len(), 1);
    assert_eq!(ledger.granted(key, "p1"), 0.3);
    assert_eq!(ledger.granted(key, "p2"), 0.5);
    assert_eq!(ledger.granted(key, "gone"), 0.0);
    assert!((ledger.keys[key].remaining - 0.2).abs() < 1e-12);

    // The same reports again: their basis is no longer the grant; no call.
    let ctx = env.ctx.clone();
    tokio::select! {
        changed = crate::ledger::round(&ctx, &api, HOME) => {
            assert!(changed.is_empty(), "{changed:?}");
        }
        request = env.api.next_request() => {
            let (request, _) = request.expect("client dropped");
            panic!("unexpected call on an unchanged ledger: {} {}", request.method(), request.uri());
        }
    }
    assert_eq!(env.ctx.state.ledgers.get("team-a"), Some(ledger));
}

#[tokio::test]
async fn after_a_failed_ledger_write_the_stored_ledger_is_read_back_before_granting_again() {
    let mut env = ledger_env();
    for pod in ["p1", "p2"] {
        env.w.pods.apply_watcher_event(&Event::Apply(live_pod(pod)));
    }
    let key = "team-a/bot|Day|2026-11-22T00:00:00Z|usd";
    let ask = |wanted: f64| json!({key: {"settled": 0.0, "inFlight": 0.0, "wanted": wanted, "basis": 0.0}});
    env.w
        .usage_reports
        .apply_watcher_event(&Event::Apply(lease_report("p1", ask(0.3))));
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(env.ctx.client.clone(), HOME);
    let path = format!("/api/v1/namespaces/{HOME}/configmaps/policybind-ledger.team-a");

    // The write reaches etcd but the API server goes away before it answers:
    // the operator sees an error; p1 may already read and spend its 0.3.
    let round = {
        let (ctx, api) = (env.ctx.clone(), api.clone());
        tokio::spawn(async move { crate::ledger::round(&ctx, &api, HOME).await })
    };
    let (stored, send) = expect(&mut env.api, "PATCH", &path).await;
    reply(
        send,
        503,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 503, "message": "unavailable"}),
    );
    round.await.unwrap();
    assert_eq!(env.ctx.state.ledgers.get("team-a"), None);

    // p2 asks for all of it. The next round reads the stored ledger back
    // first: p1 keeps its 0.3 and p2 gets the 0.7 left, not 0.9 of a limit
    // the operator believed untouched.
    env.w
        .usage_reports
        .apply_watcher_event(&Event::Apply(lease_report("p2", ask(0.9))));
    let round = {
        let (ctx, api) = (env.ctx.clone(), api.clone());
        tokio::spawn(async move { crate::ledger::round(&ctx, &api, HOME).await })
    };
    let (_, send) = expect(&mut env.api, "GET", &path).await;
    reply(send, 200, &stored);
    let (body, send) = expect(&mut env.api, "PATCH", &path).await;
    reply(send, 200, &body);
    round.await.unwrap();
    let ledger: policybind_crds::lease::Ledger =
        serde_json::from_str(body["data"]["ledger.json"].as_str().unwrap()).unwrap();
    assert_eq!(ledger.granted(key, "p1"), 0.3);
    assert!(
        (ledger.granted(key, "p2") - 0.7).abs() < 1e-12,
        "{ledger:?}"
    );
    let total: f64 = ledger.keys[key].grants.values().sum();
    assert!(total <= 1.0 + 1e-12, "{total}");

    // Written: no read-back any more.
    let ctx = env.ctx.clone();
    tokio::select! {
        _ = crate::ledger::round(&ctx, &api, HOME) => {}
        request = env.api.next_request() => {
            let (request, _) = request.expect("client dropped");
            panic!("unexpected call: {} {}", request.method(), request.uri());
        }
    }
}

// --- Reports (crate::reports) ---

fn decisions_json(
    entries: &[(
        Option<&str>,
        &str,
        &str,
        policybind_crds::summary::ReportResult,
        u32,
    )],
) -> String {
    use policybind_crds::summary::{DecisionTally, Example, SummaryKey};
    let tally = DecisionTally::new(now());
    for (namespace, policy, rule, result, n) in entries {
        for i in 0..*n {
            tally.record(
                SummaryKey {
                    namespace: namespace.map(str::to_string),
                    policy: policy.to_string(),
                    rule: rule.to_string(),
                    result: *result,
                },
                Example {
                    time: now() + chrono::Duration::seconds(i64::from(i)),
                    code: "CODE".into(),
                    model: None,
                    subject: None,
                    object: None,
                },
            );
        }
    }
    serde_json::to_string(&tally.snapshot()).unwrap()
}

fn summary_config_map(namespace: &str, name: &str, pod: &str, json: String) -> ConfigMap {
    use policybind_crds::wire::{keys, labels};
    let mut cm = ConfigMap::default();
    cm.metadata.namespace = Some(namespace.into());
    cm.metadata.name = Some(name.into());
    cm.metadata.uid = Some(format!("uid-{name}"));
    cm.metadata.labels = Some(
        [
            (labels::USAGE.to_string(), "true".to_string()),
            (labels::WRITER_POD.to_string(), pod.to_string()),
        ]
        .into(),
    );
    cm.data = Some([(keys::DECISIONS.to_string(), json)].into());
    cm
}

const ADMISSION_LIST: &str = "/api/v1/namespaces/policybind-system/configmaps";

/// Answers the list of admission summaries with one replica's summary.
async fn expect_admission_list(api: &mut ApiHandle) {
    use policybind_crds::summary::ReportResult::{Fail, Pass};
    let (_, send) = expect(api, "GET", ADMISSION_LIST).await;
    let json = decisions_json(&[
        (
            Some("team-a"),
            "policybind.io/admission",
            "mutate-pod",
            Pass,
            2,
        ),
        (
            Some("team-a"),
            "policybind.io/admission",
            "validate-pod",
            Fail,
            1,
        ),
        // Not an enforced namespace: never reported.
        (
            Some("team-b"),
            "policybind.io/admission",
            "validate-pod",
            Fail,
            1,
        ),
    ]);
    let mut cm = summary_config_map(
        "policybind-system",
        "policybind-admission-webhook-1",
        "webhook-1",
        json,
    );
    cm.metadata.labels = None;
    reply(
        send,
        200,
        &json!({"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {}, "items": [cm]}),
    );
}

fn reports_env(format: crate::reports::ReportFormat) -> Env {
    use policybind_crds::summary::ReportResult::{Fail, Pass};
    let mut env = env_with(Settings {
        reports: crate::reports::ReportsSettings {
            format,
            interval: Duration::from_secs(30),
        },
        ..Settings::default()
    });
    enforced_team_a(&mut env);
    let pod = |n| {
        decisions_json(&[
            (None, "team-a/guard", "no-pii", Fail, n),
            // A namespace claim by a sidecar is ignored: counted in team-a.
            (Some("team-z"), "team-a/guard", "allow", Pass, 1),
        ])
    };
    for cm in [
        summary_config_map("team-a", "policybind-usage-bot-1", "bot-1", pod(3)),
        summary_config_map("team-a", "policybind-usage-bot-2", "bot-2", pod(4)),
        // Forged: named after another pod than its label.
        summary_config_map("team-a", "policybind-usage-victim", "bot-1", pod(100)),
    ] {
        env.w.usage_reports.apply_watcher_event(&Event::Apply(cm));
    }
    env
}

/// Runs a report pass in a task; the test answers its calls.
fn spawn_pass(
    env: &Env,
    mut writer: crate::reports::ReportWriter,
    at: tokio::time::Instant,
) -> tokio::task::JoinHandle<(crate::reports::ReportWriter, usize)> {
    let ctx = env.ctx.clone();
    tokio::spawn(async move {
        let written = writer.pass(&ctx, at).await.expect("pass succeeds");
        (writer, written)
    })
}

/// Waits for a pass to end, failing on any further call.
async fn finish_pass(
    api: &mut ApiHandle,
    pass: tokio::task::JoinHandle<(crate::reports::ReportWriter, usize)>,
) -> (crate::reports::ReportWriter, usize) {
    tokio::select! {
        done = pass => done.unwrap(),
        request = api.next_request() => {
            let (request, _) = request.expect("client dropped");
            panic!("unexpected call: {} {}", request.method(), request.uri());
        }
    }
}

#[tokio::test]
async fn reports_sum_every_pods_summary_per_namespace_and_an_unchanged_pass_writes_nothing() {
    let mut env = reports_env(crate::reports::ReportFormat::OpenReports);
    let t0 = tokio::time::Instant::now();
    let pass = spawn_pass(&env, Default::default(), t0);
    expect_admission_list(&mut env.api).await;
    let path = "/apis/openreports.io/v1alpha1/namespaces/team-a/reports";
    let (body, send) = expect(
        &mut env.api,
        "PATCH",
        &format!("{path}/policybind-requests"),
    )
    .await;
    assert_eq!(body["kind"], "Report");
    assert_eq!(
        body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "policybind"
    );
    assert_eq!(
        body["scope"],
        json!({"apiVersion": "v1", "kind": "Namespace", "name": "team-a"})
    );
    // bot-1 (3 + 1) and bot-2 (4 + 1); the forged report is not counted.
    assert_eq!(
        body["summary"],
        json!({"pass": 2, "fail": 7, "warn": 0, "error": 0, "skip": 0})
    );
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["rule"], "allow");
    assert_eq!(results[1]["properties"]["count"], "7");
    reply(send, 200, &body);
    let (body, send) = expect(
        &mut env.api,
        "PATCH",
        &format!("{path}/policybind-admission"),
    )
    .await;
    assert_eq!(
        body["summary"],
        json!({"pass": 2, "fail": 1, "warn": 0, "error": 0, "skip": 0})
    );
    assert_eq!(body["results"][0]["rule"], "mutate-pod");
    reply(send, 200, &body);
    // The first pass sweeps: a report left in a namespace no longer enforced
    // goes; the ones just written and another tool's report stay.
    expect_managed_list(
        &mut env.api,
        "/apis/openreports.io/v1alpha1/reports",
        &[
            ("team-a", "policybind-requests"),
            ("team-a", "policybind-admission"),
            ("team-a", "someone-elses-report"),
            ("team-old", "policybind-requests"),
        ],
    )
    .await;
    let (_, send) = expect(
        &mut env.api,
        "DELETE",
        "/apis/openreports.io/v1alpha1/namespaces/team-old/reports/policybind-requests",
    )
    .await;
    reply(
        send,
        200,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
    );
    let (writer, written) = finish_pass(&mut env.api, pass).await;
    assert_eq!(written, 2);

    // Nothing changed: the pass lists the summaries and writes nothing.
    let pass = spawn_pass(&env, writer, t0 + Duration::from_secs(30));
    expect_admission_list(&mut env.api).await;
    let (writer, written) = finish_pass(&mut env.api, pass).await;
    assert_eq!(written, 0);
    let metrics = env.ctx.metrics.encode();
    assert!(
        metrics.contains(r#"policybind_operator_report_writes_total{kind="Report.openreports.io",report="policybind-requests",namespace="team-a"} 1"#),
        "{metrics}"
    );

    // team-a leaves enforcement: both its reports are deleted, without a list.
    env.w
        .namespaces
        .apply_watcher_event(&Event::Apply(namespace("team-a", false)));
    let pass = spawn_pass(&env, writer, t0 + Duration::from_secs(60));
    expect_admission_list(&mut env.api).await;
    let mut deleted = Vec::new();
    for _ in 0..2 {
        let (request, send) = env.api.next_request().await.expect("a call");
        assert_eq!(request.method(), "DELETE");
        deleted.push(request.uri().path().to_string());
        reply(
            send,
            200,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        );
    }
    deleted.sort();
    assert_eq!(
        deleted,
        [
            format!("{path}/policybind-admission"),
            format!("{path}/policybind-requests")
        ]
    );
    let (_, written) = finish_pass(&mut env.api, pass).await;
    assert_eq!(written, 0);
}

/// Answers the cluster-wide list of managed reports at `path` with `items`
/// (namespace, name), checking the label selector.
async fn expect_managed_list(api: &mut ApiHandle, path: &str, items: &[(&str, &str)]) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for the list of {path}"))
        .expect("client dropped");
    assert_eq!(
        (request.method().as_str(), request.uri().path()),
        ("GET", path)
    );
    let query = request.uri().query().unwrap_or_default();
    assert!(
        query.contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dpolicybind"),
        "{query}"
    );
    let items: Vec<Value> = items
        .iter()
        .map(|(namespace, name)| json!({"metadata": {"namespace": namespace, "name": name}}))
        .collect();
    reply(
        send,
        200,
        &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                "metadata": {}, "items": items}),
    );
}

#[tokio::test]
async fn a_report_kind_the_api_server_does_not_serve_is_skipped_and_asked_again_after_five_minutes()
{
    let mut env = reports_env(crate::reports::ReportFormat::Both);
    let t0 = tokio::time::Instant::now();
    let open = "/apis/openreports.io/v1alpha1/namespaces/team-a/reports";
    let wg = "/apis/wgpolicyk8s.io/v1alpha2/namespaces/team-a/policyreports";
    let pass = spawn_pass(&env, Default::default(), t0);
    expect_admission_list(&mut env.api).await;
    // No openreports CRD: 404 on the first apply, nothing more of that kind.
    let (_, send) = expect(
        &mut env.api,
        "PATCH",
        &format!("{open}/policybind-requests"),
    )
    .await;
    reply(send, 404, &not_found());
    for name in ["policybind-requests", "policybind-admission"] {
        let (body, send) = expect(&mut env.api, "PATCH", &format!("{wg}/{name}")).await;
        assert_eq!(body["apiVersion"], "wgpolicyk8s.io/v1alpha2");
        reply(send, 200, &body);
    }
    expect_managed_list(
        &mut env.api,
        "/apis/wgpolicyk8s.io/v1alpha2/policyreports",
        &[],
    )
    .await;
    let (writer, written) = finish_pass(&mut env.api, pass).await;
    assert_eq!(written, 2);
    let metrics = env.ctx.metrics.encode();
    assert!(
        metrics.contains(
            r#"policybind_operator_report_api_available{kind="Report.openreports.io"} 0"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"policybind_operator_report_api_available{kind="PolicyReport.wgpolicyk8s.io"} 1"#
        ),
        "{metrics}"
    );

    // Within five minutes: not asked again.
    let pass = spawn_pass(&env, writer, t0 + Duration::from_secs(299));
    expect_admission_list(&mut env.api).await;
    let (writer, written) = finish_pass(&mut env.api, pass).await;
    assert_eq!(written, 0);

    // After five minutes the CRD is there: both reports are written.
    let pass = spawn_pass(&env, writer, t0 + Duration::from_secs(301));
    expect_admission_list(&mut env.api).await;
    for name in ["policybind-requests", "policybind-admission"] {
        let (body, send) = expect(&mut env.api, "PATCH", &format!("{open}/{name}")).await;
        reply(send, 200, &body);
    }
    expect_managed_list(&mut env.api, "/apis/openreports.io/v1alpha1/reports", &[]).await;
    let (_, written) = finish_pass(&mut env.api, pass).await;
    assert_eq!(written, 2);
    assert!(
        env.ctx.metrics.encode().contains(
            r#"policybind_operator_report_api_available{kind="Report.openreports.io"} 1"#
        )
    );
}

// --- Per-token spend, from the operator only (crate::metrics) ---

#[tokio::test]
async fn token_spend_is_exported_per_budgeted_period_from_status_and_drops_with_the_token() {
    use policybind_crds::access_token::{AccessTokenStatus, PeriodUsage};
    use policybind_crds::{Budget, BudgetPeriod};
    let env = env();
    let budget = |period| Budget {
        period,
        max_cost_usd: Some(5.0),
        max_tokens: None,
        time_zone: "UTC".into(),
        window: Default::default(),
    };
    let mut t = token("team-a", "bot")
        .budget(budget(BudgetPeriod::Day))
        .budget(budget(BudgetPeriod::Month))
        .build();
    let day = |start: &str, cost| {
        PeriodUsage::settled(BudgetPeriod::Day, start.parse().unwrap(), cost, 120, 3)
    };
    t.status = Some(AccessTokenStatus {
        // Yesterday's entry is history; the latest is the current period.
        usage: vec![
            day("2026-11-30T00:00:00Z", 4.5),
            day("2026-12-01T00:00:00Z", 0.25),
        ],
        ..Default::default()
    });
    let mut w = env.w;
    w.tokens.apply_watcher_event(&Event::Apply(t.clone()));
    crate::metrics::count_phases(&env.ctx.metrics, &env.ctx.stores, Duration::from_secs(3600));
    let text = env.ctx.metrics.encode();
    assert!(
        text.contains(
            r#"policybind_operator_token_spend_usd{namespace="team-a",token="bot",period="Day"} 0.25"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"policybind_operator_token_spend_tokens{namespace="team-a",token="bot",period="Day"} 120"#
    ));
    // A budgeted period nothing was counted in yet reads 0.
    assert!(text.contains(
        r#"policybind_operator_token_spend_usd{namespace="team-a",token="bot",period="Month"} 0.0"#
    ));

    // The token is deleted: its series are gone at the next scrape.
    w.tokens.apply_watcher_event(&Event::Delete(t));
    crate::metrics::count_phases(&env.ctx.metrics, &env.ctx.stores, Duration::from_secs(3600));
    assert!(!env.ctx.metrics.encode().contains("token=\"bot\""));
}
