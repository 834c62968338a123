//! What the pages and the JSON API do, in one place: each function checks the viewer's role,
//! parses the input into domain types (collecting a message per bad field), and calls the `db`
//! function that makes the change with its ledger row. Pages and API differ only in how they
//! show the result.

use domain::services::{Service, ServiceAdapter};
use domain::{ApiKeyToken, Email, Money, MonthWindow, Role};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::AppError;
use crate::session::Viewer;
use crate::state::AppState;
use crate::views::FieldErrors;

/// Why an action was refused: bad fields, or an error of the request as a whole.
#[derive(Debug)]
pub enum Refused {
    Fields(FieldErrors),
    Request(AppError),
}

impl<E: Into<AppError>> From<E> for Refused {
    fn from(err: E) -> Self {
        Refused::Request(err.into())
    }
}

impl Refused {
    fn field(field: &'static str, message: impl Into<String>) -> Refused {
        let mut errors = FieldErrors::default();
        errors.add(field, message);
        Refused::Fields(errors)
    }
}

/// The services a key or master key can be for.
pub const SERVICES: [&str; 1] = ["openrouter"];

fn parse_usd(field: &'static str, text: &str, errors: &mut FieldErrors) -> Money {
    if text.trim().is_empty() {
        errors.add(field, "enter an amount in USD, such as 20 or 12.50");
        return Money::ZERO;
    }
    match Money::parse_usd(text.trim().trim_start_matches('$')) {
        Ok(money) => money,
        Err(err) => {
            errors.add(field, err.to_string());
            Money::ZERO
        }
    }
}

fn parse_service(text: &str, errors: &mut FieldErrors) -> Service {
    match text.parse::<Service>() {
        Ok(service) => service,
        Err(err) => {
            errors.add("service", err.to_string());
            Service::OpenRouter
        }
    }
}

fn check_name(field: &'static str, name: &str, errors: &mut FieldErrors) {
    let n_chars = name.trim().chars().count();
    if n_chars == 0 {
        errors.add(field, "enter a name");
    } else if name.trim().len() > 200 {
        errors.add(field, "use at most 200 characters");
    }
}

/// A sub-key to provision, as typed.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct KeyInput {
    pub service: String,
    pub name: String,
    pub cap: String,
    pub expires: String,
    pub models: Vec<String>,
    pub renew_monthly: bool,
    /// Requests per minute, as typed; empty for no limit.
    pub rpm: String,
}

