//! Kubernetes label selectors and name globs, evaluated without a cluster.

use std::collections::BTreeMap;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `selector` (matchLabels AND every matchExpression).
/// An empty selector matches everything, as in Kubernetes.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // Unknown operators match nothing: the API server rejects them anyway.
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// Checks that a selector only uses operators Kubernetes knows.
pub fn validate(selector: &LabelSelector) -> Result<(), String> {
    for e in selector.match_expressions.iter().flatten() {
        match e.operator.as_str() {
            "In" | "NotIn" => {
                if e.values.as_ref().is_none_or(Vec::is_empty) {
                    return Err(format!(
                        "matchExpressions for key {:?} with operator {} needs values",
                        e.key, e.operator
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {}
            other => {
                return Err(format!(
                    "unknown selector operator {other:?} (In, NotIn, Exists, DoesNotExist)"
                ));
            }
        }
    }
    Ok(())
}

/// Compiles glob patterns (`gpt-4*`, `team-?`) into one matcher. `*` matches any
/// characters including `/`.
pub fn glob_set(patterns: &[String]) -> Result<GlobSet, String> {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        builder.add(glob(p)?);
    }
    builder
        .build()
        .map_err(|e| format!("invalid glob pattern: {e}"))
}

/// Compiles one glob pattern.
pub fn glob(pattern: &str) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .build()
        .map_err(|e| format!("invalid glob {pattern:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_match_labels_and_expressions() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("env", "prod")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["sandbox".into()]),
            }]),
        };
        assert!(matches(&selector, &labels(&[("env", "prod")])));
        assert!(!matches(
            &selector,
            &labels(&[("env", "prod"), ("tier", "sandbox")])
        ));
        assert!(!matches(&selector, &labels(&[("env", "dev")])));
        assert!(matches(&LabelSelector::default(), &labels(&[])));
    }

    #[test]
    fn globs_cross_slashes() {
        let set = glob_set(&["gpt-4*".into(), "openai/*".into()]).unwrap();
        assert!(set.is_match("gpt-4o-mini"));
        assert!(set.is_match("openai/gpt/x"));
        assert!(!set.is_match("claude-3"));
        assert!(glob_set(&["[".into()]).is_err());
    }
}
