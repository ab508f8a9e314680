//! CEL `when` expressions over the request facts.
//!
//! Expressions see one variable, `request`, a map that always holds every field in
//! [`FIELDS`] (empty string, 0 or empty list when unknown), so an expression never
//! fails because a fact is missing. Unknown `request.<field>` names are rejected at
//! compile time; an expression is also run once against a sample request so that
//! type errors (`request.model > 3`) surface at compile time, not on traffic. A
//! run-time error still denies the request (`POLICY_EVALUATION_ERROR`): a broken
//! rule must not open a hole.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use cel::objects::Key;
use cel::{Context, Env, ExecutionError, Program, Value};
use regex::Regex;

use crate::request::ResolvedFacts;

/// Fields of `request` visible to CEL, with their types. Documented in the README.
pub const FIELDS: &[(&str, &str, &str)] = &[
    ("subject", "string", "subject of the token"),
    ("team", "string", "team of the token"),
    ("token", "string", "AccessToken id, namespace/name"),
    ("model", "string", "model as requested"),
    ("provider", "string", "provider of the registered model"),
    ("useCase", "string", "declared or default use case"),
    (
        "dataClassification",
        "string",
        "Public, Internal, Confidential or Restricted",
    ),
    (
        "classificationLevel",
        "int",
        "0 Public, 1 Internal, 2 Confidential, 3 Restricted",
    ),
    ("region", "string", "region of the registered model"),
    ("namespace", "string", "namespace the request is served in"),
    (
        "riskLevel",
        "string",
        "Low, Medium, High or Critical (empty when unregistered)",
    ),
    (
        "estimatedTokens",
        "int",
        "estimated input plus output tokens",
    ),
    ("estimatedCostUsd", "double", "estimated cost in US dollars"),
    ("hour", "int", "hour of the day, 0-23, UTC"),
    ("weekday", "string", "Mon..Sun, UTC"),
    (
        "findings",
        "list(string)",
        "entities the detectors found, e.g. ['EMAIL']",
    ),
    ("labels", "map(string, string)", "free-form request labels"),
];

static REQUEST_FIELD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\brequest\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)").expect("valid"));

/// A compiled `when` expression.
#[derive(Debug)]
pub struct WhenExpr {
    program: Program,
    pub source: String,
}

/// Shared CEL environment (standard library and macros), built once per set.
pub fn env() -> Arc<Env> {
    Arc::new(Env::stdlib())
}

