//! The audit record: one per decision or lifecycle event, and the canonical bytes
//! its hash is computed over.
//!
//! Writers build an [`AuditEvent`] (what happened) and hand it to a
//! [`Chain`](super::Chain), which assigns `seq`, `prev_hash` and `hash` and returns
//! the finished [`AuditRecord`]. The JSON field names are the ones of DESIGN.md
//! section 6 and are shared by every writer (sidecar, webhook, operator).
//!
//! The canonical serialization (see [`AuditRecord::canonical_bytes`] and
//! `docs/audit.md`) is a small length-prefixed binary layout rather than JSON:
//! it has exactly one encoding per record, needs no JSON canonicalization rules
//! (key order, number formatting, escapes) and is easy to rebuild in any language.
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use policybind_crds::Effect;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use super::hash::Hash256;
use crate::ident::{self, IdentError};

/// Magic prefix of a canonical record (format version 1). Changing the layout
/// means a new magic, never a silent change of this one.
pub const RECORD_MAGIC: &[u8; 8] = b"PBAREC01";

/// What kind of event a record describes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A model request decided by a sidecar or the decision API.
    Decision,
    /// An admission review decided by the webhook.
    Admission,
    /// A human approval or rejection (ApprovalRequest).
    Approval,
    /// A lifecycle change: writer start/recovery, token revoked, model suspended, ...
    Lifecycle,
}

impl RecordKind {
    /// The stable name used in JSON and in the canonical bytes.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Decision => "Decision",
            RecordKind::Admission => "Admission",
            RecordKind::Approval => "Approval",
            RecordKind::Lifecycle => "Lifecycle",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount in US dollars, held as an integer number of nanodollars.
///
/// Floats have no single canonical text form and JSON parsers do not all round-trip
/// them, so the hash covers this integer; JSON shows it as a decimal string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CostUsd {
    nanos: u64,
}

impl CostUsd {
    /// Zero dollars.
    pub const ZERO: CostUsd = CostUsd { nanos: 0 };

    /// From a whole number of nanodollars (1e-9 USD).
    pub fn from_nanos(nanos: u64) -> Self {
        CostUsd { nanos }
    }

    /// From a float amount of dollars, rounded to the nearest nanodollar; negative
    /// and non-finite values become zero (a cost is never negative).
    pub fn from_usd(usd: f64) -> Self {
        if !usd.is_finite() || usd <= 0.0 {
            return CostUsd::ZERO;
        }
        CostUsd {
            nanos: (usd * 1e9).round() as u64,
        }
    }

    /// The amount in nanodollars.
    pub fn nanos(self) -> u64 {
        self.nanos
    }

    /// The amount in dollars, for display and arithmetic that tolerates rounding.
    pub fn as_usd(self) -> f64 {
        self.nanos as f64 / 1e9
    }
}

impl fmt::Display for CostUsd {
    /// Exact decimal form, trailing fractional zeros trimmed: `0.0005`, `12`, `1.5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.nanos / 1_000_000_000;
        let frac = self.nanos % 1_000_000_000;
        if frac == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{frac:09}");
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// Why a [`CostUsd`] text could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid cost {0:?}: expected a non-negative decimal with at most 9 fractional digits")]
pub struct InvalidCost(String);

impl FromStr for CostUsd {
    type Err = InvalidCost;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidCost(text.to_string());
        let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(frac) || frac.len() > 9 {
            return Err(invalid());
        }
        if text.contains('.') && frac.is_empty() {
            return Err(invalid());
        }
        let whole: u64 = whole.parse().map_err(|_| invalid())?;
        let frac_nanos: u64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<9}").parse().map_err(|_| invalid())?
        };
        whole
            .checked_mul(1_000_000_000)
            .and_then(|n| n.checked_add(frac_nanos))
            .map(CostUsd::from_nanos)
            .ok_or_else(invalid)
    }
}

