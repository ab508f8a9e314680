//! Checks over what runs: policies, tokens, the audit trail and its records,
//! incidents.
use std::collections::BTreeMap;

use policybind_crds::incident::IncidentState;
use policybind_crds::{Effect, Enforcement};
use policybind_engine::audit::RecordKind;
use policybind_engine::bundle::{Bundle, BundlePolicy};
use policybind_engine::{PolicySet, scope};

use super::{EvidenceKind, Finding, FindingStatus, Snapshot, id_of, ranges};
use crate::incident_report::reporting_deadline;

/// The policies that apply in the scope's namespace (all of them without one).
fn policies_in_scope(s: &Snapshot) -> Vec<BundlePolicy> {
    let mut policies: Vec<BundlePolicy> = s
        .policies
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p.metadata.namespace.get_or_insert_with(|| "default".into());
            BundlePolicy::from_ai_policy(&p)
        })
        .chain(
            s.cluster_policies
                .iter()
                .map(BundlePolicy::from_cluster_policy),
        )
        .collect();
    if let Some(namespace) = &s.scope.namespace {
        let labels = s
            .namespace_labels
            .get(namespace)
            .cloned()
            .unwrap_or_default();
        policies.retain(|p| scope::policy_applies(p, namespace, &labels));
    }
    policies.sort_by_key(BundlePolicy::id);
    policies
}

pub fn policies_in_force(s: &Snapshot) -> Finding {
    let mut f = Finding::new(EvidenceKind::PoliciesInForce);
    let policies = policies_in_scope(s);
    for p in &policies {
        let kind = if p.namespace.is_some() {
            "AIPolicy"
        } else {
            "ClusterAIPolicy"
        };
        let detail = format!(
            "{:?}, priority {}, {} rule(s): {}",
            p.enforcement,
            p.priority,
            p.rules.len(),
            p.rules
                .iter()
                .map(|r| format!("{} {}", r.name, r.action))
                .collect::<Vec<_>>()
                .join(", ")
        );
        f.object(kind, p.namespace.as_deref(), &p.name, detail);
    }
    let bundle = Bundle {
        policies: policies.clone(),
        ..Bundle::default()
    };
    let compiled = PolicySet::compile(&bundle);
    if let Err(errors) = &compiled {
        f.issues
            .push(format!("the policies do not compile: {errors}"));
    }
    fingerprint_history(s, &mut f);
    f.records.extend(ranges(
        s.records(),
        "policy compile lifecycle records",
        |r| {
            r.kind == RecordKind::Lifecycle
                && r.detail
                    .get("transition")
                    .is_some_and(|t| t.starts_with("policy-"))
        },
    ));
    let audit_only = policies
        .iter()
        .filter(|p| p.enforcement == Enforcement::Audit)
        .count();
    if audit_only > 0 {
        f.notes.push(format!("{audit_only} policy(ies) in Audit mode: they record what they would decide and never block"));
    }
    if policies.is_empty() {
        f.issues.push(
            "no policy applies in scope: every request is denied with NO_MATCHING_POLICY".into(),
        );
    }
    f.summary = format!("{} policy(ies) in force.", policies.len());
    let failed = compiled.is_err();
    f.settle(failed, !policies.is_empty(), FindingStatus::Gap)
}

/// The bundle fingerprints decisions of the period were made under, oldest first:
/// the history of the policy set as enforcement points saw it.
fn fingerprint_history(s: &Snapshot, f: &mut Finding) {
    let mut seen: BTreeMap<&str, (String, String, u64)> = BTreeMap::new();
    for record in s.records().filter(|r| r.kind == RecordKind::Decision) {
        let Some(fingerprint) = record.fingerprint.as_deref() else {
            continue;
        };
        let time = record.time.to_string();
        let entry = seen
            .entry(fingerprint)
            .or_insert((time.clone(), time.clone(), 0));
        entry.0 = entry.0.clone().min(time.clone());
        entry.1 = entry.1.clone().max(time);
        entry.2 += 1;
    }
    let mut history: Vec<_> = seen.into_iter().collect();
    history.sort_by(|a, b| a.1.0.cmp(&b.1.0));
    for (fingerprint, (first, last, count)) in history {
        let short: String = fingerprint.chars().take(16).collect();
        f.notes.push(format!(
            "policy set {short} decided {count} request(s) from {first} to {last}"
        ));
        f.records.extend(ranges(
            s.records(),
            &format!("decisions under policy set {short}"),
            |r| r.kind == RecordKind::Decision && r.fingerprint.as_deref() == Some(fingerprint),
        ));
    }
}

