//! Forwarding an admitted request and handling the answer: the upstream call,
//! decoding a compressed answer, settling the reservation with the usage the
//! provider reports, and the output policy ([`crate::output`]) on what the
//! model says, whole or streamed.
//!
//! An upstream that fails (no connection, timeout, a 4xx/5xx answer) consumed
//! nothing: the reservation is released and the upstream's own error is passed
//! on. A stream is settled when it ends or the caller goes away, with the
//! usage reported so far or, without one, the text counted. An answer that
//! reports no usage is settled with what is known and recorded as estimated
//! ([`UsageSource`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::header::{self, HeaderMap};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use policybind_crds::Effect;
use policybind_engine::audit::AuditEvent;
use policybind_engine::codes;
use policybind_engine::request::{Decision, Request as Facts};
use serde_json::Value;
use tracing::warn;

use crate::compress::{Decoder, strip_encoding_headers};
use crate::handler::{Head, Ready, add_upstream_wait};
use crate::metrics::OutputLabels;
use crate::output::{
    Action, Guarded, Judge, OutputPolicy, OutputSummary, StreamGuard, judge_response,
    stream_refusal_event,
};
use crate::pipeline::{Reservation, UsageSource};
use crate::providers::response::{ChoicesAnswer, answer_text, usage_from_value};
use crate::providers::{Api, Usage, UsageTracker, response_usage};
use crate::refusal::{Refusal, Stage, decision_headers};
use crate::source::Loaded;
use crate::sse::{EventSplitter, Piece};
use crate::state::AppState;
use crate::upstream::UpstreamFailure;

/// Fewest output tokens a stream that outgrew its reservation asks for at a time.
pub const MIN_STREAM_SLICE: u64 = 256;

/// An admitted request and everything its answer needs.
pub struct Forward<'a> {
    pub api: Api,
    pub head: Head,
    pub request_id: &'a str,
    pub loaded: Arc<Loaded>,
    pub decision: Decision,
    pub facts: Facts,
    pub ready: Ready,
    pub reservation: Option<Reservation>,
}

/// When responses are labelled (`policybind serve` with its demo upstream), an
/// answer from a ModelDeployment's endpoint says which provider gave it, so
/// that the demo label is never put on a real model's answer.
fn label_upstream(state: &AppState, route: &crate::upstream::Route, headers: &mut HeaderMap) {
    if state.settings.upstream_label.is_none() {
        return;
    }
    if let Some(value) = route
        .endpoint_provider
        .as_deref()
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        headers.insert(crate::refusal::UPSTREAM_HEADER, value);
    }
}

/// Sends the request and returns the answer, judged and settled.
pub async fn forward(state: &Arc<AppState>, f: Forward<'_>) -> Response<Body> {
    let Forward {
        api,
        head,
        request_id,
        loaded,
        decision,
        facts,
        ready,
        // Dropped (released) on every way out before the answer is read.
        reservation,
    } = f;
    let decided = (decision.effect, decision.codes.clone());
    let headers = ready
        .route
        .headers(api, &head.headers, request_id, ready.body.len());
    let failed =
        |failure, started| upstream_failure(state, failure, api, started, &decided, request_id);
    let started = Instant::now();
    let uri = match ready.route.uri(&head.path_and_query) {
        Ok(uri) => uri,
        Err(e) => return failed(UpstreamFailure::Unavailable(e), started),
    };
    let timeout = state.settings.limits.upstream_timeout;
    let upstream = match state
        .upstream
        .send(Method::POST, uri, headers, ready.body.clone(), timeout)
        .await
    {
        Ok(r) => r,
        // The reservation is released as it drops.
        Err(failure) => return failed(failure, started),
    };
    add_upstream_wait(started);
    let (parts, incoming) = upstream.into_parts();
    let outcome = if parts.status.is_server_error() {
        "error"
    } else {
        "ok"
    };
    let seconds = started.elapsed().as_secs_f64();
    state.metrics.upstream(api.as_str(), outcome, seconds);

    let mut response = Response::new(Body::empty());
    *response.status_mut() = parts.status;
    copy_response_headers(&parts.headers, response.headers_mut());
    decision_headers(response.headers_mut(), decided.0, &decided.1, request_id);
    label_upstream(state, &ready.route, response.headers_mut());
    if !parts.status.is_success() {
        // The model refused or failed: nothing was consumed; release and pass
        // the upstream's own error through.
        *response.body_mut() = Body::new(incoming);
        return response;
    }
    let decoder = match Decoder::for_headers(&parts.headers) {
        Ok(d) => d,
        Err(e) => return failed(UpstreamFailure::Unavailable(e.to_string()), started),
    };
    strip_encoding_headers(response.headers_mut());
    let record = OutputRecord {
        state: state.clone(),
        request_id: request_id.to_string(),
        decision,
        model: ready.model.clone(),
        api,
    };
    let answer = Answer::new(state, record, loaded, facts, decoder, reservation);
    let is_event_stream = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if ready.stream || is_event_stream {
        *response.body_mut() = answer.stream(incoming, state.settings.limits.stream_idle_timeout);
        return response;
    }
    answer.buffered(state, response, incoming).await
}

