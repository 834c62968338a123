//! The wire shape of a completion request: the priced fields, and visitors that count image
//! parts, prompts and web-search switches while serde skips everything else unbuilt.

use std::sync::LazyLock;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// The priced fields; serde skips the others without building them. `M` reads `messages` and
/// `input`:
/// [`ImageParts`] counts image parts, [`NoImageParts`] skips a list known to hold none.
#[derive(Deserialize)]
pub(super) struct RequestWire<M> {
    #[serde(default)]
    pub(super) model: Value,
    #[serde(default)]
    pub(super) models: Value,
    #[serde(default)]
    pub(super) stream: Value,
    #[serde(default)]
    pub(super) max_tokens: Value,
    #[serde(default)]
    pub(super) max_completion_tokens: Value,
    #[serde(default)]
    pub(super) max_output_tokens: Value,
    #[serde(default)]
    pub(super) n: Value,
    #[serde(default)]
    pub(super) best_of: Value,
    #[serde(default)]
    pub(super) messages: M,
    /// The Responses API's and embeddings' input, read for image parts as `messages` is.
    #[serde(default)]
    pub(super) input: M,
    #[serde(default)]
    pub(super) prompt: PromptCount,
    #[serde(default)]
    pub(super) plugins: Value,
    #[serde(default)]
    pub(super) tools: Tools,
    #[serde(default)]
    pub(super) max_tool_calls: Value,
    #[serde(default)]
    pub(super) web_search_options: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) preset: Option<IgnoredAny>,
}

/// Counts image and file parts anywhere in a value: an image part is an object with an
/// `image_url` key or a `type` of `image_url`, `input_image` or `image`; a file part one with a
/// `type` of `file` (chat), `input_file` (Responses) or `document` (Anthropic); a video part
/// (counted with audio parts) one with a `video_url`, `audio_url` or `input_audio` key or such
/// a `type`, or `input_video`. Each is counted once.
#[derive(Default)]
pub(super) struct ImageParts {
    pub(super) images: u64,
    pub(super) files: u64,
    pub(super) videos: u64,
}

impl<'de> Deserialize<'de> for ImageParts {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ImageVisitor)
    }
}

struct ImageVisitor;

impl<'de> Visitor<'de> for ImageVisitor {
    type Value = ImageParts;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("messages")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ImageParts, A::Error> {
        let mut nested = ImageParts::default();
        let (mut is_image, mut is_video, mut kind) = (false, false, PartKind::Other);
        while let Some(key) = map.next_key::<PartKey>()? {
            match key {
                PartKey::ImageUrl => {
                    is_image = true;
                    map.next_value::<IgnoredAny>()?;
                }
                PartKey::VideoUrl | PartKey::AudioUrl | PartKey::InputAudio => {
                    is_video = true;
                    map.next_value::<IgnoredAny>()?;
                }
                PartKey::Type => kind = map.next_value::<PartKind>()?,
                _ => nested.add(map.next_value::<ImageParts>()?),
            }
        }
        nested.images = nested
            .images
            .saturating_add(u64::from(is_image || kind == PartKind::Image));
        // A part typed as a file is a file, whatever other keys it has.
        nested.files = nested
            .files
            .saturating_add(u64::from(kind == PartKind::File));
        nested.videos = nested
            .videos
            .saturating_add(u64::from(is_video || kind == PartKind::Video));
        Ok(nested)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ImageParts, A::Error> {
        let mut count = ImageParts::default();
        while let Some(item) = seq.next_element::<ImageParts>()? {
            count.add(item);
        }
        Ok(count)
    }

    visit_scalars!(ImageParts::default(); str bool i64 u64 f64 unit);
}

/// `messages` skipped unread, for a body that cannot hold an image part (see
/// [`may_hold_image_parts`]): much cheaper than [`ImageParts`] on a long prompt. Skipped, they
/// are checked as every field keycap does not price is: for JSON syntax, not for what only
/// reading their values finds (a lone surrogate `\ud800`, a number like `1e400`, nesting past
/// 128 levels), which the upstream judges.
#[derive(Default)]
pub(super) struct NoImageParts;

impl<'de> Deserialize<'de> for NoImageParts {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(deserializer)?;
        Ok(NoImageParts)
    }
}

