//! In-cluster policy source: this namespace's bundle, which the operator keeps in
//! PolicyBind's own namespace (DESIGN.md sections 4 and 11).
//!
//! A pod's service account is shared by the model container and this sidecar, so
//! the bundle cannot live anywhere the pod may write. The operator writes it as
//! `policybind-bundle.<namespace>` (parts `policybind-bundle.<namespace>.<n>`)
//! into its own namespace, and a Role there lets this namespace's service
//! accounts get, list and watch exactly those names. The sidecar therefore
//! watches part 0 alone, with a `metadata.name` field selector (RBAC authorizes
//! such a list or watch against the Role's resourceNames), and GETs the other
//! parts by name when part 0 announces a new fingerprint. The operator writes the
//! extra parts first and part 0 last, so they are in place when part 0 changes;
//! a part that is missing or of another fingerprint means a write in progress:
//! the sidecar retries shortly and keeps the set in force meanwhile.
//!
//! Nothing read here is trusted: the announced part count and the decompressed
//! size are capped ([`DecodeLimits`]), the content must compile, and its
//! fingerprint must be the one announced. A refused bundle leaves the last good
//! set in force, is logged once per fingerprint, and is counted in
//! `policybind_sidecar_bundle_rejected_total{reason}`. While the API server is
//! away the watch retries with backoff and the last good set stays in force;
//! until a first bundle arrives every request is denied.

use policybind_crds::wire::{annotations, keys};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use policybind_engine::PolicySet;
use policybind_engine::bundle_codec::{BundlePart, DecodeError, DecodeLimits, decode};
use std::sync::Arc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::{Metrics, RejectedLabels};
use crate::source::{PolicyHolder, SourceError, install, reject};

/// How soon parts that were not all in place are read again; doubled on each
/// further miss, up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// Where this sidecar's bundle is and what it accepts.
#[derive(Debug, Clone)]
pub struct BundleSource {
    /// PolicyBind's own namespace, which holds every bundle.
    pub namespace: String,
    /// Part 0 of this namespace's bundle: `wire::bundle_config_map(<pod namespace>)`.
    pub name: String,
    pub limits: DecodeLimits,
}

impl BundleSource {
    /// Name of part `index`: part 0 is [`Self::name`], part `n` is `<name>.<n>`
    /// (the same rule as `policybind_crds::wire::bundle_part`).
    pub fn part_name(&self, index: usize) -> String {
        if index == 0 {
            self.name.clone()
        } else {
            format!("{}.{index}", self.name)
        }
    }

    fn origin(&self) -> String {
        format!("ConfigMap {}/{}", self.namespace, self.name)
    }
}

/// What part 0 announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    pub fingerprint: String,
    pub count: usize,
}

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("ConfigMap {name} has no valid {annotation} annotation")]
    Annotation {
        name: String,
        annotation: &'static str,
    },
    #[error("ConfigMap {name} has neither data[{plain}] nor binaryData[{gz}]", plain = keys::BUNDLE_JSON, gz = keys::BUNDLE_GZ)]
    NoContent { name: String },
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("the bundle does not compile:\n{0}")]
    Compile(#[from] policybind_engine::CompileErrors),
    #[error("the bundle's content has fingerprint {computed}, not the {announced} it announces")]
    FingerprintMismatch { announced: String, computed: String },
}

impl Refused {
    /// Short, stable label of `policybind_sidecar_bundle_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Annotation { .. } => "bad_annotation",
            Refused::NoContent { .. } => "no_content",
            Refused::Decode(error) => error.reason(),
            Refused::Compile(_) => "compile",
            Refused::FingerprintMismatch { .. } => "fingerprint_mismatch",
        }
    }
}

fn annotation(cm: &ConfigMap, key: &str) -> Option<String> {
    cm.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .cloned()
}

/// Reads the fingerprint and part count part 0 announces, refusing a count
/// beyond the limit before any other part is fetched.
pub fn announced(part0: &ConfigMap, limits: &DecodeLimits) -> Result<Announced, Refused> {
    let name = part0.metadata.name.clone().unwrap_or_default();
    let fingerprint = annotation(part0, annotations::FINGERPRINT)
        .filter(|f| !f.is_empty())
        .ok_or_else(|| Refused::Annotation {
            name: name.clone(),
            annotation: annotations::FINGERPRINT,
        })?;
    let count = annotation(part0, annotations::BUNDLE_PART)
        .and_then(|p| {
            let (index, count) = p.split_once('/')?;
            (index == "0").then_some(())?;
            count.parse::<usize>().ok()
        })
        .filter(|count| *count >= 1)
        .ok_or(Refused::Annotation {
            name,
            annotation: annotations::BUNDLE_PART,
        })?;
    if count > limits.max_parts {
        return Err(DecodeError::TooManyParts {
            count,
            max: limits.max_parts,
        }
        .into());
    }
    Ok(Announced { fingerprint, count })
}