fn rules_with<'a>(
    policies: &'a [BundlePolicy],
    keep: impl Fn(&policybind_crds::PolicyRule) -> bool + 'a,
) -> impl Iterator<Item = (&'a BundlePolicy, &'a policybind_crds::PolicyRule)> + 'a {
    policies
        .iter()
        .filter(|p| p.enforcement == Enforcement::Enforce)
        .flat_map(move |p| p.rules.iter().map(move |r| (p, r)))
        .filter(move |(_, r)| keep(r))
}

pub fn human_oversight(s: &Snapshot) -> Finding {
    let mut f = Finding::new(EvidenceKind::HumanOversight);
    let policies = policies_in_scope(s);
    for (p, r) in rules_with(&policies, |r| r.action == Effect::RequireApproval) {
        let message = r
            .message
            .clone()
            .unwrap_or_else(|| "held for a human decision".into());
        f.object(
            "PolicyRule",
            p.namespace.as_deref(),
            &format!("{}/{}", p.name, r.name),
            message,
        );
    }
    let models_needing = s
        .models
        .iter()
        .filter(|m| crate::gates::risk_level(m).requires_approval())
        .count();
    if models_needing > 0 {
        f.notes.push(format!("{models_needing} model(s) of risk High or Critical can only be used after a named person approves them"));
    }
    f.records = ranges(
        s.records(),
        "requests held for a human decision (effect RequireApproval)",
        |r| r.effect == Some(Effect::RequireApproval),
    );
    f.records.extend(ranges(
        s.records(),
        "held requests let through after approval (APPROVAL_GRANTED)",
        |r| r.codes.iter().any(|c| c == "APPROVAL_GRANTED"),
    ));
    if f.objects.is_empty() && models_needing == 0 {
        f.issues
            .push("no rule holds requests for a human decision and no model needs approval".into());
    }
    f.summary = format!(
        "{} enforced rule(s) hold requests for a human decision.",
        f.objects.len()
    );
    let evidenced = !f.objects.is_empty() || models_needing > 0;
    f.settle(false, evidenced, FindingStatus::Gap)
}

pub fn content_safeguards(s: &Snapshot) -> Finding {
    let mut f = Finding::new(EvidenceKind::ContentSafeguards);
    let policies = policies_in_scope(s);
    for (p, r) in rules_with(&policies, |r| {
        r.action == Effect::Redact || !r.conditions.detected.is_empty()
    }) {
        let entities = if r.conditions.detected.is_empty() {
            r.redact
                .as_ref()
                .map(|x| x.entities.join(", "))
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "every entity found".into())
        } else {
            r.conditions.detected.join(", ")
        };
        f.object(
            "PolicyRule",
            p.namespace.as_deref(),
            &format!("{}/{}", p.name, r.name),
            format!("{} on {entities}", r.action),
        );
    }
    for p in &policies {
        for d in &p.custom_detectors {
            f.notes
                .push(format!("custom detector {} in {}", d.name, p.id()));
        }
    }
    f.records = ranges(
        s.records(),
        "prompts with detected entities (PII_DETECTED)",
        |r| r.codes.iter().any(|c| c == "PII_DETECTED"),
    );
    f.records.extend(ranges(
        s.records(),
        "prompts redacted before the model saw them (effect Redact)",
        |r| r.effect == Some(Effect::Redact),
    ));
    if f.objects.is_empty() {
        f.issues
            .push("no enforced rule redacts or acts on detected entities".into());
    }
    f.summary = format!(
        "{} enforced rule(s) act on detected content.",
        f.objects.len()
    );
    let evidenced = !f.objects.is_empty();
    f.settle(false, evidenced, FindingStatus::Gap)
}

