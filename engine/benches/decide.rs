//! `decide` latency at 10, 100 and 1,000 rules with 10,000 tokens and 200 models
//! (DESIGN.md section 10: p99 under 5 microseconds at 1,000 rules on one core).
//!
//! Rules are spread over 50 teams and many model globs, the way a large
//! organisation's policies are, with a baseline of team-independent rules; the
//! requests rotate over tokens and models so caches do not flatter the numbers.
//! `decide/rules-with-exclude/1000` is the 1,000-rule set with an `exclude` on
//! every fourth rule. Run: `cargo bench -p policybind-engine --bench decide`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

#[path = "../tests/support/mod.rs"]
mod support;
use policybind_crds::ai_policy::{RuleConditions, RuleExclude, RuleMatch};
use policybind_crds::*;
use policybind_engine::bundle::{Bundle, BundlePolicy, PolicyKind, TokenHash};
use policybind_engine::{PolicySet, Request, hash_token};

const TEAMS: usize = 50;
const MODELS: usize = 200;
const TOKENS: usize = 10_000;

fn bundle(rules: usize) -> Bundle {
    let effects = [
        Effect::Deny,
        Effect::Allow,
        Effect::RequireApproval,
        Effect::Allow,
    ];
    let mut policies = vec![];
    // 10 rules per policy, priorities spread over 20 tiers.
    for p in 0..rules.div_ceil(10) {
        let mut list = vec![];
        for r in 0..10.min(rules - p * 10) {
            let i = p * 10 + r;
            let team_specific = i % 5 != 0;
            list.push(PolicyRule {
                name: format!("r{i}"),
                phase: Default::default(),
                match_: RuleMatch {
                    teams: if team_specific {
                        vec![format!("team-{}", i % TEAMS)]
                    } else {
                        vec![]
                    },
                    models: if i % 3 == 0 {
                        vec![format!("model-{}*", i % 20)]
                    } else {
                        vec![]
                    },
                    min_data_classification: (i % 7 == 0)
                        .then_some(DataClassification::Confidential),
                    ..Default::default()
                },
                exclude: None,
                when: None,
                conditions: RuleConditions {
                    // Distinct thresholds keep rules from being identical (which compile rejects
                    // as contradictory at equal priority).
                    estimated_tokens_above: Some(if i % 4 == 1 {
                        5_000 + i as u64
                    } else {
                        i as u64
                    }),
                    ..Default::default()
                },
                action: effects[i % effects.len()],
                redact: None,
                degrade: None,
                code: None,
                message: None,
                record_redacted_prompt: false,
            });
        }
        policies.push(BundlePolicy {
            kind: PolicyKind::ClusterAIPolicy,
            namespace: None,
            name: format!("policy-{p}"),
            enforcement: Enforcement::Enforce,
            priority: ((p * 37) % 20) as i32 * 10 + 10,
            namespaces: vec![],
            namespace_selector: None,
            custom_detectors: vec![],
            rules: list,
        });
    }
    policies.push(BundlePolicy {
        kind: PolicyKind::ClusterAIPolicy,
        namespace: None,
        name: "default-allow".into(),
        enforcement: Enforcement::Enforce,
        priority: 0,
        namespaces: vec![],
        namespace_selector: None,
        custom_detectors: vec![],
        rules: vec![PolicyRule {
            name: "allow".into(),
            phase: Default::default(),
            match_: Default::default(),
            exclude: None,
            when: None,
            conditions: Default::default(),
            action: Effect::Allow,
            redact: None,
            degrade: None,
            code: None,
            message: None,
            record_redacted_prompt: false,
        }],
    });
    // The same fixture builders as the tests, scaled up.
    let models = (0..MODELS)
        .map(|m| {
            let provider = if m % 2 == 0 { "openai" } else { "self-hosted" };
            support::model(&format!("model-{m}"), provider)
        })
        .collect();
    let tokens = (0..TOKENS)
        .map(|t| {
            let mut token = support::token(&format!("token-{t}"), &format!("team-{}", t % TEAMS));
            token.spec.budgets = vec![Budget {
                period: BudgetPeriod::Month,
                max_cost_usd: Some(100.0),
                max_tokens: None,
                time_zone: "Europe/Berlin".into(),
                window: Default::default(),
            }];
            token.hashes = vec![TokenHash {
                sha256: hash_token(&format!("secret-{t}")),
                valid_until: None,
            }];
            token
        })
        .collect();
    Bundle {
        policies,
        models,
        tokens,
        ..Default::default()
    }
}

