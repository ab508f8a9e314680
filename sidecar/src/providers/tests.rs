use bytes::Bytes;
use serde_json::{Value, json};

use super::*;

fn parse(api: Api, body: Value) -> ModelRequest {
    ModelRequest::parse(
        api,
        body.to_string().as_bytes(),
        256,
        TokenEstimates::Heuristic,
    )
    .unwrap()
}

/// Uppercases every text through the span interface (as redaction does).
fn shout(request: &mut ModelRequest) {
    let prompt = request.prompt.clone();
    request.rewrite_texts(|text, span| {
        assert_eq!(&prompt[span], text, "spans line up with the joined prompt");
        Some(text.to_uppercase())
    });
}

#[test]
fn chat_body_gives_model_text_and_estimates() {
    let body = json!({"model": "m", "max_tokens": 50, "messages": [
        {"role": "system", "content": "12345678"},
        {"role": "user", "content": [{"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {"url": "x"}}]},
        {"role": "assistant", "content": null, "tool_calls": [{"function": {"name": "f", "arguments": "{\"q\":1}"}}]}]});
    let parsed = parse(Api::ChatCompletions, body);
    assert_eq!(parsed.model, "m");
    assert_eq!(parsed.prompt, "12345678\nabcd\n{\"q\":1}");
    // 21 chars -> 6 tokens, plus 3 messages x 4.
    assert_eq!(parsed.estimated_input_tokens, 18);
    assert_eq!(parsed.estimated_output_tokens, 50);
    assert!(!parsed.stream);
}

#[test]
fn missing_model_bad_json_and_bad_shapes_are_errors() {
    let err = |api, body: &[u8]| {
        ModelRequest::parse(api, body, 1, TokenEstimates::Heuristic).unwrap_err()
    };
    assert_eq!(
        err(Api::Completions, br#"{"prompt":"x"}"#),
        BodyError::NoModel
    );
    assert!(matches!(err(Api::Completions, b"{"), BodyError::NotJson(_)));
    assert_eq!(
        err(Api::ChatCompletions, br#"{"model":"m"}"#),
        BodyError::BadField("messages")
    );
    assert_eq!(
        err(
            Api::Messages,
            br#"{"model":"m","messages":[{"role":"user","content":5}]}"#
        ),
        BodyError::BadField("messages[].content")
    );
    assert_eq!(
        err(Api::Responses, br#"{"model":"m","input":5}"#),
        BodyError::BadField("input")
    );
    assert_eq!(
        err(
            Api::ChatCompletions,
            br#"{"model":"m","messages":[],"stream":"yes"}"#
        ),
        BodyError::BadField("stream")
    );
}

#[test]
fn responses_bodies_read_instructions_and_every_input_item() {
    let body = json!({"model": "gpt-4o", "instructions": "be brief", "max_output_tokens": 40,
        "input": [
            {"role": "user", "content": "hello"},
            {"role": "user", "content": [{"type": "input_text", "text": "parts"}, {"type": "input_image", "image_url": "x"}]},
            {"type": "function_call", "arguments": "{\"a\":1}"},
            {"type": "function_call_output", "output": "result"}]});
    let mut parsed = parse(Api::Responses, body);
    assert_eq!(parsed.prompt, "be brief\nhello\nparts\n{\"a\":1}\nresult");
    assert_eq!(parsed.estimated_output_tokens, 40);
    shout(&mut parsed);
    let out = parsed.json();
    assert_eq!(out["instructions"], "BE BRIEF");
    assert_eq!(out["input"][1]["content"][0]["text"], "PARTS");
    assert_eq!(out["input"][3]["output"], "RESULT");
    let plain = parse(Api::Responses, json!({"model": "m", "input": "just text"}));
    assert_eq!(plain.prompt, "just text");
}

#[test]
fn anthropic_bodies_read_system_text_blocks_tool_inputs_and_results() {
    let body = json!({"model": "claude", "max_tokens": 300,
        "system": [{"type": "text", "text": "sys"}],
        "messages": [
            {"role": "user", "content": "plain"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "lookup", "input": {"email": "x@y.z"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "found"}]},
                {"type": "image", "source": {"type": "base64", "data": "AAAA"}},
                {"type": "text", "text": "thanks"}]}]});
    let mut parsed = parse(Api::Messages, body);
    assert_eq!(parsed.prompt, "sys\nplain\nx@y.z\nfound\nthanks");
    assert_eq!(parsed.estimated_output_tokens, 300);
    shout(&mut parsed);
    let out = parsed.json();
    assert_eq!(out["system"][0]["text"], "SYS");
    assert_eq!(out["messages"][1]["content"][0]["input"]["email"], "X@Y.Z");
    assert_eq!(
        out["messages"][2]["content"][0]["content"][0]["text"],
        "FOUND"
    );
    assert_eq!(out["messages"][2]["content"][1]["source"]["data"], "AAAA");
}

#[test]
fn extra_paths_scan_every_string_but_the_model() {
    let mut parsed = parse(
        Api::Extra,
        json!({"model": "m", "prompt": "a", "options": {"tags": ["b", 3]}}),
    );
    assert_eq!(parsed.prompt, "b\na");
    shout(&mut parsed);
    assert_eq!(parsed.json()["model"], "m");
    assert_eq!(parsed.json()["options"]["tags"][0], "B");
}

#[test]
fn an_unchanged_body_is_sent_as_the_original_bytes() {
    let original = Bytes::from_static(br#"{"model":"m",   "prompt":"x"}"#);
    let parsed =
        ModelRequest::parse(Api::Completions, &original, 1, TokenEstimates::Heuristic).unwrap();
    assert_eq!(parsed.into_body(original.clone()), original);
    let mut changed =
        ModelRequest::parse(Api::Completions, &original, 1, TokenEstimates::Heuristic).unwrap();
    changed.rewrite_texts(|_, _| None);
    assert_eq!(changed.into_body(original.clone()), original);
}

#[test]
fn degrade_rewrites_model_and_caps_each_apis_output_field() {
    let mut completions = parse(
        Api::Completions,
        json!({"model": "big", "prompt": ["x"], "max_tokens": 1000}),
    );
    completions.degrade(Some("small"), Some(100));
    assert_eq!(completions.json()["model"], "small");
    assert_eq!(completions.json()["max_tokens"], 100);
    let mut responses = parse(Api::Responses, json!({"model": "big", "input": "x"}));
    responses.degrade(None, Some(10));
    assert_eq!(responses.json()["max_output_tokens"], 10);
    assert!(responses.json().get("max_tokens").is_none());
    let mut messages = parse(
        Api::Messages,
        json!({"model": "big", "max_tokens": 500, "messages": []}),
    );
    messages.degrade(None, Some(64));
    assert_eq!(messages.json()["max_tokens"], 64);
    assert_eq!(messages.estimated_output_tokens, 64);
}

#[test]
fn stream_usage_is_asked_for_chat_and_completions_once_and_never_overrides_the_caller() {
    let mut chat = parse(
        Api::ChatCompletions,
        json!({"model": "m", "messages": [], "stream": true}),
    );
    chat.request_stream_usage();
    assert_eq!(chat.json()["stream_options"]["include_usage"], true);
    let mut declined = parse(
        Api::ChatCompletions,
        json!({"model": "m", "messages": [], "stream": true, "stream_options": {"include_usage": false}}),
    );
    declined.request_stream_usage();
    assert_eq!(declined.json()["stream_options"]["include_usage"], false);
    let mut messages = parse(
        Api::Messages,
        json!({"model": "m", "messages": [], "stream": true}),
    );
    messages.request_stream_usage();
    assert!(messages.json().get("stream_options").is_none());
}

#[test]
fn each_providers_usage_is_read_from_whole_responses() {
    let openai = br#"{"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
    let responses =
        br#"{"output":[],"usage":{"input_tokens":9,"output_tokens":4,"total_tokens":13}}"#;
    let anthropic = br#"{"content":[],"usage":{"input_tokens":10,"cache_read_input_tokens":90,"output_tokens":3}}"#;
    let embeddings = br#"{"data":[],"usage":{"prompt_tokens":6,"total_tokens":6}}"#;
    let usage = |input_tokens, output_tokens| {
        Some(Usage {
            input_tokens,
            output_tokens,
        })
    };
    assert_eq!(response_usage(openai), usage(5, 2));
    assert_eq!(response_usage(responses), usage(9, 4));
    assert_eq!(response_usage(anthropic), usage(100, 3));
    assert_eq!(response_usage(embeddings), usage(6, 0));
    assert_eq!(response_usage(b"not json"), None);
    assert_eq!(response_usage(b"{}"), None);
}

#[test]
fn a_hostile_upstreams_huge_counts_saturate_rather_than_wrap_to_a_small_charge() {
    let max = u64::MAX;
    let anthropic = format!(
        r#"{{"usage":{{"input_tokens":{max},"cache_creation_input_tokens":{max},"cache_read_input_tokens":5,"output_tokens":1}}}}"#
    );
    assert_eq!(
        response_usage(anthropic.as_bytes()),
        Some(Usage {
            input_tokens: max,
            output_tokens: 1,
        })
    );
    let mut tracker = UsageTracker {
        reported: None,
        generated_chars: max - 1,
    };
    let chunk = json!({"choices": [{"index": 0, "delta": {"content": "four"}}]});
    tracker.observe(Api::ChatCompletions, &chunk);
    assert_eq!(tracker.generated_chars, max);
}

#[test]
fn streamed_usage_is_read_from_each_providers_events() {
    let mut chat = UsageTracker::default();
    chat.observe(
        Api::ChatCompletions,
        &json!({"choices": [{"index": 0, "delta": {"content": "hello "}}]}),
    );
    chat.observe(
        Api::ChatCompletions,
        &json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}),
    );
    assert_eq!(
        chat.reported,
        Some(Usage {
            input_tokens: 7,
            output_tokens: 3
        })
    );
    assert_eq!(chat.generated_chars, 6);

    let mut anthropic = UsageTracker::default();
    anthropic.observe(Api::Messages, &json!({"type": "message_start", "message": {"usage": {"input_tokens": 25, "output_tokens": 1}}}));
    anthropic.observe(Api::Messages, &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}));
    anthropic.observe(
        Api::Messages,
        &json!({"type": "message_delta", "usage": {"output_tokens": 15}}),
    );
    assert_eq!(
        anthropic.reported,
        Some(Usage {
            input_tokens: 25,
            output_tokens: 15
        })
    );
    assert_eq!(anthropic.generated_chars, 2);

    let mut responses = UsageTracker::default();
    responses.observe(
        Api::Responses,
        &json!({"type": "response.output_text.delta", "delta": "abc"}),
    );
    responses.observe(Api::Responses, &json!({"type": "response.completed", "response": {"usage": {"input_tokens": 4, "output_tokens": 2}}}));
    assert_eq!(
        responses.reported,
        Some(Usage {
            input_tokens: 4,
            output_tokens: 2
        })
    );
    assert_eq!(responses.counted_output_tokens(), 1);
}

