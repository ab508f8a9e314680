//! The decision pipeline: one path for every decided request, proxied or asked
//! through the decision API (DESIGN.md section 12, "Sidecar as a pipeline").
//!
//! 1. **Facts.** The caller says only what it may say ([`Asked`]: model, use
//!    case, classification, text, estimates, labels, an approval reference).
//!    The pipeline adds what only PolicyBind knows: the token (authenticated by
//!    the caller of the pipeline), the namespace, the time, the token's usage
//!    from the ledger, and whether the approval reference is approved.
//! 2. **Decide.** The engine decides.
//! 3. **Prepare and reserve.** For a forwarding decision, the caller's [`Plan`]
//!    applies the obligations (redaction from the decision's findings, degrade)
//!    and resolves the route; then the estimate is reserved against rate
//!    limits and budgets.
//! 4. **Hold.** A RequireApproval decision is held for a human.
//! 5. **Audit.** The outcome is appended to the audit trail; a refused append
//!    refuses the request.
//!
//! Each step returns what it found and none rewrites an earlier one: the
//! [`Verdict`] carries the engine's decision as it was made, and the outcome
//! (admitted, or a [`Refusal`] with its own stage and code). The detectors run
//! once (inside the decision); redaction reuses the decision's findings.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use policybind_crds::{DataClassification, Effect};
use policybind_engine::PolicySet;
use policybind_engine::audit::{AuditEvent, CostUsd, Usage};
use policybind_engine::charges::Charge;
use policybind_engine::codes;
use policybind_engine::detect;
use policybind_engine::request::{Decision, Request as Facts, Stage as EngineStage};
use tracing::warn;

use crate::accounting::{Amount, Refusal as LedgerRefusal, ReservationId, TokenLimits};
use crate::approvals::{ApprovalStatus, HeldRequest};
use crate::metrics::BudgetLabels;
use crate::refusal::{Hint, Refusal, Stage};
use crate::source::Loaded;
use crate::state::AppState;

/// What a caller asked, as it said it. Nothing here can name a subject, team,
/// namespace, time, usage or approval state.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    pub model: String,
    pub use_case: Option<String>,
    pub data_classification: Option<DataClassification>,
    /// The text the detectors scan.
    pub prompt: String,
    pub estimated_input_tokens: u64,
    pub estimated_output_tokens: u64,
    /// Free-form labels, visible to CEL as `request.labels`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Reference of an ApprovalRequest the caller says approves this request.
    pub approval_ref: Option<String>,
}

/// One request through the pipeline.
pub struct Call<'a> {
    pub loaded: Arc<Loaded>,
    pub request_id: &'a str,
    /// Authenticated token id (`namespace/name`).
    pub token: &'a str,
    pub asked: Asked,
    /// Label for the audit record's `endpoint` detail.
    pub endpoint: &'static str,
}

/// What will be reserved for an admitted request.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// Model actually called (after degrade), for pricing at settlement.
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// What the caller does with a forwarding decision before anything is reserved.
pub trait Plan {
    type Ready;
    /// Applies the decision's obligations. `Ok((ready, None))` admits without a
    /// reservation (the decision API enforces nothing itself).
    fn prepare(
        self,
        decision: &Decision,
        set: &PolicySet,
    ) -> Result<(Self::Ready, Option<Estimate>), Refusal>;
}

/// A request that may go on.
pub struct Admitted<T> {
    pub ready: T,
    pub reservation: Option<Reservation>,
}

/// What the pipeline found.
pub struct Verdict<T> {
    /// The engine's decision, unchanged.
    pub decision: Decision,
    /// The facts decided on, without the prompt (for the output policy).
    pub facts: Facts,
    pub outcome: Result<Admitted<T>, Refusal>,
}

