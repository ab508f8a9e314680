//! What one page view costs the dashboard's CPU once the snapshot is loaded:
//! the Decisions and Denials pages over 100,000 audit records in 10
//! namespaces (the most the snapshot keeps per namespace is 100,000), for a
//! viewer who may see every namespace and one who may see one.
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use policybind_crds::Effect;
use policybind_dashboard::auth::{Identity, Visibility};
use policybind_dashboard::data::{Snapshot, Trail};
use policybind_dashboard::views::{Context, View};
use policybind_engine::audit::{AuditRecord, Hash256, RecordKind, RecordTime};

const CODES: &[&str] = &[
    "POLICY_ALLOW",
    "TOKEN_MISSING",
    "PII_DETECTED",
    "BUDGET_EXCEEDED",
];

fn record(seq: u64, at: DateTime<Utc>, namespace: &str) -> AuditRecord {
    let effect = match seq % 10 {
        0 => Effect::Deny,
        1 => Effect::Redact,
        _ => Effect::Allow,
    };
    AuditRecord {
        seq,
        time: RecordTime::new(at),
        writer: format!("sidecar/{namespace}/pod-{}", seq % 3),
        kind: RecordKind::Decision,
        request_id: Some(format!("req-{seq}")),
        subject: Some(format!("user:u{}", seq % 50)),
        token_id: None,
        model: Some("gpt-4o".into()),
        namespace: Some(namespace.into()),
        effect: Some(effect),
        policy: Some(format!("{namespace}/policy")),
        rule: Some("rule".into()),
        codes: vec![CODES[(seq % 4) as usize].into()],
        fingerprint: None,
        prompt_hash: None,
        redacted_prompt: None,
        usage: None,
        detail: BTreeMap::new(),
        prev_hash: Hash256::ZERO,
        hash: Hash256::ZERO,
    }
}

fn snapshot(now: DateTime<Utc>) -> Snapshot {
    let mut snapshot = Snapshot::empty(now);
    for n in 0..10 {
        let namespace = format!("team-{n}");
        let records = (0..10_000u64)
            .map(|i| {
                record(
                    i + 1,
                    now - Duration::seconds(((10_000 - i) * 8) as i64),
                    &namespace,
                )
            })
            .collect();
        snapshot.trails.insert(
            namespace,
            Trail {
                records,
                ..Trail::default()
            }
            .into(),
        );
    }
    snapshot
}

fn bench(c: &mut Criterion) {
    let now: DateTime<Utc> = "2026-12-01T12:00:00Z".parse().unwrap();
    let snapshot = snapshot(now);
    let identity = Identity {
        username: "alice".into(),
        uid: None,
        groups: vec![],
        extra: BTreeMap::new(),
    };
    let one = Visibility::Namespaces(BTreeSet::from(["team-3".to_string()]));
    for (label, visible) in [
        ("all-namespaces", &Visibility::Cluster),
        ("one-namespace", &one),
    ] {
        for view in [View::Decisions, View::Denials, View::Audit] {
            let context = Context {
                snapshot: &snapshot,
                visible,
                identity: &identity,
                now,
            };
            c.bench_function(
                &format!(
                    "{}-{label}-100k-records",
                    view.path().trim_start_matches('/')
                ),
                |b| b.iter(|| view.render(&context)),
            );
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
