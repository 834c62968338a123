//! The mock's configuration: its two accepted keys, its price table and its
//! default completion length.

/// Prices of the models whose ids start with `mock/fault-` when the price
/// table does not list them: the same as `mock/cheap`.
const FAULT_MODEL_PRICES: (&str, &str, &str) = ("0.000001", "0.000002", "0");

/// The prefix of model ids that select a fault mode, e.g. `mock/fault-429`.
pub const FAULT_MODEL_PREFIX: &str = "mock/fault-";

/// Everything the mock needs to know before it starts; passed to
/// [`crate::router`], [`crate::spawn`] or [`crate::serve`].
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// The account's inference key. Inference requests and `GET /key` are
    /// accepted with it (or with a key created through `/keys`); any other
    /// key gets 401.
    pub master_key: String,
    /// The management key: the only key accepted on `/keys*` and `/credits`.
    pub management_key: String,
    /// The price table, reported by `GET /models` and used for every cost.
    pub models: Vec<MockModel>,
    /// The embedding models, reported by `GET /embeddings/models`; only these serve
    /// `POST /embeddings`.
    pub embedding_models: Vec<MockModel>,
    /// The completion length, in tokens, when neither `max_tokens` nor the
    /// `x-mock-completion-tokens` header asks for another.
    pub default_completion_tokens: u32,
    /// Bill every request the most it is allowed to (see `extras` and `routing`): the dearest
    /// provider within its `max_price`, its whole completion limit, every search and result its
    /// limits allow, and a prompt of one token per byte. Also per request with `x-mock-bill: most`.
    pub bill_most: bool,
    /// The account balance reported as `total_credits` by `GET /credits`.
    /// Inference is refused with 402 (`openrouter_credits`) once the total
    /// usage reaches it.
    pub total_credits_nanousd: u64,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            // "mock" and "mgmt" in hex, repeated to 64 hex digits.
            master_key: format!("sk-or-v1-{}", "6d6f636b".repeat(8)),
            management_key: format!("sk-or-v1-{}", "6d676d74".repeat(8)),
            models: default_models(),
            embedding_models: vec![
                MockModel::new("openai/text-embedding-3-small", "0.00000002", "0", "0"),
                MockModel::new("mock/embed-with-fee", "0.000001", "0", "0.0001"),
            ],
            default_completion_tokens: 20,
            bill_most: false,
            total_credits_nanousd: 100_000_000_000,
        }
    }
}

impl MockConfig {
    /// The model with this id: one from the price table, or, for an id of
    /// the form `mock/fault-<mode>` that the table lacks, a model priced like
    /// `mock/cheap`.
    pub fn find_model(&self, model_id: &str) -> Option<MockModel> {
        if let Some(model) = self.models.iter().find(|model| model.id == model_id) {
            return Some(model.clone());
        }
        if model_id.starts_with(FAULT_MODEL_PREFIX) {
            let (prompt, completion, request) = FAULT_MODEL_PRICES;
            return Some(MockModel::new(model_id, prompt, completion, request));
        }
        None
    }
}

impl MockConfig {
    /// The embedding model with this id.
    pub fn find_embedding_model(&self, model_id: &str) -> Option<MockModel> {
        self.embedding_models
            .iter()
            .find(|model| model.id == model_id)
            .cloned()
    }
}

/// One row of the price table, reported by `GET /models`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockModel {
    /// The model id clients send, e.g. `openai/gpt-4o-mini`.
    pub id: String,
    /// USD per prompt token, as a decimal string (`"0.00000015"`).
    pub prompt_price: String,
    /// USD per completion token, as a decimal string.
    pub completion_price: String,
    /// USD per request, as a decimal string.
    pub request_price: String,
    /// The context window, in tokens; longer prompts get 400.
    pub context_length: u64,
    /// The provider's cap on completion tokens, reported in `top_provider`.
    pub max_completion_tokens: Option<u64>,
}

impl MockModel {
    /// A model with these prices, a 128k context and a 16k completion cap.
    pub fn new(id: &str, prompt_price: &str, completion_price: &str, request_price: &str) -> Self {
        MockModel {
            id: id.to_owned(),
            prompt_price: prompt_price.to_owned(),
            completion_price: completion_price.to_owned(),
            request_price: request_price.to_owned(),
            context_length: 128_000,
            max_completion_tokens: Some(16_384),
        }
    }
}

/// The fault modes that have a `mock/fault-<mode>` row in the default table,
/// so that a gateway which checks models against `/models` lets them through.
const DEFAULT_FAULT_MODELS: [&str; 10] = [
    "402",
    "429",
    "500",
    "503",
    "midstream-error",
    "cut",
    "slow",
    "no-usage",
    "no-cost",
    "malformed",
];

/// The default price table. Every price is a whole number of nano-dollars per
/// unit, so every cost is an exact integer of nano-dollars.
fn default_models() -> Vec<MockModel> {
    let mut models = vec![
        MockModel::new("mock/cheap", "0.000001", "0.000002", "0"),
        MockModel::new("openai/gpt-4o-mini", "0.00000015", "0.0000006", "0"),
        MockModel::new("mock/with-request-fee", "0.000001", "0.000002", "0.0001"),
        MockModel::new("mock/free:free", "0", "0", "0"),
        MockModel {
            context_length: 64,
            max_completion_tokens: Some(32),
            ..MockModel::new("mock/tiny-context", "0.000001", "0.000002", "0")
        },
    ];
    let (prompt, completion, request) = FAULT_MODEL_PRICES;
    for mode in DEFAULT_FAULT_MODELS {
        let id = format!("{FAULT_MODEL_PREFIX}{mode}");
        models.push(MockModel::new(&id, prompt, completion, request));
    }
    models
}