impl AppState {
    /// Runs a call through every step.
    pub async fn run<P: Plan>(self: &Arc<Self>, mut call: Call<'_>, plan: P) -> Verdict<P::Ready> {
        let started = Instant::now();
        let now = Utc::now();
        let approval_ref = call.asked.approval_ref.clone();
        let mut facts = self.facts(&mut call, now).await;
        let decision = call.loaded.set.decide(&facts);
        let prompt = facts.prompt.take().unwrap_or_default();

        let mut outcome = self.admit(&call, &decision, plan, now).await;
        if let Err(refusal) = &mut outcome
            && decision.effect == Effect::RequireApproval
            && refusal.stage == Stage::Decision
        {
            let held = self.hold(&call, &decision, approval_ref.as_deref(), now);
            refusal.hint = held.await.map(|r| Box::new(Hint::Approval(r)));
        }
        self.metrics
            .decide_seconds
            .observe(started.elapsed().as_secs_f64());
        let event = self.outcome_event(&call, &decision, &prompt, &outcome, now);
        let outcome = match (self.audit.append(event), outcome) {
            (Ok(()), outcome) => outcome,
            (Err(e), _) => {
                warn!("decision not recorded, request refused: {e}");
                Err(Refusal::new(
                    Stage::Audit,
                    codes::AUDIT_UNAVAILABLE,
                    "the audit trail cannot record this decision; request refused",
                ))
            }
        };
        self.count(&decision, &outcome, now);
        Verdict {
            decision,
            facts,
            outcome,
        }
    }

    /// Step 1: the facts, with everything only PolicyBind may say.
    async fn facts(&self, call: &mut Call<'_>, now: DateTime<Utc>) -> Facts {
        let asked = &call.asked;
        let approved = match &asked.approval_ref {
            Some(reference) => matches!(
                self.approvals
                    .status(reference, call.token, &asked.model, now)
                    .await,
                Ok(ApprovalStatus::Approved)
            ),
            None => false,
        };
        let budgets = call.loaded.set.budgets(call.token);
        Facts {
            request_id: Some(call.request_id.to_string()),
            token: Some(call.token.to_string()),
            model: asked.model.clone(),
            use_case: asked.use_case.clone(),
            data_classification: asked.data_classification,
            namespace: Some(self.settings.namespace.clone()),
            time: now,
            estimated_input_tokens: asked.estimated_input_tokens,
            estimated_output_tokens: asked.estimated_output_tokens,
            usage: self.ledger.usage_shared(call.token, budgets, now).await,
            approved,
            prompt: Some(std::mem::take(&mut call.asked.prompt)),
            labels: std::mem::take(&mut call.asked.labels),
            ..Default::default()
        }
    }

    /// Steps 2 and 3: a forwarding decision is prepared, then reserved.
    async fn admit<P: Plan>(
        self: &Arc<Self>,
        call: &Call<'_>,
        decision: &Decision,
        plan: P,
        now: DateTime<Utc>,
    ) -> Result<Admitted<P::Ready>, Refusal> {
        if !decision.effect.forwards() {
            let mut refusal = Refusal::new(Stage::Decision, decision.code(), &decision.message);
            refusal.effect = decision.effect;
            refusal.codes = decision.codes.clone();
            if decision.effect == Effect::RequireApproval {
                refusal.error_type = "approval_required";
            }
            return Err(refusal);
        }
        let set = &call.loaded.set;
        let (ready, estimate) = plan
            .prepare(decision, set)
            .map_err(|r| after_decision(r, decision))?;
        let Some(estimate) = estimate else {
            return Ok(Admitted {
                ready,
                reservation: None,
            });
        };
        let amount = Amount::new(
            estimate.cost_usd,
            estimate.input_tokens.saturating_add(estimate.output_tokens),
        );
        match self.reserve_all(call.token, set, amount, now).await {
            Ok(ids) => Ok(Admitted {
                ready,
                reservation: Some(Reservation {
                    state: self.clone(),
                    loaded: call.loaded.clone(),
                    token: call.token.to_string(),
                    ids,
                    settled: false,
                    estimate,
                    decided: Decided {
                        request_id: call.request_id.to_string(),
                        effect: decision.effect,
                        subject: decision.facts.subject.clone(),
                        namespace: decision.facts.namespace.clone(),
                        endpoint: call.endpoint,
                    },
                }),
            }),
            Err(refusal) => Err(after_decision(refusal, decision)),
        }
    }

