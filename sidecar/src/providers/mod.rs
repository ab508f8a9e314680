//! Provider adapters: what the enforcement point must know about each model
//! API it serves, and about each provider it forwards to.
//!
//! An [`Api`] is the shape of a request, fixed by its path: OpenAI's chat
//! completions, completions, embeddings and responses, Anthropic's messages,
//! and configured extra paths. [`ModelRequest`] parses a body of any of them
//! into the facts a decision needs (model, stream, the text the detectors
//! scan, token estimates) and rewrites it after the decision (redaction,
//! degrade, asking for streamed usage). [`Provider`] is where a request goes:
//! which APIs it takes and how its key is sent. Responses give back usage and
//! generated text through [`response`].
//!
//! The adapters are pure: no I/O, no clock. The request path
//! ([`crate::handler`], [`crate::pipeline`], [`crate::forward`]) calls them.

pub mod anthropic;
pub mod openai;
pub mod response;

use std::ops::Range;

use policybind_crds::wire::providers;
use serde_json::{Map, Value};

pub use response::{StreamText, Usage, UsageTracker, response_usage};

/// The model APIs the enforcement point decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// OpenAI `POST /v1/chat/completions`.
    ChatCompletions,
    /// OpenAI `POST /v1/completions`.
    Completions,
    /// OpenAI `POST /v1/embeddings`.
    Embeddings,
    /// OpenAI `POST /v1/responses`.
    Responses,
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// `GET /v1/models` (both SDKs).
    Models,
    /// A configured extra path (`--allow-path`): a JSON body with `model`, every
    /// string in it scanned.
    Extra,
}

impl Api {
    /// The API of a built-in path, if it is one.
    pub fn from_path(path: &str) -> Option<Api> {
        match path.strip_suffix('/').unwrap_or(path) {
            "/v1/chat/completions" => Some(Api::ChatCompletions),
            "/v1/completions" => Some(Api::Completions),
            "/v1/embeddings" => Some(Api::Embeddings),
            "/v1/responses" => Some(Api::Responses),
            "/v1/messages" => Some(Api::Messages),
            "/v1/models" => Some(Api::Models),
            _ => None,
        }
    }

    /// Label for metrics, logs and the audit record's `endpoint` detail.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat_completions",
            Api::Completions => "completions",
            Api::Embeddings => "embeddings",
            Api::Responses => "responses",
            Api::Messages => "messages",
            Api::Models => "models",
            Api::Extra => "extra",
        }
    }

    /// Whether errors and stream events take Anthropic's shapes.
    pub fn is_anthropic(self) -> bool {
        self == Api::Messages
    }
}

/// Where a request goes, from `ModelDeployment.spec.provider`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    OpenAi,
    Anthropic,
    AzureOpenAi,
    /// An OpenAI-compatible server (vLLM, TGI, Ollama, KServe); also any
    /// provider name the enforcement point does not know, sent to `--upstream`.
    SelfHosted,
    /// Registered for the record only (Bedrock, Vertex): requests need request
    /// signing the enforcement point does not do.
    NotRoutable,
}

impl Provider {
    pub fn parse(name: &str) -> Provider {
        match name {
            providers::OPENAI => Provider::OpenAi,
            providers::ANTHROPIC => Provider::Anthropic,
            providers::AZURE_OPENAI => Provider::AzureOpenAi,
            providers::BEDROCK | providers::VERTEX => Provider::NotRoutable,
            _ => Provider::SelfHosted,
        }
    }

    /// Whether this provider takes requests of `api`. Self-hosted servers are
    /// trusted to know their own APIs (vLLM serves OpenAI's and Anthropic's).
    pub fn accepts(self, api: Api) -> bool {
        match self {
            Provider::OpenAi | Provider::AzureOpenAi => !matches!(api, Api::Messages | Api::Extra),
            Provider::Anthropic => matches!(api, Api::Messages | Api::Models),
            Provider::SelfHosted => true,
            Provider::NotRoutable => false,
        }
    }

    /// The headers carrying the provider key, in the provider's own form.
    pub fn key_headers(self, key: &str) -> Vec<(http::HeaderName, String)> {
        use http::HeaderName;
        match self {
            Provider::Anthropic => vec![(HeaderName::from_static("x-api-key"), key.to_string())],
            Provider::AzureOpenAi => vec![(HeaderName::from_static("api-key"), key.to_string())],
            _ => vec![(http::header::AUTHORIZATION, format!("Bearer {key}"))],
        }
    }
}