/// The answer of one forwarded request while it is read.
struct Answer {
    api: Api,
    request_id: String,
    decoder: Option<Decoder>,
    judge: Option<Box<dyn Judge>>,
    reservation: Option<Reservation>,
    record: OutputRecord,
}

impl Answer {
    fn new(
        state: &Arc<AppState>,
        record: OutputRecord,
        loaded: Arc<Loaded>,
        facts: Facts,
        decoder: Option<Decoder>,
        reservation: Option<Reservation>,
    ) -> Answer {
        let api = record.api;
        let scans = state.settings.output.scan && !matches!(api, Api::Embeddings | Api::Models);
        let judge = scans.then(|| Box::new(OutputPolicy::new(loaded, facts)) as Box<dyn Judge>);
        Answer {
            api,
            request_id: record.request_id.clone(),
            decoder,
            judge,
            reservation,
            record,
        }
    }

    /// Reads a whole answer (bounded), judges it and settles.
    async fn buffered(
        mut self,
        state: &Arc<AppState>,
        mut response: Response<Body>,
        incoming: hyper::body::Incoming,
    ) -> Response<Body> {
        let limits = &state.settings.limits;
        let read_started = Instant::now();
        let read = tokio::time::timeout(
            limits.upstream_timeout,
            Limited::new(incoming, limits.max_response_bytes).collect(),
        )
        .await;
        add_upstream_wait(read_started);
        let fail = |detail: String| {
            let refusal = Refusal::failure(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_unavailable",
                "the model server's answer could not be read",
            );
            warn!(%detail, "reading the upstream's answer failed");
            refusal.into_response(Some(self.api), &self.request_id)
        };
        let mut bytes = match read {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => return fail(e.to_string()),
            Err(_) => return fail("timed out".into()),
        };
        if let Some(decoder) = &mut self.decoder {
            let decoded = decoder.push(&bytes).and_then(|mut head| {
                let tail = decoder.finish()?;
                let mut all = BytesMut::from(&head.split_off(0)[..]);
                all.extend_from_slice(&tail);
                Ok(all.freeze())
            });
            bytes = match decoded {
                Ok(b) => b,
                Err(e) => return fail(e.to_string()),
            };
        }
        let (usage, judged) = self.judge_whole(&bytes);
        self.settle(usage, &bytes);
        match judged {
            Judged::Unchanged => *response.body_mut() = Body::from(bytes),
            Judged::Changed(body, summary) => {
                self.record.write(&summary);
                *response.body_mut() = Body::from(body);
            }
            Judged::Blocked(summary) => {
                self.record.write(&summary);
                let blocked = summary.blocked.expect("a block has its code");
                let mut refusal = Refusal::new(Stage::Output, &blocked.code, blocked.message);
                refusal.codes.push(codes::PII_DETECTED.to_string());
                return refusal.into_response(Some(self.api), &self.request_id);
            }
        }
        response
    }