    /// Reserves `amount` with every owner the request is charged to, the
    /// token first ([`PolicySet::charges`]). The first refusal cancels what
    /// was reserved before it and names its scope; a request refused by any
    /// scope consumes nothing.
    async fn reserve_all(
        &self,
        token: &str,
        set: &PolicySet,
        amount: Amount,
        now: DateTime<Utc>,
    ) -> Result<Vec<(ReservationId, String)>, Refusal> {
        let charges = set.charges(token, &self.settings.namespace);
        let mut ids = Vec::with_capacity(charges.len());
        for charge in &charges {
            let limits = TokenLimits {
                rate: charge.rate,
                budgets: &charge.budgets,
            };
            match self
                .reserve_waiting(&charge.owner, limits, amount, now)
                .await
            {
                Ok(id) => ids.push((id, charge.owner.clone())),
                Err(refusal) => {
                    for (id, _) in ids {
                        self.ledger.cancel(id, now);
                    }
                    return Err(self.limited(charge, refusal));
                }
            }
        }
        Ok(ids)
    }

    /// Reserves; when this replica's budget share is short, waits for a grant
    /// up to [`crate::lease::GRANT_WAIT`], then gives up (fail closed).
    async fn reserve_waiting(
        &self,
        token: &str,
        limits: TokenLimits<'_>,
        amount: Amount,
        now: DateTime<Utc>,
    ) -> Result<crate::accounting::ReservationId, LedgerRefusal> {
        let deadline = tokio::time::Instant::now() + crate::lease::GRANT_WAIT;
        loop {
            let granted = self.ledger.grant_changed();
            let notified = granted.as_ref().map(|n| n.notified());
            match self.ledger.reserve_shared(token, limits, amount, now).await {
                Err(LedgerRefusal::AwaitingGrant) => {}
                other => return other,
            }
            let Some(notified) = notified else {
                return Err(LedgerRefusal::LeaseUnavailable);
            };
            // Also wake now and then: a grant may land between two notifications.
            let wake = tokio::time::Instant::now() + std::time::Duration::from_millis(250);
            if tokio::time::timeout_at(wake.min(deadline), notified)
                .await
                .is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return Err(LedgerRefusal::LeaseUnavailable);
            }
        }
    }

    fn limited(&self, charge: &Charge<'_>, refusal: LedgerRefusal) -> Refusal {
        let message = format!("{}: {refusal}", charge.label);
        match refusal {
            LedgerRefusal::RateLimited { retry_after, .. } => {
                self.metrics.rate_limited(&charge.owner);
                let mut r = Refusal::new(Stage::Rate, charge.kind.rate_code(), message);
                r.hint = Some(Box::new(Hint::RetryAfter(retry_after)));
                r
            }
            LedgerRefusal::BudgetExceeded { .. } => {
                Refusal::new(Stage::Budget, charge.kind.budget_code(), message)
            }
            LedgerRefusal::AwaitingGrant | LedgerRefusal::LeaseUnavailable => {
                let mut r = Refusal::new(Stage::Budget, codes::BUDGET_LEASE_UNAVAILABLE, message);
                r.hint = Some(Box::new(Hint::RetryAfter(crate::lease::GRANT_WAIT)));
                r
            }
            LedgerRefusal::StoreUnavailable { .. } => {
                let mut r = Refusal::new(Stage::Budget, codes::BUDGET_STORE_UNAVAILABLE, message);
                r.hint = Some(Box::new(Hint::RetryAfter(std::time::Duration::from_secs(
                    1,
                ))));
                r
            }
        }
    }

    /// Step 4: holds a RequireApproval request; the reference the caller repeats.
    async fn hold(
        &self,
        call: &Call<'_>,
        decision: &Decision,
        approval_ref: Option<&str>,
        now: DateTime<Utc>,
    ) -> Option<String> {
        if !self.approvals.enabled() {
            return None;
        }
        let model = &call.asked.model;
        // A repeat of a request whose approval is still pending keeps its reference.
        if let Some(reference) = approval_ref
            && matches!(
                self.approvals
                    .status(reference, call.token, model, now)
                    .await,
                Ok(ApprovalStatus::Pending)
            )
        {
            return Some(reference.to_string());
        }
        let held = HeldRequest {
            request_id: call.request_id.to_string(),
            // Never derived from caller input (x-request-id), so one caller cannot
            // overwrite another's held request.
            reference_id: self.ids.fresh(),
            token: call.token.to_string(),
            subject: decision.facts.subject.clone(),
            model: model.clone(),
            policy_rule: match (&decision.policy, &decision.rule) {
                (Some(p), Some(r)) => Some(format!("{p}/{r}")),
                _ => None,
            },
            reason: decision.message.clone(),
            namespace: self.settings.namespace.clone(),
        };
        match self.approvals.hold(&held, now).await {
            Ok(reference) => Some(reference),
            Err(e) => {
                warn!("request could not be held for approval: {e}");
                None
            }
        }
    }

    /// Step 5's record: the decision, and the refusal that followed it, if any.
    fn outcome_event<T>(
        &self,
        call: &Call<'_>,
        decision: &Decision,
        prompt: &str,
        outcome: &Result<Admitted<T>, Refusal>,
        now: DateTime<Utc>,
    ) -> AuditEvent {
        let mut event = decision_event(decision, call.request_id, prompt, now, call.endpoint);
        if let Some(reference) = &call.asked.approval_ref {
            event = event.detail("approval", reference.clone());
        }
        match outcome {
            Ok(admitted) => {
                if let Some(r) = &admitted.reservation {
                    event = event
                        .usage(Usage {
                            input_tokens: r.estimate.input_tokens,
                            output_tokens: r.estimate.output_tokens,
                            cost_usd: CostUsd::from_usd(r.estimate.cost_usd),
                        })
                        .detail("usage", "estimated");
                }
            }
            Err(refusal) if refusal.stage == Stage::Decision => {
                if let Some(reference) = refusal.approval() {
                    event = event.detail("approval", reference);
                }
            }
            Err(refusal) => event = refused_after(event, refusal, decision),
        }
        event
    }

    fn count<T>(
        &self,
        decision: &Decision,
        outcome: &Result<Admitted<T>, Refusal>,
        now: DateTime<Utc>,
    ) {
        crate::decisions::record(&self.metrics.summary, decision, outcome.as_ref().err(), now);
        let span = tracing::Span::current();
        span.record("decided", decision.effect.as_str());
        match outcome {
            Ok(_) => {
                span.record("effect", decision.effect.as_str());
                span.record("code", decision.code());
                self.metrics.decision(
                    decision.effect.as_str(),
                    decision.code(),
                    decision.policy.as_deref(),
                );
            }
            Err(refusal) => {
                span.record("effect", refusal.effect.as_str());
                span.record("code", refusal.code.as_str());
                span.record("stage", refusal.stage.as_str());
                let policy = (refusal.stage == Stage::Decision)
                    .then_some(decision.policy.as_deref())
                    .flatten();
                self.metrics
                    .decision(refusal.effect.as_str(), &refusal.code, policy);
            }
        }
    }
}

