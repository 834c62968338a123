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
    pub(super) plugins: WebSearch,
    #[serde(default)]
    pub(super) tools: WebSearch,
    #[serde(default)]
    pub(super) web_search_options: Option<IgnoredAny>,
}

/// Counts image and file parts anywhere in a value: an image part is an object with an
/// `image_url` key or a `type` of `image_url`, `input_image` or `image`; a file part one with a
/// `type` of `file` (chat), `input_file` (Responses) or `document` (Anthropic). Each is
/// counted once.
#[derive(Default)]
pub(super) struct ImageParts {
    pub(super) images: u64,
    pub(super) files: u64,
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
        let (mut is_image, mut kind) = (false, PartKind::Other);
        while let Some(key) = map.next_key::<PartKey>()? {
            match key {
                PartKey::ImageUrl => {
                    is_image = true;
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
    }
}

/// False only when no string in `body` can be a marker [`ImageParts`] counts, so it would
/// count none: `body` never has `image` literally, nor `file"` or `document"` (the end of the
/// tags `"file"`, `"input_file"` and `"document"`: a quote inside text is escaped, so these
/// bytes end a key or a whole string), and never escapes an ASCII character (`\u0069mage`).
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
const MARKER_TEXTS: [&str; 4] = ["image", "file\"", "document\"", ESCAPE];

/// Object keys that matter when looking for image parts and web-search switches.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum PartKey {
    ImageUrl,
    Type,
    Id,
    #[serde(other)]
    Other,
}

/// Reads a value and tells whether it is a string that `accept` approves, skipping any other
/// value; no string is copied.
#[derive(Clone, Copy)]
struct TagMatch(fn(&str) -> bool);

/// What a part's `type` says it is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PartKind {
    Image,
    File,
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

fn is_web_tag(tag: &str) -> bool {
    tag == "web" || tag.contains("web_search")
}

impl<'de> de::DeserializeSeed<'de> for TagMatch {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TagMatch {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a tag")
    }

    fn visit_str<E: de::Error>(self, tag: &str) -> Result<bool, E> {
        Ok((self.0)(tag))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }

    visit_scalars!(false; bool i64 u64 f64 unit);
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

/// Whether a `plugins` or `tools` list turns on web search: a plugin with `"id": "web"`, or a
/// tool whose `type` names web search (`web_search`, `web_search_preview`,
/// `openrouter:web_search`).
#[derive(Default)]
pub(super) struct WebSearch(pub(super) bool);

impl<'de> Deserialize<'de> for WebSearch {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WebListVisitor)
    }
}

struct WebListVisitor;

impl<'de> Visitor<'de> for WebListVisitor {
    type Value = WebSearch;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of plugins or tools")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<WebSearch, A::Error> {
        let mut web = false;
        while let Some(item) = seq.next_element::<WebItem>()? {
            web |= item.0;
        }
        Ok(WebSearch(web))
    }

    visit_scalars!(WebSearch(false); unit);
}

struct WebItem(bool);

impl<'de> Deserialize<'de> for WebItem {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WebItemVisitor)
    }
}

struct WebItemVisitor;

impl<'de> Visitor<'de> for WebItemVisitor {
    type Value = WebItem;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a plugin or tool object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WebItem, A::Error> {
        let mut web = false;
        while let Some(key) = map.next_key::<PartKey>()? {
            web |= match key {
                PartKey::Id | PartKey::Type => map.next_value_seed(TagMatch(is_web_tag))?,
                _ => map.next_value::<IgnoredAny>().map(|_| false)?,
            };
        }
        Ok(WebItem(web))
    }

    visit_scalars!(WebItem(false); str unit);
}