    fn judge_whole(&self, bytes: &Bytes) -> (Option<Usage>, Judged) {
        let Some(judge) = &self.judge else {
            return (response_usage(bytes), Judged::Unchanged);
        };
        // The common case: a chat or completion answer nothing is to change in,
        // read without building a JSON tree.
        if matches!(self.api, Api::ChatCompletions | Api::Completions)
            && let Some(answer) = ChoicesAnswer::read(bytes)
            && answer
                .texts()
                .all(|text| judge.judge(text).action == Action::Pass)
        {
            return (answer.usage(), Judged::Unchanged);
        }
        let Ok(mut json) = serde_json::from_slice::<Value>(bytes) else {
            return (None, Judged::Unchanged);
        };
        let usage = usage_from_value(&json);
        let mut summary = OutputSummary::default();
        match judge_response(self.api, judge.as_ref(), &mut json, &mut summary) {
            Err(_) => (usage, Judged::Blocked(summary)),
            Ok(()) if summary.is_empty() => (usage, Judged::Unchanged),
            Ok(()) => {
                let body = serde_json::to_vec(&json).expect("JSON always serializes");
                (usage, Judged::Changed(Bytes::from(body), summary))
            }
        }
    }

    /// Settles with the usage the answer reports; without one, with what is
    /// known: the estimate's input tokens and the answer's text counted, or,
    /// when the answer's text cannot be read, the whole estimate.
    fn settle(&mut self, usage: Option<Usage>, body: &Bytes) {
        let Some(reservation) = &mut self.reservation else {
            return;
        };
        let estimate = &reservation.estimate;
        let (usage, source) = match usage {
            Some(usage) => (usage, UsageSource::Provider),
            None => match answer_text(self.api, body) {
                Some(text) => {
                    let estimates = self.record.state.settings.token_estimates;
                    let output_tokens = estimates.count(&estimate.model, &text);
                    let input_tokens = estimate.input_tokens;
                    let usage = Usage {
                        input_tokens,
                        output_tokens,
                    };
                    (usage, UsageSource::CountedText)
                }
                None => {
                    let usage = Usage {
                        input_tokens: estimate.input_tokens,
                        output_tokens: estimate.output_tokens,
                    };
                    (usage, UsageSource::Estimate)
                }
            },
        };
        reservation.settle(usage, source);
    }

    /// Passes a stream on event by event (see [`StreamState`]).
    fn stream(self, incoming: hyper::body::Incoming, idle: Duration) -> Body {
        let guard = self.judge.map(|judge| {
            let hold_back = self.record.state.settings.output.hold_back_bytes;
            StreamGuard::new(self.api, judge, hold_back)
        });
        let state = StreamState {
            api: self.api,
            decoder: self.decoder,
            splitter: EventSplitter::default(),
            guard,
            usage: UsageTracker::default(),
            reservation: self.reservation,
            record: self.record,
            ended: false,
        };
        let data = incoming.into_data_stream();
        let stream =
            futures::stream::unfold((data, state), move |(mut data, mut state)| async move {
                if state.ended {
                    return None;
                }
                match tokio::time::timeout(idle, data.next()).await {
                    Ok(Some(Ok(chunk))) => {
                        let out = state.push(&chunk);
                        Some((out, (data, state)))
                    }
                    Ok(Some(Err(e))) => {
                        warn!("upstream stream failed: {e}");
                        state.ended = true;
                        Some((Err(std::io::Error::other(e)), (data, state)))
                    }
                    Ok(None) => {
                        let out = state.end();
                        Some((out, (data, state)))
                    }
                    Err(_) => {
                        warn!("upstream stream idle for too long; closing");
                        state.ended = true;
                        let error = std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "upstream stream idle",
                        );
                        Some((Err(error), (data, state)))
                    }
                }
            });
        Body::from_stream(stream)
    }
}

enum Judged {
    Unchanged,
    Changed(Bytes, OutputSummary),
    Blocked(OutputSummary),
}

