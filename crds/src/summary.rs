//! Decision summaries: what an enforcement point (a sidecar or gateway pod) or
//! a webhook replica tells the operator about the decisions it made, so the
//! operator can publish them as OpenReports (docs/operator.md, "Reports").
//!
//! A summary is bounded whatever the traffic: per key (policy, rule, result,
//! and for admission the target namespace) a count, the counts of at most
//! [`MAX_CODES`] rationale codes and the latest [`MAX_EXAMPLES`] examples, for
//! at most [`MAX_ENTRIES`] keys; decisions for keys beyond that are counted
//! under [`OVERFLOW_POLICY`]. Counts run since the writer's report began and
//! survive its restarts (the writer reads its previous summary back), so the
//! operator takes the latest summary of every writer and adds them up: nothing
//! is counted twice and nothing is lost when a container restarts.
//!
//! A workload can write its own pod's report, so the operator reads a summary
//! with [`DecisionSummary::parse`], which refuses an oversized document and
//! clamps every count, list and string to these bounds. Summaries are for
//! people looking at dashboards; the signed audit trail is the record.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Most keys one summary holds (the overflow keys come on top).
pub const MAX_ENTRIES: usize = 100;
/// Most rationale codes counted per key; the others count as [`OTHER_CODE`].
pub const MAX_CODES: usize = 5;
/// Latest examples kept per key.
pub const MAX_EXAMPLES: usize = 3;
/// Longest policy, rule, namespace or object name kept (a DNS subdomain).
pub const MAX_NAME: usize = 253;
/// Longest rationale code kept.
pub const MAX_CODE: usize = 64;
/// Longest model name kept.
pub const MAX_MODEL: usize = 128;
/// Longest subject hash kept.
pub const MAX_SUBJECT: usize = 64;
/// Largest summary JSON the operator reads; a larger one is ignored whole.
pub const MAX_SUMMARY_BYTES: usize = 256 * 1024;
/// Policy name under which decisions for keys beyond [`MAX_ENTRIES`] count.
pub const OVERFLOW_POLICY: &str = "policybind.io/overflow";
/// Policy name of decisions no AIPolicy made: PolicyBind's own checks (an
/// unknown token, a budget, the audit trail) and the default effect. The rule
/// then names the stage (`authentication`, `budget`, `default`, ...).
pub const BUILT_IN_POLICY: &str = "policybind.io/built-in";
/// Code under which codes beyond [`MAX_CODES`] of one key count.
pub const OTHER_CODE: &str = "OTHER";

/// A result as OpenReports (and `wgpolicyk8s.io`) spell it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ReportResult {
    /// Allowed as asked.
    Pass,
    /// Refused.
    Fail,
    /// Allowed with a change, or held: redacted, degraded, awaiting approval.
    Warn,
    /// Could not be decided or honoured (no policy set, the audit trail down).
    Error,
    /// Not evaluated.
    Skip,
}

impl ReportResult {
    pub const ALL: [ReportResult; 5] = [
        ReportResult::Pass,
        ReportResult::Fail,
        ReportResult::Warn,
        ReportResult::Error,
        ReportResult::Skip,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReportResult::Pass => "pass",
            ReportResult::Fail => "fail",
            ReportResult::Warn => "warn",
            ReportResult::Error => "error",
            ReportResult::Skip => "skip",
        }
    }
}

/// What decisions are counted under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SummaryKey {
    /// The namespace the decision concerns, for writers outside it (the
    /// webhook); `None` for enforcement points, whose namespace is where their
    /// report lives (a namespace they write is never trusted).
    pub namespace: Option<String>,
    pub policy: String,
    pub rule: String,
    pub result: ReportResult,
}

impl SummaryKey {
    /// The key of an enforcement point's decision: no namespace (the report it
    /// goes into says where).
    pub fn local(policy: impl Into<String>, rule: impl Into<String>, result: ReportResult) -> Self {
        SummaryKey {
            namespace: None,
            policy: policy.into(),
            rule: rule.into(),
            result,
        }
    }

    /// The key with every string clamped to its bound.
    pub fn clamped(self) -> SummaryKey {
        SummaryKey {
            namespace: self.namespace.map(|n| clamp(n, MAX_NAME)),
            policy: clamp(self.policy, MAX_NAME),
            rule: clamp(self.rule, MAX_NAME),
            result: self.result,
        }
    }

    /// Where decisions of this key count once the summary is full.
    pub fn overflow(&self) -> SummaryKey {
        SummaryKey {
            namespace: self.namespace.clone(),
            policy: OVERFLOW_POLICY.into(),
            rule: String::new(),
            result: self.result,
        }
    }
}

