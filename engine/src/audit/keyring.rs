//! The keyring: which verification keys may sign for which writers, and when.
//!
//! A signature alone says "the holder of this key wrote this". In a cluster
//! every namespace has its own key, so the verifier must also know *which
//! writers* a key speaks for: a sidecar key of `team-a` signing a segment of
//! `webhook/...` or of a `team-b` pod is an [`UntrustedKey`] problem, however
//! valid the signature.
//!
//! The keyring is a small JSON (or YAML) document, versioned by its `format`
//! field, that the operator publishes (ConfigMap `policybind-audit-keys`, data key
//! `keys.json`, in PolicyBind's namespace) and auditors pass to
//! `policybind audit verify --keyring`:
//!
//! ```json
//! {
//!   "format": "policybind.io/audit-keyring/v1",
//!   "keys": [
//!     {
//!       "keyId": "3fa2b1c4d5e6f708",
//!       "publicKey": "-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----\n",
//!       "writers": ["sidecar/team-a/*"],
//!       "notBefore": "2026-11-01T00:00:00Z",
//!       "retiredAt": "2026-12-01T00:00:00Z"
//!     }
//!   ]
//! }
//! ```
//!
//! `writers` are globs over writer identities where `*` stays within one `/`
//! separated part (`sidecar/team-a/*` matches `sidecar/team-a/pod-1` only) and
//! `**` crosses parts. A key is valid for segments signed from `notBefore` on
//! and, once `retiredAt` is set, for segments signed before it: rotation keeps
//! every old segment verifiable. The time compared is the segment's signed seal
//! time (for an open segment, its last record's time).
//!
//! [`UntrustedKey`]: super::ProblemKind::UntrustedKey
use chrono::{DateTime, Utc};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use super::keys::{AuditVerifyingKey, KeyError};

/// Value of [`KeyringDocument::format`].
pub const KEYRING_FORMAT: &str = "policybind.io/audit-keyring/v1";

/// Why a keyring cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// Not JSON or YAML of the keyring's shape.
    #[error("keyring is not a valid document: {0}")]
    Parse(String),
    /// A `format` this code does not know.
    #[error("keyring format {0:?} is not supported (expected {KEYRING_FORMAT:?})")]
    Format(String),
    /// An entry is inconsistent.
    #[error("keyring entry {key_id:?}: {message}")]
    Entry { key_id: String, message: String },
}

/// One key and what it may sign.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyringEntry {
    /// First 16 hex characters of the SHA-256 of the 32 raw public key bytes;
    /// the `key_id` every signed segment header carries.
    pub key_id: String,
    /// The Ed25519 public key, PEM (`-----BEGIN PUBLIC KEY-----`).
    pub public_key: String,
    /// Writer identities the key may sign for, as globs.
    pub writers: Vec<String>,
    /// Segments signed before this time are not this key's.
    pub not_before: DateTime<Utc>,
    /// Set when the key was rotated out: it stays valid for segments signed
    /// before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<DateTime<Utc>>,
}

impl KeyringEntry {
    /// The entry for `key`, bound to `writers` from `not_before` on. This is what
    /// the operator calls when it generates a namespace's key.
    pub fn new(
        key: &AuditVerifyingKey,
        writers: Vec<String>,
        not_before: DateTime<Utc>,
    ) -> Result<Self, KeyError> {
        Ok(KeyringEntry {
            key_id: key.key_id().to_string(),
            public_key: key.to_public_key_pem()?,
            writers,
            not_before,
            retired_at: None,
        })
    }

    fn compile(&self) -> Result<TrustedKey, KeyringError> {
        let entry_error = |message: String| KeyringError::Entry {
            key_id: self.key_id.clone(),
            message,
        };
        let key = AuditVerifyingKey::from_key_material(self.public_key.as_bytes())
            .map_err(|e| entry_error(e.to_string()))?;
        if key.key_id() != self.key_id {
            return Err(entry_error(format!(
                "keyId does not match the public key (whose id is {})",
                key.key_id()
            )));
        }
        if self.writers.is_empty() {
            return Err(entry_error("binds the key to no writer".into()));
        }
        if let Some(retired) = self.retired_at
            && retired <= self.not_before
        {
            return Err(entry_error("retiredAt is not after notBefore".into()));
        }
        Ok(TrustedKey {
            matcher: writer_matcher(&self.writers).map_err(entry_error)?,
            key,
            writers: self.writers.clone(),
            not_before: self.not_before,
            retired_at: self.retired_at,
        })
    }
}

fn writer_matcher(patterns: &[String]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("writer pattern {pattern:?}: {e}"))?;
        set.add(glob);
    }
    set.build().map_err(|e| e.to_string())
}

/// The keyring as stored and published.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyringDocument {
    /// Always [`KEYRING_FORMAT`].
    pub format: String,
    /// The keys, in any order; a key may appear in several entries.
    pub keys: Vec<KeyringEntry>,
}

