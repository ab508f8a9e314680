//! The identifier check every ingress shares: request ids, subjects, model names,
//! token ids, namespaces, policy and rule names, codes.
//!
//! Identifiers end up in audit records, logs, metrics labels and object names.
//! Two properties keep a hostile value from hurting any of them: a byte cap
//! (so one value cannot fill a segment or a log line) and no control or
//! text-direction characters (so a value cannot forge log lines, hide text in
//! a terminal, or grow six-fold when JSON escapes it). The check is cheap
//! (one pass over the bytes, no allocation) and reports exactly what is wrong,
//! so an ingress can answer with a precise 400 or admission message.
//!
//! The sidecar, the webhook and the gateway call [`check`] where a value comes
//! in; the audit record builder calls it again as a last line of defence
//! ([`crate::audit::AuditEvent::sanitize`]).
use std::fmt;

/// Default cap for an identifier, in bytes of UTF-8. Large enough for every
/// Kubernetes name (253), `namespace/name` pairs and provider model ids.
pub const MAX_IDENTIFIER_BYTES: usize = 256;

/// Why a value is not an acceptable identifier.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentError {
    /// Longer than its cap.
    #[error("{field} is {len} bytes long; at most {max} bytes are allowed")]
    TooLong {
        /// Which field (as the caller names it: `model`, `x-request-id`, ...).
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// Holds a control, line-separator or text-direction character.
    #[error("{field} contains the {what} character {code} at byte {at}")]
    ForbiddenCharacter {
        /// Which field.
        field: &'static str,
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
    pub fn field(&self) -> &'static str {
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
pub fn check(field: &'static str, value: &str) -> Result<(), IdentError> {
    check_max(field, value, MAX_IDENTIFIER_BYTES)
}

/// Check `value` against a cap of `max_bytes`.
///
/// The length is checked first, so a huge value is refused without scanning
/// it.
pub fn check_max(field: &'static str, value: &str, max_bytes: usize) -> Result<(), IdentError> {
    if value.len() > max_bytes {
        return Err(IdentError::TooLong {
            field,
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
                field,
                at,
                code: CodePoint(c as u32),
                what,
            });
        }
    }
    Ok(())
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
                field: "subject",
                at: 6,
                code: CodePoint(1),
                what: "control",
            }
        );
        assert_eq!(
            error.to_string(),
            "subject contains the control character U+0001 at byte 6"
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
                field: "request_id",
                len: 250_000,
                max: MAX_IDENTIFIER_BYTES,
            })
        );
        assert!(check_max("namespace", &"a".repeat(63), 63).is_ok());
        assert!(check_max("namespace", &"a".repeat(64), 63).is_err());
        // Multi-byte characters count in bytes, not characters.
        assert!(check_max("model", &"é".repeat(40), 63).is_err());
    }
}
