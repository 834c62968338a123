//! Setup of the first owner, sign-in and sign-out, invites, org switching and the account page.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use domain::Email;
use secrecy::SecretString;
use uuid::Uuid;

use crate::error::AppError;
use crate::password;
use crate::routes::{ClientIp, Form, NoticeQuery, Query, done};
use crate::session::{self, Viewer};
use crate::state::AppState;
use crate::views::{self, AccountPage, AdminTokenRow, FieldErrors, Layout};

/// `GET /`: the dashboard, or sign-in.
pub async fn root() -> Redirect {
    Redirect::to("/dashboard")
}

/// Starts a session and returns the redirect that sets its cookie.
async fn start_session(
    state: &AppState,
    user_id: Uuid,
    org_id: Option<Uuid>,
    to: &str,
) -> Result<Response, AppError> {
    let token = domain::token::random_secret();
    let ttl = time::Duration::try_from(state.config.session_ttl)
        .map_err(|err| AppError::Internal(err.to_string()))?;
    let client = state.pool.get().await?;
    db::accounts::create_session(
        &client,
        &domain::token::hash_token(&token),
        user_id,
        org_id,
        &domain::token::random_secret(),
        state.clock.now() + ttl,
    )
    .await?;
    let mut response = Redirect::to(to).into_response();
    let cookie = HeaderValue::from_str(&session::session_cookie(&token, state))
        .map_err(|err| AppError::Internal(err.to_string()))?;
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct SetupQuery {
    #[serde(default)]
    token: String,
}

async fn check_setup(state: &AppState, token: &str) -> Result<(), AppError> {
    let client = state.pool.get().await?;
    if db::accounts::any_user_can_sign_in(&client).await? {
        return Err(AppError::NotFound(
            "keycap is already set up: sign in instead".into(),
        ));
    }
    if !state.setup_token_matches(token) {
        return Err(AppError::Forbidden(
            "this setup link is not valid: use the link keycap printed when it started".into(),
        ));
    }
    Ok(())
}

/// `GET /setup?token=...`: the form that creates the first owner.
pub async fn get_setup(
    State(state): State<AppState>,
    Query(query): Query<SetupQuery>,
) -> Result<Response, AppError> {
    check_setup(&state, &query.token).await?;
    Ok(views::page(&views::SetupPage {
        token: query.token,
        org_name: String::new(),
        email: String::new(),
        errors: FieldErrors::default(),
    }))
}

// No Debug: it carries a secret.
#[derive(serde::Deserialize)]
pub struct SetupForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    org_name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

/// `POST /setup`: creates the first owner and their org, and signs them in.
pub async fn post_setup(
    State(state): State<AppState>,
    Form(form): Form<SetupForm>,
) -> Result<Response, AppError> {
    check_setup(&state, &form.token).await?;
    let mut errors = FieldErrors::default();
    let org_name = form.org_name.trim();
    if org_name.len() > 200 {
        errors.add("org_name", "use at most 200 characters");
    } else if Uuid::parse_str(org_name).is_ok() {
        errors.add("org_name", "an org name must not look like an id");
    }
    let email = Email::parse(&form.email)
        .map_err(|err| errors.add("email", err.to_string()))
        .ok();
    if let Some(problem) = password::problem(&form.password) {
        errors.add("password", problem);
    }
    let Some(email) = email.filter(|_| errors.is_empty()) else {
        let page = views::SetupPage {
            token: form.token,
            org_name: form.org_name,
            email: form.email,
            errors,
        };
        return Ok(views::render(StatusCode::BAD_REQUEST, &page));
    };
    let hash = password::hash(SecretString::from(form.password)).await?;
    let org_name = (!org_name.is_empty()).then_some(org_name);
    let set_up =
        db::accounts::set_up_first_owner(&state.pool, org_name, &email, &hash, state.clock.now())
            .await;
    let (user, org) = match set_up {
        Ok(set_up) => set_up,
        // The org name is missing or taken: say so next to it.
        Err(db::Error::Invalid(message)) | Err(db::Error::Conflict(message))
            if !message.contains("already set up") =>
        {
            let mut errors = FieldErrors::default();
            errors.add("org_name", message);
            let page = views::SetupPage {
                token: form.token,
                org_name: form.org_name,
                email: form.email,
                errors,
            };
            return Ok(views::render(StatusCode::BAD_REQUEST, &page));
        }
        Err(err) => return Err(err.into()),
    };
    state.consume_setup_token();
    tracing::info!(user.email = %user.email, org.name = %org.name, "first owner set up");
    start_session(&state, user.id, Some(org.id), "/dashboard?notice=welcome").await
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    next: String,
}

/// `GET /login`.
pub async fn get_login(Query(query): Query<LoginQuery>) -> Response {
    views::page(&views::LoginPage {
        email: String::new(),
        next: query.next,
        error: None,
    })
}

// No Debug: it carries a secret.
#[derive(serde::Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

/// Where to go after signing in: a path on this site only.
fn local_path(next: &str) -> &str {
    // Only characters that cannot change which site a browser goes to: no backslashes, tabs or
    // newlines (which browsers drop, turning "/\t/evil" into "//evil").
    let safe = next.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(b, b'/' | b'_' | b'-' | b'.' | b'?' | b'=' | b'&' | b'%')
    });
    if safe && next.starts_with('/') && !next.starts_with("//") {
        next
    } else {
        "/dashboard"
    }
}