/// One decision, as shown to people: never a prompt, never a token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Example {
    /// When it was decided.
    pub time: DateTime<Utc>,
    /// The deciding rationale code.
    pub code: String,
    /// The model asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Hash of the subject (first 16 hex of its SHA-256), never the subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The object decided on (admission: `Kind/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

impl Example {
    fn clamped(self) -> Example {
        Example {
            time: self.time,
            code: clamp(self.code, MAX_CODE),
            model: self.model.map(|m| clamp(m, MAX_MODEL)),
            subject: self.subject.map(|s| clamp(s, MAX_SUBJECT)),
            object: self.object.map(|o| clamp(o, MAX_NAME)),
        }
    }
}

/// What is known about the decisions of one key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub count: u64,
    /// Decisions per deciding code, at most [`MAX_CODES`] of them plus [`OTHER_CODE`].
    pub codes: BTreeMap<String, u64>,
    /// Latest first, at most [`MAX_EXAMPLES`].
    pub examples: Vec<Example>,
}

impl Counts {
    /// Adds `other` (another writer's counts, or a restored summary's).
    pub fn absorb(&mut self, other: &Counts) {
        self.count = self.count.saturating_add(other.count);
        for (code, n) in &other.codes {
            let slot = self.codes.entry(code.clone()).or_default();
            *slot = slot.saturating_add(*n);
        }
        self.codes = fold_codes(std::mem::take(&mut self.codes));
        self.examples.extend(other.examples.iter().cloned());
        self.keep_latest_examples();
    }

    fn record(&mut self, example: Example) {
        self.count = self.count.saturating_add(1);
        let code = if self.codes.contains_key(&example.code) || self.codes.len() < MAX_CODES {
            example.code.clone()
        } else {
            OTHER_CODE.to_string()
        };
        let slot = self.codes.entry(code).or_default();
        *slot = slot.saturating_add(1);
        self.examples.insert(0, example);
        self.keep_latest_examples();
    }

    fn keep_latest_examples(&mut self) {
        // Stable: among equal times the one recorded (or listed) first stays first.
        self.examples.sort_by_key(|e| std::cmp::Reverse(e.time));
        self.examples.truncate(MAX_EXAMPLES);
    }
}

/// Keeps the [`MAX_CODES`] most frequent codes (ties by name) and folds the
/// others into [`OTHER_CODE`].
fn fold_codes(codes: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    if codes.len() <= MAX_CODES {
        return codes;
    }
    let mut ranked: Vec<(String, u64)> = codes.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut kept: BTreeMap<String, u64> = BTreeMap::new();
    let mut other = 0u64;
    for (code, n) in ranked {
        if code != OTHER_CODE && kept.len() < MAX_CODES - 1 {
            kept.insert(code, n);
        } else {
            other = other.saturating_add(n);
        }
    }
    kept.insert(OTHER_CODE.into(), other);
    kept
}

/// One entry of a [`DecisionSummary`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SummaryEntry {
    /// See [`SummaryKey::namespace`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub policy: String,
    #[serde(default)]
    pub rule: String,
    pub result: ReportResult,
    pub count: u64,
    #[serde(default)]
    pub codes: BTreeMap<String, u64>,
    #[serde(default)]
    pub examples: Vec<Example>,
}

impl SummaryEntry {
    /// The entry's key and counts, each clamped to the bounds.
    pub fn split(self) -> (SummaryKey, Counts) {
        let key = SummaryKey {
            namespace: self.namespace,
            policy: self.policy,
            rule: self.rule,
            result: self.result,
        }
        .clamped();
        let mut codes = BTreeMap::new();
        for (code, n) in self.codes {
            let slot: &mut u64 = codes.entry(clamp(code, MAX_CODE)).or_default();
            *slot = slot.saturating_add(n);
        }
        let mut counts = Counts {
            count: self.count,
            codes: fold_codes(codes),
            examples: Vec::new(),
        };
        counts.examples = self
            .examples
            .into_iter()
            .take(MAX_EXAMPLES * 4)
            .map(Example::clamped)
            .collect();
        counts.keep_latest_examples();
        (key, counts)
    }

    fn join(key: SummaryKey, counts: Counts) -> SummaryEntry {
        SummaryEntry {
            namespace: key.namespace,
            policy: key.policy,
            rule: key.rule,
            result: key.result,
            count: counts.count,
            codes: counts.codes,
            examples: counts.examples,
        }
    }
}

/// The summary a writer publishes (data key
/// [`super::wire::keys::DECISIONS`] of its report ConfigMap).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DecisionSummary {
    /// When counting began (the writer's first report).
    pub since: DateTime<Utc>,
    /// Sorted by key.
    pub entries: Vec<SummaryEntry>,
}

