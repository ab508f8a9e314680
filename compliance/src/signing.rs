//! Detached Ed25519 signatures over a report's canonical JSON.
//!
//! A report directory holds `<name>.json` (the report), `<name>.json.sig` (a
//! [`Signature`] document), `<name>.html` (carrying the SHA-256 of the canonical
//! JSON) and `<name>.oscal-ar.json`. The signature covers the canonical bytes of
//! the report ([`crate::canonical`]); the keys are the audit trail's Ed25519 key
//! types, so `policybind audit keygen` makes report keys too. A verifier trusts only
//! keys it is given: the signature document names its key id, never its key.
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use policybind_engine::audit::{AuditSigningKey, AuditVerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Value of [`Signature::format`].
pub const SIGNATURE_FORMAT: &str = "policybind-report-signature/v1";

/// A detached signature document.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Signature {
    /// Always [`SIGNATURE_FORMAT`].
    pub format: String,
    /// Always `Ed25519`.
    pub algorithm: String,
    /// Id of the signing key (first 16 hex characters of the SHA-256 of its public key).
    pub key_id: String,
    /// File name of the signed report, for people.
    pub signed: String,
    /// Hex SHA-256 of the canonical JSON that was signed.
    pub sha256: String,
    /// Base64 Ed25519 signature over the canonical JSON bytes.
    pub signature: String,
}

/// Why a signature does not hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the signature document is not a {SIGNATURE_FORMAT} Ed25519 signature")]
    Malformed,
    #[error(
        "the report was changed after signing: its canonical SHA-256 is {actual}, the signature covers {signed}"
    )]
    Modified { signed: String, actual: String },
    #[error("signed by key {0}, which is not among the trusted keys")]
    UntrustedKey(String),
    #[error("the signature does not verify with trusted key {0}")]
    BadSignature(String),
}

/// Hex SHA-256 of canonical bytes.
pub fn digest(canonical: &[u8]) -> String {
    hex::encode(Sha256::digest(canonical))
}

/// Signs canonical report bytes.
pub fn sign(canonical: &[u8], signed: &str, key: &AuditSigningKey) -> Signature {
    Signature {
        format: SIGNATURE_FORMAT.to_string(),
        algorithm: "Ed25519".to_string(),
        key_id: key.key_id().to_string(),
        signed: signed.to_string(),
        sha256: digest(canonical),
        signature: BASE64.encode(key.sign(canonical)),
    }
}

/// Checks `signature` over canonical report bytes with the trusted keys. Returns the
/// verified digest.
pub fn verify(
    canonical: &[u8],
    signature: &Signature,
    trusted: &[AuditVerifyingKey],
) -> Result<String, SignatureError> {
    if signature.format != SIGNATURE_FORMAT || signature.algorithm != "Ed25519" {
        return Err(SignatureError::Malformed);
    }
    let actual = digest(canonical);
    if actual != signature.sha256 {
        return Err(SignatureError::Modified {
            signed: signature.sha256.clone(),
            actual,
        });
    }
    let bytes = BASE64
        .decode(&signature.signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
        .ok_or(SignatureError::Malformed)?;
    let key = trusted
        .iter()
        .find(|k| k.key_id() == signature.key_id)
        .ok_or_else(|| SignatureError::UntrustedKey(signature.key_id.clone()))?;
    if key.verify(canonical, &bytes) {
        Ok(actual)
    } else {
        Err(SignatureError::BadSignature(signature.key_id.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_catches_a_changed_byte_and_a_foreign_key() {
        let key = AuditSigningKey::from_seed(&[3; 32]);
        let other = AuditSigningKey::from_seed(&[4; 32]);
        let signature = sign(b"{\"a\":1}", "r.json", &key);
        let trusted = [key.verifying_key()];
        assert!(verify(b"{\"a\":1}", &signature, &trusted).is_ok());
        assert!(matches!(
            verify(b"{\"a\":2}", &signature, &trusted),
            Err(SignatureError::Modified { .. })
        ));
        assert_eq!(
            verify(b"{\"a\":1}", &signature, &[other.verifying_key()]),
            Err(SignatureError::UntrustedKey(key.key_id().to_string()))
        );
        let mut forged = signature.clone();
        forged.signature = BASE64.encode(other.sign(b"{\"a\":1}"));
        assert_eq!(
            verify(b"{\"a\":1}", &forged, &trusted),
            Err(SignatureError::BadSignature(key.key_id().to_string()))
        );
    }
}
