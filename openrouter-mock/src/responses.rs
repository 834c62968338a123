//! The OpenAI Responses API's shapes: the `response` object and its stream of typed events
//! (`event: <type>` and `data: {"type": <type>, "sequence_number": n, ...}`), from
//! `response.created` to `response.completed`, whose `response.usage` carries the totals.

use serde_json::{Value, json};

use crate::request::Completion;

/// The `response` object: `status` `in_progress` with no output yet, or `completed` (or
/// `incomplete` when the limit cut it) with the text and, when given, the usage.
pub fn response(completion: &Completion, done: bool, usage: Option<Value>) -> Value {
    let cut = completion.finish_reason == "length";
    let status = match (done, cut) {
        (false, _) => "in_progress",
        (true, false) => "completed",
        (true, true) => "incomplete",
    };
    let output = if done {
        vec![message_item(completion, &completion.text(), "completed")]
    } else {
        Vec::new()
    };
    json!({
        "id": completion.id,
        "object": "response",
        "created_at": completion.created,
        "model": completion.model,
        "status": status,
        "error": null,
        "incomplete_details": if done && cut { json!({ "reason": "max_output_tokens" }) } else { Value::Null },
        "instructions": null,
        "metadata": {},
        "output": output,
        "parallel_tool_calls": true,
        "temperature": null,
        "tool_choice": "auto",
        "tools": [],
        "top_p": null,
        "usage": usage.unwrap_or(Value::Null),
    })
}

fn message_item(completion: &Completion, text: &str, status: &str) -> Value {
    let content = if status == "completed" {
        vec![output_text(text)]
    } else {
        Vec::new()
    };
    json!({
        "type": "message",
        "id": item_id(completion),
        "status": status,
        "role": "assistant",
        "content": content,
    })
}

fn output_text(text: &str) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [] })
}

fn item_id(completion: &Completion) -> String {
    format!("msg_{}", completion.id)
}

/// One event of the stream, `event:` and `data:` lines.
pub fn event(kind: &str, sequence_number: u64, fields: Value) -> String {
    let mut data = json!({ "type": kind, "sequence_number": sequence_number });
    if let (Some(data), Value::Object(fields)) = (data.as_object_mut(), fields) {
        data.extend(fields);
    }
    format!("event: {kind}\ndata: {data}\n\n")
}

/// The events before the first token: the response created and in progress, its message item
/// and text part opened.
pub fn start_events(completion: &Completion, next: &mut impl FnMut() -> u64) -> String {
    let in_progress = response(completion, false, None);
    [
        event(
            "response.created",
            next(),
            json!({ "response": in_progress }),
        ),
        event(
            "response.in_progress",
            next(),
            json!({ "response": in_progress }),
        ),
        event(
            "response.output_item.added",
            next(),
            json!({ "output_index": 0, "item": message_item(completion, "", "in_progress") }),
        ),
        event(
            "response.content_part.added",
            next(),
            json!({ "item_id": item_id(completion), "output_index": 0, "content_index": 0, "part": output_text("") }),
        ),
    ]
    .concat()
}

/// One token's delta.
pub fn delta_event(completion: &Completion, sequence_number: u64, text: &str) -> String {
    event(
        "response.output_text.delta",
        sequence_number,
        json!({ "item_id": item_id(completion), "output_index": 0, "content_index": 0, "delta": text, "logprobs": [] }),
    )
}

/// The events that close the text part and the message item.
pub fn done_events(completion: &Completion, next: &mut impl FnMut() -> u64) -> String {
    let text = completion.text();
    [
        event(
            "response.output_text.done",
            next(),
            json!({ "item_id": item_id(completion), "output_index": 0, "content_index": 0, "text": text, "logprobs": [] }),
        ),
        event(
            "response.content_part.done",
            next(),
            json!({ "item_id": item_id(completion), "output_index": 0, "content_index": 0, "part": output_text(&text) }),
        ),
        event(
            "response.output_item.done",
            next(),
            json!({ "output_index": 0, "item": message_item(completion, &text, "completed") }),
        ),
    ]
    .concat()
}

/// `response.failed`, for a generation that failed mid-stream.
pub fn failed_event(completion: &Completion, sequence_number: u64) -> String {
    let mut failed = response(completion, false, None);
    if let Some(failed) = failed.as_object_mut() {
        failed.insert("status".into(), json!("failed"));
        failed.insert(
            "error".into(),
            json!({ "code": "server_error", "message": "Provider disconnected unexpectedly" }),
        );
    }
    event(
        "response.failed",
        sequence_number,
        json!({ "response": failed }),
    )
}
