//! Control catalogs as data.
//!
//! A catalog lists a framework's controls, each with the PolicyBind evidence that
//! supports it and, honestly, what PolicyBind cannot show. Catalogs are YAML files
//! in the format `policybind-controls/v1` (documented in `docs/compliance.md`). Four
//! are built in (`compliance/catalogs/`); users extend or override them with their
//! own files: a control whose `id` exists replaces the built-in one whole, a new
//! `id` is added, and `withdrawn: true` drops a control. A user file may also
//! define a framework of its own.
//!
//! Identifiers are the frameworks' own (article numbers, subcategory and control
//! numbers); every description is PolicyBind's own wording, never the source text.
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::evidence::EvidenceKind;

/// Value of [`Catalog::format`].
pub const CATALOG_FORMAT: &str = "policybind-controls/v1";

/// Built-in catalogs: framework id and file text.
const BUILT_IN: [(&str, &str); 4] = [
    ("eu-ai-act", include_str!("../catalogs/eu-ai-act.yaml")),
    ("nist-ai-rmf", include_str!("../catalogs/nist-ai-rmf.yaml")),
    ("iso-42001", include_str!("../catalogs/iso-42001.yaml")),
    ("soc2", include_str!("../catalogs/soc2.yaml")),
];

/// A framework's controls.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Catalog {
    /// Always [`CATALOG_FORMAT`].
    pub format: String,
    /// Framework id: `eu-ai-act`, `nist-ai-rmf`, `iso-42001`, `soc2`, or a user's own.
    pub framework: String,
    /// Title shown in reports.
    pub title: String,
    /// Version of the catalog (not of the framework); reports record it.
    pub version: String,
    /// The controls, in the order reports list them.
    pub controls: Vec<Control>,
}

/// How much of a control PolicyBind can evidence.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coverage {
    /// PolicyBind's evidence covers the control.
    Full,
    /// PolicyBind evidences part; `outsidePolicyBind` says what else an auditor needs.
    Partial,
    /// PolicyBind cannot evidence the control at all.
    None,
}

/// One control.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Control {
    /// Identifier, unique in the catalog (e.g. `art-12`, `govern-1.6`, `a.6.2.8`, `cc8.1`).
    pub id: String,
    /// Short title in PolicyBind's words.
    pub title: String,
    /// Article, subcategory or control numbers of the source (identifiers only).
    #[serde(default)]
    pub references: Vec<String>,
    /// What the control asks, in PolicyBind's words.
    pub description: String,
    /// How much PolicyBind can show.
    pub coverage: Coverage,
    /// The evidence kinds that support it (empty when `coverage` is None).
    #[serde(default)]
    pub evidence: Vec<EvidenceKind>,
    /// What an auditor must get from elsewhere (required unless `coverage` is Full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside_policy_bind: Option<String>,
    /// In a user file: remove this control from the catalog.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub withdrawn: bool,
}

/// Framework ids of the built-in catalogs.
pub fn built_in_frameworks() -> impl Iterator<Item = &'static str> {
    BUILT_IN.iter().map(|(id, _)| *id)
}

/// The built-in catalog of a framework.
pub fn built_in(framework: &str) -> Result<Catalog, Error> {
    let (_, text) = BUILT_IN
        .iter()
        .find(|(id, _)| *id == framework)
        .ok_or_else(|| Error::UnknownFramework(framework.to_string()))?;
    parse(&format!("built-in {framework}"), text)
}

/// Parses and validates a catalog file.
pub fn parse(source_name: &str, text: &str) -> Result<Catalog, Error> {
    let catalog: Catalog = serde_yaml::from_str(text).map_err(|e| Error::Catalog {
        source_name: source_name.to_string(),
        message: e.to_string(),
    })?;
    validate(source_name, &catalog)?;
    Ok(catalog)
}

/// Checks what the format promises: the format string, unique ids, and a coverage
/// that agrees with the evidence and the `outsidePolicyBind` statement.
pub fn validate(source_name: &str, catalog: &Catalog) -> Result<(), Error> {
    let fail = |message: String| Error::Catalog {
        source_name: source_name.to_string(),
        message,
    };
    if catalog.format != CATALOG_FORMAT {
        return Err(fail(format!(
            "format is {:?}; expected {CATALOG_FORMAT:?}",
            catalog.format
        )));
    }
    if catalog.framework.is_empty()
        || !catalog
            .framework
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(fail(format!(
            "framework {:?} must be lower-case letters, digits and '-'",
            catalog.framework
        )));
    }
    let mut seen = BTreeSet::new();
    for control in &catalog.controls {
        if !seen.insert(control.id.as_str()) {
            return Err(fail(format!("control {} appears twice", control.id)));
        }
        if control.withdrawn {
            continue;
        }
        validate_control(control).map_err(|m| fail(format!("control {}: {m}", control.id)))?;
    }
    Ok(())
}

