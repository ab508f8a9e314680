"""The official OpenAI and Anthropic Python SDKs, pointed at PolicyBind with
only `base_url` and `api_key` changed, against a provider reached over HTTPS
(test CA): every model API, streaming included, denials raised as the SDKs'
own errors, redaction both ways, a blocked answer ending a stream."""

from __future__ import annotations

import anthropic
import openai
import pytest

from conftest import ALICE, ANTHROPIC_KEY, BOB, OPENAI_KEY


@pytest.fixture
def oai(stack):
    return openai.OpenAI(base_url=stack.base + "/v1", api_key=ALICE, max_retries=0)


@pytest.fixture
def ant(stack):
    return anthropic.Anthropic(base_url=stack.base, api_key=ALICE, max_retries=0)


def only_request(stack) -> dict:
    received = stack.provider.received()
    assert len(received) == 1, received
    return received[0]


def assert_provider_key_only(request: dict, header: str, value: str) -> None:
    headers = request["headers"]
    assert headers[header] == value
    assert ALICE not in str(request), "the PolicyBind token reached the provider"


def test_openai_chat_completion_reaches_openai_with_the_openai_key(oai, stack):
    raw = oai.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Say hello"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "You said: Say hello"
    assert completion.usage.total_tokens > 0
    assert raw.headers["x-policybind-decision"] == "Allow"
    request = only_request(stack)
    assert request["path"] == "/v1/chat/completions"
    assert request["version"] == "HTTP/2.0"
    assert_provider_key_only(request, "authorization", f"Bearer {OPENAI_KEY}")


def test_openai_chat_stream_arrives_whole_with_usage(oai):
    stream = oai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Stream this"}], stream=True)
    text, usage = "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        usage = chunk.usage or usage
    assert text == "You said: Stream this"
    assert usage is not None and usage.completion_tokens == 4


def test_openai_completions_and_embeddings(oai):
    completion = oai.completions.create(model="gpt-4o", prompt="Complete me", max_tokens=8)
    assert completion.choices[0].text == "You said: Complete me"
    embedding = oai.embeddings.create(model="text-embedding-3-small", input="embed me")
    assert embedding.data[0].embedding == [0.1, 0.2, 0.3]


def test_openai_responses_api_plain_and_streamed(oai):
    response = oai.responses.create(model="gpt-4o", input="Respond please")
    assert response.output_text == "You said: Respond please"
    assert response.usage.output_tokens == 4
    events = list(oai.responses.create(model="gpt-4o", input="Stream please", stream=True))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "You said: Stream please"
    completed = [e for e in events if e.type == "response.completed"]
    assert completed and completed[0].response.usage.total_tokens > 0


def test_openai_model_list_is_what_the_token_may_call(oai, stack):
    ids = sorted(m.id for m in oai.models.list())
    assert ids == ["claude-test", "gpt-4o", "llama-3-8b", "text-embedding-3-small"]
    bob = openai.OpenAI(base_url=stack.base + "/v1", api_key=BOB, max_retries=0)
    assert [m.id for m in bob.models.list()] == ["llama-3-8b"]


def test_openai_denials_are_the_sdks_own_errors_with_the_rationale_code(stack):
    bob = openai.OpenAI(base_url=stack.base + "/v1", api_key=BOB, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        bob.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert denied.value.code == "TOKEN_MODEL_NOT_ALLOWED"
    assert denied.value.response.headers["x-policybind-codes"] == "TOKEN_MODEL_NOT_ALLOWED"
    stranger = openai.OpenAI(base_url=stack.base + "/v1", api_key="not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as unknown:
        stranger.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.code == "TOKEN_UNKNOWN"
    assert stack.provider.received() == []


def test_personal_data_is_redacted_before_the_provider_sees_it(oai, stack):
    completion = oai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Mail jane.doe@example.com today"}])
    assert completion.choices[0].message.content == "You said: Mail [REDACTED:EMAIL] today"
    assert "jane.doe" not in str(stack.provider.received())


def test_anthropic_messages_reach_anthropic_with_the_anthropic_key(ant, stack):
    message = ant.messages.create(model="claude-test", max_tokens=64,
                                  messages=[{"role": "user", "content": "Hello Claude"}])
    assert message.content[0].text == "You said: Hello Claude"
    assert message.usage.output_tokens == 4
    request = only_request(stack)
    assert request["path"] == "/v1/messages"
    assert_provider_key_only(request, "x-api-key", ANTHROPIC_KEY)
    assert "authorization" not in request["headers"]


def test_anthropic_stream_arrives_whole_with_usage(ant):
    with ant.messages.stream(model="claude-test", max_tokens=64,
                             messages=[{"role": "user", "content": "Stream to me"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "You said: Stream to me"
    assert final.usage.output_tokens == 5


def test_anthropic_model_list_and_denial(ant, stack):
    ids = [m.id for m in ant.models.list()]
    assert "claude-test" in ids
    bob = anthropic.Anthropic(base_url=stack.base, api_key=BOB, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        bob.messages.create(model="claude-test", max_tokens=8,
                            messages=[{"role": "user", "content": "hi"}])
    assert denied.value.body["error"]["code"] == "TOKEN_MODEL_NOT_ALLOWED"


def test_personal_data_in_answers_is_redacted_streamed(oai, ant, stack):
    stack.provider.behave(reply="Call +1 415 555 2671 or write to ops@example.com now.")
    stream = oai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "who?"}], stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Call [REDACTED:PHONE] or write to [REDACTED:EMAIL] now."
    with ant.messages.stream(model="claude-test", max_tokens=64,
                             messages=[{"role": "user", "content": "who?"}]) as stream:
        assert "".join(stream.text_stream) == "Call [REDACTED:PHONE] or write to [REDACTED:EMAIL] now."


def test_a_secret_in_an_answer_is_blocked_and_ends_streams_with_the_code(oai, ant, stack):
    stack.provider.behave(reply="The key is AKIAIOSFODNN7EXAMPLE keep it")
    with pytest.raises(openai.PermissionDeniedError) as blocked:
        oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "key?"}])
    assert blocked.value.code == "SECRET_DETECTED"

    stream = oai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "key?"}], stream=True)
    seen = ""
    with pytest.raises(openai.APIError) as ended:
        for chunk in stream:
            seen += "".join(c.delta.content or "" for c in chunk.choices)
    assert ended.value.body["code"] == "SECRET_DETECTED"
    assert "AKIA" not in seen

    with pytest.raises(anthropic.APIStatusError) as ended:
        with ant.messages.stream(model="claude-test", max_tokens=64,
                                 messages=[{"role": "user", "content": "key?"}]) as stream:
            seen = "".join(stream.text_stream)
    assert ended.value.body["error"]["code"] == "SECRET_DETECTED"

    events = list(oai.responses.create(model="gpt-4o", input="key?", stream=True))
    errors = [e for e in events if e.type == "error"]
    assert errors and errors[0].code == "SECRET_DETECTED"
    assert "AKIA" not in "".join(getattr(e, "delta", "") for e in events)
