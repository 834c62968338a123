//! Reading an inference request for pricing (chat and text completions, Responses, Anthropic
//! Messages, embeddings), and lowering its completion limit.
//!
//! Only the fields that change the price are read: `model` (and `models`, the fallbacks the
//! upstream may route to), the completion limit (when the API's own field is set:
//! `max_tokens` / `max_completion_tokens` for chat, `max_output_tokens` for Responses,
//! `max_tokens` for Messages; the largest of those three present, so an upstream that also
//! honours another API's field is bound too; embeddings generate nothing), `n` / `best_of` and
//! batched prompts (each choice is a separate completion), image and file parts in `messages`
//! or `input`, and whether web search is on (`plugins: [{"id": "web"}]`, a `:online` model,
//! `web_search_options`, or a web-search tool). Everything else is skipped by the parser
//! without being built, so a large prompt costs one pass over its bytes and no allocation.
//!
//! The prompt is not tokenized. Its size in tokens is bounded by the body's size in bytes:
//! every tokenizer OpenRouter's models use (byte-level BPE, SentencePiece with byte fallback)
//! turns at least one byte of text into each token, and the JSON around the text only adds
//! bytes. The exceptions are an image sent by URL, whose tokens are not in the body, covered
//! by a per-image allowance in the quote, and a file part (a PDF inline or by URL, whose text
//! may hold more tokens than its bytes), for which the quote takes the model's context window.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use crate::services::Api;
use crate::services::openrouter::request::wire::{ImageParts, NoImageParts, RequestWire, ToolAsk};

/// What a request asks for that decides its price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatRequest {
    /// The model id, as sent.
    pub model: String,
    /// Other models the upstream may route to (`models`), in order.
    pub fallback_models: Vec<String>,
    /// Whether the client asked for a server-sent event stream.
    pub stream: bool,
    /// The completion limit per choice (for chat, the larger of `max_tokens` and
    /// `max_completion_tokens` when both are set); `None` when the request sets none, and
    /// `Some(0)` for embeddings, which generate nothing.
    pub max_tokens: Option<u64>,
    /// How many completions the upstream may generate: `n` (or `best_of`) times the number of
    /// prompts in a batched text completion; 0 for embeddings.
    pub choices: u64,
    /// The body's size in bytes, an upper bound on its prompt tokens.
    pub prompt_bytes: u64,
    /// Image parts in `messages` or `input`.
    pub image_parts: u64,
    /// File parts (PDFs and other documents) in `messages` or `input`: their tokens are not
    /// bounded by their bytes (a compressed PDF's text, a file sent by URL).
    pub file_parts: u64,
    /// Video parts (`video_url`, `input_video`) and audio parts (`audio_url`, `input_audio`):
    /// their tokens grow with the media's length, not with the body's bytes (a compressed clip
    /// of silence holds many seconds in a few bytes).
    pub video_parts: u64,
    /// The web plugin's limits, when the request turns it on: the `web` plugin, a `:online`
    /// model, or `web_search_options`.
    pub web_plugin: Option<SearchAsk>,
    /// Server-side web tools (search or fetch) the model may call, each with its limits.
    pub web_tools: Vec<SearchAsk>,
    /// `max_tool_calls`: the most tool calls one request may make.
    pub max_tool_calls: Option<u64>,
    /// The `file-parser` plugin's PDF engine, when the request names one.
    pub pdf_engine: Option<String>,
    /// The auto router's `allowed_models` (patterns such as `anthropic/*`), when given.
    pub auto_allowed: Vec<String>,
}

/// The limits a web search asks for; `None` where the request leaves the upstream's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchAsk {
    /// The most searches (`max_uses`).
    pub max_uses: Option<u64>,
    /// Results per search (`max_results`).
    pub max_results: Option<u64>,
    /// A fetch tool (`web_fetch`): it reads whole pages, whose size nothing bounds.
    pub fetch: bool,
}

/// The plugins keycap knows the cost of; any other is refused, as it may bill what the gateway
/// cannot bound.
pub const KNOWN_PLUGINS: [&str; 5] = [
    "web",
    "file-parser",
    "auto-router",
    "response-healing",
    "context-compression",
];

