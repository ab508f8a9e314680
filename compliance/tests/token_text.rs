//! Tokens from plain words: a table of sentences, each with what must be understood
//! or the question that must be asked. The registry is the example organisation's
//! (examples/models.yaml); "today" is Monday 2026-11-30, 12:00 UTC.
use policybind_compliance::token_text::{self, Context, Question, Registry, Understood};
use policybind_crds::access_token::SubjectKind;
use policybind_crds::{BudgetPeriod, DataClassification, ModelDeployment};
use policybind_engine::manifest::{Object, parse_documents};

/// Read once: the proptests below call this hundreds of times.
static CONTEXT: std::sync::LazyLock<Context> = std::sync::LazyLock::new(read_context);

fn context() -> Context {
    CONTEXT.clone()
}

fn read_context() -> Context {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/models.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let models: Vec<ModelDeployment> = parse_documents(path, &text)
        .unwrap()
        .into_iter()
        .filter_map(|(_, o)| match o {
            Object::ModelDeployment(m) => Some(m),
            _ => None,
        })
        .collect();
    Context {
        now: chrono::DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .into(),
        registry: Registry::from_models(&models),
        namespace: None,
        name: None,
    }
}

/// A budget as (period, dollars, tokens).
type BudgetWant = (BudgetPeriod, Option<f64>, Option<u64>);

/// What a sentence must produce. Fields left `None` (or empty) are not compared.
#[derive(Default)]
struct Want {
    subject: Option<(SubjectKind, &'static str)>,
    team: Option<&'static str>,
    models: &'static [&'static str],
    use_cases: Option<&'static [&'static str]>,
    classification: Option<DataClassification>,
    /// (period, dollars, tokens)
    budgets: Option<&'static [BudgetWant]>,
    rpm: Option<u32>,
    tpm: Option<u64>,
    /// RFC 3339, or "none".
    expires: Option<&'static str>,
}

enum Expect {
    Token(Want),
    /// The field asked about and words the question must contain.
    Asks(&'static str, &'static str),
}

use BudgetPeriod::{Day, Month, Week};
use Expect::{Asks, Token};

fn team(name: &'static str) -> Option<(SubjectKind, &'static str)> {
    Some((SubjectKind::Team, name))
}

