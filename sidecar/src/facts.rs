//! Reading and rewriting OpenAI-compatible request and response bodies.
//!
//! The request path needs four things from a body: the model, whether it streams,
//! the text the detectors must see, and a token estimate for budgets and rate
//! limits. After the decision it may need to rewrite the body (redaction,
//! degrade). Responses give back the actual `usage`, either in the JSON body or,
//! for streams, in the final SSE chunk.
//!
//! Token estimation is a documented heuristic, not a tokenizer: input tokens are
//! `ceil(characters / 4)` of all message text plus 4 per chat message (role and
//! framing); output tokens are `max_tokens` (or `max_completion_tokens`) when the
//! caller sets it, otherwise a configured default. The estimate only sizes the
//! reservation; budgets are settled with the `usage` the model reports.

use serde::Deserialize;
use serde_json::{Map, Value};

/// The OpenAI-compatible endpoints the sidecar understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Models,
}

impl Endpoint {
    /// The endpoint of a request path, if it is one the sidecar forwards.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        match path.trim_end_matches('/') {
            "/v1/chat/completions" => Some(Endpoint::ChatCompletions),
            "/v1/completions" => Some(Endpoint::Completions),
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            "/v1/models" => Some(Endpoint::Models),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Models => "models",
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

/// A parsed request body with the facts taken from it.
#[derive(Debug, Clone)]
pub struct RequestBody {
    pub endpoint: Endpoint,
    pub json: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// Text the detectors scan: every message/prompt/input string joined by newlines.
    pub prompt: String,
    pub estimated_input_tokens: u64,
    pub estimated_output_tokens: u64,
}

/// Characters per token of the estimation heuristic.
pub const CHARS_PER_TOKEN: u64 = 4;
/// Tokens added per chat message for role and framing.
pub const TOKENS_PER_MESSAGE: u64 = 4;

impl RequestBody {
    /// Parses a body of a model endpoint (not `/v1/models`).
    pub fn parse(
        endpoint: Endpoint,
        bytes: &[u8],
        default_output_tokens: u64,
    ) -> Result<RequestBody, BodyError> {
        let json: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| BodyError::NotJson(e.to_string()))?;
        let model = json
            .get("model")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .ok_or(BodyError::NoModel)?
            .to_string();
        let stream = match json.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(BodyError::BadField("stream")),
        };
        let mut texts: Vec<&str> = vec![];
        let mut messages = 0u64;
        match endpoint {
            Endpoint::ChatCompletions => {
                let list = json
                    .get("messages")
                    .and_then(Value::as_array)
                    .ok_or(BodyError::BadField("messages"))?;
                for message in list {
                    messages += 1;
                    collect_content(message.get("content"), &mut texts)?;
                }
            }
            Endpoint::Completions => collect_strings(json.get("prompt"), "prompt", &mut texts)?,
            Endpoint::Embeddings => collect_strings(json.get("input"), "input", &mut texts)?,
            Endpoint::Models => {}
        }
        let prompt = texts.join("\n");
        let chars = prompt.chars().count() as u64;
        let estimated_input_tokens =
            chars.div_ceil(CHARS_PER_TOKEN) + messages * TOKENS_PER_MESSAGE;
        let max_output = ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|k| json.get(*k).and_then(Value::as_u64));
        let estimated_output_tokens = match endpoint {
            Endpoint::Embeddings | Endpoint::Models => 0,
            _ => max_output.unwrap_or(default_output_tokens),
        };
        Ok(RequestBody {
            endpoint,
            json,
            model,
            stream,
            prompt,
            estimated_input_tokens,
            estimated_output_tokens,
        })
    }

    /// Applies `f` to every text the model will read, in place (redaction).
    pub fn rewrite_texts(&mut self, mut f: impl FnMut(&str) -> String) {
        let key = match self.endpoint {
            Endpoint::ChatCompletions => "messages",
            Endpoint::Completions => "prompt",
            Endpoint::Embeddings => "input",
            Endpoint::Models => return,
        };
        let Some(value) = self.json.get_mut(key) else {
            return;
        };
        match self.endpoint {
            Endpoint::ChatCompletions => {
                for message in value.as_array_mut().into_iter().flatten() {
                    match message.get_mut("content") {
                        Some(Value::String(s)) => *s = f(s),
                        Some(Value::Array(parts)) => {
                            for part in parts {
                                if let Some(Value::String(s)) = part.get_mut("text") {
                                    *s = f(s);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => match value {
                Value::String(s) => *s = f(s),
                Value::Array(items) => {
                    for item in items {
                        if let Value::String(s) = item {
                            *s = f(s);
                        }
                    }
                }
                _ => {}
            },
        }
    }

    /// Rewrites the model and caps the output tokens (Degrade).
    pub fn degrade(&mut self, model: Option<&str>, max_tokens: Option<u32>) {
        if let Some(model) = model {
            self.json
                .insert("model".into(), Value::String(model.to_string()));
            self.model = model.to_string();
        }
        if let Some(cap) = max_tokens {
            let cap = u64::from(cap);
            let mut capped = false;
            for key in ["max_tokens", "max_completion_tokens"] {
                if let Some(v) = self.json.get_mut(key) {
                    let current = v.as_u64().unwrap_or(u64::MAX);
                    *v = Value::from(current.min(cap));
                    capped = true;
                }
            }
            if !capped {
                self.json.insert("max_tokens".into(), Value::from(cap));
            }
            self.estimated_output_tokens = self.estimated_output_tokens.min(cap);
        }
    }

    /// Asks the upstream to report usage in the final chunk of a stream
    /// (`stream_options.include_usage`), unless the caller already decided.
    pub fn request_stream_usage(&mut self) {
        if !self.stream {
            return;
        }
        let options = self
            .json
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(o) = options {
            o.entry("include_usage").or_insert(Value::Bool(true));
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.json).expect("a JSON map always serializes")
    }
}

fn collect_content<'a>(
    content: Option<&'a Value>,
    out: &mut Vec<&'a str>,
) -> Result<(), BodyError> {
    match content {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) => {
            out.push(s);
            Ok(())
        }
        Some(Value::Array(parts)) => {
            for part in parts {
                if let Some(text) = part.get("text").and_then(Value::as_str) {
                    out.push(text);
                }
            }
            Ok(())
        }
        Some(_) => Err(BodyError::BadField("messages[].content")),
    }
}

fn collect_strings<'a>(
    value: Option<&'a Value>,
    field: &'static str,
    out: &mut Vec<&'a str>,
) -> Result<(), BodyError> {
    match value {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) => {
            out.push(s);
            Ok(())
        }
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(s) => out.push(s),
                    // Pre-tokenized input (arrays of token ids): nothing to scan.
                    Value::Number(_) | Value::Array(_) => {}
                    _ => return Err(BodyError::BadField(field)),
                }
            }
            Ok(())
        }
        Some(_) => Err(BodyError::BadField(field)),
    }
}