impl From<NoImageParts> for ImageParts {
    fn from(_: NoImageParts) -> ImageParts {
        ImageParts::default()
    }
}

impl ImageParts {
    pub(super) fn add(&mut self, other: ImageParts) {
        self.images = self.images.saturating_add(other.images);
        self.files = self.files.saturating_add(other.files);
        self.videos = self.videos.saturating_add(other.videos);
    }
}

/// False only when no string in `body` can be a marker [`ImageParts`] counts, so it would
/// count none: `body` never has `image`, `video` or `audio` literally, nor `file"` or
/// `document"` (the
/// end of the tags `"file"`, `"input_file"` and `"document"`: a quote inside text is escaped,
/// so these bytes end a key or a whole string), and never escapes an ASCII character
/// (`\u0069mage`).
/// One vectorized pass looks for all of them. A body that is not UTF-8 is not asked: it
/// always goes to [`ImageParts`], which requires UTF-8 of the strings it reads.
pub(super) fn may_hold_image_parts(body: &str) -> bool {
    static MARKERS: LazyLock<Option<aho_corasick::packed::Searcher>> =
        LazyLock::new(|| aho_corasick::packed::Searcher::new(MARKER_TEXTS));
    let body = body.as_bytes();
    let Some(markers) = MARKERS.as_ref() else {
        return true;
    };
    markers.find_iter(body).any(|found| {
        MARKER_TEXTS[found.pattern().as_usize()] != ESCAPE
            || body
                .get(found.end())
                .is_none_or(|d| (b'0'..=b'7').contains(d))
    })
}

const ESCAPE: &str = "\\u00";
const MARKER_TEXTS: [&str; 6] = ["image", "video", "audio", "file\"", "document\"", ESCAPE];

/// Object keys that matter when looking for image parts and web-search switches.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum PartKey {
    ImageUrl,
    VideoUrl,
    AudioUrl,
    InputAudio,
    Type,
    #[serde(other)]
    Other,
}

/// What a part's `type` says it is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PartKind {
    Image,
    File,
    Video,
    Other,
}

impl<'de> Deserialize<'de> for PartKind {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PartKindVisitor)
    }
}

struct PartKindVisitor;

impl<'de> Visitor<'de> for PartKindVisitor {
    type Value = PartKind;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a part type")
    }

    fn visit_str<E: de::Error>(self, tag: &str) -> Result<PartKind, E> {
        Ok(match tag {
            "image_url" | "input_image" | "image" => PartKind::Image,
            "file" | "input_file" | "document" => PartKind::File,
            // Audio, by URL or inline: like a video, its tokens grow with its length, not its
            // bytes (a compressed clip of silence holds many seconds in a few bytes).
            "video_url" | "input_video" | "audio_url" | "input_audio" => PartKind::Video,
            _ => PartKind::Other,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PartKind, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(PartKind::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PartKind, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(PartKind::Other)
    }

    visit_scalars!(PartKind::Other; bool i64 u64 f64 unit);
}

/// The number of prompts in a text completion: 1 for a string or a list of token ids, the
/// list's length for a batch of strings or token lists, 0 when absent (a chat request).
#[derive(Default)]
pub(super) struct PromptCount(pub(super) u64);

impl<'de> Deserialize<'de> for PromptCount {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PromptVisitor)
    }
}

struct PromptVisitor;