fn cases() -> Vec<(&'static str, Expect)> {
    vec![
        // The seed's example, exactly.
        (
            "the marketing team may use gpt-4o-mini for content generation, $100 a month, until March 31",
            Token(Want {
                subject: team("marketing"),
                team: Some("marketing"),
                models: &["gpt-4o-mini"],
                use_cases: Some(&["content-generation"]),
                classification: Some(DataClassification::Internal),
                budgets: Some(&[(Month, Some(100.0), None)]),
                expires: Some("2027-04-01T00:00:00+00:00"),
                ..Want::default()
            }),
        ),
        (
            "The Marketing Team may use GPT-4o-mini for content generation, $100 a month, until March 31.",
            Token(Want {
                subject: team("marketing"),
                models: &["gpt-4o-mini"],
                expires: Some("2027-04-01T00:00:00+00:00"),
                ..Want::default()
            }),
        ),
        (
            "user alice@example.com of the support team can use gpt-4o and claude-sonnet-4 for summarization, $50 per week, 60 requests per minute, confidential data, expires 2027-01-15",
            Token(Want {
                subject: Some((SubjectKind::User, "alice@example.com")),
                team: Some("support"),
                models: &["gpt-4o", "claude-sonnet-4"],
                use_cases: Some(&["summarization"]),
                classification: Some(DataClassification::Confidential),
                budgets: Some(&[(Week, Some(50.0), None)]),
                rpm: Some(60),
                expires: Some("2027-01-16T00:00:00+00:00"),
                ..Want::default()
            }),
        ),
        (
            "give the data science team access to llama-3.1-70b-instruct with restricted data, $10 a day",
            Token(Want {
                subject: team("data-science"),
                models: &["llama-3.1-70b-instruct"],
                classification: Some(DataClassification::Restricted),
                budgets: Some(&[(Day, Some(10.0), None)]),
                expires: Some("none"),
                use_cases: Some(&[]),
                ..Want::default()
            }),
        ),
        (
            "service account finance/reconciler of the finance team may call llama-3-70b and gpt-4o-mini, $25 daily",
            Token(Want {
                subject: Some((SubjectKind::ServiceAccount, "finance/reconciler")),
                team: Some("finance"),
                models: &["llama-3.1-70b-instruct", "gpt-4o-mini"],
                budgets: Some(&[(Day, Some(25.0), None)]),
                ..Want::default()
            }),
        ),
        (
            "team research may use any model for 30 days",
            Token(Want {
                subject: team("research"),
                models: &["*"],
                expires: Some("2026-12-30T12:00:00+00:00"),
                budgets: Some(&[]),
                ..Want::default()
            }),
        ),
        (
            "the support team may use support-agent-v2 for customer support, 3000 rpm",
            Token(Want {
                models: &["support-agent-v2"],
                use_cases: Some(&["customer-support"]),
                rpm: Some(3000),
                ..Want::default()
            }),
        ),
        (
            "the finance team may use credit-scoring-llm for credit assessment until the end of the year",
            Token(Want {
                models: &["credit-scoring-llm"],
                use_cases: Some(&["credit-assessment"]),
                expires: Some("2027-01-01T00:00:00+00:00"),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o for copywriting, a monthly budget of $200, 100k tokens per minute",
            Token(Want {
                models: &["gpt-4o"],
                use_cases: Some(&["copywriting"]),
                budgets: Some(&[(Month, Some(200.0), None)]),
                tpm: Some(100_000),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-mini, 2M tokens a day",
            Token(Want {
                budgets: Some(&[(Day, None, Some(2_000_000))]),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-mini, $100 a month and 2M tokens a day",
            Token(Want {
                budgets: Some(&[(Day, None, Some(2_000_000)), (Month, Some(100.0), None)]),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-mini, $100 a month and 5M tokens a month",
            Token(Want {
                budgets: Some(&[(Month, Some(100.0), Some(5_000_000))]),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-mini until 2027-02-28",
            Token(Want {
                expires: Some("2027-03-01T00:00:00+00:00"),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-mini until 15 January 2027",
            Token(Want {
                expires: Some("2027-01-16T00:00:00+00:00"),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-mini until Jan 15",
            Token(Want {
                expires: Some("2027-01-16T00:00:00+00:00"),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-mini until November 30",
            Token(Want {
                expires: Some("2026-12-01T00:00:00+00:00"),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-mini until November 29",
            Token(Want {
                expires: Some("2027-11-30T00:00:00+00:00"),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-mini until tomorrow",
            Token(Want {
                expires: Some("2026-12-02T00:00:00+00:00"),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-mini until Friday",
            Token(Want {
                expires: Some("2026-12-05T00:00:00+00:00"),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-mini for 2 weeks",
            Token(Want {
                expires: Some("2026-12-14T12:00:00+00:00"),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-mini for three months",
            Token(Want {
                expires: Some("2027-02-28T12:00:00+00:00"),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-mini for a year",
            Token(Want {
                expires: Some("2027-11-30T12:00:00+00:00"),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-mini, $1,500 a month",
            Token(Want {
                budgets: Some(&[(Month, Some(1500.0), None)]),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-mini, $1.5k per month",
            Token(Want {
                budgets: Some(&[(Month, Some(1500.0), None)]),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-mini, 100 dollars per week",
            Token(Want {
                budgets: Some(&[(Week, Some(100.0), None)]),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-mini, 10 requests per second",
            Token(Want {
                rpm: Some(600),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-mini, 120 requests per hour",
            Token(Want {
                rpm: Some(2),
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-2024-08-06",
            Token(Want {
                models: &["gpt-4o"],
                ..Want::default()
            }),
        ),
        (
            "the marketing team may use gpt-4o-mini for summarization and translation",
            Token(Want {
                use_cases: Some(&["summarization", "translation"]),
                ..Want::default()
            }),
        ),
        (
            "user bob of the research team may use claude-sonnet for research, public data only",
            Token(Want {
                subject: Some((SubjectKind::User, "bob")),
                team: Some("research"),
                models: &["claude-sonnet-4"],
                use_cases: Some(&["research"]),
                classification: Some(DataClassification::Public),
                ..Want::default()
            }),
        ),
        // Ambiguous or unknown: refused with a question.
        (
            "the marketing team may use gpt-5 for content generation",
            Asks(
                "spec.allowedModels",
                "\"gpt-5\" is not in the model registry",
            ),
        ),
        (
            "the marketing team may use chatgpt",
            Asks(
                "spec.allowedModels",
                "\"chatgpt\" is not in the model registry",
            ),
        ),
        (
            "the marketing team for content generation, $100 a month",
            Asks("spec.allowedModels", "Which models may it call?"),
        ),
        (
            "the marketing team may use gpt-4o-mini, $100",
            Asks("spec.budgets", "Is $100 per day, per week or per month?"),
        ),
        (
            "the marketing team may use gpt-4o-mini, $100 a year",
            Asks("spec.budgets", "not every year"),
        ),
        (
            "the marketing team may use gpt-4o-mini, €100 a month",
            Asks("spec.budgets", "not in US dollars"),
        ),
        (
            "the marketing team may use gpt-4o-mini, $100 a month, $200 a month",
            Asks("spec.budgets", "Two budgets per month"),
        ),
        (
            "the marketing team may use gpt-4o-mini until 03/04",
            Asks("spec.expiresAt", "day/month or month/day"),
        ),
        (
            "the marketing team may use gpt-4o-mini until March 31 and for 30 days",
            Asks("spec.expiresAt", "gives 2 ends"),
        ),
        (
            "the marketing team may use gpt-4o-mini until February 30",
            Asks("spec.expiresAt", "\"february 30\" is not a date"),
        ),
        (
            "the marketing team may use gpt-4o-mini until 2025-01-15",
            Asks("spec.expiresAt", "is in the past"),
        ),
        (
            "the marketing team may use gpt-4o-mini until soon",
            Asks("spec.expiresAt", "I cannot read that date"),
        ),
        (
            "user alice@example.com may use gpt-4o-mini",
            Asks(
                "spec.team",
                "Which team does user \"alice@example.com\" belong to?",
            ),
        ),
        (
            "may use gpt-4o-mini for content generation",
            Asks("spec.subject", "Who is the token for?"),
        ),
        (
            "the marketing team and the sales team may use gpt-4o-mini",
            Asks("spec.team", "a token belongs to one team"),
        ),
        (
            "user alice@example.com and user bob@example.com of the support team may use gpt-4o",
            Asks("spec.subject", "a token is for one subject"),
        ),
        (
            "the marketing team may use gpt-4o-mini except on weekends",
            Asks("sentence", "exclusion"),
        ),
        (
            "the marketing team may use gpt-4o-mini only on weekdays",
            Asks("sentence", "I did not understand \"weekdays\""),
        ),
        (
            "the marketing team may use gpt-4o-mini during business hours",
            Asks("sentence", "I did not understand \"during business hours\""),
        ),
        (
            "the finance team may use credit-scoring-llm for marketing",
            Asks(
                "spec.allowedUseCases",
                "approved only for credit-assessment",
            ),
        ),
        (
            "the marketing team may use gpt-4o-mini with confidential and restricted data",
            Asks("spec.maxDataClassification", "Confidential and Restricted"),
        ),
        (
            "the marketing team may use gpt-4o-mini, 100 requests per hour",
            Asks("spec.rateLimit", "1.67 per minute"),
        ),
        ("   ", Asks("sentence", "The sentence is empty")),
    ]
}

fn check_token(sentence: &str, want: &Want, got: &Understood) {
    let spec = &got.token.spec;
    let ctx = format!("{sentence:?}\nfields: {:#?}", got.fields);
    if let Some((kind, name)) = want.subject {
        assert_eq!(
            (spec.subject.kind, spec.subject.name.as_str()),
            (kind, name),
            "{ctx}"
        );
    }
    if let Some(team) = want.team {
        assert_eq!(spec.team, team, "{ctx}");
    }
    if !want.models.is_empty() {
        assert_eq!(spec.allowed_models, want.models, "{ctx}");
    }
    if let Some(use_cases) = want.use_cases {
        assert_eq!(spec.allowed_use_cases, use_cases, "{ctx}");
    }
    if let Some(c) = want.classification {
        assert_eq!(spec.max_data_classification, c, "{ctx}");
    }
    if let Some(budgets) = want.budgets {
        let got: Vec<_> = spec
            .budgets
            .iter()
            .map(|b| (b.period, b.max_cost_usd, b.max_tokens))
            .collect();
        assert_eq!(got, budgets, "{ctx}");
    }
    if let Some(rpm) = want.rpm {
        assert_eq!(
            spec.rate_limit.as_ref().and_then(|r| r.requests_per_minute),
            Some(rpm),
            "{ctx}"
        );
    }
    if let Some(tpm) = want.tpm {
        assert_eq!(
            spec.rate_limit.as_ref().and_then(|r| r.tokens_per_minute),
            Some(tpm),
            "{ctx}"
        );
    }
    if let Some(expires) = want.expires {
        let got = spec
            .expires_at
            .map_or("none".to_string(), |t| t.to_rfc3339());
        assert_eq!(got, expires, "{ctx}");
    }
}

#[test]
fn every_sentence_gives_its_token_or_its_question() {
    let ctx = context();
    let cases = cases();
    assert!(
        cases.len() >= 40,
        "the table holds {} sentences",
        cases.len()
    );
    for (sentence, expect) in &cases {
        let result = token_text::parse(sentence, &ctx);
        match (expect, result) {
            (Token(want), Ok(got)) => check_token(sentence, want, &got),
            (
                Asks(field, words),
                Err(Question {
                    field: got_field,
                    question,
                }),
            ) => {
                assert_eq!(&got_field, field, "{sentence:?}: {question}");
                assert!(
                    question.contains(words),
                    "{sentence:?}: expected the question to contain {words:?}, got {question:?}"
                );
            }
            (Token(_), Err(question)) => panic!("{sentence:?} was refused: {question}"),
            (Asks(field, _), Ok(got)) => panic!(
                "{sentence:?} should ask about {field} but gave {:#?}",
                got.fields
            ),
        }
    }
}

#[test]
fn the_same_sentence_always_gives_the_same_manifest() {
    let ctx = context();
    let sentence = "user alice@example.com of the support team can use gpt-4o for summarization, $50 per week, until March 31";
    let a = serde_json::to_string(&token_text::parse(sentence, &ctx).unwrap().token).unwrap();
    let b = serde_json::to_string(&token_text::parse(sentence, &ctx).unwrap().token).unwrap();
    assert_eq!(a, b);
}

#[test]
fn every_field_says_which_words_it_came_from() {
    let got = token_text::parse("the marketing team may use gpt-4o-mini for content generation, $100 a month, until March 31", &context()).unwrap();
    let from = |field: &str| {
        got.fields
            .iter()
            .find(|f| f.field == field)
            .map(|f| f.from.clone())
            .unwrap()
    };
    assert_eq!(from("spec.subject"), "\"marketing team\"");
    assert_eq!(from("spec.budgets"), "\"$100 a month\"");
    assert_eq!(from("spec.expiresAt"), "\"until march 31\"");
    assert_eq!(from("spec.allowedUseCases"), "\"for content generation\"");
    assert!(from("spec.allowedModels").contains("registered as ai-platform/gpt-4o-mini"));
    assert!(from("spec.maxDataClassification").contains("default"));
    assert_eq!(got.token.metadata.namespace.as_deref(), Some("marketing"));
    assert_eq!(
        got.token.metadata.name.as_deref(),
        Some("marketing-gpt-4o-mini")
    );
}

#[test]
fn the_manifest_passes_the_crd_validation_rules() {
    use kube::CustomResourceExt;
    let got = token_text::parse("user alice@example.com of the support team can use gpt-4o and claude-sonnet-4 for summarization, $50 per week, 60 requests per minute, confidential data, expires 2027-01-15", &context()).unwrap();
    let schema = serde_json::to_value(policybind_crds::AccessToken::crd()).unwrap()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    let mut object = serde_json::to_value(&got.token).unwrap();
    object.as_object_mut().unwrap().remove("status");
    assert!(kube_cel::validate(&schema, &object, None).is_ok());
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Whatever is typed, the parser answers with a token or a question; it never
        /// panics (byte offsets into lower-cased, multi-byte text are the risk).
        #[test]
        fn any_text_gives_a_token_or_a_question(text in "\\PC{0,120}") {
            let _ = token_text::parse(&text, &context());
        }

        /// Sentences assembled from the phrases it knows, in any order, with noise.
        #[test]
        fn known_phrases_in_any_order_never_panic(parts in proptest::collection::vec(prop_oneof![
            Just("the marketing team"), Just("user ÄLICE@example.com"), Just("may use"), Just("gpt-4o-mini"),
            Just("for content generation"), Just("$100 a month"), Just("until March 31"), Just("for 30 days"),
            Just("60 requests per minute"), Just("confidential data"), Just("and"), Just(","), Just("ß"),
            Just("until"), Just("for"), Just("$"), Just("team"), Just("service account a/b"), Just("2M tokens a day"),
        ], 0..12)) {
            let sentence = parts.join(" ");
            match token_text::parse(&sentence, &context()) {
                Ok(understood) => prop_assert!(!understood.token.spec.allowed_models.is_empty()),
                Err(question) => prop_assert!(!question.question.is_empty()),
            }
        }
    }
}
