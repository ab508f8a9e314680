//! An AccessToken from one plain sentence, without a model and without a network.
//!
//! "the marketing team may use gpt-4o-mini for content generation, $100 a month,
//! until March 31" becomes an AccessToken manifest. A fixed set of recognisers runs
//! over the lower-cased sentence, each taking the words it understands: subject and
//! team, budgets, rate limits, the end date, data classification, models (checked
//! against the registry), use cases. Whatever is left must be filler words; any
//! other word left over is refused with the words quoted, because a phrase silently
//! ignored ("only on weekdays") would make the token broader than asked. Anything
//! ambiguous (a budget without a period, `03/04`, two end dates, two teams) or
//! unknown (a model not in the registry, a use case the model is not approved for)
//! is refused with a precise question. Dates resolve against the `now` given: "until
//! March 31" is the next March 31 (today included), inclusive, so the token expires
//! at the start of the following day, UTC.
use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::sync::LazyLock;

use chrono::{DateTime, Datelike, Duration, Months, NaiveDate, Utc, Weekday};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use policybind_crds::access_token::{SubjectKind, TokenSubject};
use policybind_crds::{
    AccessToken, AccessTokenSpec, Budget, BudgetPeriod, DataClassification, ModelDeployment,
    RateLimit,
};
use regex::{Captures, Regex};

/// A registered model, by every name a sentence may use for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisteredModel {
    /// The model id callers send (`spec.model`); what `allowedModels` gets.
    pub model: String,
    /// `namespace/name` of the ModelDeployment.
    pub deployment: String,
    /// Names that refer to it: model id, aliases, ModelDeployment name.
    pub names: Vec<String>,
    /// Use cases it is approved for (empty: any).
    pub use_cases: Vec<String>,
}

/// The models a sentence may name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    pub models: Vec<RegisteredModel>,
}

impl Registry {
    /// From ModelDeployments (a `--registry` directory or a cluster).
    pub fn from_models<'a>(models: impl IntoIterator<Item = &'a ModelDeployment>) -> Registry {
        let mut registry = Registry::default();
        for m in models {
            let mut names = vec![m.spec.model.to_lowercase()];
            names.extend(m.spec.aliases.iter().map(|a| a.to_lowercase()));
            if let Some(name) = &m.metadata.name {
                names.push(name.to_lowercase());
            }
            names.sort();
            names.dedup();
            registry.models.push(RegisteredModel {
                model: m.spec.model.clone(),
                deployment: format!(
                    "{}/{}",
                    m.metadata.namespace.as_deref().unwrap_or("default"),
                    m.metadata.name.as_deref().unwrap_or_default()
                ),
                names,
                use_cases: m.spec.use_cases.clone(),
            });
        }
        registry
    }

    fn known_names(&self) -> String {
        let names: BTreeSet<&str> = self.models.iter().map(|m| m.model.as_str()).collect();
        names.into_iter().collect::<Vec<_>>().join(", ")
    }
}

/// What the parser needs besides the sentence.
#[derive(Clone, Debug)]
pub struct Context {
    /// Resolves relative dates ("until March 31", "for 30 days").
    pub now: DateTime<Utc>,
    pub registry: Registry,
    /// Namespace of the token; default: the team's name.
    pub namespace: Option<String>,
    /// Name of the token; default: `<subject>-<first model>`.
    pub name: Option<String>,
}

/// One understood field: where it goes, its value, and the words it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub field: &'static str,
    pub value: String,
    /// The words of the sentence, or why the value was chosen without them.
    pub from: String,
}

/// A refusal: the question to put to the person.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Question {
    /// The field the question is about.
    pub field: &'static str,
    pub question: String,
}

impl fmt::Display for Question {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.question)
    }
}

fn ask(field: &'static str, question: impl Into<String>) -> Question {
    Question {
        field,
        question: question.into(),
    }
}

/// The result: the manifest and what was understood, field by field.
#[derive(Clone, Debug)]
pub struct Understood {
    pub token: AccessToken,
    pub fields: Vec<Field>,
}

/// The sentence being read, lower-cased, with the bytes recognisers have taken.
struct Text {
    s: String,
    taken: Vec<bool>,
}

impl Text {
    fn new(sentence: &str) -> Text {
        let s = sentence
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
            .replace(['\u{2019}', '\u{2018}'], "'");
        let s = s.trim_end_matches(['.', '!']).to_string();
        Text {
            taken: vec![false; s.len()],
            s,
        }
    }

    fn free(&self, range: &Range<usize>) -> bool {
        !self.taken[range.clone()].iter().any(|t| *t)
    }

    fn take(&mut self, range: Range<usize>) {
        for t in &mut self.taken[range] {
            *t = true;
        }
    }

    /// Matches of `re` over free text, as owned (range, captures as strings).
    fn find(&self, re: &Regex) -> Vec<(Range<usize>, Vec<Option<String>>)> {
        re.captures_iter(&self.s)
            .filter(|c| self.free(&c.get(0).expect("group 0").range()))
            .map(|c| (c.get(0).expect("group 0").range(), groups(&c)))
            .collect()
    }

    fn words(&self, range: Range<usize>) -> String {
        self.s[range].trim().to_string()
    }

    /// Words no recogniser took, grouped into contiguous phrases.
    fn leftover(&self) -> Vec<String> {
        let mut phrases = Vec::new();
        let mut current: Vec<&str> = Vec::new();
        let mut start = 0;
        for (i, c) in self
            .s
            .char_indices()
            .chain(std::iter::once((self.s.len(), ' ')))
        {
            let boundary = c == ' ' || c == ',' || c == ';' || c == ':';
            if !boundary {
                continue;
            }
            let word_range = start..i;
            start = i + c.len_utf8();
            if word_range.is_empty() {
                continue;
            }
            let word = &self.s[word_range.clone()];
            if !self.free(&word_range) || is_filler(word) {
                if !current.is_empty() {
                    phrases.push(current.join(" "));
                    current.clear();
                }
                continue;
            }
            current.push(word);
        }
        if !current.is_empty() {
            phrases.push(current.join(" "));
        }
        phrases
    }
}