fn validate_control(control: &Control) -> Result<(), String> {
    if control.id.trim().is_empty() || control.title.trim().is_empty() {
        return Err("id and title must not be empty".into());
    }
    if control.description.trim().is_empty() {
        return Err("description must not be empty".into());
    }
    let outside = control
        .outside_policy_bind
        .as_deref()
        .is_some_and(|s| !s.trim().is_empty());
    match control.coverage {
        Coverage::None if !control.evidence.is_empty() => {
            Err("coverage None lists no evidence; use Partial".into())
        }
        Coverage::None | Coverage::Partial if !outside => Err(
            "coverage None or Partial needs outsidePolicyBind: what an auditor must get elsewhere"
                .into(),
        ),
        Coverage::Full | Coverage::Partial if control.evidence.is_empty() => {
            Err("coverage Full or Partial needs at least one evidence kind".into())
        }
        _ => Ok(()),
    }
}

/// Merges `overlay` (a user file) over `base`: same id replaces, new id appends,
/// `withdrawn` removes. The overlay's title and version win when it has them; the
/// merged catalog's version records both (`base+overlay`).
pub fn merge(mut base: Catalog, overlay: Catalog) -> Result<Catalog, Error> {
    if base.framework != overlay.framework {
        return Err(Error::Catalog {
            source_name: overlay.framework.clone(),
            message: format!(
                "cannot merge a {} catalog over {}",
                overlay.framework, base.framework
            ),
        });
    }
    for control in overlay.controls {
        let position = base.controls.iter().position(|c| c.id == control.id);
        match (position, control.withdrawn) {
            (Some(at), true) => {
                base.controls.remove(at);
            }
            (Some(at), false) => base.controls[at] = control,
            (None, true) => {
                return Err(Error::Catalog {
                    source_name: overlay.framework.clone(),
                    message: format!("withdraws control {}, which does not exist", control.id),
                });
            }
            (None, false) => base.controls.push(control),
        }
    }
    base.version = format!("{}+{}", base.version, overlay.version);
    if !overlay.title.is_empty() {
        base.title = overlay.title;
    }
    Ok(base)
}

/// The catalog for `framework`: the built-in one (if any) with every user catalog of
/// the same framework merged over it, in the order given. A user catalog of a
/// framework with no built-in stands on its own.
pub fn resolve(framework: &str, user: &[Catalog]) -> Result<Catalog, Error> {
    let mut mine = user.iter().filter(|c| c.framework == framework).cloned();
    let mut catalog = match built_in(framework) {
        Ok(catalog) => catalog,
        Err(Error::UnknownFramework(_)) => mine
            .next()
            .ok_or_else(|| Error::UnknownFramework(framework.to_string()))?,
        Err(other) => return Err(other),
    };
    for overlay in mine {
        catalog = merge(catalog, overlay)?;
    }
    catalog.controls.retain(|c| !c.withdrawn);
    Ok(catalog)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_catalog_parses_and_validates() {
        for framework in built_in_frameworks() {
            let catalog = built_in(framework).unwrap();
            assert_eq!(catalog.framework, framework);
            assert!(!catalog.controls.is_empty());
        }
    }

    #[test]
    fn a_partial_control_without_an_outside_statement_is_rejected() {
        let text = r#"
format: policybind-controls/v1
framework: acme
title: Acme
version: "1"
controls:
  - id: x-1
    title: X
    description: Something.
    coverage: Partial
    evidence: [audit-trail]
"#;
        let error = parse("acme.yaml", text).unwrap_err().to_string();
        assert!(error.contains("control x-1"), "{error}");
        assert!(error.contains("outsidePolicyBind"), "{error}");
    }

    #[test]
    fn an_unknown_evidence_kind_is_named() {
        let text = r#"
format: policybind-controls/v1
framework: acme
title: Acme
version: "1"
controls:
  - {id: x-1, title: X, description: D, coverage: Full, evidence: [crystal-ball]}
"#;
        let error = parse("acme.yaml", text).unwrap_err().to_string();
        assert!(error.contains("crystal-ball"), "{error}");
    }

    #[test]
    fn user_controls_replace_add_and_withdraw() {
        let overlay = parse(
            "mine.yaml",
            r#"
format: policybind-controls/v1
framework: soc2
title: SOC 2 with our own criteria
version: "acme-3"
controls:
  - {id: cc7.3, title: Triage, description: We triage in 4h., coverage: Full, evidence: [incidents]}
  - {id: acme-1, title: Own, description: Ours., coverage: Full, evidence: [audit-trail]}
  - {id: cc6.6, title: gone, description: gone, coverage: None, withdrawn: true}
"#,
        )
        .unwrap();
        let merged = resolve("soc2", &[overlay]).unwrap();
        let ids: Vec<&str> = merged.controls.iter().map(|c| c.id.as_str()).collect();
        assert!(!ids.contains(&"cc6.6"));
        assert_eq!(ids.last(), Some(&"acme-1"));
        let triage = merged.controls.iter().find(|c| c.id == "cc7.3").unwrap();
        assert_eq!(triage.coverage, Coverage::Full);
        assert_eq!(merged.version, "2026.11+acme-3");
    }

    #[test]
    fn an_unknown_framework_without_user_catalog_is_an_error() {
        assert!(matches!(
            resolve("hipaa", &[]),
            Err(Error::UnknownFramework(_))
        ));
    }
}
