//! The built-in catalogs: complete where the brief says so, identifiers matching the
//! sources, descriptions in our own words, every evidence kind used.
use std::collections::BTreeSet;

use policybind_compliance::catalog::{self, Coverage};
use policybind_compliance::evidence::EvidenceKind;

fn ids(framework: &str) -> BTreeSet<String> {
    catalog::built_in(framework)
        .unwrap()
        .controls
        .into_iter()
        .map(|c| c.id)
        .collect()
}

#[test]
fn nist_ai_rmf_ids_are_exactly_the_72_subcategories_of_the_community_oscal_catalog() {
    // The `oscal` crate embeds a community OSCAL catalog of the AI RMF; its control
    // ids are `nist-ai-rmf-<function>-<n.m>`. Ours must name the same subcategories,
    // no more, no fewer.
    let community = oscal::load_catalog("nist-ai-rmf").unwrap();
    let theirs: BTreeSet<String> = community
        .all_controls()
        .iter()
        .map(|c| c.id.strip_prefix("nist-ai-rmf-").unwrap().to_string())
        .collect();
    assert_eq!(theirs.len(), 72);
    assert_eq!(ids("nist-ai-rmf"), theirs);
}

/// Lower-case words of a text.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Runs of `n` consecutive words.
fn shingles(text: &str, n: usize) -> BTreeSet<String> {
    words(text).windows(n).map(|w| w.join(" ")).collect()
}

#[test]
fn descriptions_are_our_own_words_not_the_community_catalogs_text() {
    // No description shares a run of 8 words with the statements of the community
    // catalogs of the same framework (which restate the sources' text).
    for (ours, theirs) in [
        ("nist-ai-rmf", "nist-ai-rmf"),
        ("eu-ai-act", "eu-ai-act"),
        ("iso-42001", "iso-42001"),
    ] {
        let community = oscal::load_catalog(theirs).unwrap();
        let their_text: BTreeSet<String> = community
            .all_controls()
            .iter()
            .filter_map(|c| c.statement())
            .flat_map(|s| shingles(s, 8))
            .collect();
        for control in catalog::built_in(ours).unwrap().controls {
            let shared: Vec<String> = shingles(&control.description, 8)
                .intersection(&their_text)
                .cloned()
                .collect();
            assert!(
                shared.is_empty(),
                "{ours} {} repeats {shared:?}",
                control.id
            );
        }
    }
}

#[test]
fn the_eu_ai_act_catalog_covers_the_high_risk_obligations() {
    let catalog = catalog::built_in("eu-ai-act").unwrap();
    let references: BTreeSet<String> = catalog
        .controls
        .iter()
        .flat_map(|c| c.references.clone())
        .collect();
    for article in [
        "Art. 9",
        "Art. 10",
        "Art. 11",
        "Art. 12",
        "Art. 13",
        "Art. 14",
        "Art. 15",
        "Art. 17",
        "Art. 26(1)",
        "Art. 26(6)",
        "Art. 72",
        "Art. 73",
    ] {
        assert!(
            references.contains(article),
            "{article} missing: {references:?}"
        );
    }
}

#[test]
fn the_iso_42001_catalog_lists_every_annex_a_control() {
    let expected = [
        "a.2.2", "a.2.3", "a.2.4", "a.3.2", "a.3.3", "a.4.2", "a.4.3", "a.4.4", "a.4.5", "a.4.6",
        "a.5.2", "a.5.3", "a.5.4", "a.5.5", "a.6.1.2", "a.6.1.3", "a.6.2.2", "a.6.2.3", "a.6.2.4",
        "a.6.2.5", "a.6.2.6", "a.6.2.7", "a.6.2.8", "a.7.2", "a.7.3", "a.7.4", "a.7.5", "a.7.6",
        "a.8.2", "a.8.3", "a.8.4", "a.8.5", "a.9.2", "a.9.3", "a.9.4", "a.10.2", "a.10.3",
        "a.10.4",
    ];
    assert_eq!(
        ids("iso-42001"),
        expected.iter().map(|s| s.to_string()).collect()
    );
}

#[test]
fn the_soc2_catalog_holds_the_ai_relevant_common_criteria() {
    let got = ids("soc2");
    for id in [
        "cc6.1", "cc6.2", "cc6.3", "cc6.6", "cc6.7", "cc6.8", "cc7.1", "cc7.2", "cc7.3", "cc7.4",
        "cc7.5", "cc8.1",
    ] {
        assert!(got.contains(id), "{id}");
    }
}

#[test]
fn every_evidence_kind_backs_at_least_one_control() {
    let used: BTreeSet<EvidenceKind> = catalog::built_in_frameworks()
        .flat_map(|f| catalog::built_in(f).unwrap().controls)
        .flat_map(|c| c.evidence)
        .collect();
    let all: BTreeSet<EvidenceKind> = EvidenceKind::ALL.into_iter().collect();
    assert_eq!(used, all);
}

#[test]
fn every_framework_says_what_policybind_cannot_evidence() {
    for framework in catalog::built_in_frameworks() {
        let catalog = catalog::built_in(framework).unwrap();
        let partial_or_none = catalog
            .controls
            .iter()
            .filter(|c| c.coverage != Coverage::Full);
        for control in partial_or_none {
            assert!(
                control
                    .outside_policy_bind
                    .as_deref()
                    .is_some_and(|s| s.len() > 10),
                "{framework} {}",
                control.id
            );
        }
        assert!(
            catalog
                .controls
                .iter()
                .any(|c| c.coverage == Coverage::None)
                || framework == "soc2",
            "{framework}: no control is outside PolicyBind?"
        );
    }
}