fn token_scope(t: &policybind_crds::AccessToken) -> String {
    let spec = &t.spec;
    let mut parts = vec![
        format!("{:?} {}", spec.subject.kind, spec.subject.name),
        format!("models {}", spec.allowed_models.join(", ")),
    ];
    if !spec.allowed_use_cases.is_empty() {
        parts.push(format!("use cases {}", spec.allowed_use_cases.join(", ")));
    }
    parts.push(format!(
        "data up to {}",
        spec.max_data_classification.as_str()
    ));
    for b in &spec.budgets {
        let limit = match (b.max_cost_usd, b.max_tokens) {
            (Some(usd), _) => format!("${usd}"),
            (None, Some(tokens)) => format!("{tokens} tokens"),
            (None, None) => "-".into(),
        };
        parts.push(format!("{limit} per {}", b.period.as_str().to_lowercase()));
    }
    if let Some(rpm) = spec.rate_limit.as_ref().and_then(|r| r.requests_per_minute) {
        parts.push(format!("{rpm} requests/min"));
    }
    if let Some(expires) = spec.expires_at {
        parts.push(format!("expires {}", expires.format("%Y-%m-%d")));
    }
    if spec.revoked {
        parts.push("revoked".into());
    }
    parts.join("; ")
}

fn sorted_tokens(s: &Snapshot) -> Vec<&policybind_crds::AccessToken> {
    let mut tokens: Vec<_> = s.tokens.iter().collect();
    tokens.sort_by_key(|t| id_of(&t.metadata));
    tokens
}

pub fn access_tokens(s: &Snapshot) -> Finding {
    let mut f = Finding::new(EvidenceKind::AccessTokens);
    for t in sorted_tokens(s) {
        f.object(
            "AccessToken",
            t.metadata.namespace.as_deref(),
            t.metadata.name.as_deref().unwrap_or_default(),
            token_scope(t),
        );
        if t.spec.allowed_models.iter().any(|m| m == "*") && !t.spec.revoked {
            f.notes.push(format!(
                "{} may call every registered model",
                id_of(&t.metadata)
            ));
        }
    }
    f.records = ranges(s.records(), "requests refused at the token stage", |r| {
        r.kind == RecordKind::Decision
            && r.codes.first().is_some_and(|c| {
                c.starts_with("TOKEN_")
                    || c == "USE_CASE_NOT_ALLOWED"
                    || c == "DATA_CLASSIFICATION_EXCEEDED"
                    || c.ends_with("BUDGET_EXCEEDED")
                    || c.ends_with("RATE_LIMITED")
            })
    });
    f.notes.push(
        "token values are never in the evidence: only their SHA-256 leaves the token's Secret"
            .into(),
    );
    if f.objects.is_empty() {
        f.issues.push("no AccessToken in scope".into());
    }
    f.summary = format!("{} scoped token(s).", f.objects.len());
    let evidenced = !f.objects.is_empty();
    f.settle(false, evidenced, FindingStatus::Gap)
}

pub fn token_lifecycle(s: &Snapshot) -> Finding {
    let mut f = Finding::new(EvidenceKind::TokenLifecycle);
    let mut without_expiry = Vec::new();
    for t in sorted_tokens(s) {
        let name = t.metadata.name.as_deref().unwrap_or_default();
        let namespace = t.metadata.namespace.as_deref();
        match (t.spec.revoked, t.spec.expires_at) {
            (true, _) => f.object("AccessToken", namespace, name, "revoked".into()),
            (false, Some(at)) if at <= s.now => f.object(
                "AccessToken",
                namespace,
                name,
                format!("expired {}", at.format("%Y-%m-%d")),
            ),
            (false, Some(at)) => f.object(
                "AccessToken",
                namespace,
                name,
                format!("expires {}", at.format("%Y-%m-%d")),
            ),
            (false, None) => without_expiry.push(id_of(&t.metadata)),
        }
    }
    if !without_expiry.is_empty() {
        f.notes.push(format!(
            "without an expiry (valid until revoked): {}",
            without_expiry.join(", ")
        ));
    }
    f.records = ranges(
        s.records(),
        "requests refused for a revoked or expired token",
        |r| {
            r.codes
                .first()
                .is_some_and(|c| c == "TOKEN_REVOKED" || c == "TOKEN_EXPIRED")
        },
    );
    f.records.extend(ranges(
        s.records(),
        "token lifecycle records (issue, rotation, revocation)",
        |r| {
            r.kind == RecordKind::Lifecycle
                && r.detail
                    .get("transition")
                    .is_some_and(|t| t.starts_with("token-"))
        },
    ));
    f.summary = format!("{} token(s) with an expiry or revoked.", f.objects.len());
    let evidenced = !f.objects.is_empty();
    f.settle(
        false,
        evidenced,
        if s.tokens.is_empty() {
            FindingStatus::NotApplicable
        } else {
            FindingStatus::Gap
        },
    )
}

