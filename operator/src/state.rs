//! The memory the operator keeps between reconciles, owned by the context
//! ([`crate::context::Context::state`]) so that controllers share it without
//! importing each other: the last good version of every policy
//! ([`PolicyMemory`], written by the policy controllers and read by the bundle
//! builder), the cluster view and encoded bundles of the current input epoch
//! ([`BundleCache`]), parsed usage reports ([`UsageCache`]) and the budget
//! ledgers last written ([`crate::ledger::LedgerView`]).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use policybind_engine::bundle::{BundlePolicy, PolicyKind};
use policybind_engine::bundle_codec::EncodedBundle;

use crate::bundle::ClusterView;
use crate::usage::CountedReport;

/// Everything shared between reconciles.
#[derive(Default)]
pub struct State {
    /// Per-policy compile results and last good versions.
    pub policies: PolicyMemory,
    /// Cached cluster view and encoded bundles.
    pub bundles: BundleCache,
    /// Parsed usage reports.
    pub usage: UsageCache,
    /// The budget ledgers last written (what replicas hold).
    pub ledgers: crate::ledger::LedgerView,
}

/// `AIPolicy ns/name` or `ClusterAIPolicy name`, as the engine names resources
/// in compile errors.
pub fn resource_id(policy: &BundlePolicy) -> String {
    match policy.kind {
        PolicyKind::AIPolicy => format!("AIPolicy {}", policy.id()),
        PolicyKind::ClusterAIPolicy => format!("ClusterAIPolicy {}", policy.id()),
    }
}

#[derive(Debug, Clone)]
struct Remembered {
    uid: String,
    generation: Option<i64>,
    error: Option<String>,
    current: BundlePolicy,
    last_good: Option<BundlePolicy>,
}

/// What the operator remembers of each policy between reconciles: the result
/// of the last compile and the last version that compiled.
#[derive(Default)]
pub struct PolicyMemory {
    entries: Mutex<HashMap<String, Remembered>>,
}

impl PolicyMemory {
    /// Records a compile result; returns whether the version in force changed.
    pub fn record(
        &self,
        uid: &str,
        generation: Option<i64>,
        policy: BundlePolicy,
        result: &Result<usize, String>,
        recovered: Option<BundlePolicy>,
    ) -> bool {
        let id = resource_id(&policy);
        let mut entries = self.entries.lock().expect("policy memory lock poisoned");
        let before = entries.get(&id).and_then(|e| e.in_force().cloned());
        let last_good = match result {
            Ok(_) => Some(policy.clone()),
            Err(_) => entries
                .get(&id)
                .filter(|e| e.uid == uid)
                .and_then(|e| e.last_good.clone())
                .or(recovered),
        };
        let entry = Remembered {
            uid: uid.to_string(),
            generation,
            error: result.as_ref().err().cloned(),
            current: policy,
            last_good,
        };
        let after = entry.in_force().cloned();
        entries.insert(id, entry);
        before != after
    }

    /// Whether a result for exactly this version is remembered.
    pub fn knows(&self, policy: &BundlePolicy, uid: &str, generation: Option<i64>) -> bool {
        let entries = self.entries.lock().expect("policy memory lock poisoned");
        entries
            .get(&resource_id(policy))
            .is_some_and(|e| e.uid == uid && e.generation == generation && e.current == *policy)
    }

    /// The version to put in bundles, if any.
    pub fn in_force(&self, policy: &BundlePolicy) -> Option<BundlePolicy> {
        let entries = self.entries.lock().expect("policy memory lock poisoned");
        entries
            .get(&resource_id(policy))
            .and_then(|e| e.in_force().cloned())
    }

    /// Every version in force, except `but` (for peer checks).
    pub fn all_in_force(&self) -> Vec<BundlePolicy> {
        let entries = self.entries.lock().expect("policy memory lock poisoned");
        entries
            .values()
            .filter_map(|e| e.in_force().cloned())
            .collect()
    }

    /// Forgets policies that no longer exist.
    pub fn retain(&self, existing: &std::collections::HashSet<String>) {
        let mut entries = self.entries.lock().expect("policy memory lock poisoned");
        entries.retain(|id, _| existing.contains(id));
    }
}

impl Remembered {
    fn in_force(&self) -> Option<&BundlePolicy> {
        match self.error {
            None => Some(&self.current),
            Some(_) => self.last_good.as_ref(),
        }
    }
}

/// Caches of the bundle writer: the view of the current input epoch, and each
/// namespace's encoded bundle tagged with the view build it came from.
#[derive(Default)]
pub struct BundleCache {
    /// (input epoch, build number, view).
    pub(crate) view: Mutex<Option<(u64, u64, Arc<ClusterView>)>>,
    pub(crate) encoded: Mutex<HashMap<String, (u64, Arc<EncodedBundle>)>>,
    pub(crate) builds: AtomicU64,
}

/// Parsed usage reports by ConfigMap uid, with the resourceVersion they were
/// parsed at: every token reconcile reads all reports, and parsing them each
/// time would cost O(tokens x reports) at start.
pub type UsageCache = Mutex<HashMap<String, (String, Arc<CountedReport>)>>;
