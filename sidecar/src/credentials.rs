//! Provider keys: read from mounted Secrets (or the environment), never logged,
//! audited or returned.
//!
//! A ModelDeployment names its key as `spec.credentials.secretRef {name, key}`;
//! only that reference travels in bundles. The enforcement point reads the
//! value from `<credentials dir>/<name>/<key>`, the layout Kubernetes gives a
//! Secret volume mounted at `<credentials dir>/<name>`, so the chart mounts each
//! provider Secret there; in standalone mode any directory laid out the same
//! way works. A reference can instead be mapped to an environment variable
//! (`--credential-env name/key=VAR`).
//!
//! A file is read again when its cached copy is older than the refresh interval
//! (one second by default): when the kubelet swaps a rotated Secret into the
//! volume, the new key is used within a second, without a restart. A key that
//! cannot be read refuses the requests that need it (`ROUTE_UNAVAILABLE`); it
//! never falls back to sending the request without a key.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use policybind_crds::SecretKeyRef;

/// Largest key file read.
const MAX_KEY_BYTES: u64 = 16 * 1024;

/// A provider key. Its `Debug` never shows the value, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderKey(Arc<str>);

impl ProviderKey {
    pub fn new(value: &str) -> ProviderKey {
        ProviderKey(Arc::from(value))
    }

    /// The value, for the upstream header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProviderKey(<redacted>)")
    }
}

/// Why a key cannot be used. The messages name the reference, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "provider key Secret {name}/{key} is not mounted (no credentials directory is configured)"
    )]
    NoDirectory { name: String, key: String },
    #[error("provider key Secret {name}/{key} cannot be read at {path}: {reason}")]
    Unreadable {
        name: String,
        key: String,
        path: String,
        reason: String,
    },
    #[error("provider key Secret {name}/{key} is empty")]
    Empty { name: String, key: String },
    #[error(
        "provider key Secret {name}/{key} contains control characters or is too long; it cannot be sent in a header"
    )]
    Malformed { name: String, key: String },
    #[error("environment variable {var} for provider key {name}/{key} is not set")]
    EnvMissing {
        name: String,
        key: String,
        var: String,
    },
}

/// Where keys come from.
#[derive(Debug, Clone, Default)]
pub struct CredentialSettings {
    /// Directory of mounted Secrets (`<dir>/<secret>/<key>`).
    pub dir: Option<PathBuf>,
    /// References read from environment variables instead: `(secret, key) -> VAR`.
    pub env: BTreeMap<(String, String), String>,
    /// How long a key read from a file is used before the file is read again.
    pub refresh: Duration,
}

struct Cached {
    read_at: Instant,
    value: Result<ProviderKey, CredentialError>,
}

/// The key store.
pub struct Credentials {
    settings: CredentialSettings,
    cache: RwLock<HashMap<(String, String), Cached>>,
}

impl Credentials {
    pub fn new(settings: CredentialSettings) -> Credentials {
        Credentials {
            settings,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// The key a reference names, as of at most the refresh interval ago.
    pub fn key(&self, secret: &SecretKeyRef) -> Result<ProviderKey, CredentialError> {
        let id = (secret.name.clone(), secret.key.clone());
        if let Some(var) = self.settings.env.get(&id) {
            return from_env(secret, var);
        }
        {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            if let Some(cached) = cache.get(&id)
                && cached.read_at.elapsed() < self.settings.refresh
            {
                return cached.value.clone();
            }
        }
        let value = self.read_file(secret);
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        cache.insert(
            id,
            Cached {
                read_at: Instant::now(),
                value: value.clone(),
            },
        );
        value
    }

    fn read_file(&self, secret: &SecretKeyRef) -> Result<ProviderKey, CredentialError> {
        let Some(dir) = &self.settings.dir else {
            return Err(CredentialError::NoDirectory {
                name: secret.name.clone(),
                key: secret.key.clone(),
            });
        };
        // The CRD's patterns keep both parts to one path component each; check
        // again, since a bundle is data.
        let safe = |s: &str| !s.is_empty() && !s.contains('/') && s != "." && s != "..";
        let path = dir.join(&secret.name).join(&secret.key);
        let unreadable = |reason: String| CredentialError::Unreadable {
            name: secret.name.clone(),
            key: secret.key.clone(),
            path: path.display().to_string(),
            reason,
        };
        if !safe(&secret.name) || !safe(&secret.key) {
            return Err(unreadable("not a valid Secret name and key".into()));
        }
        let file = std::fs::File::open(&path).map_err(|e| unreadable(e.to_string()))?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_KEY_BYTES), &mut text)
            .map_err(|e| unreadable(e.to_string()))?;
        validate(secret, text.trim())
    }
}

