//! The committed CRD YAML matches the types, and every schema is one a real API
//! server accepts (structural, no constructs apiextensions/v1 rejects).

use std::path::Path;

use serde_json::Value;

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/policybind/crds");
    let mut drifted = vec![];
    for crd in policybind_crds::crds() {
        let path = dir.join(policybind_crds::crd_file_name(&crd));
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != policybind_crds::crd_yaml(&crd) {
            drifted.push(path.display().to_string());
        }
    }
    assert!(
        drifted.is_empty(),
        "CRD YAML is out of date: {drifted:?}\nrun: cargo run -p policybind -- crds --write charts/policybind/crds"
    );
}

/// Structural schema rules (apiextensions.k8s.io/v1): every node has a `type`
/// (except where `x-kubernetes-int-or-string` or `x-kubernetes-preserve-unknown-fields`
/// stand in), no `$ref`, no `definitions`, and `anyOf`/`oneOf`/`allOf`/`not` only
/// as value validations without types or descriptions of their own.
fn check_structural(path: &str, node: &Value, problems: &mut Vec<String>) {
    let Some(obj) = node.as_object() else { return };
    for forbidden in ["$ref", "definitions", "$defs", "$schema", "const"] {
        if obj.contains_key(forbidden) {
            problems.push(format!("{path}: {forbidden} is not allowed"));
        }
    }
    let escapes = obj.contains_key("x-kubernetes-int-or-string")
        || obj.contains_key("x-kubernetes-preserve-unknown-fields");
    if !obj.contains_key("type") && !escapes {
        problems.push(format!("{path}: no type"));
    }
    if let Some(t) = obj.get("type")
        && !t.is_string()
    {
        problems.push(format!("{path}: type must be a single string, got {t}"));
    }
    for combinator in ["anyOf", "oneOf", "allOf", "not"] {
        if let Some(branches) = obj.get(combinator) {
            for b in branches.as_array().into_iter().flatten() {
                for key in ["type", "description", "default", "nullable"] {
                    if b.get(key).is_some() {
                        problems.push(format!("{path}.{combinator}: branch sets {key}"));
                    }
                }
            }
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            check_structural(&format!("{path}.{name}"), child, problems);
        }
    }
    if let Some(items) = obj.get("items") {
        check_structural(&format!("{path}[]"), items, problems);
    }
    if let Some(additional) = obj.get("additionalProperties")
        && additional.is_object()
    {
        check_structural(&format!("{path}{{}}"), additional, problems);
    }
    if obj.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
        let keys = obj
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array);
        let item_required = obj
            .get("items")
            .and_then(|i| i.get("required"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for key in keys.into_iter().flatten() {
            if !item_required.contains(key) {
                problems.push(format!(
                    "{path}: list-map key {key} must be required in items"
                ));
            }
        }
    }
}

#[test]
fn schemas_are_structural() {
    let mut problems = vec![];
    for crd in policybind_crds::crds() {
        let json = serde_json::to_value(&crd).unwrap();
        let name = crd.metadata.name.clone().unwrap();
        for version in json["spec"]["versions"].as_array().unwrap() {
            let schema = &version["schema"]["openAPIV3Schema"];
            check_structural(&name, schema, &mut problems);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every CEL rule in the schemas parses, so the API server will not reject the CRD
/// for a syntax error; the rules' meaning is covered by the engine's own checks.
#[test]
fn cel_validation_rules_parse() {
    fn walk(node: &Value, out: &mut Vec<String>) {
        match node {
            Value::Object(o) => {
                if let Some(rules) = o.get("x-kubernetes-validations").and_then(Value::as_array) {
                    out.extend(
                        rules
                            .iter()
                            .filter_map(|r| r["rule"].as_str().map(str::to_string)),
                    );
                }
                o.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut rules = vec![];
    for crd in policybind_crds::crds() {
        walk(&serde_json::to_value(&crd).unwrap(), &mut rules);
    }
    assert!(
        rules.len() >= 8,
        "expected CEL rules, found {}",
        rules.len()
    );
    for rule in rules {
        cel::Program::compile(&rule)
            .unwrap_or_else(|e| panic!("rule {rule:?} does not parse: {e}"));
    }
}

#[test]
fn every_kind_has_short_names_printer_columns_and_a_status_subresource() {
    for crd in policybind_crds::crds() {
        let name = crd.metadata.name.clone().unwrap();
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{name}: short names"
        );
        let version = &crd.spec.versions[0];
        assert!(
            version
                .additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= 3),
            "{name}: columns"
        );
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name}: status"
        );
    }
}
