//! A SHA-256 value as a type, so a hash is never confused with other hex strings.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 32-byte SHA-256 digest. Shown and stored as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash256([u8; 32]);

impl Hash256 {
    /// All zeros: the `prev_hash` of a writer's first record and the predecessor
    /// head of its first segment.
    pub const ZERO: Hash256 = Hash256([0; 32]);

    /// Wrap raw digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Hash256(bytes)
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex characters, for human-readable reports.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Debug for Hash256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash256({})", self.to_hex())
    }
}

impl fmt::Display for Hash256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Why a text is not a [`Hash256`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid SHA-256 hex {0:?}: expected 64 lowercase hex characters")]
pub struct InvalidHash(String);

impl FromStr for Hash256 {
    type Err = InvalidHash;

    /// Only lowercase is accepted: one text per hash keeps stored records canonical.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(InvalidHash(text.to_string()));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| InvalidHash(text.to_string()))?;
        Ok(Hash256(bytes))
    }
}

impl Serialize for Hash256 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 64];
        // Cannot fail: the buffer is exactly twice the input length.
        hex::encode_to_slice(self.0, &mut buf).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for Hash256 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor rather than `String`: verification parses millions of these and
        // a borrowed `&str` avoids one allocation each.
        struct HexVisitor;
        impl serde::de::Visitor<'_> for HexVisitor {
            type Value = Hash256;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 lowercase hex characters")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Hash256, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(HexVisitor)
    }
}
