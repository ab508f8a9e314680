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

/// Value of each lowercase hex digit, 0xff for every other byte (upper-case
/// digits included: one text per hash keeps stored records canonical).
const HEX_VALUES: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Why a text is not a [`Hash256`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid SHA-256 hex {0:?}: expected 64 lowercase hex characters")]
pub struct InvalidHash(String);

impl FromStr for Hash256 {
    type Err = InvalidHash;

    /// Only lowercase is accepted: one text per hash keeps stored records canonical.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // A verifier decodes two of these per record: a table lookup per digit,
        // one validity check at the end.
        let digits = text.as_bytes();
        if digits.len() != 64 {
            return Err(InvalidHash(text.to_string()));
        }
        let mut bytes = [0u8; 32];
        let mut invalid = 0u8;
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            let (high, low) = (HEX_VALUES[pair[0] as usize], HEX_VALUES[pair[1] as usize]);
            invalid |= high | low;
            *byte = high << 4 | low;
        }
        if invalid & 0xf0 != 0 {
            return Err(InvalidHash(text.to_string()));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_64_lowercase_hex_digits_are_a_hash() {
        let text = "0123456789abcdef".repeat(4);
        let hash: Hash256 = text.parse().unwrap();
        assert_eq!(hash.to_hex(), text);
        assert_eq!(hash.as_bytes()[..2], [0x01, 0x23]);
        for bad in [
            "0123456789ABCDEF".repeat(4),
            "0123456789abcdeg".repeat(4),
            "00".repeat(31),
            "00".repeat(33),
            format!("{}é", "0".repeat(62)),
        ] {
            assert!(bad.parse::<Hash256>().is_err(), "{bad}");
        }
    }
}