fn groups(c: &Captures<'_>) -> Vec<Option<String>> {
    c.iter()
        .map(|m| m.map(|m| m.as_str().to_string()))
        .collect()
}

/// Words that carry no meaning of their own here.
fn is_filler(word: &str) -> bool {
    const FILLERS: &[&str] = &[
        "the",
        "a",
        "an",
        "may",
        "can",
        "could",
        "should",
        "will",
        "shall",
        "is",
        "are",
        "be",
        "allowed",
        "permitted",
        "to",
        "use",
        "call",
        "access",
        "query",
        "run",
        "using",
        "give",
        "grant",
        "gets",
        "get",
        "create",
        "make",
        "issue",
        "token",
        "tokens",
        "new",
        "with",
        "for",
        "and",
        "or",
        "of",
        "per",
        "each",
        "every",
        "up",
        "at",
        "most",
        "max",
        "maximum",
        "budget",
        "budgets",
        "spend",
        "spending",
        "limit",
        "limited",
        "limits",
        "rate",
        "please",
        "let",
        "them",
        "it",
        "its",
        "on",
        "in",
        "from",
        "model",
        "models",
        "only",
        "both",
        "also",
        "data",
        "information",
        "valid",
        "which",
        "that",
        "who",
        "cap",
        "capped",
        "their",
        "our",
        "purposes",
        "purpose",
        "lets",
    ];
    let word = word.trim_matches(|c: char| !c.is_alphanumeric());
    word.is_empty() || FILLERS.contains(&word)
}

macro_rules! re {
    ($name:ident, $pattern:expr) => {
        static $name: LazyLock<Regex> =
            LazyLock::new(|| Regex::new($pattern).expect("a valid built-in pattern"));
    };
}

re!(NEGATION, r"\b(not|never|except|excluding|without|but|no)\b");
re!(
    SERVICE_ACCOUNT,
    r"\bservice[\s-]?account\s+([a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?:/[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)?)"
);
re!(
    EMAIL,
    r"\b(?:user\s+)?([a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,})\b"
);
re!(USER, r"\buser\s+([a-z][a-z0-9._-]*)\b");
re!(TEAM_WORD, r"\bteam\b");
re!(
    MONEY,
    r"(?:(\$|€|£)\s?|\b(usd|eur|gbp)\s)(\d[\d,]*(?:\.\d+)?)(k)?\b|\b(\d[\d,]*(?:\.\d+)?)(k)?\s*(dollars?|usd|bucks|euros?|eur|pounds?|gbp)\b"
);
re!(
    PERIOD_AFTER,
    r"^\s*(?:(?:a|an|per|each|every|/|a\s+single)\s*(day|week|month|year)\b|(daily|weekly|monthly|yearly|annually)\b)"
);
re!(
    PERIOD_BEFORE,
    r"\b(daily|weekly|monthly|yearly|annual)\s+(?:budget|spend|spending|limit|cap)\s+(?:of\s+)?$"
);
re!(
    RATE,
    r"\b(\d[\d,]*)\s*(k|thousand)?\s*(requests?|calls?|tokens?)\s*(?:a|an|per|each|every|/)\s*(second|sec|s|minute|min|m|hour|hr|h)\b"
);
re!(RATE_ABBR, r"\b(\d[\d,]*)\s*(k)?\s*(rpm|tpm|rps|rph)\b");
re!(
    TOKEN_BUDGET,
    r"\b(\d[\d,]*(?:\.\d+)?)\s*(k|m|thousand|million)?\s*tokens?\b"
);
re!(
    UNTIL,
    r"\b(?:until|till|til|through|thru|expiring(?:\s+on)?|expires?(?:\s+on)?|valid\s+(?:until|through|till)|ending(?:\s+on)?|ends(?:\s+on)?)\s+"
);
re!(
    FOR_DURATION,
    r"\bfor\s+(?:the\s+next\s+)?(\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)\s+(days?|weeks?|months?|years?)\b"
);
re!(ISO_DATE, r"^(\d{4})-(\d{2})-(\d{2})\b");
re!(SLASH_DATE, r"^(\d{1,2})[/.](\d{1,2})(?:[/.](\d{2,4}))?\b");
re!(
    MONTH_DAY,
    r"^(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?\s+(\d{1,2})(?:st|nd|rd|th)?(?:,?\s+(\d{4}))?\b"
);
re!(
    DAY_MONTH,
    r"^(?:the\s+)?(\d{1,2})(?:st|nd|rd|th)?\s+(?:of\s+)?(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)(?:,?\s+(\d{4}))?\b"
);
re!(
    END_OF,
    r"^(?:the\s+)?end\s+of\s+(?:the\s+|this\s+)?(year|month|week)\b|^(year|month|week)[\s-]end\b"
);
re!(
    RELATIVE_DAY,
    r"^(today|tomorrow|monday|tuesday|wednesday|thursday|friday|saturday|sunday)\b"
);
re!(
    CLASSIFICATION,
    r"\b(?:up\s+to\s+)?(public|internal|confidential|restricted)\b(?:\s+(?:data|information))?"
);
re!(
    ANY_MODEL,
    r"\b(?:any|all|every)\s+(?:registered\s+)?models?\b"
);
re!(
    MODEL_VERB,
    r"\b(?:use|call|access|query|run|using)\s+(?:to\s+)?"
);
re!(USE_CASE_NAMED, r"\buse[\s-]?cases?\s+([a-z0-9][a-z0-9-]*)");
re!(FOR_WORD, r"\bfor\s+");

