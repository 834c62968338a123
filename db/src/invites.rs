//! Invites: single-use, expiring links by which an owner brings someone into an org with a role
//! and a monthly budget. Only the SHA-256 hash of an invite's token is stored.

use deadpool_postgres::GenericClient;
use domain::{Email, LedgerKind, Money, Role};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::accounts::{self, User};
use crate::orgs::Org;
use crate::transactions::{self, NewEntry};
use crate::{Actor, Error, Pool, members};

/// An invite as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    pub id: Uuid,
    pub org: Org,
    pub email: String,
    pub role: Role,
    pub monthly_budget: Money,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub accepted_at: Option<OffsetDateTime>,
    pub cancelled_at: Option<OffsetDateTime>,
}

/// An invite to create.
#[derive(Debug, Clone)]
pub struct NewInvite {
    pub email: Email,
    pub role: Role,
    pub monthly_budget: Money,
    pub token_hash: [u8; 32],
    pub expires_at: OffsetDateTime,
}

/// A `SELECT` of every invite column in the order [`from_row`] reads, followed by `$tail`.
macro_rules! select_invites {
    ($tail:literal) => {
        concat!(
            "SELECT i.id, o.id, o.name, i.email, i.role, i.monthly_budget_nanousd,
                    i.created_at, i.expires_at, i.accepted_at, i.cancelled_at
             FROM invites i JOIN orgs o ON o.id = i.org_id ",
            $tail
        )
    };
}

fn from_row(row: &tokio_postgres::Row) -> Invite {
    let role: String = row.get(4);
    Invite {
        id: row.get(0),
        org: Org {
            id: row.get(1),
            name: row.get(2),
        },
        email: row.get(3),
        role: role.parse().unwrap_or(Role::User),
        monthly_budget: Money::from_nanos(row.get(5)),
        created_at: row.get(6),
        expires_at: row.get(7),
        accepted_at: row.get(8),
        cancelled_at: row.get(9),
    }
}

/// Stores an invite and its ledger row. Refused when the address is already a member who can
/// sign in; a member added on the command line, who has no password yet, may be invited: the
/// link then lets them choose one, and their role and budget stay as they are.
pub async fn create(
    pool: &Pool,
    org: &Org,
    new: &NewInvite,
    actor: Actor,
    now: OffsetDateTime,
) -> Result<Invite, Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let member = tx
        .query_opt(
            "SELECT 1 FROM memberships m JOIN users u ON u.id = m.user_id
             WHERE m.org_id = $1 AND u.email = $2 AND m.removed_at IS NULL
               AND u.password_hash IS NOT NULL",
            &[&org.id, &new.email.as_str()],
        )
        .await?;
    if member.is_some() {
        return Err(Error::Conflict(format!(
            "{} is already a member of org {:?}",
            new.email, org.name
        )));
    }
    let id = Uuid::new_v4();
    let user_id = match actor {
        Actor::User(id) => Some(id),
        Actor::Cli | Actor::System => None,
    };
    // The inviter must still be an owner when the invite is made: their membership is read
    // under a share lock, so a demotion or removal (which locks it to update it, and then
    // cancels their pending invites) runs wholly before or after this invite.
    if let Some(inviter) = user_id {
        let owner = tx
            .query_opt(
                "SELECT 1 FROM memberships
                 WHERE org_id = $1 AND user_id = $2 AND removed_at IS NULL AND role = 'owner'
                 FOR SHARE",
                &[&org.id, &inviter],
            )
            .await?;
        if owner.is_none() {
            return Err(Error::Conflict(format!(
                "you are no longer an owner of org {:?}: only owners invite",
                org.name
            )));
        }
    }
    tx.execute(
        "INSERT INTO invites (id, org_id, email, role, monthly_budget_nanousd, token_hash, invited_by, expires_at,
                              created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &id,
            &org.id,
            &new.email.as_str(),
            &new.role.as_str(),
            &new.monthly_budget.nanos(),
            &new.token_hash.as_slice(),
            &user_id,
            &new.expires_at,
            &now,
        ],
    )
    .await?;
    let mut entry = NewEntry::new(org.id, LedgerKind::MemberInvited, actor, now);
    entry.amount = new.monthly_budget;
    entry.detail = json!({
        "email": new.email.as_str(),
        "role": new.role.as_str(),
        "expires_at": new.expires_at.unix_timestamp(),
    });
    transactions::append(&tx, &entry).await?;
    let row = tx
        .query_one(select_invites!("WHERE i.id = $1"), &[&id])
        .await?;
    tx.commit().await?;
    Ok(from_row(&row))
}