/// A stream in flight: decoded, split into events, read for usage, judged.
/// Settled and its output actions recorded when dropped (end or caller gone).
struct StreamState {
    api: Api,
    decoder: Option<Decoder>,
    splitter: EventSplitter,
    guard: Option<StreamGuard>,
    usage: UsageTracker,
    reservation: Option<Reservation>,
    record: OutputRecord,
    ended: bool,
}

impl StreamState {
    fn push(&mut self, chunk: &Bytes) -> Result<Bytes, std::io::Error> {
        let decoded = match &mut self.decoder {
            Some(decoder) => decoder.push(chunk).map_err(std::io::Error::other)?,
            None => chunk.clone(),
        };
        Ok(self.pieces(decoded))
    }

    /// The upstream ended: release what is held back.
    fn end(&mut self) -> Result<Bytes, std::io::Error> {
        self.ended = true;
        let last = match &mut self.decoder {
            Some(decoder) => decoder.finish().map_err(std::io::Error::other)?,
            None => Bytes::new(),
        };
        let tail = if last.is_empty() {
            last
        } else {
            self.pieces(last)
        };
        let mut out = BytesMut::from(&tail[..]);
        if let Some(rest) = self.splitter.finish() {
            out.extend_from_slice(&rest);
        }
        if let Some(guard) = &mut self.guard {
            let (Guarded::Send(pieces) | Guarded::Blocked(pieces)) = guard.finish();
            pieces.iter().for_each(|p| out.extend_from_slice(p));
        }
        Ok(out.freeze())
    }

    /// Splits decoded bytes into events; without a guard the bytes go on as
    /// they came (events are only read for usage).
    fn pieces(&mut self, decoded: Bytes) -> Bytes {
        let pieces = self.splitter.push(&decoded);
        let mut out = BytesMut::new();
        for piece in pieces {
            let event = match piece {
                Piece::Opaque(raw) => {
                    out.extend_from_slice(&raw);
                    continue;
                }
                Piece::Event(event) => event,
            };
            let data = (event.data != "[DONE]")
                .then(|| serde_json::from_str::<Value>(&event.data).ok())
                .flatten();
            if let Some(data) = &data {
                self.usage.observe(self.api, data);
            }
            let cut = self.outgrown();
            match &mut self.guard {
                None => out.extend_from_slice(&event.raw),
                Some(guard) => match guard.event(&event, data) {
                    Guarded::Send(pieces) => pieces.iter().for_each(|p| out.extend_from_slice(p)),
                    Guarded::Blocked(pieces) => {
                        pieces.iter().for_each(|p| out.extend_from_slice(p));
                        self.ended = true;
                        break;
                    }
                },
            }
            if let Some(refusal) = cut {
                // What the model produced so far goes out (it is charged),
                // then the error event, and the stream ends here.
                if let Some(guard) = &mut self.guard {
                    let (Guarded::Send(pieces) | Guarded::Blocked(pieces)) = guard.finish();
                    pieces.iter().for_each(|p| out.extend_from_slice(p));
                }
                out.extend_from_slice(&stream_refusal_event(
                    self.api,
                    &refusal.code,
                    &refusal.message,
                    refusal.error_type,
                ));
                self.ended = true;
                break;
            }
        }
        if self.passthrough() {
            return decoded;
        }
        out.freeze()
    }

    /// Neither judged nor budgeted: bytes go on as they came, events are only
    /// read for usage.
    fn passthrough(&self) -> bool {
        self.guard.is_none() && self.reservation.is_none()
    }

    /// A stream that produced more output than its reservation holds asks
    /// for another slice (as much again as it reserved for output, at least
    /// [`MIN_STREAM_SLICE`] tokens); the refusal, when its budget or a scope's
    /// does not cover it, cuts the stream.
    fn outgrown(&mut self) -> Option<Refusal> {
        let reservation = self.reservation.as_mut()?;
        let produced = self
            .usage
            .reported
            .map_or(0, |u| u.output_tokens)
            .max(self.usage.counted_output_tokens());
        if produced <= reservation.estimate.output_tokens {
            return None;
        }
        let slice = reservation.estimate.output_tokens.max(MIN_STREAM_SLICE);
        reservation.extend(slice).err()
    }
}