/// Provisions a sub-key for the viewer from their own budget.
pub async fn provision_key(
    state: &AppState,
    viewer: &Viewer,
    input: &KeyInput,
    now: OffsetDateTime,
) -> Result<(db::keys::ApiKey, ApiKeyToken), Refused> {
    let member = viewer.member()?;
    let mut errors = FieldErrors::default();
    let service = parse_service(&input.service, &mut errors);
    check_name("name", &input.name, &mut errors);
    let cap = parse_usd("cap", &input.cap, &mut errors);
    if errors.get("cap").is_none() && cap == Money::ZERO {
        errors.add("cap", "a key needs a cap above $0");
    }
    let expires_at = if input.expires.trim().is_empty() {
        None
    } else {
        match domain::expiry::parse_expiry(&input.expires, now) {
            Ok(at) => Some(at),
            Err(err) => {
                errors.add("expires", err.to_string());
                None
            }
        }
    };
    let models: Vec<String> = input
        .models
        .iter()
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    if models.iter().any(|m| m.len() > 200) {
        errors.add("models", "model names must be at most 200 characters");
    }
    if models.len() > 100 {
        errors.add("models", "list at most 100 models");
    }
    let rate_limit_rpm = match input.rpm.trim() {
        "" => None,
        text => match text.parse::<i32>() {
            Ok(rpm) if (1..=1_000_000).contains(&rpm) => Some(rpm),
            _ => {
                errors.add(
                    "rpm",
                    "enter a whole number of requests per minute from 1 to 1000000, or leave it empty for no limit",
                );
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(Refused::Fields(errors));
    }
    let email = Email::parse(&viewer.user.email).map_err(|e| AppError::Internal(e.to_string()))?;
    let new = db::keys::NewKey {
        member: email,
        service,
        name: input.name.trim().to_string(),
        cap,
        expires_at,
        model_scope: models,
        renew_monthly: input.renew_monthly,
        rate_limit_rpm,
    };
    match db::keys::create(&state.pool, &member.org, &new, viewer.actor(), now).await {
        Ok(created) => Ok(created),
        Err(db::Error::Budget(err)) => Err(Refused::field("cap", err.to_string())),
        Err(db::Error::Invalid(message)) if message.contains("master key") => Err(Refused::field(
            "form",
            format!(
                "{} has no active {service} master key yet: ask an owner to add one in the vault",
                member.org.name
            ),
        )),
        Err(err) => Err(err.into()),
    }
}

/// A key of the current org that the viewer may change: their own, or any if they own the org.
/// `doing` names the change for the refusal ("revoke it").
async fn key_to_change(
    state: &AppState,
    viewer: &Viewer,
    key_id: &str,
    doing: &str,
) -> Result<db::keys::ApiKey, AppError> {
    let member = viewer.member()?;
    let not_found = || AppError::NotFound(format!("key {key_id:?} not found"));
    let id = Uuid::parse_str(key_id).map_err(|_| not_found())?;
    let client = state.pool.get().await?;
    let key = db::keys::find_by_id(&client, id)
        .await?
        .filter(|key| key.org_id == member.org.id)
        .ok_or_else(not_found)?;
    if key.membership_id != member.membership_id && member.role != Role::Owner {
        return Err(AppError::Forbidden(format!(
            "this key belongs to another member: only they or an owner can {doing}"
        )));
    }
    Ok(key)
}

/// Sets the cap of a key of the current org: members may change their own keys, owners any key.
/// A raise is carved from the key's member's budget this month, a cut refunded to it (up to
/// what the key carved this month); see `db::keys::set_cap`.
pub async fn set_key_cap(
    state: &AppState,
    viewer: &Viewer,
    key_id: &str,
    cap: &str,
    now: OffsetDateTime,
) -> Result<db::keys::CapChanged, Refused> {
    let key = key_to_change(state, viewer, key_id, "change its cap").await?;
    let mut errors = FieldErrors::default();
    let cap = parse_usd("cap", cap, &mut errors);
    if !errors.is_empty() {
        return Err(Refused::Fields(errors));
    }
    let member = viewer.member()?;
    match db::keys::set_cap(
        &state.pool,
        &member.org,
        &key.id.to_string(),
        cap,
        viewer.actor(),
        now,
    )
    .await
    {
        Ok(changed) => Ok(changed),
        Err(db::Error::Budget(err)) => Err(Refused::field("cap", err.to_string())),
        // The same cap, or a key that is closed, expired or due for renewal: a 409.
        Err(err) => Err(err.into()),
    }
}

/// Revokes a key of the current org: members may revoke their own keys, owners any key.
pub async fn revoke_key(
    state: &AppState,
    viewer: &Viewer,
    key_id: &str,
    now: OffsetDateTime,
) -> Result<db::keys::Revoked, AppError> {
    let key = key_to_change(state, viewer, key_id, "revoke it").await?;
    let member = viewer.member()?;
    Ok(db::keys::revoke(
        &state.pool,
        &member.org,
        &key.id.to_string(),
        viewer.actor(),
        now,
    )
    .await?)
}

/// A master key's secret: non-empty, no spaces or control characters, at most 4 KiB.
fn check_secret(secret: &str, errors: &mut FieldErrors) {
    if secret.is_empty() {
        errors.add("secret", "paste the master key");
    } else if secret.len() > 4096 {
        errors.add("secret", "a master key is at most 4096 characters");
    } else if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        errors.add("secret", "the key contains spaces or control characters");
    }
}

/// Seals and stores a new master key of the current org (owners only).
pub async fn add_master_key(
    state: &AppState,
    viewer: &Viewer,
    service: &str,
    name: &str,
    secret: &SecretString,
) -> Result<db::master_keys::MasterKey, Refused> {
    let owner = viewer.owner()?;
    let mut errors = FieldErrors::default();
    let service = parse_service(service, &mut errors);
    check_name("name", name, &mut errors);
    let secret = secret.expose_secret().trim();
    check_secret(secret, &mut errors);
    if !errors.is_empty() {
        return Err(Refused::Fields(errors));
    }
    let id = Uuid::new_v4();
    let sealed = state.keyring.seal(owner.org.id, id, secret);
    let new = db::master_keys::NewMasterKey {
        id,
        service,
        name: name.trim().to_string(),
        last_four: vault::last_four(secret),
        sealed,
    };
    Ok(db::master_keys::add(
        &state.pool,
        &owner.org,
        &new,
        viewer.actor(),
        state.clock.now(),
    )
    .await?)
}

fn master_key_id(text: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(text).map_err(|_| AppError::NotFound(format!("master key {text:?} not found")))
}

/// Replaces the secret of a master key in place (owners only).
pub async fn rotate_master_key(
    state: &AppState,
    viewer: &Viewer,
    id: &str,
    secret: &SecretString,
) -> Result<db::master_keys::MasterKey, Refused> {
    let owner = viewer.owner()?;
    let id = master_key_id(id)?;
    let mut errors = FieldErrors::default();
    let secret = secret.expose_secret().trim();
    check_secret(secret, &mut errors);
    if !errors.is_empty() {
        return Err(Refused::Fields(errors));
    }
    let sealed = state.keyring.seal(owner.org.id, id, secret);
    Ok(db::master_keys::rotate(
        &state.pool,
        &owner.org,
        id,
        &vault::last_four(secret),
        &sealed,
        viewer.actor(),
        state.clock.now(),
    )
    .await?)
}

/// Revokes a master key (owners only).
pub async fn revoke_master_key(
    state: &AppState,
    viewer: &Viewer,
    id: &str,
) -> Result<db::master_keys::MasterKey, AppError> {
    let owner = viewer.owner()?;
    let id = master_key_id(id)?;
    Ok(db::master_keys::revoke(
        &state.pool,
        &owner.org,
        id,
        viewer.actor(),
        state.clock.now(),
    )
    .await?)
}

/// What the upstream said about a master key.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyCheck {
    pub ok: bool,
    pub status: Option<u16>,
    pub message: String,
}

