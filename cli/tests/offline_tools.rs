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
        "apiVersion: policybind.io/v1alpha1\nkind: PolicyTest\nmetadata: {name: wrong}\ncases:\n  - name: expects allow but the data boundary denies\n    request: {token: data-science/research-notebooks, model: gpt-4o, namespace: data-science, dataClassification: Confidential, time: '2026-11-23T10:00:00Z'}\n    expect: {effect: Allow}\n",
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
        "apiVersion: policybind.io/v1alpha1\nkind: ClusterAIPolicy\nmetadata: {name: bad}\nspec:\n  rules:\n    - name: broken-cel\n      when: \"request.teem == 'x'\"\n      action: Deny\n---\napiVersion: policybind.io/v1alpha1\nkind: PolicyTest\nmetadata: {name: t}\ncases: []\n",
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
