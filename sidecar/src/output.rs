//! Output policy: the detectors run on what the model answers, and rules can
//! redact it or block it, so personal data and secrets do not leak back.
//!
//! Whole responses are judged text by text before anything is returned.
//! Streams are judged as they pass: each channel (a choice, a content part, a
//! content block) holds back its last `hold_back` bytes, so an entity split
//! across two chunks is seen whole before any of it is released; a channel's
//! end releases the rest. A block in mid-stream ends the stream with a final
//! error event carrying the rationale code, in the API's own error shape.
//!
//! What a text gets is decided by a [`Judge`]. [`OutputPolicy`] is the judge
//! of the request path: the detectors scan the text and, when they find
//! something, the request's own facts are decided again with the answer as the
//! text (labelled `direction: output`, so CEL rules can tell the two apart).
//! A policy-stage Deny blocks, a Redact redacts its entities, anything else
//! passes. This is the seam where the engine's `decide_output` slots in.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use policybind_crds::Effect;
use policybind_engine::detect::{self, Finding};
use policybind_engine::request::{Request as Facts, Stage};
use serde_json::{Value, json};

use crate::providers::Api;
use crate::providers::response::{Channel, StreamText, responses_channel, visit_text_fields};
use crate::source::Loaded;
use crate::sse::Event;

/// Label set on the facts of an output decision.
pub const DIRECTION_LABEL: &str = "direction";

/// What to do with one text.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Pass,
    /// Replace the findings of these entities (all found when empty).
    Redact {
        entities: Vec<String>,
        replacement: String,
        /// The deciding rule's code, for the audit record.
        code: String,
    },
    Block {
        code: String,
        message: String,
    },
}

/// A judge's finding on one text.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub findings: Vec<Finding>,
    pub action: Action,
}

/// Decides what happens to a text the model generated.
pub trait Judge: Send + Sync {
    fn judge(&self, text: &str) -> Judgement;
}

/// The output policy of one request (see the module docs).
pub struct OutputPolicy {
    loaded: Arc<Loaded>,
    facts: Facts,
}

impl OutputPolicy {
    /// `facts` are the request's, without its prompt.
    pub fn new(loaded: Arc<Loaded>, mut facts: Facts) -> OutputPolicy {
        facts.prompt = None;
        facts.labels.insert(DIRECTION_LABEL.into(), "output".into());
        OutputPolicy { loaded, facts }
    }
}

impl Judge for OutputPolicy {
    fn judge(&self, text: &str) -> Judgement {
        let set = &self.loaded.set;
        let findings = set.detectors().scan(text);
        if findings.is_empty() {
            return Judgement {
                findings,
                action: Action::Pass,
            };
        }
        let mut facts = self.facts.clone();
        facts.prompt = Some(text.to_string());
        facts.labels.insert(DIRECTION_LABEL.into(), "output".into());
        let decision = set.decide(&facts);
        let action = match (decision.effect, decision.stage) {
            (Effect::Deny, Stage::Policy) => Action::Block {
                code: decision.code().to_string(),
                message: decision.message.clone(),
            },
            (Effect::Redact, _) => {
                let redact = decision.obligations.redact.clone().unwrap_or_default();
                Action::Redact {
                    entities: redact.entities,
                    replacement: redact.replacement,
                    code: decision.code().to_string(),
                }
            }
            _ => Action::Pass,
        };
        Judgement { findings, action }
    }
}

/// A text the policy refused to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub code: String,
    pub message: String,
}

/// What the output policy did to one response, for the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputSummary {
    /// Entities replaced in the answer.
    pub redacted: BTreeSet<String>,
    /// Codes of the rules that redacted.
    pub codes: BTreeSet<String>,
    /// The code of a block.
    pub blocked: Option<Blocked>,
}

impl OutputSummary {
    pub fn is_empty(&self) -> bool {
        self.redacted.is_empty() && self.blocked.is_none()
    }
}