impl Serialize for CostUsd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CostUsd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CostVisitor;
        impl serde::de::Visitor<'_> for CostVisitor {
            type Value = CostUsd;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal string of US dollars")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<CostUsd, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(CostVisitor)
    }
}

/// Tokens and money a request consumed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Cost in US dollars, exact to the nanodollar.
    pub cost_usd: CostUsd,
}

/// A timestamp as stored in a record: UTC, microsecond precision.
///
/// Microseconds because that is what most languages' date types can hold, so a
/// verifier elsewhere never has to re-format a time it cannot represent. The text
/// form is always `YYYY-MM-DDTHH:MM:SS.ffffffZ` (exactly six fractional digits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordTime(DateTime<Utc>);

impl RecordTime {
    /// Truncate a time to microseconds.
    pub fn new(time: DateTime<Utc>) -> Self {
        let micros = time.nanosecond() / 1_000 * 1_000;
        RecordTime(time.with_nanosecond(micros).unwrap_or(time))
    }

    /// The time as a chrono value.
    pub fn get(self) -> DateTime<Utc> {
        self.0
    }

    /// The canonical text form.
    pub fn to_canonical_string(self) -> String {
        let (buf, len) = self.canonical_text();
        String::from_utf8_lossy(&buf[..len]).into_owned()
    }

    /// The canonical text in a stack buffer. Hashing formats one time per record,
    /// so this avoids chrono's general formatter (and an allocation) on the common
    /// path of four-digit years.
    fn canonical_text(self) -> ([u8; 40], usize) {
        let mut buf = [0u8; 40];
        let year = self.0.year();
        if !(0..=9999).contains(&year) {
            let text = self.0.to_rfc3339_opts(SecondsFormat::Micros, true);
            let len = text.len().min(buf.len());
            buf[..len].copy_from_slice(&text.as_bytes()[..len]);
            return (buf, len);
        }
        let micros = self.0.nanosecond() / 1_000 % 1_000_000;
        let mut put = |at: usize, value: u32, digits: usize| {
            let mut value = value;
            for i in (0..digits).rev() {
                buf[at + i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, year as u32, 4);
        put(5, self.0.month(), 2);
        put(8, self.0.day(), 2);
        put(11, self.0.hour(), 2);
        put(14, self.0.minute(), 2);
        put(17, self.0.second(), 2);
        put(20, micros, 6);
        for (at, byte) in [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (26, b'Z'),
        ] {
            buf[at] = byte;
        }
        (buf, 27)
    }

    /// Parse the canonical form `YYYY-MM-DDTHH:MM:SS.ffffffZ` exactly; anything else
    /// (other precision, offsets, lower-case separators) is rejected.
    pub fn parse_canonical(text: &str) -> Option<RecordTime> {
        let b = text.as_bytes();
        let fixed = [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (26, b'Z'),
        ];
        if b.len() != 27 || fixed.iter().any(|&(at, byte)| b[at] != byte) {
            // Years outside 0..=9999 have a longer form; let chrono judge those.
            let parsed = DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc);
            let time = RecordTime::new(parsed);
            return (time.to_canonical_string() == text).then_some(time);
        }
        let number = |from: usize, to: usize| -> Option<u32> {
            b[from..to].iter().try_fold(0u32, |acc, &d| {
                d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
            })
        };
        let date =
            chrono::NaiveDate::from_ymd_opt(number(0, 4)? as i32, number(5, 7)?, number(8, 10)?)?;
        let time = date.and_hms_micro_opt(
            number(11, 13)?,
            number(14, 16)?,
            number(17, 19)?,
            number(20, 26)?,
        )?;
        // Leap-second representations (second 60) are not canonical.
        if number(17, 19)? > 59 {
            return None;
        }
        Some(RecordTime(time.and_utc()))
    }

    pub(crate) fn put_canonical(self, out: &mut impl CanonicalSink) {
        let (buf, len) = self.canonical_text();
        out.put(&(len as u32).to_be_bytes());
        out.put(&buf[..len]);
    }
}

impl From<DateTime<Utc>> for RecordTime {
    fn from(time: DateTime<Utc>) -> Self {
        RecordTime::new(time)
    }
}

impl fmt::Display for RecordTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_canonical_string())
    }
}

