//! Identifiers taken from an AdmissionReview, checked before anything is decided
//! or recorded (issue 11, "bad input cannot stop the trail").
//!
//! The webhook's port is reachable from inside the cluster, so a review may be
//! forged: a user name of 250,000 control characters must not reach the audit
//! trail, where serde_json writes each as six bytes and the segment outgrows what
//! the API server stores. Every string the webhook records (names, namespaces,
//! user names, model references, annotation values) is capped in length and may
//! not contain control characters; a review that breaks either rule is denied
//! with a message naming the field, never echoing the value.
//!
//! This is a small local checker: the audit engineer is adding the shared
//! `policybind_engine::ident`, which this module should defer to once it lands.

use std::fmt;

/// Longest Kubernetes object name (a DNS subdomain).
pub const MAX_NAME: usize = 253;
/// Longest namespace name (a DNS label).
pub const MAX_NAMESPACE: usize = 63;
/// Longest user name, group or uid accepted from `userInfo`. Kubernetes sets no
/// limit; service account names are at most about 330 bytes, OIDC subjects less.
pub const MAX_USER: usize = 512;
/// Longest review uid (the API server sends a 36-byte UUID).
pub const MAX_UID: usize = 128;
/// Longest model reference: `namespace/name`.
pub const MAX_MODEL_REFERENCE: usize = MAX_NAMESPACE + 1 + MAX_NAME;
/// Longest short annotation or label value read as a keyword (inject, data
/// classification).
pub const MAX_KEYWORD: usize = 63;

/// Why an identifier was refused. Displays without the value itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentError {
    TooLong {
        field: String,
        bytes: usize,
        max: usize,
    },
    ControlCharacter {
        field: String,
        character: char,
        at: usize,
    },
}

impl IdentError {
    /// The field that failed, e.g. `request.userInfo.username`.
    pub fn field(&self) -> &str {
        match self {
            IdentError::TooLong { field, .. } | IdentError::ControlCharacter { field, .. } => field,
        }
    }
}

impl fmt::Display for IdentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentError::TooLong { field, bytes, max } => write!(
                f,
                "{field} is {bytes} bytes long; at most {max} bytes are accepted"
            ),
            IdentError::ControlCharacter {
                field,
                character,
                at,
            } => write!(
                f,
                "{field} contains the control character U+{:04X} at byte {at}; control characters are not accepted",
                u32::from(*character)
            ),
        }
    }
}

/// Checks one identifier: at most `max` bytes, no control characters.
pub fn check(field: &str, value: &str, max: usize) -> Result<(), IdentError> {
    if value.len() > max {
        return Err(IdentError::TooLong {
            field: field.to_string(),
            bytes: value.len(),
            max,
        });
    }
    if let Some((at, character)) = value.char_indices().find(|(_, c)| c.is_control()) {
        return Err(IdentError::ControlCharacter {
            field: field.to_string(),
            character,
            at,
        });
    }
    Ok(())
}

/// Checks an optional identifier.
pub fn check_opt(field: &str, value: Option<&str>, max: usize) -> Result<(), IdentError> {
    value.map_or(Ok(()), |v| check(field, v, max))
}

/// Truncates free text (messages, warnings, evidence) that goes into a record to
/// at most `max` bytes on a character boundary, marking the cut. Identifiers are
/// refused instead; this only bounds text the webhook composed itself.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_identifiers_are_refused_without_echoing_the_value() {
        let value = "a".repeat(300);
        let error = check("request.name", &value, MAX_NAME).unwrap_err();
        let message = error.to_string();
        assert_eq!(
            message,
            "request.name is 300 bytes long; at most 253 bytes are accepted"
        );
        assert!(!message.contains("aaaa"));
    }

    #[test]
    fn control_characters_are_refused_with_their_position() {
        let error = check("request.userInfo.username", "bob\u{7}x", MAX_USER).unwrap_err();
        assert_eq!(
            error.to_string(),
            "request.userInfo.username contains the control character U+0007 at byte 3; control characters are not accepted"
        );
        assert!(check("f", "line\nbreak", 64).is_err());
        assert!(check("f", "del\u{7f}", 64).is_err());
        assert!(check("f", "c1\u{85}", 64).is_err());
    }

    #[test]
    fn ordinary_identifiers_pass() {
        for value in [
            "system:serviceaccount:kube-system:replicaset-controller",
            "alice@example.com",
            "team-a/chat",
            "Ünïcödé",
            "",
        ] {
            assert!(check("f", value, MAX_USER).is_ok(), "{value}");
        }
    }

    #[test]
    fn bounded_text_is_cut_on_a_character_boundary() {
        assert_eq!(bounded("short", 10), "short");
        let cut = bounded(&"é".repeat(10), 9);
        assert!(cut.len() <= 9, "{cut}");
        assert!(cut.ends_with("..."));
    }
}
