//! Output rules: what policies do to model responses (rules with
//! `phase: Response`).
//!
//! A rule on Response matches on the request's facts (its selectors, `when`,
//! schedule, cost and token conditions, as a rule on Request does) and acts on
//! what the response contains:
//!
//! - `Deny` withholds the response when it holds any entity its
//!   `conditions.detected` lists; in a stream, the stream is cut before that
//!   entity's first byte (what came before it was already delivered).
//! - `Redact` rewrites, in every response its facts match, the entities it
//!   lists (`redact.entities`, else `conditions.detected`, else every
//!   redactable entity) with its replacement. `detected` is not a condition
//!   here: what to rewrite must be known before the response arrives, so
//!   that a stream can be redacted as it goes.
//!
//! A response is judged against the rules in precedence order (as requests
//! are): the first Deny rule whose entities the response holds blocks it;
//! otherwise every matching Redact rule rewrites its entities, an entity
//! listed by several taking the replacement of the first. Rules of Audit-mode
//! policies never act; the first that would have is reported as `wouldHave`.
//! A `when` that fails at run time blocks the response (fail closed).
//!
//! [`PolicySet::output_plan`] resolves the facts once per request;
//! [`OutputPlan::decide`] judges a whole response and [`StreamScanner`] a
//! streamed one, redacting as it goes, with the same result.

use serde::{Deserialize, Serialize};

use crate::codes;
use crate::compile::{CompiledRule, PolicySet};
use crate::decide::{Check, Ctx};
use crate::detect::{
    DEFAULT_REDACTION, Finding, Findings, StreamPiece, StreamScan, redact_with, redactable,
};
use crate::injection::StreamClassifier;
use crate::request::{Request, WouldHave};
use policybind_crds::{Effect, Enforcement};

/// What to do with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputAction {
    /// Deliver it unchanged.
    Pass,
    /// Deliver it with the listed entities rewritten.
    Redact,
    /// Withhold it (or cut the stream), with the rule's code and message.
    Block,
}

/// One entity rewritten in a response, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redaction {
    pub entity: String,
    /// Replacement text; `{entity}` stands for the entity name.
    pub replacement: String,
}

/// The outcome of judging a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputDecision {
    pub action: OutputAction,
    /// The deciding code first (none for Pass), then the response's detector
    /// codes (`PII_IN_RESPONSE`, `SECRET_IN_RESPONSE`,
    /// `PROMPT_INJECTION_IN_RESPONSE`).
    pub codes: Vec<String>,
    /// Human-readable reason (the deciding rule's message).
    pub message: String,
    /// `namespace/name` or `name` of the deciding policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Name of the deciding rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Entities rewritten (Redact): those found that a matching rule lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redactions: Vec<Redaction>,
    /// What the detectors found in the response (spans only, never text).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// What an Audit-mode rule would have done, when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would_have: Option<WouldHave>,
    /// Fingerprint of the policy set the decision was made under.
    pub fingerprint: String,
}

impl OutputDecision {
    /// The deciding code (empty for Pass).
    pub fn code(&self) -> &str {
        match self.action {
            OutputAction::Pass => "",
            _ => self.codes.first().map(String::as_str).unwrap_or(""),
        }
    }

    /// The response to deliver: `text` (the text the findings are of) with
    /// the redactions applied, or `None` when it is blocked.
    pub fn apply(&self, text: &str) -> Option<String> {
        match self.action {
            OutputAction::Block => None,
            OutputAction::Pass => Some(text.to_owned()),
            OutputAction::Redact => Some(redact_with(text, &self.findings, |entity| {
                replacement_for(&self.redactions, entity)
            })),
        }
    }
}

fn replacement_for<'a>(redactions: &'a [Redaction], entity: &str) -> Option<&'a str> {
    redactions
        .iter()
        .find(|r| r.entity == entity)
        .map(|r| r.replacement.as_str())
}

/// A rule as an output decision names it.
#[derive(Debug, Clone)]
struct RuleRef {
    policy: String,
    rule: String,
    code: String,
    message: String,
}

impl RuleRef {
    fn of(rule: &CompiledRule) -> RuleRef {
        RuleRef {
            policy: rule.policy.clone(),
            rule: rule.name.clone(),
            code: rule.code.clone(),
            message: rule.message.clone(),
        }
    }
}