/// Why a request body cannot be priced; the gateway refuses it without an upstream call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The body does not parse as JSON.
    #[error(
        "request body is not valid JSON ({detail}): send a JSON object such as \
         {{\"model\": \"openai/gpt-4o-mini\", \"messages\": [...]}}"
    )]
    NotJson {
        /// What the parser said, with the position.
        detail: String,
    },
    /// The body is JSON but not an object.
    #[error(
        "request body is JSON but not an object: send an object with \"model\" and \"messages\""
    )]
    NotAnObject,
    /// No `model`, or `model` is null.
    #[error("request has no \"model\": set it to a model id such as \"openai/gpt-4o-mini\"")]
    MissingModel,
    /// `model` is not a non-empty string.
    #[error("\"model\" must be a non-empty string such as \"openai/gpt-4o-mini\", not {found}")]
    InvalidModel {
        /// The value sent, shortened.
        found: String,
    },
    /// `models` is not a list of non-empty strings.
    #[error("\"models\" must be a list of model id strings, not {found}")]
    InvalidModels {
        /// The value sent, shortened.
        found: String,
    },
    /// `max_tokens` or `max_completion_tokens` is not a whole number of at least 1.
    #[error(
        "\"{field}\" must be a whole number of tokens of at least 1, not {found}: \
         set it to the longest completion you want, or leave it out"
    )]
    InvalidMaxTokens {
        /// Which field.
        field: &'static str,
        /// The value sent, shortened.
        found: String,
    },
    /// `n` or `best_of` is not a whole number of at least 1.
    #[error("\"{field}\" must be a whole number of at least 1, not {found}")]
    InvalidCount {
        /// Which field.
        field: &'static str,
        /// The value sent, shortened.
        found: String,
    },
    /// `stream` is not a boolean.
    #[error("\"stream\" must be true or false, not {found}")]
    InvalidStream {
        /// The value sent, shortened.
        found: String,
    },
    /// A field has the wrong shape (a duplicate key, messages that are not a list, ...).
    #[error("request body has an invalid field ({detail}): fix it and resend")]
    InvalidField {
        /// What the parser said, with the position.
        detail: String,
    },
    /// A preset (`@preset/...` or the `preset` field) is applied by the upstream after the
    /// gateway priced the request.
    #[error(
        "presets are not accepted through keycap: OpenRouter applies a preset after the \
         gateway has priced the request, and it can change the model, the providers and the \
         plugins. Send the preset's settings in the request itself"
    )]
    Preset,
    /// A plugin keycap does not know the cost of.
    #[error(
        "plugin {id:?} is not accepted through keycap: its cost is not known to the gateway, \
         which reserves every request's worst case before it goes upstream. Known plugins: \
         web, file-parser, auto-router, response-healing, context-compression"
    )]
    UnknownPlugin {
        /// The plugin's id, shortened.
        id: String,
    },
    /// A server tool (run and billed by the provider) whose cost cannot be bounded.
    #[error(
        "tool type {kind:?} is run and billed by the provider, and keycap cannot bound its \
         cost before the request goes upstream: remove it. Function tools, client tools and \
         web search tools are accepted"
    )]
    UnpricedTool {
        /// The tool's type, shortened.
        kind: String,
    },
}

/// The largest body searched for part markers before it is read (see `ChatRequest::parse_as`).
/// The walk that counts parts costs about what skipping costs on a few long strings; on a
/// ~1 KiB body of short ones, the search saved ~11% (benches/README.md, "Criterion").
const PRECHECK_LIMIT: usize = 16 * 1024;

impl ChatRequest {
    /// Reads a `/chat/completions` (or `/completions`) body.
    pub fn parse(body: &[u8]) -> Result<ChatRequest, RequestError> {
        ChatRequest::parse_as(Api::ChatCompletions, body)
    }

