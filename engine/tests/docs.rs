//! The README's tables stay in step with the code: every rationale code and every
//! CEL request field is documented.

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap()
}

#[test]
fn every_rationale_code_is_in_the_readme_table() {
    let readme = readme();
    let missing: Vec<&str> = policybind_engine::codes::ALL
        .iter()
        .map(|c| c.code)
        .filter(|c| !readme.contains(&format!("| `{c}` |")))
        .collect();
    assert!(missing.is_empty(), "README lacks codes {missing:?}");
}

#[test]
fn every_cel_field_is_in_the_readme() {
    let readme = readme();
    let missing: Vec<&str> = policybind_engine::expr::FIELDS
        .iter()
        .map(|(name, _, _)| *name)
        .filter(|n| !readme.contains(&format!("`request.{n}`")))
        .collect();
    assert!(missing.is_empty(), "README lacks CEL fields {missing:?}");
}
