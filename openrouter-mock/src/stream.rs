//! Streamed answers: `text/event-stream` written chunk by chunk through
//! `Body::from_stream`, so a client sees each token as it is produced, in the
//! endpoint's own events: chat chunks ending in `data: [DONE]`, the Responses
//! API's typed events ending in `response.completed`, or Anthropic's
//! `message_start` ... `message_stop`.
//!
//! The stream owns a [`Streamer`]; whatever ends it, the generation is
//! settled exactly once: at `[DONE]`, at a mid-stream failure, or, when the
//! client hangs up and hyper drops the body, in `Drop` as cancelled.

use std::collections::VecDeque;
use std::io;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::chat::GENERATION_ID_HEADER;
use crate::faults::{Fault, TOKENS_BEFORE_FAILURE};
use crate::request::{Api, Completion};
use crate::state::MockState;
use crate::{messages, responses};

/// The keep-alive comment OpenRouter sends while a model works.
const PROCESSING_COMMENT: &str = ": OPENROUTER PROCESSING\n\n";

/// Starts streaming `completion`; the response is returned at once and the
/// body is produced as the client reads it.
pub fn respond(state: MockState, caller: Caller, completion: Completion) -> Response {
    let generation_id = HeaderValue::from_str(&completion.id).ok();
    let streamer = Streamer {
        events: plan_events(&completion),
        state,
        caller,
        completion,
        tokens_sent: 0,
        sequence_number: 0,
        settled: false,
    };
    let body = futures_util::stream::unfold(streamer, |mut streamer| async move {
        let event = streamer.events.pop_front()?;
        if matches!(event, Event::Token(token_idx) if token_idx > 0) || event == Event::Final {
            tokio::time::sleep(streamer.completion.delay).await;
        }
        let item = streamer.render(event);
        Some((item, streamer))
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(generation_id) = generation_id {
        headers.insert(GENERATION_ID_HEADER, generation_id);
    }
    response
}

/// One step of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Comment,
    /// What comes before the first token (nothing for chat).
    Start,
    Token(u64),
    /// The chunk that carries `finish_reason`.
    Final,
    /// The chunk with `choices: []` and the usage.
    Usage,
    Done,
    MidstreamError,
    Cut,
    /// A `data:` line that is not JSON, for the `malformed` fault.
    Broken,
}

fn plan_events(completion: &Completion) -> VecDeque<Event> {
    let n_tokens = match completion.fault {
        Some(Fault::MidstreamError | Fault::Cut) => {
            completion.completion_tokens.min(TOKENS_BEFORE_FAILURE)
        }
        _ => completion.completion_tokens,
    };
    let mut events = VecDeque::from([Event::Comment, Event::Start]);
    events.extend((0..n_tokens).map(Event::Token));
    let chat = matches!(completion.api, Api::Chat | Api::Completions);
    match completion.fault {
        Some(Fault::MidstreamError) => events.push_back(Event::MidstreamError),
        Some(Fault::Cut) => events.push_back(Event::Cut),
        // Chat leaves the usage chunk out; the other APIs send their final event without it.
        Some(Fault::NoUsage) if chat => events.extend([Event::Final, Event::Done]),
        Some(Fault::Malformed) => events.extend([Event::Final, Event::Broken, Event::Done]),
        _ => events.extend([Event::Final, Event::Usage, Event::Done]),
    }
    events
}

struct Streamer {
    state: MockState,
    caller: Caller,
    completion: Completion,
    events: VecDeque<Event>,
    tokens_sent: u64,
    /// The Responses API's event counter.
    sequence_number: u64,
    settled: bool,
}

impl Streamer {
    /// The bytes of one event. What every API shares is here: the comment, the broken line,
    /// the cut, counting tokens and settling at the end; each API's own text comes from its
    /// renderer.
    fn render(&mut self, event: Event) -> Result<Bytes, io::Error> {
        let text = match event {
            Event::Comment => PROCESSING_COMMENT.to_owned(),
            Event::Broken => format!(
                "data: {{\"id\":\"{}\",\"choices\":[{{\"delta\n\n",
                self.completion.id
            ),
            Event::Cut => {
                self.settle(Some("error"), false);
                return Err(io::Error::other("mock fault: cut"));
            }
            _ => {
                if matches!(event, Event::Token(_)) {
                    self.tokens_sent += 1;
                }
                let completion = &self.completion;
                match completion.api {
                    Api::Chat | Api::Completions | Api::Embeddings => chat_text(completion, event),
                    Api::Responses => responses_text(completion, &mut self.sequence_number, event),
                    Api::Messages => messages_text(completion, event),
                }
            }
        };
        match event {
            Event::Done => self.settle(Some(self.completion.finish_reason), false),
            Event::MidstreamError => self.settle(Some("error"), false),
            _ => {}
        }
        Ok(Bytes::from(text))
    }

    /// Charges what was sent, once.
    fn settle(&mut self, finish_reason: Option<&'static str>, cancelled: bool) {
        if self.settled {
            return;
        }
        self.settled = true;
        let record = self
            .completion
            .record(self.tokens_sent, finish_reason, cancelled);
        self.state.settle(&self.caller, record);
    }
}

impl Drop for Streamer {
    /// The body was dropped before the stream ended: the client hung up.
    fn drop(&mut self) {
        if !self.settled {
            tracing::debug!(generation.id = %self.completion.id, "client hung up mid-stream");
            self.settle(None, true);
        }
    }
}

fn data(chunk: &Value) -> String {
    format!("data: {chunk}\n\n")
}

/// A chat or text completion's event: its chunk, or the `[DONE]` that ends the stream.
fn chat_text(completion: &Completion, event: Event) -> String {
    match event {
        Event::Token(token_idx) => data(&chunk(
            completion,
            vec![choice(completion, &Completion::piece(token_idx), None)],
        )),
        Event::Final => data(&chunk(
            completion,
            vec![choice(completion, "", Some(completion.finish_reason))],
        )),
        Event::Usage => {
            let mut chunk = chunk(completion, Vec::new());
            if let (Some(usage), Some(chunk)) = (completion.usage_json(), chunk.as_object_mut()) {
                chunk.insert("usage".to_owned(), usage);
            }
            data(&chunk)
        }
        Event::Done => "data: [DONE]\n\n".to_owned(),
        Event::MidstreamError => {
            let mut chunk = chunk(completion, vec![choice(completion, "", Some("error"))]);
            if let Some(chunk) = chunk.as_object_mut() {
                let error = json!({
                    "code": "server_error",
                    "message": "Provider disconnected unexpectedly",
                });
                chunk.insert("error".to_owned(), error);
            }
            data(&chunk)
        }
        Event::Start | Event::Comment | Event::Broken | Event::Cut => String::new(),
    }
}

/// A Responses API event (or events), numbered from `sequence_number` on.
fn responses_text(completion: &Completion, sequence_number: &mut u64, event: Event) -> String {
    let mut next = || {
        *sequence_number += 1;
        *sequence_number - 1
    };
    match event {
        Event::Start => responses::start_events(completion, &mut next),
        Event::Token(token_idx) => {
            responses::delta_event(completion, next(), &Completion::piece(token_idx))
        }
        Event::Final => responses::done_events(completion, &mut next),
        Event::Usage => responses::event(
            "response.completed",
            next(),
            json!({ "response": responses::response(completion, true, completion.usage_json()) }),
        ),
        Event::MidstreamError => responses::failed_event(completion, next()),
        Event::Done | Event::Comment | Event::Broken | Event::Cut => String::new(),
    }
}

/// An Anthropic Messages event (or events).
fn messages_text(completion: &Completion, event: Event) -> String {
    match event {
        Event::Start => messages::start_events(completion),
        Event::Token(token_idx) => messages::delta_event(&Completion::piece(token_idx)),
        Event::Final => messages::block_stop_event(),
        Event::Usage => messages::message_delta_event(completion),
        Event::MidstreamError => messages::error_event("Provider disconnected unexpectedly"),
        Event::Done => messages::stop_event(),
        Event::Comment | Event::Broken | Event::Cut => String::new(),
    }
}

/// The envelope shared by every chat or text completion chunk.
fn chunk(completion: &Completion, choices: Vec<Value>) -> Value {
    let object = match completion.api {
        Api::Chat => "chat.completion.chunk",
        _ => "text_completion",
    };
    json!({
        "id": completion.id,
        "provider": "Mock",
        "model": completion.model,
        "object": object,
        "created": completion.created,
        "system_fingerprint": null,
        "choices": choices,
    })
}

fn choice(completion: &Completion, text: &str, finish_reason: Option<&str>) -> Value {
    match completion.api {
        Api::Chat => json!({
            "index": 0,
            "delta": { "role": "assistant", "content": text },
            "finish_reason": finish_reason,
            "native_finish_reason": finish_reason,
            "logprobs": null,
        }),
        _ => json!({
            "index": 0,
            "text": text,
            "finish_reason": finish_reason,
            "native_finish_reason": finish_reason,
            "logprobs": null,
        }),
    }
}