/// Why a summary was not read.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("the summary is {0} bytes, more than the {MAX_SUMMARY_BYTES} read")]
    TooLarge(usize),
    #[error("the summary is not valid JSON of the documented shape: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl DecisionSummary {
    /// Reads a summary someone else wrote: at most [`MAX_SUMMARY_BYTES`], at
    /// most [`MAX_ENTRIES`] plus one overflow entry per result, every string,
    /// code list and example list clamped.
    pub fn parse(json: &str) -> Result<ParsedSummary, SummaryError> {
        if json.len() > MAX_SUMMARY_BYTES {
            return Err(SummaryError::TooLarge(json.len()));
        }
        let summary: DecisionSummary = serde_json::from_str(json)?;
        Ok(ParsedSummary {
            since: summary.since,
            entries: summary
                .entries
                .into_iter()
                .take(MAX_ENTRIES + ReportResult::ALL.len())
                .map(SummaryEntry::split)
                .collect(),
        })
    }
}

/// A summary read with [`DecisionSummary::parse`], clamped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedSummary {
    pub since: DateTime<Utc>,
    pub entries: Vec<(SummaryKey, Counts)>,
}

/// A writer's running summary: [`DecisionTally::record`] on every decision,
/// [`DecisionTally::snapshot`] for each report. Bounded as the module says.
#[derive(Debug)]
pub struct DecisionTally {
    since: Mutex<DateTime<Utc>>,
    keys: Mutex<BTreeMap<SummaryKey, Counts>>,
}