/// How a master-key test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    Accepted,
    /// The upstream answered with this status.
    Refused(u16),
    /// The upstream could not be reached; why, in a few words.
    Unreachable(&'static str),
}

impl CheckOutcome {
    /// A short code for a URL: `ok`, `refused-401`, `unreachable-timed-out`.
    pub fn code(self) -> String {
        match self {
            CheckOutcome::Accepted => "ok".into(),
            CheckOutcome::Refused(status) => format!("refused-{status}"),
            CheckOutcome::Unreachable(why) => format!("unreachable-{}", why.replace(' ', "-")),
        }
    }

    /// Reads [`CheckOutcome::code`] back; `None` for anything else.
    pub fn from_code(code: &str) -> Option<CheckOutcome> {
        if code == "ok" {
            return Some(CheckOutcome::Accepted);
        }
        if let Some(status) = code.strip_prefix("refused-") {
            return status
                .parse::<u16>()
                .ok()
                .filter(|s| (100..600).contains(s))
                .map(CheckOutcome::Refused);
        }
        match code.strip_prefix("unreachable-")? {
            "timed-out" => Some(CheckOutcome::Unreachable("timed out")),
            "connection-failed" => Some(CheckOutcome::Unreachable("connection failed")),
            "request-failed" => Some(CheckOutcome::Unreachable("request failed")),
            _ => None,
        }
    }

