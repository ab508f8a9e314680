//! One line per check, and how the lines are printed.

use serde::Serialize;

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    /// Works now but needs attention soon (a certificate near expiry, a sidecar
    /// still loading the newest bundle). Exit 0 unless `--fail-on-warning`.
    Warn,
    Fail,
}

/// One printed line: a check, its verdict and, unless it passed, what is wrong
/// and the command that shows or fixes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckLine {
    /// The group heading: `crds`, `webhook`, `operator`, `bundles`, `sidecars`, `audit`.
    pub group: &'static str,
    pub verdict: Verdict,
    /// What was checked, as a sentence that holds when the check passes.
    pub check: String,
    /// What is wrong (absent when passed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The command to run (absent when passed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

impl CheckLine {
    pub fn pass(group: &'static str, check: impl Into<String>) -> Self {
        CheckLine {
            group,
            verdict: Verdict::Pass,
            check: check.into(),
            problem: None,
            run: None,
        }
    }

    pub fn fail(
        group: &'static str,
        check: impl Into<String>,
        problem: impl Into<String>,
        run: impl Into<String>,
    ) -> Self {
        CheckLine {
            group,
            verdict: Verdict::Fail,
            check: check.into(),
            problem: Some(problem.into()),
            run: Some(run.into()),
        }
    }

    pub fn warn(
        group: &'static str,
        check: impl Into<String>,
        problem: impl Into<String>,
        run: impl Into<String>,
    ) -> Self {
        CheckLine {
            verdict: Verdict::Warn,
            ..CheckLine::fail(group, check, problem, run)
        }
    }
}

/// Group headings in print order.
pub const GROUPS: [(&str, &str); 6] = [
    ("crds", "CustomResourceDefinitions"),
    ("webhook", "Admission webhook"),
    ("operator", "Operator"),
    ("bundles", "Policy bundles"),
    ("sidecars", "Sidecars"),
    ("audit", "Audit keys"),
];

/// Marks for the three verdicts, Unicode or plain ASCII.
fn mark(verdict: Verdict, ascii: bool) -> &'static str {
    match (verdict, ascii) {
        (Verdict::Pass, false) => "✓",
        (Verdict::Warn, false) => "‼",
        (Verdict::Fail, false) => "×",
        (Verdict::Pass, true) => "[ok]",
        (Verdict::Warn, true) => "[warn]",
        (Verdict::Fail, true) => "[FAIL]",
    }
}

/// The text report: a heading per group, one line per check, and under every
/// line that did not pass what is wrong and what to run.
pub fn render_text(lines: &[CheckLine], ascii: bool) -> String {
    let mut out = String::new();
    for (group, heading) in GROUPS {
        let in_group: Vec<&CheckLine> = lines.iter().filter(|l| l.group == group).collect();
        if in_group.is_empty() {
            continue;
        }
        out.push_str(heading);
        out.push('\n');
        out.push_str(&"-".repeat(heading.len()));
        out.push('\n');
        for line in in_group {
            out.push_str(&format!("{} {}\n", mark(line.verdict, ascii), line.check));
            if let Some(problem) = &line.problem {
                out.push_str(&format!("    {problem}\n"));
            }
            if let Some(run) = &line.run {
                out.push_str(&format!("    run: {run}\n"));
            }
        }
        out.push('\n');
    }
    let (failed, warned) = counts(lines);
    let status = match (failed, warned) {
        (0, 0) => format!(
            "{} all {} checks passed",
            mark(Verdict::Pass, ascii),
            lines.len()
        ),
        (0, w) => format!("{} {w} warning(s), no failure", mark(Verdict::Warn, ascii)),
        (f, w) => format!(
            "{} {f} check(s) failed, {w} warning(s)",
            mark(Verdict::Fail, ascii)
        ),
    };
    out.push_str(&format!("Status: {status}\n"));
    out
}

/// Failures and warnings.
pub fn counts(lines: &[CheckLine]) -> (usize, usize) {
    let failed = lines.iter().filter(|l| l.verdict == Verdict::Fail).count();
    let warned = lines.iter().filter(|l| l.verdict == Verdict::Warn).count();
    (failed, warned)
}

/// The JSON report: `{"passed": bool, "failures": n, "warnings": n, "checks": [...]}`.
pub fn render_json(lines: &[CheckLine]) -> String {
    let (failures, warnings) = counts(lines);
    serde_json::to_string_pretty(&serde_json::json!({
        "passed": failures == 0,
        "failures": failures,
        "warnings": warnings,
        "checks": lines,
    }))
    .expect("check lines always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_prints_what_is_wrong_and_what_to_run_in_either_alphabet() {
        let lines = vec![
            CheckLine::pass("crds", "aipolicies.policybind.io serves v1alpha1"),
            CheckLine::fail("bundles", "bundle of team-a", "missing", "kubectl get cm"),
        ];
        let text = render_text(&lines, false);
        assert!(text.contains("✓ aipolicies.policybind.io serves v1alpha1\n"));
        assert!(text.contains("× bundle of team-a\n    missing\n    run: kubectl get cm\n"));
        assert!(text.contains("Status: × 1 check(s) failed, 0 warning(s)"));
        let ascii = render_text(&lines, true);
        assert!(ascii.is_ascii(), "{ascii}");
        assert!(ascii.contains("[FAIL] bundle of team-a"));
        let json: serde_json::Value = serde_json::from_str(&render_json(&lines)).unwrap();
        assert_eq!(json["passed"], false);
        assert_eq!(json["checks"][1]["verdict"], "fail");
        assert_eq!(json["checks"][1]["run"], "kubectl get cm");
        assert!(json["checks"][0].get("problem").is_none());
    }
}
