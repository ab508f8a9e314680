//! Reading PolicyBind manifests from YAML text (files are read by the caller).
//!
//! The same multi-document YAML a user applies with `kubectl` is what
//! `policybind test`, `eval` and `serve` read. Unknown fields are errors, with
//! the document and field named, because a misspelt field silently ignored is a
//! policy silently not enforced. Objects of other API groups (Namespaces,
//! Deployments, ...) are skipped; Secrets are read only as token values for
//! standalone mode and are hashed at once.

use policybind_crds::wire::{keys, labels};
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Secret;
use policybind_crds::approval_request::{ApprovalPhase, ApprovalTargetKind, DecisionState};
use policybind_crds::{
    AIBudget, AIPolicy, AccessToken, ApprovalRequest, ClusterAIPolicy, EvidenceGate, Incident,
    ModelDeployment,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::bundle::{
    Bundle, BundleBudget, BundleModel, BundlePolicy, BundleToken, TokenHash, hash_token,
};
use crate::request::Request;

/// Where a document came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub path: String,
    /// 1-based index of the document in the file.
    pub document: usize,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (document {})", self.path, self.document)
    }
}

/// A problem reading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{source_}: invalid YAML: {message}")]
    Yaml { source_: Source, message: String },
    #[error("{source_}: {kind} {name}: {message}")]
    Invalid {
        source_: Source,
        kind: String,
        name: String,
        message: String,
    },
    #[error(
        "{source_}: {kind} {name}: unknown field {field} (check the spelling; see `kubectl explain`)"
    )]
    UnknownField {
        source_: Source,
        kind: String,
        name: String,
        field: String,
    },
    #[error("{source_}: unknown kind {kind:?} in {api_version}")]
    UnknownKind {
        source_: Source,
        api_version: String,
        kind: String,
    },
}

/// One parsed object.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Object {
    AIPolicy(AIPolicy),
    ClusterAIPolicy(ClusterAIPolicy),
    ModelDeployment(ModelDeployment),
    AccessToken(AccessToken),
    AIBudget(AIBudget),
    ApprovalRequest(ApprovalRequest),
    Incident(Incident),
    /// Read by the compliance tools; gates play no part in deciding requests.
    EvidenceGate(EvidenceGate),
    Secret(Secret),
    /// A Namespace: only its name and labels matter (ClusterAIPolicy selectors).
    Namespace(String, BTreeMap<String, String>),
    PolicyTest(PolicyTest),
}

/// apiVersion of [`PolicyTest`] documents. The group is one no API server serves
/// (as Kyverno's `cli.kyverno.io`): a test is an input of `policybind test`, not a
/// cluster object, and `kubectl apply -f` over a directory holding tests must not
/// pretend otherwise.
pub const POLICY_TEST_API_VERSION: &str = "cli.policybind.io/v1alpha1";

/// The apiVersion PolicyTest documents had before [`POLICY_TEST_API_VERSION`]:
/// still read, with a deprecation note ([`PolicyTest::deprecation`]), because
/// existing CI pipelines hold such files.
pub const DEPRECATED_POLICY_TEST_API_VERSION: &str = policybind_crds::API_VERSION;

/// A policy test file (not a cluster resource): requests and what must be decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTest {
    pub api_version: String,
    pub kind: String,
    pub metadata: TestMetadata,
    /// Fields merged into every case's request where the case leaves them out.
    #[serde(default)]
    pub defaults: serde_yaml::Mapping,
    pub cases: Vec<TestCase>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestMetadata {
    pub name: String,
}

/// One case of a policy test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    /// The request, as in `policybind eval --request` (before `defaults` are merged).
    pub request: serde_yaml::Mapping,
    /// A model response to judge with the rules on Response (see `expect.response`).
    #[serde(default)]
    pub response: Option<String>,
    pub expect: Expectation,
}

