//! The identifier check every ingress shares: request ids, subjects, model names,
//! token ids, namespaces, policy and rule names, codes, and every string of an
//! AdmissionReview the webhook records.
//!
//! Identifiers end up in audit records, logs, metrics labels and object names.
//! Two properties keep a hostile value from hurting any of them: a byte cap
//! (so one value cannot fill a segment or a log line) and no control or
//! text-direction characters (so a value cannot forge log lines, hide text in
//! a terminal, or grow six-fold when JSON escapes it). The check is cheap
//! (one pass over the bytes, no allocation unless it fails) and reports
//! exactly what is wrong without echoing the value, so an ingress can answer
//! with a precise 400 or admission message.
//!
//! The sidecar, the webhook and the gateway call [`check`] / [`check_max`]
//! where a value comes in; the audit record builder calls it again as a last
//! line of defence ([`crate::audit::AuditEvent::sanitize`]), with a cap of
//! [`MAX_RECORDED_IDENTIFIER_BYTES`], at least every ingress cap below.
use std::fmt;

/// Default cap for an identifier, in bytes of UTF-8. Large enough for every
/// Kubernetes name (253), `namespace/name` pairs and provider model ids.
pub const MAX_IDENTIFIER_BYTES: usize = 256;
/// Longest Kubernetes object name (a DNS subdomain).
pub const MAX_NAME: usize = 253;
/// Longest namespace name (a DNS label).
pub const MAX_NAMESPACE: usize = 63;
/// Longest user name, group or uid accepted from a review's `userInfo`.
/// Kubernetes sets no limit; service account user names are at most about 330
/// bytes, OIDC subjects less.
pub const MAX_USER: usize = 512;
/// Longest AdmissionReview uid (the API server sends a 36-byte UUID).
pub const MAX_UID: usize = 128;
/// Longest model reference, `namespace/name`.
pub const MAX_MODEL_REFERENCE: usize = MAX_NAMESPACE + 1 + MAX_NAME;
/// Longest short annotation or label value read as a keyword (inject, data
/// classification, ports).
pub const MAX_KEYWORD: usize = 63;
/// Cap of the audit record builder's last check: at least every cap an
/// ingress applies, so a value an ingress accepted is recorded as it is.
pub const MAX_RECORDED_IDENTIFIER_BYTES: usize = MAX_USER;

/// Why a value is not an acceptable identifier.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentError {
    /// Longer than its cap.
    #[error("{field} is {len} bytes long; at most {max} bytes are accepted")]
    TooLong {
        /// Which field (as the caller names it: `model`, `x-request-id`,
        /// `request.userInfo.username`, ...).
        field: String,
        /// Its length in bytes.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// Holds a control, line-separator or text-direction character.
    #[error(
        "{field} contains the {what} character {code} at byte {at}; such characters are not accepted"
    )]
    ForbiddenCharacter {
        /// Which field.
        field: String,
        /// Byte offset of the first offending character.
        at: usize,
        /// The character as `U+XXXX`.
        code: CodePoint,
        /// `control`, `line separator` or `text-direction`.
        what: &'static str,
    },
}

impl IdentError {
    /// The field the error is about.
    pub fn field(&self) -> &str {
        match self {
            IdentError::TooLong { field, .. } | IdentError::ForbiddenCharacter { field, .. } => {
                field
            }
        }
    }
}

/// A Unicode code point, shown as `U+XXXX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodePoint(pub u32);

impl fmt::Display for CodePoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "U+{:04X}", self.0)
    }
}

/// Check `value` against the default cap ([`MAX_IDENTIFIER_BYTES`]).
pub fn check(field: &str, value: &str) -> Result<(), IdentError> {
    check_max(field, value, MAX_IDENTIFIER_BYTES)
}

/// Check `value` against a cap of `max_bytes`.
///
/// The length is checked first, so a huge value is refused without scanning
/// it. `field` is copied only when the check fails.
pub fn check_max(field: &str, value: &str, max_bytes: usize) -> Result<(), IdentError> {
    if value.len() > max_bytes {
        return Err(IdentError::TooLong {
            field: field.to_string(),
            len: value.len(),
            max: max_bytes,
        });
    }
    // Most identifiers are printable ASCII: one byte comparison each.
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(());
    }
    for (at, c) in value.char_indices() {
        if let Some(what) = forbidden(c) {
            return Err(IdentError::ForbiddenCharacter {
                field: field.to_string(),
                at,
                code: CodePoint(c as u32),
                what,
            });
        }
    }
    Ok(())
}

