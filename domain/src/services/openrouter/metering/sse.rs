//! Event-stream mode of the usage meter.
//!
//! The stream is split into lines as it passes; only a line cut by a chunk boundary is copied,
//! and only up to [`SSE_LINE_LIMIT`]. Comment lines (`: OPENROUTER PROCESSING`) and fields other
//! than `data` are skipped. A `data` line is parsed as JSON only when its bytes contain
//! `"usage"` (with a non-null value) or `"error"`: in JSON text a quote inside a string is
//! escaped, so those bytes appear only as keys or whole string values. The lines that arrive
//! whole in one chunk are searched together (one vectorized search finds the next line worth
//! parsing), so the thousand token chunks of a typical stream cost a newline search each.
//!
//! OpenRouter sends one JSON object per `data` line, so lines are read one at a time rather than
//! joined into multi-line events. Lines end with `\n` or `\r\n`.

use std::sync::LazyLock;

use memchr::memmem::Finder;

use crate::services::openrouter::metering::{
    BodyWire, MeterOutcome, NoUsage, SSE_LINE_LIMIT, USAGE_KEY, after_colon, error_message,
    usage_in_tail,
};

static USAGE_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(USAGE_KEY));
static ERROR_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"error\""));

/// The offset of the first `"usage"` or `"error"` in `bytes` at or after `from`.
fn next_worth_parsing(bytes: &[u8], from: usize) -> Option<usize> {
    let rest = &bytes[from..];
    let usage = USAGE_FINDER.find(rest);
    // An error after the usage is looked for again once the usage line is read.
    let error = ERROR_FINDER.find(usage.map_or(rest, |at| &rest[..at]));
    error.or(usage).map(|at| from + at)
}

/// Reads an event stream line by line.
#[derive(Debug, Default)]
pub(crate) struct SseMeter {
    /// The start of a line cut by a chunk boundary.
    partial: Vec<u8>,
    /// True while skipping the rest of a line that passed the limit.
    skipping: bool,
    /// True once `data: [DONE]` was seen; later bytes are ignored.
    done: bool,
    outcome: Option<MeterOutcome>,
    error: Option<String>,
    malformed: Option<String>,
    n_long_lines: u32,
}

impl SseMeter {
    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        if self.done {
            return;
        }
        let mut rest = chunk;
        if self.skipping || !self.partial.is_empty() {
            let Some(newline) = memchr::memchr(b'\n', rest) else {
                self.keep_partial(rest);
                return;
            };
            if self.skipping {
                self.skipping = false;
            } else {
                self.partial.extend_from_slice(&rest[..newline]);
                let line = std::mem::take(&mut self.partial);
                self.line(&line, true);
                self.partial = line;
                self.partial.clear();
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

    /// Keeps the unfinished end of a chunk, unless the line has grown past the limit.
    fn keep_partial(&mut self, bytes: &[u8]) {
        if self.skipping || bytes.is_empty() {
            return;
        }
        if self.partial.len() + bytes.len() > SSE_LINE_LIMIT {
            self.partial = Vec::new();
            self.skipping = true;
            self.n_long_lines += 1;
            return;
        }
        self.partial.extend_from_slice(bytes);
    }

    /// Reads one line; `may_hold_usage` is false when the line is known to hold neither
    /// `"usage"` nor `"error"`.
    fn line(&mut self, line: &[u8], may_hold_usage: bool) {
        if line.len() > SSE_LINE_LIMIT {
            // Skipped even when it arrived whole, so the outcome never depends on chunking.
            self.n_long_lines += 1;
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
        let mut usage_keys = USAGE_FINDER.find_iter(data);
        let has_usage = usage_keys.next().is_some_and(|at| {
            after_colon(&data[at + USAGE_KEY.len()..])
                .is_none_or(|value| !value.starts_with(b"null"))
        });
        let has_error = ERROR_FINDER.find(data).is_some();
        if !has_usage && !has_error {
            return;
        }
        if !has_error && usage_keys.next().is_none() {
            // One usage object and no error: only that object is read, not the whole chunk.
            self.usage(usage_in_tail(data));
            return;
        }
        match serde_json::from_slice::<BodyWire>(data) {
            Ok(chunk) => {
                if let Some(usage) = chunk.usage {
                    self.usage(usage.outcome());
                }
                if let Some(error) = chunk.error {
                    self.error.get_or_insert_with(|| error_message(&error));
                }
            }
            Err(err) => {
                self.malformed.get_or_insert_with(|| err.to_string());
            }
        }
    }

    /// Keeps what a usage object said; a usable report is never replaced by an unusable one.
    fn usage(&mut self, outcome: MeterOutcome) {
        if self.outcome.is_none() || !matches!(outcome, MeterOutcome::Nothing { .. }) {
            self.outcome = Some(outcome);
        }
    }

    pub(crate) fn finish(mut self) -> MeterOutcome {
        if !self.done && !self.skipping && !self.partial.is_empty() {
            // A last line without its newline: the stream was cut, but its bytes may still hold
            // the usage chunk.
            let line = std::mem::take(&mut self.partial);
            self.line(&line, true);
        }
        if let Some(outcome @ (MeterOutcome::Reported { .. } | MeterOutcome::TokensOnly { .. })) =
            self.outcome
        {
            return outcome;
        }
        let reason = if let Some(message) = self.error {
            NoUsage::ErrorEvent { message }
        } else if !self.done {
            NoUsage::StreamCut
        } else if let Some(MeterOutcome::Nothing { reason }) = self.outcome {
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
