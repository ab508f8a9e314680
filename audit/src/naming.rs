//! Names of stored segments: they sort by writer, then by first sequence.
//!
//! Writer identities contain `/` (`sidecar/<namespace>/<pod>`), which neither
//! object names nor label values allow, so each writer gets a *writer key*: the
//! identity lowercased with every character outside `[a-z0-9.-]` turned into `.`,
//! cut to 40 characters, then `-` and 8 hex characters of the SHA-256 of the full
//! identity (so two identities that sanitize alike still get distinct keys). The
//! key is the value of the `policybind.io/audit-segment` label (at most 49
//! characters, within the 63 a label value may have).
//!
//! A segment is named `pb-audit-<writer key>-<first seq, 20 digits>`; the file of the
//! directory store adds `.json`.
use sha2::{Digest, Sha256};

/// Prefix of every segment name.
pub const SEGMENT_NAME_PREFIX: &str = "pb-audit-";

/// The writer key of a writer identity (see the module docs).
pub fn writer_key(writer: &str) -> String {
    let mut sanitized: String = writer
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' {
                c
            } else {
                '.'
            }
        })
        .take(40)
        .collect();
    // Object names and label values must start and end with an alphanumeric.
    let trimmed = sanitized.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    sanitized = if trimmed.is_empty() {
        "writer".to_string()
    } else {
        trimmed.to_string()
    };
    let digest = Sha256::digest(writer.as_bytes());
    format!("{sanitized}-{}", hex::encode(&digest[..4]))
}

/// The name of a writer's segment starting at `first_seq`.
pub fn segment_name(writer: &str, first_seq: u64) -> String {
    format!(
        "{SEGMENT_NAME_PREFIX}{}-{first_seq:020}",
        writer_key(writer)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_writer_then_sequence() {
        let mut names = [
            segment_name("sidecar/b/pod", 1),
            segment_name("sidecar/a/pod", 1000),
            segment_name("sidecar/a/pod", 999),
            segment_name("sidecar/a/pod", 1),
        ];
        names.sort();
        assert!(names[0].ends_with("-00000000000000000001"));
        assert!(names[1].ends_with("-00000000000000000999"));
        assert!(names[2].ends_with("-00000000000000001000"));
        assert!(names[3].starts_with("pb-audit-sidecar.b.pod-"));
    }

    #[test]
    fn writer_key_is_a_valid_label_value_even_for_odd_identities() {
        for writer in [
            "sidecar/team-a/pod-1",
            "/",
            "Standalone/My Host!",
            &"x".repeat(300),
            "a.b",
            "a/b",
        ] {
            let key = writer_key(writer);
            assert!(key.len() <= 63, "{key}");
            assert!(
                key.starts_with(|c: char| c.is_ascii_alphanumeric()),
                "{key}"
            );
            assert!(key.ends_with(|c: char| c.is_ascii_alphanumeric()), "{key}");
            assert!(
                key.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'),
                "{key}"
            );
        }
        assert_ne!(writer_key("a.b"), writer_key("a/b"));
        assert_eq!(
            segment_name("sidecar/team-a/pod-1", 7),
            "pb-audit-sidecar.team-a.pod-1-".to_string()
                + &writer_key("sidecar/team-a/pod-1")[21..]
                + "-00000000000000000007"
        );
    }
}