/// Reads a sentence into an AccessToken, or asks a question.
pub fn parse(sentence: &str, ctx: &Context) -> Result<Understood, Question> {
    let mut text = Text::new(sentence);
    if text.s.is_empty() {
        return Err(ask(
            "sentence",
            "The sentence is empty. Say who may use which models, e.g. \"the marketing team may use gpt-4o-mini for content generation, $100 a month, until March 31\".",
        ));
    }
    if let Some((range, _)) = text.find(&NEGATION).into_iter().next() {
        return Err(ask(
            "sentence",
            format!(
                "\"{}\" asks for an exclusion, which a token cannot express: list what is allowed instead.",
                text.words(range)
            ),
        ));
    }
    let mut fields = Vec::new();
    let (subject, team) = subject(&mut text, &mut fields)?;
    let rate_limit = rate_limit(&mut text, &mut fields)?;
    let mut budgets = money_budgets(&mut text)?;
    budgets.extend(token_budgets(&mut text)?);
    let expires_at = expiry(&mut text, ctx.now, &mut fields)?;
    let classification = classification(&mut text, &mut fields)?;
    let models = models(&mut text, &ctx.registry, &mut fields)?;
    let use_cases = use_cases(&mut text, &models, &ctx.registry, &mut fields)?;
    let leftover = text.leftover();
    if !leftover.is_empty() {
        return Err(ask(
            "sentence",
            format!(
                "I did not understand {}. Rephrase or leave it out; nothing in the sentence is ignored silently.{}",
                leftover
                    .iter()
                    .map(|p| format!("\"{p}\""))
                    .collect::<Vec<_>>()
                    .join(" and "),
                if subject.kind == SubjectKind::Team {
                    ""
                } else {
                    " (Users are written 'user alice' or as an e-mail address.)"
                }
            ),
        ));
    }
    let budget_list = budget_fields(&budgets, &mut fields)?;
    Ok(assemble(
        sentence,
        ctx,
        Parts {
            subject,
            team,
            models,
            use_cases,
            classification,
            budgets: budget_list,
            rate_limit,
            expires_at,
        },
        fields,
    ))
}

struct Parts {
    subject: TokenSubject,
    team: String,
    models: Vec<(String, String)>,
    use_cases: Vec<String>,
    classification: DataClassification,
    budgets: Vec<Budget>,
    rate_limit: Option<RateLimit>,
    expires_at: Option<DateTime<Utc>>,
}

fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-')
        .chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

fn assemble(sentence: &str, ctx: &Context, parts: Parts, mut fields: Vec<Field>) -> Understood {
    let namespace = ctx.namespace.clone().unwrap_or_else(|| parts.team.clone());
    fields.push(Field {
        field: "metadata.namespace",
        value: namespace.clone(),
        from: if ctx.namespace.is_some() {
            "--namespace".into()
        } else {
            "the team's name (pass --namespace to choose another)".into()
        },
    });
    let first_model = parts
        .models
        .first()
        .map(|(m, _)| {
            if m == "*" {
                "all-models".to_string()
            } else {
                m.clone()
            }
        })
        .unwrap_or_default();
    let name = ctx.name.clone().unwrap_or_else(|| {
        slug(&format!(
            "{}-{first_model}",
            parts.subject.name.split('@').next().unwrap_or_default()
        ))
    });
    fields.push(Field {
        field: "metadata.name",
        value: name.clone(),
        from: if ctx.name.is_some() {
            "--name".into()
        } else {
            "subject and first model (pass --name to choose another)".into()
        },
    });
    let mut annotations = std::collections::BTreeMap::new();
    annotations.insert(
        policybind_crds::wire::annotations::CREATED_FROM_TEXT.to_string(),
        sentence.trim().to_string(),
    );
    let token = AccessToken {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: AccessTokenSpec {
            subject: parts.subject,
            team: parts.team,
            allowed_models: parts.models.into_iter().map(|(m, _)| m).collect(),
            default_use_case: (parts.use_cases.len() == 1).then(|| parts.use_cases[0].clone()),
            allowed_use_cases: parts.use_cases,
            max_data_classification: parts.classification,
            default_data_classification: None,
            budgets: parts.budgets,
            rate_limit: parts.rate_limit,
            schedule: None,
            not_before: None,
            expires_at: parts.expires_at,
            revoked: false,
            secret_name: None,
            rotation_grace_seconds: None,
            additional_namespaces: Vec::new(),
        },
        status: None,
    };
    Understood { token, fields }
}

