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
    fn render(&mut self, event: Event) -> Result<Bytes, io::Error> {
        let text = match self.completion.api {
            Api::Chat | Api::Completions | Api::Embeddings => self.render_chat(event)?,
            Api::Responses => self.render_responses(event)?,
            Api::Messages => self.render_messages(event)?,
        };
        Ok(Bytes::from(text))
    }

    /// Events shared by every API: the comment, the broken line and the cut.
    fn render_common(&mut self, event: Event) -> Option<Result<String, io::Error>> {
        match event {
            Event::Comment => Some(Ok(PROCESSING_COMMENT.to_owned())),
            Event::Broken => Some(Ok(format!(
                "data: {{\"id\":\"{}\",\"choices\":[{{\"delta\n\n",
                self.completion.id
            ))),
            Event::Cut => {
                self.settle(Some("error"), false);
                Some(Err(io::Error::other("mock fault: cut")))
            }
            _ => None,
        }
    }

    fn render_responses(&mut self, event: Event) -> Result<String, io::Error> {
        if let Some(common) = self.render_common(event) {
            return common;
        }
        let mut seq = self.sequence_number;
        let mut next = || {
            seq += 1;
            seq - 1
        };
        let completion = &self.completion;
        let text = match event {
            Event::Start => responses::start_events(completion, &mut next),
            Event::Token(token_idx) => {
                self.tokens_sent += 1;
                responses::delta_event(completion, next(), &Completion::piece(token_idx))
            }
            Event::Final => responses::done_events(completion, &mut next),
            Event::Usage => responses::event(
                "response.completed",
                next(),
                serde_json::json!({
                    "response": responses::response(completion, true, completion.usage_json())
                }),
            ),
            Event::MidstreamError => {
                let text = responses::failed_event(completion, next());
                self.sequence_number = seq;
                self.settle(Some("error"), false);
                return Ok(text);
            }
            Event::Done => {
                self.sequence_number = seq;
                self.settle(Some(self.completion.finish_reason), false);
                return Ok(String::new());
            }
            Event::Comment | Event::Broken | Event::Cut => String::new(),
        };
        self.sequence_number = seq;
        Ok(text)
    }

    fn render_messages(&mut self, event: Event) -> Result<String, io::Error> {
        if let Some(common) = self.render_common(event) {
            return common;
        }
        let completion = &self.completion;
        let text = match event {
            Event::Start => messages::start_events(completion),
            Event::Token(token_idx) => {
                self.tokens_sent += 1;
                messages::delta_event(&Completion::piece(token_idx))
            }
            Event::Final => messages::block_stop_event(),
            Event::Usage => messages::message_delta_event(completion),
            Event::MidstreamError => {
                self.settle(Some("error"), false);
                messages::error_event("Provider disconnected unexpectedly")
            }
            Event::Done => {
                self.settle(Some(self.completion.finish_reason), false);
                messages::stop_event()
            }
            Event::Comment | Event::Broken | Event::Cut => String::new(),
        };
        Ok(text)
    }

    fn render_chat(&mut self, event: Event) -> Result<String, io::Error> {
        let completion = &self.completion;
        let text = match event {
            Event::Start => String::new(),
            Event::Comment => PROCESSING_COMMENT.to_owned(),
            Event::Token(token_idx) => {
                self.tokens_sent += 1;
                data(&self.chunk(vec![self.choice(&Completion::piece(token_idx), None)]))
            }
            Event::Final => {
                data(&self.chunk(vec![self.choice("", Some(completion.finish_reason))]))
            }
            Event::Usage => {
                let mut chunk = self.chunk(Vec::new());
                if let (Some(usage), Some(chunk)) = (completion.usage_json(), chunk.as_object_mut())
                {
                    chunk.insert("usage".to_owned(), usage);
                }
                data(&chunk)
            }
            Event::Broken => format!(
                "data: {{\"id\":\"{}\",\"choices\":[{{\"delta\n\n",
                completion.id
            ),
            Event::Done => {
                self.settle(Some(completion.finish_reason), false);
                "data: [DONE]\n\n".to_owned()
            }
            Event::MidstreamError => {
                let mut chunk = self.chunk(vec![self.choice("", Some("error"))]);
                if let Some(chunk) = chunk.as_object_mut() {
                    let error = json!({
                        "code": "server_error",
                        "message": "Provider disconnected unexpectedly",
                    });
                    chunk.insert("error".to_owned(), error);
                }
                self.settle(Some("error"), false);
                data(&chunk)
            }
            Event::Cut => {
                self.settle(Some("error"), false);
                return Err(io::Error::other("mock fault: cut"));
            }
        };
        Ok(text)
    }

    /// The envelope shared by every chunk.
    fn chunk(&self, choices: Vec<Value>) -> Value {
        let completion = &self.completion;
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

    fn choice(&self, text: &str, finish_reason: Option<&str>) -> Value {
        match self.completion.api {
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
