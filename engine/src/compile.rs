//! Compiling a [`Bundle`] into an immutable, indexed [`PolicySet`].
//!
//! Compile once, decide many. Rules from every policy are sorted once into
//! precedence order (priority descending, then the most restrictive effect, then
//! policy id, then position in the policy), so deciding is "the first rule in
//! this order that matches". Rules are numbered in that order and indexed by team,
//! subject and model into bit sets; a decision ANDs three bit sets and visits only
//! rules that can match.
//!
//! Every problem found is reported, each naming the resource, the rule and the
//! field ([`CompileError`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use globset::GlobSet;
use policybind_crds::ai_policy::{CustomDetectorSpec, RuleTarget};
use policybind_crds::model_deployment::ApprovalState;
use policybind_crds::{
    DataClassification, Effect, Enforcement, PolicyRule, RateLimit, RiskLevel, Schedule,
};

use crate::bundle::{Bundle, BundleModel, BundlePolicy, BundleToken, PolicyKind};
use crate::codes;
use crate::detect::{
    BUILTIN_ENTITIES, CustomDetector, DEFAULT_REDACTION, Detectors, PROMPT_INJECTION, redactable,
};
use crate::exclude::CompiledExclude;
use crate::expr::{self, WhenExpr};
use crate::request::{Obligations, RedactObligation};
use crate::schedule::{CompiledSchedule, parse_time_zone};
use crate::selector;

/// One problem found while compiling, located precisely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}{}: {field}: {reason}", rule.as_ref().map(|r| format!(" rule {r:?}")).unwrap_or_default())]
pub struct CompileError {
    /// Kind and id, e.g. `AIPolicy team-a/chat-rules`.
    pub resource: String,
    /// Rule name, when the problem is in a rule.
    pub rule: Option<String>,
    /// JSON path of the field, e.g. `spec.rules[2].when`.
    pub field: String,
    pub reason: String,
}

/// Every problem found in one compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct CompileErrors(pub Vec<CompileError>);

