//! Ed25519 keys that sign and verify segment headers.
//!
//! Parsing is pure (bytes in, key out); where the bytes come from (a file, a
//! Kubernetes Secret) is the `policybind-audit` crate's business. A key is named by
//! its [`key id`](AuditVerifyingKey::key_id), the first 16 hex characters of the
//! SHA-256 of the 32 public key bytes; every sealed header carries it so a verifier
//! can tell "signed by a key I do not trust" from "signature does not match".
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Why key material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not 32 raw bytes, not PEM of the expected kind, or not a valid Ed25519 key.
    #[error("unrecognised {what}: expected {expected}")]
    Unrecognised {
        what: &'static str,
        expected: &'static str,
    },
    /// Could not encode a key as PEM.
    #[error("could not encode key as PEM: {0}")]
    Encode(String),
}

fn key_id_of(public: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

/// The key a writer signs sealed segment headers with.
#[derive(Clone)]
pub struct AuditSigningKey {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for AuditSigningKey {
    // Never print the secret half.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSigningKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl AuditSigningKey {
    /// From a 32-byte Ed25519 seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let key_id = key_id_of(&key.verifying_key());
        AuditSigningKey { key, key_id }
    }

    /// From key file or Secret content: either exactly 32 raw bytes (the seed) or a
    /// PKCS#8 PEM document (`-----BEGIN PRIVATE KEY-----`, as `openssl genpkey
    /// -algorithm ed25519` writes).
    pub fn from_key_material(bytes: &[u8]) -> Result<Self, KeyError> {
        if let Ok(seed) = <&[u8; 32]>::try_from(bytes) {
            return Ok(AuditSigningKey::from_seed(seed));
        }
        let unrecognised = KeyError::Unrecognised {
            what: "signing key",
            expected: "32 raw bytes (Ed25519 seed) or a PKCS#8 PEM private key",
        };
        let text = std::str::from_utf8(bytes).map_err(|_| unrecognised)?;
        let key = SigningKey::from_pkcs8_pem(text.trim()).map_err(|_| KeyError::Unrecognised {
            what: "signing key",
            expected: "32 raw bytes (Ed25519 seed) or a PKCS#8 PEM private key",
        })?;
        let key_id = key_id_of(&key.verifying_key());
        Ok(AuditSigningKey { key, key_id })
    }

    /// The PKCS#8 PEM form, for writing a generated key to a file or Secret.
    pub fn to_pkcs8_pem(&self) -> Result<String, KeyError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .map_err(|e| KeyError::Encode(e.to_string()))
    }

    /// The key id (16 hex characters).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public half, which may be published to auditors.
    pub fn verifying_key(&self) -> AuditVerifyingKey {
        AuditVerifyingKey {
            key: self.key.verifying_key(),
            key_id: self.key_id.clone(),
        }
    }

    /// Sign a message (the canonical header bytes).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

/// A public key a verifier trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditVerifyingKey {
    key: VerifyingKey,
    key_id: String,
}

impl AuditVerifyingKey {
    /// From published key material: a PEM public key (`-----BEGIN PUBLIC KEY-----`),
    /// 64 hex characters, or exactly 32 raw bytes.
    pub fn from_key_material(bytes: &[u8]) -> Result<Self, KeyError> {
        let unrecognised = || KeyError::Unrecognised {
            what: "verification key",
            expected: "a PEM public key, 64 hex characters or 32 raw bytes",
        };
        let key = if let Ok(raw) = <&[u8; 32]>::try_from(bytes) {
            VerifyingKey::from_bytes(raw).map_err(|_| unrecognised())?
        } else {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| unrecognised())?
                .trim();
            if text.len() == 64 {
                let mut raw = [0u8; 32];
                hex::decode_to_slice(text, &mut raw).map_err(|_| unrecognised())?;
                VerifyingKey::from_bytes(&raw).map_err(|_| unrecognised())?
            } else {
                VerifyingKey::from_public_key_pem(text).map_err(|_| unrecognised())?
            }
        };
        let key_id = key_id_of(&key);
        Ok(AuditVerifyingKey { key, key_id })
    }

    /// The PEM (SubjectPublicKeyInfo) form to publish.
    pub fn to_public_key_pem(&self) -> Result<String, KeyError> {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| KeyError::Encode(e.to_string()))
    }

    /// The 32 raw public key bytes (RFC 8032 encoding).
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// The 32 public key bytes as hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    /// The key id (16 hex characters).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Whether `signature` is a valid (strict) Ed25519 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.key
            .verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_key_from_pem_and_from_seed_agree() {
        let key = AuditSigningKey::from_seed(&[7; 32]);
        let pem = key.to_pkcs8_pem().unwrap();
        let back = AuditSigningKey::from_key_material(pem.as_bytes()).unwrap();
        assert_eq!(back.key_id(), key.key_id());
        assert_eq!(back.sign(b"m"), key.sign(b"m"));
    }

    #[test]
    fn verifying_key_parses_from_pem_hex_and_raw_bytes() {
        let public = AuditSigningKey::from_seed(&[9; 32]).verifying_key();
        let pem = public.to_public_key_pem().unwrap();
        for material in [
            pem.into_bytes(),
            public.to_hex().into_bytes(),
            public.key.to_bytes().to_vec(),
        ] {
            let parsed = AuditVerifyingKey::from_key_material(&material).unwrap();
            assert_eq!(parsed, public);
        }
    }

    #[test]
    fn garbage_is_not_a_key() {
        assert!(AuditSigningKey::from_key_material(b"not a key").is_err());
        assert!(AuditVerifyingKey::from_key_material(b"not a key").is_err());
    }

    #[test]
    fn signature_from_another_key_does_not_verify() {
        let a = AuditSigningKey::from_seed(&[1; 32]);
        let b = AuditSigningKey::from_seed(&[2; 32]);
        let signature = b.sign(b"header");
        assert!(!a.verifying_key().verify(b"header", &signature));
        assert!(b.verifying_key().verify(b"header", &signature));
        assert_ne!(a.key_id(), b.key_id());
    }
}