/// What a case expects. Only the fields given are compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expectation {
    pub effect: policybind_crds::Effect,
    /// Codes that must all be present (order-insensitive); the first is the deciding code.
    #[serde(default)]
    pub codes: Vec<String>,
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub rule: Option<String>,
    /// Model the request must be degraded to.
    #[serde(default)]
    pub degraded_model: Option<String>,
    /// Entities that must be redacted.
    #[serde(default)]
    pub redacted: Vec<String>,
    /// Effect an Audit-mode policy would have had.
    #[serde(default)]
    pub would_have: Option<policybind_crds::Effect>,
    /// What the rules on Response do to the case's `response`.
    #[serde(default)]
    pub response: Option<ResponseExpectation>,
}

/// What a case expects of its response. Only the fields given are compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResponseExpectation {
    /// Pass, Redact or Block.
    pub action: crate::output::OutputAction,
    /// Codes that must all be present; for Redact and Block the first is the
    /// deciding code (a passed response has only detector codes).
    #[serde(default)]
    pub codes: Vec<String>,
    #[serde(default)]
    pub rule: Option<String>,
    /// The response as delivered, after redaction.
    #[serde(default)]
    pub text: Option<String>,
}

impl PolicyTest {
    /// A note for the user when this test is written in a deprecated form.
    pub fn deprecation(&self) -> Option<String> {
        (self.api_version == DEPRECATED_POLICY_TEST_API_VERSION).then(|| {
            format!(
                "PolicyTest {}: apiVersion {DEPRECATED_POLICY_TEST_API_VERSION} is deprecated for tests \
                 (no API server serves PolicyTest there); write apiVersion: {POLICY_TEST_API_VERSION}",
                self.metadata.name
            )
        })
    }
}