impl Default for KeyringDocument {
    fn default() -> Self {
        KeyringDocument {
            format: KEYRING_FORMAT.to_string(),
            keys: Vec::new(),
        }
    }
}

impl KeyringDocument {
    /// Read a keyring from JSON or YAML.
    pub fn parse(bytes: &[u8]) -> Result<Self, KeyringError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| KeyringError::Parse("keyring is not UTF-8".into()))?;
        let document: KeyringDocument = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| KeyringError::Parse(e.to_string()))?
        } else {
            serde_yaml::from_str(text).map_err(|e| KeyringError::Parse(e.to_string()))?
        };
        if document.format != KEYRING_FORMAT {
            return Err(KeyringError::Format(document.format));
        }
        Ok(document)
    }

    /// The document as pretty JSON (the form the operator publishes).
    pub fn to_json(&self) -> String {
        // Plain structs with string keys always serialize.
        serde_json::to_string_pretty(self).expect("keyring serializes")
    }

    /// Add an entry, or replace the one with the same key id and writers.
    pub fn upsert(&mut self, entry: KeyringEntry) {
        match self
            .keys
            .iter_mut()
            .find(|e| e.key_id == entry.key_id && e.writers == entry.writers)
        {
            Some(existing) => *existing = entry,
            None => self.keys.push(entry),
        }
    }

    /// Mark every entry of `key_id` retired at `at` (rotation). Returns whether
    /// any entry was found.
    pub fn retire(&mut self, key_id: &str, at: DateTime<Utc>) -> bool {
        let mut found = false;
        for entry in self.keys.iter_mut().filter(|e| e.key_id == key_id) {
            entry.retired_at.get_or_insert(at);
            found = true;
        }
        found
    }

    /// Check every entry and build the keyring a verifier uses.
    pub fn compile(&self) -> Result<Keyring, KeyringError> {
        let entries = self
            .keys
            .iter()
            .map(KeyringEntry::compile)
            .collect::<Result<_, _>>()?;
        Ok(Keyring { entries })
    }
}

/// A verification key with what it may sign.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    /// The key.
    pub key: AuditVerifyingKey,
    /// The writer globs, as written.
    pub writers: Vec<String>,
    matcher: GlobSet,
    /// Start of validity.
    pub not_before: DateTime<Utc>,
    /// End of validity, once rotated out.
    pub retired_at: Option<DateTime<Utc>>,
}

impl TrustedKey {
    /// Whether the key may sign for `writer`.
    pub fn binds(&self, writer: &str) -> bool {
        self.matcher.is_match(writer)
    }

    /// Whether the key was valid at `at`.
    pub fn valid_at(&self, at: DateTime<Utc>) -> bool {
        at >= self.not_before && self.retired_at.is_none_or(|retired| at < retired)
    }
}

/// Why a keyring does not accept a key for a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRefusal {
    /// No entry has this key id.
    Unknown,
    /// The key is known but bound to other writers.
    NotBound { patterns: Vec<String> },
    /// Bound, but the segment was signed outside the key's validity.
    NotValid {
        not_before: DateTime<Utc>,
        retired_at: Option<DateTime<Utc>>,
    },
}

impl KeyRefusal {
    /// A sentence for reports.
    pub fn describe(&self, key_id: &str, writer: &str, at: DateTime<Utc>) -> String {
        match self {
            KeyRefusal::Unknown => format!("signed by key {key_id:?}, which is not in the keyring"),
            KeyRefusal::NotBound { patterns } => format!(
                "signed by key {key_id}, which is not bound to writer {writer:?} (it may sign for: {})",
                patterns.join(", ")
            ),
            KeyRefusal::NotValid {
                not_before,
                retired_at,
            } => format!(
                "signed by key {key_id} at {at}, outside its validity (from {not_before}{})",
                retired_at.map_or(String::new(), |r| format!(", retired at {r}"))
            ),
        }
    }
}

/// The compiled keyring.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    entries: Vec<TrustedKey>,
}

impl Keyring {
    /// One key bound to the given writer globs, valid at any time: what
    /// `policybind audit verify --key K --key-writers P` builds.
    pub fn single(key: AuditVerifyingKey, writers: Vec<String>) -> Result<Self, KeyringError> {
        let entry = TrustedKey {
            matcher: writer_matcher(&writers).map_err(|message| KeyringError::Entry {
                key_id: key.key_id().to_string(),
                message,
            })?,
            key,
            writers,
            not_before: DateTime::<Utc>::MIN_UTC,
            retired_at: None,
        };
        Ok(Keyring {
            entries: vec![entry],
        })
    }

    /// Both keyrings' entries.
    pub fn merge(mut self, other: Keyring) -> Keyring {
        self.entries.extend(other.entries);
        self
    }

    /// Whether the keyring holds no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry.
    pub fn entries(&self) -> &[TrustedKey] {
        &self.entries
    }

