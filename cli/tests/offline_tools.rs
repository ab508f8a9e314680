//! `policybind test`, `eval` and `crds` as a user runs them: real binary, real files,
//! exit codes that CI can rely on.

use std::path::Path;
use std::process::Command;

fn policybind() -> Command {
    Command::new(env!("CARGO_BIN_EXE_policybind"))
}

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn example_policy_tests_pass_with_exit_zero() {
    let out = policybind()
        .arg("test")
        .arg(repo().join("examples"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[test]
fn a_failing_case_exits_one_and_shows_expected_and_actual() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "models.yaml",
        "tokens.yaml",
        "approvals.yaml",
        "namespaces.yaml",
    ] {
        std::fs::copy(repo().join("examples").join(f), dir.path().join(f)).unwrap();
    }
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::copy(
        repo().join("examples/policies/cluster-baseline.yaml"),
        dir.path().join("policies/cluster-baseline.yaml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("wrong-test.yaml"),
        "apiVersion: cli.policybind.io/v1alpha1\nkind: PolicyTest\nmetadata: {name: wrong}\ncases:\n  - name: expects allow but the data boundary denies\n    request: {token: data-science/research-notebooks, model: gpt-4o, namespace: data-science, dataClassification: Confidential, time: '2026-11-23T10:00:00Z'}\n    expect: {effect: Allow}\n",
    )
    .unwrap();
    let out = policybind().arg("test").arg(dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("effect: expected Allow, got Deny"),
        "{stdout}"
    );
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");
}

#[test]
fn a_policy_that_does_not_compile_exits_two_naming_rule_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: policybind.io/v1alpha1\nkind: ClusterAIPolicy\nmetadata: {name: bad}\nspec:\n  rules:\n    - name: broken-cel\n      when: \"request.teem == 'x'\"\n      action: Deny\n---\napiVersion: cli.policybind.io/v1alpha1\nkind: PolicyTest\nmetadata: {name: t}\ncases: []\n",
    )
    .unwrap();
    let out = policybind().arg("test").arg(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ClusterAIPolicy bad rule \"broken-cel\": spec.rules[0].when")
            && stderr.contains("request.teem"),
        "{stderr}"
    );
}