impl TestCase {
    /// The case's request with the test's defaults merged in.
    pub fn resolved_request(&self, defaults: &serde_yaml::Mapping) -> Result<Request, String> {
        let mut merged = defaults.clone();
        for (k, v) in &self.request {
            merged.insert(k.clone(), v.clone());
        }
        serde_yaml::from_value(serde_yaml::Value::Mapping(merged))
            .map_err(|e| format!("case {:?}: invalid request: {e}", self.name))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Option<serde_yaml::Value>,
}

fn object_name(meta: &Option<serde_yaml::Value>) -> String {
    let get = |k: &str| {
        meta.as_ref()
            .and_then(|m| m.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    match (get("namespace"), get("name")) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name,
        _ => "(unnamed)".to_string(),
    }
}

/// Fields the API server adds and that a manifest may carry when exported with
/// `kubectl get -o yaml`; they are not user mistakes.
fn is_server_field(path: &str) -> bool {
    path == "apiVersion"
        || path == "kind"
        || path.starts_with("metadata.")
        || path == "status"
        || path.starts_with("status.")
}

fn typed<T: DeserializeOwned>(
    value: serde_yaml::Value,
    source: &Source,
    kind: &str,
    name: &str,
) -> Result<T, ManifestError> {
    let mut unknown = None;
    let result: Result<T, _> = serde_ignored::deserialize(value, |path| {
        let p = path.to_string();
        if unknown.is_none() && !is_server_field(&p) {
            unknown = Some(p);
        }
    });
    let object = result.map_err(|e| ManifestError::Invalid {
        source_: source.clone(),
        kind: kind.to_string(),
        name: name.to_string(),
        message: e.to_string(),
    })?;
    if let Some(field) = unknown {
        return Err(ManifestError::UnknownField {
            source_: source.clone(),
            kind: kind.to_string(),
            name: name.to_string(),
            field,
        });
    }
    Ok(object)
}

/// Parses every document of a YAML stream. Empty documents and objects of other
/// API groups are skipped.
pub fn parse_documents(path: &str, text: &str) -> Result<Vec<(Source, Object)>, ManifestError> {
    let mut out = vec![];
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let source = Source {
            path: path.to_string(),
            document: i + 1,
        };
        let value = serde_yaml::Value::deserialize(document).map_err(|e| ManifestError::Yaml {
            source_: source.clone(),
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let meta: TypeMeta =
            serde_yaml::from_value(value.clone()).map_err(|e| ManifestError::Yaml {
                source_: source.clone(),
                message: format!("not a Kubernetes object: {e}"),
            })?;
        let name = object_name(&meta.metadata);
        let kind = meta.kind.as_str();
        let object = if meta.api_version == policybind_crds::API_VERSION {
            match kind {
                "AIPolicy" => Object::AIPolicy(typed(value, &source, kind, &name)?),
                "ClusterAIPolicy" => Object::ClusterAIPolicy(typed(value, &source, kind, &name)?),
                "ModelDeployment" => Object::ModelDeployment(typed(value, &source, kind, &name)?),
                "AccessToken" => Object::AccessToken(typed(value, &source, kind, &name)?),
                "AIBudget" => Object::AIBudget(typed(value, &source, kind, &name)?),
                "ApprovalRequest" => Object::ApprovalRequest(typed(value, &source, kind, &name)?),
                "Incident" => Object::Incident(typed(value, &source, kind, &name)?),
                // Deprecated: see DEPRECATED_POLICY_TEST_API_VERSION.
                "EvidenceGate" => Object::EvidenceGate(typed(value, &source, kind, &name)?),
                "PolicyTest" => Object::PolicyTest(typed(value, &source, kind, &name)?),
                _ => {
                    return Err(ManifestError::UnknownKind {
                        source_: source,
                        api_version: meta.api_version,
                        kind: meta.kind,
                    });
                }
            }
        } else if meta.api_version == POLICY_TEST_API_VERSION {
            if kind != "PolicyTest" {
                return Err(ManifestError::UnknownKind {
                    source_: source,
                    api_version: meta.api_version,
                    kind: meta.kind,
                });
            }
            Object::PolicyTest(typed(value, &source, kind, &name)?)
        } else if meta.api_version == "v1" && kind == "Secret" {
            Object::Secret(typed(value, &source, kind, &name)?)
        } else if meta.api_version == "v1" && kind == "Namespace" {
            let labels = meta
                .metadata
                .as_ref()
                .and_then(|m| m.get("labels"))
                .and_then(|l| serde_yaml::from_value(l.clone()).ok())
                .unwrap_or_default();
            Object::Namespace(name, labels)
        } else {
            continue;
        };
        out.push((source, object));
    }
    Ok(out)
}

/// A set of parsed objects.
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    pub objects: Vec<(Source, Object)>,
}

impl Manifests {
    pub fn extend(&mut self, objects: Vec<(Source, Object)>) {
        self.objects.extend(objects);
    }

    pub fn tests(&self) -> impl Iterator<Item = (&Source, &PolicyTest)> {
        self.objects.iter().filter_map(|(s, o)| match o {
            Object::PolicyTest(t) => Some((s, t)),
            _ => None,
        })
    }

    /// Builds the bundle these objects describe. Token values come from Secrets in
    /// the token's namespace (`TokenValues`) and are hashed here; model approval
    /// comes from the ModelDeployment's status if present, otherwise from an
    /// ApprovalRequest targeting it.
    ///
    /// With a namespace, the bundle is what an enforcement point of that namespace
    /// gets ([`crate::scope`]); without one it holds every namespace, and each
    /// request is decided in its own (or its token's) namespace.
    pub fn bundle(&self, namespace: Option<&str>) -> Bundle {
        let token_values = TokenValues::collect(&self.objects);
        let mut approvals: HashMap<(String, String), bool> = HashMap::new();
        for (_, object) in &self.objects {
            match object {
                Object::ApprovalRequest(a)
                    if a.spec.target.kind == ApprovalTargetKind::ModelDeployment =>
                {
                    let phase = a.status.as_ref().and_then(|s| s.phase);
                    let decided = match (phase, &a.spec.decision) {
                        (Some(ApprovalPhase::Approved), _) => Some(true),
                        (Some(ApprovalPhase::Rejected | ApprovalPhase::Expired), _) => Some(false),
                        (_, Some(d)) => Some(d.state == DecisionState::Approved),
                        _ => None,
                    };
                    if let (Some(target), Some(approved)) = (&a.spec.target.name, decided) {
                        approvals.insert(
                            (
                                a.metadata
                                    .namespace
                                    .clone()
                                    .unwrap_or_else(|| "default".into()),
                                target.clone(),
                            ),
                            approved,
                        );
                    }
                }
                _ => {}
            }
        }
        let mut bundle = Bundle {
            namespace: namespace.map(str::to_string),
            ..Default::default()
        };
        let mut namespace_labels: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (_, object) in &self.objects {
            match object {
                Object::AIPolicy(p) => {
                    let mut p = p.clone();
                    p.metadata.namespace.get_or_insert_with(|| "default".into());
                    bundle.policies.push(BundlePolicy::from_ai_policy(&p));
                }
                Object::ClusterAIPolicy(p) => {
                    bundle.policies.push(BundlePolicy::from_cluster_policy(p))
                }
                Object::ModelDeployment(m) => {
                    let mut m = m.clone();
                    let ns = m
                        .metadata
                        .namespace
                        .get_or_insert_with(|| "default".into())
                        .clone();
                    let name = m.metadata.name.clone().unwrap_or_default();
                    let approved = approvals.get(&(ns, name)).copied();
                    bundle.models.push(BundleModel::from_model(&m, approved));
                }
                Object::AccessToken(t) => {
                    let mut t = t.clone();
                    let ns = t
                        .metadata
                        .namespace
                        .get_or_insert_with(|| "default".into())
                        .clone();
                    let name = t.metadata.name.clone().unwrap_or_default();
                    let secret_name = t
                        .spec
                        .secret_name
                        .clone()
                        .unwrap_or_else(|| format!("{name}-token"));
                    let hashes = token_values.hashes(&ns, &name, &secret_name);
                    bundle.tokens.push(BundleToken::from_token(&t, hashes));
                }
                Object::AIBudget(b) => {
                    let mut b = b.clone();
                    b.metadata.namespace.get_or_insert_with(|| "default".into());
                    bundle.budgets.push(BundleBudget::from_budget(&b));
                }
                Object::Namespace(name, labels) => {
                    namespace_labels.insert(name.clone(), labels.clone());
                }
                _ => {}
            }
        }
        namespace_labels.retain(|_, v| !v.is_empty());
        bundle.namespace_labels = namespace_labels;
        match namespace {
            // What an enforcement point of that namespace gets (crate::scope).
            Some(namespace) => bundle.scoped_to(namespace),
            None => {
                bundle.normalize();
                bundle
            }
        }
    }
}

/// Token values found in Secrets, by namespace: those named as a token's
/// `secretName` (default `<name>-token`, as the operator issues them, for
/// manifests exported from a cluster) and those labelled
/// [`labels::STANDALONE_TOKEN`] with the token's name (demo values the operator
/// never owns). A token accepts every value found for it.
#[derive(Default)]
struct TokenValues {
    by_secret_name: HashMap<(String, String), String>,
    by_token_label: HashMap<(String, String), Vec<String>>,
}

impl TokenValues {
    fn collect(objects: &[(Source, Object)]) -> TokenValues {
        let mut values = TokenValues::default();
        for (_, object) in objects {
            let Object::Secret(secret) = object else {
                continue;
            };
            let Some(value) = token_value(secret) else {
                continue;
            };
            let namespace = secret
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let label = secret
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::STANDALONE_TOKEN));
            match label {
                Some(token) => values
                    .by_token_label
                    .entry((namespace, token.clone()))
                    .or_default()
                    .push(value),
                None => {
                    let name = secret.metadata.name.clone().unwrap_or_default();
                    values.by_secret_name.insert((namespace, name), value);
                }
            }
        }
        values
    }

