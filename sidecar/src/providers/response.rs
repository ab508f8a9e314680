//! What the enforcement point reads from responses: the usage each provider
//! reports, and where the generated text lies, in whole JSON responses and in
//! server-sent event streams.
//!
//! Usage, by API:
//! - OpenAI chat, completions, embeddings: `usage.prompt_tokens`,
//!   `usage.completion_tokens` (streams: the final chunk, when
//!   `stream_options.include_usage` was set);
//! - OpenAI responses: `usage.input_tokens`, `usage.output_tokens` (streams: the
//!   `response.completed` event's `response.usage`);
//! - Anthropic messages: `usage.input_tokens` plus the cache read and creation
//!   input tokens, `usage.output_tokens` (streams: `message_start`'s
//!   `message.usage`, then `message_delta`'s cumulative `usage`).
//!
//! Counts seen in one stream are combined by maximum, which reads cumulative
//! counts (Anthropic's `message_delta`) and single final counts alike.

use serde::Deserialize;
use serde_json::Value;

use super::Api;

/// Tokens one call consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// A `usage` object in any provider's field names.
#[derive(Debug, Default, Deserialize)]
struct AnyUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl AnyUsage {
    fn usage(&self) -> Usage {
        // The provider's numbers: a hostile or broken upstream may send
        // u64::MAX, which must saturate rather than wrap to a small charge.
        let cached = self
            .cache_creation_input_tokens
            .unwrap_or(0)
            .saturating_add(self.cache_read_input_tokens.unwrap_or(0));
        let input = self.prompt_tokens.or(self.input_tokens).unwrap_or(0);
        Usage {
            input_tokens: input.saturating_add(cached),
            output_tokens: self.completion_tokens.or(self.output_tokens).unwrap_or(0),
        }
    }
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<AnyUsage>,
}

/// The usage of a complete JSON response, if it reports one.
pub fn response_usage(body: &[u8]) -> Option<Usage> {
    serde_json::from_slice::<WithUsage>(body)
        .ok()?
        .usage
        .map(|u| u.usage())
}

/// A chat or completion answer read without building a JSON tree: its texts
/// (borrowed unless they hold escapes) and usage. The common answer has
/// nothing for the output policy to change, and this is all it needs.
#[derive(Debug, Deserialize)]
pub struct ChoicesAnswer<'a> {
    #[serde(default, borrow)]
    choices: Vec<AnswerChoice<'a>>,
    #[serde(default)]
    usage: Option<AnyUsage>,
}

#[derive(Debug, Deserialize)]
struct AnswerChoice<'a> {
    #[serde(default, borrow)]
    message: Option<AnswerMessage<'a>>,
    #[serde(default, borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct AnswerMessage<'a> {
    #[serde(default, borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Vec<AnswerToolCall<'a>>,
}

#[derive(Debug, Deserialize)]
struct AnswerToolCall<'a> {
    #[serde(default, borrow)]
    function: Option<AnswerFunction<'a>>,
}

#[derive(Debug, Deserialize)]
struct AnswerFunction<'a> {
    #[serde(default, borrow)]
    arguments: Option<std::borrow::Cow<'a, str>>,
}

impl<'a> ChoicesAnswer<'a> {
    /// Reads a chat or completion answer; `None` when it has another shape
    /// (the caller then reads it as a JSON tree).
    pub fn read(body: &'a [u8]) -> Option<ChoicesAnswer<'a>> {
        serde_json::from_slice(body).ok()
    }

    /// Every text [`StreamText::visit_response`] visits in this answer.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.choices.iter().flat_map(|choice| {
            let message = choice.message.as_ref();
            let content = message.and_then(|m| m.content.as_deref());
            let calls = message
                .into_iter()
                .flat_map(|m| m.tool_calls.iter())
                .filter_map(|c| c.function.as_ref()?.arguments.as_deref());
            content
                .into_iter()
                .chain(choice.text.as_deref())
                .chain(calls)
        })
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage.as_ref().map(AnyUsage::usage)
    }
}

/// The usage of a complete JSON response already parsed.
pub fn usage_from_value(json: &Value) -> Option<Usage> {
    AnyUsage::deserialize(json.get("usage")?)
        .ok()
        .map(|u| u.usage())
}

/// The generated text of a whole JSON answer (every text
/// [`StreamText::visit_response`] visits, one per line), to count its tokens
/// when the answer reports no usage; `None` when the body is not JSON.
pub fn answer_text(api: Api, body: &[u8]) -> Option<String> {
    let mut json: Value = serde_json::from_slice(body).ok()?;
    let mut text = String::new();
    StreamText::visit_response(api, &mut json, &mut |s: &mut String| {
        text.push_str(s);
        text.push('\n');
    });
    Some(text)
}