/// A refusal after a forwarding decision keeps the decision's codes after its own.
fn after_decision(mut refusal: Refusal, decision: &Decision) -> Refusal {
    refusal.codes.extend(decision.codes.iter().cloned());
    refusal
}

/// The audit event of a refusal that followed a decision: effect Deny, the
/// refusal's code first, its stage, and the effect the engine had decided.
fn refused_after(mut event: AuditEvent, refusal: &Refusal, decision: &Decision) -> AuditEvent {
    event.effect = Some(refusal.effect);
    event.codes = refusal.codes.clone();
    event
        .detail("stage", refusal.stage.as_str())
        .detail("decidedEffect", decision.effect.as_str())
}

/// The audit event of a decision: who, what, which policy and rule, codes,
/// fingerprint, the prompt's hash (and the redacted prompt when a rule asks),
/// degrade obligations and the audit-mode result.
pub(crate) fn decision_event(
    decision: &Decision,
    request_id: &str,
    prompt: &str,
    now: DateTime<Utc>,
    endpoint: &str,
) -> AuditEvent {
    let facts = &decision.facts;
    let stage = match decision.stage {
        EngineStage::Token => "token",
        EngineStage::Registry => "registry",
        EngineStage::Policy => "policy",
        EngineStage::Default => "default",
    };
    let mut event = AuditEvent::decision(decision.effect)
        .time(now)
        .request_id(request_id)
        .model(facts.model.clone())
        .namespace(facts.namespace.clone().unwrap_or_default())
        .fingerprint(decision.fingerprint.clone())
        .detail("endpoint", endpoint)
        .detail("stage", stage);
    if let Some(s) = &facts.subject {
        event = event.subject(s.clone());
    }
    if let Some(t) = &facts.token {
        event = event.token_id(t.clone());
    }
    if let (Some(p), Some(r)) = (&decision.policy, &decision.rule) {
        event = event.policy_rule(p.clone(), r.clone());
    }
    for code in &decision.codes {
        event = event.code(code.clone());
    }
    if !prompt.is_empty() {
        event = event.prompt(prompt);
    }
    if decision.obligations.record_redacted_prompt
        && let Some(redact) = &decision.obligations.redact
    {
        event = event.redacted_prompt(detect::redact(
            prompt,
            &decision.findings,
            &redact.entities,
            &redact.replacement,
        ));
    }
    if let Some(model) = &decision.obligations.model {
        event = event.detail("degradedModel", model.clone());
    }
    if let Some(cap) = decision.obligations.max_tokens {
        event = event.detail("maxTokens", cap.to_string());
    }
    if let Some(would) = &decision.would_have {
        event = event
            .detail("wouldHaveEffect", would.effect.as_str())
            .detail(
                "wouldHavePolicy",
                format!("{}/{}", would.policy, would.rule),
            );
    }
    event
}