    fn hashes(&self, namespace: &str, token: &str, secret_name: &str) -> Vec<TokenHash> {
        let key = |name: &str| (namespace.to_string(), name.to_string());
        self.by_secret_name
            .get(&key(secret_name))
            .into_iter()
            .chain(self.by_token_label.get(&key(token)).into_iter().flatten())
            .map(|value| TokenHash {
                sha256: hash_token(value),
                valid_until: None,
            })
            .collect()
    }
}

/// The `token` value of a Secret, from `stringData` or `data`.
fn token_value(secret: &Secret) -> Option<String> {
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(keys::TOKEN).cloned())
        .or_else(|| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(keys::TOKEN))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
        })
}

/// Files that mark a directory as a set of its own (as kustomize does): it is
/// skipped when a parent directory is read, and read when named directly.
pub const SEPARATE_SET_MARKERS: &[&str] =
    &["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// The manifest files a path stands for, as every PolicyBind tool reads it
/// (`policybind test`, `eval`, `serve`), so they all see the same set.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ManifestFiles {
    /// `.yaml`, `.yml` and `.json` files, sorted.
    pub files: Vec<std::path::PathBuf>,
    /// Subdirectories skipped because they hold a set of their own.
    pub separate_sets: Vec<std::path::PathBuf>,
}