    /// Reads a body sent to a route of `api`.
    pub fn parse_as(api: Api, body: &[u8]) -> Result<ChatRequest, RequestError> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(match serde_json::from_slice::<IgnoredAny>(body) {
                Ok(_) => RequestError::NotAnObject,
                Err(err) => RequestError::NotJson {
                    detail: err.to_string(),
                },
            });
        }
        // A body that is UTF-8 is read as text: its strings (most of them keys) are then not
        // checked for UTF-8 again one by one. A small body is first searched for the markers
        // of image and file parts, and without any its messages are skipped unread; a large
        // one is walked at once, as the search would cost more than the walk saves.
        match std::str::from_utf8(body) {
            Ok(text) if text.len() <= PRECHECK_LIMIT && !wire::may_hold_image_parts(text) => {
                ChatRequest::from_wire(
                    api,
                    read_wire::<NoImageParts>(serde_json::de::StrRead::new(text))?,
                    body,
                )
            }
            Ok(text) => ChatRequest::from_wire(
                api,
                read_wire::<ImageParts>(serde_json::de::StrRead::new(text))?,
                body,
            ),
            Err(_) => ChatRequest::from_wire(
                api,
                read_wire::<ImageParts>(serde_json::de::SliceRead::new(body))?,
                body,
            ),
        }
    }

    fn from_wire<M: Into<ImageParts>>(
        api: Api,
        wire: RequestWire<M>,
        body: &[u8],
    ) -> Result<ChatRequest, RequestError> {
        let model = match wire.model {
            Value::Null => return Err(RequestError::MissingModel),
            Value::String(model) if !model.trim().is_empty() => model,
            other => {
                return Err(RequestError::InvalidModel {
                    found: shorten(&other),
                });
            }
        };
        let fallback_models = match wire.models {
            Value::Null => Vec::new(),
            Value::Array(list) => {
                let mut models = Vec::with_capacity(list.len());
                for item in list {
                    match item {
                        Value::String(id) if !id.trim().is_empty() => models.push(id),
                        other => {
                            return Err(RequestError::InvalidModels {
                                found: shorten(&other),
                            });
                        }
                    }
                }
                models
            }
            other => {
                return Err(RequestError::InvalidModels {
                    found: shorten(&other),
                });
            }
        };
        let stream = match wire.stream {
            Value::Null => false,
            Value::Bool(stream) => stream,
            other => {
                return Err(RequestError::InvalidStream {
                    found: shorten(&other),
                });
            }
        };
        // Every completion-limit field any API reads is read, and the largest counts, so an
        // upstream that honours another API's field too generates no more than was priced; but
        // without the API's own field, the request has no limit the upstream must keep.
        let limits = [
            max_tokens_field("max_tokens", &wire.max_tokens)?,
            max_tokens_field("max_completion_tokens", &wire.max_completion_tokens)?,
            max_tokens_field("max_output_tokens", &wire.max_output_tokens)?,
        ];
        let own_limit = match api {
            Api::ChatCompletions | Api::Completions => limits[0].or(limits[1]),
            Api::Responses => limits[2],
            Api::Messages => limits[0],
            Api::Embeddings => Some(0),
        };
        let max_tokens = match api {
            Api::Embeddings => Some(0),
            _ => own_limit.and(limits.into_iter().flatten().max()),
        };
        let mut parts: ImageParts = wire.messages.into();
        parts.add(wire.input.into());
        let choices = match api {
            Api::ChatCompletions | Api::Completions => {
                let per_prompt =
                    count_field("n", &wire.n)?.max(count_field("best_of", &wire.best_of)?);
                per_prompt.saturating_mul(wire.prompt.0.max(1))
            }
            Api::Responses | Api::Messages => 1,
            Api::Embeddings => 0,
        };
        if wire.preset.is_some()
            || std::iter::once(&model)
                .chain(&fallback_models)
                .any(|id| id.contains("@preset/"))
        {
            return Err(RequestError::Preset);
        }
        let plugins = Plugins::read(&wire.plugins)?;
        let online = std::iter::once(&model)
            .chain(&fallback_models)
            .any(|id| id.ends_with(":online"));
        let web_plugin = match plugins.web {
            Some(ask) => Some(ask),
            None if online || wire.web_search_options.is_some() => Some(SearchAsk::default()),
            None => None,
        };
        let mut web_tools = Vec::new();
        for tool in wire.tools.0 {
            if let Some(ask) = web_tool(&tool)? {
                web_tools.push(ask);
            }
        }
        let max_tool_calls = match &wire.max_tool_calls {
            Value::Null => None,
            other => Some(count_field("max_tool_calls", other)?),
        };
        Ok(ChatRequest {
            model,
            fallback_models,
            stream,
            max_tokens,
            choices,
            prompt_bytes: body.len() as u64,
            image_parts: parts.images,
            file_parts: parts.files,
            video_parts: parts.videos,
            web_plugin,
            web_tools,
            max_tool_calls,
            pdf_engine: plugins.pdf_engine,
            auto_allowed: plugins.auto_allowed,
        })
    }
}

