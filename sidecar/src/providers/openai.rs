//! OpenAI's request bodies: chat completions, completions, embeddings and
//! responses. Azure OpenAI's v1 API and OpenAI-compatible servers take the same.
//!
//! Texts the model reads, in visiting order:
//! - chat: each message's `content` (a string, or the `text` of its parts),
//!   then the `arguments` of its `tool_calls`;
//! - completions: `prompt`; embeddings: `input` (strings; token id arrays skipped);
//! - responses: `instructions`, then `input` (a string, or items: a message's
//!   `content` string or parts' `text`, a function call's `arguments`, a
//!   function call output's `output`).
//!
//! Images, audio and files are not text and are not scanned.

use serde_json::{Map, Value};

use super::{Api, BodyError, Parsed, TOKENS_PER_MESSAGE, collect_strings, visit_strings};

pub(super) fn parse(api: Api, json: &mut Map<String, Value>) -> Result<Parsed, BodyError> {
    validate(api, json)?;
    let mut texts = vec![];
    visit(api, json, &mut |s: &mut String| texts.push(s.clone()));
    let framing_tokens = match api {
        Api::ChatCompletions => count(json.get("messages")).saturating_mul(TOKENS_PER_MESSAGE),
        Api::Responses => count(json.get("input")).saturating_mul(TOKENS_PER_MESSAGE),
        _ => 0,
    };
    let keys: &[&str] = match api {
        Api::Responses => &["max_output_tokens"],
        _ => &["max_completion_tokens", "max_tokens"],
    };
    let max_output = keys
        .iter()
        .find_map(|k| json.get(*k).and_then(Value::as_u64));
    Ok(Parsed {
        texts,
        framing_tokens,
        max_output,
    })
}

fn count(value: Option<&Value>) -> u64 {
    value
        .and_then(Value::as_array)
        .map_or(0, |a| a.len() as u64)
}

/// Checks the shapes the visitor relies on, so a body it cannot read is a 400
/// rather than text the detectors never saw.
fn validate(api: Api, json: &Map<String, Value>) -> Result<(), BodyError> {
    match api {
        Api::ChatCompletions => {
            let messages = json
                .get("messages")
                .and_then(Value::as_array)
                .ok_or(BodyError::BadField("messages"))?;
            for message in messages {
                content_shape(message.get("content"), "messages[].content")?;
            }
            Ok(())
        }
        Api::Completions => collect_strings(json.get("prompt"), "prompt", &mut vec![]),
        Api::Embeddings => collect_strings(json.get("input"), "input", &mut vec![]),
        Api::Responses => {
            if !matches!(
                json.get("instructions"),
                None | Some(Value::Null | Value::String(_))
            ) {
                return Err(BodyError::BadField("instructions"));
            }
            match json.get("input") {
                None | Some(Value::Null | Value::String(_)) => Ok(()),
                Some(Value::Array(items)) => items
                    .iter()
                    .try_for_each(|item| content_shape(item.get("content"), "input[].content")),
                Some(_) => Err(BodyError::BadField("input")),
            }
        }
        _ => Ok(()),
    }
}

fn content_shape(content: Option<&Value>, field: &'static str) -> Result<(), BodyError> {
    match content {
        None | Some(Value::Null | Value::String(_) | Value::Array(_)) => Ok(()),
        Some(_) => Err(BodyError::BadField(field)),
    }
}

pub(super) fn visit(api: Api, json: &mut Map<String, Value>, f: &mut dyn FnMut(&mut String)) {
    match api {
        Api::ChatCompletions => {
            for message in json
                .get_mut("messages")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                visit_content(message.get_mut("content"), f);
                for call in message
                    .get_mut("tool_calls")
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
        Api::Completions => visit_strings(json.get_mut("prompt"), f),
        Api::Embeddings => visit_strings(json.get_mut("input"), f),
        Api::Responses => {
            if let Some(Value::String(s)) = json.get_mut("instructions") {
                f(s);
            }
            match json.get_mut("input") {
                Some(Value::String(s)) => f(s),
                Some(Value::Array(items)) => items.iter_mut().for_each(|item| visit_item(item, f)),
                _ => {}
            }
        }
        _ => {}
    }
}

fn visit_item(item: &mut Value, f: &mut dyn FnMut(&mut String)) {
    visit_content(item.get_mut("content"), f);
    for key in ["arguments", "output"] {
        if let Some(Value::String(s)) = item.get_mut(key) {
            f(s);
        }
    }
}

/// A message content: a string, or parts whose `text` is read.
pub(super) fn visit_content(content: Option<&mut Value>, f: &mut dyn FnMut(&mut String)) {
    match content {
        Some(Value::String(s)) => f(s),
        Some(Value::Array(parts)) => {
            for part in parts {
                if let Some(Value::String(s)) = part.get_mut("text") {
                    f(s);
                }
            }
        }
        _ => {}
    }
}
