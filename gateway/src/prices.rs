//! The upstream's price list, fetched from `GET /api/v1/models` and
//! `GET /api/v1/embeddings/models` at start and refreshed in the background.

use std::sync::{Arc, RwLock};

use domain::services::openrouter::ModelPrices;

/// The current price list; empty until the first fetch succeeds.
#[derive(Default)]
pub struct PriceList {
    current: RwLock<Arc<ModelPrices>>,
    /// The embedding models' list last fetched, kept when a later fetch of it fails.
    embeddings: std::sync::Mutex<Option<ModelPrices>>,
}

impl PriceList {
    /// The list in force.
    pub fn get(&self) -> Arc<ModelPrices> {
        match self.current.read() {
            Ok(current) => Arc::clone(&current),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn set(&self, prices: ModelPrices) {
        let mut current = match self.current.write() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = Arc::new(prices);
    }

    /// Fetches `<base>/api/v1/models` and `<base>/api/v1/embeddings/models` and replaces the
    /// list with both. Returns the number of models. The model list must be fetched; when only
    /// the embedding models' cannot be, the last one fetched is used (none at first: embedding
    /// models are then unknown), and the failure is logged.
    pub async fn refresh(&self, client: &reqwest::Client, base_url: &str) -> Result<usize, String> {
        let base = base_url.trim_end_matches('/');
        let mut prices = fetch(client, &format!("{base}/api/v1/models")).await?;
        let fetched = fetch(client, &format!("{base}/api/v1/embeddings/models")).await;
        let mut embeddings = match self.embeddings.lock() {
            Ok(kept) => kept,
            Err(poisoned) => poisoned.into_inner(),
        };
        match fetched {
            Ok(list) => *embeddings = Some(list),
            Err(err) => tracing::warn!(error = %err, "cannot load the embedding models' prices"),
        }
        if let Some(list) = embeddings.as_ref() {
            prices.extend(list.clone());
        }
        drop(embeddings);
        let n_models = prices.len();
        self.set(prices);
        Ok(n_models)
    }
}

/// One model list, parsed.
async fn fetch(client: &reqwest::Client, url: &str) -> Result<ModelPrices, String> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|err| format!("fetching {url}: {err}"))?;
    if !response.status().is_success() {
        return Err(format!("fetching {url}: status {}", response.status()));
    }
    let body = response
        .bytes()
        .await
        .map_err(|err| format!("reading {url}: {err}"))?;
    ModelPrices::from_models_json(&body).map_err(|err| format!("parsing {url}: {err}"))
}
