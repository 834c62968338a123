//! The page templates (askama, in `src/templates/`) and the plain structs they render. Values
//! are formatted here, so templates only place text.

use askama::Template;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use domain::Money;
use time::OffsetDateTime;

use crate::session::Viewer;

/// Renders a template with a status, or a plain 500 when rendering itself fails.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (
            status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                // Pages show personal data and, once, new tokens: keep them out of caches.
                (header::CACHE_CONTROL, "no-store"),
            ],
            html,
        )
            .into_response(),
        Err(err) => {
            tracing::error!(error = %err, "rendering a page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

/// Renders a page with 200.
pub fn page(page: &impl Template) -> Response {
    render(StatusCode::OK, page)
}

/// A date and time as shown on pages: `2026-11-27 16:05 UTC`.
pub fn when(at: OffsetDateTime) -> String {
    at.format(time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute] UTC"
    ))
    .unwrap_or_default()
}

/// An optional instant, or a dash.
pub fn when_or(at: Option<OffsetDateTime>, none: &str) -> String {
    at.map(when).unwrap_or_else(|| none.to_string())
}

/// Money as typed into a form: `20.00` rather than `$20.00`.
pub fn usd_input(money: Money) -> String {
    money.decimal_usd()
}

/// What the navigation needs: who is signed in, where, and whether they own the org.
pub struct Layout {
    pub page: &'static str,
    pub email: String,
    pub csrf: String,
    pub is_owner: bool,
    /// The current org's id, sent back by every form (see `csrf::FormOrg`).
    pub org_id: String,
    pub org_name: String,
    /// `(org id, org name, is current)` for the org switcher.
    pub orgs: Vec<(String, String, bool)>,
    pub notice: Option<String>,
}

impl Layout {
    pub fn new(viewer: &Viewer, page: &'static str, notice: Option<String>) -> Layout {
        let current = viewer.current.as_ref().map(|m| m.org.id);
        Layout {
            page,
            email: viewer.user.email.clone(),
            csrf: viewer.csrf_token.clone(),
            is_owner: viewer.is_owner(),
            org_id: current.map(|id| id.to_string()).unwrap_or_default(),
            org_name: viewer
                .current
                .as_ref()
                .map(|m| m.org.name.clone())
                .unwrap_or_default(),
            orgs: viewer
                .orgs
                .iter()
                .map(|m| {
                    (
                        m.org.id.to_string(),
                        m.org.name.clone(),
                        Some(m.org.id) == current,
                    )
                })
                .collect(),
            notice,
        }
    }
}