/// A matching rule on Response and what it acts on.
#[derive(Debug, Clone)]
struct Planned {
    rule: RuleRef,
    action: OutputAction,
    /// Deny: entities that block. Redact: entities to rewrite (empty: every
    /// redactable entity).
    entities: Vec<String>,
    replacement: String,
}

impl Planned {
    fn lists(&self, entity: &str) -> bool {
        match self.action {
            OutputAction::Redact => {
                redactable(entity)
                    && (self.entities.is_empty() || self.entities.iter().any(|e| e == entity))
            }
            _ => self.entities.iter().any(|e| e == entity),
        }
    }

    /// Whether this rule acts on a response holding `entities`.
    fn acts_on(&self, entities: &[&str]) -> bool {
        entities.iter().any(|e| self.lists(e))
    }
}

/// The rules on Response that match one request's facts, resolved once
/// before its response arrives. Owns its data, so it can outlive the policy
/// set it came from (a stream that spans a policy reload).
#[derive(Debug, Clone)]
pub struct OutputPlan {
    /// Enforced rules, in precedence order.
    enforced: Vec<Planned>,
    /// Audit-mode rules, in precedence order.
    audit: Vec<Planned>,
    /// A `when` failed: every response is blocked.
    failed: Option<(RuleRef, String)>,
    fingerprint: String,
}

impl PolicySet {
    /// Resolves which rules on Response apply to the response of `request`
    /// (the request as decided; set `model` to the model actually called if
    /// the request was degraded).
    pub fn output_plan(&self, request: &Request) -> OutputPlan {
        let token = request
            .token
            .as_ref()
            .and_then(|id| self.token_by_id.get(id))
            .map(|&i| &self.tokens[i]);
        let model = self.resolve_model(&request.model, self.request_namespace(request));
        let none = Findings::none();
        // Every entity counts as present, so that `conditions.detected` does
        // not decide here: it is judged against the response later.
        let ctx = Ctx {
            request,
            facts: self.resolve(request, token, model),
            model,
            findings: &none,
            entities: self.detectors.entities().map(str::to_owned).collect(),
            cel_request: std::cell::OnceCell::new(),
        };
        let mut plan = OutputPlan {
            enforced: vec![],
            audit: vec![],
            failed: None,
            fingerprint: self.fingerprint.clone(),
        };
        for rule in &self.output_rules {
            match self.check_rule(rule, &ctx) {
                Check::Miss(_) | Check::Excluded(_) => continue,
                Check::Error(error) => {
                    if rule.enforcement == Enforcement::Enforce && plan.failed.is_none() {
                        plan.failed = Some((RuleRef::of(rule), error));
                    }
                }
                Check::Match => {
                    let planned = plan_rule(rule);
                    match rule.enforcement {
                        Enforcement::Enforce => plan.enforced.push(planned),
                        Enforcement::Audit => plan.audit.push(planned),
                    }
                }
            }
        }
        plan
    }

    /// Judges a whole response: `findings` are what [`PolicySet::scan`] found
    /// in it. Apply the result with [`OutputDecision::apply`].
    pub fn decide_output(&self, request: &Request, findings: &Findings) -> OutputDecision {
        self.output_plan(request).decide(findings)
    }

    /// Starts judging a streamed response; see [`StreamScanner`].
    pub fn stream_scanner(&self, request: &Request) -> StreamScanner {
        StreamScanner {
            plan: self.output_plan(request),
            scan: self.detectors.stream(),
            classifier: self
                .classify_injection
                .then(|| StreamClassifier::new(crate::injection::builtin())),
            findings: vec![],
            received: 0,
            pending: String::new(),
            pending_offset: 0,
            pending_findings: vec![],
            blocked: None,
        }
    }
}

fn plan_rule(rule: &CompiledRule) -> Planned {
    match (rule.effect, &rule.obligations.redact) {
        (Effect::Redact, Some(redact)) => Planned {
            rule: RuleRef::of(rule),
            action: OutputAction::Redact,
            entities: redact.entities.clone(),
            replacement: redact.replacement.clone(),
        },
        _ => Planned {
            rule: RuleRef::of(rule),
            action: OutputAction::Block,
            entities: rule.detected.clone(),
            replacement: DEFAULT_REDACTION.to_owned(),
        },
    }
}

impl OutputPlan {
    /// Whether any rule on Response applies: without one, a response needs
    /// no scanning for policy (only for its detector codes).
    pub fn is_empty(&self) -> bool {
        self.enforced.is_empty() && self.audit.is_empty() && self.failed.is_none()
    }

