use policybind_engine::detect::{DEFAULT_REDACTION, Detectors};
use serde_json::json;

use super::*;
use crate::sse::{EventSplitter, Piece};

/// Real detectors; secrets block, e-mail addresses are redacted.
struct TestJudge(Detectors);

impl Judge for TestJudge {
    fn judge(&self, text: &str) -> Judgement {
        let findings = self.0.scan(text);
        let action = if findings.iter().any(|f| f.entity == "SECRET") {
            Action::Block {
                code: "SECRET_IN_ANSWER".into(),
                message: "the answer contained a secret".into(),
            }
        } else if findings.iter().any(|f| f.entity == "EMAIL") {
            Action::Redact {
                entities: vec!["EMAIL".into()],
                replacement: DEFAULT_REDACTION.into(),
                code: "PII_REDACTED".into(),
            }
        } else {
            Action::Pass
        };
        Judgement { findings, action }
    }
}

fn guard(api: Api, hold_back: usize) -> StreamGuard {
    StreamGuard::new(api, Box::new(TestJudge(Detectors::builtin())), hold_back)
}

/// Runs events through a guard, `chunk` bytes at a time, and returns what the
/// caller receives as text, plus whether the stream was blocked.
fn run(guard: &mut StreamGuard, wire: &str, chunk: usize) -> (String, bool) {
    let mut splitter = EventSplitter::default();
    let mut out = String::new();
    for piece in wire.as_bytes().chunks(chunk) {
        for p in splitter.push(piece) {
            let Piece::Event(event) = p else {
                panic!("opaque")
            };
            let data = serde_json::from_str(&event.data).ok();
            match guard.event(&event, data) {
                Guarded::Send(bytes) => bytes
                    .iter()
                    .for_each(|b| out.push_str(std::str::from_utf8(b).unwrap())),
                Guarded::Blocked(bytes) => {
                    bytes
                        .iter()
                        .for_each(|b| out.push_str(std::str::from_utf8(b).unwrap()));
                    return (out, true);
                }
            }
        }
    }
    let (Guarded::Send(bytes) | Guarded::Blocked(bytes)) = guard.finish();
    bytes
        .iter()
        .for_each(|b| out.push_str(std::str::from_utf8(b).unwrap()));
    (out, false)
}

/// The text a client assembles from the chat deltas it received.
fn chat_text(wire: &str) -> String {
    let mut text = String::new();
    for line in wire.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        if let Some(t) = v
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            text.push_str(t);
        }
    }
    text
}