/// Messages for the fields of a form that was refused, and one for the form as a whole.
#[derive(Debug, Default, Clone)]
pub struct FieldErrors(pub Vec<(&'static str, String)>);

impl FieldErrors {
    pub fn add(&mut self, field: &'static str, message: impl Into<String>) {
        self.0.push((field, message.into()));
    }

    pub fn get(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, m)| m.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every message, joined with "; ", for a page that shows them in one line.
    pub fn joined(&self) -> String {
        let messages: Vec<&str> = self.0.iter().map(|(_, m)| m.as_str()).collect();
        messages.join("; ")
    }
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub status: u16,
    pub title: String,
    pub message: String,
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub email: String,
    pub next: String,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "setup.html")]
pub struct SetupPage {
    pub token: String,
    pub org_name: String,
    pub email: String,
    pub errors: FieldErrors,
}

#[derive(Template)]
#[template(path = "invite.html")]
pub struct InvitePage {
    pub token: String,
    pub org_name: String,
    pub email: String,
    pub role: String,
    pub budget: String,
    /// The address already has an account: ask for its password instead of a new one.
    pub has_account: bool,
    pub errors: FieldErrors,
}

#[derive(Template)]
#[template(path = "reset.html")]
pub struct ResetPage {
    pub token: String,
    pub org_name: String,
    pub email: String,
    pub errors: FieldErrors,
}

#[derive(Template)]
#[template(path = "account.html")]
pub struct AccountPage {
    pub layout: Layout,
    pub errors: FieldErrors,
    pub tokens: Vec<AdminTokenRow>,
    /// A just-created admin token, shown once.
    pub new_token: Option<String>,
    pub token_name: String,
}

pub struct AdminTokenRow {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub owner: String,
    /// `admin` or `metrics`.
    pub scope: &'static str,
    pub created: String,
    /// When it stops working, or `never`.
    pub expires: String,
    pub status: &'static str,
}

pub struct KeyRow {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub member: String,
    pub cap: String,
    /// The cap as the cap form's input shows it (`20.00`).
    pub cap_input: String,
    pub spent: String,
    pub remaining: String,
    /// How far spend passed the cap (`$0.12`), when it did.
    pub over_cap: Option<String>,
    pub expires: String,
    pub status: &'static str,
    pub models: String,
    pub renew: bool,
    /// `60/min`, or `none`.
    pub rate: String,
}

impl KeyRow {
    pub fn new(key: &db::keys::ApiKey, now: OffsetDateTime) -> KeyRow {
        KeyRow {
            id: key.id.to_string(),
            name: key.name.clone(),
            prefix: key.prefix.clone(),
            member: key.member_email.clone(),
            cap: key.cap.to_string(),
            cap_input: usd_input(key.cap),
            spent: key.spent.to_string(),
            remaining: key.remaining().to_string(),
            over_cap: key.over_cap().map(|over| over.to_string()),
            expires: when_or(key.expires_at, "never"),
            status: key.status(now),
            models: if key.model_scope.is_empty() {
                "any".into()
            } else {
                key.model_scope.join(", ")
            },
            renew: key.renew_monthly,
            rate: key
                .rate_limit_rpm
                .map_or_else(|| "none".to_string(), |rpm| format!("{rpm}/min")),
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.status, "active" | "paused")
    }
}

pub struct MasterKeyRow {
    pub id: String,
    pub service: String,
    pub name: String,
    pub last_four: String,
    pub created: String,
    pub status: &'static str,
}

impl MasterKeyRow {
    pub fn new(key: &db::master_keys::MasterKey) -> MasterKeyRow {
        MasterKeyRow {
            id: key.id.to_string(),
            service: key.service.clone(),
            name: key.name.clone(),
            last_four: key.last_four.clone(),
            created: when(key.created_at),
            status: if key.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            },
        }
    }
}

pub struct EntryRow {
    pub seq: i64,
    pub time: String,
    pub kind: String,
    pub actor: String,
    pub member: String,
    pub amount: String,
    pub detail: String,
}

impl EntryRow {
    pub fn new(entry: &db::transactions::Entry) -> EntryRow {
        let mut detail = entry.detail.clone();
        if let Some(map) = detail.as_object_mut() {
            map.remove("via");
        }
        EntryRow {
            seq: entry.seq,
            time: when(entry.created_at),
            kind: entry.kind.replace('_', " "),
            actor: entry.actor_email.clone().unwrap_or_else(|| {
                entry
                    .detail
                    .get("via")
                    .and_then(|v| v.as_str())
                    .unwrap_or("-")
                    .to_string()
            }),
            member: entry.member_email.clone().unwrap_or_else(|| "-".into()),
            amount: Money::from_nanos(entry.amount_nanousd).to_string(),
            detail: if detail.as_object().is_some_and(|m| m.is_empty()) {
                String::new()
            } else {
                detail.to_string()
            },
        }
    }
}