/// Why a body could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is not a JSON object: {0}")]
    NotJson(String),
    #[error("the body has no string field \"model\"")]
    NoModel,
    #[error("field {0:?} has an unexpected type")]
    BadField(&'static str),
}

/// Tokens added per chat message for role and framing.
pub const TOKENS_PER_MESSAGE: u64 = 4;

/// How the prompt's tokens are estimated before a call (`--token-estimates`).
/// Estimates only size reservations and token thresholds; budgets are settled
/// with the usage the provider reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenEstimates {
    /// The model family's own tokenizer where it is public (tiktoken's
    /// `o200k_base` and `cl100k_base` for OpenAI models), the heuristic
    /// otherwise ([`policybind_engine::tokens`]). Each encoder in use costs
    /// memory once (about 46 MiB for `o200k_base`) and a BPE pass per request
    /// (about 30 µs per KiB of prompt).
    #[default]
    Exact,
    /// The heuristic for every family (ASCII characters per token, see
    /// [`policybind_engine::tokens::CHARS_PER_TOKEN`]): no encoder in memory,
    /// a few microseconds per request.
    Heuristic,
}

impl TokenEstimates {
    /// Estimated tokens of `text` for `model`.
    pub fn count(self, model: &str, text: &str) -> u64 {
        use policybind_engine::tokens;
        match self {
            TokenEstimates::Exact => tokens::estimate(model, text),
            TokenEstimates::Heuristic => tokens::count(tokens::heuristic(model), text),
        }
    }
}

/// A parsed request body with the facts taken from it.
#[derive(Debug, Clone)]
pub struct ModelRequest {
    pub api: Api,
    json: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// Every text the model reads, joined by newlines: what the detectors scan.
    pub prompt: String,
    /// Where each text lies in `prompt`, in the order the adapter visits them.
    spans: Vec<Range<usize>>,
    pub estimated_input_tokens: u64,
    pub estimated_output_tokens: u64,
    /// Whether the JSON was changed since parsing (the original bytes are sent otherwise).
    changed: bool,
}

/// What an adapter found in a body: the texts (visited in a fixed order, the
/// same as [`visit_texts`] uses to rewrite them), framing tokens, output cap.
struct Parsed {
    texts: Vec<String>,
    framing_tokens: u64,
    max_output: Option<u64>,
}

impl ModelRequest {
    /// Parses the body of a model call (not `GET /v1/models`).
    pub fn parse(
        api: Api,
        bytes: &[u8],
        default_output_tokens: u64,
        estimates: TokenEstimates,
    ) -> Result<ModelRequest, BodyError> {
        let mut json: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| BodyError::NotJson(e.to_string()))?;
        let model = match json.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            _ => return Err(BodyError::NoModel),
        };
        let stream = match json.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(BodyError::BadField("stream")),
        };
        let parsed = match api {
            Api::ChatCompletions | Api::Completions | Api::Embeddings | Api::Responses => {
                openai::parse(api, &mut json)?
            }
            Api::Messages => anthropic::parse(&mut json)?,
            Api::Extra => parse_extra(&mut json),
            Api::Models => Parsed {
                texts: vec![],
                framing_tokens: 0,
                max_output: None,
            },
        };
        let (prompt, spans) = join(parsed.texts);
        let estimated_input_tokens = estimates
            .count(&model, &prompt)
            .saturating_add(parsed.framing_tokens);
        let estimated_output_tokens = match api {
            Api::Embeddings | Api::Models => 0,
            _ => parsed.max_output.unwrap_or(default_output_tokens),
        };
        Ok(ModelRequest {
            api,
            json,
            model,
            stream,
            prompt,
            spans,
            estimated_input_tokens,
            estimated_output_tokens,
            changed: false,
        })
    }

    /// Rewrites every text from the findings of one scan of [`Self::prompt`]:
    /// `rewrite(text, range_in_prompt)` returns the new text of the part that
    /// lies at `range_in_prompt`. No text is scanned again.
    pub fn rewrite_texts(&mut self, mut rewrite: impl FnMut(&str, Range<usize>) -> Option<String>) {
        let spans = std::mem::take(&mut self.spans);
        let mut index = 0;
        let mut changed = false;
        visit_texts(self.api, &mut self.json, &mut |text: &mut String| {
            if let Some(span) = spans.get(index)
                && let Some(new) = rewrite(text, span.clone())
            {
                *text = new;
                changed = true;
            }
            index += 1;
        });
        self.spans = spans;
        self.changed |= changed;
    }

    /// Rewrites the model and caps the output tokens (Degrade).
    pub fn degrade(&mut self, model: Option<&str>, max_tokens: Option<u32>) {
        if let Some(model) = model {
            self.json
                .insert("model".into(), Value::String(model.to_string()));
            self.model = model.to_string();
            self.changed = true;
        }
        if let Some(cap) = max_tokens {
            let cap = u64::from(cap);
            let (keys, insert): (&[&str], &str) = match self.api {
                Api::Responses => (&["max_output_tokens"], "max_output_tokens"),
                Api::Messages => (&["max_tokens"], "max_tokens"),
                _ => (&["max_tokens", "max_completion_tokens"], "max_tokens"),
            };
            let mut capped = false;
            for key in keys {
                if let Some(v) = self.json.get_mut(*key) {
                    *v = Value::from(v.as_u64().unwrap_or(u64::MAX).min(cap));
                    capped = true;
                }
            }
            if !capped {
                self.json.insert(insert.into(), Value::from(cap));
            }
            self.estimated_output_tokens = self.estimated_output_tokens.min(cap);
            self.changed = true;
        }
    }

    /// Asks for usage in the final chunk of a stream (`stream_options.include_usage`,
    /// chat and completions only: the other APIs always report it), unless the
    /// caller already decided.
    pub fn request_stream_usage(&mut self) {
        if !self.stream || !matches!(self.api, Api::ChatCompletions | Api::Completions) {
            return;
        }
        let options = self
            .json
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(o) = options
            && !o.contains_key("include_usage")
        {
            o.insert("include_usage".into(), Value::Bool(true));
            self.changed = true;
        }
    }

    /// The body to send: the original bytes when nothing changed.
    pub fn into_body(self, original: bytes::Bytes) -> bytes::Bytes {
        if self.changed {
            bytes::Bytes::from(
                serde_json::to_vec(&self.json).expect("a JSON map always serializes"),
            )
        } else {
            original
        }
    }

    /// The JSON as it would be sent (tests).
    pub fn json(&self) -> &Map<String, Value> {
        &self.json
    }
}