/// The content of one part, if it belongs to `fingerprint`. `Ok(None)`: the part
/// is from another version (a write in progress).
pub fn part_content(cm: &ConfigMap, fingerprint: &str) -> Result<Option<BundlePart>, Refused> {
    if annotation(cm, annotations::FINGERPRINT).as_deref() != Some(fingerprint) {
        return Ok(None);
    }
    if let Some(json) = cm.data.as_ref().and_then(|d| d.get(keys::BUNDLE_JSON)) {
        return Ok(Some(BundlePart::Plain(json.clone())));
    }
    if let Some(gz) = cm.binary_data.as_ref().and_then(|d| d.get(keys::BUNDLE_GZ)) {
        return Ok(Some(BundlePart::Gzip(gz.0.clone())));
    }
    Err(Refused::NoContent {
        name: cm.metadata.name.clone().unwrap_or_default(),
    })
}

/// Decodes and compiles complete parts, and checks the announced fingerprint.
/// Blocking (decompression, compile).
pub fn compile_parts(
    parts: &[BundlePart],
    announced: &str,
    limits: &DecodeLimits,
) -> Result<PolicySet, Refused> {
    let bundle = decode(parts, limits)?;
    let set = PolicySet::compile(&bundle)?;
    if set.fingerprint() != announced {
        return Err(Refused::FingerprintMismatch {
            announced: announced.to_string(),
            computed: set.fingerprint().to_string(),
        });
    }
    Ok(set)
}

/// What happened to one version part 0 announced.
enum Attempt {
    /// In force now, or refused (and reported): nothing more to do for it.
    Settled,
    /// Not every part is in place yet, or a part could not be read: try again.
    Retry,
}

/// The watch of one bundle and what it remembers between events.
struct Watch {
    api: Api<ConfigMap>,
    source: BundleSource,
    holder: Arc<PolicyHolder>,
    metrics: Arc<Metrics>,
    /// The latest part 0 seen.
    part0: Option<ConfigMap>,
    /// Fingerprint last put in force, or last refused: an event that announces
    /// it again costs nothing, and a bad bundle is reported once.
    settled: Option<String>,
}

impl Watch {
    /// Fetches parts 1.. by name. `Ok(None)`: one is missing or of another version.
    async fn fetch_rest(&self, announced: &Announced) -> Result<Option<Vec<BundlePart>>, Refused> {
        let mut parts = Vec::with_capacity(announced.count);
        let first = self.part0.as_ref().expect("called with a part 0");
        match part_content(first, &announced.fingerprint)? {
            Some(part) => parts.push(part),
            None => return Ok(None),
        }
        for index in 1..announced.count {
            let name = self.source.part_name(index);
            let cm = match self.api.get_opt(&name).await {
                Ok(Some(cm)) => cm,
                Ok(None) => return Ok(None),
                Err(error) => {
                    warn!(configmap = %name, %error, "reading a bundle part failed; retrying");
                    return Ok(None);
                }
            };
            match part_content(&cm, &announced.fingerprint)? {
                Some(part) => parts.push(part),
                None => return Ok(None),
            }
        }
        Ok(Some(parts))
    }

    /// Tries to put in force what part 0 announces.
    async fn attempt(&mut self) -> Attempt {
        let Some(part0) = &self.part0 else {
            return Attempt::Settled;
        };
        let announced = match announced(part0, &self.source.limits) {
            Ok(a) => a,
            Err(refused) => {
                let key = annotation(part0, annotations::FINGERPRINT).unwrap_or_default();
                self.refuse(key, &refused);
                return Attempt::Settled;
            }
        };
        if self.settled.as_deref() == Some(announced.fingerprint.as_str()) {
            return Attempt::Settled;
        }
        let parts = match self.fetch_rest(&announced).await {
            Ok(Some(parts)) => parts,
            Ok(None) => {
                debug!(origin = %self.source.origin(), "bundle parts not all in place; retrying");
                return Attempt::Retry;
            }
            Err(refused) => {
                self.refuse(announced.fingerprint, &refused);
                return Attempt::Settled;
            }
        };
        let limits = self.source.limits;
        let fingerprint = announced.fingerprint.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            compile_parts(&parts, &announced.fingerprint, &limits)
        })
        .await;
        match compiled {
            Ok(Ok(set)) => {
                install(&self.holder, &self.metrics, set, self.source.origin());
                self.settled = Some(fingerprint);
            }
            Ok(Err(refused)) => self.refuse(fingerprint, &refused),
            Err(error) => {
                warn!("bundle compile task failed: {error}");
                return Attempt::Retry;
            }
        }
        Attempt::Settled
    }

    /// Reports a refused bundle once; the last good set stays in force.
    fn refuse(&mut self, fingerprint: String, refused: &Refused) {
        if self.settled.as_deref() == Some(fingerprint.as_str()) {
            return;
        }
        self.metrics
            .bundle_rejected
            .get_or_create(&RejectedLabels {
                reason: refused.reason().to_string(),
            })
            .inc();
        let error = SourceError::Bundle(format!("{refused} (fingerprint {fingerprint})"));
        reject(&self.holder, &self.metrics, &error, &self.source.origin());
        self.settled = Some(fingerprint);
    }
}