    /// The key with id `key_id`, if the keyring lets it sign for `writer` at
    /// `at` (validity is not checked when `at` is unknown); else the most
    /// specific refusal.
    pub fn key_for(
        &self,
        key_id: &str,
        writer: &str,
        at: Option<DateTime<Utc>>,
    ) -> Result<&AuditVerifyingKey, KeyRefusal> {
        let mut refusal = KeyRefusal::Unknown;
        for entry in self.entries.iter().filter(|e| e.key.key_id() == key_id) {
            if !entry.binds(writer) {
                if let KeyRefusal::Unknown = refusal {
                    refusal = KeyRefusal::NotBound {
                        patterns: entry.writers.clone(),
                    };
                }
                continue;
            }
            if at.is_none_or(|at| entry.valid_at(at)) {
                return Ok(&entry.key);
            }
            refusal = KeyRefusal::NotValid {
                not_before: entry.not_before,
                retired_at: entry.retired_at,
            };
        }
        Err(refusal)
    }

    /// Every key bound to `writer` (valid at any time), for checking notes whose
    /// signer is named by key name rather than key id.
    pub fn keys_for_writer<'a>(
        &'a self,
        writer: &'a str,
    ) -> impl Iterator<Item = &'a TrustedKey> + 'a {
        self.entries.iter().filter(move |e| e.binds(writer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditSigningKey;
    use chrono::TimeZone;

    fn time(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, day, 0, 0, 0).unwrap()
    }

    fn public(seed: u8) -> AuditVerifyingKey {
        AuditSigningKey::from_seed(&[seed; 32]).verifying_key()
    }

    fn document() -> KeyringDocument {
        let mut document = KeyringDocument::default();
        document.upsert(
            KeyringEntry::new(&public(1), vec!["sidecar/team-a/*".into()], time(1)).unwrap(),
        );
        document.upsert(
            KeyringEntry::new(
                &public(2),
                vec!["webhook/*".into(), "operator/*".into()],
                time(1),
            )
            .unwrap(),
        );
        document
    }

    #[test]
    fn the_document_round_trips_through_json_and_yaml() {
        let document = document();
        let json = document.to_json();
        assert!(json.contains("\"keyId\""), "{json}");
        assert!(
            json.contains("\"notBefore\": \"2026-11-01T00:00:00Z\""),
            "{json}"
        );
        assert_eq!(KeyringDocument::parse(json.as_bytes()).unwrap(), document);
        let yaml = serde_yaml::to_string(&document).unwrap();
        assert_eq!(KeyringDocument::parse(yaml.as_bytes()).unwrap(), document);
    }

    #[test]
    fn a_key_signs_only_for_the_writers_it_is_bound_to() {
        let keyring = document().compile().unwrap();
        let team_a = public(1);
        let id = team_a.key_id();
        assert_eq!(
            keyring.key_for(id, "sidecar/team-a/pod-1", Some(time(2))),
            Ok(&team_a)
        );
        assert_eq!(
            keyring.key_for(id, "sidecar/team-b/pod-1", Some(time(2))),
            Err(KeyRefusal::NotBound {
                patterns: vec!["sidecar/team-a/*".into()]
            })
        );
        // `*` does not cross a `/`.
        assert!(
            keyring
                .key_for(id, "sidecar/team-a/x/y", Some(time(2)))
                .is_err()
        );
        assert!(
            keyring
                .key_for(public(2).key_id(), "webhook/w-1", Some(time(2)))
                .is_ok()
        );
        assert_eq!(
            keyring.key_for(public(3).key_id(), "webhook/w-1", Some(time(2))),
            Err(KeyRefusal::Unknown)
        );
    }

    #[test]
    fn a_retired_key_still_verifies_what_it_signed_before_retirement() {
        let mut document = document();
        assert!(document.retire(public(1).key_id(), time(10)));
        let keyring = document.compile().unwrap();
        let key = public(1);
        let id = key.key_id();
        assert!(
            keyring
                .key_for(id, "sidecar/team-a/p", Some(time(9)))
                .is_ok()
        );
        assert!(matches!(
            keyring.key_for(id, "sidecar/team-a/p", Some(time(10))),
            Err(KeyRefusal::NotValid { .. })
        ));
        assert!(matches!(
            keyring.key_for(
                id,
                "sidecar/team-a/p",
                Some(Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap())
            ),
            Err(KeyRefusal::NotValid { .. })
        ));
    }

    #[test]
    fn inconsistent_entries_and_unknown_formats_are_refused() {
        let mut document = document();
        document.keys[0].key_id = public(9).key_id().to_string();
        assert!(matches!(
            document.compile(),
            Err(KeyringError::Entry { .. })
        ));
        let mut document = self::document();
        document.keys[0].writers.clear();
        assert!(document.compile().is_err());
        let mut document = self::document();
        document.keys[0].writers = vec!["[".into()];
        assert!(document.compile().is_err());
        let mut document = self::document();
        document.format = "policybind.io/audit-keyring/v9".into();
        assert!(matches!(
            KeyringDocument::parse(document.to_json().as_bytes()),
            Err(KeyringError::Format(_))
        ));
        assert!(KeyringDocument::parse(b"{\"format\": 1}").is_err());
    }
}