/// Applies a judgement to a whole text; `Err` when it is blocked.
fn apply(judge: &dyn Judge, text: &mut String, summary: &mut OutputSummary) -> Result<(), Blocked> {
    let judgement = judge.judge(text);
    match judgement.action {
        Action::Pass => Ok(()),
        Action::Block { code, message } => Err(Blocked { code, message }),
        Action::Redact {
            entities,
            replacement,
            code,
        } => {
            record_redacted(summary, &judgement.findings, &entities, &code);
            *text = detect::redact(text, &judgement.findings, &entities, &replacement);
            Ok(())
        }
    }
}

fn record_redacted(
    summary: &mut OutputSummary,
    findings: &[Finding],
    entities: &[String],
    code: &str,
) {
    let mut any = false;
    for f in findings {
        if entities.is_empty() || entities.contains(&f.entity) {
            summary.redacted.insert(f.entity.clone());
            any = true;
        }
    }
    if any {
        summary.codes.insert(code.to_string());
    }
}

/// Judges every generated text of a whole JSON response, redacting in place.
pub fn judge_response(
    api: Api,
    judge: &dyn Judge,
    json: &mut Value,
    summary: &mut OutputSummary,
) -> Result<(), Blocked> {
    let mut blocked = None;
    StreamText::visit_response(api, json, &mut |text: &mut String| {
        if blocked.is_none()
            && let Err(b) = apply(judge, text, summary)
        {
            blocked = Some(b);
        }
    });
    match blocked {
        Some(b) => {
            summary.blocked = Some(b.clone());
            Err(b)
        }
        None => Ok(()),
    }
}

/// The body that ends a blocked stream, in the API's error shape.
pub fn stream_error_event(api: Api, blocked: &Blocked) -> Bytes {
    stream_refusal_event(api, &blocked.code, &blocked.message, "permission_error")
}

/// The last event of a stream PolicyBind ends, in `api`'s error shape, with
/// the code: SDKs raise it as an API error. `error_type` is OpenAI's
/// (`insufficient_quota`, `permission_error`, ...); Anthropic's follows from it.
pub fn stream_refusal_event(api: Api, code: &str, message: &str, error_type: &str) -> Bytes {
    match api {
        Api::Messages => {
            let anthropic_type = match error_type {
                "insufficient_quota" | "rate_limit_error" => "rate_limit_error",
                _ => "permission_error",
            };
            Event::encode(
                Some("error"),
                &json!({"type": "error", "error": {
                    "type": anthropic_type, "message": message, "code": code}})
                .to_string(),
            )
        }
        Api::Responses => Event::encode(
            Some("error"),
            &json!({"type": "error", "code": code, "message": message, "param": null}).to_string(),
        ),
        _ => Event::encode(
            None,
            &json!({"error": {"message": message, "type": error_type,
                "code": code, "param": null}})
            .to_string(),
        ),
    }
}

/// One channel of a stream: text not yet released, and the last event that
/// carried its text (the template of an event made to release the rest).
struct ChannelState {
    pending: String,
    template: Value,
    event_name: Option<String>,
}

/// Judges a stream event by event.
pub struct StreamGuard {
    api: Api,
    judge: Box<dyn Judge>,
    hold_back: usize,
    channels: BTreeMap<Channel, ChannelState>,
    pub summary: OutputSummary,
}

/// What the guard makes of one event.
pub enum Guarded {
    /// Bytes to send on (the event as it came, changed, or preceded by
    /// released text).
    Send(Vec<Bytes>),
    /// The stream is blocked: send these (released text, then the error event) and end it.
    Blocked(Vec<Bytes>),
}

impl StreamGuard {
    pub fn new(api: Api, judge: Box<dyn Judge>, hold_back: usize) -> StreamGuard {
        StreamGuard {
            api,
            judge,
            hold_back,
            channels: BTreeMap::new(),
            summary: OutputSummary::default(),
        }
    }

    /// Handles one event; `data` is its parsed JSON, when it is JSON.
    pub fn event(&mut self, event: &Event, data: Option<Value>) -> Guarded {
        if event.data == "[DONE]" {
            return self.flush_then(event.raw.clone());
        }
        let Some(mut data) = data else {
            return Guarded::Send(vec![event.raw.clone()]);
        };
        let result = match self.api {
            Api::Messages => self.anthropic_event(event, &mut data),
            Api::Responses => self.responses_event(event, &mut data),
            _ => self.choices_event(event, &mut data),
        };
        match result {
            Ok(mut out) => {
                out.push(Event::encode(event.name.as_deref(), &data.to_string()));
                Guarded::Send(out)
            }
            Err(blocked) => self.block(blocked),
        }
    }