/// The invite whose token hashes to `token_hash`, if any (accepted and expired ones included,
/// so the page can say why a link no longer works).
pub async fn find(
    client: &impl GenericClient,
    token_hash: &[u8; 32],
) -> Result<Option<Invite>, Error> {
    let row = client
        .query_opt(
            select_invites!("WHERE i.token_hash = $1"),
            &[&token_hash.as_slice()],
        )
        .await?;
    Ok(row.map(|row| from_row(&row)))
}

/// The invites of an org neither accepted nor cancelled, newest first (expired ones included).
pub async fn pending(client: &impl GenericClient, org: &Org) -> Result<Vec<Invite>, Error> {
    let rows = client
        .query(
            select_invites!(
                "WHERE i.org_id = $1 AND i.accepted_at IS NULL AND i.cancelled_at IS NULL
                 ORDER BY i.created_at DESC"
            ),
            &[&org.id],
        )
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// Why an invite link cannot be used.
pub fn unusable(invite: &Invite, now: OffsetDateTime) -> Option<&'static str> {
    if invite.accepted_at.is_some() {
        Some("this invite was already used: sign in instead")
    } else if invite.cancelled_at.is_some() {
        Some("this invite was cancelled: ask an owner for a new one")
    } else if invite.expires_at <= now {
        Some("this invite has expired: ask an owner for a new one")
    } else {
        None
    }
}

/// Cancels a pending invite of `org` (not accepted, not cancelled; an expired one too), with
/// its `invite_cancelled` ledger row, in one transaction; its link stops working.
pub async fn cancel(
    pool: &Pool,
    org: &Org,
    invite_id: Uuid,
    actor: Actor,
    now: OffsetDateTime,
) -> Result<Invite, Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let cancelled =
        cancel_where(&tx, org, "i.id = $3", &invite_id, "cancelled", actor, now).await?;
    let invite = cancelled
        .into_iter()
        .next()
        .ok_or_else(|| Error::not_found(format!("pending invite {invite_id}")))?;
    tx.commit().await?;
    Ok(invite)
}

/// Cancels the pending invites `inviter` made in `org`, inside the caller's transaction (they
/// are no longer an owner); returns how many.
pub(crate) async fn cancel_made_by(
    tx: &impl GenericClient,
    org: &Org,
    inviter: Uuid,
    actor: Actor,
    now: OffsetDateTime,
) -> Result<usize, Error> {
    let cancelled = cancel_where(
        tx,
        org,
        "i.invited_by = $3",
        &inviter,
        "the inviter is no longer an owner",
        actor,
        now,
    )
    .await?;
    Ok(cancelled.len())
}