/// A compiled, immutable policy set. Cheap to share behind an `Arc`.
pub struct PolicySet {
    pub(crate) fingerprint: String,
    pub(crate) namespace: Option<String>,
    pub(crate) default_effect: Effect,
    pub(crate) require_registered_models: bool,
    pub(crate) rules: Vec<CompiledRule>,
    /// Rules on responses, in precedence order (not indexed: a response is
    /// judged against the few rules that act on responses).
    pub(crate) output_rules: Vec<CompiledRule>,
    pub(crate) index: RuleIndex,
    pub(crate) models: Vec<CompiledModel>,
    pub(crate) model_by_name: HashMap<String, ModelSlots>,
    pub(crate) tokens: Vec<CompiledToken>,
    pub(crate) token_by_id: HashMap<String, usize>,
    pub(crate) token_by_hash: HashMap<[u8; 32], (usize, Option<DateTime<Utc>>)>,
    /// AIBudgets, in namespace and name order.
    pub(crate) scopes: Vec<crate::charges::CompiledScope>,
    pub(crate) detectors: Detectors,
    /// Whether some rule names PROMPT_INJECTION: only then does a scan run
    /// the classifier (see [`crate::injection`]), which costs far more than
    /// the pattern detectors.
    pub(crate) classify_injection: bool,
    pub(crate) cel: Arc<cel::Env>,
    pub(crate) namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    pub(crate) policy_count: usize,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("fingerprint", &self.fingerprint)
            .field("rules", &self.rules.len())
            .field("models", &self.models.len())
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

pub(crate) struct CompiledRule {
    pub policy: String,
    pub policy_namespace: Option<String>,
    pub policy_namespaces: Option<GlobSet>,
    pub policy_selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    pub name: String,
    pub priority: i32,
    pub enforcement: Enforcement,
    pub effect: Effect,
    pub code: String,
    pub message: String,
    pub teams: Vec<String>,
    pub subjects: Vec<String>,
    pub models: Option<GlobSet>,
    pub model_patterns: Vec<String>,
    pub providers: Vec<String>,
    pub use_cases: Vec<String>,
    pub classifications: Vec<DataClassification>,
    pub min_classification: Option<DataClassification>,
    pub risk_levels: Vec<RiskLevel>,
    pub min_risk: Option<RiskLevel>,
    pub regions: Vec<String>,
    pub namespaces: Option<GlobSet>,
    pub namespace_patterns: Vec<String>,
    pub exclude: Option<CompiledExclude>,
    pub when: Option<WhenExpr>,
    pub schedule: Option<CompiledSchedule>,
    pub outside_schedule: Option<CompiledSchedule>,
    pub cost_above: Option<f64>,
    pub tokens_above: Option<u64>,
    pub detected: Vec<String>,
    pub model_approved: Option<bool>,
    pub obligations: Obligations,
}

/// The registrations one model name resolves to: at most one per namespace, and
/// at most one shared cluster-wide (see [`crate::scope`]).
#[derive(Debug, Default, Clone)]
pub(crate) struct ModelSlots {
    pub shared: Option<usize>,
    pub by_namespace: Vec<(String, usize)>,
}

impl ModelSlots {
    /// The registration a request in `namespace` gets: its own, else the shared one.
    pub fn resolve(&self, namespace: &str) -> Option<usize> {
        self.by_namespace
            .iter()
            .find(|(ns, _)| ns == namespace)
            .map(|(_, i)| *i)
            .or(self.shared)
    }
}

pub(crate) struct CompiledModel {
    pub id: String,
    /// Namespace of the ModelDeployment.
    pub namespace: String,
    pub provider: String,
    pub region: Option<String>,
    pub risk_level: RiskLevel,
    pub approval: ApprovalState,
    pub suspended: bool,
    pub max_classification: DataClassification,
    pub use_cases: Vec<String>,
    pub pricing: Option<policybind_crds::Pricing>,
    pub endpoint: Option<String>,
    pub credentials: Option<policybind_crds::SecretKeyRef>,
}

pub(crate) struct CompiledToken {
    pub id: String,
    /// Namespaces whose enforcement points accept the token (its own first).
    pub namespaces: Vec<String>,
    pub subject: String,
    pub team: String,
    /// The AccessToken's labels (AIBudget scopes).
    pub labels: BTreeMap<String, String>,
    pub allowed_models: GlobSet,
    pub allowed_use_cases: Vec<String>,
    pub default_use_case: Option<String>,
    pub max_classification: DataClassification,
    pub default_classification: DataClassification,
    pub budgets: Vec<CompiledBudget>,
    pub rate_limit: Option<RateLimit>,
    pub schedule: Option<CompiledSchedule>,
    pub not_before: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
    pub exhausted: bool,
    /// [`crate::bundle::BundleToken::exhausted_cost_only`].
    pub exhausted_cost_only: bool,
}

/// A budget with its time zone resolved.
#[derive(Debug, Clone)]
pub struct CompiledBudget {
    pub period: policybind_crds::BudgetPeriod,
    pub max_cost_usd: Option<f64>,
    pub max_tokens: Option<u64>,
    pub tz: Tz,
    /// `window: Rolling` ([`policybind_crds::BudgetWindow`]).
    pub rolling: bool,
}

impl CompiledBudget {
    /// Start of what spend is tallied under now: the calendar period, or the
    /// current bucket of a rolling window ([`crate::schedule::tally_start`]).
    pub fn tally_start(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        crate::schedule::tally_start(self.period, self.tz, self.rolling, now)
    }

    /// Earliest tally start that still counts now
    /// ([`crate::schedule::counting_start`]).
    pub fn counting_start(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        crate::schedule::counting_start(self.period, self.tz, self.rolling, now)
    }

