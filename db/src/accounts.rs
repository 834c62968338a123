//! Accounts of the admin app: users with passwords, sessions, sign-in failures for throttling,
//! and owner-issued admin tokens. Passwords arrive already hashed (argon2id, by `admin`);
//! session and admin tokens arrive as SHA-256 hashes. Nothing here sees a secret.

use deadpool_postgres::GenericClient;
use domain::{Email, Money, Role};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::orgs::Org;
use crate::{Actor, Error, Pool};

/// A user who can sign in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub password_hash: Option<String>,
}

/// One org a user belongs to, with their role there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgMembership {
    pub org: Org,
    pub membership_id: Uuid,
    pub role: Role,
    pub monthly_budget: Money,
}

/// A live session.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    pub current_org_id: Option<Uuid>,
    pub csrf_token: String,
    pub expires_at: OffsetDateTime,
}

/// True when some user has a password, that is when the first owner has been set up.
pub async fn any_user_can_sign_in(client: &impl GenericClient) -> Result<bool, Error> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM users WHERE password_hash IS NOT NULL)",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Sets up the first account that can sign in, once: refused when any user can already sign
/// in. With an org name, creates that org with `email` as its owner. Without one, `email` must
/// already own an org (made on the command line, with no password yet), and gets this password.
/// Returns the user and the org they start in.
pub async fn set_up_first_owner(
    pool: &Pool,
    org_name: Option<&str>,
    email: &Email,
    password_hash: &str,
    now: OffsetDateTime,
) -> Result<(User, Org), Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Two setup forms submitted at once must not both succeed.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('keycap.setup'))",
        &[],
    )
    .await?;
    if any_user_can_sign_in(&tx).await? {
        return Err(Error::Conflict(
            "keycap is already set up: sign in instead".into(),
        ));
    }
    let (user_id, org) = match org_name {
        Some(name) => {
            let created = crate::orgs::create_in(&tx, name, email, Actor::System, now).await?;
            (created.owner_user_id, created.org)
        }
        None => {
            let row = tx
                .query_opt(
                    "SELECT u.id, o.id, o.name FROM users u
                     JOIN memberships m ON m.user_id = u.id AND m.removed_at IS NULL AND m.role = 'owner'
                     JOIN orgs o ON o.id = m.org_id
                     WHERE u.email = $1 ORDER BY o.name LIMIT 1",
                    &[&email.as_str()],
                )
                .await?
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "{email} owns no org yet: enter the name of the org to create"
                    ))
                })?;
            (
                row.get(0),
                Org {
                    id: row.get(1),
                    name: row.get(2),
                },
            )
        }
    };
    set_password(&tx, user_id, password_hash).await?;
    tx.commit().await?;
    Ok((
        User {
            id: user_id,
            email: email.to_string(),
            password_hash: Some(password_hash.to_string()),
        },
        org,
    ))
}

/// The user with this email, if any.
pub async fn find_user(client: &impl GenericClient, email: &Email) -> Result<Option<User>, Error> {
    let row = client
        .query_opt(
            "SELECT id, email, password_hash FROM users WHERE email = $1",
            &[&email.as_str()],
        )
        .await?;
    Ok(row.map(|row| User {
        id: row.get(0),
        email: row.get(1),
        password_hash: row.get(2),
    }))
}

/// Sets a user's password hash.
pub async fn set_password(
    client: &impl GenericClient,
    user_id: Uuid,
    password_hash: &str,
) -> Result<(), Error> {
    client
        .execute(
            "UPDATE users SET password_hash = $2 WHERE id = $1",
            &[&user_id, &password_hash],
        )
        .await?;
    Ok(())
}

/// The orgs a user belongs to (active memberships), by org name.
pub async fn memberships_of(
    client: &impl GenericClient,
    user_id: Uuid,
) -> Result<Vec<OrgMembership>, Error> {
    let rows = client
        .query(
            "SELECT o.id, o.name, m.id, m.role, m.monthly_budget_nanousd
             FROM memberships m JOIN orgs o ON o.id = m.org_id
             WHERE m.user_id = $1 AND m.removed_at IS NULL ORDER BY o.name",
            &[&user_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let role: String = row.get(3);
            OrgMembership {
                org: Org {
                    id: row.get(0),
                    name: row.get(1),
                },
                membership_id: row.get(2),
                role: role.parse().unwrap_or(Role::User),
                monthly_budget: Money::from_nanos(row.get(4)),
            }
        })
        .collect())
}

