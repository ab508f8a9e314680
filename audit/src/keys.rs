//! Loading the signing key that seals segments.
//!
//! The material is the same wherever it comes from: either exactly 32 raw bytes
//! (the Ed25519 seed) or a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`,
//! e.g. from `openssl genpkey -algorithm ed25519` or `policybind audit keygen`).
//! In a Secret it sits under the data key [`keys::SIGNING_KEY`]. The public half is what
//! auditors get (`policybind audit keygen` writes it next to the private key).
use policybind_crds::wire::keys;
use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use policybind_engine::audit::AuditSigningKey;

use crate::Error;

/// Read the signing key from a file.
pub fn signing_key_from_file(path: &Path) -> Result<AuditSigningKey, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        action: "read signing key",
        path: path.to_path_buf(),
        source,
    })?;
    AuditSigningKey::from_key_material(&bytes).map_err(|source| Error::Key {
        origin: path.display().to_string(),
        source,
    })
}

/// Read the signing key from the Secret `namespace/name`, data key [`keys::SIGNING_KEY`].
pub async fn signing_key_from_secret(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<AuditSigningKey, Error> {
    let secret = Api::<Secret>::namespaced(client, namespace)
        .get(name)
        .await?;
    let missing = || Error::SecretKeyMissing {
        namespace: namespace.to_string(),
        name: name.to_string(),
        key: keys::SIGNING_KEY.to_string(),
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(keys::SIGNING_KEY))
        .ok_or_else(missing)?;
    AuditSigningKey::from_key_material(&bytes.0).map_err(|source| Error::Key {
        origin: format!("Secret {namespace}/{name}"),
        source,
    })
}