/// How long an address an email signed in from stays known to the throttle.
const KNOWN_ADDRESS_DAYS: i64 = 90;

/// Counts a password attempt against this email and address before the password is checked,
/// as a failure until it succeeds (then [`signed_in`] forgets it), so that many attempts sent
/// at once cannot all slip under the limit. Refuses when this email failed too often from this
/// address, when the address failed too often for any emails, or when the email failed too
/// often from anywhere and this is not an address it has signed in from: a stranger who knows
/// an owner's email can lock them out of new addresses, never out of their usual one.
async fn begin_attempt(state: &AppState, email: &str, client_ip: &str) -> Result<(), AppError> {
    // What an attacker types is stored: no more of it than the longest address.
    let email: String = email.chars().take(domain::email::MAX_LEN).collect();
    let email = email.as_str();
    let window = time::Duration::try_from(state.config.login_window)
        .map_err(|err| AppError::Internal(err.to_string()))?;
    let now = state.clock.now();
    let since = now - window;
    let client = state.pool.get().await?;
    db::accounts::record_login_failure(&client, email, client_ip, now, since).await?;
    let known_since = now - time::Duration::days(KNOWN_ADDRESS_DAYS);
    let failures =
        db::accounts::recent_login_failures(&client, email, client_ip, since, known_since).await?;
    let max = state.config.login_max_failures;
    // An address may try several accounts, so it gets a larger allowance than one account.
    if failures.by_pair > max
        || failures.by_address > 4 * max
        || (failures.by_email > max && !failures.known_address)
    {
        return Err(AppError::TooManyRequests(format!(
            "too many failed sign-ins: wait {} minutes and try again",
            window.whole_minutes()
        )));
    }
    Ok(())
}

/// After the right password: forgets the email's failures and remembers the address.
async fn signed_in(state: &AppState, email: &str, client_ip: &str) -> Result<(), AppError> {
    let now = state.clock.now();
    let client = state.pool.get().await?;
    let forget_before = now - time::Duration::days(KNOWN_ADDRESS_DAYS);
    db::accounts::signed_in_from(&client, email, client_ip, now, forget_before).await?;
    Ok(())
}

/// `POST /login`.
pub async fn post_login(
    State(state): State<AppState>,
    ClientIp(client_ip): ClientIp,
    Form(form): Form<LoginForm>,
) -> Result<Response, AppError> {
    let email_text = form.email.trim().to_lowercase();
    let refuse = |status: StatusCode, message: String| {
        views::render(
            status,
            &views::LoginPage {
                email: form.email.clone(),
                next: form.next.clone(),
                error: Some(message),
            },
        )
    };
    match begin_attempt(&state, &email_text, &client_ip).await {
        Ok(()) => {}
        Err(err @ AppError::TooManyRequests(_)) => {
            return Ok(refuse(StatusCode::TOO_MANY_REQUESTS, err.to_string()));
        }
        Err(err) => return Err(err),
    }
    let user = match Email::parse(&form.email) {
        Ok(email) => {
            let client = state.pool.get().await?;
            db::accounts::find_user(&client, &email).await?
        }
        Err(_) => None,
    };
    let stored = user.as_ref().and_then(|u| u.password_hash.clone());
    let ok = password::verify(SecretString::from(form.password.clone()), stored).await?;
    let Some(user) = user.filter(|_| ok) else {
        tracing::info!(client.ip = %client_ip, "failed sign-in");
        return Ok(refuse(
            StatusCode::UNAUTHORIZED,
            "the email or the password is wrong".into(),
        ));
    };
    signed_in(&state, &email_text, &client_ip).await?;
    let client = state.pool.get().await?;
    let orgs = db::accounts::memberships_of(&client, user.id).await?;
    drop(client);
    start_session(
        &state,
        user.id,
        orgs.first().map(|m| m.org.id),
        local_path(&form.next),
    )
    .await
}