/// Where the usage a reservation is settled with came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    /// The provider's own usage fields.
    Provider,
    /// No usage reported: the input tokens of the estimate, the output tokens
    /// counted from the answer's text.
    CountedText,
    /// No usage reported and the answer's text could not be read: the whole
    /// estimate reserved (input tokens and the output cap).
    Estimate,
}

impl UsageSource {
    /// Label of `policybind_sidecar_usage_settlements_total` and value of the
    /// settlement record's `usageBasis` detail.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Provider => "provider",
            UsageSource::CountedText => "counted-text",
            UsageSource::Estimate => "estimate",
        }
    }
}

/// What the audit record of an estimated settlement says about the request.
struct Decided {
    request_id: String,
    effect: Effect,
    subject: Option<String>,
    namespace: Option<String>,
    endpoint: &'static str,
}

/// A reservation in the ledger for one admitted request. Released when dropped
/// unless settled: every path out of the request path (upstream error, timeout,
/// panic, client gone before the headers) gives the budget back.
pub struct Reservation {
    state: Arc<AppState>,
    loaded: Arc<Loaded>,
    token: String,
    /// One reservation per owner charged (the token, then AIBudgets), with
    /// the owner; empty once settled or released.
    ids: Vec<(ReservationId, String)>,
    /// Whether [`Reservation::settle`] ran.
    settled: bool,
    pub estimate: Estimate,
    decided: Decided,
}

impl Reservation {
    /// Charges `usage` (priced for the model called). A settlement the
    /// provider did not report is counted by source and recorded in the audit
    /// trail, so that what was charged on an estimate can be told apart.
    pub fn settle(&mut self, usage: crate::providers::Usage, source: UsageSource) {
        // Settled once; a request charged to no owner (a token without any
        // limit) is still counted and, when estimated, recorded.
        if self.settled {
            return;
        }
        self.settled = true;
        let ids = std::mem::take(&mut self.ids);
        let (input_tokens, output_tokens) = (usage.input_tokens, usage.output_tokens);
        let cost = self
            .loaded
            .set
            .pricing(&self.estimate.model, &self.state.settings.namespace)
            .map(|p| p.cost(input_tokens, output_tokens))
            .unwrap_or(0.0);
        let now = Utc::now();
        let actual = Amount::new(cost, input_tokens.saturating_add(output_tokens));
        for (id, _) in ids {
            self.state.ledger.settle(id, actual, now);
        }
        self.state.metrics.settled(source);
        if source != UsageSource::Provider {
            self.record_estimated(usage, cost, source, now);
        }
        self.publish_spend(now);
    }