impl Serialize for RecordTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RecordTime {
    /// Accepts only the canonical form, so a re-formatted time is a modified record
    /// rather than something the verifier silently normalizes.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimeVisitor;
        impl serde::de::Visitor<'_> for TimeVisitor {
            type Value = RecordTime;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a time as YYYY-MM-DDTHH:MM:SS.ffffffZ")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RecordTime, E> {
                RecordTime::parse_canonical(text).ok_or_else(|| {
                    E::custom(format!(
                        "time {text:?} is not in canonical form YYYY-MM-DDTHH:MM:SS.ffffffZ"
                    ))
                })
            }
        }
        deserializer.deserialize_str(TimeVisitor)
    }
}

/// What happened, as a writer describes it: every record field except the ones the
/// chain assigns (`seq`, `writer`, `prev_hash`, `hash`).
///
/// Build one with [`AuditEvent::new`] and the `with_*`/setter methods. `time` may be
/// left empty; the writer then stamps it when the event is appended.
///
/// Two fields protect secrets by construction: [`AuditEvent::prompt`] stores only
/// the SHA-256 of the prompt, and there is no field for a token's secret value,
/// only its `namespace/name` id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// When it happened; `None` lets the writer stamp the time of append.
    pub time: Option<RecordTime>,
    /// Record kind.
    pub kind: RecordKind,
    /// Request id (from the caller, or generated by the enforcement point).
    pub request_id: Option<String>,
    /// Who asked: team, user or service account from the token.
    pub subject: Option<String>,
    /// Token id as `namespace/name`. Never the secret value.
    pub token_id: Option<String>,
    /// Model name as the caller asked for it (or ModelDeployment name).
    pub model: Option<String>,
    /// Namespace the event belongs to.
    pub namespace: Option<String>,
    /// The decided effect (absent for lifecycle events).
    pub effect: Option<Effect>,
    /// Policy that decided, as `namespace/name` or the ClusterAIPolicy name.
    pub policy: Option<String>,
    /// Rule within the policy that decided.
    pub rule: Option<String>,
    /// Rationale codes such as `PII_DETECTED`.
    pub codes: Vec<String>,
    /// Fingerprint of the policy bundle the decision was made under.
    pub fingerprint: Option<String>,
    /// Hex SHA-256 of the prompt text.
    pub prompt_hash: Option<String>,
    /// The prompt after redaction, only when a policy asked to keep it.
    pub redacted_prompt: Option<String>,
    /// Tokens and cost, once known.
    pub usage: Option<Usage>,
    /// Small kind-specific facts (admission object, lifecycle transition, ...).
    pub detail: BTreeMap<String, String>,
}

impl AuditEvent {
    /// An empty event of the given kind.
    pub fn new(kind: RecordKind) -> Self {
        AuditEvent {
            time: None,
            kind,
            request_id: None,
            subject: None,
            token_id: None,
            model: None,
            namespace: None,
            effect: None,
            policy: None,
            rule: None,
            codes: Vec::new(),
            fingerprint: None,
            prompt_hash: None,
            redacted_prompt: None,
            usage: None,
            detail: BTreeMap::new(),
        }
    }

    /// A decision event (one model request).
    pub fn decision(effect: Effect) -> Self {
        AuditEvent::new(RecordKind::Decision).effect(effect)
    }

    /// A lifecycle event with a `transition` detail, e.g. `writer-recovered`.
    pub fn lifecycle(transition: impl Into<String>) -> Self {
        AuditEvent::new(RecordKind::Lifecycle).detail("transition", transition)
    }

    /// Set the event time (otherwise the writer stamps it).
    pub fn time(mut self, time: impl Into<RecordTime>) -> Self {
        self.time = Some(time.into());
        self
    }

