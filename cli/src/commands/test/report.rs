//! The results of one `policybind test` run, and their JSON and JUnit XML forms.
//!
//! JUnit XML has no single standard; this writes the subset every common CI
//! reader takes (GitLab's test reports, Jenkins' JUnit plugin, GitHub actions
//! that publish test results): `<testsuites>` with totals, one `<testsuite>` per
//! PolicyTest document (`name`, `tests`, `failures`, `errors`, `skipped`, `time`,
//! `file`), one `<testcase>` per case (`name`, `classname` = the test's name,
//! `file`, `time`), and in a failed case `<failure message="first difference"
//! type="PolicyMismatch">` with every difference and the actual decision as text;
//! a case that could not run has `<error>` instead. A run that could not start
//! (unreadable inputs, policies not compiling) is one testcase with an `<error>`,
//! so the CI page shows why rather than no report. The output validates against
//! the schema of Jenkins' xunit plugin (`junit-10.xsd`), the strictest of them.

use std::time::Duration;

use policybind_engine::request::Decision;
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText, Event};
use serde::Serialize;

/// The policy set the cases ran against.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySetSummary {
    pub fingerprint: String,
    pub policies: usize,
    pub rules: usize,
    pub models: usize,
    pub tokens: usize,
}

/// How one case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseResult {
    Pass,
    /// The decision differed from `expect`: one line per difference.
    Fail(Vec<String>),
    /// The case could not run (its request is invalid).
    Error(String),
}

/// One case's result.
#[derive(Debug, Clone)]
pub struct CaseReport {
    pub test: String,
    pub case: String,
    /// File and document, for messages.
    pub source: String,
    /// File alone, for JUnit's `file` attribute.
    pub file: String,
    pub result: CaseResult,
    pub decision: Option<Decision>,
    pub duration: Duration,
}

/// Counts over the cases run.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub total: usize,
    pub passed: usize,
    pub failed: usize,
    pub errors: usize,
}

/// A whole run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub policy_set: Option<PolicySetSummary>,
    /// Cases found, selected or not.
    pub available: usize,
    pub cases: Vec<CaseReport>,
    pub summary: Summary,
    /// Why the run could not be made, if it could not.
    pub error: Option<String>,
}

impl Report {
    pub fn new(policy_set: PolicySetSummary) -> Report {
        Report {
            policy_set: Some(policy_set),
            ..Default::default()
        }
    }

    /// A run that could not start.
    pub fn not_run(error: String) -> Report {
        Report {
            error: Some(error),
            ..Default::default()
        }
    }

    pub fn push(&mut self, case: CaseReport) {
        self.summary.total += 1;
        match case.result {
            CaseResult::Pass => self.summary.passed += 1,
            CaseResult::Fail(_) => self.summary.failed += 1,
            CaseResult::Error(_) => self.summary.errors += 1,
        }
        self.cases.push(case);
    }

    /// 0 all passed, 1 a case failed, 2 the run (or a case) could not be made.
    pub fn exit_code(&self) -> u8 {
        if self.error.is_some() || self.summary.errors > 0 {
            2
        } else if self.summary.failed > 0 {
            1
        } else {
            0
        }
    }

    fn total_seconds(&self) -> f64 {
        self.cases.iter().map(|c| c.duration.as_secs_f64()).sum()
    }
}

// ---------------------------------------------------------------- JSON

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonReport<'a> {
    policy_set: &'a Option<PolicySetSummary>,
    summary: &'a Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: &'a Option<String>,
    cases: Vec<JsonCase<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonCase<'a> {
    test: &'a str,
    case: &'a str,
    source: &'a str,
    /// `pass`, `fail` or `error`.
    result: &'static str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    differences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: &'a Option<Decision>,
    duration_seconds: f64,
}

impl Report {
    /// The run as one JSON document (`--json`, `--output json`).
    pub fn json(&self) -> anyhow::Result<String> {
        let cases = self
            .cases
            .iter()
            .map(|c| {
                let (result, differences, error): (_, &[String], _) = match &c.result {
                    CaseResult::Pass => ("pass", &[], None),
                    CaseResult::Fail(d) => ("fail", d, None),
                    CaseResult::Error(e) => ("error", &[], Some(e.as_str())),
                };
                JsonCase {
                    test: &c.test,
                    case: &c.case,
                    source: &c.source,
                    result,
                    differences,
                    error,
                    decision: &c.decision,
                    duration_seconds: c.duration.as_secs_f64(),
                }
            })
            .collect();
        Ok(serde_json::to_string_pretty(&JsonReport {
            policy_set: &self.policy_set,
            summary: &self.summary,
            error: &self.error,
            cases,
        })?)
    }
}

// ---------------------------------------------------------------- JUnit XML

/// XML 1.0 cannot carry most control characters, escaped or not; a case name or
/// message holding one would make the whole report unreadable.
fn xml_safe(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => '\u{FFFD}',
            c => c,
        })
        .collect()
}

fn seconds(duration: f64) -> String {
    format!("{duration:.6}")
}

/// The decision as a few lines, for a failure's text.
fn describe(decision: &Decision) -> String {
    format!(
        "got: effect {}, codes [{}], policy {}, rule {}\nmessage: {}",
        decision.effect,
        decision.codes.join(", "),
        decision.policy.as_deref().unwrap_or("(none)"),
        decision.rule.as_deref().unwrap_or("(none)"),
        decision.message
    )
}

type XmlResult = std::io::Result<()>;