/// Starts a session for a user, stored under the hash of its cookie token.
pub async fn create_session(
    client: &impl GenericClient,
    token_hash: &[u8; 32],
    user_id: Uuid,
    current_org_id: Option<Uuid>,
    csrf_token: &str,
    expires_at: OffsetDateTime,
) -> Result<(), Error> {
    client
        .execute(
            "INSERT INTO sessions (token_hash, user_id, current_org_id, csrf_token, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &token_hash.as_slice(),
                &user_id,
                &current_org_id,
                &csrf_token,
                &expires_at,
            ],
        )
        .await?;
    Ok(())
}

/// The session stored under `token_hash`, if any, unless it has expired by `now`.
pub async fn find_session(
    client: &impl GenericClient,
    token_hash: &[u8; 32],
    now: OffsetDateTime,
) -> Result<Option<Session>, Error> {
    let row = client
        .query_opt(
            "SELECT u.id, u.email, u.password_hash, s.current_org_id, s.csrf_token, s.expires_at
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = $1 AND s.expires_at > $2",
            &[&token_hash.as_slice(), &now],
        )
        .await?;
    Ok(row.map(|row| Session {
        user: User {
            id: row.get(0),
            email: row.get(1),
            password_hash: row.get(2),
        },
        current_org_id: row.get(3),
        csrf_token: row.get(4),
        expires_at: row.get(5),
    }))
}

/// Points a session at another org.
pub async fn switch_org(
    client: &impl GenericClient,
    token_hash: &[u8; 32],
    org_id: Uuid,
) -> Result<(), Error> {
    client
        .execute(
            "UPDATE sessions SET current_org_id = $2 WHERE token_hash = $1",
            &[&token_hash.as_slice(), &org_id],
        )
        .await?;
    Ok(())
}

/// Ends one session.
pub async fn delete_session(
    client: &impl GenericClient,
    token_hash: &[u8; 32],
) -> Result<(), Error> {
    client
        .execute(
            "DELETE FROM sessions WHERE token_hash = $1",
            &[&token_hash.as_slice()],
        )
        .await?;
    Ok(())
}

/// Ends every session of a user except the one under `keep`, after a password change.
pub async fn delete_other_sessions(
    client: &impl GenericClient,
    user_id: Uuid,
    keep: &[u8; 32],
) -> Result<u64, Error> {
    Ok(client
        .execute(
            "DELETE FROM sessions WHERE user_id = $1 AND token_hash <> $2",
            &[&user_id, &keep.as_slice()],
        )
        .await?)
}

/// Records a failed sign-in at `now` and removes failures older than `keep_since`.
pub async fn record_login_failure(
    client: &impl GenericClient,
    email: &str,
    client_ip: &str,
    now: OffsetDateTime,
    keep_since: OffsetDateTime,
) -> Result<(), Error> {
    client
        .execute(
            "INSERT INTO login_failures (email, client_ip, failed_at) VALUES ($1, $2, $3)",
            &[&email, &client_ip, &now],
        )
        .await?;
    client
        .execute(
            "DELETE FROM login_failures WHERE failed_at < $1",
            &[&keep_since],
        )
        .await?;
    Ok(())
}

/// Failed sign-ins since `since`, and whether the email has signed in from the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFailures {
    /// For the email, from any address.
    pub by_email: i64,
    /// From the address, for any email.
    pub by_address: i64,
    /// For the email from the address.
    pub by_pair: i64,
    /// The email signed in from the address since `known_since`.
    pub known_address: bool,
}