pub fn audit_trail(s: &Snapshot) -> Finding {
    let mut f = Finding::new(EvidenceKind::AuditTrail);
    let Some(trail) = &s.trail else {
        f.issues
            .push("no audit trail was given to the report".into());
        f.summary = "No audit trail was examined.".into();
        return f.settle(false, false, FindingStatus::Gap);
    };
    let report = &trail.verification;
    for problem in &report.problems {
        f.issues.push(problem.to_string());
    }
    if !report.signatures_checked {
        f.issues
            .push("segment signatures were not checked (no trusted key given)".into());
    }
    for w in &report.writers {
        f.records.push(super::RecordRange {
            writer: w.writer.clone(),
            first_seq: w.first_seq,
            last_seq: w.last_seq,
            count: w.records,
            what: format!(
                "verified chain, {} segment(s), head {}",
                w.segments,
                w.head.short()
            ),
        });
        if w.unproven_records() > 0 {
            f.notes.push(format!(
                "{}: {} record(s) in an open segment are chained but not yet proven by a sealed, signed segment",
                w.writer, w.unproven_records()
            ));
        }
        if let Some(anchor) = w.anchored_at {
            f.notes.push(format!(
                "{}: older segments were handed to a retention sink; the chain is anchored at {}",
                w.writer,
                anchor.short()
            ));
        }
    }
    f.notes.push(format!("read from {}", trail.source));
    f.summary = if report.is_ok() {
        format!(
            "{} record(s) from {} writer(s) verified complete and unmodified.",
            report.total_records(),
            report.writers.len()
        )
    } else {
        format!("The trail is broken: {} problem(s).", report.problems.len())
    };
    let failed = !report.is_ok();
    let evidenced = !report.writers.is_empty();
    if !evidenced && !failed {
        f.issues.push("the trail holds no segment".into());
    }
    f.settle(failed, evidenced, FindingStatus::Gap)
}