    /// Set the request id.
    pub fn request_id(mut self, value: impl Into<String>) -> Self {
        self.request_id = Some(value.into());
        self
    }

    /// Set the subject.
    pub fn subject(mut self, value: impl Into<String>) -> Self {
        self.subject = Some(value.into());
        self
    }

    /// Set the token id (`namespace/name`; never the secret).
    pub fn token_id(mut self, value: impl Into<String>) -> Self {
        self.token_id = Some(value.into());
        self
    }

    /// Set the model.
    pub fn model(mut self, value: impl Into<String>) -> Self {
        self.model = Some(value.into());
        self
    }

    /// Set the namespace.
    pub fn namespace(mut self, value: impl Into<String>) -> Self {
        self.namespace = Some(value.into());
        self
    }

    /// Set the effect.
    pub fn effect(mut self, effect: Effect) -> Self {
        self.effect = Some(effect);
        self
    }

    /// Set the deciding policy and rule.
    pub fn policy_rule(mut self, policy: impl Into<String>, rule: impl Into<String>) -> Self {
        self.policy = Some(policy.into());
        self.rule = Some(rule.into());
        self
    }

    /// Add a rationale code.
    pub fn code(mut self, code: impl Into<String>) -> Self {
        self.codes.push(code.into());
        self
    }

    /// Set the bundle fingerprint.
    pub fn fingerprint(mut self, value: impl Into<String>) -> Self {
        self.fingerprint = Some(value.into());
        self
    }

    /// Record the SHA-256 of the prompt. The prompt itself is not kept.
    pub fn prompt(mut self, prompt: &str) -> Self {
        self.prompt_hash = Some(hex::encode(Sha256::digest(prompt.as_bytes())));
        self
    }

    /// Keep the redacted prompt. Call only when a policy asked for it, and only with
    /// text that has already been redacted.
    pub fn redacted_prompt(mut self, redacted: impl Into<String>) -> Self {
        self.redacted_prompt = Some(redacted.into());
        self
    }

    /// Set the usage.
    pub fn usage(mut self, usage: Usage) -> Self {
        self.usage = Some(usage);
        self
    }

    /// Add a detail entry.
    pub fn detail(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.detail.insert(key.into(), value.into());
        self
    }
}

/// Longest detail value kept as it is; longer ones are replaced like invalid
/// identifiers. Detail values are free text (messages), so they may hold any
/// character, but not unbounded amounts of it.
pub const MAX_DETAIL_VALUE_BYTES: usize = 4096;

/// Detail key listing the fields [`AuditEvent::sanitize`] replaced.
pub const INVALID_FIELDS_DETAIL: &str = "invalid_fields";

/// What an invalid value is replaced with: `invalid:` and the first 16 hex
/// characters of its SHA-256, so whoever holds the original can match it.
fn replacement(value: &str) -> String {
    format!(
        "invalid:{}",
        &hex::encode(Sha256::digest(value.as_bytes()))[..16]
    )
}