    /// What to tell the owner about the key named `name`.
    pub fn check(self, name: &str, upstream: &str) -> KeyCheck {
        match self {
            CheckOutcome::Accepted => KeyCheck {
                ok: true,
                status: Some(200),
                message: format!("the upstream accepted master key {name:?}"),
            },
            CheckOutcome::Refused(status) => KeyCheck {
                ok: false,
                status: Some(status),
                message: format!(
                    "the upstream refused master key {name:?} with status {status}: rotate it with a working key"
                ),
            },
            CheckOutcome::Unreachable(why) => KeyCheck {
                ok: false,
                status: None,
                message: format!("the upstream at {upstream} could not be reached: {why}"),
            },
        }
    }
}

/// Opens a master key and calls the upstream's key-check path with it (owners only). The
/// secret goes only into the request's header; the answer's body is not shown, since an
/// upstream may echo credentials.
pub async fn test_master_key(
    state: &AppState,
    viewer: &Viewer,
    id: &str,
) -> Result<(db::master_keys::MasterKey, CheckOutcome), AppError> {
    let owner = viewer.owner()?;
    let id = master_key_id(id)?;
    let client = state.pool.get().await?;
    let not_found = || AppError::NotFound(format!("master key {id} not found"));
    let sealed = match db::master_keys::get_sealed(&client, id).await {
        Ok(sealed) if sealed.key.org_id == owner.org.id => sealed,
        Ok(_) | Err(db::Error::NotFound { .. }) => return Err(not_found()),
        Err(err) => return Err(err.into()),
    };
    drop(client);
    let key = sealed.key;
    let service: Service = key
        .service
        .parse()
        .map_err(|err: domain::services::UnknownService| AppError::Internal(err.to_string()))?;
    let adapter = match service {
        Service::OpenRouter => domain::services::openrouter::OpenRouter::default(),
    };
    let secret = state
        .keyring
        .open(owner.org.id, id, &sealed.sealed)
        .map_err(|err| AppError::Internal(format!("opening master key {id}: {err}")))?;
    let header = adapter.credential_header();
    let url = format!(
        "{}{}",
        state.config.upstream_base_url.trim_end_matches('/'),
        adapter.key_check_path()
    );
    let value = zeroize::Zeroizing::new(header.value_for(secret.expose_secret()));
    let result = state
        .http
        .get(&url)
        .header(header.name, value.as_str())
        .send()
        .await;
    let outcome = match result {
        Ok(response) if response.status().is_success() => CheckOutcome::Accepted,
        Ok(response) => CheckOutcome::Refused(response.status().as_u16()),
        Err(err) if err.is_timeout() => CheckOutcome::Unreachable("timed out"),
        Err(err) if err.is_connect() => CheckOutcome::Unreachable("connection failed"),
        Err(_) => CheckOutcome::Unreachable("request failed"),
    };
    Ok((key, outcome))
}

/// An invite, as typed.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct InviteInput {
    pub email: String,
    pub role: String,
    pub budget: String,
}

/// A created invite, its link (shown once), and what became of its email.
pub struct Invited {
    pub invite: db::invites::Invite,
    pub link: String,
    /// `None` without SMTP; otherwise whether the email went out, or why not.
    pub emailed: Option<Result<(), String>>,
}

