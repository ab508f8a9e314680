//! Bundle compilation at the size DESIGN.md section 10 names: 10,000 tokens and
//! 1,000 policies (900 AIPolicies over 30 namespaces, 100 ClusterAIPolicies),
//! 200 models, into the bundles of 10 enforced namespaces, encoded as they are
//! written (normalized, fingerprinted, JSON, gzip and split when large).
//!
//! - `cold`: right after start, every policy compiled once (no memory yet), then
//!   the view and the bundles of 1 or 10 namespaces (encoded on every core).
//! - `warm`: an input changed; view and every namespace's bundle rebuilt.
//! - `one_namespace_from_view`: one namespace's bundle from a built view.
//!
//! Run: `cargo bench -p policybind-operator --bench bundles`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::Namespace;
use policybind_crds::{AIPolicy, AccessToken, ClusterAIPolicy, ModelDeployment};
use policybind_engine::bundle_codec;
use policybind_operator::bundle::{ViewInputs, cluster_view, desired_bundle, encode_bundles};
use policybind_operator::controllers::access_token::SecretState;
use policybind_operator::state::PolicyMemory;
use policybind_operator::testing::{cluster_policy, model, namespace, policy, rule, token};

const TOKENS: usize = 10_000;
const NAMESPACE_POLICIES: usize = 900;
const CLUSTER_POLICIES: usize = 100;
const MODELS: usize = 200;
const NAMESPACES: usize = 30;
const ENFORCED: usize = 10;

struct Cluster {
    policies: Vec<Arc<AIPolicy>>,
    cluster_policies: Vec<Arc<ClusterAIPolicy>>,
    models: Vec<Arc<ModelDeployment>>,
    tokens: Vec<Arc<AccessToken>>,
    namespaces: Vec<Arc<Namespace>>,
    secrets: HashMap<String, SecretState>,
}

fn ns(i: usize) -> String {
    format!("team-{:02}", i % NAMESPACES)
}

fn cluster() -> Cluster {
    let policies = (0..NAMESPACE_POLICIES)
        .map(|i| {
            let mut p = policy(
                &ns(i),
                &format!("policy-{i}"),
                vec![
                    rule(
                        &format!("allow-{i}"),
                        "Allow",
                        &[&format!("model-{}", i % MODELS)],
                    ),
                    rule(
                        &format!("deny-{i}"),
                        "Deny",
                        &[&format!("model-{}-*", i % MODELS)],
                    ),
                ],
            );
            p.spec.priority = i as i32;
            Arc::new(p)
        })
        .collect();
    let cluster_policies = (0..CLUSTER_POLICIES)
        .map(|i| {
            let selector = if i % 2 == 0 { vec!["team-*"] } else { vec![] };
            let mut p = cluster_policy(
                &format!("cluster-{i}"),
                &selector,
                vec![rule(
                    &format!("deny-{i}"),
                    "Deny",
                    &[&format!("blocked-{i}")],
                )],
            );
            p.spec.priority = 10_000 + i as i32;
            Arc::new(p)
        })
        .collect();
    let models = (0..MODELS)
        .map(|i| Arc::new(model(&ns(i), &format!("model-{i}")).build()))
        .collect();
    let mut secrets = HashMap::new();
    let tokens = (0..TOKENS)
        .map(|i| {
            let t = token(&ns(i), &format!("token-{i}")).build();
            secrets.insert(
                format!("{}/token-{i}-token", ns(i)),
                SecretState {
                    current_hash: policybind_engine::hash_token(&format!("pb_value_{i}")),
                    previous: None,
                    issued_at: None,
                    rotation: None,
                },
            );
            Arc::new(t)
        })
        .collect();
    let namespaces = (0..NAMESPACES)
        .map(|i| Arc::new(namespace(&ns(i), i < ENFORCED)))
        .collect();
    Cluster {
        policies,
        cluster_policies,
        models,
        tokens,
        namespaces,
        secrets,
    }
}

fn build_all(
    cluster: &Cluster,
    memory: &PolicyMemory,
    now: DateTime<Utc>,
    namespaces: usize,
) -> usize {
    let inputs = ViewInputs {
        policies: &cluster.policies,
        cluster_policies: &cluster.cluster_policies,
        models: &cluster.models,
        approvals: &[],
        tokens: &cluster.tokens,
        budgets: &[],
        secrets: &cluster.secrets,
        usage: &[],
        namespaces: &cluster.namespaces,
        approval_ttl: Duration::from_secs(7 * 86400),
    };
    let view = cluster_view(&inputs, memory, now);
    let names: Vec<String> = (0..namespaces).map(ns).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    encode_bundles(&view, &names, threads)
        .iter()
        .map(|(_, e)| e.parts.len())
        .sum()
}

fn bench(c: &mut Criterion) {
    let cluster = cluster();
    let now: DateTime<Utc> = "2026-11-22T12:00:00Z".parse().unwrap();
    let mut group = c.benchmark_group("bundles");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("cold_10k_tokens_1k_policies_1_namespace", |b| {
        b.iter(|| black_box(build_all(&cluster, &PolicyMemory::default(), now, 1)))
    });
    group.bench_function("cold_10k_tokens_1k_policies_10_namespaces", |b| {
        b.iter(|| black_box(build_all(&cluster, &PolicyMemory::default(), now, ENFORCED)))
    });
    let memory = PolicyMemory::default();
    build_all(&cluster, &memory, now, 1);
    group.bench_function("warm_10k_tokens_1k_policies_10_namespaces", |b| {
        b.iter(|| black_box(build_all(&cluster, &memory, now, ENFORCED)))
    });
    let inputs = ViewInputs {
        policies: &cluster.policies,
        cluster_policies: &cluster.cluster_policies,
        models: &cluster.models,
        approvals: &[],
        tokens: &cluster.tokens,
        budgets: &[],
        secrets: &cluster.secrets,
        usage: &[],
        namespaces: &cluster.namespaces,
        approval_ttl: Duration::from_secs(7 * 86400),
    };
    let view = cluster_view(&inputs, &memory, now);
    group.bench_function("one_namespace_from_view", |b| {
        b.iter(|| {
            let bundle = desired_bundle(&view, "team-00");
            black_box(bundle_codec::encode(
                &bundle,
                bundle_codec::DEFAULT_MAX_PART_BYTES,
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