impl<'de> Visitor<'de> for PromptVisitor {
    type Value = PromptCount;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a prompt string or list")
    }

    visit_scalars!(PromptCount(1); str);

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PromptCount, A::Error> {
        let mut prompts = 0u64;
        let mut token_ids = false;
        while let Some(is_prompt) = seq.next_element::<BatchItem>()? {
            if is_prompt.0 {
                prompts += 1;
            } else {
                token_ids = true;
            }
        }
        Ok(PromptCount(prompts.max(u64::from(token_ids))))
    }

    visit_scalars!(PromptCount(0); unit);

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PromptCount, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(PromptCount(1))
    }

    visit_scalars!(PromptCount(1); bool u64 i64 f64);
}

/// An element of a prompt list: true for a prompt of its own (a string or a list of token ids),
/// false for a bare token id.
struct BatchItem(bool);

impl<'de> Deserialize<'de> for BatchItem {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(BatchItemVisitor)
    }
}

struct BatchItemVisitor;

impl<'de> Visitor<'de> for BatchItemVisitor {
    type Value = BatchItem;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a prompt or a token id")
    }

    visit_scalars!(BatchItem(false); u64 i64 f64);

    visit_scalars!(BatchItem(true); str);

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BatchItem, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(BatchItem(true))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BatchItem, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(BatchItem(true))
    }

    visit_scalars!(BatchItem(true); bool unit);
}

/// What a `tools` list holds that changes the price: each tool's `type` and, for the server
/// tools the provider runs, their limits. A function tool's schema is skipped unbuilt.
#[derive(Default)]
pub(super) struct Tools(pub(super) Vec<ToolAsk>);

/// One tool, as far as pricing cares.
#[derive(Default)]
pub(super) struct ToolAsk {
    /// `type`, when it is a string (Anthropic's client tools have none).
    pub(super) kind: Option<String>,
    /// `max_uses` (Anthropic's server tools).
    pub(super) max_uses: Value,
    /// `parameters` (OpenRouter's server tools hold their limits there), kept only for a
    /// server tool: a function tool's schema is skipped.
    pub(super) parameters: Value,
}

impl<'de> Deserialize<'de> for Tools {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ToolsVisitor)
    }
}

struct ToolsVisitor;

impl<'de> Visitor<'de> for ToolsVisitor {
    type Value = Tools;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of tools")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tools, A::Error> {
        let mut tools = Vec::new();
        while let Some(tool) = seq.next_element::<ToolAsk>()? {
            tools.push(tool);
        }
        Ok(Tools(tools))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tools, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Tools::default())
    }

    visit_scalars!(Tools::default(); str bool i64 u64 f64 unit);
}

impl<'de> Deserialize<'de> for ToolAsk {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ToolVisitor)
    }
}

/// The keys of a tool object that pricing reads.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum ToolKey {
    Type,
    MaxUses,
    Parameters,
    #[serde(other)]
    Other,
}

struct ToolVisitor;

impl<'de> Visitor<'de> for ToolVisitor {
    type Value = ToolAsk;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a tool object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ToolAsk, A::Error> {
        let mut tool = ToolAsk::default();
        let mut parameters: Option<Box<serde_json::value::RawValue>> = None;
        while let Some(key) = map.next_key::<ToolKey>()? {
            match key {
                ToolKey::Type => {
                    if let Value::String(kind) = map.next_value::<Value>()? {
                        tool.kind = Some(kind);
                    }
                }
                ToolKey::MaxUses => tool.max_uses = map.next_value()?,
                // Kept raw until the type is known: only a server tool's are read.
                ToolKey::Parameters => parameters = Some(map.next_value()?),
                ToolKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if let (Some(raw), Some(kind)) = (parameters, &tool.kind)
            && kind.starts_with("openrouter:")
        {
            tool.parameters = serde_json::from_str(raw.get()).map_err(de::Error::custom)?;
        }
        Ok(tool)
    }

    visit_scalars!(ToolAsk::default(); str bool i64 u64 f64 unit);

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ToolAsk, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(ToolAsk::default())
    }
}