/// Creates an invite (owners only), and emails its link when SMTP is configured. A failed
/// email leaves the invite valid: the owner can still copy the link.
pub async fn invite(
    state: &AppState,
    viewer: &Viewer,
    input: &InviteInput,
    now: OffsetDateTime,
) -> Result<Invited, Refused> {
    let owner = viewer.owner()?;
    let mut errors = FieldErrors::default();
    let email = match Email::parse(&input.email) {
        Ok(email) => Some(email),
        Err(err) => {
            errors.add("email", err.to_string());
            None
        }
    };
    let role = match input.role.trim() {
        "" => Role::User,
        text => match text.parse::<Role>() {
            Ok(role) => role,
            Err(err) => {
                errors.add("role", err.to_string());
                Role::User
            }
        },
    };
    let budget = parse_usd("budget", &input.budget, &mut errors);
    let (Some(email), true) = (email, errors.is_empty()) else {
        return Err(Refused::Fields(errors));
    };
    let token = domain::token::random_secret();
    let ttl = time::Duration::try_from(state.config.invite_ttl).unwrap_or(time::Duration::days(7));
    let new = db::invites::NewInvite {
        email,
        role,
        monthly_budget: budget,
        token_hash: domain::token::hash_token(&token),
        expires_at: now + ttl,
    };
    match db::invites::create(&state.pool, &owner.org, &new, viewer.actor(), now).await {
        Ok(invite) => {
            let link = format!("{}/invite/{token}", state.config.base());
            let emailed = match &state.mailer {
                Some(mailer) => {
                    let body = format!(
                        "{} invited you to {} on keycap, as {} with a monthly budget of {}.\n\n\
                         Accept the invite here (the link works once, until {}):\n\n{link}\n",
                        viewer.user.email,
                        invite.org.name,
                        invite.role,
                        invite.monthly_budget,
                        crate::views::when(invite.expires_at),
                    );
                    let subject = format!("You are invited to {} on keycap", invite.org.name);
                    Some(mailer.send(&invite.email, &subject, body).await)
                }
                None => None,
            };
            Ok(Invited {
                invite,
                link,
                emailed,
            })
        }
        Err(db::Error::Conflict(message)) => Err(Refused::field("email", message)),
        Err(err) => Err(err.into()),
    }
}

fn member_email(text: &str) -> Result<Email, AppError> {
    Email::parse(text).map_err(|err| AppError::BadRequest(err.to_string()))
}

/// Sets a member's monthly budget (owners only).
pub async fn set_budget(
    state: &AppState,
    viewer: &Viewer,
    email: &str,
    budget: &str,
) -> Result<db::members::Membership, Refused> {
    let owner = viewer.owner()?;
    let email = member_email(email)?;
    let mut errors = FieldErrors::default();
    let budget = parse_usd("budget", budget, &mut errors);
    if !errors.is_empty() {
        return Err(Refused::Fields(errors));
    }
    Ok(db::members::set_budget(
        &state.pool,
        &owner.org,
        &email,
        budget,
        viewer.actor(),
        state.clock.now(),
    )
    .await?)
}

/// Changes a member's role (owners only).
pub async fn set_role(
    state: &AppState,
    viewer: &Viewer,
    email: &str,
    role: &str,
) -> Result<db::members::Membership, Refused> {
    let owner = viewer.owner()?;
    let email = member_email(email)?;
    let role: Role = role
        .parse()
        .map_err(|err: domain::role::UnknownRole| Refused::field("role", err.to_string()))?;
    Ok(db::members::set_role(
        &state.pool,
        &owner.org,
        &email,
        role,
        viewer.actor(),
        state.clock.now(),
    )
    .await?)
}

/// Removes a member and revokes their keys (owners only). Returns how many keys were revoked.
pub async fn remove_member(
    state: &AppState,
    viewer: &Viewer,
    email: &str,
    now: OffsetDateTime,
) -> Result<usize, AppError> {
    let owner = viewer.owner()?;
    let email = member_email(email)?;
    Ok(db::members::remove(&state.pool, &owner.org, &email, viewer.actor(), now).await?)
}

/// Cancels a pending invite of the owner's org (owners only): its link stops working.
pub async fn cancel_invite(
    state: &AppState,
    viewer: &Viewer,
    invite_id: &str,
    now: OffsetDateTime,
) -> Result<db::invites::Invite, AppError> {
    let owner = viewer.owner()?;
    let id = Uuid::parse_str(invite_id)
        .map_err(|_| AppError::NotFound(format!("pending invite {invite_id:?} not found")))?;
    Ok(db::invites::cancel(&state.pool, &owner.org, id, viewer.actor(), now).await?)
}