    /// When the current tally ends ([`crate::schedule::tally_end`]).
    pub fn tally_end(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        crate::schedule::tally_end(self.period, self.tz, self.rolling, now)
    }
}

/// Bit sets of rule numbers, one per value of each indexed dimension.
#[derive(Default)]
pub(crate) struct RuleIndex {
    pub all: BitSet,
    pub team_any: BitSet,
    pub by_team: HashMap<String, BitSet>,
    pub subject_any: BitSet,
    pub by_subject: HashMap<String, BitSet>,
    /// For every registered model name and alias: rules whose model globs match it
    /// or that name no model.
    pub by_model: HashMap<String, BitSet>,
    pub model_any: BitSet,
}

/// A fixed-size bit set over rule numbers.
#[derive(Clone, Default, Debug, PartialEq)]
pub(crate) struct BitSet(pub Vec<u64>);

impl BitSet {
    pub fn new(words: usize) -> Self {
        BitSet(vec![0; words])
    }
    pub fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    /// Positions of the set bits of one word, ascending.
    pub fn bits(mut word: u64) -> impl Iterator<Item = usize> {
        std::iter::from_fn(move || {
            if word == 0 {
                return None;
            }
            let t = word.trailing_zeros() as usize;
            word &= word - 1;
            Some(t)
        })
    }
}

pub(crate) struct Errors {
    pub(crate) list: Vec<CompileError>,
}

impl Errors {
    pub(crate) fn push(
        &mut self,
        resource: &str,
        rule: Option<&str>,
        field: String,
        reason: impl Into<String>,
    ) {
        self.list.push(CompileError {
            resource: resource.to_string(),
            rule: rule.map(str::to_string),
            field,
            reason: reason.into(),
        });
    }
}

fn policy_resource(p: &BundlePolicy) -> String {
    match p.kind {
        PolicyKind::AIPolicy => format!("AIPolicy {}", p.id()),
        PolicyKind::ClusterAIPolicy => format!("ClusterAIPolicy {}", p.id()),
    }
}

/// Precedence order: priority descending, then the most restrictive effect,
/// then policy id. `sort_by` is stable, so rules of one policy keep their
/// written order.
fn sort_by_precedence(rules: &mut [CompiledRule]) {
    rules.sort_by(|a: &CompiledRule, b: &CompiledRule| {
        b.priority
            .cmp(&a.priority)
            .then(b.effect.restrictiveness().cmp(&a.effect.restrictiveness()))
            .then(a.policy.cmp(&b.policy))
    });
}

fn default_code(target: RuleTarget, effect: Effect) -> &'static str {
    if target == RuleTarget::Response {
        return match effect {
            Effect::Redact => codes::RESPONSE_REDACTED,
            _ => codes::RESPONSE_BLOCKED,
        };
    }
    match effect {
        Effect::Allow => codes::POLICY_ALLOW,
        Effect::Deny => codes::POLICY_DENY,
        Effect::Redact => codes::PII_REDACTED,
        Effect::RequireApproval => codes::APPROVAL_REQUIRED,
        Effect::Degrade => codes::POLICY_DEGRADE,
    }
}

