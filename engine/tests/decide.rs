//! Decision semantics: evaluation order, precedence, audit mode, obligations,
//! fail-closed behaviour and compile errors, plus the property tests of the issue.

mod support;

use policybind_crds::ai_policy::{CustomDetectorSpec, DegradeAction, RuleExclude};
use policybind_crds::{DataClassification, Effect, Enforcement};
use policybind_engine::bundle::TokenHash;
use policybind_engine::{PolicySet, codes, hash_token};
use proptest::prelude::*;
use support::*;

fn set(policies: Vec<policybind_engine::bundle::BundlePolicy>) -> PolicySet {
    PolicySet::compile(&bundle(policies)).expect("compiles")
}

#[test]
fn no_matching_rule_is_denied_by_default() {
    let d = set(vec![]).decide(&request("alice", "gpt-4o"));
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.code(), codes::NO_MATCHING_POLICY);
}

#[test]
fn a_default_denial_keeps_the_detector_codes_of_the_prompt() {
    let mut r = request("alice", "gpt-4o");
    r.prompt = Some("mail jane@example.com, key AKIAIOSFODNN7EXAMPLE".into());
    let d = set(vec![]).decide(&r);
    assert_eq!(
        d.codes,
        [
            codes::NO_MATCHING_POLICY,
            codes::PII_DETECTED,
            codes::SECRET_IN_PROMPT
        ]
    );
    assert_eq!(d.findings.len(), 2);
}

#[test]
fn token_and_registry_refusals_keep_the_detector_codes_of_the_prompt() {
    let s = set(vec![cluster_policy(
        "allow",
        100,
        vec![rule("all", Effect::Allow)],
    )]);
    let mut unknown_token = request("carol", "gpt-4o");
    unknown_token.prompt = Some("call +44 20 7946 0958".into());
    assert_eq!(
        s.decide(&unknown_token).codes,
        [codes::TOKEN_UNKNOWN, codes::PII_DETECTED]
    );
    let mut unregistered = request("alice", "mistral");
    unregistered.prompt = Some("AKIAIOSFODNN7EXAMPLE".into());
    assert_eq!(
        s.decide(&unregistered).codes,
        [codes::MODEL_NOT_REGISTERED, codes::SECRET_IN_PROMPT]
    );
}

#[test]
fn a_rule_whose_code_is_a_detector_code_does_not_repeat_it() {
    let mut deny = rule("no-secrets", Effect::Deny);
    deny.conditions.detected = vec!["SECRET".into()];
    deny.code = Some(codes::SECRET_IN_PROMPT.into());
    let s = set(vec![cluster_policy("secrets", 100, vec![deny])]);
    let mut r = request("alice", "gpt-4o");
    r.prompt = Some("AKIAIOSFODNN7EXAMPLE".into());
    assert_eq!(s.decide(&r).codes, [codes::SECRET_IN_PROMPT]);
}

#[test]
fn deciding_on_findings_scanned_once_decides_as_deciding_on_the_prompt() {
    let mut redact = rule("pii", Effect::Redact);
    redact.conditions.detected = vec!["EMAIL".into()];
    let s = set(vec![
        cluster_policy("redact", 500, vec![redact]),
        cluster_policy("allow", 100, vec![rule("all", Effect::Allow)]),
    ]);
    let texts = ["first: jane@example.com", "second: nothing here"];
    let parts: Vec<_> = texts.iter().map(|t| s.scan(t)).collect();
    let findings = policybind_engine::detect::Findings::join(&parts, 1);
    let mut r = request("alice", "gpt-4o");
    r.prompt = Some(texts.join("\n"));
    let scanned = s.decide_scanned(&request("alice", "gpt-4o"), &findings);
    assert_eq!(scanned, s.decide(&r));
    assert_eq!(scanned.effect, Effect::Redact);
}

#[test]
fn higher_priority_rule_decides_even_when_less_restrictive() {
    let s = set(vec![
        cluster_policy("allow-high", 200, vec![rule("allow", Effect::Allow)]),
        cluster_policy("deny-low", 100, vec![rule("deny", Effect::Deny)]),
    ]);
    let d = s.decide(&request("alice", "gpt-4o"));
    assert_eq!(d.effect, Effect::Allow);
    assert_eq!(d.policy.as_deref(), Some("allow-high"));
}