#[derive(Template)]
#[template(path = "dashboard.html")]
pub struct DashboardPage {
    pub layout: Layout,
    pub month: String,
    pub budget: String,
    pub carved: String,
    pub available: String,
    pub spent: String,
    /// Org-wide figures for owners: `(label, value)`.
    pub org_figures: Vec<(&'static str, String)>,
    pub keys: Vec<KeyRow>,
    pub entries: Vec<EntryRow>,
    pub chart_svg: String,
    /// Budget alerts: the member's own, or the whole org's for an owner; newest first.
    pub alerts: Vec<AlertRow>,
}

/// One budget alert on /dashboard.
pub struct AlertRow {
    pub when: String,
    pub member: String,
    /// What passed which threshold, in words.
    pub what: String,
}

impl AlertRow {
    pub fn new(alert: &db::alerts::Alert) -> AlertRow {
        let what = match &alert.key {
            Some((name, _)) => format!(
                "key \"{name}\" passed {}% of its cap: {} of {}",
                alert.threshold_percent, alert.spent, alert.limit
            ),
            None => format!(
                "passed {}% of the monthly budget: {} of {}",
                alert.threshold_percent, alert.spent, alert.limit
            ),
        };
        AlertRow {
            when: when(alert.created_at),
            member: alert.member_email.clone(),
            what,
        }
    }
}

#[derive(Template)]
#[template(path = "my_keys.html")]
pub struct MyKeysPage {
    pub layout: Layout,
    pub keys: Vec<KeyRow>,
    pub master_keys: Vec<MasterKeyRow>,
    /// A refused cap change, under `form`.
    pub errors: FieldErrors,
}

/// What was typed into the store's form.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct StoreForm {
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub cap: String,
    #[serde(default)]
    pub expires: String,
    #[serde(default)]
    pub models: String,
    #[serde(default)]
    pub renew_monthly: Option<String>,
    #[serde(default)]
    pub rpm: String,
}

#[derive(Template)]
#[template(path = "store.html")]
pub struct StorePage {
    pub layout: Layout,
    pub services: Vec<&'static str>,
    pub available: String,
    pub available_nanos: i64,
    pub form: StoreForm,
    pub errors: FieldErrors,
    pub created: Option<CreatedKey>,
}

/// A key just provisioned: its token, shown this once, and snippets that use it.
pub struct CreatedKey {
    pub name: String,
    pub prefix: String,
    pub cap: String,
    pub token: String,
    pub base_url: String,
}

#[derive(Template)]
#[template(path = "vault.html")]
pub struct VaultPage {
    pub layout: Layout,
    pub services: Vec<&'static str>,
    pub keys: Vec<MasterKeyRow>,
    pub service: String,
    pub name: String,
    pub errors: FieldErrors,
}

#[derive(Template)]
#[template(path = "vault_revoke.html")]
pub struct VaultRevokePage {
    pub layout: Layout,
    pub key: MasterKeyRow,
    /// The open sub-keys that use it.
    pub keys: Vec<KeyRow>,
}

pub struct MemberRow {
    pub email: String,
    pub role: &'static str,
    pub budget: String,
    pub budget_input: String,
    pub carved: String,
    pub spent: String,
    pub is_self: bool,
}

pub struct InviteRow {
    pub id: String,
    pub email: String,
    pub role: String,
    pub budget: String,
    pub expires: String,
    pub status: &'static str,
}

/// What was typed into the invite form.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct InviteForm {
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub budget: String,
}

#[derive(Template)]
#[template(path = "members.html")]
pub struct MembersPage {
    pub layout: Layout,
    pub members: Vec<MemberRow>,
    pub invites: Vec<InviteRow>,
    pub form: InviteForm,
    pub errors: FieldErrors,
    /// A just-made invite or password-reset link, shown once to copy.
    pub link: Option<ShownLink>,
}

/// A single-use link shown once on `/members`.
pub struct ShownLink {
    /// "Invite link" or "Password reset link".
    pub what: &'static str,
    /// The element id of the link, for copying (`invite-link`, `reset-link`).
    pub element_id: &'static str,
    pub email: String,
    pub link: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
pub struct AuditPage {
    pub layout: Layout,
    pub entries: Vec<EntryRow>,
    pub chain_ok: bool,
    pub chain_text: String,
    pub members: Vec<String>,
    pub kinds: Vec<&'static str>,
    pub member: String,
    pub kind: String,
    pub from: String,
    pub to: String,
    /// The query string of the current filters, for the CSV link and the next page.
    pub filter_query: String,
    pub next_before: Option<i64>,
    pub errors: FieldErrors,
}