impl AuditEvent {
    /// The last line of defence of the audit trail against hostile input: check
    /// every identifier field with [`crate::ident::check_max`] (cap
    /// [`ident::MAX_RECORDED_IDENTIFIER_BYTES`]) and every detail value
    /// against [`MAX_DETAIL_VALUE_BYTES`], and replace what fails by
    /// `invalid:<hash>` (listing the fields under the detail
    /// [`INVALID_FIELDS_DETAIL`]). Ingress points refuse such values with a 400
    /// long before; this makes sure one that slipped through is still recorded
    /// (the decision happened) without a control character or a megabyte in the
    /// trail. Returns what was replaced; an already clean event is unchanged.
    pub fn sanitize(&mut self) -> Vec<IdentError> {
        let mut errors = Vec::new();
        let mut fix = |field: &'static str, value: &mut Option<String>| {
            if let Some(text) = value
                && let Err(error) =
                    ident::check_max(field, text, ident::MAX_RECORDED_IDENTIFIER_BYTES)
            {
                *text = replacement(text);
                errors.push(error);
            }
        };
        fix("request_id", &mut self.request_id);
        fix("subject", &mut self.subject);
        fix("token_id", &mut self.token_id);
        fix("model", &mut self.model);
        fix("namespace", &mut self.namespace);
        fix("policy", &mut self.policy);
        fix("rule", &mut self.rule);
        fix("fingerprint", &mut self.fingerprint);
        fix("prompt_hash", &mut self.prompt_hash);
        for code in &mut self.codes {
            if let Err(error) =
                ident::check_max("codes", code, ident::MAX_RECORDED_IDENTIFIER_BYTES)
            {
                *code = replacement(code);
                errors.push(error);
            }
        }
        self.sanitize_detail(&mut errors);
        if !errors.is_empty() {
            let mut fields: Vec<&str> = errors.iter().map(IdentError::field).collect();
            fields.dedup();
            self.detail
                .insert(INVALID_FIELDS_DETAIL.to_string(), fields.join(","));
        }
        errors
    }

    fn sanitize_detail(&mut self, errors: &mut Vec<IdentError>) {
        let invalid = self.detail.iter().any(|(key, value)| {
            ident::check("detail key", key).is_err() || value.len() > MAX_DETAIL_VALUE_BYTES
        });
        if !invalid {
            return;
        }
        let detail = std::mem::take(&mut self.detail);
        for (mut key, mut value) in detail {
            if let Err(error) = ident::check("detail key", &key) {
                key = replacement(&key);
                errors.push(error);
            }
            if value.len() > MAX_DETAIL_VALUE_BYTES {
                errors.push(IdentError::TooLong {
                    field: "detail value".into(),
                    len: value.len(),
                    max: MAX_DETAIL_VALUE_BYTES,
                });
                value = replacement(&value);
            }
            self.detail.insert(key, value);
        }
    }
}

/// One record of the audit trail, as stored and as hashed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the writer's chain, from 1, no gaps.
    pub seq: u64,
    /// When the event happened (UTC, microseconds).
    pub time: RecordTime,
    /// Identity of the writer whose chain this record belongs to.
    pub writer: String,
    /// Record kind.
    pub kind: RecordKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<Effect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub detail: BTreeMap<String, String>,
    /// Hash of the previous record of this writer (zeros for seq 1).
    pub prev_hash: Hash256,
    /// `SHA-256(prev_hash || canonical_bytes)`.
    pub hash: Hash256,
}

/// Writes the canonical layout of anything with the record's field names (the
/// owned [`AuditRecord`] and the borrowed [`RecordRef`] the verifier parses), so
/// the layout exists once.
macro_rules! write_canonical_fields {
    ($record:expr, $out:expr) => {{
        let record = $record;
        let out = $out;
        out.put(RECORD_MAGIC);
        out.put(&record.seq.to_be_bytes());
        record.time.put_canonical(out);
        put_str(out, &record.writer);
        put_str(out, record.kind.as_str());
        put_opt_str(out, record.request_id.as_deref());
        put_opt_str(out, record.subject.as_deref());
        put_opt_str(out, record.token_id.as_deref());
        put_opt_str(out, record.model.as_deref());
        put_opt_str(out, record.namespace.as_deref());
        put_opt_str(out, record.effect.map(|e| e.as_str()));
        put_opt_str(out, record.policy.as_deref());
        put_opt_str(out, record.rule.as_deref());
        out.put(&(record.codes.len() as u32).to_be_bytes());
        for code in &record.codes {
            put_str(out, code.as_ref());
        }
        put_opt_str(out, record.fingerprint.as_deref());
        put_opt_str(out, record.prompt_hash.as_deref());
        put_opt_str(out, record.redacted_prompt.as_deref());
        match &record.usage {
            None => out.put(&[0]),
            Some(usage) => {
                out.put(&[1]);
                out.put(&usage.input_tokens.to_be_bytes());
                out.put(&usage.output_tokens.to_be_bytes());
                out.put(&usage.cost_usd.nanos().to_be_bytes());
            }
        }
        out.put(&(record.detail.len() as u32).to_be_bytes());
        // A BTreeMap iterates in byte order of its keys (for `Str` too, which
        // orders as its text), which is the documented order.
        for (key, value) in &record.detail {
            put_str(out, key.as_ref());
            put_str(out, value.as_ref());
        }
    }};
}