impl PolicySet {
    /// Compiles a bundle. Returns every problem found, not just the first.
    pub fn compile(bundle: &Bundle) -> Result<PolicySet, CompileErrors> {
        let mut errors = Errors { list: vec![] };
        let cel = expr::env();

        // Detectors: built-ins plus every policy's custom ones; a name must mean one
        // pattern across the set, because findings are reported by name.
        let mut custom: Vec<CustomDetector> = vec![];
        let mut custom_owner: HashMap<String, (String, String)> = HashMap::new();
        for policy in &bundle.policies {
            let resource = policy_resource(policy);
            for (i, d) in policy.custom_detectors.iter().enumerate() {
                if BUILTIN_ENTITIES.contains(&d.name.as_str()) {
                    errors.push(
                        &resource,
                        None,
                        format!("spec.customDetectors[{i}].name"),
                        format!("{} is a built-in entity; choose another name", d.name),
                    );
                    continue;
                }
                match custom_owner.get(&d.name) {
                    Some((owner, pattern)) if pattern != &d.pattern => errors.push(
                        &resource,
                        None,
                        format!("spec.customDetectors[{i}].name"),
                        format!(
                            "detector {} is already defined with another pattern by {owner}",
                            d.name
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        if let Err(e) = Detectors::compile(&[to_custom(d)]) {
                            errors.push(
                                &resource,
                                None,
                                format!("spec.customDetectors[{i}].pattern"),
                                e.to_string(),
                            );
                            continue;
                        }
                        custom_owner.insert(d.name.clone(), (resource.clone(), d.pattern.clone()));
                        custom.push(to_custom(d));
                    }
                }
            }
        }
        // Each custom pattern was checked alone above, so that its error names its
        // policy; the combined automaton can still fail (e.g. its total size). Then the
        // set must not compile: falling back to the built-ins would silently switch
        // off every rule that relies on a custom detector.
        let detectors = match Detectors::compile(&custom) {
            Ok(d) => d,
            Err(e) => {
                errors.push(
                    "custom detectors",
                    None,
                    "spec.customDetectors".into(),
                    format!("the policies' detectors do not compile together: {e}"),
                );
                Detectors::builtin()
            }
        };
        let known_entities: HashSet<&str> = BUILTIN_ENTITIES
            .iter()
            .copied()
            .chain(custom.iter().map(|c| c.name.as_str()))
            .collect();

        // Rules: those on requests, and those on responses (see `output`).
        let mut rules = vec![];
        let mut output_rules = vec![];
        for policy in &bundle.policies {
            let mut compiled = vec![];
            compile_policy(policy, &cel, &known_entities, &mut compiled, &mut errors);
            for (rule, target) in policy.rules.iter().zip(compiled) {
                match rule.phase {
                    RuleTarget::Request => rules.push(target),
                    RuleTarget::Response => output_rules.push(target),
                }
            }
        }
        sort_by_precedence(&mut rules);
        sort_by_precedence(&mut output_rules);
        find_conflicts(bundle, &mut errors);

        // Models: a name is unique within a namespace, and among shared registrations.
        let mut models = vec![];
        let mut model_by_name: HashMap<String, ModelSlots> = HashMap::new();
        for model in &bundle.models {
            let id = model.id();
            let resource = format!("ModelDeployment {id}");
            let index = models.len();
            let shared = model.spec.scope == policybind_crds::model_deployment::ModelScope::Cluster;
            for name in crate::scope::model_names(model) {
                let slots = model_by_name.entry(name.to_string()).or_default();
                let clash = slots
                    .by_namespace
                    .iter()
                    .find(|(ns, _)| *ns == model.namespace)
                    .map(|(_, i)| *i)
                    .or(if shared { slots.shared } else { None });
                if let Some(other) = clash {
                    let other: &CompiledModel = &models[other];
                    let place = if other.namespace == model.namespace {
                        format!("in namespace {}", model.namespace)
                    } else {
                        "cluster-wide (scope Cluster)".to_string()
                    };
                    errors.push(
                        &resource,
                        None,
                        "spec.model".into(),
                        format!(
                            "model name {name:?} is already registered {place} by {}",
                            other.id
                        ),
                    );
                    continue;
                }
                slots.by_namespace.push((model.namespace.clone(), index));
                if shared {
                    slots.shared = Some(index);
                }
            }
            check_pricing(model, &resource, &mut errors);
            models.push(compile_model(model));
        }

        // Tokens.
        let mut tokens = vec![];
        let mut token_by_id = HashMap::new();
        let mut token_by_hash = HashMap::new();
        // Most tokens share a few allowed-model lists; build each matcher once.
        let mut globs: HashMap<Vec<String>, GlobSet> = HashMap::new();
        for token in &bundle.tokens {
            let resource = format!("AccessToken {}", token.id());
            let Some(compiled) = compile_token(token, &resource, &mut globs, &mut errors) else {
                continue;
            };
            for (i, h) in token.hashes.iter().enumerate() {
                match decode_hash(&h.sha256) {
                    Some(bytes) => {
                        token_by_hash.insert(bytes, (tokens.len(), h.valid_until));
                    }
                    None => {
                        errors.push(&resource, None, format!("hashes[{i}]"), "not a hex SHA-256")
                    }
                }
            }
            token_by_id.insert(compiled.id.clone(), tokens.len());
            tokens.push(compiled);
        }
        let scopes = crate::charges::compile_scopes(&bundle.budgets, &mut errors);

        if !errors.list.is_empty() {
            return Err(CompileErrors(errors.list));
        }

        let index = build_index(&rules, &model_by_name);
        let classify_injection = rules.iter().chain(&output_rules).any(|r| {
            r.detected.iter().any(|e| e == PROMPT_INJECTION)
                || r.when
                    .as_ref()
                    .is_some_and(|w| w.source.contains(PROMPT_INJECTION))
        });
        Ok(PolicySet {
            fingerprint: bundle.fingerprint(),
            namespace: bundle.namespace.clone(),
            default_effect: bundle.default_effect,
            require_registered_models: bundle.require_registered_models,
            policy_count: bundle.policies.len(),
            rules,
            output_rules,
            index,
            models,
            model_by_name,
            tokens,
            token_by_id,
            token_by_hash,
            scopes,
            detectors,
            classify_injection,
            cel,
            namespace_labels: bundle.namespace_labels.clone(),
        })
    }

    /// SHA-256 fingerprint of the bundle this set was compiled from.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Number of rules, of policies, of models and of tokens.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        (
            self.rules.len(),
            self.policy_count,
            self.models.len(),
            self.tokens.len(),
        )
    }

    /// The detectors of this set (built-ins plus the policies' custom ones).
    pub fn detectors(&self) -> &Detectors {
        &self.detectors
    }
}

fn to_custom(d: &CustomDetectorSpec) -> CustomDetector {
    CustomDetector {
        name: d.name.clone(),
        pattern: d.pattern.clone(),
    }
}

fn decode_hash(hex_str: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_str.strip_prefix("sha256:").unwrap_or(hex_str)).ok()?;
    bytes.try_into().ok()
}

