//! Deciding a request against a compiled [`PolicySet`].
//!
//! The order is fixed and documented (README, "How a decision is made"):
//! 1. token: unknown, revoked, not yet valid, expired, exhausted, model not
//!    allowed, use case not allowed, classification above the token's maximum,
//!    outside the token's schedule, budget exceeded;
//! 2. registry: unregistered (when required), suspended, not approved,
//!    classification above the model's maximum, use case not approved;
//! 3. policies: the first matching rule in precedence order decides (priority,
//!    then most restrictive effect, then policy id, then rule position). A rule
//!    whose `exclude` holds is skipped and the next one considered. Rules of
//!    Audit-mode policies never decide; the first of them that would have decided
//!    differently is reported as `wouldHave`;
//! 4. no match: the bundle's default effect (Deny) with NO_MATCHING_POLICY.
//!
//! Nothing here reads a clock or does I/O: the same facts and set give the same
//! decision, always.

use chrono::{Datelike, Timelike};
use policybind_crds::{DataClassification, Effect, Enforcement};

use crate::codes;
use crate::compile::{BitSet, CompiledModel, CompiledRule, CompiledToken, PolicySet};
use crate::detect::Findings;
use crate::exclude::ExcludeFacts;
use crate::request::{Decision, Obligations, Request, ResolvedFacts, RuleTrace, Stage, WouldHave};
use crate::{expr, selector};

/// Why a token was refused by [`PolicySet::authenticate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("unknown token")]
    Unknown,
    #[error("token value rotated out")]
    RotatedOut,
}

impl AuthError {
    pub fn code(self) -> &'static str {
        match self {
            AuthError::Missing => codes::TOKEN_MISSING,
            AuthError::Unknown | AuthError::RotatedOut => codes::TOKEN_UNKNOWN,
        }
    }
}

/// Outcome of matching one rule.
pub(crate) enum Check {
    Match,
    Miss(String),
    /// Selected, but the rule's `exclude` skips the request.
    Excluded(String),
    Error(String),
}

/// What is computed once per request and shared by every rule check.
pub(crate) struct Ctx<'a> {
    pub request: &'a Request,
    pub facts: ResolvedFacts,
    pub model: Option<&'a CompiledModel>,
    pub findings: &'a Findings,
    pub entities: Vec<String>,
    pub cel_request: std::cell::OnceCell<cel::Value>,
}

impl PolicySet {
    /// Looks a bearer value up by its SHA-256 and returns the token id. The lookup is
    /// by hash, so timing reveals nothing about the value; the final comparison is
    /// constant-time all the same.
    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<&str, AuthError> {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let value = bearer
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(AuthError::Missing)?;
        let digest: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        let (stored, (index, valid_until)) = self
            .token_by_hash
            .get_key_value(&digest)
            .ok_or(AuthError::Unknown)?;
        if !bool::from(stored.ct_eq(&digest)) {
            return Err(AuthError::Unknown);
        }
        if valid_until.is_some_and(|until| now >= until) {
            return Err(AuthError::RotatedOut);
        }
        Ok(&self.tokens[*index].id)
    }

    /// Rate limit of a token, for the enforcement point's limiter.
    pub fn rate_limit(&self, token_id: &str) -> Option<&policybind_crds::RateLimit> {
        self.token_by_id
            .get(token_id)
            .and_then(|&i| self.tokens[i].rate_limit.as_ref())
    }

    /// Budgets of a token, for the enforcement point's accounting.
    pub fn budgets(&self, token_id: &str) -> &[crate::compile::CompiledBudget] {
        self.token_by_id
            .get(token_id)
            .map(|&i| self.tokens[i].budgets.as_slice())
            .unwrap_or_default()
    }

    /// Whether a token may call a model (for filtering `/v1/models`).
    pub fn token_allows_model(&self, token_id: &str, model: &str) -> bool {
        self.token_by_id
            .get(token_id)
            .is_some_and(|&i| self.tokens[i].allowed_models.is_match(model))
    }