impl AuditRecord {
    /// The canonical bytes the hash covers (everything except `prev_hash` and
    /// `hash`). The layout is documented in `docs/audit.md`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write_canonical(&mut out);
        out
    }

    /// `SHA-256(prev_hash || canonical_bytes)` for the given predecessor hash.
    pub fn compute_hash(&self, prev_hash: &Hash256) -> Hash256 {
        let mut hasher = HashSink(Sha256::new());
        hasher.put(prev_hash.as_bytes());
        self.write_canonical(&mut hasher);
        Hash256::from_bytes(hasher.0.finalize().into())
    }

    /// Whether `hash` matches the record's own content and `prev_hash`.
    pub fn hash_is_consistent(&self) -> bool {
        self.compute_hash(&self.prev_hash) == self.hash
    }

    fn write_canonical(&self, out: &mut impl CanonicalSink) {
        write_canonical_fields!(self, out);
    }
}

/// A string borrowed from the stored JSON when it has no escapes, owned
/// otherwise: what lets the verifier parse a million records without a
/// million allocations per field.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Str<'a>(Cow<'a, str>);

impl Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Str<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> serde::de::Visitor<'de> for StrVisitor {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                text: &'de str,
            ) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(text)))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(text.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

/// A stored record read without copying its strings: the verifier's view. It
/// accepts exactly what [`AuditRecord`] accepts and hashes to the same value.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecordRef<'a> {
    pub seq: u64,
    pub time: RecordTime,
    #[serde(borrow)]
    pub writer: Str<'a>,
    pub kind: RecordKind,
    #[serde(default, borrow)]
    pub request_id: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub subject: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub token_id: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub model: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub namespace: Option<Str<'a>>,
    #[serde(default)]
    pub effect: Option<Effect>,
    #[serde(default, borrow)]
    pub policy: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub rule: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub codes: Vec<Str<'a>>,
    #[serde(default, borrow)]
    pub fingerprint: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub prompt_hash: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub redacted_prompt: Option<Str<'a>>,
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default, borrow)]
    pub detail: BTreeMap<Str<'a>, Str<'a>>,
    pub prev_hash: Hash256,
    pub hash: Hash256,
}

impl RecordRef<'_> {
    /// `SHA-256(prev_hash || canonical bytes)` for the stored `prev_hash`.
    pub fn compute_hash(&self) -> Hash256 {
        let mut hasher = HashSink(Sha256::new());
        hasher.put(self.prev_hash.as_bytes());
        write_canonical_fields!(self, &mut hasher);
        Hash256::from_bytes(hasher.0.finalize().into())
    }
}

/// Where canonical bytes go: a buffer (to show them) or a hasher (to hash them
/// without allocating).
pub(crate) trait CanonicalSink {
    fn put(&mut self, bytes: &[u8]);
}

impl CanonicalSink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

pub(crate) struct HashSink(pub(crate) Sha256);

impl CanonicalSink for HashSink {
    fn put(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

pub(crate) fn put_str(out: &mut impl CanonicalSink, value: &str) {
    out.put(&(value.len() as u32).to_be_bytes());
    out.put(value.as_bytes());
}

pub(crate) fn put_opt_str(out: &mut impl CanonicalSink, value: Option<&str>) {
    match value {
        None => out.put(&[0]),
        Some(value) => {
            out.put(&[1]);
            put_str(out, value);
        }
    }
}