/// Marks the pending invites of `org` that `condition` (on `$3`, `id`) picks cancelled, and
/// appends a ledger row for each.
async fn cancel_where(
    tx: &impl GenericClient,
    org: &Org,
    condition: &'static str,
    id: &Uuid,
    reason: &str,
    actor: Actor,
    now: OffsetDateTime,
) -> Result<Vec<Invite>, Error> {
    let rows = tx
        .query(
            &format!(
                "UPDATE invites i SET cancelled_at = $2
                 FROM orgs o
                 WHERE o.id = i.org_id AND i.org_id = $1 AND {condition}
                   AND i.accepted_at IS NULL AND i.cancelled_at IS NULL
                 RETURNING i.id, o.id, o.name, i.email, i.role, i.monthly_budget_nanousd,
                           i.created_at, i.expires_at, i.accepted_at, i.cancelled_at"
            ),
            &[&org.id, &now, id],
        )
        .await?;
    let mut invites: Vec<Invite> = rows.iter().map(from_row).collect();
    invites.sort_by_key(|invite| invite.created_at);
    for invite in &invites {
        let mut entry = NewEntry::new(org.id, LedgerKind::InviteCancelled, actor, now);
        entry.detail = json!({
            "email": invite.email,
            "invite_id": invite.id.to_string(),
            "reason": reason,
        });
        transactions::append(tx, &entry).await?;
    }
    Ok(invites)
}

/// Accepts an invite: creates the user (with `new_password_hash`) if the address has no account
/// yet, adds the membership with its ledger row, and marks the invite used, in one transaction.
/// A user who already has a password keeps it; the caller must have checked it.
pub async fn accept(
    pool: &Pool,
    token_hash: &[u8; 32],
    new_password_hash: Option<&str>,
    now: OffsetDateTime,
) -> Result<(User, Invite), Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            select_invites!("WHERE i.token_hash = $1 FOR UPDATE OF i"),
            &[&token_hash.as_slice()],
        )
        .await?
        .ok_or_else(|| Error::not_found("invite"))?;
    let invite = from_row(&row);
    if let Some(reason) = unusable(&invite, now) {
        return Err(Error::Conflict(reason.into()));
    }
    let email = Email::parse(&invite.email).map_err(|err| Error::Invalid(err.to_string()))?;
    let user_id = members::upsert_user(&tx, &email).await?;
    // Lock the user row: a password set at the same time by another invite must not slip by.
    let existing: Option<String> = tx
        .query_one(
            "SELECT password_hash FROM users WHERE id = $1 FOR NO KEY UPDATE",
            &[&user_id],
        )
        .await?
        .get(0);
    let password_hash = match (existing, new_password_hash) {
        // The caller checked this password before calling.
        (Some(existing), None) => existing,
        (Some(_), Some(_)) => {
            return Err(Error::Conflict(
                "this account has a password now: open the invite again and enter it".into(),
            ));
        }
        (None, Some(new)) => {
            // A password-less user (made on the command line) may only be claimed through an
            // invite of the one org they already belong to, or of none: otherwise an owner of
            // one org could take over a member of another.
            let elsewhere = tx
                .query_opt(
                    "SELECT 1 FROM memberships
                     WHERE user_id = $1 AND org_id <> $2 AND removed_at IS NULL",
                    &[&user_id, &invite.org.id],
                )
                .await?;
            if elsewhere.is_some() {
                return Err(Error::Conflict(format!(
                    "{email} belongs to another org and has not chosen a password yet: \
                     they must first sign in through that org's invite"
                )));
            }
            accounts::set_password(&tx, user_id, new).await?;
            new.to_string()
        }
        (None, None) => {
            return Err(Error::Invalid(
                "choose a password for your new account".into(),
            ));
        }
    };
    let already_member = tx
        .query_opt(
            "SELECT 1 FROM memberships WHERE org_id = $1 AND user_id = $2 AND removed_at IS NULL",
            &[&invite.org.id, &user_id],
        )
        .await?
        .is_some();
    // A member added on the command line only chooses a password; anyone else joins.
    if !already_member {
        members::join_in(
            &tx,
            invite.org.id,
            user_id,
            &email,
            invite.role,
            invite.monthly_budget,
            Actor::User(user_id),
            now,
        )
        .await?;
    }
    tx.execute(
        "UPDATE invites SET accepted_at = $2 WHERE id = $1",
        &[&invite.id, &now],
    )
    .await?;
    tx.commit().await?;
    Ok((
        User {
            id: user_id,
            email: invite.email.clone(),
            password_hash: Some(password_hash),
        },
        invite,
    ))
}
