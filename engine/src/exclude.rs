//! A rule's `exclude`: requests the rule skips although its `match` selects them
//! (Kyverno's match/exclude). An excluded request is not decided by the rule;
//! evaluation goes on with the rules below it, so an exception for one rule never
//! switches off the others (a lower Redact rule still redacts).
//!
//! The check runs only for rules whose typed selectors and conditions already
//! matched, so rules without `exclude` cost nothing and the index is unchanged.

use std::collections::BTreeMap;

use globset::GlobSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use policybind_crds::ai_policy::RuleExclude;

use crate::selector;

/// A compiled `exclude`: every given field must hold for a request to be skipped.
#[derive(Debug)]
pub(crate) struct CompiledExclude {
    teams: Vec<String>,
    subjects: Vec<String>,
    namespaces: Option<GlobSet>,
    namespace_patterns: Vec<String>,
    labels: Option<LabelSelector>,
}

/// The request facts an exclusion looks at.
pub(crate) struct ExcludeFacts<'a> {
    pub team: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl CompiledExclude {
    /// Compiles `spec`; errors are `(field under exclude, reason)`.
    pub fn compile(spec: &RuleExclude) -> Result<CompiledExclude, Vec<(String, String)>> {
        let mut errors = vec![];
        let selector_given = spec.labels.as_ref().is_some_and(|l| {
            l.match_labels.as_ref().is_some_and(|m| !m.is_empty())
                || l.match_expressions.as_ref().is_some_and(|e| !e.is_empty())
        });
        if spec.teams.is_empty()
            && spec.subjects.is_empty()
            && spec.namespaces.is_empty()
            && !selector_given
        {
            errors.push((
                String::new(),
                "exclude needs at least one team, subject, namespace or label requirement \
                 (an empty exclude would skip the rule for every request)"
                    .to_string(),
            ));
        }
        let namespaces = if spec.namespaces.is_empty() {
            None
        } else {
            selector::glob_set(&spec.namespaces)
                .map_err(|e| errors.push((".namespaces".into(), e)))
                .ok()
        };
        if let Some(labels) = &spec.labels
            && let Err(e) = selector::validate(labels)
        {
            errors.push((".labels".into(), e));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(CompiledExclude {
            teams: spec.teams.clone(),
            subjects: spec.subjects.clone(),
            namespaces,
            namespace_patterns: spec.namespaces.clone(),
            labels: spec.labels.clone().filter(|_| selector_given),
        })
    }

    /// `Some(why)` when the request is excluded (every given field holds), naming
    /// what excluded it for the explain trace; `None` when the rule applies.
    pub fn excludes(&self, facts: &ExcludeFacts) -> Option<String> {
        let mut why = vec![];
        if !self.teams.is_empty() {
            let team = facts.team.filter(|t| self.teams.iter().any(|x| x == t))?;
            why.push(format!("team {team}"));
        }
        if !self.subjects.is_empty() {
            let subject = facts
                .subject
                .filter(|s| self.subjects.iter().any(|x| x == s))?;
            why.push(format!("subject {subject}"));
        }
        if let Some(globs) = &self.namespaces {
            if !globs.is_match(facts.namespace) {
                return None;
            }
            why.push(format!(
                "namespace {} (in [{}])",
                facts.namespace,
                self.namespace_patterns.join(", ")
            ));
        }
        if let Some(labels) = &self.labels {
            if !selector::matches(labels, facts.labels) {
                return None;
            }
            why.push("request labels selected by exclude.labels".to_string());
        }
        Some(format!("excluded: {}", why.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(labels: &'a BTreeMap<String, String>) -> ExcludeFacts<'a> {
        ExcludeFacts {
            team: Some("sre"),
            subject: Some("alice"),
            namespace: "ci-runner",
            labels,
        }
    }

    fn compile(spec: serde_json::Value) -> CompiledExclude {
        CompiledExclude::compile(&serde_json::from_value(spec).unwrap()).unwrap()
    }

    #[test]
    fn every_given_field_must_hold_as_in_match() {
        let labels = BTreeMap::from([("endpoint".to_string(), "embeddings".to_string())]);
        let both = compile(serde_json::json!({"teams": ["sre"], "namespaces": ["ci-*"]}));
        assert_eq!(
            both.excludes(&facts(&labels)).as_deref(),
            Some("excluded: team sre, namespace ci-runner (in [ci-*])")
        );
        let other_team = compile(serde_json::json!({"teams": ["ops"], "namespaces": ["ci-*"]}));
        assert_eq!(other_team.excludes(&facts(&labels)), None);
        let by_label = compile(
            serde_json::json!({"labels": {"matchLabels": {"endpoint": "embeddings"}}, "subjects": ["bob", "alice"]}),
        );
        assert!(by_label.excludes(&facts(&labels)).is_some());
        let no_labels = BTreeMap::new();
        assert_eq!(by_label.excludes(&facts(&no_labels)), None);
    }

    #[test]
    fn an_empty_exclude_is_refused_rather_than_skipping_everything() {
        for spec in [
            serde_json::json!({}),
            serde_json::json!({"teams": []}),
            serde_json::json!({"labels": {}}),
        ] {
            let errors = CompiledExclude::compile(&serde_json::from_value(spec).unwrap())
                .expect_err("empty exclude");
            assert!(errors[0].1.contains("at least one"), "{errors:?}");
        }
        let bad = CompiledExclude::compile(
            &serde_json::from_value(serde_json::json!({"namespaces": ["["]})).unwrap(),
        )
        .expect_err("bad glob");
        assert_eq!(bad[0].0, ".namespaces");
    }
}