fn subject(text: &mut Text, fields: &mut Vec<Field>) -> Result<(TokenSubject, String), Question> {
    let mut persons: Vec<(SubjectKind, String, String)> = Vec::new();
    for (re, kind) in [
        (&*SERVICE_ACCOUNT, SubjectKind::ServiceAccount),
        (&*EMAIL, SubjectKind::User),
        (&*USER, SubjectKind::User),
    ] {
        for (range, g) in text.find(re) {
            let words = text.words(range.clone());
            text.take(range);
            persons.push((kind, g[1].clone().unwrap_or_default(), words));
        }
    }
    let teams = teams(text);
    if persons.len() > 1 {
        let named: Vec<String> = persons.iter().map(|p| format!("\"{}\"", p.2)).collect();
        return Err(ask(
            "spec.subject",
            format!(
                "The sentence names {}; a token is for one subject. Which one?",
                named.join(" and ")
            ),
        ));
    }
    if teams.len() > 1 {
        let named: Vec<String> = teams.iter().map(|t| format!("\"{}\"", t.1)).collect();
        return Err(ask(
            "spec.team",
            format!(
                "The sentence names {}; a token belongs to one team. Which one?",
                named.join(" and ")
            ),
        ));
    }
    let team = teams.into_iter().next();
    match (persons.pop(), team) {
        (None, None) => Err(ask(
            "spec.subject",
            "Who is the token for? Name a team (\"the marketing team\"), a user (\"user alice\" or \"alice@example.com of the marketing team\") or a service account (\"service account finance/reconciler of the finance team\").",
        )),
        (Some((kind, name, words)), None) => Err(ask(
            "spec.team",
            format!(
                "Which team does {} \"{name}\" belong to? Add it, e.g. \"{words} of the marketing team\".",
                if kind == SubjectKind::User {
                    "user"
                } else {
                    "service account"
                }
            ),
        )),
        (None, Some((team, words))) => {
            fields.push(Field {
                field: "spec.subject",
                value: format!("Team {team}"),
                from: format!("\"{words}\""),
            });
            fields.push(Field {
                field: "spec.team",
                value: team.clone(),
                from: format!("\"{words}\""),
            });
            Ok((
                TokenSubject {
                    kind: SubjectKind::Team,
                    name: team.clone(),
                },
                team,
            ))
        }
        (Some((kind, name, words)), Some((team, team_words))) => {
            fields.push(Field {
                field: "spec.subject",
                value: format!("{kind:?} {name}"),
                from: format!("\"{words}\""),
            });
            fields.push(Field {
                field: "spec.team",
                value: team.clone(),
                from: format!("\"{team_words}\""),
            });
            Ok((TokenSubject { kind, name }, team))
        }
    }
}

/// Words that end a team name when walking back from "team".
fn stops_team_name(word: &str) -> bool {
    matches!(
        word,
        "the"
            | "a"
            | "an"
            | "of"
            | "for"
            | "to"
            | "from"
            | "in"
            | "on"
            | "by"
            | "and"
            | "or"
            | "our"
            | "my"
            | "your"
            | "their"
            | "whole"
            | "entire"
            | "may"
            | "can"
            | "give"
            | "grant"
            | "let"
            | "allow"
            | "with"
            | "token"
    ) || word.contains(['@', '/', '$'])
}

/// Team names: the (up to three) words before "team", or the word after it.
fn teams(text: &mut Text) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (range, _) in text.find(&TEAM_WORD) {
        let before: Vec<(usize, &str)> = text.s[..range.start]
            .split(' ')
            .scan(0usize, |at, w| {
                let start = *at;
                *at += w.len() + 1;
                Some((start, w))
            })
            .filter(|(_, w)| !w.is_empty())
            .collect();
        let mut name: Vec<String> = Vec::new();
        let mut start = range.start;
        for (at, word) in before.iter().rev() {
            let word = word.trim_end_matches(',');
            if name.len() == 3
                || word.is_empty()
                || stops_team_name(word)
                || !text.free(&(*at..*at + word.len()))
            {
                break;
            }
            name.insert(0, word.to_string());
            start = *at;
        }
        let mut end = range.end;
        if name.is_empty() {
            let after = text.s[range.end..].trim_start();
            let word: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if word.is_empty() || stops_team_name(&word) || is_filler(&word) {
                continue;
            }
            end = range.end + (text.s[range.end..].len() - after.len()) + word.len();
            name.push(word);
        }
        let words = text.words(start..end);
        text.take(start..end);
        found.push((slug(&name.join(" ")), words));
    }
    found
}

fn number(text: &str) -> Option<f64> {
    text.replace(',', "").parse::<f64>().ok()
}

fn period_of(word: &str) -> Option<Result<BudgetPeriod, ()>> {
    match word {
        "day" | "daily" => Some(Ok(BudgetPeriod::Day)),
        "week" | "weekly" => Some(Ok(BudgetPeriod::Week)),
        "month" | "monthly" => Some(Ok(BudgetPeriod::Month)),
        "year" | "yearly" | "annually" | "annual" => Some(Err(())),
        _ => None,
    }
}

/// A budget amount: dollars or tokens, per period, with the words.
struct BudgetWords {
    period: BudgetPeriod,
    usd: Option<f64>,
    tokens: Option<u64>,
    words: String,
}

/// The period after `end` ("a month") or before `start` ("monthly budget of"); takes its words.
fn period_near(
    text: &mut Text,
    start: usize,
    end: usize,
    what: &str,
) -> Result<(BudgetPeriod, Range<usize>), Question> {
    let after = text.find_at(&PERIOD_AFTER, end);
    let before = PERIOD_BEFORE
        .captures(&text.s[..start])
        .map(|c| (c.get(0).expect("group 0").range(), c[1].to_string()));
    let (range, word) = match (after, before) {
        (Some((range, g)), _) => (range, g[1].clone().or(g[2].clone()).unwrap_or_default()),
        (None, Some((range, word))) if text.free(&range) => (range, word),
        _ => {
            return Err(ask(
                "spec.budgets",
                format!("Is {what} per day, per week or per month? Say e.g. \"{what} a month\"."),
            ));
        }
    };
    match period_of(&word) {
        Some(Ok(period)) => {
            text.take(range.clone());
            Ok((period, range))
        }
        _ => Err(ask(
            "spec.budgets",
            format!(
                "Budgets reset every day, week or month, not every {word}. Which of the three for {what}?"
            ),
        )),
    }
}

impl Text {
    /// A match of an `^`-anchored pattern at byte `at`, if the text there is free.
    fn find_at(&self, re: &Regex, at: usize) -> Option<(Range<usize>, Vec<Option<String>>)> {
        let c = re.captures(&self.s[at..])?;
        let range = c.get(0)?.range();
        let range = at + range.start..at + range.end;
        self.free(&range).then(|| (range, groups(&c)))
    }
}

