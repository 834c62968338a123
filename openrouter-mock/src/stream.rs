//! Streamed answers: `text/event-stream` written chunk by chunk through
//! `Body::from_stream`, so a client sees each token as it is produced.
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
    let mut events = VecDeque::from([Event::Comment]);
    events.extend((0..n_tokens).map(Event::Token));
    match completion.fault {
        Some(Fault::MidstreamError) => events.push_back(Event::MidstreamError),
        Some(Fault::Cut) => events.push_back(Event::Cut),
        Some(Fault::NoUsage) => events.extend([Event::Final, Event::Done]),
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
    settled: bool,
}

impl Streamer {
    fn render(&mut self, event: Event) -> Result<Bytes, io::Error> {
        let completion = &self.completion;
        let text = match event {
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
        Ok(Bytes::from(text))
    }

    /// The envelope shared by every chunk.
    fn chunk(&self, choices: Vec<Value>) -> Value {
        let completion = &self.completion;
        let object = match completion.api {
            Api::Chat => "chat.completion.chunk",
            Api::Completions => "text_completion",
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
            Api::Completions => json!({
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