    /// Judges a response whose findings are `findings`.
    pub fn decide(&self, findings: &Findings) -> OutputDecision {
        let entities = findings.entities();
        let mut decision = self.judge(&entities, findings.as_slice());
        decision.would_have = self.would_have(&entities, &decision);
        for code in codes::response_detector_codes(&entities) {
            if !decision.codes.iter().any(|c| c == code) {
                decision.codes.push(code.to_owned());
            }
        }
        decision
    }

    fn judge(&self, entities: &[&str], findings: &[Finding]) -> OutputDecision {
        if let Some((rule, error)) = &self.failed {
            let message = format!(
                "rule {} of policy {} could not be evaluated ({error}); the response is withheld to fail closed",
                rule.rule, rule.policy
            );
            let mut decision = self.decision(OutputAction::Block, Some(rule), findings);
            decision.codes = vec![codes::POLICY_EVALUATION_ERROR.to_owned()];
            decision.message = message;
            return decision;
        }
        let blocking = self
            .enforced
            .iter()
            .find(|p| p.action == OutputAction::Block && p.acts_on(entities));
        if let Some(block) = blocking {
            return self.decision(OutputAction::Block, Some(&block.rule), findings);
        }
        let redactions = redactions(&self.enforced, entities);
        let deciding = self
            .enforced
            .iter()
            .find(|p| p.action == OutputAction::Redact && p.acts_on(entities));
        match deciding {
            Some(rule) => {
                let mut decision = self.decision(OutputAction::Redact, Some(&rule.rule), findings);
                decision.redactions = redactions;
                decision
            }
            None => self.decision(OutputAction::Pass, None, findings),
        }
    }

    fn decision(
        &self,
        action: OutputAction,
        rule: Option<&RuleRef>,
        findings: &[Finding],
    ) -> OutputDecision {
        OutputDecision {
            action,
            codes: rule.map(|r| vec![r.code.clone()]).unwrap_or_default(),
            message: rule.map_or_else(
                || "no rule on Response acts on this response".to_owned(),
                |r| r.message.clone(),
            ),
            policy: rule.map(|r| r.policy.clone()),
            rule: rule.map(|r| r.rule.clone()),
            redactions: vec![],
            findings: findings.to_vec(),
            would_have: None,
            fingerprint: self.fingerprint.clone(),
        }
    }

    /// The first Audit-mode rule that would have acted, when it would have
    /// acted otherwise than the decision did.
    fn would_have(&self, entities: &[&str], decision: &OutputDecision) -> Option<WouldHave> {
        let rule = self.audit.iter().find(|p| p.acts_on(entities))?;
        let (effect, decided) = match rule.action {
            OutputAction::Block => (Effect::Deny, OutputAction::Block),
            _ => (Effect::Redact, OutputAction::Redact),
        };
        let same = decided == decision.action && decision.code() == rule.rule.code;
        (!same).then(|| WouldHave {
            effect,
            codes: vec![rule.rule.code.clone()],
            policy: rule.rule.policy.clone(),
            rule: rule.rule.rule.clone(),
        })
    }
}

/// For each entity found, the replacement of the first Redact rule listing it.
fn redactions(rules: &[Planned], entities: &[&str]) -> Vec<Redaction> {
    entities
        .iter()
        .filter_map(|entity| {
            let rule = rules
                .iter()
                .find(|p| p.action == OutputAction::Redact && p.lists(entity))?;
            Some(Redaction {
                entity: (*entity).to_owned(),
                replacement: rule.replacement.clone(),
            })
        })
        .collect()
}

/// What a [`StreamScanner`] says about the text received so far.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamOutput {
    /// Text to deliver now, already redacted (possibly empty: the end of what
    /// arrived is held back until it is settled).
    Release(String),
    /// Stop the stream: a rule on Response blocks it. Nothing more may be
    /// delivered; text released before stays delivered.
    Block(Box<OutputDecision>),
}