/// The usage reported by a stream so far, and the characters of text it carried
/// (to estimate output when a stream reports no usage).
#[derive(Debug, Default, Clone, Copy)]
pub struct UsageTracker {
    pub reported: Option<Usage>,
    pub generated_chars: u64,
}

impl UsageTracker {
    /// Reads one event's JSON (`data:` of an SSE event).
    pub fn observe(&mut self, api: Api, data: &Value) {
        for usage in [
            data.get("usage"),
            data.pointer("/response/usage"),
            data.pointer("/message/usage"),
        ]
        .into_iter()
        .flatten()
        {
            let Ok(any) = AnyUsage::deserialize(usage) else {
                continue;
            };
            let seen = any.usage();
            let merged = self.reported.unwrap_or_default();
            self.reported = Some(Usage {
                input_tokens: merged.input_tokens.max(seen.input_tokens),
                output_tokens: merged.output_tokens.max(seen.output_tokens),
            });
        }
        for (_, text) in StreamText::deltas(api, data) {
            self.generated_chars = self
                .generated_chars
                .saturating_add(text.chars().count() as u64);
        }
    }

    /// Output tokens estimated from the text seen, for streams without usage:
    /// one per four characters, the heuristic's default ratio (the text is not
    /// kept, so it cannot be run through a tokenizer afterwards).
    pub fn counted_output_tokens(&self) -> u64 {
        self.generated_chars.div_ceil(4)
    }
}

/// Where generated text lies in responses and stream events.
pub struct StreamText;

/// A stream channel: one choice (OpenAI), one content part (responses) or one
/// content block (Anthropic). Text is held back and released per channel.
pub type Channel = (u64, u64);

impl StreamText {
    /// The text deltas of one stream event, with their channels.
    pub fn deltas(api: Api, data: &Value) -> Vec<(Channel, &str)> {
        let mut out = vec![];
        match api {
            Api::ChatCompletions | Api::Completions | Api::Extra => {
                for choice in data
                    .get("choices")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let text = choice
                        .pointer("/delta/content")
                        .or_else(|| choice.get("text"))
                        .and_then(Value::as_str);
                    if let Some(text) = text {
                        out.push(((index, 0), text));
                    }
                }
            }
            Api::Responses => {
                if data.get("type").and_then(Value::as_str) == Some("response.output_text.delta")
                    && let Some(text) = data.get("delta").and_then(Value::as_str)
                {
                    out.push((responses_channel(data), text));
                }
            }
            Api::Messages => {
                if data.get("type").and_then(Value::as_str) == Some("content_block_delta")
                    && let Some(text) = data.pointer("/delta/text").and_then(Value::as_str)
                {
                    let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                    out.push(((index, 0), text));
                }
            }
            Api::Embeddings | Api::Models => {}
        }
        out
    }

    /// Calls `f` on every generated text of a whole JSON response.
    pub fn visit_response(api: Api, json: &mut Value, f: &mut dyn FnMut(&mut String)) {
        match api {
            Api::ChatCompletions | Api::Completions => {
                for choice in json
                    .get_mut("choices")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    for pointer in ["/message/content", "/text"] {
                        if let Some(Value::String(s)) = choice.pointer_mut(pointer) {
                            f(s);
                        }
                    }
                    for call in choice
                        .pointer_mut("/message/tool_calls")
                        .and_then(Value::as_array_mut)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(Value::String(s)) = call.pointer_mut("/function/arguments") {
                            f(s);
                        }
                    }
                }
            }
            Api::Responses | Api::Messages => visit_text_fields(json, f),
            Api::Extra => super::visit_all_strings(json, f),
            Api::Embeddings | Api::Models => {}
        }
    }
}

/// The channel of a responses API text event.
pub fn responses_channel(data: &Value) -> Channel {
    (
        data.get("output_index")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        data.get("content_index")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    )
}

/// Every string under a key `text` (the generated text of responses API output
/// parts and Anthropic text blocks, wherever they nest), and the strings of
/// Anthropic `tool_use` inputs.
pub fn visit_text_fields(value: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match value {
        Value::Object(map) => {
            let tool_use = map.get("type").and_then(Value::as_str) == Some("tool_use");
            for (key, child) in map.iter_mut() {
                match child {
                    Value::String(s) if key == "text" => f(s),
                    child if tool_use && key == "input" => super::visit_all_strings(child, f),
                    child => visit_text_fields(child, f),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| visit_text_fields(v, f)),
        _ => {}
    }
}
