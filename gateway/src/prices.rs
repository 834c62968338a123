//! The upstream's price list, fetched from `GET /api/v1/models` at start and refreshed in the
//! background.

use std::sync::{Arc, RwLock};

use domain::services::openrouter::ModelPrices;

/// The current price list; empty until the first fetch succeeds.
#[derive(Default)]
pub struct PriceList {
    current: RwLock<Arc<ModelPrices>>,
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

    /// Fetches `<base>/api/v1/models` and replaces the list. Returns the number of models.
    pub async fn refresh(&self, client: &reqwest::Client, base_url: &str) -> Result<usize, String> {
        let url = format!("{}/api/v1/models", base_url.trim_end_matches('/'));
        let response = client
            .get(&url)
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
        let prices =
            ModelPrices::from_models_json(&body).map_err(|err| format!("parsing {url}: {err}"))?;
        let n_models = prices.len();
        self.set(prices);
        Ok(n_models)
    }
}
