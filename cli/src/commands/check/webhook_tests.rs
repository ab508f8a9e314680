//! The webhook verdicts, and the TLS probe against a real listener serving the
//! webhook's own TLS configuration.

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
use kube::api::ObjectMeta;
use policybind_webhook::configs::{Endpoint as WebhookEndpoint, Registration};
use policybind_webhook::tls::{CertResolver, certified_key, generate_self_signed, server_config};
use tokio::io::AsyncReadExt;

use super::*;
use crate::commands::check::report::Verdict;

const HOME: &str = "policybind-system";

fn service_registration(ca_pem: &str) -> Registration {
    let endpoint = WebhookEndpoint::Service {
        namespace: HOME.into(),
        name: "policybind-webhook".into(),
        port: 443,
    };
    let mut registration = Registration::new(endpoint, HOME);
    registration.ca_bundle = Some(ca_pem.into());
    registration
}

fn service_target() -> Target {
    Target::Service {
        namespace: HOME.into(),
        name: "policybind-webhook".into(),
        port: 443,
    }
}

fn slice(ready: &[bool]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(HOME.into()),
            labels: Some(
                [(
                    "kubernetes.io/service-name".to_string(),
                    "policybind-webhook".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: ready
            .iter()
            .map(|r| Endpoint {
                addresses: vec!["10.0.0.1".into()],
                conditions: Some(EndpointConditions {
                    ready: Some(*r),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn state_for(registration: &Registration, ready: &[bool], probe: Probe) -> WebhookState {
    WebhookState {
        now: Utc::now(),
        home: HOME.into(),
        registered: registered(&[registration.validating()], &[registration.mutating()]),
        ready: ready_endpoints(&[slice(ready)]),
        probes: [(service_target(), probe)].into(),
    }
}

fn served(not_after: DateTime<Utc>) -> Probe {
    Probe::Served(CertFacts {
        subject: "CN=policybind-webhook".into(),
        not_before: Utc::now() - Duration::days(1),
        not_after,
    })
}

#[test]
fn the_configurations_the_webhook_writes_pass_when_served_and_ready() {
    let tls =
        generate_self_signed(&["policybind-webhook.policybind-system.svc".into()], &[]).unwrap();
    let registration = service_registration(&tls.ca_pem);
    let state = state_for(
        &registration,
        &[true, false],
        served(Utc::now() + Duration::days(300)),
    );
    let lines = webhook_lines(&state);
    assert!(
        lines.iter().all(|l| l.verdict == Verdict::Pass),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.check
                == "Service policybind-system/policybind-webhook has ready endpoints (1)")
    );
    // One target: one set of CA, endpoints and served lines, after the two registrations.
    assert_eq!(lines.len(), 5, "{lines:#?}");
}

#[test]
fn no_ready_endpoint_an_unregistered_kind_and_a_near_expiry_are_named() {
    let tls = generate_self_signed(&["x".into()], &[]).unwrap();
    let registration = service_registration(&tls.ca_pem);
    let mut state = state_for(
        &registration,
        &[false],
        served(Utc::now() + Duration::days(10)),
    );
    state
        .registered
        .retain(|r| r.config.starts_with("Validating"));
    let lines = webhook_lines(&state);
    let mutating = lines
        .iter()
        .find(|l| l.check.contains("MutatingWebhookConfiguration"))
        .unwrap();
    assert_eq!(mutating.verdict, Verdict::Fail);
    let endpoints = lines
        .iter()
        .find(|l| l.check.contains("ready endpoints"))
        .unwrap();
    assert_eq!(endpoints.verdict, Verdict::Fail);
    assert!(
        endpoints
            .run
            .as_deref()
            .unwrap()
            .contains("get endpointslices -l kubernetes.io/service-name=policybind-webhook")
    );
    let cert = lines
        .iter()
        .find(|l| l.check.contains("serves a certificate"))
        .unwrap();
    assert_eq!(cert.verdict, Verdict::Warn);
    assert!(
        cert.problem
            .as_deref()
            .unwrap()
            .contains("expires in 9 day(s)")
            || cert
                .problem
                .as_deref()
                .unwrap()
                .contains("expires in 10 day(s)")
    );
}

#[test]
fn an_expired_certificate_and_a_garbage_ca_bundle_fail() {
    let mut registration = service_registration("not a certificate");
    registration.ca_bundle =
        Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into());
    let state = state_for(
        &registration,
        &[true],
        served(Utc::now() - Duration::hours(1)),
    );
    let lines = webhook_lines(&state);
    let ca = lines.iter().find(|l| l.check.contains("caBundle")).unwrap();
    assert_eq!(ca.verdict, Verdict::Fail, "{ca:?}");
    let cert = lines
        .iter()
        .find(|l| l.check.contains("serves a certificate"))
        .unwrap();
    assert_eq!(cert.verdict, Verdict::Fail);
    assert!(cert.problem.as_deref().unwrap().contains("expired at"));
}

#[test]
fn an_unresolvable_service_is_a_warning_but_an_unreachable_url_fails() {
    let tls = generate_self_signed(&["x".into()], &[]).unwrap();
    let registration = service_registration(&tls.ca_pem);
    let state = state_for(&registration, &[true], Probe::Unresolved("no DNS".into()));
    let cert = webhook_lines(&state)
        .into_iter()
        .find(|l| l.check.contains("serves a certificate"))
        .unwrap();
    assert_eq!(cert.verdict, Verdict::Warn);

    let mut url = Registration::new(WebhookEndpoint::Url("https://127.0.0.1:9".into()), HOME);
    url.ca_bundle = Some(tls.ca_pem.clone());
    let target = Target::Url {
        host: "127.0.0.1".into(),
        port: 9,
    };
    let state = WebhookState {
        now: Utc::now(),
        home: HOME.into(),
        registered: registered(&[url.validating()], &[url.mutating()]),
        probes: [(target, Probe::Failed("refused".into()))].into(),
        ..Default::default()
    };
    let lines = webhook_lines(&state);
    assert!(
        !lines.iter().any(|l| l.check.contains("ready endpoints")),
        "a URL has no Service"
    );
    let cert = lines
        .iter()
        .find(|l| l.check.contains("serves a certificate"))
        .unwrap();
    assert_eq!(cert.verdict, Verdict::Fail);
}

#[test]
fn url_targets_parse_host_and_port() {
    let client = |url: &str| WebhookClientConfig {
        url: Some(url.into()),
        ..Default::default()
    };
    assert_eq!(
        target_of(&client("https://hook.example:8443/validate")),
        Ok(Target::Url {
            host: "hook.example".into(),
            port: 8443
        })
    );
    assert_eq!(
        target_of(&client("https://hook.example/validate")),
        Ok(Target::Url {
            host: "hook.example".into(),
            port: 443
        })
    );
    assert_eq!(
        target_of(&client("https://[::1]:9443/v")),
        Ok(Target::Url {
            host: "::1".into(),
            port: 9443
        })
    );
    assert!(
        target_of(&client("http://hook.example/"))
            .unwrap_err()
            .contains("not https")
    );
}

/// Serves the webhook's TLS configuration with `cert_for` on 127.0.0.1, and
/// returns the port and the CA.
async fn tls_listener(cert_for: &str) -> (u16, String) {
    let tls = generate_self_signed(&[cert_for.into()], &[]).unwrap();
    let resolver = CertResolver::new();
    resolver.set(certified_key(tls.cert_pem.as_bytes(), tls.key_pem.as_bytes()).unwrap());
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(resolver).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut stream) = acceptor.accept(tcp).await {
                    let _ = stream.read(&mut [0u8; 16]).await;
                }
            });
        }
    });
    (port, tls.ca_pem)
}