    /// The stream ended: release what is held.
    pub fn finish(&mut self) -> Guarded {
        match self.flush_all() {
            Ok(out) => Guarded::Send(out),
            Err(blocked) => self.block(blocked),
        }
    }

    fn flush_then(&mut self, raw: Bytes) -> Guarded {
        match self.flush_all() {
            Ok(mut out) => {
                out.push(raw);
                Guarded::Send(out)
            }
            Err(blocked) => self.block(blocked),
        }
    }

    fn block(&mut self, blocked: Blocked) -> Guarded {
        let event = stream_error_event(self.api, &blocked);
        self.summary.blocked = Some(blocked);
        self.channels.clear();
        Guarded::Blocked(vec![event])
    }

    /// Chat and completion chunks: text in `choices[].delta.content` or
    /// `choices[].text`; a choice's `finish_reason` ends its channel.
    fn choices_event(&mut self, event: &Event, data: &mut Value) -> Result<Vec<Bytes>, Blocked> {
        let template = data.clone();
        let Some(choices) = data.get_mut("choices").and_then(Value::as_array_mut) else {
            return Ok(vec![]);
        };
        for choice in choices {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let finished = !matches!(choice.get("finish_reason"), None | Some(Value::Null));
            let pointer = if choice.get("text").is_some() {
                "/text"
            } else {
                "/delta/content"
            };
            let Some(text) = choice.pointer(pointer).and_then(Value::as_str) else {
                if finished {
                    let rest = self.release((index, 0), "", true)?;
                    if !rest.is_empty() {
                        set_choice_text(choice, pointer, rest);
                    }
                }
                continue;
            };
            let text = text.to_string();
            self.remember((index, 0), &template, event);
            let released = self.release((index, 0), &text, finished)?;
            set_choice_text(choice, pointer, released);
        }
        Ok(vec![])
    }

    /// Responses API events: `response.output_text.delta` is held back per
    /// content part; events that carry whole texts (`.done`, `response.completed`)
    /// have each text judged whole, after the part's held text is released.
    fn responses_event(&mut self, event: &Event, data: &mut Value) -> Result<Vec<Bytes>, Blocked> {
        let kind = data.get("type").and_then(Value::as_str).unwrap_or("");
        if kind == "response.output_text.delta" {
            let channel = responses_channel(data);
            let text = data
                .get("delta")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            self.remember(channel, data, event);
            let released = self.release(channel, &text, false)?;
            data["delta"] = Value::String(released);
            return Ok(vec![]);
        }
        let mut out = vec![];
        if kind == "response.output_text.done" {
            out = self.flush_channel(responses_channel(data))?;
        } else if kind == "response.completed" || kind == "response.incomplete" {
            out = self.flush_all()?;
        }
        self.judge_whole_texts(data)?;
        Ok(out)
    }

    /// Anthropic events: `content_block_delta` text is held back per block;
    /// `content_block_stop` and `message_stop` release it first.
    fn anthropic_event(&mut self, event: &Event, data: &mut Value) -> Result<Vec<Bytes>, Blocked> {
        let kind = data.get("type").and_then(Value::as_str).unwrap_or("");
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        match kind {
            "content_block_delta" => {
                let Some(text) = data.pointer("/delta/text").and_then(Value::as_str) else {
                    return Ok(vec![]);
                };
                let text = text.to_string();
                self.remember((index, 0), data, event);
                let released = self.release((index, 0), &text, false)?;
                data["delta"]["text"] = Value::String(released);
                Ok(vec![])
            }
            "content_block_stop" => self.flush_channel((index, 0)),
            "message_stop" => self.flush_all(),
            _ => {
                self.judge_whole_texts(data)?;
                Ok(vec![])
            }
        }
    }

