//! The fake answers, in each API's shape.

use std::convert::Infallible;
use std::io::Write;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

use super::Behaviour;

pub async fn models() -> Response {
    let data: Vec<Value> = ["gpt-4o-mini", "gpt-4o", "llama-3-8b", "unregistered-model"]
        .iter()
        .map(|id| json!({"id": id, "object": "model", "owned_by": "fake"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// Every text of a request of any API, joined, and the last one (what the reply echoes).
fn text_of(body: &Value) -> (String, String) {
    let mut texts: Vec<String> = vec![];
    let mut push_content = |content: &Value| match content {
        Value::String(s) => texts.push(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .for_each(|t| texts.push(t.to_string())),
        _ => {}
    };
    if let Some(system) = body.get("system") {
        push_content(system);
    }
    if let Some(messages) = body["messages"].as_array() {
        messages.iter().for_each(|m| push_content(&m["content"]));
    } else if let Some(instructions) = body.get("instructions") {
        push_content(instructions);
    }
    match &body["input"] {
        Value::Array(items) if items.iter().all(Value::is_object) => {
            items.iter().for_each(|i| push_content(&i["content"]))
        }
        input => push_content(input),
    }
    push_content(&body["prompt"]);
    let last = texts.last().cloned().unwrap_or_default();
    (texts.join(" "), last)
}

/// A whole JSON answer, without its `usage` when the behaviour says so.
fn whole(mut answer: Value, b: &Behaviour) -> Response {
    if !b.usage
        && let Some(fields) = answer.as_object_mut()
    {
        fields.remove("usage");
    }
    axum::Json(answer).into_response()
}

/// The answer to a model call.
pub fn answer(path: &str, body: &Value, b: &Behaviour) -> Response {
    let model = body["model"].as_str().unwrap_or("unknown").to_string();
    let (prompt, last) = text_of(body);
    let prompt_tokens = (prompt.chars().count() as u64).div_ceil(4);
    if path == "/v1/embeddings" {
        let answer = json!({
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        });
        return whole(answer, b);
    }
    let reply = b
        .reply
        .clone()
        .unwrap_or_else(|| format!("You said: {last}"));
    let words: Vec<String> = reply.split_inclusive(' ').map(str::to_string).collect();
    let call = Call {
        model,
        reply,
        prompt_tokens,
        completion_tokens: words.len() as u64,
        words,
    };
    let stream = body["stream"].as_bool() == Some(true);
    let events = match (path, stream) {
        ("/v1/messages", false) => return whole(call.anthropic(), b),
        ("/v1/responses", false) => return whole(call.responses(), b),
        (_, false) => return whole(call.openai(path), b),
        ("/v1/messages", true) => call.anthropic_events(),
        ("/v1/responses", true) => call.responses_events(),
        (_, true) => {
            let include_usage =
                b.stream_usage && body["stream_options"]["include_usage"].as_bool() == Some(true);
            call.openai_events(path, include_usage)
        }
    };
    event_stream(events, Duration::from_millis(b.chunk_delay_ms))
}

struct Call {
    model: String,
    reply: String,
    words: Vec<String>,
    prompt_tokens: u64,
    completion_tokens: u64,
}

fn sse(name: Option<&str>, data: &Value) -> String {
    match name {
        Some(name) => format!("event: {name}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

impl Call {
    fn openai(&self, path: &str) -> Value {
        let chat = path == "/v1/chat/completions";
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": self.reply}, "finish_reason": "stop"})
        } else {
            json!({"index": 0, "text": self.reply, "finish_reason": "stop"})
        };
        json!({
            "id": "fake-1",
            "object": if chat { "chat.completion" } else { "text_completion" },
            "created": 0,
            "model": self.model,
            "choices": [choice],
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens},
        })
    }

    fn openai_events(&self, path: &str, include_usage: bool) -> Vec<String> {
        let chat = path == "/v1/chat/completions";
        let chunk = |choice: Value| json!({"id": "fake-1", "object": "chat.completion.chunk", "created": 0, "model": self.model, "choices": [choice]});
        let mut events = vec![];
        if chat {
            events.push(sse(None, &chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}))));
        }
        for w in &self.words {
            let choice = if chat {
                json!({"index": 0, "delta": {"content": w}, "finish_reason": null})
            } else {
                json!({"index": 0, "text": w, "finish_reason": null})
            };
            events.push(sse(None, &chunk(choice)));
        }
        let last = if chat {
            json!({"index": 0, "delta": {}, "finish_reason": "stop"})
        } else {
            json!({"index": 0, "text": "", "finish_reason": "stop"})
        };
        events.push(sse(None, &chunk(last)));
        if include_usage {
            let (p, c) = (self.prompt_tokens, self.completion_tokens);
            let usage = json!({"id": "fake-1", "object": "chat.completion.chunk", "created": 0, "model": self.model,
                "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}});
            events.push(sse(None, &usage));
        }
        events.push("data: [DONE]\n\n".to_string());
        events
    }

    fn responses_usage(&self) -> Value {
        let (i, o) = (self.prompt_tokens, self.completion_tokens);
        json!({"input_tokens": i, "output_tokens": o, "total_tokens": i + o,
            "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}})
    }

    fn responses_output(&self, text: &str) -> Value {
        json!([{"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}])
    }

    fn responses(&self) -> Value {
        json!({"id": "resp_fake", "object": "response", "created_at": 0, "status": "completed",
            "model": self.model, "output": self.responses_output(&self.reply),
            "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
            "usage": self.responses_usage()})
    }

    fn responses_events(&self) -> Vec<String> {
        let mut seq = 0u64;
        let mut event = |name: &str, mut data: Value| {
            data["type"] = json!(name);
            data["sequence_number"] = json!(seq);
            seq += 1;
            sse(Some(name), &data)
        };
        let in_progress = json!({"id": "resp_fake", "object": "response", "created_at": 0,
            "status": "in_progress", "model": self.model, "output": []});
        let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": []});
        let mut events = vec![
            event("response.created", json!({"response": in_progress})),
            event(
                "response.output_item.added",
                json!({"output_index": 0, "item": {"type": "message",
                "id": "msg_fake", "status": "in_progress", "role": "assistant", "content": []}}),
            ),
            event(
                "response.content_part.added",
                json!({"item_id": "msg_fake", "output_index": 0,
                "content_index": 0, "part": part("")}),
            ),
        ];
        for w in &self.words {
            events.push(event(
                "response.output_text.delta",
                json!({"item_id": "msg_fake",
                "output_index": 0, "content_index": 0, "delta": w}),
            ));
        }
        events.push(event(
            "response.output_text.done",
            json!({"item_id": "msg_fake",
            "output_index": 0, "content_index": 0, "text": self.reply}),
        ));
        events.push(event(
            "response.content_part.done",
            json!({"item_id": "msg_fake",
            "output_index": 0, "content_index": 0, "part": part(&self.reply)}),
        ));
        events.push(event(
            "response.output_item.done",
            json!({"output_index": 0,
            "item": self.responses_output(&self.reply)[0]}),
        ));
        events.push(event(
            "response.completed",
            json!({"response": self.responses()}),
        ));
        events
    }

    fn anthropic(&self) -> Value {
        json!({"id": "msg_fake", "type": "message", "role": "assistant", "model": self.model,
            "content": [{"type": "text", "text": self.reply}], "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": self.prompt_tokens, "output_tokens": self.completion_tokens}})
    }

    fn anthropic_events(&self) -> Vec<String> {
        let start = json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message",
            "role": "assistant", "model": self.model, "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": self.prompt_tokens, "output_tokens": 1}}});
        let mut events = vec![
            sse(Some("message_start"), &start),
            sse(
                Some("content_block_start"),
                &json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ),
            sse(Some("ping"), &json!({"type": "ping"})),
        ];
        for w in &self.words {
            events.push(sse(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta",
                "index": 0, "delta": {"type": "text_delta", "text": w}}),
            ));
        }
        events.push(sse(
            Some("content_block_stop"),
            &json!({"type": "content_block_stop", "index": 0}),
        ));
        events.push(sse(
            Some("message_delta"),
            &json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": self.completion_tokens}}),
        ));
        events.push(sse(Some("message_stop"), &json!({"type": "message_stop"})));
        events
    }
}

fn event_stream(events: Vec<String>, delay: Duration) -> Response {
    let stream = futures::stream::unfold(events.into_iter(), move |mut it| async move {
        let next = it.next()?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Some((Ok::<_, Infallible>(Bytes::from(next)), it))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .expect("valid response")
}

/// Compresses an answer with gzip, chunk by chunk (each flushed, so a stream
/// stays a stream), whatever the request accepted.
pub async fn gzip(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    parts
        .headers
        .insert(header::CONTENT_ENCODING, "gzip".parse().expect("valid"));
    parts.headers.remove(header::CONTENT_LENGTH);
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let chunks = body
        .into_data_stream()
        .map(Some)
        .chain(futures::stream::iter([None]));
    let stream = chunks.scan(Some(encoder), |encoder, chunk| {
        let out = match (chunk, encoder.as_mut()) {
            (Some(Ok(bytes)), Some(e)) => {
                e.write_all(&bytes)
                    .and_then(|_| e.flush())
                    .expect("gzip in memory");
                std::mem::take(e.get_mut())
            }
            (None, Some(_)) => encoder
                .take()
                .expect("present")
                .finish()
                .expect("gzip in memory"),
            _ => vec![],
        };
        futures::future::ready(Some(Ok::<_, Infallible>(Bytes::from(out))))
    });
    Response::from_parts(parts, Body::from_stream(stream))
}