    /// Reserves `output_tokens` more with every owner charged: a stream that
    /// produced more than its estimate asks to go on. `Err` is the refusal of
    /// the first owner whose budget does not cover it (the stream is cut);
    /// what was added before it is kept until the reservation settles, which
    /// replaces every amount with the actual usage.
    pub fn extend(&mut self, output_tokens: u64) -> Result<(), Refusal> {
        let set = &self.loaded.set;
        let namespace = &self.state.settings.namespace;
        let cost = set
            .pricing(&self.estimate.model, namespace)
            .map(|p| p.cost(0, output_tokens))
            .unwrap_or(0.0);
        let more = Amount::new(cost, output_tokens);
        let now = Utc::now();
        let charges = set.charges(&self.token, namespace);
        for (id, owner) in &self.ids {
            let Some(charge) = charges.iter().find(|c| &c.owner == owner) else {
                continue;
            };
            match self.state.ledger.extend(*id, &charge.budgets, more, now) {
                Ok(()) | Err(LedgerRefusal::AwaitingGrant) => {}
                Err(refusal) => {
                    let refusal = self.state.limited(charge, refusal);
                    self.record_cut(&refusal, now);
                    return Err(refusal);
                }
            }
        }
        self.estimate.output_tokens = self.estimate.output_tokens.saturating_add(output_tokens);
        self.estimate.cost_usd = policybind_crds::common::add_usd(self.estimate.cost_usd, cost);
        Ok(())
    }

    /// One audit record (`stage: stream-cut`, effect Deny, the refusal's
    /// code) for a stream ended because it outgrew what its budgets cover.
    fn record_cut(&self, refusal: &Refusal, now: DateTime<Utc>) {
        let event = self
            .after_decision_event(Effect::Deny, now)
            .code(refusal.code.clone())
            .detail("stage", "stream-cut")
            .detail("decidedEffect", self.decided.effect.as_str())
            .detail(
                "reservedOutputTokens",
                self.estimate.output_tokens.to_string(),
            );
        warn!(code = %refusal.code, "stream cut: {}", refusal.message);
        if let Err(e) = self.state.audit.append(event) {
            warn!("stream cut not recorded: {e}");
        }
    }

    /// A record about this request after its decision: who, which token,
    /// model, namespace, fingerprint and endpoint.
    fn after_decision_event(&self, effect: Effect, now: DateTime<Utc>) -> AuditEvent {
        let decided = &self.decided;
        let mut event = AuditEvent::decision(effect)
            .time(now)
            .request_id(decided.request_id.clone())
            .token_id(self.token.clone())
            .model(self.estimate.model.clone())
            .namespace(decided.namespace.clone().unwrap_or_default())
            .fingerprint(self.loaded.set.fingerprint().to_string())
            .detail("endpoint", decided.endpoint);
        if let Some(subject) = &decided.subject {
            event = event.subject(subject.clone());
        }
        event
    }

    /// One audit record (`stage: settle`, `usage: estimated`) with what was
    /// charged for a request whose answer reported no usage.
    fn record_estimated(
        &self,
        usage: crate::providers::Usage,
        cost_usd: f64,
        source: UsageSource,
        now: DateTime<Utc>,
    ) {
        let event = self
            .after_decision_event(self.decided.effect, now)
            .usage(Usage {
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                cost_usd: CostUsd::from_usd(cost_usd),
            })
            .detail("stage", "settle")
            .detail("usage", "estimated")
            .detail("usageBasis", source.as_str());
        if let Err(e) = self.state.audit.append(event) {
            warn!("estimated settlement not recorded: {e}");
        }
    }

    fn publish_spend(&self, now: DateTime<Utc>) {
        let budgets = self.loaded.set.budgets(&self.token);
        // One series per token and period: only when asked for.
        if budgets.is_empty() || !self.state.metrics.token_labels() {
            return;
        }
        for usage in self.state.ledger.usage(&self.token, budgets, now) {
            let labels = BudgetLabels {
                token: self.token.clone(),
                period: usage.period.as_str().to_string(),
            };
            let metrics = &self.state.metrics;
            metrics
                .budget_spent_usd
                .get_or_create(&labels)
                .set(usage.cost_usd);
            metrics
                .budget_spent_tokens
                .get_or_create(&labels)
                .set(usage.tokens as i64);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let now = Utc::now();
        for (id, _) in std::mem::take(&mut self.ids) {
            self.state.ledger.release(id, now);
        }
    }
}