fn compile_schedule(
    schedule: &Schedule,
    errors: &mut Errors,
    resource: &str,
    rule: Option<&str>,
    field: String,
) -> Option<CompiledSchedule> {
    match CompiledSchedule::compile(schedule) {
        Ok(s) => Some(s),
        Err(e) => {
            errors.push(resource, rule, field, e);
            None
        }
    }
}

fn compile_policy(
    policy: &BundlePolicy,
    cel: &Arc<cel::Env>,
    known_entities: &HashSet<&str>,
    out: &mut Vec<CompiledRule>,
    errors: &mut Errors,
) {
    let resource = policy_resource(policy);
    let id = policy.id();
    let policy_namespaces = if policy.namespaces.is_empty() {
        None
    } else {
        match selector::glob_set(&policy.namespaces) {
            Ok(g) => Some(g),
            Err(e) => {
                errors.push(&resource, None, "spec.namespaces".into(), e);
                None
            }
        }
    };
    if let Some(sel) = &policy.namespace_selector
        && let Err(e) = selector::validate(sel)
    {
        errors.push(&resource, None, "spec.namespaceSelector".into(), e);
    }
    if policy.rules.is_empty() {
        errors.push(
            &resource,
            None,
            "spec.rules".into(),
            "a policy needs at least one rule",
        );
    }
    let mut names = HashSet::new();
    for (i, rule) in policy.rules.iter().enumerate() {
        let at = |f: &str| format!("spec.rules[{i}]{f}");
        let rname = Some(rule.name.as_str());
        if !names.insert(rule.name.as_str()) {
            errors.push(
                &resource,
                rname,
                at(".name"),
                "duplicate rule name in this policy",
            );
        }
        let m = &rule.match_;
        let models = if m.models.is_empty() {
            None
        } else {
            match selector::glob_set(&m.models) {
                Ok(g) => Some(g),
                Err(e) => {
                    errors.push(&resource, rname, at(".match.models"), e);
                    None
                }
            }
        };
        let namespaces = if m.namespaces.is_empty() {
            None
        } else {
            match selector::glob_set(&m.namespaces) {
                Ok(g) => Some(g),
                Err(e) => {
                    errors.push(&resource, rname, at(".match.namespaces"), e);
                    None
                }
            }
        };
        let exclude = rule.exclude.as_ref().and_then(|spec| {
            CompiledExclude::compile(spec)
                .map_err(|list| {
                    for (field, reason) in list {
                        errors.push(&resource, rname, at(&format!(".exclude{field}")), reason);
                    }
                })
                .ok()
        });
        let when = rule
            .when
            .as_deref()
            .and_then(|src| match WhenExpr::compile(cel, src) {
                Ok(w) => Some(w),
                Err(e) => {
                    errors.push(&resource, rname, at(".when"), e);
                    None
                }
            });
        let c = &rule.conditions;
        let schedule = c.schedule.as_ref().and_then(|s| {
            compile_schedule(s, errors, &resource, rname, at(".conditions.schedule"))
        });
        let outside_schedule = c.outside_schedule.as_ref().and_then(|s| {
            compile_schedule(
                s,
                errors,
                &resource,
                rname,
                at(".conditions.outsideSchedule"),
            )
        });
        for (j, entity) in c.detected.iter().enumerate() {
            if !known_entities.contains(entity.as_str()) {
                errors.push(
                    &resource,
                    rname,
                    at(&format!(".conditions.detected[{j}]")),
                    format!(
                        "unknown entity {entity:?}: use a built-in ({}) or a customDetectors name",
                        BUILTIN_ENTITIES.join(", ")
                    ),
                );
            }
        }
        if let Some(v) = c.estimated_cost_above_usd
            && !(v >= 0.0 && v.is_finite())
        {
            errors.push(
                &resource,
                rname,
                at(".conditions.estimatedCostAboveUsd"),
                "must be a non-negative number",
            );
        }
        if rule.phase == RuleTarget::Response {
            check_response_rule(rule, &resource, i, errors);
        }
        let obligations = rule_obligations(rule, &resource, i, known_entities, errors);
        out.push(CompiledRule {
            policy: id.clone(),
            policy_namespace: policy.namespace.clone(),
            policy_namespaces: policy_namespaces.clone(),
            policy_selector: policy.namespace_selector.clone(),
            name: rule.name.clone(),
            priority: policy.priority,
            enforcement: policy.enforcement,
            effect: rule.action,
            code: rule
                .code
                .clone()
                .unwrap_or_else(|| default_code(rule.phase, rule.action).to_string()),
            message: rule
                .message
                .clone()
                .unwrap_or_else(|| format!("{} by policy {id} rule {}", rule.action, rule.name)),
            teams: m.teams.clone(),
            subjects: m.subjects.clone(),
            models,
            model_patterns: m.models.clone(),
            providers: m.providers.clone(),
            use_cases: m.use_cases.clone(),
            classifications: m.data_classifications.clone(),
            min_classification: m.min_data_classification,
            risk_levels: m.risk_levels.clone(),
            min_risk: m.min_risk_level,
            regions: m.regions.clone(),
            namespaces,
            namespace_patterns: m.namespaces.clone(),
            exclude,
            when,
            schedule,
            outside_schedule,
            cost_above: c.estimated_cost_above_usd,
            tokens_above: c.estimated_tokens_above,
            // A redaction on responses applies to every response its facts
            // match; `detected` names what to rewrite, not a condition (so a
            // stream can be redacted as it goes, see `output`).
            detected: if rule.phase == RuleTarget::Response && rule.action == Effect::Redact {
                vec![]
            } else {
                c.detected.clone()
            },
            model_approved: c.model_approved,
            obligations,
        });
    }
}

