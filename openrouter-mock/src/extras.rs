//! What a request costs beyond its text tokens, billed as OpenRouter bills it: web search
//! (the `web` plugin, `:online`, `web_search_options`, and server-side web tools, whose
//! searches loop back into the model), files (the `file-parser` plugin's engines, the text a
//! file adds to the prompt) and videos.
//!
//! In the normal mode a request uses a modest amount of each. In the bill-most mode
//! (`x-mock-bill: most`, or [`MockConfig::bill_most`](crate::MockConfig)) it uses the most it is
//! allowed: every search its limits allow with every result, a context window's worth of text
//! for each file or video, and a thousand pages for `mistral-ocr`.

use serde_json::Value;

use crate::error::ApiError;

/// The header that selects the bill-most mode for one request: `x-mock-bill: most`.
pub const BILL_HEADER: &str = "x-mock-bill";

/// Exa's price per search, for up to [`RESULTS_PER_SEARCH_FEE`] results: $0.007.
const SEARCH_PICOS: u128 = 7_000_000_000;
/// Results included in a search's price.
const RESULTS_PER_SEARCH_FEE: u64 = 10;
/// Each result beyond those: $0.001.
const EXTRA_RESULT_PICOS: u128 = 1_000_000_000;
/// `mistral-ocr`: $2 per 1,000 pages.
const OCR_PAGE_PICOS: u128 = 2_000_000_000;
/// A search's default `max_results`.
const DEFAULT_RESULTS: u64 = 5;
/// `max_tool_calls`' default.
const DEFAULT_TOOL_CALLS: u64 = 30;
/// Tokens one search result adds to the prompt: normally, and at most.
const RESULT_TOKENS: (u64, u64) = (300, 2_000);
/// Tokens a file or a video adds to the prompt normally (at most: the context window).
const MEDIA_TOKENS: u64 = 500;
/// Pages a PDF has: normally, and at most.
const PDF_PAGES: (u64, u64) = (3, 1_000);

/// The extras of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extras {
    /// Model calls: 1, plus one after each search a server tool (or native search) runs.
    pub calls: u64,
    /// Searches run.
    pub searches: u64,
    /// Prompt tokens added to every call (search results, file and video text).
    pub prompt_tokens: u64,
    /// Whether a file or video fills the context window (bill-most).
    pub fills_context: bool,
    /// Fees beyond tokens: searches, results, OCR pages.
    pub fees_picos: u128,
}