/// What the `plugins` list asks for.
#[derive(Default)]
struct Plugins {
    web: Option<SearchAsk>,
    pdf_engine: Option<String>,
    auto_allowed: Vec<String>,
}

impl Plugins {
    fn read(plugins: &Value) -> Result<Plugins, RequestError> {
        let invalid = |what: &str, value: &Value| RequestError::InvalidField {
            detail: format!("{what} must be {}, not {}", expected(what), shorten(value)),
        };
        fn expected(what: &str) -> &'static str {
            match what {
                "plugins" => "a list of plugin objects",
                "a plugin" => "an object with an \"id\"",
                _ => "a list of model ids",
            }
        }
        let mut read = Plugins::default();
        let list = match plugins {
            Value::Null => return Ok(read),
            Value::Array(list) => list,
            other => return Err(invalid("plugins", other)),
        };
        let mut seen: Vec<&str> = Vec::new();
        for plugin in list {
            let Some(id) = plugin.get("id").and_then(Value::as_str) else {
                return Err(invalid("a plugin", plugin));
            };
            // One plugin per id: which of two the upstream honours is not documented.
            if seen.contains(&id) {
                return Err(RequestError::InvalidField {
                    detail: format!("plugin {id:?} is listed twice: list each plugin once"),
                });
            }
            seen.push(id);
            if plugin.get("enabled") == Some(&Value::Bool(false)) {
                continue;
            }
            match id {
                "web" => {
                    read.web = Some(SearchAsk {
                        max_uses: optional_count("max_uses", plugin.get("max_uses"))?,
                        max_results: optional_count("max_results", plugin.get("max_results"))?,
                        fetch: false,
                    });
                }
                "file-parser" => {
                    let engine = match plugin.get("pdf") {
                        None | Some(Value::Null) => None,
                        Some(Value::Object(pdf)) => pdf.get("engine"),
                        Some(other) => {
                            return Err(RequestError::InvalidField {
                                detail: format!(
                                    "the file-parser plugin's pdf must be an object such as \
                                     {{\"engine\": \"cloudflare-ai\"}}, not {}",
                                    shorten(other)
                                ),
                            });
                        }
                    };
                    read.pdf_engine = match engine {
                        None | Some(Value::Null) => None,
                        Some(Value::String(engine)) => Some(engine.clone()),
                        Some(other) => {
                            return Err(RequestError::InvalidField {
                                detail: format!(
                                    "the file-parser plugin's pdf.engine must be a string, not {}",
                                    shorten(other)
                                ),
                            });
                        }
                    };
                }
                "auto-router" => match plugin.get("allowed_models") {
                    None | Some(Value::Null) => {}
                    Some(Value::Array(models)) => {
                        for model in models {
                            match model.as_str() {
                                Some(id) => read.auto_allowed.push(id.to_string()),
                                None => return Err(invalid("allowed_models", model)),
                            }
                        }
                    }
                    Some(other) => return Err(invalid("allowed_models", other)),
                },
                known if KNOWN_PLUGINS.contains(&known) => {}
                unknown => {
                    return Err(RequestError::UnknownPlugin {
                        id: shorten(&Value::String(unknown.to_string())),
                    });
                }
            }
        }
        Ok(read)
    }
}