fn rule_obligations(
    rule: &PolicyRule,
    resource: &str,
    i: usize,
    known_entities: &HashSet<&str>,
    errors: &mut Errors,
) -> Obligations {
    let rname = Some(rule.name.as_str());
    let mut o = Obligations {
        record_redacted_prompt: rule.record_redacted_prompt,
        ..Default::default()
    };
    match rule.action {
        Effect::Redact => {
            let params = rule.redact.clone().unwrap_or_default();
            for (j, entity) in params.entities.iter().enumerate() {
                if !known_entities.contains(entity.as_str()) {
                    errors.push(
                        resource,
                        rname,
                        format!("spec.rules[{i}].redact.entities[{j}]"),
                        format!("unknown entity {entity:?}"),
                    );
                }
            }
            // Without a list, redact what the rule looks for; without that, everything found.
            let entities = if params.entities.is_empty() {
                rule.conditions.detected.clone()
            } else {
                params.entities
            };
            if let Some(entity) = entities.iter().find(|e| !redactable(e)) {
                errors.push(
                    resource,
                    rname,
                    format!("spec.rules[{i}].redact.entities"),
                    format!(
                        "{entity} cannot be redacted, only denied; list the entities to redact in redact.entities"
                    ),
                );
            }
            o.redact = Some(RedactObligation {
                entities,
                replacement: params
                    .replacement
                    .unwrap_or_else(|| DEFAULT_REDACTION.to_string()),
            });
        }
        Effect::Degrade => match &rule.degrade {
            Some(d) if d.model.is_some() || d.max_tokens.is_some() => {
                o.model = d.model.clone();
                o.max_tokens = d.max_tokens;
            }
            _ => errors.push(
                resource,
                rname,
                format!("spec.rules[{i}].degrade"),
                "action Degrade needs degrade.model or degrade.maxTokens",
            ),
        },
        _ => {
            if rule.degrade.is_some() {
                errors.push(
                    resource,
                    rname,
                    format!("spec.rules[{i}].degrade"),
                    "degrade is only valid with action Degrade",
                );
            }
            if rule.redact.is_some() {
                errors.push(
                    resource,
                    rname,
                    format!("spec.rules[{i}].redact"),
                    "redact is only valid with action Redact",
                );
            }
        }
    }
    o
}

/// What a rule on Response may say: it acts on a response that is already
/// written (and may be streaming), so it can only rewrite entities or withhold
/// the response, and it must be decidable as the response arrives.
fn check_response_rule(rule: &PolicyRule, resource: &str, i: usize, errors: &mut Errors) {
    let rname = Some(rule.name.as_str());
    let at = |f: &str| format!("spec.rules[{i}]{f}");
    match rule.action {
        Effect::Redact => {
            let listed = rule.redact.as_ref().is_some_and(|r| !r.entities.is_empty());
            if listed && !rule.conditions.detected.is_empty() {
                errors.push(
                    resource,
                    rname,
                    at(".conditions.detected"),
                    "on a rule on Response, conditions.detected and redact.entities both name the entities to rewrite; use one",
                );
            }
        }
        Effect::Deny => {
            if rule.conditions.detected.is_empty() {
                errors.push(
                    resource,
                    rname,
                    at(".conditions.detected"),
                    "a rule on Response with action Deny needs conditions.detected: the entities that block the response",
                );
            }
        }
        other => errors.push(
            resource,
            rname,
            at(".action"),
            format!("a rule on Response may only Redact or Deny, not {other}"),
        ),
    }
    if rule.record_redacted_prompt {
        errors.push(
            resource,
            rname,
            at(".recordRedactedPrompt"),
            "recordRedactedPrompt is only valid on rules on Request",
        );
    }
    // Entities are judged as a stream arrives, through conditions.detected;
    // an expression over them could change its mind as more text came.
    if rule.when.as_deref().is_some_and(|w| w.contains("findings")) {
        errors.push(
            resource,
            rname,
            at(".when"),
            "on a rule on Response, `when` may not use request.findings; name the entities in conditions.detected",
        );
    }
}