#[tokio::test]
async fn the_probe_sees_the_served_certificate_and_refuses_a_wrong_ca_or_name() {
    let (port, ca) = tls_listener("localhost").await;
    let target = Target::Url {
        host: "localhost".into(),
        port,
    };
    let timeout = StdDuration::from_secs(5);
    match probe(&target, ca.as_bytes(), timeout).await {
        Probe::Served(cert) => {
            assert_eq!(cert.subject, "CN=policybind-webhook");
            assert!(cert.not_after - Utc::now() > Duration::days(300));
        }
        other => panic!("expected the served certificate, got {other:?}"),
    }
    let other_ca = generate_self_signed(&["localhost".into()], &[])
        .unwrap()
        .ca_pem;
    let Probe::Failed(why) = probe(&target, other_ca.as_bytes(), timeout).await else {
        panic!("a foreign CA must fail")
    };
    assert!(why.contains("TLS handshake with localhost"), "{why}");

    let (port, ca) = tls_listener("policybind-webhook.elsewhere.svc").await;
    let target = Target::Url {
        host: "localhost".into(),
        port,
    };
    let Probe::Failed(why) = probe(&target, ca.as_bytes(), timeout).await else {
        panic!("a wrong name must fail")
    };
    assert!(why.contains("TLS handshake"), "{why}");

    let nowhere = Target::Url {
        host: "policybind-webhook.invalid".into(),
        port: 443,
    };
    assert!(matches!(
        probe(&nowhere, ca.as_bytes(), timeout).await,
        Probe::Unresolved(_)
    ));
}