#[test]
fn at_equal_priority_the_most_restrictive_effect_wins() {
    let mut degrade = rule("degrade", Effect::Degrade);
    degrade.degrade = Some(DegradeAction {
        model: Some("llama".into()),
        max_tokens: None,
    });
    degrade.match_.models = vec!["gpt-*".into()];
    let mut redact = rule("redact", Effect::Redact);
    redact.match_.teams = vec!["marketing".into()];
    let s = set(vec![
        cluster_policy("a", 100, vec![rule("allow", Effect::Allow), redact]),
        cluster_policy("b", 100, vec![degrade]),
    ]);
    let d = s.decide(&request("alice", "gpt-4o"));
    assert_eq!(d.effect, Effect::Degrade);
    assert_eq!(d.obligations.model.as_deref(), Some("llama"));
}

#[test]
fn token_checks_come_before_policies() {
    let mut b = bundle(vec![cluster_policy(
        "allow",
        100,
        vec![rule("all", Effect::Allow)],
    )]);
    b.tokens[0].spec.expires_at = Some(at("2026-01-01T00:00:00Z"));
    b.tokens[1].spec.revoked = true;
    let s = PolicySet::compile(&b).unwrap();
    assert_eq!(
        s.decide(&request("alice", "gpt-4o")).code(),
        codes::TOKEN_EXPIRED
    );
    assert_eq!(
        s.decide(&request("bob", "gpt-4o")).code(),
        codes::TOKEN_REVOKED
    );
    assert_eq!(
        s.decide(&request("carol", "gpt-4o")).code(),
        codes::TOKEN_UNKNOWN
    );
}

#[test]
fn unregistered_and_suspended_models_are_denied_before_policies() {
    let mut b = bundle(vec![cluster_policy(
        "allow",
        100,
        vec![rule("all", Effect::Allow)],
    )]);
    b.models[1].spec.suspended = true;
    let s = PolicySet::compile(&b).unwrap();
    assert_eq!(
        s.decide(&request("alice", "mistral")).code(),
        codes::MODEL_NOT_REGISTERED
    );
    assert_eq!(
        s.decide(&request("alice", "llama")).code(),
        codes::MODEL_SUSPENDED
    );
}

#[test]
fn classification_above_the_token_maximum_is_denied() {
    let mut b = bundle(vec![cluster_policy(
        "allow",
        100,
        vec![rule("all", Effect::Allow)],
    )]);
    b.tokens[0].spec.max_data_classification = DataClassification::Internal;
    let s = PolicySet::compile(&b).unwrap();
    let mut r = request("alice", "gpt-4o");
    r.data_classification = Some(DataClassification::Confidential);
    assert_eq!(s.decide(&r).code(), codes::DATA_CLASSIFICATION_EXCEEDED);
}

#[test]
fn audit_mode_policy_never_blocks_but_records_what_it_would_have_done() {
    let mut audit = cluster_policy("trial", 500, vec![rule("deny-all", Effect::Deny)]);
    audit.enforcement = Enforcement::Audit;
    let s = set(vec![
        audit,
        cluster_policy("allow", 100, vec![rule("all", Effect::Allow)]),
    ]);
    let d = s.decide(&request("alice", "gpt-4o"));
    assert_eq!(d.effect, Effect::Allow);
    let w = d.would_have.expect("would-have recorded");
    assert_eq!(w.effect, Effect::Deny);
    assert_eq!(w.policy, "trial");
}

#[test]
fn pii_in_the_prompt_triggers_redaction_with_spans() {
    let mut redact = rule("pii", Effect::Redact);
    redact.conditions.detected = vec!["EMAIL".into()];
    let s = set(vec![
        cluster_policy("redact", 500, vec![redact]),
        cluster_policy("allow", 100, vec![rule("all", Effect::Allow)]),
    ]);
    let mut r = request("alice", "gpt-4o");
    r.prompt = Some("mail me at jane@example.com".into());
    let d = s.decide(&r);
    assert_eq!(d.effect, Effect::Redact);
    assert_eq!(d.codes, vec![codes::PII_REDACTED, codes::PII_DETECTED]);
    assert_eq!(
        d.obligations.redact.as_ref().unwrap().entities,
        vec!["EMAIL"]
    );
    let f = &d.findings[0];
    assert_eq!(
        &r.prompt.as_ref().unwrap()[f.start..f.end],
        "jane@example.com"
    );
    // Without PII the redaction rule does not match and the allow rule decides.
    r.prompt = Some("hello".into());
    assert_eq!(s.decide(&r).effect, Effect::Allow);
}