/// Contradictory rules: at the same priority, two rules that match exactly the same
/// requests (identical match, when and conditions) but do different things. The
/// precedence order would silently pick one; the author must say which.
fn find_conflicts(bundle: &Bundle, errors: &mut Errors) {
    type Key = (i32, String);
    let mut seen: HashMap<Key, Vec<(String, &PolicyRule, Enforcement)>> = HashMap::new();
    for policy in &bundle.policies {
        let scope = serde_json::to_string(&(
            &policy.namespace,
            &policy.namespaces,
            &policy.namespace_selector,
        ))
        .unwrap_or_default();
        for rule in &policy.rules {
            let key_body = serde_json::to_string(&(
                &rule.phase,
                &rule.match_,
                &rule.exclude,
                &rule.when,
                &rule.conditions,
                &scope,
            ))
            .unwrap_or_default();
            let entry = seen.entry((policy.priority, key_body)).or_default();
            for (other_policy, other_rule, other_enforcement) in entry.iter() {
                let different = other_rule.action != rule.action
                    || other_rule.redact != rule.redact
                    || other_rule.degrade != rule.degrade;
                if different && *other_enforcement == policy.enforcement {
                    errors.push(
                        &policy_resource(policy),
                        Some(&rule.name),
                        "spec.rules".into(),
                        format!(
                            "conflicts with {other_policy} rule {:?}: same priority {} and same match, but {} vs {}; change a priority or the match",
                            other_rule.name, policy.priority, other_rule.action, rule.action
                        ),
                    );
                }
            }
            entry.push((policy_resource(policy), rule, policy.enforcement));
        }
    }
}

/// A dollar amount a budget or price may hold: finite and not negative. The
/// API server's schema refuses negative prices already; a hand-written
/// manifest read offline (`.nan`, `.inf`) is checked here.
fn valid_usd(usd: f64) -> bool {
    usd.is_finite() && usd >= 0.0
}

const USD_REASON: &str = "must be a finite number of US dollars, zero or more";

fn check_pricing(model: &BundleModel, resource: &str, errors: &mut Errors) {
    let Some(pricing) = &model.spec.pricing else {
        return;
    };
    for (field, usd) in [
        (
            "spec.pricing.inputPer1kTokensUsd",
            pricing.input_per1k_tokens_usd,
        ),
        (
            "spec.pricing.outputPer1kTokensUsd",
            pricing.output_per1k_tokens_usd,
        ),
    ] {
        if !valid_usd(usd) {
            errors.push(resource, None, field.into(), USD_REASON);
        }
    }
}

fn compile_model(model: &BundleModel) -> CompiledModel {
    CompiledModel {
        id: model.id(),
        namespace: model.namespace.clone(),
        provider: model.spec.provider.clone(),
        region: model.spec.region.clone(),
        risk_level: model.risk_level,
        approval: model.approval,
        suspended: model.spec.suspended,
        max_classification: model.spec.max_data_classification,
        use_cases: model.spec.use_cases.clone(),
        pricing: model.spec.pricing.clone(),
        endpoint: model.spec.endpoint.clone(),
        credentials: model
            .spec
            .credentials
            .as_ref()
            .map(|c| c.secret_ref.clone()),
    }
}