/// `POST /logout`.
pub async fn post_logout(
    State(state): State<AppState>,
    viewer: Viewer,
) -> Result<Response, AppError> {
    if let Some(hash) = viewer.session_hash {
        let client = state.pool.get().await?;
        db::accounts::delete_session(&client, &hash).await?;
    }
    let mut response = Redirect::to("/login").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&session::clear_cookie(&state)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

#[derive(Debug, serde::Deserialize)]
pub struct SwitchForm {
    #[serde(default)]
    org_id: String,
}

/// `POST /orgs/switch`: works in another org the user belongs to.
pub async fn post_switch_org(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<SwitchForm>,
) -> Result<Response, AppError> {
    let org = Uuid::parse_str(form.org_id.trim())
        .ok()
        .and_then(|id| viewer.orgs.iter().find(|m| m.org.id == id))
        .ok_or_else(|| AppError::NotFound("you are not a member of that org".into()))?;
    let hash = viewer
        .session_hash
        .ok_or_else(|| AppError::BadRequest("an admin token works in one org only".into()))?;
    let client = state.pool.get().await?;
    db::accounts::switch_org(&client, &hash, org.org.id).await?;
    Ok(done("/dashboard", "org_switched"))
}

async fn find_invite(state: &AppState, token: &str) -> Result<db::invites::Invite, AppError> {
    let client = state.pool.get().await?;
    let invite = db::invites::find(&client, &domain::token::hash_token(token))
        .await?
        .ok_or_else(|| {
            AppError::NotFound(
                "this invite link is not valid: check that you copied all of it".into(),
            )
        })?;
    if let Some(reason) = db::invites::unusable(&invite, state.clock.now()) {
        return Err(AppError::Conflict(reason.into()));
    }
    Ok(invite)
}

async fn has_account(
    state: &AppState,
    email: &str,
) -> Result<Option<db::accounts::User>, AppError> {
    let Ok(email) = Email::parse(email) else {
        return Ok(None);
    };
    let client = state.pool.get().await?;
    Ok(db::accounts::find_user(&client, &email)
        .await?
        .filter(|user| user.password_hash.is_some()))
}

fn invite_page(
    token: String,
    invite: &db::invites::Invite,
    has_account: bool,
    errors: FieldErrors,
) -> views::InvitePage {
    views::InvitePage {
        token,
        org_name: invite.org.name.clone(),
        email: invite.email.clone(),
        role: invite.role.to_string(),
        budget: invite.monthly_budget.to_string(),
        has_account,
        errors,
    }
}

/// `GET /invite/{token}`: who invited whom, and the form to accept.
pub async fn get_invite(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, AppError> {
    let invite = find_invite(&state, &token).await?;
    let account = has_account(&state, &invite.email).await?;
    Ok(views::page(&invite_page(
        token,
        &invite,
        account.is_some(),
        FieldErrors::default(),
    )))
}

// No Debug: it carries a secret.
#[derive(serde::Deserialize)]
pub struct InviteAcceptForm {
    #[serde(default)]
    password: String,
}

/// `POST /invite/{token}`: creates the account (or checks the existing one's password), adds
/// the membership and signs in.
pub async fn post_invite(
    State(state): State<AppState>,
    Path(token): Path<String>,
    ClientIp(client_ip): ClientIp,
    Form(form): Form<InviteAcceptForm>,
) -> Result<Response, AppError> {
    let invite = find_invite(&state, &token).await?;
    let account = has_account(&state, &invite.email).await?;
    let mut errors = FieldErrors::default();
    let new_hash = match &account {
        Some(user) => {
            begin_attempt(&state, &invite.email, &client_ip).await?;
            let ok = password::verify(
                SecretString::from(form.password),
                user.password_hash.clone(),
            )
            .await?;
            if ok {
                signed_in(&state, &invite.email, &client_ip).await?;
            } else {
                errors.add("password", "that is not the password of this account");
            }
            None
        }
        None => match password::problem(&form.password) {
            Some(problem) => {
                errors.add("password", problem);
                None
            }
            None => Some(password::hash(SecretString::from(form.password)).await?),
        },
    };
    if !errors.is_empty() {
        let page = invite_page(token, &invite, account.is_some(), errors);
        return Ok(views::render(StatusCode::BAD_REQUEST, &page));
    }
    let (user, invite) = db::invites::accept(
        &state.pool,
        &domain::token::hash_token(&token),
        new_hash.as_deref(),
        state.clock.now(),
    )
    .await?;
    start_session(
        &state,
        user.id,
        Some(invite.org.id),
        "/dashboard?notice=joined",
    )
    .await
}

async fn find_reset(state: &AppState, token: &str) -> Result<db::password_resets::Reset, AppError> {
    let client = state.pool.get().await?;
    let reset = db::password_resets::find(&client, &domain::token::hash_token(token))
        .await?
        .ok_or_else(|| {
            AppError::NotFound(
                "this reset link is not valid: check that you copied all of it".into(),
            )
        })?;
    if let Some(reason) = db::password_resets::unusable(&reset, state.clock.now()) {
        return Err(AppError::Conflict(reason.into()));
    }
    Ok(reset)
}

fn reset_page(
    token: String,
    reset: &db::password_resets::Reset,
    errors: FieldErrors,
) -> views::ResetPage {
    views::ResetPage {
        token,
        org_name: reset.org.name.clone(),
        email: reset.email.clone(),
        errors,
    }
}

/// `GET /reset/{token}`: the form to choose a new password.
pub async fn get_reset(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, AppError> {
    let reset = find_reset(&state, &token).await?;
    Ok(views::page(&reset_page(
        token,
        &reset,
        FieldErrors::default(),
    )))
}

// No Debug: it carries a secret.
#[derive(serde::Deserialize)]
pub struct ResetForm {
    #[serde(default)]
    password: String,
}

/// `POST /reset/{token}`: sets the new password, uses the link up, and signs in.
pub async fn post_reset(
    State(state): State<AppState>,
    Path(token): Path<String>,
    ClientIp(client_ip): ClientIp,
    Form(form): Form<ResetForm>,
) -> Result<Response, AppError> {
    let reset = find_reset(&state, &token).await?;
    if let Some(problem) = password::problem(&form.password) {
        let mut errors = FieldErrors::default();
        errors.add("password", problem);
        let page = reset_page(token, &reset, errors);
        return Ok(views::render(StatusCode::BAD_REQUEST, &page));
    }
    let hash = password::hash(SecretString::from(form.password)).await?;
    let reset = db::password_resets::use_link(
        &state.pool,
        &domain::token::hash_token(&token),
        &hash,
        state.clock.now(),
    )
    .await?;
    signed_in(&state, &reset.email, &client_ip).await?;
    tracing::info!(user.email = %reset.email, org.name = %reset.org.name, "password reset");
    start_session(
        &state,
        reset.user_id,
        Some(reset.org.id),
        "/dashboard?notice=password_reset",
    )
    .await
}

async fn account_page(
    state: &AppState,
    viewer: &Viewer,
    notice: Option<String>,
    errors: FieldErrors,
    new_token: Option<String>,
    token_name: String,
) -> Result<AccountPage, AppError> {
    let tokens = match viewer.current.as_ref().filter(|_| viewer.is_owner()) {
        Some(member) => {
            let client = state.pool.get().await?;
            db::accounts::list_admin_tokens(&client, member.org.id)
                .await?
                .iter()
                .map(|t| AdminTokenRow {
                    id: t.id.to_string(),
                    name: t.name.clone(),
                    prefix: t.prefix.clone(),
                    owner: t
                        .owner_email
                        .clone()
                        .unwrap_or_else(|| "the command line".into()),
                    scope: t.scope.as_str(),
                    created: views::when(t.created_at),
                    expires: views::when_or(t.expires_at, "never"),
                    status: if t.revoked_at.is_some() {
                        "revoked"
                    } else if t.expires_at.is_some_and(|at| at <= state.clock.now()) {
                        "expired"
                    } else {
                        "active"
                    },
                })
                .collect()
        }
        None => Vec::new(),
    };
    Ok(AccountPage {
        layout: Layout::new(viewer, "account", notice),
        errors,
        tokens,
        new_token,
        token_name,
    })
}

/// `GET /account`.
pub async fn get_account(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(notice): Query<NoticeQuery>,
) -> Result<Response, AppError> {
    let page = account_page(
        &state,
        &viewer,
        notice.text(),
        FieldErrors::default(),
        None,
        String::new(),
    )
    .await?;
    Ok(views::page(&page))
}

// No Debug: it carries a secret.
#[derive(serde::Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    current: String,
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    confirm: String,
}

/// `POST /account/password`: changes the password and ends the user's other sessions.
pub async fn post_password(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<PasswordForm>,
) -> Result<Response, AppError> {
    let hash = viewer
        .session_hash
        .ok_or_else(|| AppError::BadRequest("sign in to change your password".into()))?;
    let mut errors = FieldErrors::default();
    let ok = password::verify(
        SecretString::from(form.current),
        viewer.user.password_hash.clone(),
    )
    .await?;
    if !ok {
        errors.add("current", "that is not your current password");
    }
    if let Some(problem) = password::problem(&form.new_password) {
        errors.add("new_password", problem);
    } else if form.new_password != form.confirm {
        errors.add("confirm", "the two new passwords differ");
    }
    if !errors.is_empty() {
        let page = account_page(&state, &viewer, None, errors, None, String::new()).await?;
        return Ok(views::render(StatusCode::BAD_REQUEST, &page));
    }
    let new_hash = password::hash(SecretString::from(form.new_password)).await?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await.map_err(db::Error::from)?;
    db::accounts::set_password(&tx, viewer.user.id, &new_hash).await?;
    db::accounts::delete_other_sessions(&tx, viewer.user.id, &hash).await?;
    // Admin tokens act as the user: a new password ends them too.
    db::accounts::revoke_user_admin_tokens(&tx, viewer.user.id, state.clock.now()).await?;
    db::password_resets::cancel_for_user(&tx, viewer.user.id, state.clock.now()).await?;
    tx.commit().await.map_err(db::Error::from)?;
    Ok(done("/account", "password_changed"))
}

#[derive(Debug, serde::Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    name: String,
    /// `admin` (the default) or `metrics`.
    #[serde(default)]
    scope: String,
    /// Days the token works: 30, 90 (the default) or 365; `never` for a metrics token.
    #[serde(default)]
    days: String,
    /// The owner's password: a token acts as them, so making one asks for it.
    #[serde(default)]
    password: String,
}

/// `POST /account/tokens`: issues an admin token, or a metrics token (owners only), shown
/// once.
pub async fn post_token(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<TokenForm>,
) -> Result<Response, AppError> {
    let owner = viewer.owner()?.clone();
    let scope = match form.scope.as_str() {
        "" => db::accounts::TokenScope::Admin,
        other => other
            .parse()
            .map_err(|err: db::Error| AppError::BadRequest(err.to_string()))?,
    };
    let now = state.clock.now();
    let mut errors = FieldErrors::default();
    let expires_at = match form.days.as_str() {
        "" | "90" => Some(now + time::Duration::days(90)),
        "30" => Some(now + time::Duration::days(30)),
        "365" => Some(now + time::Duration::days(365)),
        "never" if scope == db::accounts::TokenScope::Metrics => None,
        "never" => {
            errors.add(
                "days",
                "an admin token needs an end: choose 30, 90 or 365 days",
            );
            None
        }
        _ => {
            errors.add("days", "choose 30, 90 or 365 days");
            None
        }
    };
    let password_ok = password::verify(
        SecretString::from(form.password),
        viewer.user.password_hash.clone(),
    )
    .await?;
    if !password_ok {
        errors.add("token_password", "that is not your password");
    }
    if !errors.is_empty() {
        let page = account_page(&state, &viewer, None, errors, None, form.name).await?;
        return Ok(views::render(StatusCode::BAD_REQUEST, &page));
    }
    let (token, prefix) = domain::token::admin_token(scope.token_prefix());
    let client = state.pool.get().await?;
    let created = db::accounts::create_admin_token(
        &client,
        &owner.org,
        Some(viewer.user.id),
        scope,
        &form.name,
        &domain::token::hash_token(&token),
        &prefix,
        expires_at,
        now,
    )
    .await;
    drop(client);
    match created {
        Ok(_) => {
            let page = account_page(
                &state,
                &viewer,
                None,
                FieldErrors::default(),
                Some(token),
                String::new(),
            )
            .await?;
            Ok(views::page(&page))
        }
        Err(db::Error::Invalid(message)) => {
            let mut errors = FieldErrors::default();
            errors.add("name", message);
            let page = account_page(&state, &viewer, None, errors, None, form.name).await?;
            Ok(views::render(StatusCode::BAD_REQUEST, &page))
        }
        Err(err) => Err(err.into()),
    }
}

/// `POST /account/tokens/{id}/revoke` (owners only).
pub async fn post_revoke_token(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let owner = viewer.owner()?;
    let id = Uuid::parse_str(&id)
        .map_err(|_| AppError::NotFound(format!("admin token {id:?} not found")))?;
    let client = state.pool.get().await?;
    db::accounts::revoke_admin_token(&client, owner.org.id, id, state.clock.now()).await?;
    Ok(done("/account", "token_revoked"))
}