impl WhenExpr {
    /// Parses and checks an expression; the error says what is wrong.
    pub fn compile(env: &Arc<Env>, source: &str) -> Result<WhenExpr, String> {
        let program = env
            .compile(source)
            .map_err(|e| format!("invalid CEL expression: {e}"))?;
        for variable in program.references().variables() {
            if variable != "request" {
                return Err(format!(
                    "unknown variable {variable:?}: expressions see only `request`"
                ));
            }
        }
        for capture in REQUEST_FIELD.captures_iter(source) {
            let field = &capture[1];
            if !FIELDS.iter().any(|(name, _, _)| *name == field) {
                return Err(format!(
                    "unknown field request.{field}; known fields: {}",
                    FIELDS
                        .iter()
                        .map(|(n, _, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let expr = WhenExpr {
            program,
            source: source.to_string(),
        };
        let sample = sample_request();
        match expr.evaluate(env, &sample) {
            Ok(_) => Ok(expr),
            // A missing label key on the empty sample is fine; it is a run-time matter.
            Err(e) if e.starts_with("no such key") => Ok(expr),
            Err(e) => Err(format!("CEL expression fails on a sample request: {e}")),
        }
    }

    /// Evaluates against a request value; the result must be a bool.
    pub fn evaluate(&self, env: &Arc<Env>, request: &Value) -> Result<bool, String> {
        let mut context = Context::with_env(Arc::clone(env));
        context.add_variable_from_value("request", request.clone());
        match self.program.execute(&context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("expression returned {other:?}, not a bool")),
            Err(ExecutionError::NoSuchKey(key)) => Err(format!("no such key {key:?}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn string(s: &str) -> Value {
    Value::String(Arc::new(s.to_string()))
}

/// Builds the `request` value for CEL from resolved facts.
pub fn request_value(
    facts: &ResolvedFacts,
    hour: u32,
    weekday: &str,
    findings: &[String],
    labels: &std::collections::BTreeMap<String, String>,
) -> Value {
    let opt = |s: &Option<String>| string(s.as_deref().unwrap_or(""));
    let mut map: HashMap<Key, Value> = HashMap::with_capacity(FIELDS.len());
    let mut put = |k: &str, v: Value| {
        map.insert(Key::String(Arc::new(k.to_string())), v);
    };
    put("subject", opt(&facts.subject));
    put("team", opt(&facts.team));
    put("token", opt(&facts.token));
    put("model", string(&facts.model));
    put("provider", opt(&facts.provider));
    put("useCase", opt(&facts.use_case));
    put(
        "dataClassification",
        string(facts.data_classification.map(|c| c.as_str()).unwrap_or("")),
    );
    put(
        "classificationLevel",
        Value::Int(facts.data_classification.map(|c| c as i64).unwrap_or(-1)),
    );
    put("region", opt(&facts.region));
    put("namespace", opt(&facts.namespace));
    put(
        "riskLevel",
        string(facts.risk_level.map(|r| r.as_str()).unwrap_or("")),
    );
    put(
        "estimatedTokens",
        Value::Int(facts.estimated_tokens.min(i64::MAX as u64) as i64),
    );
    put("estimatedCostUsd", Value::Float(facts.estimated_cost_usd));
    put("hour", Value::Int(hour.into()));
    put("weekday", string(weekday));
    put(
        "findings",
        Value::List(Arc::new(findings.iter().map(|f| string(f)).collect())),
    );
    let labels: HashMap<Key, Value> = labels
        .iter()
        .map(|(k, v)| (Key::String(Arc::new(k.clone())), string(v)))
        .collect();
    put("labels", Value::Map(labels.into()));
    Value::Map(map.into())
}

fn sample_request() -> Value {
    let facts = ResolvedFacts {
        token: Some("ns/token".into()),
        subject: Some("alice".into()),
        team: Some("team".into()),
        model: "model".into(),
        model_deployment: None,
        provider: Some("openai".into()),
        use_case: Some("chat".into()),
        data_classification: Some(policybind_crds::DataClassification::Internal),
        region: Some("eu".into()),
        namespace: Some("default".into()),
        risk_level: Some(policybind_crds::RiskLevel::Low),
        estimated_tokens: 100,
        estimated_cost_usd: 0.01,
    };
    request_value(
        &facts,
        12,
        "Mon",
        &["EMAIL".to_string()],
        &Default::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_expression_compiles_and_evaluates() {
        let env = env();
        let e = WhenExpr::compile(
            &env,
            "request.estimatedTokens > 50 && request.team == 'team'",
        )
        .unwrap();
        assert!(e.evaluate(&env, &sample_request()).unwrap());
    }

    #[test]
    fn syntax_error_is_reported() {
        let err = WhenExpr::compile(&env(), "request.team ==").unwrap_err();
        assert!(err.contains("invalid CEL"), "{err}");
    }

    #[test]
    fn unknown_field_is_reported_with_the_known_ones() {
        let err = WhenExpr::compile(&env(), "request.teem == 'x'").unwrap_err();
        assert!(err.contains("request.teem"), "{err}");
        assert!(err.contains("team"), "{err}");
    }

    #[test]
    fn unknown_variable_is_reported() {
        let err = WhenExpr::compile(&env(), "user == 'x'").unwrap_err();
        assert!(err.contains("\"user\""), "{err}");
    }

    #[test]
    fn non_boolean_result_is_reported() {
        let err = WhenExpr::compile(&env(), "request.estimatedTokens + 1").unwrap_err();
        assert!(err.contains("not a bool"), "{err}");
    }

    /// The README recommends this idiom for optional labels; it must hold both ways.
    #[test]
    fn readme_idiom_for_optional_labels_works_with_and_without_the_label() {
        let env = env();
        let e = WhenExpr::compile(
            &env,
            "'tier' in request.labels && request.labels.tier == 'gold'",
        )
        .unwrap();
        assert!(!e.evaluate(&env, &sample_request()).unwrap());
        let facts = ResolvedFacts {
            model: "m".into(),
            ..Default::default()
        };
        let labels = [("tier".to_string(), "gold".to_string())]
            .into_iter()
            .collect();
        let with_label = request_value(&facts, 0, "Mon", &[], &labels);
        assert!(e.evaluate(&env, &with_label).unwrap());
    }

    #[test]
    fn label_lookup_on_missing_key_is_allowed_at_compile_time() {
        assert!(WhenExpr::compile(&env(), "request.labels['tier'] == 'gold'").is_ok());
        assert!(WhenExpr::compile(&env(), "'x' in request.findings").is_ok());
    }
}