impl Report {
    /// The run as JUnit XML (`--junit`).
    pub fn junit(&self) -> anyhow::Result<String> {
        let mut writer = Writer::new_with_indent(Vec::new(), b' ', 2);
        writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        let failures = self.summary.failed.to_string();
        let errors = (self.summary.errors + usize::from(self.error.is_some())).to_string();
        let tests = (self.summary.total + usize::from(self.error.is_some())).to_string();
        let time = seconds(self.total_seconds());
        writer
            .create_element("testsuites")
            .with_attributes([
                ("name", "policybind test"),
                ("tests", tests.as_str()),
                ("failures", failures.as_str()),
                ("errors", errors.as_str()),
                ("time", time.as_str()),
            ])
            .write_inner_content(|w| {
                if let Some(error) = &self.error {
                    write_setup_error(w, error)?;
                }
                for suite in self.suites() {
                    write_suite(w, &suite, self.policy_set.as_ref())?;
                }
                Ok(())
            })?;
        let mut xml = String::from_utf8(writer.into_inner())?;
        xml.push('\n');
        Ok(xml)
    }

    /// Cases grouped by PolicyTest document, in the order they ran.
    fn suites(&self) -> Vec<Vec<&CaseReport>> {
        let mut suites: Vec<Vec<&CaseReport>> = vec![];
        for case in &self.cases {
            match suites.last_mut() {
                Some(suite) if suite[0].test == case.test && suite[0].source == case.source => {
                    suite.push(case)
                }
                _ => suites.push(vec![case]),
            }
        }
        suites
    }
}

/// A one-line `message` attribute: CI pages show it as the headline.
fn headline(text: &str) -> String {
    let line: String = text
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    xml_safe(&line.chars().take(1000).collect::<String>())
}

fn write_setup_error(w: &mut Writer<Vec<u8>>, error: &str) -> XmlResult {
    let message = headline(error);
    w.create_element("testsuite")
        .with_attributes([
            ("name", "policybind"),
            ("tests", "1"),
            ("failures", "0"),
            ("errors", "1"),
            ("skipped", "0"),
            ("time", "0"),
        ])
        .write_inner_content(|w| {
            w.create_element("testcase")
                .with_attributes([
                    ("name", "read and compile the policy set"),
                    ("classname", "policybind"),
                    ("time", "0"),
                ])
                .write_inner_content(|w| {
                    w.create_element("error")
                        .with_attributes([("message", message.as_str()), ("type", "NotRun")])
                        .write_text_content(BytesText::new(&xml_safe(error)))?;
                    Ok(())
                })?;
            Ok(())
        })?;
    Ok(())
}

fn write_suite(
    w: &mut Writer<Vec<u8>>,
    cases: &[&CaseReport],
    policy_set: Option<&PolicySetSummary>,
) -> XmlResult {
    let first = cases[0];
    let count = |f: fn(&CaseResult) -> bool| cases.iter().filter(|c| f(&c.result)).count();
    let failures = count(|r| matches!(r, CaseResult::Fail(_))).to_string();
    let errors = count(|r| matches!(r, CaseResult::Error(_))).to_string();
    let tests = cases.len().to_string();
    let time = seconds(cases.iter().map(|c| c.duration.as_secs_f64()).sum());
    let (name, file) = (xml_safe(&first.test), xml_safe(&first.file));
    w.create_element("testsuite")
        .with_attributes([
            ("name", name.as_str()),
            ("tests", tests.as_str()),
            ("failures", failures.as_str()),
            ("errors", errors.as_str()),
            ("skipped", "0"),
            ("time", time.as_str()),
            ("file", file.as_str()),
        ])
        .write_inner_content(|w| {
            if let Some(set) = policy_set {
                w.create_element("properties").write_inner_content(|w| {
                    w.create_element("property")
                        .with_attributes([
                            ("name", "policySetFingerprint"),
                            ("value", set.fingerprint.as_str()),
                        ])
                        .write_empty()?;
                    Ok(())
                })?;
            }
            for case in cases {
                write_case(w, case)?;
            }
            Ok(())
        })?;
    Ok(())
}

fn write_case(w: &mut Writer<Vec<u8>>, case: &CaseReport) -> XmlResult {
    let (name, classname, file) = (
        xml_safe(&case.case),
        xml_safe(&case.test),
        xml_safe(&case.file),
    );
    let time = seconds(case.duration.as_secs_f64());
    let element = w.create_element("testcase").with_attributes([
        ("name", name.as_str()),
        ("classname", classname.as_str()),
        ("file", file.as_str()),
        ("time", time.as_str()),
    ]);
    let (kind, kind_type, message, body) = match &case.result {
        CaseResult::Pass => {
            element.write_empty()?;
            return Ok(());
        }
        CaseResult::Fail(differences) => {
            let mut body = differences.join("\n");
            if let Some(decision) = &case.decision {
                body.push_str("\n\n");
                body.push_str(&describe(decision));
            }
            body.push_str(&format!("\nsource: {}", case.source));
            ("failure", "PolicyMismatch", differences[0].clone(), body)
        }
        CaseResult::Error(error) => (
            "error",
            "InvalidCase",
            error.clone(),
            format!("{error}\nsource: {}", case.source),
        ),
    };
    let message = headline(&message);
    element.write_inner_content(|w| {
        w.create_element(kind)
            .with_attributes([("message", message.as_str()), ("type", kind_type)])
            .write_text_content(BytesText::new(&xml_safe(&body)))?;
        Ok(())
    })?;
    Ok(())
}