impl Extras {
    /// Reads what `body` asks for; `most` bills the most it allows.
    pub fn of(body: &Value, most: bool) -> Result<Extras, ApiError> {
        let pick = |(normal, top): (u64, u64)| if most { top } else { normal };
        let mut extras = Extras {
            calls: 1,
            ..Extras::default()
        };
        let count = |value: Option<&Value>, default: u64| match value {
            None | Some(Value::Null) => Ok(default),
            Some(value) => value
                .as_u64()
                .filter(|count| *count >= 1)
                .ok_or_else(|| ApiError::bad_request("max_uses and max_results must be >= 1")),
        };
        let plugins = body
            .get("plugins")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let plugin = |id: &str| {
            plugins.iter().find(|plugin| {
                plugin.get("id").and_then(Value::as_str) == Some(id)
                    && plugin.get("enabled") != Some(&Value::Bool(false))
            })
        };
        let online = body
            .get("model")
            .and_then(Value::as_str)
            .is_some_and(|model| model.ends_with(":online"));
        let mut bill_searches = |searches: u64, results: u64, result_tokens: u64, loops: bool| {
            let extra_results = results.saturating_sub(RESULTS_PER_SEARCH_FEE);
            extras.searches = extras.searches.saturating_add(searches);
            extras.fees_picos += u128::from(searches)
                * (SEARCH_PICOS + u128::from(extra_results) * EXTRA_RESULT_PICOS);
            extras.prompt_tokens = extras.prompt_tokens.saturating_add(
                searches
                    .saturating_mul(results)
                    .saturating_mul(result_tokens),
            );
            if loops {
                extras.calls = extras.calls.saturating_add(searches);
            }
        };
        let result_tokens = pick(RESULT_TOKENS);
        if let Some(web) = plugin("web") {
            let uses = count(web.get("max_uses"), 1)?;
            let results = count(web.get("max_results"), DEFAULT_RESULTS)?;
            bill_searches(if most { uses } else { 1 }, results, result_tokens, most);
        } else if online || body.get("web_search_options").is_some() {
            bill_searches(1, DEFAULT_RESULTS, result_tokens, false);
        }
        let web_tools: Vec<&Value> = body
            .get("tools")
            .and_then(Value::as_array)
            .map(|tools| {
                tools
                    .iter()
                    .filter(|tool| {
                        tool.get("type")
                            .and_then(Value::as_str)
                            .is_some_and(|kind| {
                                kind.contains("web_search") || kind.contains("web_fetch")
                            })
                    })
                    .collect()
            })
            .unwrap_or_default();
        // OpenRouter's own tool runs in its loop, bound by `max_tool_calls` and its own
        // `max_uses`; a provider's native tool (Anthropic's) knows only its `max_uses`.
        let calls = count(body.get("max_tool_calls"), DEFAULT_TOOL_CALLS)?;
        let mut loop_uses = 0u64;
        for tool in &web_tools {
            let kind = tool.get("type").and_then(Value::as_str).unwrap_or_default();
            let parameters = tool.get("parameters").unwrap_or(&Value::Null);
            if kind.contains("web_fetch") {
                // A fetched page: billing the most, as long as the context window allows.
                extras.fills_context |= most;
            }
            if kind.starts_with("openrouter:") {
                let results = count(parameters.get("max_results"), DEFAULT_RESULTS)?;
                let characters = parameters.get("max_characters").and_then(Value::as_u64);
                let tokens = characters.map_or(result_tokens, |most| most.min(result_tokens));
                let uses = count(parameters.get("max_uses"), DEFAULT_TOOL_CALLS)?;
                let uses = uses.min(calls.saturating_sub(loop_uses));
                loop_uses += uses;
                bill_searches(if most { uses } else { 1 }, results, tokens, true);
            } else {
                let uses = count(tool.get("max_uses"), DEFAULT_TOOL_CALLS)?;
                bill_searches(
                    if most { uses } else { 1 },
                    DEFAULT_RESULTS,
                    result_tokens,
                    true,
                );
            }
        }
        let (files, videos) = media_parts(body);
        if files + videos > 0 {
            if most {
                extras.fills_context = true;
            } else {
                extras.prompt_tokens += (files + videos) * MEDIA_TOKENS;
            }
        }
        if files > 0 {
            let engine = plugin("file-parser")
                .and_then(|parser| parser.get("pdf"))
                .and_then(|pdf| pdf.get("engine"))
                .and_then(Value::as_str)
                // Mock models read no file natively: OpenRouter's default is then OCR.
                .unwrap_or("mistral-ocr");
            match engine {
                "mistral-ocr" => {
                    extras.fees_picos += u128::from(files * pick(PDF_PAGES)) * OCR_PAGE_PICOS;
                }
                "cloudflare-ai" | "pdf-text" | "native" => {}
                other => {
                    return Err(ApiError::bad_request(format!(
                        "Invalid PDF engine {other:?}: expected mistral-ocr, cloudflare-ai or native"
                    )));
                }
            }
        }
        Ok(extras)
    }
}

/// File parts (`file`, `input_file`, `document`) and video parts (`video_url`, `input_video`,
/// and audio, `audio_url` and `input_audio`, whose tokens grow with its length alike) anywhere
/// in the body.
fn media_parts(value: &Value) -> (u64, u64) {
    match value {
        Value::Object(fields) => {
            let kind = fields.get("type").and_then(Value::as_str);
            let own = match kind {
                Some("file" | "input_file" | "document") => (1, 0),
                Some("video_url" | "input_video" | "audio_url" | "input_audio") => (0, 1),
                _ if ["video_url", "audio_url", "input_audio"]
                    .iter()
                    .any(|key| fields.contains_key(*key)) =>
                {
                    (0, 1)
                }
                _ => (0, 0),
            };
            fields
                .values()
                .map(media_parts)
                .fold(own, |(f, v), (nf, nv)| (f + nf, v + nv))
        }
        Value::Array(items) => items
            .iter()
            .map(media_parts)
            .fold((0, 0), |(f, v), (nf, nv)| (f + nf, v + nv)),
        _ => (0, 0),
    }
}
