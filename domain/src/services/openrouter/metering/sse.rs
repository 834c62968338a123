//! Event-stream mode of the usage meter.
//!
//! The stream is split into lines as it passes; only a line cut by a chunk boundary is copied,
//! and only up to [`SSE_LINE_LIMIT`]: of a longer line (a large image in a delta) only the
//! last [`JSON_TAIL_BYTES`] are kept, and read under the stricter rules of [`sole_usage`].
//! Comment lines (`: OPENROUTER PROCESSING`) and fields other than `data` are skipped. A `data`
//! line is parsed as JSON (skipping all but `usage` and `error`) only when its bytes contain
//! `"usage"` (with a non-null value) or `"error"`: in JSON text a quote inside a string is
//! escaped, so those bytes appear only as keys or whole string values. The lines that arrive
//! whole in one chunk are searched together (one vectorized search finds the next line worth
//! parsing), so the thousand token chunks of a typical stream cost a newline search each.
//!
//! OpenRouter sends one JSON object per `data` line, so lines are read one at a time rather than
//! joined into multi-line events. Lines end with `\n` or `\r\n`. Usage objects seen along the
//! way are merged (see [`UsageReport::merge`]); one in an Anthropic `message_start` is
//! provisional until a later one confirms it.

use std::sync::LazyLock;

use memchr::memmem::Finder;

use crate::services::openrouter::metering::{
    BodyWire, JSON_TAIL_BYTES, MeterOutcome, NoUsage, Parts, SSE_LINE_LIMIT, USAGE_FINDER,
    USAGE_KEY, UsageReport, after_colon, error_message, sole_usage,
};

static ERROR_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"error\""));
static MESSAGE_START_FINDER: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"message_start\""));

/// The offset of the first `"usage"` or `"error"` in `bytes` at or after `from`.
fn next_worth_parsing(bytes: &[u8], from: usize) -> Option<usize> {
    let rest = &bytes[from..];
    let usage = USAGE_FINDER.find(rest);
    // An error after the usage is looked for again once the usage line is read.
    let error = ERROR_FINDER.find(usage.map_or(rest, |at| &rest[..at]));
    error.or(usage).map(|at| from + at)
}

/// The room kept for a line cut by a chunk boundary between lines.
const SHORT_LINE: usize = 16 * 1024;

/// True when a line that starts with `head` and goes on with `rest` is a `data` line.
fn is_data_start(head: &[u8], rest: &[u8]) -> bool {
    let n = 5usize.saturating_sub(head.len()).min(rest.len());
    let mut start = head.to_vec();
    start.extend_from_slice(&rest[..n]);
    start.starts_with(b"data:")
}

/// Reads an event stream line by line.
#[derive(Debug, Default)]
pub(crate) struct SseMeter {
    /// True when the answer can hold no object the client wrote (see `UsageMeter::for_api`):
    /// a line's one usage object is then read on its own.
    no_client_objects: bool,
    /// The start of a line cut by a chunk boundary; once the line passed the limit, its tail.
    partial: Vec<u8>,
    /// True while only the tail of a line past the limit is kept.
    tail_only: bool,
    /// Whether the line kept as a tail is a `data` line.
    tail_is_data: bool,
    /// True once `data: [DONE]` was seen; later bytes are ignored.
    done: bool,
    /// The usage reported so far, merged; boxed, as most of a stream's life has none.
    report: Option<Box<UsageReport>>,
    /// True while the report is only an Anthropic `message_start`'s.
    provisional: bool,
    /// Why the first unreadable usage object was unreadable.
    unusable: Option<NoUsage>,
    error: Option<String>,
    malformed: Option<String>,
    n_long_lines: u32,
}