#[test]
fn providers_take_their_own_apis_only() {
    assert!(Provider::OpenAi.accepts(Api::Responses));
    assert!(!Provider::OpenAi.accepts(Api::Messages));
    assert!(Provider::Anthropic.accepts(Api::Messages));
    assert!(!Provider::Anthropic.accepts(Api::ChatCompletions));
    assert!(Provider::SelfHosted.accepts(Api::Messages));
    assert!(!Provider::NotRoutable.accepts(Api::ChatCompletions));
    assert_eq!(Provider::parse("bedrock"), Provider::NotRoutable);
    assert_eq!(Provider::parse("my-vllm"), Provider::SelfHosted);
    assert_eq!(Api::from_path("/v1/messages/"), Some(Api::Messages));
    assert_eq!(Api::from_path("/v1/messages/batches"), None);
}

#[test]
fn exact_estimates_use_the_model_familys_tokenizer() {
    let text = "Summarise the quarterly report in three bullet points, please.";
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]});
    let bytes = body.to_string();
    let exact = ModelRequest::parse(
        Api::ChatCompletions,
        bytes.as_bytes(),
        1,
        TokenEstimates::Exact,
    )
    .unwrap();
    let heuristic = ModelRequest::parse(
        Api::ChatCompletions,
        bytes.as_bytes(),
        1,
        TokenEstimates::Heuristic,
    )
    .unwrap();
    let o200k = policybind_engine::tokens::estimate("gpt-4o-mini", text);
    assert_eq!(exact.estimated_input_tokens, o200k + TOKENS_PER_MESSAGE);
    // 62 ASCII characters at 4 per token.
    assert_eq!(heuristic.estimated_input_tokens, 16 + TOKENS_PER_MESSAGE);
    assert_ne!(
        o200k, 16,
        "the tokenizer counts differently from the heuristic"
    );
}