fn money_budgets(text: &mut Text) -> Result<Vec<BudgetWords>, Question> {
    let mut out = Vec::new();
    for (range, g) in text.find(&MONEY) {
        let words = text.words(range.clone());
        let currency = g[1]
            .clone()
            .or(g[2].clone())
            .or(g[7].clone())
            .unwrap_or_default();
        if !matches!(
            currency.as_str(),
            "$" | "usd" | "dollar" | "dollars" | "bucks"
        ) {
            return Err(ask(
                "spec.budgets",
                format!(
                    "\"{words}\" is not in US dollars; budgets are in US dollars. How many dollars?"
                ),
            ));
        }
        let amount = number(g[3].as_deref().or(g[5].as_deref()).unwrap_or_default()).unwrap_or(0.0)
            * if g[4].is_some() || g[6].is_some() {
                1000.0
            } else {
                1.0
            };
        if amount <= 0.0 {
            return Err(ask(
                "spec.budgets",
                format!("\"{words}\" is not a positive amount. How much may be spent?"),
            ));
        }
        text.take(range.clone());
        let (period, period_range) = period_near(text, range.start, range.end, &words)?;
        let all = range.start.min(period_range.start)..range.end.max(period_range.end);
        out.push(BudgetWords {
            period,
            usd: Some(amount),
            tokens: None,
            words: text.words(all),
        });
    }
    Ok(out)
}

fn token_budgets(text: &mut Text) -> Result<Vec<BudgetWords>, Question> {
    let mut out = Vec::new();
    for (range, g) in text.find(&TOKEN_BUDGET) {
        let words = text.words(range.clone());
        let multiplier = match g[2].as_deref() {
            Some("k" | "thousand") => 1e3,
            Some("m" | "million") => 1e6,
            _ => 1.0,
        };
        let count = number(g[1].as_deref().unwrap_or_default()).unwrap_or(0.0) * multiplier;
        if count < 1.0 || count.fract() != 0.0 {
            return Err(ask(
                "spec.budgets",
                format!("\"{words}\" is not a whole number of tokens. How many tokens?"),
            ));
        }
        text.take(range.clone());
        let (period, period_range) = period_near(text, range.start, range.end, &words)?;
        out.push(BudgetWords {
            period,
            usd: None,
            tokens: Some(count as u64),
            words: text.words(range.start..period_range.end.max(range.end)),
        });
    }
    Ok(out)
}