/// A server-side web tool's limits; `None` for a tool the client runs (function, custom and
/// the client-executed tool types); an error for a server tool keycap cannot price.
fn web_tool(tool: &ToolAsk) -> Result<Option<SearchAsk>, RequestError> {
    let Some(kind) = tool.kind.as_deref() else {
        return Ok(None);
    };
    const CLIENT_TOOLS: [&str; 6] = [
        "function",
        "custom",
        "local_shell",
        "shell",
        "apply_patch",
        "computer_use_preview",
    ];
    const CLIENT_TOOL_PREFIXES: [&str; 4] = ["bash_", "text_editor_", "computer_", "memory_"];
    if CLIENT_TOOLS.contains(&kind) || CLIENT_TOOL_PREFIXES.iter().any(|p| kind.starts_with(p)) {
        return Ok(None);
    }
    if kind.contains("web_search") || kind.contains("web_fetch") {
        let max_uses = match &tool.max_uses {
            Value::Null => tool.parameters.get("max_uses"),
            uses => Some(uses),
        };
        return Ok(Some(SearchAsk {
            max_uses: optional_count("max_uses", max_uses)?,
            max_results: optional_count("max_results", tool.parameters.get("max_results"))?,
            fetch: kind.contains("web_fetch"),
        }));
    }
    Err(RequestError::UnpricedTool {
        kind: shorten(&Value::String(kind.to_string())),
    })
}

fn optional_count(field: &'static str, value: Option<&Value>) -> Result<Option<u64>, RequestError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value) => count_field(field, value).map(Some),
    }
}

/// The priced fields of a body, with `messages` read by `M`.
fn read_wire<'de, M: Deserialize<'de> + Default>(
    body: impl serde_json::de::Read<'de>,
) -> Result<RequestWire<M>, RequestError> {
    let mut deserializer = serde_json::Deserializer::new(body);
    RequestWire::deserialize(&mut deserializer)
        .and_then(|wire| deserializer.end().map(|()| wire))
        .map_err(|err| match err.classify() {
            serde_json::error::Category::Data => RequestError::InvalidField {
                detail: err.to_string(),
            },
            _ => RequestError::NotJson {
                detail: err.to_string(),
            },
        })
}

fn max_tokens_field(field: &'static str, value: &Value) -> Result<Option<u64>, RequestError> {
    match value {
        Value::Null => Ok(None),
        other => match whole_number(other) {
            Some(count) if count >= 1 => Ok(Some(count)),
            _ => Err(RequestError::InvalidMaxTokens {
                field,
                found: shorten(other),
            }),
        },
    }
}

fn count_field(field: &'static str, value: &Value) -> Result<u64, RequestError> {
    match value {
        Value::Null => Ok(1),
        other => match whole_number(other) {
            Some(count) if count >= 1 => Ok(count),
            _ => Err(RequestError::InvalidCount {
                field,
                found: shorten(other),
            }),
        },
    }
}

/// A non-negative whole number, also when written as a float (`5.0`) as some clients do.
pub(crate) fn whole_number(value: &Value) -> Option<u64> {
    /// Floats are exact integers up to 2^53.
    const EXACT_FLOAT_LIMIT: f64 = 9_007_199_254_740_992.0;
    let Value::Number(number) = value else {
        return None;
    };
    if let Some(count) = number.as_u64() {
        return Some(count);
    }
    let float = number.as_f64()?;
    let whole = float >= 0.0 && float.fract() == 0.0 && float <= EXACT_FLOAT_LIMIT;
    // The cast is exact: `float` is a whole number within the range floats hold exactly.
    whole.then_some(float as u64)
}

/// A value as JSON text, cut to a length fit for an error message.
fn shorten(value: &Value) -> String {
    const LIMIT: usize = 40;
    let text = value.to_string();
    match text.char_indices().nth(LIMIT) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}

mod wire;

#[cfg(test)]
mod tests;