/// Lists the manifest files under `path` (a file is taken as it is): recursively,
/// sorted, skipping hidden entries (ConfigMap volume internals such as `..data`),
/// `exclude`, and subdirectories with a [`SEPARATE_SET_MARKERS`] file: those are
/// separate sets (the quick start, GitOps repositories) whose objects would
/// otherwise be mixed into this one; name them directly to read them.
pub fn manifest_files(
    path: &std::path::Path,
    exclude: Option<&std::path::Path>,
) -> std::io::Result<ManifestFiles> {
    let mut out = ManifestFiles::default();
    if path.is_file() {
        out.files.push(path.to_path_buf());
        return Ok(out);
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let entry_path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.')
                || Some(entry_path.as_path()) == exclude
            {
                continue;
            }
            if entry_path.is_dir() {
                if SEPARATE_SET_MARKERS
                    .iter()
                    .any(|m| entry_path.join(m).is_file())
                {
                    out.separate_sets.push(entry_path);
                } else {
                    stack.push(entry_path);
                }
            } else if matches!(
                entry_path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.files.push(entry_path);
            }
        }
    }
    out.files.sort();
    out.separate_sets.sort();
    Ok(out)
}

#[cfg(test)]
mod file_tests {
    use super::*;

    #[test]
    fn a_subdirectory_with_its_own_kustomization_is_a_separate_set() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("models.yaml"), "").unwrap();
        let quickstart = dir.path().join("quickstart");
        std::fs::create_dir(&quickstart).unwrap();
        std::fs::write(quickstart.join("kustomization.yaml"), "").unwrap();
        std::fs::write(quickstart.join("models.yaml"), "").unwrap();
        let nested = dir.path().join("policies");
        std::fs::create_dir(&nested).unwrap();
        std::fs::write(nested.join("p.yml"), "").unwrap();
        std::fs::write(nested.join(".hidden.yaml"), "").unwrap();

        let parent = manifest_files(dir.path(), None).unwrap();
        assert_eq!(
            parent.files,
            vec![dir.path().join("models.yaml"), nested.join("p.yml")]
        );
        assert_eq!(parent.separate_sets, vec![quickstart.clone()]);
        let named = manifest_files(&quickstart, None).unwrap();
        assert_eq!(named.files.len(), 2, "named directly, the set is read");
    }
}