fn chat_stream(words: &[&str]) -> String {
    let mut wire = String::new();
    for w in words {
        let chunk = json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": null}]});
        wire.push_str(&format!("data: {chunk}\n\n"));
    }
    let last = json!({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    wire.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
    wire
}

#[test]
fn an_email_split_across_stream_chunks_never_leaks_and_the_rest_arrives_intact() {
    let words = [
        "Write to ",
        "jane.",
        "doe@exa",
        "mple.com",
        " today, ",
        "thanks.",
    ];
    for chunk in [1, 7, 4096] {
        let mut g = guard(Api::ChatCompletions, 64);
        let (wire, blocked) = run(&mut g, &chat_stream(&words), chunk);
        assert!(!blocked);
        assert!(
            !wire.contains("jane.doe"),
            "leaked at chunk size {chunk}: {wire}"
        );
        assert!(!wire.contains("exa\""), "a fragment leaked: {wire}");
        assert_eq!(chat_text(&wire), "Write to [REDACTED:EMAIL] today, thanks.");
        assert!(wire.ends_with("data: [DONE]\n\n"));
        assert_eq!(g.summary.redacted.iter().collect::<Vec<_>>(), ["EMAIL"]);
    }
}

#[test]
fn held_text_is_released_before_the_finish_chunk_even_without_findings() {
    let mut g = guard(Api::ChatCompletions, 1000);
    let (wire, _) = run(&mut g, &chat_stream(&["short ", "answer"]), 4096);
    assert_eq!(chat_text(&wire), "short answer");
    assert!(g.summary.is_empty());
}

#[test]
fn a_secret_mid_stream_ends_it_with_an_error_event_carrying_the_code() {
    let words = ["Your key is ", "AKIAIOSF", "ODNN7EXAMPLE", " keep it safe"];
    let mut g = guard(Api::ChatCompletions, 64);
    let (wire, blocked) = run(&mut g, &chat_stream(&words), 5);
    assert!(blocked);
    assert!(!wire.contains("AKIA"), "{wire}");
    assert!(!wire.contains("[DONE]"));
    let last = wire.trim_end().lines().last().unwrap();
    let error: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "SECRET_IN_ANSWER");
    assert_eq!(g.summary.blocked.as_ref().unwrap().code, "SECRET_IN_ANSWER");
}

#[test]
fn anthropic_blocks_release_their_held_text_before_content_block_stop() {
    let delta = |t: &str| {
        format!(
            "event: content_block_delta\ndata: {}\n\n",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}})
        )
    };
    let wire = format!(
        "event: message_start\ndata: {}\n\n{}{}{}event: content_block_stop\ndata: {}\n\nevent: message_stop\ndata: {}\n\n",
        json!({"type": "message_start", "message": {"content": [], "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        delta("Mail bob"),
        delta("@example.org"),
        delta(" now"),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_stop"}),
    );
    let mut g = guard(Api::Messages, 32);
    let (out, blocked) = run(&mut g, &wire, 3);
    assert!(!blocked);
    assert!(!out.contains("bob@"), "{out}");
    let mut text = String::new();
    let mut stop_seen = false;
    for line in out.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let v: Value = serde_json::from_str(data).unwrap();
        match v["type"].as_str() {
            Some("content_block_delta") => {
                assert!(!stop_seen, "text after the block stopped");
                text.push_str(v["delta"]["text"].as_str().unwrap());
            }
            Some("content_block_stop") => stop_seen = true,
            _ => {}
        }
    }
    assert_eq!(text, "Mail [REDACTED:EMAIL] now");
}

#[test]
fn responses_streams_redact_deltas_and_the_whole_texts_of_done_events() {
    let delta = |t: &str| {
        format!(
            "event: response.output_text.delta\ndata: {}\n\n",
            json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": t})
        )
    };
    let done = json!({"type": "response.output_text.done", "output_index": 0, "content_index": 0, "text": "ask amy@example.com"});
    let completed = json!({"type": "response.completed", "response": {"output": [{"type": "message",
        "content": [{"type": "output_text", "text": "ask amy@example.com"}]}], "usage": {"input_tokens": 1, "output_tokens": 2}}});
    let wire = format!(
        "{}{}event: response.output_text.done\ndata: {done}\n\nevent: response.completed\ndata: {completed}\n\n",
        delta("ask amy@"),
        delta("example.com"),
    );
    let mut g = guard(Api::Responses, 32);
    let (out, _) = run(&mut g, &wire, 6);
    assert!(!out.contains("amy@"), "{out}");
    assert_eq!(out.matches("[REDACTED:EMAIL]").count(), 3, "{out}");
}

#[test]
fn whole_responses_are_redacted_or_blocked_per_text() {
    let judge = TestJudge(Detectors::builtin());
    let mut chat = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "mail x@example.com"}}]});
    let mut summary = OutputSummary::default();
    judge_response(Api::ChatCompletions, &judge, &mut chat, &mut summary).unwrap();
    assert_eq!(
        chat["choices"][0]["message"]["content"],
        "mail [REDACTED:EMAIL]"
    );
    assert!(summary.codes.contains("PII_REDACTED"));

    let mut anthropic = json!({"content": [{"type": "text", "text": "key AKIAIOSFODNN7EXAMPLE"}]});
    let mut summary = OutputSummary::default();
    let blocked = judge_response(Api::Messages, &judge, &mut anthropic, &mut summary).unwrap_err();
    assert_eq!(blocked.code, "SECRET_IN_ANSWER");
    assert_eq!(summary.blocked, Some(blocked));

    let error = stream_error_event(
        Api::Messages,
        &Blocked {
            code: "C".into(),
            message: "m".into(),
        },
    );
    assert!(
        std::str::from_utf8(&error)
            .unwrap()
            .starts_with("event: error\ndata: {")
    );
}