/// Judges a streamed response as it arrives: holds back the end where an
/// entity may still be arriving (see [`crate::detect::StreamScan`]), redacts
/// what it releases and blocks at the first entity a Deny rule lists,
/// before any of that entity's bytes are released. The text released, joined,
/// is what [`OutputDecision::apply`] gives for the whole response, up to
/// where a block cuts it.
///
/// When the policy set uses PROMPT_INJECTION, the response is also
/// classified passage by passage ([`crate::injection::StreamClassifier`]),
/// and the last passage not yet judged (up to 47 tokens) is held back too,
/// so that a passage a Deny rule blocks is never released.
#[derive(Debug)]
pub struct StreamScanner {
    plan: OutputPlan,
    scan: StreamScan,
    classifier: Option<StreamClassifier>,
    /// Findings so far, spans counted from the start of the response.
    findings: Vec<Finding>,
    received: usize,
    /// Text the detectors settled but the classifier still holds back.
    pending: String,
    pending_offset: usize,
    pending_findings: Vec<Finding>,
    blocked: Option<Box<OutputDecision>>,
}

impl StreamScanner {
    /// Adds the next piece of the response.
    pub fn push(&mut self, piece: &str) -> StreamOutput {
        if let Some(blocked) = &self.blocked {
            return StreamOutput::Block(blocked.clone());
        }
        self.received += piece.len();
        let settled = self.scan.push(piece);
        let injection = self
            .classifier
            .as_mut()
            .and_then(|c| c.push(piece).cloned());
        self.advance(settled, injection)
    }

    /// Ends the response: releases what was held and returns the decision
    /// over the whole response, for the audit record.
    pub fn finish(mut self) -> (StreamOutput, OutputDecision) {
        if let Some(blocked) = self.blocked.take() {
            return (StreamOutput::Block(blocked.clone()), *blocked);
        }
        let settled = self.scan.finish();
        let injection = self.classifier.as_mut().and_then(|c| c.finish().cloned());
        self.classifier = None;
        let output = self.advance(settled, injection);
        let findings = Findings::new(std::mem::take(&mut self.findings), self.received);
        let decision = match &output {
            StreamOutput::Block(blocked) => (**blocked).clone(),
            StreamOutput::Release(_) => self.plan.decide(&findings),
        };
        (output, decision)
    }

    /// Bytes received but not yet released.
    pub fn held(&self) -> usize {
        self.scan.held() + self.pending.len()
    }

    fn advance(&mut self, settled: StreamPiece, injection: Option<Finding>) -> StreamOutput {
        let mut new_entities: Vec<&str> =
            settled.findings.iter().map(|f| f.entity.as_str()).collect();
        if injection.is_some() {
            new_entities.push(crate::detect::PROMPT_INJECTION);
            // Judged once; from here only the detectors hold text back.
            self.classifier = None;
        }
        let blocks = self
            .plan
            .enforced
            .iter()
            .any(|p| p.action == OutputAction::Block && p.acts_on(&new_entities));
        self.findings
            .extend(settled.findings.iter().cloned().chain(injection));
        if blocks || self.plan.failed.is_some() {
            let findings = Findings::new(self.findings.clone(), self.received);
            let decision = Box::new(self.plan.decide(&findings));
            self.blocked = Some(decision.clone());
            return StreamOutput::Block(decision);
        }
        if self.pending.is_empty() {
            self.pending_offset = settled.offset;
        }
        self.pending.push_str(&settled.text);
        self.pending_findings.extend(settled.findings);
        let limit = self
            .classifier
            .as_ref()
            .map_or(usize::MAX, StreamClassifier::undecided_from);
        StreamOutput::Release(self.release(limit))
    }

    /// Releases pending text before `limit` (an offset in the response),
    /// redacted, never splitting a finding.
    fn release(&mut self, limit: usize) -> String {
        let mut until = limit
            .saturating_sub(self.pending_offset)
            .min(self.pending.len());
        while !self.pending.is_char_boundary(until) {
            until -= 1;
        }
        let offset = self.pending_offset;
        if let Some(f) = self
            .pending_findings
            .iter()
            .find(|f| f.start - offset < until && f.end - offset > until)
        {
            until = f.start - offset;
        }
        let released = self
            .pending_findings
            .partition_point(|f| f.end - offset <= until);
        let local: Vec<Finding> = self
            .pending_findings
            .drain(..released)
            .map(|f| Finding {
                start: f.start - offset,
                end: f.end - offset,
                ..f
            })
            .collect();
        let text: String = self.pending.drain(..until).collect();
        self.pending_offset += until;
        let entities: Vec<&str> = local.iter().map(|f| f.entity.as_str()).collect();
        let redactions = redactions(&self.plan.enforced, &entities);
        redact_with(&text, &local, |entity| replacement_for(&redactions, entity))
    }
}
