//! Loading the signing key that seals segments, and the keyring that says which
//! writers each verification key may sign for.
//!
//! The signing key material is the same wherever it comes from: either exactly
//! 32 raw bytes (the Ed25519 seed) or a PKCS#8 PEM private key (`-----BEGIN
//! PRIVATE KEY-----`, e.g. from `openssl genpkey -algorithm ed25519` or
//! `policybind audit keygen`). In a Secret it sits under the data key
//! [`keys::SIGNING_KEY`].
//!
//! The keyring ([`KeyringDocument`], format in `docs/audit.md`) is published by
//! the operator in the ConfigMap [`names::AUDIT_KEYRING`], data key
//! [`keys::AUDIT_KEYRING`], in PolicyBind's namespace; auditors pass it to
//! `policybind audit verify --keyring`. The operator builds an entry per
//! namespace key with [`keyring_entry`] and publishes the document with
//! [`keyring_config_map`].
use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::ObjectMeta;
use kube::{Api, Client};
use policybind_crds::wire::{keys, labels, names};
use policybind_engine::audit::{AuditSigningKey, Keyring, KeyringDocument, KeyringEntry};

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
    Ok(signing_key_secret(client, namespace, name).await?.0)
}

/// The signing key in the Secret `namespace/name`, and when that Secret was
/// created: the start of the key's validity in a keyring.
pub async fn signing_key_secret(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<(AuditSigningKey, Option<DateTime<Utc>>), Error> {
    let secret = Api::<Secret>::namespaced(client, namespace)
        .get(name)
        .await?;
    let key = signing_key_of(&secret)?;
    Ok((key, secret_created(&secret)))
}

/// The signing key a Secret holds under [`keys::SIGNING_KEY`].
pub fn signing_key_of(secret: &Secret) -> Result<AuditSigningKey, Error> {
    let namespace = secret.metadata.namespace.clone().unwrap_or_default();
    let name = secret.metadata.name.clone().unwrap_or_default();
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(keys::SIGNING_KEY));
    let Some(bytes) = bytes else {
        return Err(Error::DataKeyMissing {
            kind: "Secret",
            namespace,
            name,
            key: keys::SIGNING_KEY.to_string(),
        });
    };
    AuditSigningKey::from_key_material(&bytes.0).map_err(|source| Error::Key {
        origin: format!("Secret {namespace}/{name}"),
        source,
    })
}

/// When a Secret was created (its `metadata.creationTimestamp`).
pub fn secret_created(secret: &Secret) -> Option<DateTime<Utc>> {
    let created = secret.metadata.creation_timestamp.as_ref()?.0;
    DateTime::from_timestamp(
        created.as_second(),
        created.subsec_nanosecond().max(0) as u32,
    )
}

/// The keyring entry of a writer's signing key: its public half bound to
/// `writers` (globs such as `sidecar/team-a/*`) from `not_before` on.
pub fn keyring_entry(
    key: &AuditSigningKey,
    writers: Vec<String>,
    not_before: DateTime<Utc>,
) -> Result<KeyringEntry, Error> {
    KeyringEntry::new(&key.verifying_key(), writers, not_before).map_err(|source| Error::Key {
        origin: format!("key {}", key.key_id()),
        source,
    })
}

/// Parse and check a keyring document (JSON or YAML).
pub fn keyring_from_bytes(bytes: &[u8], origin: &str) -> Result<(KeyringDocument, Keyring), Error> {
    let keyring_error = |source| Error::Keyring {
        origin: origin.to_string(),
        source,
    };
    let document = KeyringDocument::parse(bytes).map_err(keyring_error)?;
    let keyring = document.compile().map_err(keyring_error)?;
    Ok((document, keyring))
}

/// Read a keyring file.
pub fn keyring_from_file(path: &Path) -> Result<Keyring, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        action: "read keyring",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(keyring_from_bytes(&bytes, &path.display().to_string())?.1)
}

/// Read the published keyring from its ConfigMap in `namespace` (PolicyBind's).
pub async fn keyring_from_config_map(
    client: Client,
    namespace: &str,
) -> Result<KeyringDocument, Error> {
    let config_map = Api::<ConfigMap>::namespaced(client, namespace)
        .get(names::AUDIT_KEYRING)
        .await?;
    let json = config_map
        .data
        .as_ref()
        .and_then(|data| data.get(keys::AUDIT_KEYRING))
        .ok_or_else(|| Error::DataKeyMissing {
            kind: "ConfigMap",
            namespace: namespace.to_string(),
            name: names::AUDIT_KEYRING.to_string(),
            key: keys::AUDIT_KEYRING.to_string(),
        })?;
    let origin = format!("ConfigMap {namespace}/{}", names::AUDIT_KEYRING);
    Ok(keyring_from_bytes(json.as_bytes(), &origin)?.0)
}

/// The ConfigMap that publishes `document` in `namespace` (PolicyBind's).
pub fn keyring_config_map(namespace: &str, document: &KeyringDocument) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(names::AUDIT_KEYRING.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                labels::MANAGED_BY.to_string(),
                labels::MANAGED_BY_VALUE.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            keys::AUDIT_KEYRING.to_string(),
            document.to_json(),
        )])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_built_from_a_signing_key_round_trips_through_the_config_map() {
        let key = AuditSigningKey::from_seed(&[4; 32]);
        let entry = keyring_entry(
            &key,
            vec!["sidecar/team-a/*".into()],
            DateTime::from_timestamp(1_780_000_000, 0).unwrap(),
        )
        .unwrap();
        assert_eq!(entry.key_id, key.key_id());
        let mut document = KeyringDocument::default();
        document.upsert(entry);
        let config_map = keyring_config_map("policybind-system", &document);
        assert_eq!(
            config_map.metadata.name.as_deref(),
            Some("policybind-audit-keys")
        );
        let json = &config_map.data.unwrap()["keys.json"];
        let (parsed, keyring) = keyring_from_bytes(json.as_bytes(), "test").unwrap();
        assert_eq!(parsed, document);
        let at = Some(DateTime::from_timestamp(1_790_000_000, 0).unwrap());
        assert!(
            keyring
                .key_for(key.key_id(), "sidecar/team-a/p", at)
                .is_ok()
        );
        assert!(keyring.key_for(key.key_id(), "webhook/w", at).is_err());
    }
}
