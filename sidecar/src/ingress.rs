//! Checks on identifiers callers hand in (headers and body fields the facts
//! come from): bounded length, no control characters, so a hostile caller
//! cannot flood logs, metrics labels or audit records with unbounded or
//! terminal-rewriting text. A bad value is a clear `400 REQUEST_INVALID`
//! naming the field.
//!
//! The audit engineer is adding a shared checker (`policybind_engine::ident`);
//! these call sites move to it when it lands.

use http::HeaderMap;

use crate::refusal::Refusal;

/// Longest model name, use case or label value accepted (a Kubernetes object name).
pub const MAX_IDENTIFIER: usize = 253;
/// Longest label key.
pub const MAX_LABEL_KEY: usize = 63;
/// Most labels one request may carry.
pub const MAX_LABELS: usize = 32;

/// Checks one identifier.
pub fn identifier(field: &str, value: &str, max: usize) -> Result<(), Refusal> {
    if value.is_empty() {
        return Err(Refusal::invalid(format!("{field} must not be empty")));
    }
    if value.len() > max {
        return Err(Refusal::invalid(format!(
            "{field} is {} bytes long; at most {max} are accepted",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Refusal::invalid(format!(
            "{field} contains control characters"
        )));
    }
    Ok(())
}

/// A header's value as trimmed text: `Ok(None)` when absent or blank, an error
/// when it is not visible ASCII (rather than silently ignoring it).
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Refusal> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| Refusal::invalid(format!("header {name} must be visible ASCII")))?
        .trim();
    if text.is_empty() {
        return Ok(None);
    }
    identifier(&format!("header {name}"), text, MAX_IDENTIFIER)?;
    Ok(Some(text))
}

/// Checks a request's labels.
pub fn labels(labels: &std::collections::BTreeMap<String, String>) -> Result<(), Refusal> {
    if labels.len() > MAX_LABELS {
        return Err(Refusal::invalid(format!(
            "{} labels given; at most {MAX_LABELS} are accepted",
            labels.len()
        )));
    }
    for (key, value) in labels {
        identifier("label key", key, MAX_LABEL_KEY)?;
        if value.len() > MAX_IDENTIFIER || value.chars().any(char::is_control) {
            return Err(Refusal::invalid(format!(
                "label {key} must be at most {MAX_IDENTIFIER} bytes without control characters"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn long_empty_and_control_character_identifiers_are_refused_naming_the_field() {
        assert!(identifier("model", "gpt-4o", MAX_IDENTIFIER).is_ok());
        for bad in ["", "gpt\u{1b}[2J", "a\nb", &"x".repeat(254)] {
            let refusal = identifier("model", bad, MAX_IDENTIFIER).unwrap_err();
            assert_eq!(refusal.code, "REQUEST_INVALID");
            assert!(refusal.message.starts_with("model"), "{}", refusal.message);
        }
    }

    #[test]
    fn headers_that_are_not_ascii_are_errors_not_defaults() {
        let mut headers = HeaderMap::new();
        assert_eq!(header(&headers, "x-policybind-use-case").unwrap(), None);
        headers.insert(
            "x-policybind-use-case",
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert!(header(&headers, "x-policybind-use-case").is_err());
        headers.insert("x-policybind-use-case", HeaderValue::from_static("  chat "));
        assert_eq!(
            header(&headers, "x-policybind-use-case").unwrap(),
            Some("chat")
        );
    }
}