/// `usage` as OpenAI-compatible servers report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub struct ReportedUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<ReportedUsage>,
}

/// The `usage` of a complete JSON response, if it has one.
pub fn response_usage(body: &[u8]) -> Option<ReportedUsage> {
    serde_json::from_slice::<WithUsage>(body).ok()?.usage
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    usage: Option<ReportedUsage>,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<ChunkDelta>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
}

/// Follows a server-sent event stream chunk by chunk, without holding more than
/// one partial line: remembers the `usage` of the final chunk when the upstream
/// sends one, and otherwise counts the characters of generated text so the
/// request can be settled with an estimate.
#[derive(Debug, Default)]
pub struct StreamUsage {
    partial: Vec<u8>,
    pub reported: Option<ReportedUsage>,
    pub generated_chars: u64,
}

/// Longest SSE line kept while waiting for its end; longer lines are skipped
/// (they still reach the client, they are just not inspected).
const MAX_LINE: usize = 1 << 20;

impl StreamUsage {
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(newline);
            rest = &tail[1..];
            if self.partial.is_empty() {
                self.line(line);
            } else {
                let mut full = std::mem::take(&mut self.partial);
                full.extend_from_slice(line);
                self.line(&full);
            }
        }
        if self.partial.len() + rest.len() <= MAX_LINE {
            self.partial.extend_from_slice(rest);
        } else {
            self.partial.clear();
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<Chunk>(data) else {
            return;
        };
        if let Some(usage) = chunk.usage {
            self.reported = Some(usage);
        }
        for choice in chunk.choices {
            let text = choice.delta.and_then(|d| d.content).or(choice.text);
            if let Some(text) = text {
                self.generated_chars += text.chars().count() as u64;
            }
        }
    }

    /// Output tokens estimated from the text seen (chars/4), for streams without usage.
    pub fn counted_output_tokens(&self) -> u64 {
        self.generated_chars.div_ceil(CHARS_PER_TOKEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_body_gives_model_text_and_estimates() {
        let body = br#"{"model":"m","max_tokens":50,"messages":[
            {"role":"system","content":"12345678"},
            {"role":"user","content":[{"type":"text","text":"abcd"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        let parsed = RequestBody::parse(Endpoint::ChatCompletions, body, 256).unwrap();
        assert_eq!(parsed.model, "m");
        assert_eq!(parsed.prompt, "12345678\nabcd");
        // 13 chars -> 4 tokens, plus 2 messages x 4.
        assert_eq!(parsed.estimated_input_tokens, 12);
        assert_eq!(parsed.estimated_output_tokens, 50);
        assert!(!parsed.stream);
    }

    #[test]
    fn missing_model_and_bad_json_are_errors() {
        assert_eq!(
            RequestBody::parse(Endpoint::Completions, br#"{"prompt":"x"}"#, 1).unwrap_err(),
            BodyError::NoModel
        );
        assert!(matches!(
            RequestBody::parse(Endpoint::Completions, b"{", 1),
            Err(BodyError::NotJson(_))
        ));
        assert_eq!(
            RequestBody::parse(Endpoint::ChatCompletions, br#"{"model":"m"}"#, 1).unwrap_err(),
            BodyError::BadField("messages")
        );
    }

    #[test]
    fn redaction_rewrites_every_text_and_keeps_the_rest() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"a secret"},
            {"role":"user","content":[{"type":"text","text":"another secret"}]}],"temperature":0.5}"#;
        let mut parsed = RequestBody::parse(Endpoint::ChatCompletions, body, 1).unwrap();
        parsed.rewrite_texts(|s| s.replace("secret", "***"));
        let out: Value = serde_json::from_slice(&parsed.to_bytes()).unwrap();
        assert_eq!(out["messages"][0]["content"], "a ***");
        assert_eq!(out["messages"][1]["content"][0]["text"], "another ***");
        assert_eq!(out["temperature"], 0.5);
    }

    #[test]
    fn degrade_rewrites_model_and_caps_max_tokens() {
        let body = br#"{"model":"big","prompt":["x"],"max_tokens":1000}"#;
        let mut parsed = RequestBody::parse(Endpoint::Completions, body, 1).unwrap();
        parsed.degrade(Some("small"), Some(100));
        let out: Value = serde_json::from_slice(&parsed.to_bytes()).unwrap();
        assert_eq!(out["model"], "small");
        assert_eq!(out["max_tokens"], 100);
        let mut parsed =
            RequestBody::parse(Endpoint::Completions, br#"{"model":"big","prompt":"x"}"#, 1)
                .unwrap();
        parsed.degrade(None, Some(10));
        assert_eq!(parsed.json["max_tokens"], 10);
        assert_eq!(parsed.json["model"], "big");
    }

    #[test]
    fn stream_usage_is_requested_once() {
        let body = br#"{"model":"m","prompt":"x","stream":true}"#;
        let mut parsed = RequestBody::parse(Endpoint::Completions, body, 1).unwrap();
        parsed.request_stream_usage();
        assert_eq!(parsed.json["stream_options"]["include_usage"], true);
    }

    #[test]
    fn stream_usage_reads_the_final_chunk_across_split_lines() {
        let mut s = StreamUsage::default();
        s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"hello \"}}]}\n\ndata: {\"choi");
        s.feed(b"ces\":[{\"delta\":{\"content\":\"world\"}}]}\r\n\r\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}}\n\ndata: [DONE]\n\n");
        assert_eq!(s.generated_chars, 11);
        assert_eq!(
            s.reported,
            Some(ReportedUsage {
                prompt_tokens: 7,
                completion_tokens: 3
            })
        );
    }

    #[test]
    fn response_usage_is_read_from_json() {
        let usage =
            response_usage(br#"{"id":"x","usage":{"prompt_tokens":5,"completion_tokens":2}}"#);
        assert_eq!(usage.unwrap().completion_tokens, 2);
        assert_eq!(response_usage(b"not json"), None);
    }
}