/// Makes a single-use, expiring password-reset link for a member of the owner's org (owners
/// only; see [`db::password_resets`] for whom). Returns the stored link and its URL, shown once.
pub async fn issue_password_reset(
    state: &AppState,
    viewer: &Viewer,
    email: &str,
    now: OffsetDateTime,
) -> Result<(db::password_resets::Reset, String), AppError> {
    let owner = viewer.owner()?;
    let email = member_email(email)?;
    let token = domain::token::random_secret();
    let ttl = time::Duration::try_from(state.config.password_reset_ttl)
        .map_err(|err| AppError::Internal(err.to_string()))?;
    let reset = db::password_resets::issue(
        &state.pool,
        &owner.org,
        &email,
        &domain::token::hash_token(&token),
        now + ttl,
        viewer.actor(),
        now,
    )
    .await?;
    Ok((reset, format!("{}/reset/{token}", state.config.base())))
}

/// Ledger filters, as typed in the audit page's query string.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    pub member: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub before: Option<i64>,
}

impl AuditQuery {
    /// The db filter, or a message per bad field.
    pub fn filter(&self) -> Result<db::transactions::Filter, FieldErrors> {
        let mut errors = FieldErrors::default();
        let date = |field: &'static str, text: &str, errors: &mut FieldErrors| {
            if text.trim().is_empty() {
                return None;
            }
            match time::Date::parse(
                text.trim(),
                time::macros::format_description!("[year]-[month]-[day]"),
            ) {
                Ok(date) => Some(date.midnight().assume_utc()),
                Err(_) => {
                    errors.add(field, format!("{text:?} is not a date such as 2026-11-01"));
                    None
                }
            }
        };
        let from = date("from", &self.from, &mut errors);
        let to = date("to", &self.to, &mut errors).map(|at| at + time::Duration::days(1));
        let kind = match self.kind.trim() {
            "" => None,
            text => match domain::LedgerKind::parse(text) {
                Some(kind) => Some(kind),
                None => {
                    errors.add("kind", format!("{text:?} is not a kind of ledger entry"));
                    None
                }
            },
        };
        let member_email = match self.member.trim() {
            "" => None,
            text => match Email::parse(text) {
                Ok(email) => Some(email.to_string()),
                Err(err) => {
                    errors.add("member", err.to_string());
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(db::transactions::Filter {
            member_email,
            kind,
            from,
            to,
            before_seq: self.before,
            membership_id: None,
        })
    }
}

/// A member's month in their current org: budget, carved, refunded, and spend from the
/// rollups.
pub async fn month_of(
    client: &impl db::GenericClient,
    member: &db::accounts::OrgMembership,
    now: OffsetDateTime,
) -> Result<(domain::MonthlyBudget, Money), AppError> {
    let window = MonthWindow::containing(now);
    let id = member.membership_id;
    let months = db::members::months(client, member.org.id, window, Some(id)).await?;
    let own = months
        .into_iter()
        .next()
        .ok_or_else(|| AppError::NotFound("you are no longer a member of this org".into()))?;
    Ok((own.month, own.spent))
}

#[cfg(test)]
mod tests {
    use super::CheckOutcome;

    #[test]
    fn check_outcomes_round_trip_through_their_codes() {
        for outcome in [
            CheckOutcome::Accepted,
            CheckOutcome::Refused(401),
            CheckOutcome::Unreachable("timed out"),
            CheckOutcome::Unreachable("connection failed"),
            CheckOutcome::Unreachable("request failed"),
        ] {
            assert_eq!(CheckOutcome::from_code(&outcome.code()), Some(outcome));
        }
        for bad in [
            "",
            "refused-abc",
            "refused-999",
            "unreachable-<script>",
            "accepted",
        ] {
            assert_eq!(CheckOutcome::from_code(bad), None, "{bad}");
        }
    }
}
