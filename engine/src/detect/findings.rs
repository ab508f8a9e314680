//! [`Findings`]: what the detectors found in one text.
//!
//! An enforcement point scans each text once ([`crate::PolicySet::scan`]) and
//! hands the findings to the decision ([`crate::PolicySet::decide_scanned`])
//! and then to redaction, so no text is scanned twice.

use serde::{Deserialize, Serialize};

use super::{Finding, redact};

/// The findings of one text, sorted by start. Entity findings (personal
/// data, secrets, custom detectors) never overlap; a
/// [`PROMPT_INJECTION`](super::PROMPT_INJECTION)
/// finding marks the passage that made the classifier decide and may overlap
/// them. Spans are byte offsets on character boundaries of the text scanned.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Findings {
    list: Vec<Finding>,
    /// Length of the text scanned, so that findings of several texts can be
    /// joined into findings of their concatenation.
    #[serde(skip)]
    text_len: usize,
}

impl Findings {
    /// Findings of a text of `text_len` bytes, as a scan returned them (or as
    /// a caller that scanned elsewhere recorded them). Findings out of the
    /// text's bounds are dropped; redaction skips malformed spans anyway.
    pub fn new(mut list: Vec<Finding>, text_len: usize) -> Findings {
        list.retain(|f| f.start <= f.end && f.end <= text_len);
        list.sort_by_key(|f| f.start);
        Findings { list, text_len }
    }

    /// No findings, for a request without text.
    pub fn none() -> Findings {
        Findings::default()
    }

    /// The findings of texts joined by a separator of `separator_len` bytes,
    /// with spans counted from the start of the joined text: what scanning
    /// each text on its own and joining them gives. (Scanning the joined text
    /// could find an entity across a separator, which the texts sent on do
    /// not contain as such.)
    pub fn join<'a>(
        parts: impl IntoIterator<Item = &'a Findings>,
        separator_len: usize,
    ) -> Findings {
        let mut joined = Findings::default();
        for (i, part) in parts.into_iter().enumerate() {
            let offset = joined.text_len + if i == 0 { 0 } else { separator_len };
            joined.list.extend(part.list.iter().map(|f| Finding {
                start: f.start + offset,
                end: f.end + offset,
                ..f.clone()
            }));
            joined.text_len = offset + part.text_len;
        }
        joined
    }

    pub fn as_slice(&self) -> &[Finding] {
        &self.list
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Finding> {
        self.list.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Length of the text these findings are of.
    pub fn text_len(&self) -> usize {
        self.text_len
    }

    /// Whether some finding is of `entity`.
    pub fn contains(&self, entity: &str) -> bool {
        self.list.iter().any(|f| f.entity == entity)
    }

    /// The entities found, sorted and without repetition.
    pub fn entities(&self) -> Vec<&str> {
        let mut entities: Vec<&str> = self.list.iter().map(|f| f.entity.as_str()).collect();
        entities.sort_unstable();
        entities.dedup();
        entities
    }

    /// `text` with the findings of `entities` (every redactable entity when
    /// empty) replaced; see [`redact`].
    pub fn redact(&self, text: &str, entities: &[String], replacement: &str) -> String {
        redact(text, &self.list, entities, replacement)
    }

    pub fn into_vec(self) -> Vec<Finding> {
        self.list
    }
}

impl<'a> IntoIterator for &'a Findings {
    type Item = &'a Finding;
    type IntoIter = std::slice::Iter<'a, Finding>;

    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Detectors;

    #[test]
    fn joined_findings_point_into_the_joined_text() {
        let detectors = Detectors::builtin();
        let texts = ["mail jane@example.com", "", "call +44 20 7946 0958 now"];
        let parts: Vec<Findings> = texts
            .iter()
            .map(|t| Findings::new(detectors.scan(t), t.len()))
            .collect();
        let joined_text = texts.join("\n");
        let joined = Findings::join(&parts, 1);
        assert_eq!(joined.text_len(), joined_text.len());
        let spans: Vec<&str> = joined
            .iter()
            .map(|f| &joined_text[f.start..f.end])
            .collect();
        assert_eq!(spans, ["jane@example.com", "+44 20 7946 0958"]);
        assert_eq!(joined.entities(), ["EMAIL", "PHONE"]);
    }

    #[test]
    fn findings_outside_the_text_are_dropped() {
        let finding = |start, end| Finding {
            entity: "EMAIL".into(),
            detector: "email".into(),
            start,
            end,
        };
        let findings = Findings::new(vec![finding(8, 30), finding(0, 4)], 10);
        assert_eq!(findings.as_slice(), &[finding(0, 4)]);
    }
}
