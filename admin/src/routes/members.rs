//! `/members` (owners): members with their budgets and this month's money; set budgets, change
//! roles, remove, invite.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use domain::MonthWindow;

use crate::actions::{self, InviteInput, Refused};
use crate::error::AppError;
use crate::routes::{Form, NoticeQuery, Query, done};
use crate::session::Viewer;
use crate::state::AppState;
use crate::views::{
    self, FieldErrors, InviteForm, InviteRow, Layout, MemberRow, MembersPage, ShownLink,
};

async fn members_page(
    state: &AppState,
    viewer: &Viewer,
    notice: Option<String>,
    form: InviteForm,
    errors: FieldErrors,
    link: Option<ShownLink>,
) -> Result<MembersPage, AppError> {
    let owner = viewer.owner()?;
    let now = state.clock.now();
    let window = MonthWindow::containing(now);
    let client = state.pool.get().await?;
    let rows = db::members::months(&client, owner.org.id, window, None)
        .await?
        .into_iter()
        .map(|m| MemberRow {
            role: m.membership.role.as_str(),
            budget: m.month.budget.to_string(),
            budget_input: views::usd_input(m.month.budget),
            carved: m.month.carved.saturating_sub(m.month.refunded).to_string(),
            spent: m.spent.to_string(),
            is_self: m.membership.user_id == viewer.user.id,
            email: m.membership.email,
        })
        .collect();
    let invites = db::invites::pending(&client, &owner.org).await?;
    Ok(MembersPage {
        layout: Layout::new(viewer, "members", notice),
        members: rows,
        invites: invites
            .iter()
            .map(|i| InviteRow {
                id: i.id.to_string(),
                email: i.email.clone(),
                role: i.role.to_string(),
                budget: i.monthly_budget.to_string(),
                expires: views::when(i.expires_at),
                status: if i.expires_at <= now {
                    "expired"
                } else {
                    "pending"
                },
            })
            .collect(),
        form,
        errors,
        link,
    })
}

/// `GET /members`.
pub async fn get(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(notice): Query<NoticeQuery>,
) -> Result<Response, AppError> {
    let page = members_page(
        &state,
        &viewer,
        notice.text(),
        InviteForm::default(),
        FieldErrors::default(),
        None,
    )
    .await?;
    Ok(views::page(&page))
}

/// `POST /members/invite`: creates an invite and shows its link once.
pub async fn post_invite(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<InviteForm>,
) -> Result<Response, AppError> {
    let input = InviteInput {
        email: form.email.clone(),
        role: form.role.clone(),
        budget: form.budget.clone(),
    };
    match actions::invite(&state, &viewer, &input, state.clock.now()).await {
        Ok(invited) => {
            let notice = match &invited.emailed {
                Some(Ok(())) => format!("Invite created and emailed to {}.", invited.invite.email),
                _ => "Invite created.".to_string(),
            };
            let mut errors = FieldErrors::default();
            if let Some(Err(why)) = &invited.emailed {
                errors.add(
                    "form",
                    format!(
                        "The invite email could not be sent: {why}. Copy the link above instead."
                    ),
                );
            }
            let link = ShownLink {
                what: "Invite link",
                element_id: "invite-link",
                email: invited.invite.email,
                link: invited.link,
            };
            let page = members_page(
                &state,
                &viewer,
                Some(notice),
                InviteForm::default(),
                errors,
                Some(link),
            )
            .await?;
            Ok(views::page(&page))
        }
        Err(Refused::Fields(errors)) => {
            let page = members_page(&state, &viewer, None, form, errors, None).await?;
            Ok(views::render(StatusCode::BAD_REQUEST, &page))
        }
        Err(Refused::Request(err)) => Err(err),
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct MemberForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    budget: String,
    #[serde(default)]
    role: String,
}

async fn refused_page(
    state: &AppState,
    viewer: &Viewer,
    refused: Refused,
) -> Result<Response, AppError> {
    match refused {
        Refused::Fields(errors) => {
            let mut page_errors = FieldErrors::default();
            page_errors.add("form", errors.joined());
            let page = members_page(
                state,
                viewer,
                None,
                InviteForm::default(),
                page_errors,
                None,
            )
            .await?;
            Ok(views::render(StatusCode::BAD_REQUEST, &page))
        }
        Refused::Request(err) => Err(err),
    }
}

/// `POST /members/budget`.
pub async fn post_budget(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<MemberForm>,
) -> Result<Response, AppError> {
    match actions::set_budget(&state, &viewer, &form.email, &form.budget).await {
        Ok(_) => Ok(done("/members", "budget_set")),
        Err(refused) => refused_page(&state, &viewer, refused).await,
    }
}

/// `POST /members/role`.
pub async fn post_role(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<MemberForm>,
) -> Result<Response, AppError> {
    match actions::set_role(&state, &viewer, &form.email, &form.role).await {
        Ok(_) => Ok(done("/members", "role_changed")),
        Err(refused) => refused_page(&state, &viewer, refused).await,
    }
}

/// `POST /members/remove`.
pub async fn post_remove(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<MemberForm>,
) -> Result<Response, AppError> {
    actions::remove_member(&state, &viewer, &form.email, state.clock.now()).await?;
    Ok(done("/members", "member_removed"))
}

/// `POST /members/invites/{id}/cancel` (owners).
pub async fn post_cancel_invite(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    actions::cancel_invite(&state, &viewer, &id, state.clock.now()).await?;
    Ok(done("/members", "invite_cancelled"))
}

/// `POST /members/password-reset` (owners): makes a password-reset link for a member and shows
/// it once.
pub async fn post_password_reset(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<MemberForm>,
) -> Result<Response, AppError> {
    let (reset, link) =
        actions::issue_password_reset(&state, &viewer, &form.email, state.clock.now()).await?;
    let notice = format!(
        "Password reset link made for {}; it works once, until {}.",
        reset.email,
        views::when(reset.expires_at)
    );
    let link = ShownLink {
        what: "Password reset link",
        element_id: "reset-link",
        email: reset.email,
        link,
    };
    let page = members_page(
        &state,
        &viewer,
        Some(notice),
        InviteForm::default(),
        FieldErrors::default(),
        Some(link),
    )
    .await?;
    Ok(views::page(&page))
}