fn requests() -> Vec<Request> {
    (0..1024)
        .map(|i| Request {
            token: Some(format!("ns/token-{}", (i * 7919) % TOKENS)),
            model: format!("model-{}", (i * 31) % MODELS),
            time: "2026-11-23T10:00:00Z".parse().unwrap(),
            estimated_input_tokens: 500 + (i as u64 % 7) * 1000,
            estimated_output_tokens: 500,
            data_classification: Some(if i % 3 == 0 {
                DataClassification::Confidential
            } else {
                DataClassification::Internal
            }),
            ..Default::default()
        })
        .collect()
}

fn decide(c: &mut Criterion) {
    let requests = requests();
    let mut group = c.benchmark_group("decide");
    for rules in [10, 100, 1_000] {
        let set = PolicySet::compile(&bundle(rules)).expect("bench bundle compiles");
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("rules", rules), &set, |b, set| {
            b.iter(|| {
                i = (i + 1) % requests.len();
                std::hint::black_box(set.decide(&requests[i]))
            })
        });
    }
    // The same 1,000 rules where every fourth one carries an exception (two teams
    // excluded): what `exclude` costs when rules use it.
    let mut with_exclude = bundle(1_000);
    for (i, rule) in with_exclude
        .policies
        .iter_mut()
        .flat_map(|p| p.rules.iter_mut())
        .enumerate()
        .filter(|(i, _)| i % 4 == 0)
    {
        rule.exclude = Some(RuleExclude {
            teams: vec![
                format!("team-{}", i % TEAMS),
                format!("team-{}", (i + 7) % TEAMS),
            ],
            ..Default::default()
        });
    }
    let set = PolicySet::compile(&with_exclude).expect("bench bundle compiles");
    let mut i = 0;
    group.bench_function("rules-with-exclude/1000", |b| {
        b.iter(|| {
            i = (i + 1) % requests.len();
            std::hint::black_box(set.decide(&requests[i]))
        })
    });
    group.finish();

    // Compiling a full bundle is what an enforcement point does on every change.
    let big = bundle(1_000);
    let mut compile = c.benchmark_group("compile");
    compile.sample_size(10);
    compile.bench_function("1000-rules-10k-tokens", |b| {
        b.iter(|| std::hint::black_box(PolicySet::compile(&big).unwrap()))
    });
    compile.finish();

    // Authentication is on the same path in the sidecar: hash + lookup among 10,000.
    let set = PolicySet::compile(&bundle(1_000)).unwrap();
    let now = "2026-11-23T10:00:00Z".parse().unwrap();
    c.bench_function("authenticate/10k-tokens", |b| {
        b.iter(|| std::hint::black_box(set.authenticate(Some("secret-4242"), now)))
    });

    // Tail latency: criterion reports means; record a p99 over single decisions too.
    let mut samples: Vec<u128> = Vec::with_capacity(200_000);
    for n in 0..200_000 {
        let r = &requests[n % requests.len()];
        let start = std::time::Instant::now();
        std::hint::black_box(set.decide(r));
        samples.push(start.elapsed().as_nanos());
    }
    samples.sort_unstable();
    println!(
        "decide at 1,000 rules / 10,000 tokens, 200,000 single decisions: p50 {} ns, p99 {} ns, p99.9 {} ns",
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
        samples[samples.len() * 999 / 1000]
    );
}

criterion_group!(benches, decide);
criterion_main!(benches);