impl SseMeter {
    pub(crate) fn new(no_client_objects: bool) -> SseMeter {
        SseMeter {
            no_client_objects,
            ..SseMeter::default()
        }
    }

    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        if self.done {
            return;
        }
        let mut rest = chunk;
        if self.tail_only || !self.partial.is_empty() {
            let Some(newline) = memchr::memchr(b'\n', rest) else {
                self.keep_partial(rest);
                return;
            };
            if self.tail_only {
                self.keep_partial(&rest[..newline]);
                let tail = std::mem::take(&mut self.partial);
                self.long_line_tail(&tail);
                self.tail_only = false;
            } else {
                self.partial.extend_from_slice(&rest[..newline]);
                let line = std::mem::take(&mut self.partial);
                self.line(&line, true);
                self.partial = line;
                self.partial.clear();
                // A long line's room is not kept for the rest of the stream.
                self.partial.shrink_to(SHORT_LINE);
            }
            rest = &rest[newline + 1..];
        }
        // Where the next `"usage"` or `"error"` is: the lines before it need no closer look.
        let mut worth_parsing = next_worth_parsing(rest, 0);
        let mut start = 0;
        while let Some(newline) = memchr::memchr(b'\n', &rest[start..]) {
            if self.done {
                return;
            }
            let end = start + newline;
            let holds_one = worth_parsing.is_some_and(|at| at < end);
            self.line(&rest[start..end], holds_one);
            start = end + 1;
            if holds_one {
                worth_parsing = next_worth_parsing(rest, start);
            }
        }
        if !self.done {
            self.keep_partial(&rest[start..]);
        }
    }

    /// Keeps the unfinished end of a chunk; of a line grown past the limit, only its tail.
    fn keep_partial(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if !self.tail_only && self.partial.len() + bytes.len() > SSE_LINE_LIMIT {
            self.tail_only = true;
            self.tail_is_data = self.partial.starts_with(b"data:")
                || (self.partial.len() < 5 && is_data_start(&self.partial, bytes));
            self.n_long_lines += 1;
        }
        self.partial.extend_from_slice(bytes);
        if self.tail_only && self.partial.len() > 2 * JSON_TAIL_BYTES {
            let cut = self.partial.len() - JSON_TAIL_BYTES;
            self.partial.drain(..cut);
        }
    }

    /// Reads the end of a line past the limit: its last [`JSON_TAIL_BYTES`] (the same bytes
    /// however the line was cut into chunks), searched for a usage object.
    fn long_line_tail(&mut self, tail: &[u8]) {
        let tail = tail.strip_suffix(b"\r").unwrap_or(tail);
        let tail = &tail[tail.len().saturating_sub(JSON_TAIL_BYTES)..];
        if self.tail_is_data && USAGE_FINDER.find(tail).is_some() {
            // Nesting cannot be seen in a tail: a line that may be Anthropic's `message_start`
            // is taken as one, so a stream cut after it is charged its reservation.
            let provisional = MESSAGE_START_FINDER.find(tail).is_some();
            self.usage(sole_usage(tail, 2), provisional);
        }
    }

    /// Reads one line; `may_hold_usage` is false when the line is known to hold neither
    /// `"usage"` nor `"error"`.
    fn line(&mut self, line: &[u8], may_hold_usage: bool) {
        if line.len() > SSE_LINE_LIMIT {
            // Only its tail is read even when it arrived whole, so the outcome never depends on
            // chunking.
            self.n_long_lines += 1;
            self.tail_is_data = line.starts_with(b"data:");
            self.long_line_tail(line);
            return;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            // A comment, an empty line between events, or a field other than data.
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data.trim_ascii_end() == b"[DONE]" {
            self.done = true;
            return;
        }
        if !may_hold_usage {
            return;
        }
        let has_usage = USAGE_FINDER.find_iter(data).any(|at| {
            after_colon(&data[at + USAGE_KEY.len()..])
                .is_none_or(|value| !value.starts_with(b"null"))
        });
        let has_error = ERROR_FINDER.find_iter(data).any(|at| {
            after_colon(&data[at + b"\"error\"".len()..])
                .is_none_or(|value| !value.starts_with(b"null"))
        });
        if !has_usage && !has_error {
            return;
        }
        if self.no_client_objects
            && !has_error
            && let Ok(report) = sole_usage(data, 1)
        {
            // One usage object in a chunk that holds nothing the client wrote: it is the one.
            self.usage(Ok(report), false);
            return;
        }
        // The whole line is parsed, so only the usage at its top level (or in a Responses
        // event's `response`, an Anthropic `message_start`'s `message`) is read, never a
        // `"usage"` key inside what the client sent and the answer echoes.
        match serde_json::from_slice::<BodyWire>(data) {
            Ok(chunk) => {
                let Parts {
                    usage,
                    error,
                    provisional,
                } = chunk.into_parts();
                if let Some(usage) = usage {
                    self.usage(usage.report(), provisional);
                }
                if let Some(error) = error {
                    self.error.get_or_insert_with(|| error_message(&error));
                }
            }
            Err(err) if has_usage => self.usage(
                Err(NoUsage::Malformed {
                    detail: err.to_string(),
                }),
                false,
            ),
            Err(err) => {
                self.malformed.get_or_insert_with(|| err.to_string());
            }
        }
    }

    /// Merges what a usage object said into the report; an unreadable one is only noted.
    /// `provisional` marks an Anthropic `message_start`'s, which a later report must confirm.
    fn usage(&mut self, report: Result<UsageReport, NoUsage>, provisional: bool) {
        match report {
            Ok(report) => {
                let merged = self.report.take().map_or(report, |seen| seen.merge(report));
                self.report = Some(Box::new(merged));
                self.provisional = provisional;
            }
            Err(reason) => {
                // An unreadable usage after a readable one may have been the final count: the
                // earlier report is no longer trusted.
                if self.report.take().is_some() {
                    self.provisional = false;
                }
                self.unusable.get_or_insert(reason);
            }
        }
    }

    pub(crate) fn finish(mut self) -> MeterOutcome {
        if !self.done && !self.partial.is_empty() {
            // A last line without its newline: the stream was cut, but its bytes may still hold
            // the usage chunk.
            let line = std::mem::take(&mut self.partial);
            if self.tail_only {
                self.long_line_tail(&line);
            } else {
                self.line(&line, true);
            }
        }
        let outcome = match self.report.as_deref() {
            Some(report) if !self.provisional => report.outcome(),
            _ => Err(NoUsage::NotReported),
        };
        let unreadable = match outcome {
            Ok(outcome) => return outcome,
            Err(NoUsage::NotReported) => None,
            Err(reason) => Some(reason),
        };
        let reason = if let Some(message) = self.error {
            NoUsage::ErrorEvent { message }
        } else if !self.done && (self.report.is_none() || self.provisional) {
            NoUsage::StreamCut
        } else if let Some(reason) = self.unusable.or(unreadable) {
            reason
        } else if let Some(detail) = self.malformed {
            NoUsage::Malformed { detail }
        } else if self.n_long_lines > 0 {
            NoUsage::LineTooLong {
                limit: SSE_LINE_LIMIT,
            }
        } else {
            NoUsage::NotReported
        };
        MeterOutcome::Nothing { reason }
    }
}

#[cfg(test)]
impl SseMeter {
    /// Bytes held for the line in progress.
    pub(crate) fn buffered(&self) -> usize {
        self.partial.len()
    }
}
