//! The ConfigMap store: one ConfigMap per segment in the writer's namespace.
//!
//! Each ConfigMap is named after the writer and first sequence (see
//! [`naming`](crate::naming)), labelled `policybind.io/audit-segment=<writer key>`
//! and, when the store knows its pod, `policybind.io/pod=<pod>` (the chart's
//! admission policy lets a workload write only segments carrying its own pod's
//! name). The segment is gzip under the binary data key [`keys::SEGMENT_GZ`]
//! (see [`encoding`](crate::encoding)); segments of earlier versions, plain JSON
//! under the data key [`keys::SEGMENT`], are still read. Writes are one
//! server-side apply PATCH each (field manager [`field_managers::AUDIT`]); a
//! sealed segment is applied with `immutable: true`, so the API server itself
//! refuses later edits (deletion stays possible, which is what retention and
//! the verifier are for).
//!
//! The writer bounds how often `put` is called (about once per second per writer)
//! and decides what to do when the API server refuses an object; this type only
//! maps segments to requests.
use std::collections::BTreeMap;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};
use policybind_crds::wire::{field_managers, keys, labels};
use policybind_engine::audit::Segment;

use crate::Error;
use crate::encoding::{Encoding, gunzip, gzip_member};
use crate::naming::{segment_name, writer_key};
use crate::store::{RawSegment, SegmentObject, SegmentStore, StoreProfile, encode_segment};

/// Page size when listing whole segments: each can be close to 1 MiB.
pub const LIST_PAGE_SIZE: u32 = 20;
/// Page size when listing names only.
const NAMES_PAGE_SIZE: u32 = 500;
/// Largest segment body written: the API server refuses ConfigMaps whose data
/// exceeds 1 MiB (1,048,576 bytes); names, labels and managed fields need room.
pub const MAX_OBJECT_BYTES: usize = 1_000_000;

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
    /// they cannot replace). A [`labels::WRITER_POD`] among them also narrows
    /// what a resuming writer looks at, as [`with_pod`](Self::with_pod) does.
    pub fn with_labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.extra_labels.extend(labels);
        self
    }

    /// Label what this store writes with the writing pod's name
    /// (`policybind.io/pod`), and look only at segments so labelled when a
    /// writer resumes: segments other pods planted under this writer's name are
    /// not even considered.
    pub fn with_pod(mut self, pod: impl Into<String>) -> Self {
        self.extra_labels
            .insert(labels::WRITER_POD.to_string(), pod.into());
        self
    }

    fn pod(&self) -> Option<&str> {
        self.extra_labels
            .get(labels::WRITER_POD)
            .map(String::as_str)
    }

    /// The ConfigMap an object is stored as, with `extra` labels besides the
    /// segment label (which they cannot replace).
    pub fn config_map_of(object: &SegmentObject, extra: &BTreeMap<String, String>) -> ConfigMap {
        let mut labels = extra.clone();
        labels.insert(
            labels::AUDIT_SEGMENT.to_string(),
            writer_key(&object.writer),
        );
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(object.name.clone()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            binary_data: Some(BTreeMap::from([(
                keys::SEGMENT_GZ.to_string(),
                ByteString(object.body.to_vec()),
            )])),
            immutable: object.sealed.then_some(true),
            ..ConfigMap::default()
        }
    }

    /// The ConfigMap a parsed segment is stored as (gzip, plain name, no pod
    /// label): for tests and tools that build segments by hand.
    pub fn config_map_for(segment: &Segment) -> ConfigMap {
        let object = SegmentObject {
            name: segment_name(&segment.header.writer, segment.header.first_seq),
            writer: segment.header.writer.clone(),
            sealed: segment.is_sealed(),
            body: gzip_member(&encode_segment(segment)).into(),
        };
        Self::config_map_of(&object, &BTreeMap::new())
    }

    /// The segment document a ConfigMap holds, and its stored size: gzip under
    /// [`keys::SEGMENT_GZ`], or plain JSON under [`keys::SEGMENT`] as earlier
    /// versions wrote it.
    pub fn document_of(config_map: &ConfigMap) -> (u64, Result<Vec<u8>, String>) {
        let binary = config_map
            .binary_data
            .as_ref()
            .and_then(|d| d.get(keys::SEGMENT_GZ));
        if let Some(body) = binary {
            return (body.0.len() as u64, gunzip(&body.0));
        }
        match config_map.data.as_ref().and_then(|d| d.get(keys::SEGMENT)) {
            Some(json) => (json.len() as u64, Ok(json.clone().into_bytes())),
            None => (
                0,
                Err(format!(
                    "neither binary data key {:?} nor data key {:?}",
                    keys::SEGMENT_GZ,
                    keys::SEGMENT
                )),
            ),
        }
    }

    /// The segment document one audit ConfigMap holds, for readers that list
    /// segment ConfigMaps themselves (the dashboard lists them cluster-wide).
    pub fn raw(config_map: &ConfigMap) -> RawSegment {
        let (size_bytes, json) = Self::document_of(config_map);
        RawSegment {
            name: config_map.metadata.name.clone().unwrap_or_default(),
            size_bytes,
            json,
        }
    }

    fn selector(&self, writer: &str) -> String {
        let mut selector = format!("{}={}", labels::AUDIT_SEGMENT, writer_key(writer));
        if let Some(pod) = self.pod() {
            selector.push_str(&format!(",{}={pod}", labels::WRITER_POD));
        }
        selector
    }
}

impl SegmentStore for ConfigMapStore {
    fn put<'a>(&'a self, object: &'a SegmentObject) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            let config_map = Self::config_map_of(object, &self.extra_labels);
            let params = PatchParams::apply(field_managers::AUDIT).force();
            self.api
                .patch(&object.name, &params, &Patch::Apply(&config_map))
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<RawSegment>, Error>> {
        async move {
            let mut out = Vec::new();
            let mut params = ListParams::default()
                .labels(labels::AUDIT_SEGMENT)
                .limit(LIST_PAGE_SIZE);
            loop {
                let page = self.api.list(&params).await?;
                out.extend(page.items.iter().map(Self::raw));
                match page.metadata.continue_.filter(|c| !c.is_empty()) {
                    Some(token) => params = params.continue_token(&token),
                    None => break,
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        }
        .boxed()
    }

    fn names<'a>(&'a self, writer: &'a str) -> BoxFuture<'a, Result<Vec<String>, Error>> {
        async move {
            let mut names = Vec::new();
            let mut params = ListParams::default()
                .labels(&self.selector(writer))
                .limit(NAMES_PAGE_SIZE);
            loop {
                let page = self.api.list_metadata(&params).await?;
                names.extend(page.items.into_iter().filter_map(|m| m.metadata.name));
                match page.metadata.continue_.filter(|c| !c.is_empty()) {
                    Some(token) => params = params.continue_token(&token),
                    None => break,
                }
            }
            names.sort();
            Ok(names)
        }
        .boxed()
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<RawSegment>, Error>> {
        async move { Ok(self.api.get_opt(name).await?.as_ref().map(Self::raw)) }.boxed()
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

    fn profile(&self) -> StoreProfile {
        StoreProfile {
            encoding: Encoding::Gzip,
            max_object_bytes: MAX_OBJECT_BYTES,
            writes_per_flush: Some(1),
        }
    }

    fn describe(&self) -> String {
        format!("ConfigMaps in namespace {}", self.namespace)
    }
}