#[test]
fn eval_explain_names_the_deciding_rule_and_the_fingerprint() {
    let out = policybind()
        .args(["eval", "--explain", "-f"])
        .arg(repo().join("examples"))
        .arg("--request")
        .arg(repo().join("examples/requests/restricted-to-openai.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("decision:    Deny"), "{stdout}");
    assert!(
        stdout.contains("codes:       EXTERNAL_DATA_BOUNDARY"),
        "{stdout}"
    );
    assert!(stdout.contains("fingerprint: sha256:"), "{stdout}");
    assert!(stdout.contains("=> DECIDED"), "{stdout}");
}

#[test]
fn crds_check_reports_drift_with_exit_one() {
    let dir = tempfile::tempdir().unwrap();
    let written = policybind()
        .args(["crds", "--write"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(written.status.success());
    let clean = policybind()
        .args(["crds", "--check", "--write"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(clean.status.success());
    let file = dir.path().join("aipolicies.policybind.io.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("Ordered rules", "Rules")).unwrap();
    let drift = policybind()
        .args(["crds", "--check", "--write"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(drift.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&drift.stderr).contains("aipolicies.policybind.io.yaml"));
}

/// A directory with the example organisation's policies and `tests`, a PolicyTest
/// document in YAML written as given.
fn example_set_with_test(test: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "models.yaml",
        "tokens.yaml",
        "approvals.yaml",
        "namespaces.yaml",
    ] {
        std::fs::copy(repo().join("examples").join(f), dir.path().join(f)).unwrap();
    }
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::copy(
        repo().join("examples/policies/cluster-baseline.yaml"),
        dir.path().join("policies/cluster-baseline.yaml"),
    )
    .unwrap();
    std::fs::write(dir.path().join("test.yaml"), test).unwrap();
    dir
}

const MIXED_TEST: &str = r#"apiVersion: cli.policybind.io/v1alpha1
kind: PolicyTest
metadata: {name: mixed}
defaults: {time: "2026-11-23T10:00:00Z", token: data-science/research-notebooks, namespace: data-science}
cases:
  - name: expects <allow> & "more" but the data boundary denies
    request: {model: gpt-4o, dataClassification: Confidential}
    expect: {effect: Allow}
  - name: restricted data to the self-hosted model is allowed
    request: {model: llama-3.1-70b-instruct, dataClassification: Restricted}
    expect: {effect: Allow}
"#;

type Element = (String, Vec<(String, String)>, String);

/// Elements of an XML document as (path, attributes, text), in document order.
fn xml_elements(xml: &str) -> Vec<Element> {
    use quick_xml::events::{BytesStart, Event};
    fn element(stack: &[usize], out: &[Element], e: &BytesStart) -> Element {
        let name = e.name().as_ref().to_string();
        let path = match stack.last() {
            Some(&parent) => format!("{}/{name}", out[parent].0),
            None => name,
        };
        let attributes = e
            .attributes()
            .map(|a| {
                let a = a.unwrap();
                let key = a.key.as_ref().to_string();
                (
                    key,
                    a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .unwrap()
                        .into_owned(),
                )
            })
            .collect();
        (path, attributes, String::new())
    }
    let mut reader = quick_xml::Reader::from_str(xml);
    let (mut stack, mut out): (Vec<usize>, Vec<Element>) = (vec![], vec![]);
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => {
                out.push(element(&stack, &out, &e));
                stack.push(out.len() - 1);
            }
            Event::Empty(e) => out.push(element(&stack, &out, &e)),
            Event::Text(t) => {
                if let Some(&open) = stack.last() {
                    out[open].2.push_str(&t.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                // Entities split text events: &lt; &amp; &quot; ...
                if let Some(&open) = stack.last() {
                    let name = r.xml10_content();
                    let c = match name.as_ref() {
                        "lt" => "<",
                        "gt" => ">",
                        "amp" => "&",
                        "quot" => "\"",
                        "apos" => "'",
                        other => panic!("unexpected entity {other}"),
                    };
                    out[open].2.push_str(c);
                }
            }
            Event::End(_) => {
                stack.pop();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    out
}

#[test]
fn junit_report_has_a_suite_per_test_a_case_per_case_and_failures_with_messages() {
    let dir = example_set_with_test(MIXED_TEST);
    let report = dir.path().join("junit.xml");
    let out = policybind()
        .arg("test")
        .arg(dir.path())
        .arg("--junit")
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let xml = std::fs::read_to_string(&report).unwrap();
    assert!(
        xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"),
        "{xml}"
    );
    let elements = xml_elements(&xml);
    let attr = |i: usize, key: &str| -> String {
        elements[i]
            .1
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{} has no {key}: {xml}", elements[i].0))
    };
    let find = |path: &str| -> Vec<usize> {
        (0..elements.len())
            .filter(|&i| elements[i].0 == path)
            .collect()
    };
    let root = find("testsuites");
    assert_eq!(root.len(), 1);
    assert_eq!(
        (
            attr(root[0], "tests"),
            attr(root[0], "failures"),
            attr(root[0], "errors")
        ),
        ("2".into(), "1".into(), "0".into())
    );
    let suites = find("testsuites/testsuite");
    assert_eq!(suites.len(), 1);
    assert_eq!(attr(suites[0], "name"), "mixed");
    assert_eq!(attr(suites[0], "tests"), "2");
    let cases = find("testsuites/testsuite/testcase");
    assert_eq!(
        attr(cases[0], "name"),
        r#"expects <allow> & "more" but the data boundary denies"#,
        "names survive escaping"
    );
    assert_eq!(attr(cases[0], "classname"), "mixed");
    attr(cases[0], "time").parse::<f64>().unwrap();
    let failures = find("testsuites/testsuite/testcase/failure");
    assert_eq!(failures.len(), 1, "only the failing case has a failure");
    assert!(
        attr(failures[0], "message").starts_with("effect: expected Allow, got Deny"),
        "{xml}"
    );
    assert_eq!(attr(failures[0], "type"), "PolicyMismatch");
    assert!(
        elements[failures[0]].2.contains("EXTERNAL_DATA_BOUNDARY"),
        "the text shows the actual decision: {xml}"
    );
}

#[test]
fn json_output_carries_the_summary_and_each_decision() {
    let dir = example_set_with_test(MIXED_TEST);
    let out = policybind()
        .arg("test")
        .arg(dir.path())
        .args(["--output", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(
        report["summary"],
        serde_json::json!({"total": 2, "passed": 1, "failed": 1, "errors": 0})
    );
    let failed = &report["cases"][0];
    assert_eq!(failed["result"], "fail");
    assert_eq!(failed["decision"]["codes"][0], "EXTERNAL_DATA_BOUNDARY");
    assert!(
        failed["differences"][0]
            .as_str()
            .unwrap()
            .starts_with("effect:")
    );
    assert!(
        report["policySet"]["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
}

#[test]
fn case_and_run_select_cases_and_a_selection_of_nothing_exits_two() {
    let dir = example_set_with_test(MIXED_TEST);
    let only = policybind()
        .arg("test")
        .arg(dir.path())
        .args([
            "--case",
            "restricted data to the self-hosted model is allowed",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&only.stdout);
    assert!(only.status.success(), "{stdout}");
    assert!(
        stdout.contains("1 of 2 cases selected") && stdout.contains("1 passed, 0 failed"),
        "{stdout}"
    );
    let by_regex = policybind()
        .arg("test")
        .arg(dir.path())
        .args(["--run", "^mixed/expects"])
        .output()
        .unwrap();
    assert_eq!(by_regex.status.code(), Some(1));
    let nothing = policybind()
        .arg("test")
        .arg(dir.path())
        .args(["--run", "typo"])
        .output()
        .unwrap();
    assert_eq!(nothing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("no case matches"));
}

#[test]
fn the_old_policy_test_group_still_runs_with_a_deprecation_note() {
    let dir = example_set_with_test(
        &MIXED_TEST.replace("cli.policybind.io/v1alpha1", "policybind.io/v1alpha1"),
    );
    let out = policybind()
        .arg("test")
        .arg(dir.path())
        .args([
            "--case",
            "restricted data to the self-hosted model is allowed",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("deprecated") && stderr.contains("apiVersion: cli.policybind.io/v1alpha1"),
        "{stderr}"
    );
}

#[test]
fn a_policy_set_that_does_not_compile_still_writes_a_junit_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: policybind.io/v1alpha1\nkind: ClusterAIPolicy\nmetadata: {name: bad}\nspec:\n  rules:\n    - {name: r, action: Deny, exclude: {}}\n---\napiVersion: cli.policybind.io/v1alpha1\nkind: PolicyTest\nmetadata: {name: t}\ncases: []\n",
    )
    .unwrap();
    let report = dir.path().join("junit.xml");
    let out = policybind()
        .arg("test")
        .arg(dir.path())
        .arg("--junit")
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let xml = std::fs::read_to_string(&report).unwrap();
    let errors: Vec<_> = xml_elements(&xml)
        .into_iter()
        .filter(|(path, _, _)| path == "testsuites/testsuite/testcase/error")
        .collect();
    assert_eq!(errors.len(), 1, "{xml}");
    assert!(errors[0].2.contains("spec.rules[0].exclude"), "{xml}");
}

#[test]
fn eval_json_explain_is_one_document_and_fail_on_deny_exits_one() {
    let eval = |extra: &[&str]| {
        policybind()
            .args(["eval", "-f"])
            .arg(repo().join("examples"))
            .arg("--request")
            .arg(repo().join("examples/requests/restricted-to-openai.yaml"))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = eval(&["--json", "--explain"]);
    assert!(out.status.success(), "a deny exits 0 unless asked");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["decision"]["effect"], "Deny");
    let trace = doc["trace"].as_array().unwrap();
    assert!(trace.iter().any(|t| t["decided"] == true), "{doc}");
    assert_eq!(eval(&["--fail-on-deny"]).status.code(), Some(1));
    assert_eq!(eval(&["--fail-on", "Allow,Deny"]).status.code(), Some(1));
    assert_eq!(eval(&["--fail-on", "Allow"]).status.code(), Some(0));
    let bad = eval(&["--fail-on", "Block"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown effect"));
}
