//! In-cluster policy source: the namespace's bundle ConfigMaps (DESIGN.md section 4).
//!
//! The operator writes one bundle per enforced namespace into `policybind-bundle`
//! (and `policybind-bundle-<n>` for large bundles), labelled `policybind.io/bundle`.
//! The sidecar watches only those objects (a label-selected watch, never the
//! policies, tokens or models themselves), reassembles the parts when every part
//! carries the same fingerprint, compiles, and swaps. While the API server is
//! away the watch retries with backoff and the last good set stays in force;
//! until a first bundle arrives every request is denied.

use policybind_crds::wire::{annotations, keys, labels};
use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use policybind_engine::PolicySet;
use policybind_engine::bundle_codec::{BUNDLE_CONFIGMAP, BundlePart, decode, part_name};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::source::{PolicyHolder, SourceError, install, reject};

/// Assembles the bundle parts present, if they form one complete bundle.
/// `Ok(None)` means "not complete yet" (a write in progress): wait for the next event.
pub fn assemble(
    config_maps: &BTreeMap<String, ConfigMap>,
) -> Result<Option<(String, Vec<BundlePart>)>, SourceError> {
    let Some(first) = config_maps.get(BUNDLE_CONFIGMAP) else {
        return Ok(None);
    };
    let annotation = |cm: &ConfigMap, key: &str| {
        cm.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
    };
    let fingerprint = annotation(first, annotations::FINGERPRINT).unwrap_or_default();
    let count = annotation(first, annotations::BUNDLE_PART)
        .and_then(|p| p.split_once('/').and_then(|(_, n)| n.parse::<usize>().ok()))
        .unwrap_or(1)
        .max(1);
    let mut parts = Vec::with_capacity(count);
    for index in 0..count {
        let Some(cm) = config_maps.get(&part_name(index)) else {
            return Ok(None);
        };
        if annotation(cm, annotations::FINGERPRINT).unwrap_or_default() != fingerprint {
            return Ok(None);
        }
        if let Some(json) = cm.data.as_ref().and_then(|d| d.get(keys::BUNDLE_JSON)) {
            parts.push(BundlePart::Plain(json.clone()));
        } else if let Some(gz) = cm.binary_data.as_ref().and_then(|d| d.get(keys::BUNDLE_GZ)) {
            parts.push(BundlePart::Gzip(gz.0.clone()));
        } else {
            return Err(SourceError::Bundle(format!(
                "ConfigMap {} has neither {keys_bundle_json} nor {keys_bundle_gz}",
                part_name(index),
                keys_bundle_json = keys::BUNDLE_JSON,
                keys_bundle_gz = keys::BUNDLE_GZ
            )));
        }
    }
    Ok(Some((fingerprint, parts)))
}

fn compile_parts(parts: &[BundlePart]) -> Result<PolicySet, SourceError> {
    let bundle = decode(parts).map_err(|e| SourceError::Bundle(e.to_string()))?;
    Ok(PolicySet::compile(&bundle)?)
}

/// Watches the bundle ConfigMaps of a namespace until `stop` is cancelled.
pub async fn watch_bundle(
    client: kube::Client,
    namespace: String,
    holder: Arc<PolicyHolder>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels(labels::BUNDLE);
    let origin = format!("ConfigMap {namespace}/{BUNDLE_CONFIGMAP}");
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut seen: BTreeMap<String, ConfigMap> = BTreeMap::new();
    let mut init: BTreeMap<String, ConfigMap> = BTreeMap::new();
    let mut last_fingerprint = String::new();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = stream.next() => event,
        };
        let Some(event) = event else { return };
        match event {
            Ok(Event::Apply(cm)) => {
                seen.insert(cm.metadata.name.clone().unwrap_or_default(), cm);
            }
            Ok(Event::Delete(cm)) => {
                seen.remove(&cm.metadata.name.clone().unwrap_or_default());
                warn!(%origin, "bundle ConfigMap deleted; the last good set stays in force");
                continue;
            }
            Ok(Event::Init) => {
                init.clear();
                continue;
            }
            Ok(Event::InitApply(cm)) => {
                init.insert(cm.metadata.name.clone().unwrap_or_default(), cm);
                continue;
            }
            Ok(Event::InitDone) => seen = std::mem::take(&mut init),
            Err(e) => {
                warn!(%origin, "watching the bundle failed (the last good set stays in force): {e}");
                continue;
            }
        }
        match assemble(&seen) {
            Ok(None) => debug!(%origin, "bundle incomplete; waiting"),
            Ok(Some((fingerprint, _)))
                if fingerprint == last_fingerprint && !fingerprint.is_empty() => {}
            Ok(Some((fingerprint, parts))) => {
                last_fingerprint = fingerprint;
                match tokio::task::spawn_blocking(move || compile_parts(&parts)).await {
                    Ok(Ok(set)) => install(&holder, &metrics, set, origin.clone()),
                    Ok(Err(e)) => reject(&holder, &metrics, &e, &origin),
                    Err(e) => warn!("bundle compile task failed: {e}"),
                }
            }
            Err(e) => reject(&holder, &metrics, &e, &origin),
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
    fn a_bundle_is_assembled_only_when_every_part_has_the_same_fingerprint() {
        let bundle = Bundle::default();
        let encoded = encode(&bundle, 1_000_000);
        let mut maps = BTreeMap::new();
        assert!(assemble(&maps).unwrap().is_none());
        maps.insert(
            BUNDLE_CONFIGMAP.to_string(),
            config_map(
                BUNDLE_CONFIGMAP,
                &encoded.fingerprint,
                "0/1",
                &encoded.parts[0],
            ),
        );
        let (fingerprint, parts) = assemble(&maps).unwrap().unwrap();
        assert_eq!(fingerprint, encoded.fingerprint);
        assert!(compile_parts(&parts).is_ok());

        // A two-part bundle with the second part from another version is incomplete.
        maps.insert(
            BUNDLE_CONFIGMAP.to_string(),
            config_map(
                BUNDLE_CONFIGMAP,
                "sha256:new",
                "0/2",
                &BundlePart::Gzip(vec![1]),
            ),
        );
        maps.insert(
            part_name(1),
            config_map(
                &part_name(1),
                "sha256:old",
                "1/2",
                &BundlePart::Gzip(vec![2]),
            ),
        );
        assert!(assemble(&maps).unwrap().is_none());
    }
}
