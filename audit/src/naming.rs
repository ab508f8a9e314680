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
//! directory store adds `.json`. When that name is taken by an object the writer
//! does not recognise as its own (planted, or refused at a restart), the writer
//! adds `-<8 hex>` derived from the segment's first record hash, so it never
//! overwrites evidence; such names sort right after the plain one. Names are
//! only where to look: the verifier orders and links segments by their signed
//! headers, never by name.
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

/// The name of a writer's segment starting at `first_seq`, with an optional
/// suffix (lowercase alphanumerics) for when the plain name is taken.
pub fn segment_name_with_suffix(writer: &str, first_seq: u64, suffix: Option<&str>) -> String {
    let name = segment_name(writer, first_seq);
    match suffix {
        Some(suffix) => format!("{name}-{suffix}"),
        None => name,
    }
}

/// The first sequence a segment name states, if it is a segment name.
pub fn first_seq_of(name: &str) -> Option<u64> {
    let name = name.strip_suffix(".json").unwrap_or(name);
    let rest = name.strip_prefix(SEGMENT_NAME_PREFIX)?;
    // `<writer key>-<20 digits>` or `<writer key>-<20 digits>-<suffix>`.
    let mut parts = rest.rsplitn(3, '-');
    let last = parts.next()?;
    let digits = if last.len() == 20 && last.bytes().all(|b| b.is_ascii_digit()) {
        last
    } else {
        parts.next()?
    };
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
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

    #[test]
    fn suffixed_names_sort_after_the_plain_one_and_state_their_sequence() {
        let plain = segment_name("w", 42);
        let suffixed = segment_name_with_suffix("w", 42, Some("0a1b2c3d"));
        let next = segment_name("w", 43);
        let mut names = [next.clone(), suffixed.clone(), plain.clone()];
        names.sort();
        assert_eq!(names, [plain.clone(), suffixed.clone(), next]);
        assert_eq!(first_seq_of(&plain), Some(42));
        assert_eq!(first_seq_of(&suffixed), Some(42));
        assert_eq!(first_seq_of(&format!("{plain}.json")), Some(42));
        assert_eq!(first_seq_of("pb-audit-x"), None);
        assert_eq!(first_seq_of("other"), None);
    }
}