/// Failed sign-ins since `since` for this email and from this client address, and whether the
/// email signed in from the address since `known_since`.
pub async fn recent_login_failures(
    client: &impl GenericClient,
    email: &str,
    client_ip: &str,
    since: OffsetDateTime,
    known_since: OffsetDateTime,
) -> Result<LoginFailures, Error> {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE email = $1), count(*) FILTER (WHERE client_ip = $2),
                    count(*) FILTER (WHERE email = $1 AND client_ip = $2),
                    EXISTS (SELECT 1 FROM login_addresses
                             WHERE email = $1 AND client_ip = $2 AND signed_in_at >= $4)
             FROM login_failures WHERE failed_at >= $3 AND (email = $1 OR client_ip = $2)",
            &[&email, &client_ip, &since, &known_since],
        )
        .await?;
    Ok(LoginFailures {
        by_email: row.get(0),
        by_address: row.get(1),
        by_pair: row.get(2),
        known_address: row.get(3),
    })
}

/// After a sign-in with the right password: forgets the email's failures from this address
/// (not those from elsewhere, which a stranger guessing from other addresses made) and
/// remembers the address (forgetting its addresses not used since `forget_before`).
pub async fn signed_in_from(
    client: &impl GenericClient,
    email: &str,
    client_ip: &str,
    now: OffsetDateTime,
    forget_before: OffsetDateTime,
) -> Result<(), Error> {
    client
        .execute(
            "DELETE FROM login_failures WHERE email = $1 AND client_ip = $2",
            &[&email, &client_ip],
        )
        .await?;
    client
        .execute(
            "INSERT INTO login_addresses (email, client_ip, signed_in_at) VALUES ($1, $2, $3)
             ON CONFLICT (email, client_ip) DO UPDATE SET signed_in_at = EXCLUDED.signed_in_at",
            &[&email, &client_ip, &now],
        )
        .await?;
    client
        .execute(
            "DELETE FROM login_addresses WHERE email = $1 AND signed_in_at < $2",
            &[&email, &forget_before],
        )
        .await?;
    Ok(())
}

/// What an admin token can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScope {
    /// Act as its owner on the JSON API (`/api/`).
    Admin,
    /// Read its org's usage metrics (`GET /metrics`) and nothing else.
    Metrics,
}

impl TokenScope {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Admin => "admin",
            TokenScope::Metrics => "metrics",
        }
    }

    /// What its tokens start with.
    pub fn token_prefix(self) -> &'static str {
        match self {
            TokenScope::Admin => domain::token::ADMIN_TOKEN_PREFIX,
            TokenScope::Metrics => domain::token::METRICS_TOKEN_PREFIX,
        }
    }
}

impl std::str::FromStr for TokenScope {
    type Err = Error;

    fn from_str(s: &str) -> Result<TokenScope, Error> {
        match s {
            "admin" => Ok(TokenScope::Admin),
            "metrics" => Ok(TokenScope::Metrics),
            other => Err(Error::Invalid(format!(
                "token scope {other:?} is not one of: admin (the JSON API, acting as you), metrics (GET /metrics only)"
            ))),
        }
    }
}

/// An admin token as listed (its secret is never stored).
#[derive(Debug, Clone)]
pub struct AdminToken {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub scope: TokenScope,
    /// Who made it; `None` for a metrics token made on the command line.
    pub owner_email: Option<String>,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    /// When it stops working; `None` for a metrics token made without an end.
    pub expires_at: Option<OffsetDateTime>,
}

/// Stores a new token of `scope` in `org`, made at `now` by `user_id` (an owner; `None` only
/// for a metrics token made on the command line), working until `expires_at` (required for
/// an admin token).
#[expect(
    clippy::too_many_arguments,
    reason = "the token's fields, then when it is made, as every writer"
)]
pub async fn create_admin_token(
    client: &impl GenericClient,
    org: &Org,
    user_id: Option<Uuid>,
    scope: TokenScope,
    name: &str,
    token_hash: &[u8; 32],
    prefix: &str,
    expires_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Result<Uuid, Error> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(Error::Invalid(
            "token name must be 1 to 200 characters".into(),
        ));
    }
    match expires_at {
        None if scope == TokenScope::Admin => {
            return Err(Error::Invalid(
                "an admin token needs an end: choose 30, 90 or 365 days".into(),
            ));
        }
        Some(at) if at <= now => {
            return Err(Error::Invalid("a token must end in the future".into()));
        }
        _ => {}
    }
    let id = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO admin_tokens (id, org_id, user_id, name, token_hash, prefix, created_at, scope, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &id,
                &org.id,
                &user_id,
                &name,
                &token_hash.as_slice(),
                &prefix,
                &now,
                &scope.as_str(),
                &expires_at,
            ],
        )
        .await?;
    Ok(id)
}

