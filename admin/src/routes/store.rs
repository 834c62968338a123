//! `/store`: provision a sub-key from the member's own budget; the token is shown once.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use crate::actions::{self, KeyInput, Refused};
use crate::error::AppError;
use crate::routes::Form;
use crate::session::Viewer;
use crate::state::AppState;
use crate::views::{self, CreatedKey, FieldErrors, Layout, StoreForm, StorePage};

async fn store_page(
    state: &AppState,
    viewer: &Viewer,
    form: StoreForm,
    errors: FieldErrors,
    created: Option<CreatedKey>,
) -> Result<StorePage, AppError> {
    let member = viewer.member()?;
    let client = state.pool.get().await?;
    let (month, _) = actions::month_of(&client, member, state.clock.now()).await?;
    Ok(StorePage {
        layout: Layout::new(viewer, "store", None),
        services: actions::SERVICES.to_vec(),
        available: month.available().to_string(),
        available_nanos: month.available().nanos(),
        form,
        errors,
        created,
    })
}

/// `GET /store`.
pub async fn get(State(state): State<AppState>, viewer: Viewer) -> Result<Response, AppError> {
    let form = StoreForm {
        service: actions::SERVICES[0].to_string(),
        expires: "30d".into(),
        ..Default::default()
    };
    let page = store_page(&state, &viewer, form, FieldErrors::default(), None).await?;
    Ok(views::page(&page))
}

/// `POST /store`: provisions the key, or shows the form again with what was wrong.
pub async fn post(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<StoreForm>,
) -> Result<Response, AppError> {
    let input = KeyInput {
        service: form.service.clone(),
        name: form.name.clone(),
        cap: form.cap.clone(),
        expires: form.expires.clone(),
        models: form.models.split(',').map(str::to_string).collect(),
        renew_monthly: form.renew_monthly.is_some(),
        rpm: form.rpm.clone(),
    };
    match actions::provision_key(&state, &viewer, &input, state.clock.now()).await {
        Ok((key, token)) => {
            let created = CreatedKey {
                name: key.name.clone(),
                prefix: key.prefix.clone(),
                cap: key.cap.to_string(),
                token: token.expose().to_string(),
                base_url: state.config.gateway_base_url.clone(),
            };
            let fresh = StoreForm {
                service: form.service,
                expires: "30d".into(),
                ..Default::default()
            };
            let page = store_page(
                &state,
                &viewer,
                fresh,
                FieldErrors::default(),
                Some(created),
            )
            .await?;
            Ok(views::page(&page))
        }
        Err(Refused::Fields(errors)) => {
            let page = store_page(&state, &viewer, form, errors, None).await?;
            Ok(views::render(StatusCode::BAD_REQUEST, &page))
        }
        Err(Refused::Request(err)) => Err(err),
    }
}
