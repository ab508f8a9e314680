//! Reading manifests: unknown fields and kinds are errors that say where.

use policybind_engine::manifest::{ManifestError, Object, parse_documents};

#[test]
fn misspelt_field_is_an_error_naming_document_and_field() {
    let text = "apiVersion: policybind.io/v1alpha1\nkind: AIPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  rules:\n    - name: r\n      action: Deny\n      mtach: {teams: [x]}\n";
    let err = parse_documents("p.yaml", text).unwrap_err();
    assert!(matches!(err, ManifestError::UnknownField { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("p.yaml (document 1)")
            && msg.contains("mtach")
            && msg.contains("AIPolicy a/p"),
        "{msg}"
    );
}

#[test]
fn invalid_enum_value_is_an_error() {
    let text = "apiVersion: policybind.io/v1alpha1\nkind: AIPolicy\nmetadata: {name: p}\nspec:\n  rules:\n    - name: r\n      action: Block\n";
    let msg = parse_documents("p.yaml", text).unwrap_err().to_string();
    assert!(msg.contains("Block"), "{msg}");
}

#[test]
fn unknown_policybind_kind_is_an_error_and_other_groups_are_skipped() {
    let text = "apiVersion: policybind.io/v1alpha1\nkind: AIPolice\nmetadata: {name: p}\n";
    assert!(matches!(
        parse_documents("x.yaml", text),
        Err(ManifestError::UnknownKind { .. })
    ));
    let other = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n";
    assert!(parse_documents("x.yaml", other).unwrap().is_empty());
}

#[test]
fn token_secret_is_hashed_into_the_bundle_and_never_kept() {
    let text = "apiVersion: policybind.io/v1alpha1\nkind: AccessToken\nmetadata: {name: t, namespace: a}\nspec:\n  subject: {kind: User, name: u}\n  team: x\n  allowedModels: ['*']\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: t-token, namespace: a}\nstringData: {token: pb_demo_value}\n";
    let mut m = policybind_engine::manifest::Manifests::default();
    m.extend(parse_documents("t.yaml", text).unwrap());
    assert!(
        m.objects
            .iter()
            .any(|(_, o)| matches!(o, Object::Secret(_)))
    );
    let bundle = m.bundle(None);
    assert_eq!(
        bundle.tokens[0].hashes[0].sha256,
        policybind_engine::hash_token("pb_demo_value")
    );
    let json = serde_json::to_string(&bundle).unwrap();
    assert!(!json.contains("pb_demo_value"));
}

#[test]
fn a_labelled_standalone_secret_gives_its_token_a_value_and_does_not_need_the_operator_name() {
    // The operator's name (`t-token`) and a demo value under another name, labelled
    // with the token's name: the token accepts both. A label naming another token,
    // or a Secret in another namespace, gives nothing.
    let text = "apiVersion: policybind.io/v1alpha1\nkind: AccessToken\nmetadata: {name: t}\nspec:\n  subject: {kind: User, name: u}\n  team: x\n  allowedModels: ['*']\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: demo-token-t, labels: {policybind.io/standalone-token: t}}\nstringData: {token: demo-value}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: demo-token-other, labels: {policybind.io/standalone-token: other}}\nstringData: {token: other-value}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: elsewhere, namespace: b, labels: {policybind.io/standalone-token: t}}\nstringData: {token: elsewhere-value}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: t-token}\nstringData: {token: issued-value}\n";
    let mut m = policybind_engine::manifest::Manifests::default();
    m.extend(parse_documents("t.yaml", text).unwrap());
    let bundle = m.bundle(None);
    let mut hashes: Vec<&str> = bundle.tokens[0]
        .hashes
        .iter()
        .map(|h| h.sha256.as_str())
        .collect();
    hashes.sort_unstable();
    let mut want = vec![
        policybind_engine::hash_token("demo-value"),
        policybind_engine::hash_token("issued-value"),
    ];
    want.sort_unstable();
    assert_eq!(hashes, want);
}

#[test]
fn policy_tests_are_read_from_the_cli_group_and_the_old_group_with_a_deprecation_note() {
    use policybind_engine::manifest::{
        DEPRECATED_POLICY_TEST_API_VERSION, POLICY_TEST_API_VERSION,
    };
    let test = |api_version: &str| {
        let text = format!(
            "apiVersion: {api_version}\nkind: PolicyTest\nmetadata: {{name: t}}\ncases: []\n"
        );
        match parse_documents("t.yaml", &text).unwrap().remove(0).1 {
            Object::PolicyTest(t) => t,
            other => panic!("not a test: {other:?}"),
        }
    };
    assert_eq!(POLICY_TEST_API_VERSION, "cli.policybind.io/v1alpha1");
    assert_eq!(test(POLICY_TEST_API_VERSION).deprecation(), None);
    let note = test(DEPRECATED_POLICY_TEST_API_VERSION)
        .deprecation()
        .expect("a note");
    assert!(
        note.contains("deprecated") && note.contains("cli.policybind.io/v1alpha1"),
        "{note}"
    );
    // The CLI group holds tests only.
    let text = "apiVersion: cli.policybind.io/v1alpha1\nkind: AIPolicy\nmetadata: {name: p}\n";
    assert!(matches!(
        parse_documents("x.yaml", text),
        Err(ManifestError::UnknownKind { .. })
    ));
}