fn from_env(secret: &SecretKeyRef, var: &str) -> Result<ProviderKey, CredentialError> {
    match std::env::var(var) {
        Ok(value) => validate(secret, value.trim()),
        Err(_) => Err(CredentialError::EnvMissing {
            name: secret.name.clone(),
            key: secret.key.clone(),
            var: var.to_string(),
        }),
    }
}

fn validate(secret: &SecretKeyRef, value: &str) -> Result<ProviderKey, CredentialError> {
    if value.is_empty() {
        return Err(CredentialError::Empty {
            name: secret.name.clone(),
            key: secret.key.clone(),
        });
    }
    if value.len() > 8192 || value.bytes().any(|b| b.is_ascii_control() || !b.is_ascii()) {
        return Err(CredentialError::Malformed {
            name: secret.name.clone(),
            key: secret.key.clone(),
        });
    }
    Ok(ProviderKey::new(value))
}

/// Parses `--credential-env name/key=VAR`.
pub fn parse_env_mapping(text: &str) -> Result<((String, String), String), String> {
    let (reference, var) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected <secret>/<key>=<ENV_VAR>"))?;
    let (name, key) = reference
        .split_once('/')
        .ok_or_else(|| format!("{text:?}: expected <secret>/<key>=<ENV_VAR>"))?;
    if name.is_empty() || key.is_empty() || var.is_empty() {
        return Err(format!(
            "{text:?}: secret, key and variable must not be empty"
        ));
    }
    Ok(((name.to_string(), key.to_string()), var.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }

    #[test]
    fn a_rotated_mounted_key_is_used_after_the_refresh_interval() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("openai")).unwrap();
        let file = dir.path().join("openai/api-key");
        std::fs::write(&file, "sk-first\n").unwrap();
        let store = Credentials::new(CredentialSettings {
            dir: Some(dir.path().to_path_buf()),
            refresh: Duration::from_millis(50),
            ..Default::default()
        });
        let openai = reference("openai", "api-key");
        assert_eq!(store.key(&openai).unwrap().expose(), "sk-first");
        std::fs::write(&file, "sk-second").unwrap();
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(store.key(&openai).unwrap().expose(), "sk-second");
    }

    #[test]
    fn missing_empty_malformed_and_escaping_keys_are_errors_that_never_show_a_value() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("s")).unwrap();
        std::fs::write(dir.path().join("s/empty"), "\n").unwrap();
        std::fs::write(dir.path().join("s/bad"), "sk-abc\r\nx-injected: 1").unwrap();
        let store = Credentials::new(CredentialSettings {
            dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        });
        assert!(matches!(
            store.key(&reference("s", "absent")),
            Err(CredentialError::Unreadable { .. })
        ));
        assert!(matches!(
            store.key(&reference("s", "empty")),
            Err(CredentialError::Empty { .. })
        ));
        let malformed = store.key(&reference("s", "bad")).unwrap_err();
        assert!(matches!(malformed, CredentialError::Malformed { .. }));
        assert!(!malformed.to_string().contains("sk-abc"));
        assert!(matches!(
            store.key(&reference("..", "s")),
            Err(CredentialError::Unreadable { .. })
        ));
        let no_dir = Credentials::new(CredentialSettings::default());
        assert!(matches!(
            no_dir.key(&reference("s", "empty")),
            Err(CredentialError::NoDirectory { .. })
        ));
        assert_eq!(
            format!("{:?}", ProviderKey::new("sk-secret")),
            "ProviderKey(<redacted>)"
        );
    }

    #[test]
    fn env_mappings_parse_and_read_the_variable() {
        let (id, var) = parse_env_mapping("openai/api-key=PB_TEST_OPENAI_KEY_UNSET").unwrap();
        assert_eq!(id, ("openai".to_string(), "api-key".to_string()));
        let store = Credentials::new(CredentialSettings {
            env: [(id, var)].into_iter().collect(),
            ..Default::default()
        });
        assert!(matches!(
            store.key(&reference("openai", "api-key")),
            Err(CredentialError::EnvMissing { .. })
        ));
        assert!(parse_env_mapping("no-equals").is_err());
        assert!(parse_env_mapping("noslash=VAR").is_err());
    }
}
