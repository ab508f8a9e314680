//! Counts writes to ConfigMaps as the API server sees them: a watch (relisted
//! after errors, as any client's) that counts every new `resourceVersion` of
//! the objects it selects. Objects found by the first list were written before
//! counting began and are not counted; an object written twice between two
//! events (or during an API server outage) counts once, so the counts are a
//! lower bound only when the watch was away.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};

/// Per object name: its last resourceVersion and how many writes were seen.
type Seen = BTreeMap<String, (String, u64)>;

/// A running count; it stops with the scenario's runtime (or when dropped).
pub struct WriteCounter {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl WriteCounter {
    /// Count writes to the ConfigMaps of `namespace` that `config` selects
    /// (a label or field selector).
    pub fn start(client: Client, namespace: &str, config: watcher::Config) -> WriteCounter {
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        let seen = Arc::new(Mutex::new(Seen::new()));
        let counted = seen.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher::watcher(api, config).default_backoff().boxed();
            let mut listing = true;
            while let Some(event) = events.next().await {
                let (object, first_list) = match event {
                    Ok(Event::Init) => {
                        continue;
                    }
                    Ok(Event::InitDone) => {
                        listing = false;
                        continue;
                    }
                    Ok(Event::InitApply(object)) => (object, listing),
                    Ok(Event::Apply(object)) => (object, false),
                    Ok(Event::Delete(_)) | Err(_) => continue,
                };
                let version = object.resource_version().unwrap_or_default();
                let mut seen = counted.lock().expect("not poisoned");
                let entry = seen
                    .entry(object.name_any())
                    .or_insert_with(|| (String::new(), 0));
                if entry.0 != version {
                    if !(first_list && entry.0.is_empty()) {
                        entry.1 += 1;
                    }
                    entry.0 = version;
                }
            }
        });
        WriteCounter { seen, task }
    }

    /// Writes counted so far, per object name.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.seen
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(name, (_, writes))| (name.clone(), *writes))
            .collect()
    }
}

impl Drop for WriteCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}
