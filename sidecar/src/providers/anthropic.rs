//! Anthropic's Messages API (`POST /v1/messages`).
//!
//! Texts the model reads, in visiting order: `system` (a string, or its text
//! blocks), then each message's `content`: a string, or blocks, of which the
//! enforcement point reads `text` blocks, the strings of a `tool_use` block's
//! `input`, and a `tool_result` block's `content` (a string or text blocks).
//! Images, documents and signed `thinking` blocks are not scanned (rewriting a
//! signed block would break its signature).

use serde_json::{Map, Value};

use super::{BodyError, Parsed, TOKENS_PER_MESSAGE, visit_all_strings};

/// Anthropic's API version sent upstream when the caller names none.
pub const DEFAULT_VERSION: &str = "2023-06-01";

pub(super) fn parse(json: &mut Map<String, Value>) -> Result<Parsed, BodyError> {
    let messages = json
        .get("messages")
        .and_then(Value::as_array)
        .ok_or(BodyError::BadField("messages"))?;
    for message in messages {
        if !matches!(
            message.get("content"),
            None | Some(Value::Null | Value::String(_) | Value::Array(_))
        ) {
            return Err(BodyError::BadField("messages[].content"));
        }
    }
    if !matches!(
        json.get("system"),
        None | Some(Value::Null | Value::String(_) | Value::Array(_))
    ) {
        return Err(BodyError::BadField("system"));
    }
    let framing_tokens = (messages.len() as u64)
        .saturating_add(1)
        .saturating_mul(TOKENS_PER_MESSAGE);
    let mut texts = vec![];
    visit(json, &mut |s: &mut String| texts.push(s.clone()));
    let max_output = json.get("max_tokens").and_then(Value::as_u64);
    Ok(Parsed {
        texts,
        framing_tokens,
        max_output,
    })
}

pub(super) fn visit(json: &mut Map<String, Value>, f: &mut dyn FnMut(&mut String)) {
    visit_blocks(json.get_mut("system"), f);
    for message in json
        .get_mut("messages")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        visit_blocks(message.get_mut("content"), f);
    }
}

fn visit_blocks(content: Option<&mut Value>, f: &mut dyn FnMut(&mut String)) {
    match content {
        Some(Value::String(s)) => f(s),
        Some(Value::Array(blocks)) => {
            for block in blocks {
                visit_block(block, f);
            }
        }
        _ => {}
    }
}

fn visit_block(block: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match block.get("type").and_then(Value::as_str) {
        Some("text") => {
            if let Some(Value::String(s)) = block.get_mut("text") {
                f(s);
            }
        }
        Some("tool_use") => {
            if let Some(input) = block.get_mut("input") {
                visit_all_strings(input, f);
            }
        }
        Some("tool_result") => visit_blocks(block.get_mut("content"), f),
        _ => {}
    }
}
