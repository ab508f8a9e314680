//! `policybind test`: policy tests for CI, in the spirit of `kyverno test`.
//!
//! Every `PolicyTest` document found under the paths is run against the policy
//! set built from all other manifests under the same paths. Each case names a
//! request and the expected effect (and optionally codes, policy, rule, degrade
//! model, redacted entities, audit-mode result). A case may also give a model
//! `response` and state what the rules on Response do to it (`expect.response`).
//!
//! Cases run in isolation: each one is decided from a fresh request built from
//! its own fields and its test's `defaults`, against an immutable policy set, so
//! nothing one case states (an approval, settled usage, a time) reaches another,
//! and a case gives the same result alone (`--case`) as in the whole run.
//!
//! Results go to stdout as a table (default) or JSON (`--output json`), and
//! optionally to files as JSON (`--json`) and JUnit XML (`--junit`), which
//! GitLab, Jenkins and GitHub test reporters read.
//!
//! Exit status: 0 every selected case passed; 1 a case failed; 2 the run could
//! not be made (inputs unreadable, policies not compiling, no PolicyTest, no case
//! selected, a case whose request is invalid, a report that cannot be written).

mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use policybind_engine::manifest::{Expectation, Manifests, PolicyTest, Source, TestCase};
use policybind_engine::request::Decision;
use policybind_engine::{OutputAction, PolicySet};
use regex::Regex;

use report::{CaseReport, CaseResult, PolicySetSummary, Report};

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Files or directories holding manifests and PolicyTest documents.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Print every case in the table, not only failures and the summary.
    #[arg(short, long)]
    verbose: bool,
    /// Run only cases whose `TEST/CASE` name (the PolicyTest's name, a slash, the
    /// case's name) matches this regular expression, unanchored, as `go test -run`:
    /// `--run redact`, `--run '^baseline/'`, `--run 'legal|expired'`.
    #[arg(long, value_name = "REGEX")]
    run: Option<String>,
    /// Run only the case with exactly this name; repeat for several. With `--run`,
    /// a case must satisfy both.
    #[arg(long = "case", value_name = "NAME")]
    cases: Vec<String>,
    /// What stdout shows: `table` (default) or `json` (the same document as `--json`).
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also write the results as JUnit XML to FILE: one testsuite per PolicyTest,
    /// one testcase per case, `<failure message=...>` with expected vs actual.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OutputFormat {
    Table,
    Json,
}

/// Which cases run: `--run` and `--case` together.
struct Selection {
    pattern: Option<Regex>,
    names: Vec<String>,
}

impl Selection {
    fn new(pattern: Option<&str>, names: &[String]) -> anyhow::Result<Selection> {
        let pattern = pattern
            .map(Regex::new)
            .transpose()
            .context("--run is not a valid regular expression")?;
        Ok(Selection {
            pattern,
            names: names.to_vec(),
        })
    }

    fn is_filtering(&self) -> bool {
        self.pattern.is_some() || !self.names.is_empty()
    }

    fn selects(&self, test: &str, case: &str) -> bool {
        self.pattern
            .as_ref()
            .is_none_or(|p| p.is_match(&format!("{test}/{case}")))
            && (self.names.is_empty() || self.names.iter().any(|n| n == case))
    }
}

pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let selection = Selection::new(args.run.as_deref(), &args.cases)?;
    let report = match load(&args.paths) {
        Ok((set, tests)) => run_cases(&set, &tests, &selection),
        Err(error) => Report::not_run(format!("{error:#}")),
    };
    if let Some(path) = &args.junit {
        write_file(path, &report.junit()?)?;
    }
    if let Some(path) = &args.json {
        write_file(path, &report.json()?)?;
    }
    match args.output {
        OutputFormat::Json => println!("{}", report.json()?),
        OutputFormat::Table => print_table(&report, args.verbose),
    }
    if let Some(error) = &report.error {
        eprintln!("error: {error}");
    }
    Ok(ExitCode::from(report.exit_code()))
}

fn write_file(path: &Path, content: &str) -> anyhow::Result<()> {
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}

/// Reads the manifests, compiles the policy set and collects the tests.
fn load(paths: &[PathBuf]) -> anyhow::Result<(PolicySet, Vec<(Source, PolicyTest)>)> {
    let manifests: Manifests = crate::load::manifests(paths)?;
    let tests: Vec<(Source, PolicyTest)> = manifests
        .tests()
        .map(|(source, test)| (source.clone(), test.clone()))
        .collect();
    if tests.is_empty() {
        anyhow::bail!("no PolicyTest documents found under the given paths");
    }
    for (source, test) in &tests {
        if let Some(note) = test.deprecation() {
            eprintln!("note: {source}: {note}");
        }
    }
    let set = PolicySet::compile(&manifests.bundle(None))
        .map_err(|e| anyhow::anyhow!("policies do not compile:\n{e}"))?;
    Ok((set, tests))
}