#[test]
fn cel_runtime_error_fails_closed() {
    let mut r1 = rule("label-check", Effect::Allow);
    r1.when = Some("request.labels['tier'] == 'gold'".into());
    let s = set(vec![
        cluster_policy("cel", 500, vec![r1]),
        cluster_policy("allow", 100, vec![rule("all", Effect::Allow)]),
    ]);
    let d = s.decide(&request("alice", "gpt-4o"));
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.code(), codes::POLICY_EVALUATION_ERROR);
    let mut r = request("alice", "gpt-4o");
    r.labels.insert("tier".into(), "gold".into());
    assert_eq!(s.decide(&r).policy.as_deref(), Some("cel"));
}

fn exclude(teams: &[&str], subjects: &[&str]) -> Option<RuleExclude> {
    Some(RuleExclude {
        teams: teams.iter().map(|t| t.to_string()).collect(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

#[test]
fn an_excluded_subject_skips_one_rule_and_lower_rules_still_apply() {
    // Deny gpt-4o to everyone but alice's subject; redact e-mail below it; allow last.
    let mut deny = rule("no-gpt-4o", Effect::Deny);
    deny.match_.models = vec!["gpt-4o".into()];
    deny.exclude = exclude(&[], &["alice-user"]);
    let mut redact = rule("pii", Effect::Redact);
    redact.conditions.detected = vec!["EMAIL".into()];
    let s = set(vec![
        cluster_policy("deny", 500, vec![deny]),
        cluster_policy("redact", 300, vec![redact]),
        cluster_policy("allow", 100, vec![rule("all", Effect::Allow)]),
    ]);
    let mut r = request("alice", "gpt-4o");
    r.prompt = Some("mail jane@example.com".into());
    let d = s.decide(&r);
    assert_eq!(
        d.effect,
        Effect::Redact,
        "the exception skips only the deny"
    );
    assert_eq!(d.policy.as_deref(), Some("redact"));
    r.prompt = Some("hello".into());
    assert_eq!(s.decide(&r).policy.as_deref(), Some("allow"));
    // Not excluded: bob is denied.
    assert_eq!(s.decide(&request("bob", "gpt-4o")).effect, Effect::Deny);

    let (_, trace) = s.decide_explained(&request("alice", "gpt-4o"));
    let skipped = trace.iter().find(|t| t.rule == "no-gpt-4o").unwrap();
    assert!(skipped.excluded && !skipped.matched && !skipped.decided);
    assert_eq!(skipped.reason, "excluded: subject alice-user");
}

#[test]
fn exclude_needs_every_given_field_and_is_checked_before_cel() {
    let mut deny = rule("deny-marketing-outside-ns", Effect::Deny);
    // A CEL error would deny; an excluded request never evaluates it.
    deny.when = Some("request.labels['tier'] == 'x'".into());
    deny.exclude = Some(RuleExclude {
        teams: vec!["marketing".into()],
        namespaces: vec!["n*".into()],
        ..Default::default()
    });
    let mut b = bundle(vec![
        cluster_policy("deny", 500, vec![deny]),
        cluster_policy("allow", 100, vec![rule("all", Effect::Allow)]),
    ]);
    b.tokens[0].spec.additional_namespaces = vec!["other".into()];
    let s = PolicySet::compile(&b).unwrap();
    let mut alice = request("alice", "gpt-4o");
    assert_eq!(
        s.decide(&alice).effect,
        Effect::Allow,
        "team and namespace hold"
    );
    // Same team, namespace not excluded: the rule applies.
    alice.namespace = Some("other".into());
    assert_eq!(s.decide(&alice).code(), codes::POLICY_EVALUATION_ERROR);
    // bob (team research) is not excluded: the rule applies and its CEL fails closed.
    assert_eq!(
        s.decide(&request("bob", "gpt-4o")).code(),
        codes::POLICY_EVALUATION_ERROR
    );
}

#[test]
fn an_empty_or_broken_exclude_does_not_compile() {
    let mut empty = rule("r", Effect::Deny);
    empty.exclude = Some(RuleExclude::default());
    let mut glob = rule("g", Effect::Deny);
    glob.exclude = Some(RuleExclude {
        namespaces: vec!["[".into()],
        ..Default::default()
    });
    let errors = PolicySet::compile(&bundle(vec![cluster_policy("p", 1, vec![empty, glob])]))
        .expect_err("must not compile")
        .0;
    assert_eq!(errors[0].field, "spec.rules[0].exclude");
    assert!(errors[0].reason.contains("at least one"), "{errors:?}");
    assert_eq!(errors[1].field, "spec.rules[1].exclude.namespaces");
}

#[test]
fn rules_differing_only_in_exclude_are_not_contradictory() {
    let mut a = rule("a", Effect::Deny);
    a.exclude = exclude(&["marketing"], &[]);
    let b = rule("b", Effect::Allow);
    assert!(PolicySet::compile(&bundle(vec![cluster_policy("p", 1, vec![a, b])])).is_ok());
}

#[test]
fn bearer_values_authenticate_by_hash_and_rotated_values_expire() {
    let mut b = bundle(vec![]);
    b.tokens[0].hashes = vec![
        TokenHash {
            sha256: hash_token("new-secret"),
            valid_until: None,
        },
        TokenHash {
            sha256: hash_token("old-secret"),
            valid_until: Some(at("2026-11-23T12:00:00Z")),
        },
    ];
    let s = PolicySet::compile(&b).unwrap();
    let now = at("2026-11-23T10:00:00Z");
    assert_eq!(s.authenticate(Some("new-secret"), now), Ok("ns/alice"));
    assert_eq!(s.authenticate(Some("old-secret"), now), Ok("ns/alice"));
    assert!(
        s.authenticate(Some("old-secret"), at("2026-11-23T13:00:00Z"))
            .is_err()
    );
    assert_eq!(
        s.authenticate(Some("guess"), now).unwrap_err().code(),
        codes::TOKEN_UNKNOWN
    );
    assert_eq!(
        s.authenticate(None, now).unwrap_err().code(),
        codes::TOKEN_MISSING
    );
}

#[test]
fn compile_errors_name_resource_rule_and_field() {
    let mut bad_cel = rule("bad-cel", Effect::Allow);
    bad_cel.when = Some("request.team ==".into());
    let mut bad_tz = rule("bad-tz", Effect::Deny);
    bad_tz.conditions.schedule = Some(policybind_crds::Schedule {
        days: vec![],
        start_hour: 9,
        end_hour: 17,
        time_zone: "Europe/Atlantis".into(),
    });
    let mut policy = cluster_policy("broken", 100, vec![bad_cel, bad_tz]);
    policy.custom_detectors = vec![CustomDetectorSpec {
        name: "TICKET".into(),
        pattern: "(unclosed".into(),
    }];
    let errors = PolicySet::compile(&bundle(vec![policy])).unwrap_err().0;
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let find = |field: &str| {
        errors
            .iter()
            .find(|e| e.field == field)
            .unwrap_or_else(|| panic!("no error at {field}: {text:?}"))
    };
    let cel = find("spec.rules[0].when");
    assert_eq!(cel.resource, "ClusterAIPolicy broken");
    assert_eq!(cel.rule.as_deref(), Some("bad-cel"));
    assert!(
        find("spec.rules[1].conditions.schedule")
            .reason
            .contains("Europe/Atlantis")
    );
    assert!(
        find("spec.customDetectors[0].pattern")
            .reason
            .contains("TICKET")
    );
}

#[test]
fn prices_and_cost_budgets_that_are_not_finite_non_negative_dollars_do_not_compile() {
    for bad in [f64::NAN, f64::INFINITY, -0.5] {
        let mut b = bundle(vec![cluster_policy(
            "p",
            100,
            vec![rule("ok", Effect::Allow)],
        )]);
        b.models[0]
            .spec
            .pricing
            .as_mut()
            .unwrap()
            .output_per1k_tokens_usd = bad;
        b.tokens[0].spec.budgets = vec![policybind_crds::Budget {
            period: policybind_crds::BudgetPeriod::Day,
            max_cost_usd: Some(bad),
            max_tokens: None,
            time_zone: "UTC".into(),
            window: Default::default(),
        }];
        let errors = PolicySet::compile(&b).unwrap_err().0;
        let at = |resource: &str, field: &str| {
            errors
                .iter()
                .any(|e| e.resource == resource && e.field == field && e.reason.contains("finite"))
        };
        assert!(
            at(
                "ModelDeployment ai/gpt-4o",
                "spec.pricing.outputPer1kTokensUsd"
            ),
            "{bad}: {errors:?}"
        );
        assert!(
            at("AccessToken ns/alice", "spec.budgets[0].maxCostUsd"),
            "{bad}: {errors:?}"
        );
    }
}

#[test]
fn contradictory_rules_at_the_same_priority_are_rejected() {
    let mut deny = rule("deny-gpt", Effect::Deny);
    deny.match_.models = vec!["gpt-4o".into()];
    let mut allow = rule("allow-gpt", Effect::Allow);
    allow.match_.models = vec!["gpt-4o".into()];
    let errors = PolicySet::compile(&bundle(vec![
        cluster_policy("a", 100, vec![deny.clone()]),
        cluster_policy("b", 100, vec![allow.clone()]),
    ]))
    .unwrap_err();
    assert!(errors.to_string().contains("conflicts with"), "{errors}");
    // Different priorities say which one wins: accepted.
    assert!(
        PolicySet::compile(&bundle(vec![
            cluster_policy("a", 200, vec![deny]),
            cluster_policy("b", 100, vec![allow]),
        ]))
        .is_ok()
    );
}

#[test]
fn fingerprint_ignores_listing_order() {
    let a = bundle(vec![
        cluster_policy("x", 1, vec![rule("r", Effect::Allow)]),
        cluster_policy("y", 2, vec![rule("r", Effect::Deny)]),
    ]);
    let mut b = a.clone();
    b.policies.reverse();
    b.tokens.reverse();
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_eq!(
        set(a.policies.clone())
            .decide(&request("alice", "gpt-4o"))
            .fingerprint,
        a.fingerprint()
    );
}

// ---- property tests ----

fn arb_effect() -> impl Strategy<Value = Effect> {
    prop_oneof![
        Just(Effect::Allow),
        Just(Effect::Deny),
        Just(Effect::Redact),
        Just(Effect::RequireApproval),
        Just(Effect::Degrade),
    ]
}

prop_compose! {
    fn arb_rule(i: usize)(effect in arb_effect(), team in prop::option::of(prop_oneof![Just("marketing"), Just("research"), Just("ops")]),
                          model in prop::option::of(prop_oneof![Just("gpt-*"), Just("llama"), Just("*o")]),
                          min_class in prop::option::of(prop_oneof![Just(DataClassification::Internal), Just(DataClassification::Confidential)]),
                          tokens_above in prop::option::of(0u64..400),
                          excluded_team in prop::option::of(prop_oneof![Just("marketing"), Just("research")])) -> policybind_crds::PolicyRule {
        let mut r = rule(&format!("r{i}"), effect);
        r.exclude = excluded_team.map(|t| RuleExclude { teams: vec![t.to_string()], ..Default::default() });
        if let Some(t) = team { r.match_.teams = vec![t.to_string()]; }
        if let Some(m) = model { r.match_.models = vec![m.to_string()]; }
        r.match_.min_data_classification = min_class;
        r.conditions.estimated_tokens_above = tokens_above;
        if effect == Effect::Degrade { r.degrade = Some(DegradeAction { model: Some("llama".into()), max_tokens: None }); }
        r
    }
}

fn arb_policies() -> impl Strategy<Value = Vec<policybind_engine::bundle::BundlePolicy>> {
    prop::collection::vec((0i32..4, prop::collection::vec(0usize..1, 1..4)), 1..6).prop_flat_map(
        |specs| {
            let strategies: Vec<_> = specs
                .into_iter()
                .enumerate()
                .map(|(p, (priority, rules))| {
                    let n = rules.len();
                    prop::collection::vec(arb_rule(p), n..=n).prop_map(move |mut rs| {
                        for (i, r) in rs.iter_mut().enumerate() {
                            r.name = format!("p{p}-r{i}");
                        }
                        cluster_policy(&format!("p{p}"), priority * 100, rs)
                    })
                })
                .collect();
            strategies
        },
    )
}

fn arb_request() -> impl Strategy<Value = policybind_engine::Request> {
    (
        prop_oneof![Just("alice"), Just("bob")],
        prop_oneof![Just("gpt-4o"), Just("llama")],
        prop_oneof![
            Just(DataClassification::Public),
            Just(DataClassification::Internal),
            Just(DataClassification::Confidential)
        ],
        0u64..300,
    )
        .prop_map(|(t, m, c, n)| {
            let mut r = request(t, m);
            r.data_classification = Some(c);
            r.estimated_input_tokens = n;
            r
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Same request, same set: same decision, and the indexed path agrees with the
    /// exhaustive explain path.
    #[test]
    fn decisions_are_deterministic_and_the_index_is_exact(policies in arb_policies(), req in arb_request()) {
        let Ok(s) = PolicySet::compile(&bundle(policies.clone())) else { return Ok(()); };
        let again = PolicySet::compile(&bundle(policies)).unwrap();
        let d = s.decide(&req);
        prop_assert_eq!(&d, &s.decide(&req));
        prop_assert_eq!(&d, &again.decide(&req));
        prop_assert_eq!(&d, &s.decide_explained(&req).0);
    }

    /// Adding a rule in a new lower-priority policy never changes a decision that a
    /// higher-priority rule made.
    #[test]
    fn a_lower_priority_rule_never_changes_a_higher_decision(policies in arb_policies(), extra in arb_rule(99), req in arb_request()) {
        let Ok(s) = PolicySet::compile(&bundle(policies.clone())) else { return Ok(()); };
        let before = s.decide(&req);
        prop_assume!(before.policy.is_some());
        let mut more = policies;
        more.push(cluster_policy("zz-lower", -1, vec![extra]));
        let Ok(s2) = PolicySet::compile(&bundle(more)) else { return Ok(()); };
        let after = s2.decide(&req);
        prop_assert_eq!(before.effect, after.effect);
        prop_assert_eq!(before.policy, after.policy);
        prop_assert_eq!(before.rule, after.rule);
        prop_assert_eq!(before.codes, after.codes);
    }
}

/// A bundle where alice's daily budget of $1 and 10,000 tokens is spent on
/// cost, with a free self-hosted model beside the priced one.
fn spent_on_cost(cost_only: bool) -> PolicySet {
    let mut b = bundle(vec![cluster_policy(
        "allow",
        100,
        vec![rule("all", Effect::Allow)],
    )]);
    b.models[1].spec.pricing = Some(policybind_crds::Pricing {
        input_per1k_tokens_usd: 0.0,
        output_per1k_tokens_usd: 0.0,
    });
    b.tokens[0].spec.budgets = vec![policybind_crds::Budget {
        period: policybind_crds::BudgetPeriod::Day,
        max_cost_usd: Some(1.0),
        max_tokens: Some(10_000),
        time_zone: "UTC".into(),
        window: Default::default(),
    }];
    b.tokens[0].exhausted = true;
    b.tokens[0].exhausted_cost_only = cost_only;
    PolicySet::compile(&b).unwrap()
}

#[test]
fn a_model_priced_at_zero_stays_usable_when_only_cost_limits_are_spent() {
    let s = spent_on_cost(true);
    assert_eq!(s.decide(&request("alice", "llama")).effect, Effect::Allow);
    assert_eq!(
        s.decide(&request("alice", "gpt-4o")).code(),
        codes::BUDGET_EXCEEDED
    );
    // A token limit used up refuses every model, free or not.
    let s = spent_on_cost(false);
    assert_eq!(
        s.decide(&request("alice", "llama")).code(),
        codes::BUDGET_EXCEEDED
    );
}

#[test]
fn a_spent_cost_budget_in_the_request_usage_does_not_refuse_a_free_model() {
    let mut s_bundle = bundle(vec![cluster_policy(
        "allow",
        100,
        vec![rule("all", Effect::Allow)],
    )]);
    s_bundle.models[1].spec.pricing = None;
    s_bundle.tokens[0].spec.budgets = vec![policybind_crds::Budget {
        period: policybind_crds::BudgetPeriod::Day,
        max_cost_usd: Some(1.0),
        max_tokens: None,
        time_zone: "UTC".into(),
        window: Default::default(),
    }];
    let s = PolicySet::compile(&s_bundle).unwrap();
    let spent = |model: &str| {
        let mut r = request("alice", model);
        r.usage = vec![policybind_engine::request::UsageSoFar {
            period: policybind_crds::BudgetPeriod::Day,
            cost_usd: 1.5,
            tokens: 0,
        }];
        r
    };
    assert_eq!(s.decide(&spent("llama")).effect, Effect::Allow);
    assert_eq!(s.decide(&spent("gpt-4o")).code(), codes::BUDGET_EXCEEDED);
}