/// The user and org an unrevoked, unexpired admin token (scope `admin`) acts for at `now`, when
/// that user is still an owner there.
pub async fn find_admin_token(
    client: &impl GenericClient,
    token_hash: &[u8; 32],
    now: OffsetDateTime,
) -> Result<Option<(User, Uuid)>, Error> {
    let row = client
        .query_opt(
            "SELECT u.id, u.email, u.password_hash, t.org_id
             FROM admin_tokens t
             JOIN users u ON u.id = t.user_id
             JOIN memberships m ON m.user_id = t.user_id AND m.org_id = t.org_id
             WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND t.scope = 'admin'
               AND t.expires_at > $2
               AND m.removed_at IS NULL AND m.role = 'owner'",
            &[&token_hash.as_slice(), &now],
        )
        .await?;
    Ok(row.map(|row| {
        (
            User {
                id: row.get(0),
                email: row.get(1),
                password_hash: row.get(2),
            },
            row.get(3),
        )
    }))
}

/// The org whose usage an unrevoked, unexpired metrics token reads at `now`.
pub async fn find_metrics_token(
    client: &impl GenericClient,
    token_hash: &[u8; 32],
    now: OffsetDateTime,
) -> Result<Option<Uuid>, Error> {
    let row = client
        .query_opt(
            "SELECT org_id FROM admin_tokens
             WHERE token_hash = $1 AND revoked_at IS NULL AND scope = 'metrics'
               AND (expires_at IS NULL OR expires_at > $2)",
            &[&token_hash.as_slice(), &now],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// The admin tokens of an org, newest first.
pub async fn list_admin_tokens(
    client: &impl GenericClient,
    org_id: Uuid,
) -> Result<Vec<AdminToken>, Error> {
    let rows = client
        .query(
            "SELECT t.id, t.name, t.prefix, u.email, t.created_at, t.revoked_at, t.scope, t.expires_at
             FROM admin_tokens t LEFT JOIN users u ON u.id = t.user_id
             WHERE t.org_id = $1 ORDER BY t.created_at DESC",
            &[&org_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| AdminToken {
            id: row.get(0),
            name: row.get(1),
            prefix: row.get(2),
            scope: row.get::<_, &str>(6).parse().unwrap_or(TokenScope::Metrics),
            owner_email: row.get(3),
            created_at: row.get(4),
            revoked_at: row.get(5),
            expires_at: row.get(7),
        })
        .collect())
}

/// Revokes an admin token of an org, at `now`.
pub async fn revoke_admin_token(
    client: &impl GenericClient,
    org_id: Uuid,
    id: Uuid,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let n = client
        .execute(
            "UPDATE admin_tokens SET revoked_at = $3 WHERE id = $1 AND org_id = $2 AND revoked_at IS NULL",
            &[&id, &org_id, &now],
        )
        .await?;
    if n == 0 {
        return Err(Error::not_found(format!("active admin token {id}")));
    }
    Ok(())
}

/// Revokes every admin token (scope `admin`) `user_id` made, in every org, at `now`: when the
/// user's password changes. Returns how many.
pub async fn revoke_user_admin_tokens(
    client: &impl GenericClient,
    user_id: Uuid,
    now: OffsetDateTime,
) -> Result<u64, Error> {
    Ok(client
        .execute(
            "UPDATE admin_tokens SET revoked_at = $2
             WHERE user_id = $1 AND scope = 'admin' AND revoked_at IS NULL",
            &[&user_id, &now],
        )
        .await?)
}
