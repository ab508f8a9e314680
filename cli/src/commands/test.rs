//! `policybind test`: policy tests for CI, in the spirit of `kyverno test`.
//!
//! Every `PolicyTest` document found under the paths is run against the policy
//! set built from all other manifests under the same paths. Each case names a
//! request and the expected effect (and optionally codes, policy, rule, degrade
//! model, redacted entities, audit-mode result). Exit status: 0 all passed, 1 a
//! case failed, 2 the inputs could not be read or compiled.

use std::path::PathBuf;
use std::process::ExitCode;

use policybind_engine::manifest::{Expectation, PolicyTest, TestCase};
use policybind_engine::request::Decision;
use policybind_engine::{OutputAction, PolicySet};

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Files or directories holding manifests and PolicyTest documents.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Print every case, not only failures and the summary table.
    #[arg(short, long)]
    verbose: bool,
    /// Run only cases whose name contains this text.
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
}

struct Outcome {
    test: String,
    case: String,
    passed: bool,
    detail: String,
}

pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let manifests = crate::load::manifests(&args.paths)?;
    let tests: Vec<(String, PolicyTest)> = manifests
        .tests()
        .map(|(source, t)| (source.to_string(), t.clone()))
        .collect();
    if tests.is_empty() {
        anyhow::bail!("no PolicyTest documents found under the given paths");
    }
    let bundle = manifests.bundle(None);
    let set = PolicySet::compile(&bundle)
        .map_err(|e| anyhow::anyhow!("policies do not compile:\n{e}"))?;
    let (rules, policies, models, tokens) = set.counts();
    println!(
        "policy set {}: {policies} policies, {rules} rules, {models} models, {tokens} tokens\n",
        set.fingerprint()
    );

    let mut outcomes = vec![];
    for (source, test) in &tests {
        if test.kind != "PolicyTest" {
            continue;
        }
        for case in &test.cases {
            if args
                .filter
                .as_ref()
                .is_some_and(|f| !case.name.contains(f.as_str()))
            {
                continue;
            }
            let outcome = match case.resolved_request(&test.defaults) {
                Err(e) => Outcome {
                    test: test.metadata.name.clone(),
                    case: case.name.clone(),
                    passed: false,
                    detail: format!("{source}: {e}"),
                },
                Ok(request) => {
                    let decision = set.decide(&request);
                    let mut mismatches = compare(&case.expect, &decision);
                    mismatches.extend(compare_response(&set, case, &request));
                    Outcome {
                        test: test.metadata.name.clone(),
                        case: case.name.clone(),
                        passed: mismatches.is_empty(),
                        detail: mismatches.join("\n"),
                    }
                }
            };
            outcomes.push(outcome);
        }
    }

    let width = outcomes
        .iter()
        .map(|o| o.test.len() + o.case.len() + 3)
        .max()
        .unwrap_or(10)
        .min(90);
    println!("{:<4} {:<width$} RESULT", "#", "TEST / CASE");
    for (i, o) in outcomes.iter().enumerate() {
        let name = format!("{} / {}", o.test, o.case);
        if !o.passed || args.verbose {
            println!(
                "{:<4} {:<width$} {}",
                i + 1,
                name,
                if o.passed { "pass" } else { "FAIL" }
            );
        }
        if !o.passed {
            for line in o.detail.lines() {
                println!("       {line}");
            }
        }
    }
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    let passed = outcomes.len() - failed;
    println!("\n{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Judges the case's response, if it has one, and compares what the case
/// states of it.
fn compare_response(
    set: &PolicySet,
    case: &TestCase,
    request: &policybind_engine::Request,
) -> Vec<String> {
    let (Some(response), Some(expect)) = (&case.response, &case.expect.response) else {
        return match (&case.response, &case.expect.response) {
            (None, Some(_)) => vec!["expect.response given but the case has no response".into()],
            _ => vec![],
        };
    };
    let d = set.decide_output(request, &set.scan(response));
    let mut out = vec![];
    if d.action != expect.action {
        out.push(format!(
            "response: expected {:?}, got {:?} ({})",
            expect.action, d.action, d.message
        ));
    }
    // A passed response has no deciding code: its codes are only detector codes.
    if let Some(first) = expect.codes.first()
        && expect.action != OutputAction::Pass
        && d.code() != first
    {
        out.push(format!(
            "response deciding code: expected {first}, got {}",
            d.code()
        ));
    }
    for code in &expect.codes {
        if !d.codes.contains(code) {
            out.push(format!(
                "response codes: expected {code} among [{}]",
                d.codes.join(", ")
            ));
        }
    }
    if let Some(r) = &expect.rule
        && d.rule.as_ref() != Some(r)
    {
        out.push(format!(
            "response rule: expected {r}, got {}",
            d.rule.as_deref().unwrap_or("(none)")
        ));
    }
    if let Some(text) = &expect.text {
        let delivered = d.apply(response);
        if delivered.as_ref() != Some(text) {
            out.push(format!(
                "response text: expected {text:?}, got {}",
                delivered.map_or_else(|| "(blocked)".to_owned(), |t| format!("{t:?}"))
            ));
        }
    }
    out
}

/// Compares only what the case states; returns one line per difference.
fn compare(expect: &Expectation, d: &Decision) -> Vec<String> {
    let mut out = vec![];
    if expect.effect != d.effect {
        out.push(format!(
            "effect: expected {}, got {} ({})",
            expect.effect, d.effect, d.message
        ));
    }
    if let Some(first) = expect.codes.first()
        && d.code() != first
    {
        out.push(format!("deciding code: expected {first}, got {}", d.code()));
    }
    for code in &expect.codes {
        if !d.codes.contains(code) {
            out.push(format!(
                "codes: expected {code} among [{}]",
                d.codes.join(", ")
            ));
        }
    }
    if let Some(p) = &expect.policy
        && d.policy.as_ref() != Some(p)
    {
        out.push(format!(
            "policy: expected {p}, got {}",
            d.policy.as_deref().unwrap_or("(none)")
        ));
    }
    if let Some(r) = &expect.rule
        && d.rule.as_ref() != Some(r)
    {
        out.push(format!(
            "rule: expected {r}, got {}",
            d.rule.as_deref().unwrap_or("(none)")
        ));
    }
    if let Some(m) = &expect.degraded_model
        && d.obligations.model.as_ref() != Some(m)
    {
        out.push(format!(
            "degraded model: expected {m}, got {}",
            d.obligations.model.as_deref().unwrap_or("(none)")
        ));
    }
    for entity in &expect.redacted {
        let redacts = d
            .obligations
            .redact
            .as_ref()
            .is_some_and(|r| r.entities.is_empty() || r.entities.contains(entity))
            && d.findings.iter().any(|f| &f.entity == entity);
        if !redacts {
            out.push(format!(
                "redaction: expected {entity} to be found and redacted"
            ));
        }
    }
    if let Some(w) = expect.would_have {
        let got = d.would_have.as_ref().map(|w| w.effect);
        if got != Some(w) {
            out.push(format!(
                "audit mode: expected would-have {w}, got {}",
                got.map(|e| e.to_string())
                    .unwrap_or_else(|| "(none)".into())
            ));
        }
    }
    out
}