/// Check an optional value (absent passes) against a cap of `max_bytes`.
pub fn check_opt_max(field: &str, value: Option<&str>, max_bytes: usize) -> Result<(), IdentError> {
    value.map_or(Ok(()), |v| check_max(field, v, max_bytes))
}

/// Free text an enforcement point composed itself (a message, a warning, a
/// policy's explanation) cut to at most `max_bytes` on a character boundary,
/// marked with `...`. Identifiers are refused instead, never cut: a cut
/// identifier could name something else.
pub fn bounded(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    let mut end = max_bytes.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Why `c` may not appear in an identifier, if it may not.
fn forbidden(c: char) -> Option<&'static str> {
    match c {
        // C0, DEL and C1 controls.
        c if c.is_control() => Some("control"),
        // Line and paragraph separators break log lines like a newline does.
        '\u{2028}' | '\u{2029}' => Some("line separator"),
        // Bidirectional overrides and isolates reorder how text is displayed.
        '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
            Some("text-direction")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_identifiers_pass() {
        for value in [
            "",
            "gpt-4o-mini",
            "team-a/ci-token",
            "anthropic/claude-3-5-sonnet-20241022",
            "système-café",
            "0193a4f2-7c1e-7b3a-9d2e-000000000001",
        ] {
            assert_eq!(check("model", value), Ok(()), "{value:?}");
        }
    }

    #[test]
    fn a_control_character_is_named_with_its_code_point_and_byte_offset() {
        let error = check("subject", "team-a\u{1}x").unwrap_err();
        assert_eq!(
            error,
            IdentError::ForbiddenCharacter {
                field: "subject".into(),
                at: 6,
                code: CodePoint(1),
                what: "control",
            }
        );
        assert_eq!(
            error.to_string(),
            "subject contains the control character U+0001 at byte 6; such characters are not accepted"
        );
        assert!(check("subject", "a\nb").is_err());
        assert!(check("subject", "a\u{7f}").is_err());
        assert!(check("subject", "a\u{85}").is_err());
    }

    #[test]
    fn separators_and_direction_overrides_are_refused() {
        for (value, what) in [
            ("a\u{2028}b", "line separator"),
            ("évil\u{202e}gpj.exe", "text-direction"),
            ("x\u{2066}", "text-direction"),
        ] {
            match check("model", value) {
                Err(IdentError::ForbiddenCharacter { what: found, .. }) => assert_eq!(found, what),
                other => panic!("{value:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn length_is_capped_in_bytes_before_the_content_is_scanned() {
        let poison = "\u{1}".repeat(250_000);
        assert_eq!(
            check("request_id", &poison),
            Err(IdentError::TooLong {
                field: "request_id".into(),
                len: 250_000,
                max: MAX_IDENTIFIER_BYTES,
            })
        );
        assert!(check_max("namespace", &"a".repeat(63), 63).is_ok());
        assert!(check_max("namespace", &"a".repeat(64), 63).is_err());
        // Multi-byte characters count in bytes, not characters.
        assert!(check_max("model", &"é".repeat(40), 63).is_err());
    }

    #[test]
    fn dynamic_field_names_and_optional_values() {
        let field = format!("metadata.annotations[{}]", "policybind.io/model");
        let error = check_max(&field, &"a".repeat(400), MAX_MODEL_REFERENCE).unwrap_err();
        assert_eq!(
            error.to_string(),
            "metadata.annotations[policybind.io/model] is 400 bytes long; at most 317 bytes are accepted"
        );
        assert_eq!(error.field(), field);
        assert!(check_opt_max("request.namespace", None, MAX_NAMESPACE).is_ok());
        assert!(check_opt_max("request.namespace", Some("a\tb"), MAX_NAMESPACE).is_err());
    }

    #[test]
    fn every_ingress_cap_fits_under_the_recorded_cap() {
        for cap in [
            MAX_IDENTIFIER_BYTES,
            MAX_NAME,
            MAX_NAMESPACE,
            MAX_USER,
            MAX_UID,
            MAX_MODEL_REFERENCE,
            MAX_KEYWORD,
        ] {
            assert!(cap <= MAX_RECORDED_IDENTIFIER_BYTES, "{cap}");
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
