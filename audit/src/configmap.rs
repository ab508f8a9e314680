//! The ConfigMap store: one ConfigMap per segment in the writer's namespace.
//!
//! Each ConfigMap is named after the writer and first sequence (see
//! [`naming`](crate::naming)), labelled `policybind.io/audit-segment=<writer key>`,
//! and holds the segment JSON under the data key [`keys::SEGMENT`]. Writes are one
//! server-side apply PATCH each (create or replace in a single request, field
//! manager [`field_managers::AUDIT`]); a sealed segment is applied with `immutable: true`,
//! so the API server itself refuses later edits (deletion stays possible, which is
//! what retention and the verifier are for).
//!
//! The writer bounds how often `put` is called (about once per second per writer)
//! and retries with backoff; this type only maps segments to requests.
use policybind_crds::wire::{field_managers, keys, labels};
use std::collections::BTreeMap;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};
use policybind_engine::audit::Segment;

use crate::Error;
use crate::naming::{segment_name, writer_key};
use crate::store::{SegmentStore, StoredSegment, encode_segment};

/// Page size when listing: segments can be several hundred KiB each, so pages stay
/// small enough for the API server and for memory.
pub const LIST_PAGE_SIZE: u32 = 20;

/// Segments as ConfigMaps in one namespace.
#[derive(Clone)]
pub struct ConfigMapStore {
    api: Api<ConfigMap>,
    namespace: String,
    /// Labels the caller wants on every segment besides the segment label, e.g.
    /// the writer's pod ([`labels::WRITER_POD`]), which the chart's admission
    /// policy requires on a sidecar's segments.
    extra_labels: BTreeMap<String, String>,
}

impl ConfigMapStore {
    /// A store in `namespace`.
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        ConfigMapStore {
            api: Api::namespaced(client, &namespace),
            namespace,
            extra_labels: BTreeMap::new(),
        }
    }

    /// Puts `labels` on every segment written, besides the segment label (which
    /// they cannot replace).
    pub fn with_labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.extra_labels = labels;
        self
    }

    /// The ConfigMap a segment is stored as.
    pub fn config_map_for(segment: &Segment) -> ConfigMap {
        let writer = &segment.header.writer;
        let json = String::from_utf8(encode_segment(segment)).expect("JSON is UTF-8");
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(segment_name(writer, segment.header.first_seq)),
                labels: Some(BTreeMap::from([(
                    labels::AUDIT_SEGMENT.to_string(),
                    writer_key(writer),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(keys::SEGMENT.to_string(), json)])),
            immutable: segment.is_sealed().then_some(true),
            ..ConfigMap::default()
        }
    }

    async fn list_selected(&self, selector: &str) -> Result<Vec<StoredSegment>, Error> {
        let mut out = Vec::new();
        let mut params = ListParams::default().labels(selector).limit(LIST_PAGE_SIZE);
        loop {
            let page = self.api.list(&params).await?;
            for config_map in page.items {
                let name = config_map.metadata.name.clone().unwrap_or_default();
                let json = config_map
                    .data
                    .as_ref()
                    .and_then(|d| d.get(keys::SEGMENT))
                    .map(String::as_str)
                    .unwrap_or("");
                out.push(StoredSegment::parse(name, json.as_bytes()));
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

impl SegmentStore for ConfigMapStore {
    fn put<'a>(&'a self, segment: &'a Segment) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            let mut config_map = Self::config_map_for(segment);
            if let Some(labels) = config_map.metadata.labels.as_mut() {
                for (key, value) in &self.extra_labels {
                    labels.entry(key.clone()).or_insert_with(|| value.clone());
                }
            }
            let name = config_map.metadata.name.clone().unwrap_or_default();
            let params = PatchParams::apply(field_managers::AUDIT).force();
            self.api
                .patch(&name, &params, &Patch::Apply(&config_map))
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<StoredSegment>, Error>> {
        async move { self.list_selected(labels::AUDIT_SEGMENT).await }.boxed()
    }

    fn latest<'a>(&'a self, writer: &'a str) -> BoxFuture<'a, Result<Option<Segment>, Error>> {
        async move {
            let selector = format!(
                "{labels_audit_segment}={}",
                writer_key(writer),
                labels_audit_segment = labels::AUDIT_SEGMENT
            );
            let segments = self.list_selected(&selector).await?;
            match segments.into_iter().next_back() {
                None => Ok(None),
                Some(stored) => match stored.content {
                    Ok(segment) => Ok(Some(segment)),
                    Err(message) => Err(Error::Format {
                        name: stored.name,
                        source: serde::de::Error::custom(message),
                    }),
                },
            }
        }
        .boxed()
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            match self.api.delete(name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                // Already gone: retention may be re-run after a partial failure.
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("ConfigMaps in namespace {}", self.namespace)
    }
}