/// Runs every selected case, each from its own fresh request.
fn run_cases(set: &PolicySet, tests: &[(Source, PolicyTest)], selection: &Selection) -> Report {
    let (rules, policies, models, tokens) = set.counts();
    let mut report = Report::new(PolicySetSummary {
        fingerprint: set.fingerprint().to_string(),
        policies,
        rules,
        models,
        tokens,
    });
    let mut available = 0;
    for (source, test) in tests {
        for case in &test.cases {
            available += 1;
            if !selection.selects(&test.metadata.name, &case.name) {
                continue;
            }
            report.push(run_case(set, source, test, case));
        }
    }
    report.available = available;
    if report.cases.is_empty() {
        report.error = Some(if selection.is_filtering() {
            format!("no case matches the selection (--run / --case) among {available} cases")
        } else {
            "the PolicyTest documents hold no cases".to_string()
        });
    }
    report
}

fn run_case(set: &PolicySet, source: &Source, test: &PolicyTest, case: &TestCase) -> CaseReport {
    let started = Instant::now();
    let (result, decision) = match case.resolved_request(&test.defaults) {
        Err(error) => (CaseResult::Error(error), None),
        Ok(request) => {
            let decision = set.decide(&request);
            let mut differences = compare(&case.expect, &decision);
            differences.extend(compare_response(set, case, &request));
            let result = if differences.is_empty() {
                CaseResult::Pass
            } else {
                CaseResult::Fail(differences)
            };
            (result, Some(decision))
        }
    };
    CaseReport {
        test: test.metadata.name.clone(),
        case: case.name.clone(),
        source: source.to_string(),
        file: source.path.clone(),
        result,
        decision,
        duration: started.elapsed(),
    }
}

fn print_table(report: &Report, verbose: bool) {
    if let Some(set) = &report.policy_set {
        println!(
            "policy set {}: {} policies, {} rules, {} models, {} tokens",
            set.fingerprint, set.policies, set.rules, set.models, set.tokens
        );
    }
    if report.cases.is_empty() {
        return;
    }
    if report.cases.len() < report.available {
        println!(
            "\n{} of {} cases selected",
            report.cases.len(),
            report.available
        );
    }
    let width = report
        .cases
        .iter()
        .map(|c| c.test.len() + c.case.len() + 3)
        .max()
        .unwrap_or(10)
        .min(90);
    if verbose || report.summary.passed < report.cases.len() {
        println!("\n{:<4} {:<width$} RESULT", "#", "TEST / CASE");
    }
    for (i, c) in report.cases.iter().enumerate() {
        let name = format!("{} / {}", c.test, c.case);
        let (label, lines): (&str, Vec<&str>) = match &c.result {
            CaseResult::Pass => ("pass", vec![]),
            CaseResult::Fail(differences) => {
                ("FAIL", differences.iter().map(String::as_str).collect())
            }
            CaseResult::Error(error) => ("ERROR", vec![error.as_str()]),
        };
        if label != "pass" || verbose {
            println!("{:<4} {:<width$} {label}", i + 1, name);
        }
        for line in lines.iter().flat_map(|l| l.lines()) {
            println!("       {line}");
        }
    }
    let summary = &report.summary;
    // "N passed, N failed" alone on a line: what CI log readers count. Errors are failures.
    println!(
        "\n{} passed, {} failed",
        summary.passed,
        summary.failed + summary.errors
    );
    if summary.errors > 0 {
        println!(
            "({} of the failed could not run: see ERROR)",
            summary.errors
        );
    }
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
    compare_obligations(expect, d, &mut out);
    out
}

fn compare_obligations(expect: &Expectation, d: &Decision, out: &mut Vec<String>) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use policybind_engine::manifest::parse_documents;

    /// A policy that holds confidential data for approval, a token with a daily
    /// budget, and cases that each state their own approval, usage and time.
    const FIXTURE: &str = r#"
apiVersion: policybind.io/v1alpha1
kind: ModelDeployment
metadata: {name: m, namespace: a}
spec: {provider: p, model: m, owner: o, team: t, maxDataClassification: Confidential,
       pricing: {inputPer1kTokensUsd: 1, outputPer1kTokensUsd: 1}}