pub fn decision_records(s: &Snapshot) -> Finding {
    let mut f = Finding::new(EvidenceKind::DecisionRecords);
    f.records = ranges(s.records(), "request decisions", |r| {
        r.kind == RecordKind::Decision
    });
    let mut by_effect: BTreeMap<&str, u64> = BTreeMap::new();
    for r in s.records().filter(|r| r.kind == RecordKind::Decision) {
        *by_effect
            .entry(r.effect.map(|e| e.as_str()).unwrap_or("-"))
            .or_default() += 1;
    }
    let total: u64 = by_effect.values().sum();
    if total > 0 {
        f.notes.push(
            by_effect
                .iter()
                .map(|(e, n)| format!("{e} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    } else if s.trail.is_some() {
        f.issues
            .push("no request decision recorded in the period".into());
    } else {
        f.issues
            .push("no audit trail was given to the report".into());
    }
    f.summary = format!("{total} request decision(s) recorded in the period.");
    f.settle(false, total > 0, FindingStatus::Gap)
}

pub fn change_records(s: &Snapshot) -> Finding {
    let mut f = Finding::new(EvidenceKind::ChangeRecords);
    f.records = ranges(s.records(), "admission reviews", |r| {
        r.kind == RecordKind::Admission
    });
    f.records
        .extend(ranges(s.records(), "approval decisions", |r| {
            r.kind == RecordKind::Approval
        }));
    f.records
        .extend(ranges(s.records(), "lifecycle changes", |r| {
            r.kind == RecordKind::Lifecycle
        }));
    let total: u64 = f.records.iter().map(|r| r.count).sum();
    if total == 0 {
        f.issues
            .push("no admission, approval or lifecycle record in the period".into());
    }
    f.summary = format!("{total} change record(s) in the period.");
    f.settle(false, total > 0, FindingStatus::Gap)
}

pub fn incidents(s: &Snapshot) -> Finding {
    let mut f = Finding::new(EvidenceKind::Incidents);
    let mut list: Vec<_> = s.incidents.iter().collect();
    list.sort_by_key(|i| id_of(&i.metadata));
    for i in list {
        let spec = &i.spec;
        let closed = matches!(
            spec.state,
            IncidentState::Mitigated | IncidentState::Resolved
        );
        if closed && (spec.root_cause.is_none() || spec.remediation.is_none()) {
            f.issues.push(format!(
                "{}: {:?} without a recorded root cause and remediation",
                id_of(&i.metadata),
                spec.state
            ));
        }
        let detail = format!(
            "{} {:?}, {:?}, subject {}{}",
            spec.pattern,
            spec.severity,
            spec.state,
            spec.subject,
            if spec.audit_records.is_empty() {
                String::new()
            } else {
                format!("; records {}", spec.audit_records.join(", "))
            }
        );
        f.object(
            "Incident",
            i.metadata.namespace.as_deref(),
            i.metadata.name.as_deref().unwrap_or_default(),
            detail,
        );
    }
    f.records = ranges(s.records(), "incidents raised", |r| {
        r.kind == RecordKind::Lifecycle
            && r.detail.get("transition").map(String::as_str) == Some("incident-raised")
    });
    if f.objects.is_empty() {
        f.notes.push("no incident in scope".into());
    }
    f.summary = format!("{} incident(s) in scope.", f.objects.len());
    let evidenced = !f.objects.is_empty();
    f.settle(false, evidenced, FindingStatus::NotApplicable)
}

pub fn serious_incident_reporting(s: &Snapshot) -> Finding {
    let mut f = Finding::new(EvidenceKind::SeriousIncidentReporting);
    let mut failed = false;
    for i in &s.incidents {
        let Some(harm) = &i.spec.harm else { continue };
        let id = id_of(&i.metadata);
        let deadline = reporting_deadline(harm);
        let name = i.metadata.name.as_deref().unwrap_or_default();
        match &i.spec.authority_notification {
            Some(n) if n.notified_at <= deadline.due => f.object(
                "Incident",
                i.metadata.namespace.as_deref(),
                name,
                format!(
                    "{}: {} notified {}, within the {}-day deadline ({})",
                    harm.category.as_str(),
                    n.authority,
                    n.notified_at.format("%Y-%m-%d %H:%M UTC"),
                    deadline.days,
                    deadline.basis
                ),
            ),
            Some(n) => {
                failed = true;
                f.issues.push(format!(
                    "{id}: {} notified {}, after the deadline {} ({})",
                    n.authority,
                    n.notified_at.format("%Y-%m-%d %H:%M UTC"),
                    deadline.due.format("%Y-%m-%d %H:%M UTC"),
                    deadline.basis
                ));
            }
            None if deadline.due < s.now => {
                failed = true;
                f.issues.push(format!(
                    "{id}: no authority notified and the deadline {} has passed ({})",
                    deadline.due.format("%Y-%m-%d %H:%M UTC"),
                    deadline.basis
                ));
            }
            None => f.issues.push(format!(
                "{id}: authority notification due by {} ({})",
                deadline.due.format("%Y-%m-%d %H:%M UTC"),
                deadline.basis
            )),
        }
    }
    f.summary = format!("{} serious incident(s) notified in time.", f.objects.len());
    let evidenced = !f.objects.is_empty();
    f.settle(failed, evidenced, FindingStatus::NotApplicable)
}
