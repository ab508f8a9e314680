//! The audit trail's verification status per writer: the same verification
//! as `policybind audit verify --cluster-keyring`, over the segment ConfigMaps
//! of each namespace the viewer may see.
//!
//! Fails closed: a writer is shown as verified only when its chain is intact
//! and its sealed segments carry signatures the published keyring binds to it.
//! Without the keyring, chains are still checked but no writer is "verified".
use policybind_engine::audit::{Problem, WriterSummary};

use super::Context;
use crate::data::KeyringState;
use crate::html::{escape, pill, table};

/// A writer's status word and its explanation.
fn status(
    writer: &WriterSummary,
    problems: &[&Problem],
    signatures: bool,
) -> (&'static str, String) {
    if let Some(problem) = problems.first() {
        return ("Broken", problem.to_string());
    }
    if !signatures {
        return (
            "Unproven",
            "chain intact; signatures not checked (no keyring)".into(),
        );
    }
    let unproven = writer.unproven_records();
    if writer.sealed_segments == 0 {
        return (
            "Unproven",
            format!("{unproven} record(s), none sealed yet: nothing proves them"),
        );
    }
    if unproven > 0 {
        return (
            "Verified",
            format!("{unproven} newest record(s) in the open segment are not sealed yet"),
        );
    }
    ("Verified", "every record sealed and signed".into())
}

pub fn render(context: &Context<'_>) -> String {
    let mut out = match &context.snapshot.keyring {
        KeyringState::Loaded { keys } => format!(
            "<p>Signatures checked against the published keyring ({keys} key(s)), as \
             <code>policybind audit verify --cluster-keyring</code> does.</p>"
        ),
        KeyringState::Unavailable(why) => format!(
            "<p class=\"banner\"><b>Signatures not checked:</b> {}. Chains are checked; no writer is shown as verified.</p>",
            escape(why)
        ),
    };
    let signatures = matches!(context.snapshot.keyring, KeyringState::Loaded { .. });
    let mut rows = Vec::new();
    for (namespace, trail) in &context.snapshot.trails {
        if !context.visible.allows(namespace) {
            continue;
        }
        let report = &trail.report;
        for writer in &report.writers {
            let problems: Vec<&Problem> = report
                .problems
                .iter()
                .filter(|p| p.writer == writer.writer)
                .collect();
            let (word, detail) = status(writer, &problems, signatures && report.signatures_checked);
            rows.push(vec![
                escape(namespace),
                format!("<code>{}</code>", escape(&writer.writer)),
                format!("{} ({} sealed)", writer.segments, writer.sealed_segments),
                format!(
                    "{} (seq {}-{})",
                    writer.records, writer.first_seq, writer.last_seq
                ),
                pill(word, word),
                escape(&detail),
            ]);
        }
        let known: Vec<&str> = report.writers.iter().map(|w| w.writer.as_str()).collect();
        for problem in report
            .problems
            .iter()
            .filter(|p| !known.contains(&p.writer.as_str()))
        {
            rows.push(vec![
                escape(namespace),
                format!("<code>{}</code>", escape(&problem.writer)),
                escape(problem.segment.as_deref().unwrap_or("-")),
                "-".into(),
                pill("Broken", "Broken"),
                escape(&problem.to_string()),
            ]);
        }
    }
    out.push_str(&table(
        &[
            "Namespace",
            "Writer",
            "Segments",
            "Records",
            "Status",
            "Detail",
        ],
        &rows,
        "No audit segment.",
    ));
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::data::{Snapshot, Trail};
    use crate::views::testing::{as_team_a_viewer, now};
    use policybind_engine::audit::{Hash256, ProblemKind, VerifyReport};

    fn writer(name: &str) -> WriterSummary {
        WriterSummary {
            writer: name.into(),
            segments: 2,
            sealed_segments: 2,
            records: 10,
            first_seq: 1,
            last_seq: 10,
            head: Hash256::ZERO,
            anchored_at: None,
            unproven: None,
            checkpoint: None,
            chain: vec![],
        }
    }

    #[test]
    fn each_writer_shows_verified_or_the_first_problem() {
        let mut snapshot = Snapshot::empty(now());
        snapshot.keyring = KeyringState::Loaded { keys: 2 };
        let report = VerifyReport {
            writers: vec![writer("sidecar/team-a/ok"), writer("sidecar/team-a/bad")],
            problems: vec![Problem {
                kind: ProblemKind::Modified,
                writer: "sidecar/team-a/bad".into(),
                segment: Some("team-a/seg-2".into()),
                seq: Some(7),
                message: "record 7 was changed".into(),
            }],
            signatures_checked: true,
        };
        snapshot.trails.insert(
            "team-a".into(),
            Arc::new(Trail {
                records: vec![],
                report,
            }),
        );
        let html = as_team_a_viewer(render, &snapshot);
        let ok = html.find("sidecar/team-a/ok").unwrap();
        let bad = html.find("sidecar/team-a/bad").unwrap();
        assert!(html[ok..bad].contains("pill Verified"), "{html}");
        assert!(
            html[bad..].contains("pill Broken") && html[bad..].contains("record 7 was changed")
        );
    }

    #[test]
    fn without_the_keyring_no_writer_is_verified() {
        let mut snapshot = Snapshot::empty(now());
        let report = VerifyReport {
            writers: vec![writer("sidecar/team-a/ok")],
            problems: vec![],
            signatures_checked: false,
        };
        snapshot.trails.insert(
            "team-a".into(),
            Arc::new(Trail {
                records: vec![],
                report,
            }),
        );
        let html = as_team_a_viewer(render, &snapshot);
        assert!(html.contains("Signatures not checked"));
        assert!(html.contains("pill Unproven") && !html.contains("pill Verified"));
    }
}