    fn judge_whole_texts(&mut self, data: &mut Value) -> Result<(), Blocked> {
        let mut blocked = None;
        let (judge, summary) = (&*self.judge, &mut self.summary);
        visit_text_fields(data, &mut |text: &mut String| {
            if blocked.is_none()
                && !text.is_empty()
                && let Err(b) = apply(judge, text, summary)
            {
                blocked = Some(b);
            }
        });
        blocked.map_or(Ok(()), Err)
    }

    fn remember(&mut self, channel: Channel, template: &Value, event: &Event) {
        let state = self
            .channels
            .entry(channel)
            .or_insert_with(|| ChannelState {
                pending: String::new(),
                template: Value::Null,
                event_name: None,
            });
        state.template = template.clone();
        state.event_name = event.name.clone();
    }

    /// Adds `text` to a channel and returns what may be released now: all of it
    /// when `last`, otherwise all but the hold-back, never cutting through an
    /// entity, redacted as the judge says.
    fn release(&mut self, channel: Channel, text: &str, last: bool) -> Result<String, Blocked> {
        let Some(state) = self.channels.get_mut(&channel) else {
            // A channel that never carried text.
            return Ok(text.to_string());
        };
        state.pending.push_str(text);
        if state.pending.is_empty() {
            return Ok(String::new());
        }
        let judgement = self.judge.judge(&state.pending);
        let mut cut = if last {
            state.pending.len()
        } else {
            floor_char_boundary(
                &state.pending,
                state.pending.len().saturating_sub(self.hold_back),
            )
        };
        for f in &judgement.findings {
            if f.start < cut && f.end > cut {
                cut = f.start;
            }
        }
        let action = match judgement.action {
            Action::Block { code, message } => return Err(Blocked { code, message }),
            action => action,
        };
        let head: String = state.pending.drain(..cut).collect();
        Ok(match action {
            Action::Redact {
                entities,
                replacement,
                code,
            } => {
                let inside: Vec<Finding> = judgement
                    .findings
                    .into_iter()
                    .filter(|f| f.end <= cut)
                    .collect();
                record_redacted(&mut self.summary, &inside, &entities, &code);
                detect::redact(&head, &inside, &entities, &replacement)
            }
            _ => head,
        })
    }

    /// Releases a channel's held text as an event of its own (made from the
    /// channel's last event).
    fn flush_channel(&mut self, channel: Channel) -> Result<Vec<Bytes>, Blocked> {
        let rest = self.release(channel, "", true)?;
        let Some(state) = self.channels.remove(&channel) else {
            return Ok(vec![]);
        };
        if rest.is_empty() {
            return Ok(vec![]);
        }
        let mut event = state.template;
        set_event_text(self.api, &mut event, channel, rest);
        Ok(vec![Event::encode(
            state.event_name.as_deref(),
            &event.to_string(),
        )])
    }

    fn flush_all(&mut self) -> Result<Vec<Bytes>, Blocked> {
        let channels: Vec<Channel> = self.channels.keys().copied().collect();
        let mut out = vec![];
        for channel in channels {
            out.extend(self.flush_channel(channel)?);
        }
        Ok(out)
    }
}

fn set_choice_text(choice: &mut Value, pointer: &str, text: String) {
    if pointer == "/text" {
        choice["text"] = Value::String(text);
    } else {
        if !choice.get("delta").is_some_and(Value::is_object) {
            choice["delta"] = json!({});
        }
        choice["delta"]["content"] = Value::String(text);
    }
}

/// Puts `text` into a template event of `channel` as its only text.
fn set_event_text(api: Api, event: &mut Value, channel: Channel, text: String) {
    match api {
        Api::Messages => event["delta"]["text"] = Value::String(text),
        Api::Responses => event["delta"] = Value::String(text),
        _ => {
            let Some(choices) = event.get_mut("choices").and_then(Value::as_array_mut) else {
                return;
            };
            choices.retain(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == channel.0);
            if let Some(choice) = choices.first_mut() {
                choice["finish_reason"] = Value::Null;
                let pointer = if choice.get("text").is_some() {
                    "/text"
                } else {
                    "/delta/content"
                };
                set_choice_text(choice, pointer, text);
            }
        }
    }
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while at > 0 && !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests;