/// Watches the bundle until `stop` is cancelled.
pub async fn watch_bundle(
    client: kube::Client,
    source: BundleSource,
    holder: Arc<PolicyHolder>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &source.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", source.name));
    let mut stream = watcher::watcher(api.clone(), config)
        .default_backoff()
        .boxed();
    let mut watch = Watch {
        api,
        source,
        holder,
        metrics,
        part0: None,
        settled: None,
    };
    let mut retry_at: Option<Instant> = None;
    let mut retry_delay = FIRST_RETRY;
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => futures::future::pending().await,
            }
        };
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            _ = retry => None,
            event = stream.next() => match event {
                Some(event) => Some(event),
                None => return,
            },
        };
        match event {
            None => {}
            Some(Ok(Event::Apply(cm) | Event::InitApply(cm))) => watch.part0 = Some(cm),
            Some(Ok(Event::Delete(_))) => {
                warn!(origin = %watch.source.origin(), "bundle ConfigMap deleted; the last good set stays in force");
                watch.part0 = None;
            }
            Some(Ok(Event::Init | Event::InitDone)) => {}
            Some(Err(error)) => {
                warn!(origin = %watch.source.origin(), "watching the bundle failed (the last good set stays in force): {error}");
                continue;
            }
        }
        match watch.attempt().await {
            Attempt::Settled => {
                retry_at = None;
                retry_delay = FIRST_RETRY;
            }
            Attempt::Retry => {
                retry_at = Some(Instant::now() + retry_delay);
                retry_delay = (retry_delay * 2).min(MAX_RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use policybind_engine::Bundle;
    use policybind_engine::bundle_codec::encode;

    fn config_map(name: &str, fingerprint: &str, part: &str, part_data: &BundlePart) -> ConfigMap {
        let mut cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(
                    [
                        (
                            annotations::FINGERPRINT.to_string(),
                            fingerprint.to_string(),
                        ),
                        (annotations::BUNDLE_PART.to_string(), part.to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        match part_data {
            BundlePart::Plain(json) => {
                cm.data = Some([(keys::BUNDLE_JSON.to_string(), json.clone())].into())
            }
            BundlePart::Gzip(gz) => {
                cm.binary_data = Some(
                    [(
                        keys::BUNDLE_GZ.to_string(),
                        k8s_openapi::ByteString(gz.clone()),
                    )]
                    .into(),
                )
            }
        }
        cm
    }

    #[test]
    fn part_0_announces_fingerprint_and_count_and_a_count_beyond_the_limit_is_refused() {
        let limits = DecodeLimits::default();
        let part = BundlePart::Plain("{}".into());
        let ok = config_map("policybind-bundle.team-a", "sha256:a", "0/3", &part);
        assert_eq!(
            announced(&ok, &limits).unwrap(),
            Announced {
                fingerprint: "sha256:a".into(),
                count: 3
            }
        );
        let many = config_map("policybind-bundle.team-a", "sha256:a", "0/17", &part);
        assert_eq!(
            announced(&many, &limits).unwrap_err().reason(),
            "too_many_parts"
        );
        for bad in ["1/3", "0/0", "0/x", "03"] {
            let cm = config_map("policybind-bundle.team-a", "sha256:a", bad, &part);
            assert_eq!(
                announced(&cm, &limits).unwrap_err().reason(),
                "bad_annotation"
            );
        }
    }

    #[test]
    fn a_part_of_another_version_means_wait_and_a_part_without_content_is_refused() {
        let part = BundlePart::Gzip(vec![1]);
        let cm = config_map("p.1", "sha256:old", "1/2", &part);
        assert!(part_content(&cm, "sha256:new").unwrap().is_none());
        assert_eq!(part_content(&cm, "sha256:old").unwrap(), Some(part));
        let mut empty = cm.clone();
        empty.binary_data = None;
        assert_eq!(
            part_content(&empty, "sha256:old").unwrap_err().reason(),
            "no_content"
        );
    }

    #[test]
    fn content_must_have_the_fingerprint_it_announces() {
        let encoded = encode(&Bundle::default(), 1_000_000);
        let limits = DecodeLimits::default();
        let set = compile_parts(&encoded.parts, &encoded.fingerprint, &limits).unwrap();
        assert_eq!(set.fingerprint(), encoded.fingerprint);
        let refused = compile_parts(&encoded.parts, "sha256:forged", &limits).unwrap_err();
        assert_eq!(refused.reason(), "fingerprint_mismatch");
    }

    #[test]
    fn part_names_follow_the_wire_rule() {
        let source = BundleSource {
            namespace: "policybind-system".into(),
            name: policybind_crds::wire::bundle_config_map("team-a"),
            limits: DecodeLimits::default(),
        };
        for index in 0..4 {
            assert_eq!(
                source.part_name(index),
                policybind_crds::wire::bundle_part("team-a", index)
            );
        }
    }
}