/// Budgets with their time zones resolved; every problem is pushed to `errors`.
pub(crate) fn compile_budgets(
    list: &[policybind_crds::Budget],
    resource: &str,
    errors: &mut Errors,
) -> Vec<CompiledBudget> {
    let mut budgets = vec![];
    for (i, b) in list.iter().enumerate() {
        match parse_time_zone(&b.time_zone) {
            Ok(tz) => budgets.push(CompiledBudget {
                period: b.period,
                max_cost_usd: b.max_cost_usd,
                max_tokens: b.max_tokens,
                tz,
                rolling: b.window == policybind_crds::BudgetWindow::Rolling,
            }),
            Err(e) => errors.push(resource, None, format!("spec.budgets[{i}].timeZone"), e),
        }
        if b.max_cost_usd.is_some_and(|usd| !valid_usd(usd)) {
            errors.push(
                resource,
                None,
                format!("spec.budgets[{i}].maxCostUsd"),
                USD_REASON,
            );
        }
        if b.max_cost_usd.is_none() && b.max_tokens.is_none() {
            errors.push(
                resource,
                None,
                format!("spec.budgets[{i}]"),
                "a budget needs maxCostUsd or maxTokens",
            );
        }
    }
    budgets
}

fn compile_token(
    token: &BundleToken,
    resource: &str,
    globs: &mut HashMap<Vec<String>, GlobSet>,
    errors: &mut Errors,
) -> Option<CompiledToken> {
    let spec = &token.spec;
    let before = errors.list.len();
    let allowed_models = match globs.get(&spec.allowed_models) {
        Some(g) => Some(g.clone()),
        None => selector::glob_set(&spec.allowed_models)
            .map_err(|e| errors.push(resource, None, "spec.allowedModels".into(), e))
            .ok()
            .inspect(|g| {
                globs.insert(spec.allowed_models.clone(), g.clone());
            }),
    };
    let budgets = compile_budgets(&spec.budgets, resource, errors);
    let schedule = spec
        .schedule
        .as_ref()
        .and_then(|s| compile_schedule(s, errors, resource, None, "spec.schedule".into()));
    let default_classification = spec
        .default_data_classification
        .unwrap_or(DataClassification::Internal.min(spec.max_data_classification));
    if default_classification > spec.max_data_classification {
        errors.push(
            resource,
            None,
            "spec.defaultDataClassification".into(),
            format!(
                "{} is above maxDataClassification {}",
                default_classification.as_str(),
                spec.max_data_classification.as_str()
            ),
        );
    }
    if let (Some(nb), Some(exp)) = (spec.not_before, spec.expires_at)
        && exp <= nb
    {
        errors.push(
            resource,
            None,
            "spec.expiresAt".into(),
            "must be after notBefore",
        );
    }
    if errors.list.len() > before {
        return None;
    }
    Some(CompiledToken {
        id: token.id(),
        namespaces: std::iter::once(token.namespace.clone())
            .chain(spec.additional_namespaces.iter().cloned())
            .collect(),
        subject: spec.subject.name.clone(),
        team: spec.team.clone(),
        labels: token.labels.clone(),
        allowed_models: allowed_models?,
        allowed_use_cases: spec.allowed_use_cases.clone(),
        default_use_case: spec.default_use_case.clone(),
        max_classification: spec.max_data_classification,
        default_classification,
        budgets,
        rate_limit: spec.rate_limit.clone(),
        schedule,
        not_before: spec.not_before,
        expires_at: spec.expires_at,
        revoked: spec.revoked,
        exhausted: token.exhausted,
        exhausted_cost_only: token.exhausted_cost_only,
    })
}

fn build_index(rules: &[CompiledRule], model_by_name: &HashMap<String, ModelSlots>) -> RuleIndex {
    let words = rules.len().div_ceil(64).max(1);
    let mut index = RuleIndex {
        all: BitSet::new(words),
        team_any: BitSet::new(words),
        subject_any: BitSet::new(words),
        model_any: BitSet::new(words),
        ..Default::default()
    };
    for (i, rule) in rules.iter().enumerate() {
        index.all.set(i);
        if rule.teams.is_empty() {
            index.team_any.set(i);
        }
        for team in &rule.teams {
            index
                .by_team
                .entry(team.clone())
                .or_insert_with(|| BitSet::new(words))
                .set(i);
        }
        if rule.subjects.is_empty() {
            index.subject_any.set(i);
        }
        for subject in &rule.subjects {
            index
                .by_subject
                .entry(subject.clone())
                .or_insert_with(|| BitSet::new(words))
                .set(i);
        }
        if rule.models.is_none() {
            index.model_any.set(i);
        }
    }
    for name in model_by_name.keys() {
        let mut set = index.model_any.clone();
        for (i, rule) in rules.iter().enumerate() {
            if rule.models.as_ref().is_some_and(|g| g.is_match(name)) {
                set.set(i);
            }
        }
        index.by_model.insert(name.clone(), set);
    }
    index
}