/// Joins texts with newlines and remembers where each lies.
fn join(texts: Vec<String>) -> (String, Vec<Range<usize>>) {
    let mut prompt = String::with_capacity(texts.iter().map(|t| t.len() + 1).sum());
    let mut spans = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        if i > 0 {
            prompt.push('\n');
        }
        let start = prompt.len();
        prompt.push_str(text);
        spans.push(start..prompt.len());
    }
    (prompt, spans)
}

/// Calls `f` on every text of a body of `api`, in the order the parser collects them.
fn visit_texts(api: Api, json: &mut Map<String, Value>, f: &mut dyn FnMut(&mut String)) {
    match api {
        Api::ChatCompletions | Api::Completions | Api::Embeddings | Api::Responses => {
            openai::visit(api, json, f)
        }
        Api::Messages => anthropic::visit(json, f),
        Api::Extra => {
            for (key, value) in json.iter_mut() {
                if key != "model" {
                    visit_all_strings(value, f);
                }
            }
        }
        Api::Models => {}
    }
}

/// Every string below `value`, depth first.
fn visit_all_strings(value: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter_mut().for_each(|v| visit_all_strings(v, f)),
        Value::Object(map) => map.values_mut().for_each(|v| visit_all_strings(v, f)),
        _ => {}
    }
}

fn parse_extra(json: &mut Map<String, Value>) -> Parsed {
    let mut texts = vec![];
    visit_texts(Api::Extra, json, &mut |s: &mut String| {
        texts.push(s.clone())
    });
    let max_output = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| json.get(*k).and_then(Value::as_u64));
    Parsed {
        texts,
        framing_tokens: 0,
        max_output,
    }
}

/// Collects a text field that may be a string or an array of strings (token id
/// arrays are skipped: nothing to scan).
fn collect_strings(
    value: Option<&Value>,
    field: &'static str,
    out: &mut Vec<String>,
) -> Result<(), BodyError> {
    match value {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) => {
            out.push(s.clone());
            Ok(())
        }
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    Value::Number(_) | Value::Array(_) => {}
                    _ => return Err(BodyError::BadField(field)),
                }
            }
            Ok(())
        }
        Some(_) => Err(BodyError::BadField(field)),
    }
}

/// The rewriting twin of [`collect_strings`].
fn visit_strings(value: Option<&mut Value>, f: &mut dyn FnMut(&mut String)) {
    match value {
        Some(Value::String(s)) => f(s),
        Some(Value::Array(items)) => {
            for item in items {
                if let Value::String(s) = item {
                    f(s);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
