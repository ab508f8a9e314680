//! The shipped examples compile and every PolicyTest case in them passes, so the
//! examples a user copies are known to do what their comments say.

use std::path::Path;

use policybind_engine::PolicySet;
use policybind_engine::manifest::{Manifests, parse_documents};

fn load_examples() -> Manifests {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut manifests = Manifests::default();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                // A directory with a kustomization is a separate set (the quick start,
                // the GitOps policies), as `policybind test` treats it.
                if !path.join("kustomization.yaml").is_file() {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                manifests.extend(
                    parse_documents(&path.display().to_string(), &text)
                        .unwrap_or_else(|e| panic!("{e}")),
                );
            }
        }
    }
    manifests
}

#[test]
fn every_example_policy_test_case_passes() {
    let manifests = load_examples();
    let set = PolicySet::compile(&manifests.bundle(None)).expect("examples compile");
    let mut failures = vec![];
    let mut count = 0;
    for (source, test) in manifests.tests() {
        for case in &test.cases {
            count += 1;
            let request = case.resolved_request(&test.defaults).unwrap();
            let d = set.decide(&request);
            let e = &case.expect;
            let codes_ok = e.codes.iter().all(|c| d.codes.contains(c))
                && e.codes.first().is_none_or(|c| d.code() == c);
            let ok = d.effect == e.effect
                && codes_ok
                && e.policy
                    .as_ref()
                    .is_none_or(|p| d.policy.as_ref() == Some(p))
                && e.rule.as_ref().is_none_or(|r| d.rule.as_ref() == Some(r))
                && e.degraded_model
                    .as_ref()
                    .is_none_or(|m| d.obligations.model.as_ref() == Some(m))
                && e.would_have
                    .is_none_or(|w| d.would_have.as_ref().map(|x| x.effect) == Some(w))
                && e.redacted
                    .iter()
                    .all(|ent| d.findings.iter().any(|f| &f.entity == ent));
            let ok = ok && response_ok(&set, case, &request);
            if !ok {
                failures.push(format!(
                    "{source} / {}: expected {:?} {:?}, got {} {:?} ({}) findings {:?}",
                    case.name, e.effect, e.codes, d.effect, d.codes, d.message, d.findings
                ));
            }
        }
    }
    assert!(
        count >= 20,
        "expected the examples to hold at least 20 cases, found {count}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What the case states of its response, if it has one.
fn response_ok(
    set: &PolicySet,
    case: &policybind_engine::manifest::TestCase,
    request: &policybind_engine::Request,
) -> bool {
    let (Some(response), Some(e)) = (&case.response, &case.expect.response) else {
        return case.expect.response.is_none();
    };
    let d = set.decide_output(request, &set.scan(response));
    d.action == e.action
        && e.codes.iter().all(|c| d.codes.contains(c))
        && (e.action == policybind_engine::OutputAction::Pass
            || e.codes.first().is_none_or(|c| d.code() == c))
        && e.rule.as_ref().is_none_or(|r| d.rule.as_ref() == Some(r))
        && e.text
            .as_ref()
            .is_none_or(|t| d.apply(response).as_ref() == Some(t))
}