/// Merges dollar and token caps of one period into one budget; two dollar caps for one period are a question.
fn budget_fields(
    budgets: &[BudgetWords],
    fields: &mut Vec<Field>,
) -> Result<Vec<Budget>, Question> {
    let mut out: Vec<(Budget, Vec<String>)> = Vec::new();
    for b in budgets {
        let existing = out.iter_mut().find(|(x, _)| x.period == b.period);
        match existing {
            Some((x, words)) => {
                if (b.usd.is_some() && x.max_cost_usd.is_some())
                    || (b.tokens.is_some() && x.max_tokens.is_some())
                {
                    return Err(ask(
                        "spec.budgets",
                        format!(
                            "Two budgets per {}: \"{}\" and \"{}\". Which one?",
                            b.period.as_str().to_lowercase(),
                            words.join(", "),
                            b.words
                        ),
                    ));
                }
                x.max_cost_usd = x.max_cost_usd.or(b.usd);
                x.max_tokens = x.max_tokens.or(b.tokens);
                words.push(b.words.clone());
            }
            None => out.push((
                Budget {
                    period: b.period,
                    max_cost_usd: b.usd,
                    max_tokens: b.tokens,
                    time_zone: "UTC".into(),
                    window: Default::default(),
                },
                vec![b.words.clone()],
            )),
        }
    }
    out.sort_by_key(|(b, _)| b.period);
    for (b, words) in &out {
        let mut caps = Vec::new();
        caps.extend(b.max_cost_usd.map(|usd| format!("${usd}")));
        caps.extend(b.max_tokens.map(|t| format!("{t} tokens")));
        fields.push(Field {
            field: "spec.budgets",
            value: format!("{} per {} (UTC)", caps.join(" and "), b.period.as_str()),
            from: words
                .iter()
                .map(|w| format!("\"{w}\""))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    if out.is_empty() {
        fields.push(Field {
            field: "spec.budgets",
            value: "none".into(),
            from: "the sentence names no budget".into(),
        });
    }
    Ok(out.into_iter().map(|(b, _)| b).collect())
}

fn rate_limit(text: &mut Text, fields: &mut Vec<Field>) -> Result<Option<RateLimit>, Question> {
    let mut limit = RateLimit::default();
    let mut matches = text.find(&RATE);
    matches.extend(text.find(&RATE_ABBR).into_iter().map(|(range, g)| {
        let (what, unit) = match g[3].as_deref() {
            Some("rpm") => ("requests", "minute"),
            Some("tpm") => ("tokens", "minute"),
            Some("rps") => ("requests", "second"),
            _ => ("requests", "hour"),
        };
        (
            range,
            vec![
                g[0].clone(),
                g[1].clone(),
                g[2].clone(),
                Some(what.to_string()),
                Some(unit.to_string()),
            ],
        )
    }));
    for (range, g) in matches {
        let words = text.words(range.clone());
        let count = number(g[1].as_deref().unwrap_or_default()).unwrap_or(0.0)
            * if g[2].is_some() { 1000.0 } else { 1.0 };
        let per_minute = match g[4].as_deref().unwrap_or_default() {
            "second" | "sec" | "s" => count * 60.0,
            "hour" | "hr" | "h" => count / 60.0,
            _ => count,
        };
        if per_minute < 1.0 || per_minute.fract() != 0.0 {
            return Err(ask(
                "spec.rateLimit",
                format!(
                    "Rate limits count per minute; \"{words}\" is {per_minute:.2} per minute. How many per minute (a whole number)?"
                ),
            ));
        }
        let is_tokens = g[3].as_deref().unwrap_or_default().starts_with("token");
        let already = if is_tokens {
            limit.tokens_per_minute.is_some()
        } else {
            limit.requests_per_minute.is_some()
        };
        if already {
            return Err(ask(
                "spec.rateLimit",
                format!(
                    "Two {} rate limits; is \"{words}\" the one meant?",
                    if is_tokens { "token" } else { "request" }
                ),
            ));
        }
        if is_tokens {
            limit.tokens_per_minute = Some(per_minute as u64);
        } else {
            let requests = u32::try_from(per_minute as u64).map_err(|_| {
                ask(
                    "spec.rateLimit",
                    format!("\"{words}\" is more requests per minute than a limit can hold."),
                )
            })?;
            limit.requests_per_minute = Some(requests);
        }
        fields.push(Field {
            field: "spec.rateLimit",
            value: format!(
                "{} {} per minute",
                per_minute as u64,
                if is_tokens { "tokens" } else { "requests" }
            ),
            from: format!("\"{words}\""),
        });
        text.take(range);
    }
    Ok((limit != RateLimit::default()).then_some(limit))
}

fn month_number(name: &str) -> u32 {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    MONTHS
        .iter()
        .position(|m| name.starts_with(m))
        .map_or(0, |i| i as u32 + 1)
}

fn small_number(word: &str) -> Option<u32> {
    const WORDS: [&str; 13] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve",
    ];
    match word {
        "a" | "an" => Some(1),
        _ => word
            .parse()
            .ok()
            .or_else(|| WORDS.iter().position(|w| *w == word).map(|i| i as u32)),
    }
}

/// The end of `day` (UTC), i.e. the start of the next day: "until March 31" includes March 31.
fn end_of(day: NaiveDate) -> DateTime<Utc> {
    (day + Duration::days(1))
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
}

/// The next `month`/`day` on or after `today`.
fn next_occurrence(
    today: NaiveDate,
    month: u32,
    day: u32,
    words: &str,
) -> Result<NaiveDate, Question> {
    for year in today.year()..today.year() + 8 {
        if let Some(date) = NaiveDate::from_ymd_opt(year, month, day)
            && date >= today
        {
            return Ok(date);
        }
    }
    Err(ask(
        "spec.expiresAt",
        format!("\"{words}\" is not a date. Which day?"),
    ))
}

fn explicit_date(
    year: i32,
    month: u32,
    day: u32,
    words: &str,
    today: NaiveDate,
) -> Result<NaiveDate, Question> {
    let date = NaiveDate::from_ymd_opt(year, month, day).ok_or_else(|| {
        ask(
            "spec.expiresAt",
            format!("\"{words}\" is not a date. Which day?"),
        )
    })?;
    if date < today {
        return Err(ask(
            "spec.expiresAt",
            format!(
                "\"{words}\" is in the past (today is {today}). Which day should the token end?"
            ),
        ));
    }
    Ok(date)
}

/// The date expression right after an "until" keyword, as the last day included.
fn date_after(
    text: &Text,
    at: usize,
    today: NaiveDate,
) -> Result<Option<(NaiveDate, usize)>, Question> {
    let year_of = |g: &Option<String>| g.as_deref().and_then(|y| y.parse::<i32>().ok());
    if let Some((range, g)) = text.find_at(&ISO_DATE, at) {
        let words = text.words(range.clone());
        let (y, m, d) = (
            year_of(&g[1]).unwrap_or(0),
            g[2].as_deref().unwrap_or("0").parse().unwrap_or(0),
            g[3].as_deref().unwrap_or("0").parse().unwrap_or(0),
        );
        return Ok(Some((explicit_date(y, m, d, &words, today)?, range.end)));
    }
    if let Some((range, _)) = text.find_at(&SLASH_DATE, at) {
        let words = text.words(range);
        return Err(ask(
            "spec.expiresAt",
            format!(
                "\"{words}\" can be read as day/month or month/day. Write the date as YYYY-MM-DD or with the month's name (\"March 4\")."
            ),
        ));
    }
    let month_day = text.find_at(&MONTH_DAY, at).map(|(r, g)| {
        (
            r,
            month_number(g[1].as_deref().unwrap_or_default()),
            g[2].clone(),
            g[3].clone(),
        )
    });
    let day_month = text.find_at(&DAY_MONTH, at).map(|(r, g)| {
        (
            r,
            month_number(g[2].as_deref().unwrap_or_default()),
            g[1].clone(),
            g[3].clone(),
        )
    });
    if let Some((range, month, day, year)) = month_day.or(day_month) {
        let words = text.words(range.clone());
        let day: u32 = day.as_deref().unwrap_or("0").parse().unwrap_or(0);
        let date = match year_of(&year) {
            Some(y) => explicit_date(y, month, day, &words, today)?,
            None => next_occurrence(today, month, day, &words)?,
        };
        return Ok(Some((date, range.end)));
    }
    if let Some((range, g)) = text.find_at(&END_OF, at) {
        let unit = g[1].clone().or(g[2].clone()).unwrap_or_default();
        let date = match unit.as_str() {
            "year" => NaiveDate::from_ymd_opt(today.year(), 12, 31),
            "month" => today
                .checked_add_months(Months::new(1))
                .and_then(|d| d.with_day(1))
                .map(|d| d - Duration::days(1)),
            _ => {
                Some(today + Duration::days(i64::from(6 - today.weekday().num_days_from_monday())))
            }
        };
        return Ok(date.map(|d| (d, range.end)));
    }
    if let Some((range, g)) = text.find_at(&RELATIVE_DAY, at) {
        let word = g[1].clone().unwrap_or_default();
        let date = match word.as_str() {
            "today" => today,
            "tomorrow" => today + Duration::days(1),
            day => {
                let target: Weekday = day
                    .parse()
                    .map_err(|_| ask("spec.expiresAt", format!("\"{day}\" is not a day.")))?;
                let ahead = (7 + target.num_days_from_monday() as i64
                    - today.weekday().num_days_from_monday() as i64)
                    % 7;
                today + Duration::days(ahead)
            }
        };
        return Ok(Some((date, range.end)));
    }
    Ok(None)
}

fn expiry(
    text: &mut Text,
    now: DateTime<Utc>,
    fields: &mut Vec<Field>,
) -> Result<Option<DateTime<Utc>>, Question> {
    let today = now.date_naive();
    let mut found: Vec<(DateTime<Utc>, String, String)> = Vec::new();
    for (range, _) in text.find(&UNTIL) {
        let keyword = text.words(range.clone());
        let Some((day, end)) = date_after(text, range.end, today)? else {
            let rest: String = text.s[range.end..]
                .split([',', ';'])
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            return Err(ask(
                "spec.expiresAt",
                format!(
                    "\"{keyword} {rest}\": I cannot read that date. Write it as YYYY-MM-DD, \"March 31\", \"the end of the year\" or \"for 30 days\"."
                ),
            ));
        };
        let words = text.words(range.start..end);
        text.take(range.start..end);
        found.push((end_of(day), words, format!("the end of {day}, UTC")));
    }
    for (range, g) in text.find(&FOR_DURATION) {
        let words = text.words(range.clone());
        let n = small_number(g[1].as_deref().unwrap_or_default()).unwrap_or(0);
        let unit = g[2].clone().unwrap_or_default();
        let at = if unit.starts_with("day") {
            now.checked_add_signed(Duration::days(i64::from(n)))
        } else if unit.starts_with("week") {
            now.checked_add_signed(Duration::weeks(i64::from(n)))
        } else {
            now.checked_add_months(Months::new(
                n * if unit.starts_with("year") { 12 } else { 1 },
            ))
        };
        let at = at.filter(|_| n > 0).ok_or_else(|| {
            ask(
                "spec.expiresAt",
                format!("\"{words}\" is not a usable duration. For how long?"),
            )
        })?;
        text.take(range);
        found.push((
            at,
            words,
            format!(
                "{} from now ({})",
                g[1].as_deref().unwrap_or_default().to_string() + " " + &unit,
                now.to_rfc3339()
            ),
        ));
    }
    match found.len() {
        0 => {
            fields.push(Field {
                field: "spec.expiresAt",
                value: "none (valid until revoked)".into(),
                from: "the sentence names no end".into(),
            });
            Ok(None)
        }
        1 => {
            let (at, words, how) = found.remove(0);
            fields.push(Field {
                field: "spec.expiresAt",
                value: format!("{} ({how})", at.to_rfc3339()),
                from: format!("\"{words}\""),
            });
            Ok(Some(at))
        }
        _ => Err(ask(
            "spec.expiresAt",
            format!(
                "The sentence gives {} ends: {}. Which one?",
                found.len(),
                found
                    .iter()
                    .map(|f| format!("\"{}\"", f.1))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        )),
    }
}

fn classification(
    text: &mut Text,
    fields: &mut Vec<Field>,
) -> Result<DataClassification, Question> {
    let mut found: Vec<(DataClassification, String)> = Vec::new();
    for (range, g) in text.find(&CLASSIFICATION) {
        let level = DataClassification::parse(g[1].as_deref().unwrap_or_default())
            .expect("the pattern only matches levels");
        found.push((level, text.words(range.clone())));
        text.take(range);
    }
    let levels: BTreeSet<DataClassification> = found.iter().map(|f| f.0).collect();
    match levels.len() {
        0 => {
            fields.push(Field {
                field: "spec.maxDataClassification",
                value: "Internal".into(),
                from: "the default: the sentence names no data classification".into(),
            });
            Ok(DataClassification::Internal)
        }
        1 => {
            fields.push(Field {
                field: "spec.maxDataClassification",
                value: found[0].0.as_str().into(),
                from: format!("\"{}\"", found[0].1),
            });
            Ok(found[0].0)
        }
        _ => Err(ask(
            "spec.maxDataClassification",
            format!(
                "The sentence names {}; a token has one highest data classification. Which is the highest it may send?",
                levels
                    .iter()
                    .map(|l| l.as_str())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        )),
    }
}

/// Positions of registered names in the free text, longest names first.
fn registered_mentions(text: &Text, registry: &Registry) -> Vec<(Range<usize>, usize, String)> {
    let mut names: Vec<(&str, usize)> = registry
        .models
        .iter()
        .enumerate()
        .flat_map(|(i, m)| m.names.iter().map(move |n| (n.as_str(), i)))
        .collect();
    names.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(b.0)));
    let mut taken = vec![false; text.s.len()];
    let mut out = Vec::new();
    for (name, index) in names {
        let pattern = format!(r"(?:^|[\s,(]){}(?:$|[\s,;.)])", regex::escape(name));
        let re = Regex::new(&pattern).expect("an escaped name is a valid pattern");
        for m in re.find_iter(&text.s) {
            let start = m.start() + m.as_str().find(name).unwrap_or(0);
            let range = start..start + name.len();
            if text.free(&range) && !taken[range.clone()].iter().any(|t| *t) {
                taken[range.clone()].iter_mut().for_each(|t| *t = true);
                out.push((range, index, name.to_string()));
            }
        }
    }
    out.sort_by_key(|(r, _, _)| r.start);
    out
}

/// Words that end the list of models after "use".
fn ends_model_list(word: &str) -> bool {
    matches!(
        word,
        "for"
            | "with"
            | "until"
            | "till"
            | "through"
            | "at"
            | "up"
            | "from"
            | "in"
            | "on"
            | "during"
            | "to"
            | "as"
    )
}

fn models(
    text: &mut Text,
    registry: &Registry,
    fields: &mut Vec<Field>,
) -> Result<Vec<(String, String)>, Question> {
    let mut models: Vec<(String, String)> = Vec::new();
    for (range, _) in text.find(&ANY_MODEL) {
        models.push((
            "*".into(),
            format!("\"{}\": every registered model", text.words(range.clone())),
        ));
        text.take(range);
    }
    for (range, index, name) in registered_mentions(text, registry) {
        let m = &registry.models[index];
        let how = if name == m.model.to_lowercase() {
            format!("\"{name}\", registered as {}", m.deployment)
        } else {
            format!(
                "\"{name}\": ModelDeployment {} serves {}",
                m.deployment, m.model
            )
        };
        if !models.iter().any(|(x, _)| x == &m.model) {
            models.push((m.model.clone(), how));
        }
        text.take(range);
    }
    // Whatever else stands where models are named is an unknown model.
    for (range, _) in text.find(&MODEL_VERB) {
        let mut unknown = Vec::new();
        for word in text.s[range.end..].split(' ') {
            let at = word.as_ptr() as usize - text.s.as_ptr() as usize;
            let clean = word.trim_end_matches([',', ';']);
            if ends_model_list(clean)
                || clean.starts_with('$')
                || clean.chars().next().is_some_and(|c| c.is_ascii_digit()) && !clean.contains('-')
            {
                break;
            }
            if text.free(&(at..at + clean.len())) && !is_filler(clean) && !clean.is_empty() {
                unknown.push(clean.to_string());
            }
            if word.ends_with([',', ';']) {
                break;
            }
        }
        if !unknown.is_empty() {
            return Err(ask(
                "spec.allowedModels",
                format!(
                    "{} not in the model registry. Registered models: {}. Which did you mean, or register it first?",
                    unknown
                        .iter()
                        .map(|u| format!("\"{u}\" is"))
                        .collect::<Vec<_>>()
                        .join(" and "),
                    registry.known_names()
                ),
            ));
        }
        text.take(range);
    }
    if models.is_empty() {
        return Err(ask(
            "spec.allowedModels",
            format!(
                "Which models may it call? Name registered models, e.g. \"may use gpt-4o-mini\" (registered: {}), or \"any model\".",
                registry.known_names()
            ),
        ));
    }
    for (model, how) in &models {
        fields.push(Field {
            field: "spec.allowedModels",
            value: model.clone(),
            from: how.clone(),
        });
    }
    Ok(models)
}

/// Use cases from "for <words>" and "use case <name>", checked against the models' approved use cases.
fn use_cases(
    text: &mut Text,
    models: &[(String, String)],
    registry: &Registry,
    fields: &mut Vec<Field>,
) -> Result<Vec<String>, Question> {
    let mut found: Vec<(String, String)> = Vec::new();
    for (range, g) in text.find(&USE_CASE_NAMED) {
        found.push((g[1].clone().unwrap_or_default(), text.words(range.clone())));
        text.take(range);
    }
    for (range, _) in text.find(&FOR_WORD) {
        let mut end = range.end;
        let mut words = Vec::new();
        for word in text.s[range.end..].split(' ') {
            let at = word.as_ptr() as usize - text.s.as_ptr() as usize;
            let clean = word.trim_end_matches([',', ';']);
            if clean.is_empty()
                || !text.free(&(at..at + clean.len()))
                || ends_model_list(clean)
                || clean.starts_with('$')
                || clean.chars().next().is_some_and(|c| c.is_ascii_digit())
            {
                break;
            }
            words.push(clean);
            end = at + clean.len();
            if word.ends_with([',', ';']) {
                break;
            }
        }
        let meaningful: Vec<&str> = words
            .iter()
            .copied()
            .filter(|w| !matches!(*w, "the" | "a" | "an"))
            .collect();
        if meaningful.is_empty() {
            continue;
        }
        let phrase = text.words(range.start..end);
        for part in meaningful.join(" ").split(" and ") {
            found.push((slug(part), phrase.clone()));
        }
        text.take(range.start..end);
    }
    let mut use_cases: Vec<String> = Vec::new();
    for (use_case, words) in &found {
        if use_case.is_empty() || use_cases.contains(use_case) {
            continue;
        }
        for (model, _) in models {
            let Some(m) = registry.models.iter().find(|m| &m.model == model) else {
                continue;
            };
            if !m.use_cases.is_empty() && !m.use_cases.contains(use_case) {
                return Err(ask(
                    "spec.allowedUseCases",
                    format!(
                        "{model} is approved only for {}; \"{use_case}\" (from \"{words}\") is not among them. Which use case did you mean?",
                        m.use_cases.join(", ")
                    ),
                ));
            }
        }
        fields.push(Field {
            field: "spec.allowedUseCases",
            value: use_case.clone(),
            from: format!("\"{words}\""),
        });
        use_cases.push(use_case.clone());
    }
    if use_cases.is_empty() {
        fields.push(Field {
            field: "spec.allowedUseCases",
            value: "any".into(),
            from: "the sentence names no use case".into(),
        });
    }
    Ok(use_cases)
}