impl Drop for StreamState {
    fn drop(&mut self) {
        if let Some(mut reservation) = self.reservation.take() {
            // The model generated what was streamed, whether or not the caller
            // read to the end: settle rather than release.
            let settled = match self.usage.reported {
                Some(usage) => (usage, UsageSource::Provider),
                None => {
                    let usage = Usage {
                        input_tokens: reservation.estimate.input_tokens,
                        output_tokens: self.usage.counted_output_tokens(),
                    };
                    (usage, UsageSource::CountedText)
                }
            };
            reservation.settle(settled.0, settled.1);
        }
        if let Some(guard) = &self.guard {
            self.record.write(&guard.summary);
        }
    }
}

/// Writes what the output policy did to an answer into the audit trail: one
/// record (stage `output`) when something was redacted or blocked.
struct OutputRecord {
    state: Arc<AppState>,
    request_id: String,
    decision: Decision,
    model: String,
    api: Api,
}

impl OutputRecord {
    fn write(&self, summary: &OutputSummary) {
        if summary.is_empty() {
            return;
        }
        let (effect, action) = match &summary.blocked {
            Some(_) => (Effect::Deny, "blocked"),
            None => (Effect::Redact, "redacted"),
        };
        let facts = &self.decision.facts;
        let mut event = AuditEvent::decision(effect)
            .time(chrono::Utc::now())
            .request_id(self.request_id.clone())
            .model(self.model.clone())
            .namespace(facts.namespace.clone().unwrap_or_default())
            .fingerprint(self.decision.fingerprint.clone())
            .detail("endpoint", self.api.as_str())
            .detail("stage", "output");
        if let Some(s) = &facts.subject {
            event = event.subject(s.clone());
        }
        if let Some(t) = &facts.token {
            event = event.token_id(t.clone());
        }
        if let Some(blocked) = &summary.blocked {
            event = event.code(blocked.code.clone());
        }
        for code in &summary.codes {
            event = event.code(code.clone());
        }
        if !summary.redacted.is_empty() {
            let entities: Vec<&str> = summary.redacted.iter().map(String::as_str).collect();
            event = event.detail("redactedEntities", entities.join(","));
        }
        let state = &self.state;
        state
            .metrics
            .output
            .get_or_create(&OutputLabels {
                action: action.into(),
            })
            .inc();
        if let Err(e) = state.audit.append(event) {
            warn!("output action not recorded: {e}");
        }
    }
}

/// Response headers passed back to the caller (hop-by-hop ones dropped, and
/// the length: the body may be decoded or redacted, hyper sets it again).
fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if matches!(
            name.as_str(),
            "connection"
                | "keep-alive"
                | "transfer-encoding"
                | "upgrade"
                | "proxy-connection"
                | "te"
                | "trailer"
                | "content-length"
        ) {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

fn upstream_failure(
    state: &AppState,
    failure: UpstreamFailure,
    api: Api,
    started: Instant,
    decided: &(Effect, Vec<String>),
    request_id: &str,
) -> Response<Body> {
    let (refusal, outcome) = match failure {
        UpstreamFailure::Timeout => {
            warn!("upstream timed out");
            let message = "the model server did not answer in time";
            let r = Refusal::failure(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_error",
                "upstream_timeout",
                message,
            );
            (r, "timeout")
        }
        UpstreamFailure::Unavailable(detail) => {
            warn!(%detail, "upstream unavailable");
            let message = "the model server could not be reached";
            let r = Refusal::failure(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_unavailable",
                message,
            );
            (r, "unavailable")
        }
    };
    let span = tracing::Span::current();
    span.record("stage", Stage::Failure.as_str());
    state
        .metrics
        .upstream(api.as_str(), outcome, started.elapsed().as_secs_f64());
    let mut response = refusal.into_response(Some(api), request_id);
    decision_headers(response.headers_mut(), decided.0, &decided.1, request_id);
    response
}