    /// Names of every model and alias a request in `namespace` can call, sorted.
    pub fn model_names(&self, namespace: &str) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .model_by_name
            .iter()
            .filter(|(_, slots)| slots.resolve(namespace).is_some())
            .map(|(name, _)| name.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    /// Pricing of a model as a request in `namespace` resolves it, if registered with one.
    pub fn pricing(&self, model: &str, namespace: &str) -> Option<&policybind_crds::Pricing> {
        self.resolve_model(model, namespace)
            .and_then(|m| m.pricing.as_ref())
    }

    /// The namespace a request is decided in: its own, else the set's (an
    /// enforcement point's), else its token's (offline tools), else `default`.
    pub fn request_namespace<'a>(&'a self, request: &'a Request) -> &'a str {
        request
            .namespace
            .as_deref()
            .or(self.namespace.as_deref())
            .or_else(|| {
                let token = request.token.as_ref()?;
                let &i = self.token_by_id.get(token)?;
                self.tokens[i].namespaces.first().map(String::as_str)
            })
            .unwrap_or("default")
    }

    /// The registration a model name resolves to in `namespace` (own first, then shared).
    pub(crate) fn resolve_model(&self, name: &str, namespace: &str) -> Option<&CompiledModel> {
        self.model_by_name
            .get(name)
            .and_then(|slots| slots.resolve(namespace))
            .map(|i| &self.models[i])
    }

    /// What this set's detectors find in one text: personal data, secrets and
    /// custom entities (see [`crate::detect`]), and PROMPT_INJECTION when some
    /// rule of the set names it (see [`crate::injection`]; the classifier
    /// costs about a hundred times the pattern detectors, so sets that do not
    /// use it do not pay for it). Scan each text once and pass the findings to
    /// [`PolicySet::decide_scanned`] and to redaction.
    pub fn scan(&self, text: &str) -> Findings {
        if text.is_empty() {
            return Findings::none();
        }
        let mut findings = self.detectors.scan(text);
        if self.classify_injection
            && let Some(injection) = crate::injection::builtin().detect(text)
        {
            findings.push(injection);
        }
        Findings::new(findings, text.len())
    }

    /// Whether [`PolicySet::scan`] runs the PROMPT_INJECTION classifier.
    pub fn classifies_injection(&self) -> bool {
        self.classify_injection
    }

    /// Decides a request, scanning `request.prompt` first.
    pub fn decide(&self, request: &Request) -> Decision {
        let findings = self.scan(request.prompt.as_deref().unwrap_or_default());
        self.decide_inner(request, &findings, None)
    }

    /// Decides a request whose text the caller has already scanned with
    /// [`PolicySet::scan`]; `request.prompt` is not scanned again. Decides
    /// exactly as [`PolicySet::decide`] does for the same findings.
    pub fn decide_scanned(&self, request: &Request, findings: &Findings) -> Decision {
        self.decide_inner(request, findings, None)
    }

    /// Decides a request and explains every rule: whether it matched and why not.
    /// Uses no index, so it also cross-checks the indexed path (see the tests).
    pub fn decide_explained(&self, request: &Request) -> (Decision, Vec<RuleTrace>) {
        let findings = self.scan(request.prompt.as_deref().unwrap_or_default());
        let mut trace = vec![];
        let decision = self.decide_inner(request, &findings, Some(&mut trace));
        (decision, trace)
    }

    /// Decides, then adds the detector codes: what the prompt holds is
    /// reported on every decision, whatever decided it.
    fn decide_inner(
        &self,
        request: &Request,
        findings: &Findings,
        trace: Option<&mut Vec<RuleTrace>>,
    ) -> Decision {
        let mut decision = self.decide_stages(request, findings, trace);
        for code in codes::prompt_detector_codes(&findings.entities()) {
            if !decision.codes.iter().any(|c| c == code) {
                decision.codes.push(code.to_string());
            }
        }
        decision
    }

    fn decide_stages(
        &self,
        request: &Request,
        findings: &Findings,
        mut trace: Option<&mut Vec<RuleTrace>>,
    ) -> Decision {
        let token = match &request.token {
            Some(id) => match self.token_by_id.get(id) {
                Some(&i) => Some(&self.tokens[i]),
                None => {
                    let facts = self.resolve(request, None, None);
                    return self.early(
                        facts,
                        Stage::Token,
                        codes::TOKEN_UNKNOWN,
                        format!("token {id} is not known to this policy set"),
                        findings,
                    );
                }
            },
            None => None,
        };
        let model = self.resolve_model(&request.model, self.request_namespace(request));
        let facts = self.resolve(request, token, model);

        if let Some(token) = token
            && let Some((code, message)) = check_token(token, request, &facts)
        {
            return self.early(facts, Stage::Token, code, message, findings);
        }
        if let Some((code, message)) = self.check_registry(model, &facts) {
            return self.early(facts, Stage::Registry, code, message, findings);
        }

        let entities: Vec<String> = findings.entities().into_iter().map(str::to_owned).collect();
        let ctx = Ctx {
            request,
            facts,
            model,
            findings,
            entities,
            cel_request: std::cell::OnceCell::new(),
        };

        let candidates = self.candidates(&ctx, trace.is_some());
        let mut would_have: Option<&CompiledRule> = None;
        let mut decided: Option<(usize, Option<String>)> = None;
        for i in candidates {
            let rule = &self.rules[i];
            let check = if decided.is_some() && trace.is_none() {
                break;
            } else {
                self.check_rule(rule, &ctx)
            };
            let excluded = matches!(check, Check::Excluded(_));
            let (matched, reason, error) = match check {
                Check::Match => (true, "matched".to_string(), None),
                Check::Miss(r) | Check::Excluded(r) => (false, r, None),
                Check::Error(e) => (true, format!("CEL error: {e}"), Some(e)),
            };
            let decides = matched && decided.is_none() && rule.enforcement == Enforcement::Enforce;
            if let Some(t) = trace.as_deref_mut() {
                t.push(RuleTrace {
                    policy: rule.policy.clone(),
                    rule: rule.name.clone(),
                    priority: rule.priority,
                    enforcement: rule.enforcement,
                    action: rule.effect,
                    matched,
                    reason,
                    decided: decides,
                    excluded,
                });
            }
            if matched && decided.is_none() {
                match rule.enforcement {
                    Enforcement::Enforce => decided = Some((i, error)),
                    Enforcement::Audit => {
                        if would_have.is_none() {
                            would_have = Some(rule);
                        }
                    }
                }
            }
        }

        let mut decision = match decided {
            Some((i, Some(error))) => {
                let rule = &self.rules[i];
                self.decision(
                    Effect::Deny,
                    vec![codes::POLICY_EVALUATION_ERROR.to_string()],
                    format!(
                        "rule {} of policy {} could not be evaluated ({error}); denied to fail closed",
                        rule.name, rule.policy
                    ),
                    Some(rule),
                    Stage::Policy,
                    Obligations::default(),
                    &ctx,
                )
            }
            Some((i, None)) => self.rule_decision(&self.rules[i], &ctx),
            None => self.decision(
                self.default_effect,
                vec![codes::NO_MATCHING_POLICY.to_string()],
                format!(
                    "no policy rule matched; the default is {}",
                    self.default_effect
                ),
                None,
                Stage::Default,
                Obligations::default(),
                &ctx,
            ),
        };
        if let Some(audit_rule) = would_have
            && (audit_rule.effect != decision.effect
                || decision.codes.first() != Some(&audit_rule.code))
        {
            decision.would_have = Some(WouldHave {
                effect: audit_rule.effect,
                codes: vec![audit_rule.code.clone()],
                policy: audit_rule.policy.clone(),
                rule: audit_rule.name.clone(),
            });
        }
        decision
    }

    /// Rule numbers that can match, in precedence order, computed word by word from
    /// the team, subject and model bit sets without allocating. Explain mode visits
    /// every rule instead, so that it can say why each one did not match.
    fn candidates<'s>(&'s self, ctx: &Ctx, explain: bool) -> impl Iterator<Item = usize> + 's {
        let index = &self.index;
        let by_team = ctx.facts.team.as_deref().and_then(|t| index.by_team.get(t));
        let by_subject = ctx
            .facts
            .subject
            .as_deref()
            .and_then(|s| index.by_subject.get(s));
        // An unregistered model (allowed when registration is not required) has no
        // precomputed set: its globs are checked rule by rule.
        let by_model = index.by_model.get(&ctx.facts.model);
        (0..index.all.0.len()).flat_map(move |w| {
            let word = if explain {
                index.all.0[w]
            } else {
                (index.team_any.0[w] | by_team.map_or(0, |b| b.0[w]))
                    & (index.subject_any.0[w] | by_subject.map_or(0, |b| b.0[w]))
                    & by_model.map_or(u64::MAX, |b| b.0[w])
            };
            BitSet::bits(word).map(move |bit| w * 64 + bit)
        })
    }

    pub(crate) fn resolve(
        &self,
        request: &Request,
        token: Option<&CompiledToken>,
        model: Option<&CompiledModel>,
    ) -> ResolvedFacts {
        let estimated_tokens = request
            .estimated_input_tokens
            .saturating_add(request.estimated_output_tokens);
        let estimated_cost_usd = request.estimated_cost_usd.unwrap_or_else(|| {
            model
                .and_then(|m| m.pricing.as_ref())
                .map(|p| {
                    p.cost(
                        request.estimated_input_tokens,
                        request.estimated_output_tokens,
                    )
                })
                .unwrap_or(0.0)
        });
        ResolvedFacts {
            token: request.token.clone(),
            subject: request
                .subject
                .clone()
                .or_else(|| token.map(|t| t.subject.clone())),
            team: request
                .team
                .clone()
                .or_else(|| token.map(|t| t.team.clone())),
            model: request.model.clone(),
            model_deployment: model.map(|m| m.id.clone()),
            provider: request
                .provider
                .clone()
                .or_else(|| model.map(|m| m.provider.clone())),
            use_case: request
                .use_case
                .clone()
                .or_else(|| token.and_then(|t| t.default_use_case.clone())),
            data_classification: Some(
                request
                    .data_classification
                    .or_else(|| token.map(|t| t.default_classification))
                    .unwrap_or(DataClassification::Internal),
            ),
            region: request
                .region
                .clone()
                .or_else(|| model.and_then(|m| m.region.clone())),
            namespace: Some(self.request_namespace(request).to_string()),
            risk_level: model.map(|m| m.risk_level),
            estimated_tokens,
            estimated_cost_usd,
        }
    }

    fn check_registry(
        &self,
        model: Option<&CompiledModel>,
        facts: &ResolvedFacts,
    ) -> Option<(&'static str, String)> {
        let Some(model) = model else {
            return self.require_registered_models.then(|| {
                (
                    codes::MODEL_NOT_REGISTERED,
                    format!(
                        "model {:?} is not registered; create a ModelDeployment for it",
                        facts.model
                    ),
                )
            });
        };
        if model.suspended {
            return Some((
                codes::MODEL_SUSPENDED,
                format!("model deployment {} is suspended", model.id),
            ));
        }
        if !model.approval.usable() {
            return Some((
                codes::MODEL_NOT_APPROVED,
                format!(
                    "model deployment {} (risk {}) is {}; it needs an approved ApprovalRequest",
                    model.id,
                    model.risk_level.as_str(),
                    model.approval.as_str()
                ),
            ));
        }
        let classification = facts
            .data_classification
            .unwrap_or(DataClassification::Internal);
        if classification > model.max_classification {
            return Some((
                codes::MODEL_DATA_CLASSIFICATION_EXCEEDED,
                format!(
                    "{} data may not be sent to {} (at most {})",
                    classification.as_str(),
                    model.id,
                    model.max_classification.as_str()
                ),
            ));
        }
        if !model.use_cases.is_empty()
            && !facts
                .use_case
                .as_ref()
                .is_some_and(|u| model.use_cases.contains(u))
        {
            return Some((
                codes::MODEL_USE_CASE_NOT_APPROVED,
                format!(
                    "use case {:?} is not approved for {} (approved: {})",
                    facts.use_case.as_deref().unwrap_or(""),
                    model.id,
                    model.use_cases.join(", ")
                ),
            ));
        }
        None
    }

    pub(crate) fn check_rule(&self, rule: &CompiledRule, ctx: &Ctx) -> Check {
        let f = &ctx.facts;
        let namespace = f.namespace.as_deref().unwrap_or("default");
        // Where the policy applies.
        if let Some(ns) = &rule.policy_namespace
            && ns != namespace
        {
            return Check::Miss(format!("policy applies to namespace {ns}, not {namespace}"));
        }
        if let Some(globs) = &rule.policy_namespaces
            && !globs.is_match(namespace)
        {
            return Check::Miss(format!("policy does not select namespace {namespace}"));
        }
        if let Some(sel) = &rule.policy_selector {
            let empty = Default::default();
            let labels = self.namespace_labels.get(namespace).unwrap_or(&empty);
            if !selector::matches(sel, labels) {
                return Check::Miss(format!("namespaceSelector does not select {namespace}"));
            }
        }
        // Typed selectors.
        if let Some(miss) = miss_list("team", &rule.teams, f.team.as_deref()) {
            return Check::Miss(miss);
        }
        if let Some(miss) = miss_list("subject", &rule.subjects, f.subject.as_deref()) {
            return Check::Miss(miss);
        }
        if let Some(globs) = &rule.models
            && !globs.is_match(&f.model)
        {
            return Check::Miss(format!(
                "model {} not in [{}]",
                f.model,
                rule.model_patterns.join(", ")
            ));
        }
        if let Some(miss) = miss_list("provider", &rule.providers, f.provider.as_deref()) {
            return Check::Miss(miss);
        }
        if let Some(miss) = miss_list("use case", &rule.use_cases, f.use_case.as_deref()) {
            return Check::Miss(miss);
        }
        let classification = f
            .data_classification
            .unwrap_or(DataClassification::Internal);
        if !rule.classifications.is_empty() && !rule.classifications.contains(&classification) {
            return Check::Miss(format!(
                "data classification {} not in [{}]",
                classification.as_str(),
                rule.classifications
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(min) = rule.min_classification
            && classification < min
        {
            return Check::Miss(format!(
                "data classification {} below {}",
                classification.as_str(),
                min.as_str()
            ));
        }
        if !rule.risk_levels.is_empty() || rule.min_risk.is_some() {
            let Some(risk) = f.risk_level else {
                return Check::Miss("model has no risk level (unregistered)".into());
            };
            if !rule.risk_levels.is_empty() && !rule.risk_levels.contains(&risk) {
                return Check::Miss(format!("risk level {} not listed", risk.as_str()));
            }
            if rule.min_risk.is_some_and(|min| risk < min) {
                return Check::Miss(format!("risk level {} below the minimum", risk.as_str()));
            }
        }
        if let Some(miss) = miss_list("region", &rule.regions, f.region.as_deref()) {
            return Check::Miss(miss);
        }
        if let Some(globs) = &rule.namespaces
            && !globs.is_match(namespace)
        {
            return Check::Miss(format!(
                "namespace {namespace} not in [{}]",
                rule.namespace_patterns.join(", ")
            ));
        }
        // Conditions.
        if let Some(s) = &rule.schedule
            && !s.contains(ctx.request.time)
        {
            return Check::Miss("request time is outside the rule's schedule".into());
        }
        if let Some(s) = &rule.outside_schedule
            && s.contains(ctx.request.time)
        {
            return Check::Miss(
                "request time is inside the window (rule applies outside it)".into(),
            );
        }
        if let Some(limit) = rule.cost_above
            && f.estimated_cost_usd <= limit
        {
            return Check::Miss(format!(
                "estimated cost {:.4} USD is not above {limit}",
                f.estimated_cost_usd
            ));
        }
        if let Some(limit) = rule.tokens_above
            && f.estimated_tokens <= limit
        {
            return Check::Miss(format!(
                "estimated tokens {} not above {limit}",
                f.estimated_tokens
            ));
        }
        if !rule.detected.is_empty() && !rule.detected.iter().any(|e| ctx.entities.contains(e)) {
            return Check::Miss(format!(
                "no {} found in the prompt",
                rule.detected.join("/")
            ));
        }
        if let Some(want) = rule.model_approved {
            let approved = ctx.model.is_some_and(|m| m.approval.usable());
            if approved != want {
                return Check::Miss(format!("model approved is {approved}, rule wants {want}"));
            }
        }
        // Exceptions before `when`: an excluded request never meets a rule's CEL
        // (nor a run-time error of it).
        if let Some(exclude) = &rule.exclude
            && let Some(why) = exclude.excludes(&ExcludeFacts {
                team: f.team.as_deref(),
                subject: f.subject.as_deref(),
                namespace,
                labels: &ctx.request.labels,
            })
        {
            return Check::Excluded(why);
        }
        if let Some(when) = &rule.when {
            let value = ctx.cel_request.get_or_init(|| {
                let local = ctx.request.time;
                expr::request_value(
                    f,
                    local.hour(),
                    weekday_name(local.weekday().num_days_from_monday()),
                    &ctx.entities,
                    &ctx.request.labels,
                )
            });
            match when.evaluate(&self.cel, value) {
                Ok(true) => {}
                Ok(false) => return Check::Miss(format!("when `{}` is false", when.source)),
                Err(e) => return Check::Error(e),
            }
        }
        Check::Match
    }

    fn rule_decision(&self, rule: &CompiledRule, ctx: &Ctx) -> Decision {
        let mut codes = vec![rule.code.clone()];
        let mut effect = rule.effect;
        let mut message = rule.message.clone();
        if effect == Effect::RequireApproval && ctx.request.approved {
            effect = Effect::Allow;
            codes.insert(0, codes::APPROVAL_GRANTED.to_string());
            message = format!("approved request let through ({message})");
        }
        self.decision(
            effect,
            codes,
            message,
            Some(rule),
            Stage::Policy,
            rule.obligations.clone(),
            ctx,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn decision(
        &self,
        effect: Effect,
        codes: Vec<String>,
        message: String,
        rule: Option<&CompiledRule>,
        stage: Stage,
        mut obligations: Obligations,
        ctx: &Ctx,
    ) -> Decision {
        if effect != Effect::Redact {
            obligations.redact = None;
        }
        if effect != Effect::Degrade {
            obligations.model = None;
            obligations.max_tokens = None;
        }
        Decision {
            effect,
            codes,
            message,
            policy: rule.map(|r| r.policy.clone()),
            rule: rule.map(|r| r.name.clone()),
            stage,
            obligations,
            findings: ctx.findings.as_slice().to_vec(),
            would_have: None,
            facts: ctx.facts.clone(),
            fingerprint: self.fingerprint.clone(),
        }
    }

    fn early(
        &self,
        facts: ResolvedFacts,
        stage: Stage,
        code: &str,
        message: String,
        findings: &Findings,
    ) -> Decision {
        Decision {
            effect: Effect::Deny,
            codes: vec![code.to_string()],
            message,
            policy: None,
            rule: None,
            stage,
            obligations: Obligations::default(),
            findings: findings.as_slice().to_vec(),
            would_have: None,
            facts,
            fingerprint: self.fingerprint.clone(),
        }
    }
}

fn miss_list(what: &str, list: &[String], value: Option<&str>) -> Option<String> {
    if list.is_empty() || value.is_some_and(|v| list.iter().any(|x| x == v)) {
        return None;
    }
    Some(format!(
        "{what} {} not in [{}]",
        value.unwrap_or("(none)"),
        list.join(", ")
    ))
}

fn weekday_name(index: u32) -> &'static str {
    ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][index as usize % 7]
}

/// Token checks, in the documented order.
fn check_token(
    token: &CompiledToken,
    request: &Request,
    facts: &ResolvedFacts,
) -> Option<(&'static str, String)> {
    let now = request.time;
    if token.revoked {
        return Some((
            codes::TOKEN_REVOKED,
            format!("token {} was revoked", token.id),
        ));
    }
    if token.not_before.is_some_and(|nb| now < nb) {
        return Some((
            codes::TOKEN_NOT_YET_VALID,
            format!(
                "token {} is not valid before {}",
                token.id,
                token.not_before.unwrap_or_default()
            ),
        ));
    }
    if let Some(expires) = token.expires_at
        && now >= expires
    {
        return Some((
            codes::TOKEN_EXPIRED,
            format!("token {} expired at {expires}", token.id),
        ));
    }
    if let Some(namespace) = facts.namespace.as_deref()
        && !token.namespaces.iter().any(|n| n == namespace)
    {
        return Some((
            codes::TOKEN_NAMESPACE_NOT_ALLOWED,
            format!(
                "token {} is not valid in namespace {namespace} (valid in: {})",
                token.id,
                token.namespaces.join(", ")
            ),
        ));
    }
    // A model priced at zero stays usable when only cost limits are spent
    // (self-hosted, local); a policy can still deny it.
    let free = facts.estimated_cost_usd <= 0.0;
    if token.exhausted && !(token.exhausted_cost_only && free) {
        return Some((
            codes::BUDGET_EXCEEDED,
            format!("token {} has used up its budget for this period", token.id),
        ));
    }
    if !token.allowed_models.is_match(&facts.model) {
        return Some((
            codes::TOKEN_MODEL_NOT_ALLOWED,
            format!("token {} may not call model {}", token.id, facts.model),
        ));
    }
    if !token.allowed_use_cases.is_empty()
        && !facts
            .use_case
            .as_ref()
            .is_some_and(|u| token.allowed_use_cases.contains(u))
    {
        return Some((
            codes::USE_CASE_NOT_ALLOWED,
            format!(
                "use case {:?} is not allowed for token {} (allowed: {})",
                facts.use_case.as_deref().unwrap_or(""),
                token.id,
                token.allowed_use_cases.join(", ")
            ),
        ));
    }
    let classification = facts
        .data_classification
        .unwrap_or(DataClassification::Internal);
    if classification > token.max_classification {
        return Some((
            codes::DATA_CLASSIFICATION_EXCEEDED,
            format!(
                "token {} may send at most {} data, not {}",
                token.id,
                token.max_classification.as_str(),
                classification.as_str()
            ),
        ));
    }
    if let Some(schedule) = &token.schedule
        && !schedule.contains(now)
    {
        return Some((
            codes::OUTSIDE_SCHEDULE,
            format!("token {} may not be used at this time", token.id),
        ));
    }
    for budget in &token.budgets {
        let used = request.usage.iter().find(|u| u.period == budget.period);
        let (spent_cost, spent_tokens) = used.map(|u| (u.cost_usd, u.tokens)).unwrap_or((0.0, 0));
        let over_cost = budget
            .max_cost_usd
            .is_some_and(|max| !free && spent_cost + facts.estimated_cost_usd > max);
        let over_tokens = budget
            .max_tokens
            .is_some_and(|max| spent_tokens.saturating_add(facts.estimated_tokens) > max);
        if over_cost || over_tokens {
            let start = budget.counting_start(now);
            let window = if budget.rolling { "rolling " } else { "" };
            return Some((
                codes::BUDGET_EXCEEDED,
                format!(
                    "token {} would exceed its {window}{} budget (spend since {start})",
                    token.id,
                    budget.period.as_str()
                ),
            ));
        }
    }
    None
}