---
apiVersion: policybind.io/v1alpha1
kind: AccessToken
metadata: {name: t, namespace: a}
spec:
  subject: {kind: User, name: u}
  team: x
  allowedModels: [m]
  maxDataClassification: Confidential
  budgets: [{period: Day, maxCostUsd: 1, timeZone: UTC}]
  expiresAt: "2026-06-01T00:00:00Z"
---
apiVersion: policybind.io/v1alpha1
kind: AIPolicy
metadata: {name: p, namespace: a}
spec:
  rules:
    - {name: hold, match: {minDataClassification: Confidential}, action: RequireApproval}
    - {name: allow, action: Allow}
---
apiVersion: cli.policybind.io/v1alpha1
kind: PolicyTest
metadata: {name: isolation}
defaults: {token: a/t, model: m, time: "2026-05-01T10:00:00Z", estimatedInputTokens: 100}
cases:
  - name: approved
    request: {dataClassification: Confidential, approved: true}
    expect: {effect: Allow, codes: [APPROVAL_GRANTED]}
  - name: not approved
    request: {dataClassification: Confidential}
    expect: {effect: RequireApproval}
  - name: budget used up
    request: {usage: [{period: Day, costUsd: 0.95}]}
    expect: {effect: Deny, codes: [BUDGET_EXCEEDED]}
  - name: fresh budget
    request: {}
    expect: {effect: Allow}
  - name: after expiry
    request: {time: "2026-07-01T00:00:00Z"}
    expect: {effect: Deny, codes: [TOKEN_EXPIRED]}
  - name: default time again
    request: {}
    expect: {effect: Allow}
"#;

    fn fixture() -> (PolicySet, Vec<(Source, PolicyTest)>) {
        let mut manifests = Manifests::default();
        manifests.extend(parse_documents("fixture.yaml", FIXTURE).unwrap());
        let tests = manifests
            .tests()
            .map(|(s, t)| (s.clone(), t.clone()))
            .collect();
        (PolicySet::compile(&manifests.bundle(None)).unwrap(), tests)
    }

    fn outcome(report: &Report) -> Vec<(String, CaseResult)> {
        report
            .cases
            .iter()
            .map(|c| (c.case.clone(), c.result.clone()))
            .collect()
    }

    fn everything() -> Selection {
        Selection::new(None, &[]).unwrap()
    }

    #[test]
    fn state_a_case_states_never_reaches_the_next_case() {
        let (set, tests) = fixture();
        let report = run_cases(&set, &tests, &everything());
        let failed: Vec<_> = report
            .cases
            .iter()
            .filter(|c| c.result != CaseResult::Pass)
            .map(|c| (&c.case, &c.result))
            .collect();
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(report.summary.passed, 6);
    }

    #[test]
    fn every_case_gives_the_same_result_alone_and_in_reverse_order() {
        let (set, mut tests) = fixture();
        let forward = outcome(&run_cases(&set, &tests, &everything()));
        tests[0].1.cases.reverse();
        let mut backward = outcome(&run_cases(&set, &tests, &everything()));
        backward.reverse();
        assert_eq!(forward, backward);
        for (name, result) in &forward {
            let alone = Selection::new(None, std::slice::from_ref(name)).unwrap();
            let report = run_cases(&set, &tests, &alone);
            assert_eq!(outcome(&report), vec![(name.clone(), result.clone())]);
        }
    }

    #[test]
    fn run_matches_test_slash_case_and_case_matches_exactly() {
        let (set, tests) = fixture();
        let names = |selection: Selection| -> Vec<String> {
            run_cases(&set, &tests, &selection)
                .cases
                .into_iter()
                .map(|c| c.case)
                .collect()
        };
        assert_eq!(
            names(Selection::new(Some("budget"), &[]).unwrap()),
            ["budget used up", "fresh budget"]
        );
        assert_eq!(
            names(Selection::new(Some("^isolation/approved$"), &[]).unwrap()),
            ["approved"]
        );
        assert_eq!(
            names(Selection::new(Some("budget"), &["fresh budget".into()]).unwrap()),
            ["fresh budget"]
        );
        let none = run_cases(
            &set,
            &tests,
            &Selection::new(Some("no such case"), &[]).unwrap(),
        );
        assert_eq!(
            none.exit_code(),
            2,
            "a selection that runs nothing is an error"
        );
        assert!(Selection::new(Some("("), &[]).is_err());
    }
}