impl DecisionTally {
    pub fn new(since: DateTime<Utc>) -> DecisionTally {
        DecisionTally {
            since: Mutex::new(since),
            keys: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<SummaryKey, Counts>> {
        // A panic elsewhere while holding the lock leaves counts, not invariants.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one decision.
    pub fn record(&self, key: SummaryKey, example: Example) {
        let key = key.clamped();
        let example = example.clamped();
        let mut keys = self.lock();
        let key = bounded_key(&keys, key);
        keys.entry(key).or_default().record(example);
    }

    /// Adds a previously published summary (read back after a restart):
    /// counting then began when that summary's did.
    pub fn restore(&self, previous: ParsedSummary) {
        {
            let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
            *since = (*since).min(previous.since);
        }
        let mut keys = self.lock();
        for (key, counts) in previous.entries {
            let key = bounded_key(&keys, key);
            keys.entry(key).or_default().absorb(&counts);
        }
    }

    /// The summary to publish, sorted by key: equal tallies give equal JSON.
    pub fn snapshot(&self) -> DecisionSummary {
        let since = *self.since.lock().unwrap_or_else(|p| p.into_inner());
        let keys = self.lock();
        DecisionSummary {
            since,
            entries: keys
                .iter()
                .map(|(k, c)| SummaryEntry::join(k.clone(), c.clone()))
                .collect(),
        }
    }

    /// Decisions counted so far.
    pub fn total(&self) -> u64 {
        self.lock().values().map(|c| c.count).sum()
    }
}

/// `key`, or where it counts when the map is full: its overflow key, and when
/// even that is new and the map holds [`MAX_ENTRIES`] plus the overflow keys,
/// the overflow key without a namespace.
fn bounded_key(keys: &BTreeMap<SummaryKey, Counts>, key: SummaryKey) -> SummaryKey {
    if keys.contains_key(&key) || keys.len() < MAX_ENTRIES {
        return key;
    }
    let overflow = key.overflow();
    if keys.contains_key(&overflow) || keys.len() < MAX_ENTRIES + ReportResult::ALL.len() {
        return overflow;
    }
    SummaryKey {
        namespace: None,
        ..overflow
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn clamp(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// What people see of a subject: the first 16 hex of its SHA-256.
pub fn subject_hash(subject: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(subject.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(policy: &str, rule: &str, result: ReportResult) -> SummaryKey {
        SummaryKey::local(policy, rule, result)
    }

    fn example(second: u32, code: &str) -> Example {
        Example {
            time: DateTime::from_timestamp(1_800_000_000 + i64::from(second), 0).unwrap(),
            code: code.into(),
            model: Some("gpt-4o".into()),
            subject: Some(subject_hash("alice")),
            object: None,
        }
    }

    #[test]
    fn a_tally_counts_codes_and_keeps_the_latest_examples() {
        let tally = DecisionTally::new(DateTime::UNIX_EPOCH);
        for i in 0..10 {
            tally.record(
                key("team-a/p", "no-pii", ReportResult::Fail),
                example(i, "DENY_PII"),
            );
        }
        let summary = tally.snapshot();
        assert_eq!(summary.entries.len(), 1);
        let entry = &summary.entries[0];
        assert_eq!(entry.count, 10);
        assert_eq!(entry.codes["DENY_PII"], 10);
        let seconds: Vec<i64> = entry
            .examples
            .iter()
            .map(|e| e.time.timestamp() % 100)
            .collect();
        assert_eq!(seconds, vec![9, 8, 7]);
    }

    #[test]
    fn codes_beyond_the_bound_count_as_other() {
        let tally = DecisionTally::new(DateTime::UNIX_EPOCH);
        for i in 0..20 {
            tally.record(
                key("p", "r", ReportResult::Fail),
                example(i, &format!("CODE_{i}")),
            );
        }
        let entry = &tally.snapshot().entries[0];
        assert_eq!(entry.codes.len(), MAX_CODES + 1);
        assert_eq!(entry.codes[OTHER_CODE], 15);
        assert_eq!(entry.codes.values().sum::<u64>(), 20);
    }

    #[test]
    fn keys_beyond_the_bound_count_under_the_overflow_policy_and_nothing_is_lost() {
        let tally = DecisionTally::new(DateTime::UNIX_EPOCH);
        for i in 0..1000 {
            tally.record(
                key("p", &format!("rule-{i}"), ReportResult::Pass),
                example(0, "ALLOW"),
            );
        }
        let summary = tally.snapshot();
        assert_eq!(summary.entries.len(), MAX_ENTRIES + 1);
        let overflow = summary
            .entries
            .iter()
            .find(|e| e.policy == OVERFLOW_POLICY)
            .unwrap();
        assert_eq!(overflow.count, 900);
        assert_eq!(tally.total(), 1000);
    }

    #[test]
    fn a_hostile_summary_is_clamped_or_refused() {
        let huge = "x".repeat(1000);
        let entries: Vec<SummaryEntry> = (0..300)
            .map(|i| SummaryEntry {
                namespace: Some(huge.clone()),
                policy: format!("{huge}{i}"),
                rule: huge.clone(),
                result: ReportResult::Fail,
                count: u64::MAX,
                codes: (0..5).map(|c| (format!("{huge}{c}"), u64::MAX)).collect(),
                examples: (0..5).map(|s| example(s, &huge)).collect(),
            })
            .collect();
        let json = serde_json::to_string(&DecisionSummary {
            since: DateTime::UNIX_EPOCH,
            entries: entries.clone(),
        })
        .unwrap();
        assert!(matches!(
            DecisionSummary::parse(&json),
            Err(SummaryError::TooLarge(_))
        ));
        // Small enough to read, but every field too long.
        let long = "y".repeat(1000);
        let entry = SummaryEntry {
            namespace: Some(long.clone()),
            policy: long.clone(),
            rule: long.clone(),
            result: ReportResult::Fail,
            count: u64::MAX,
            codes: (0..10).map(|c| (format!("{long}{c}"), u64::MAX)).collect(),
            examples: (0..10).map(|s| example(s, &long)).collect(),
        };
        let json = serde_json::to_string(&DecisionSummary {
            since: DateTime::UNIX_EPOCH,
            entries: vec![entry],
        })
        .unwrap();
        let parsed = DecisionSummary::parse(&json).unwrap();
        let (key, counts) = &parsed.entries[0];
        assert!(key.policy.len() <= MAX_NAME && key.rule.len() <= MAX_NAME);
        assert!(key.namespace.as_ref().unwrap().len() <= MAX_NAME);
        assert!(counts.codes.len() <= MAX_CODES);
        assert!(counts.codes.keys().all(|c| c.len() <= MAX_CODE));
        assert!(counts.examples.len() <= MAX_EXAMPLES);
        assert!(counts.examples.iter().all(|e| e.code.len() <= MAX_CODE));
        assert!(matches!(
            DecisionSummary::parse("{\"since\":1}"),
            Err(SummaryError::Malformed(_))
        ));
    }

    #[test]
    fn a_restored_summary_adds_to_what_was_counted_since() {
        let before = DecisionTally::new(DateTime::UNIX_EPOCH);
        before.record(key("p", "r", ReportResult::Warn), example(1, "REDACT"));
        let json = serde_json::to_string(&before.snapshot()).unwrap();
        let after = DecisionTally::new(DateTime::UNIX_EPOCH);
        after.record(key("p", "r", ReportResult::Warn), example(2, "REDACT"));
        after.restore(DecisionSummary::parse(&json).unwrap());
        let entry = &after.snapshot().entries[0];
        assert_eq!(entry.count, 2);
        assert_eq!(entry.examples.len(), 2);
        assert_eq!(entry.examples[0].time.timestamp() % 100, 2);
    }

    #[test]
    fn clamp_cuts_on_a_character_boundary() {
        assert_eq!(clamp("ééé".into(), 3), "é");
        assert_eq!(clamp("abc".into(), 10), "abc");
    }
}
