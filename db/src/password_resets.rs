//! Password-reset links: single-use, expiring links by which a member sets a new password, made
//! for them by an owner of their org (or on the command line). Only the SHA-256 hash of a
//! link's token is stored.
//!
//! Whoever makes a link could use it, so an owner may make one only for a member whose every
//! org they own: a reset never reaches into an org the owner does not own. Using a link ends
//! the user's sessions and admin tokens, as a password change does.

use deadpool_postgres::GenericClient;
use domain::{Email, LedgerKind};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::orgs::Org;
use crate::transactions::{self, NewEntry};
use crate::{Actor, Error, Pool, accounts};

/// A reset link as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    pub id: Uuid,
    pub org: Org,
    pub user_id: Uuid,
    pub email: String,
    pub expires_at: OffsetDateTime,
    pub used_at: Option<OffsetDateTime>,
    pub cancelled_at: Option<OffsetDateTime>,
}

fn from_row(row: &tokio_postgres::Row) -> Reset {
    Reset {
        id: row.get(0),
        org: Org {
            id: row.get(1),
            name: row.get(2),
        },
        user_id: row.get(3),
        email: row.get(4),
        expires_at: row.get(5),
        used_at: row.get(6),
        cancelled_at: row.get(7),
    }
}

const SELECT: &str =
    "SELECT r.id, o.id, o.name, u.id, u.email, r.expires_at, r.used_at, r.cancelled_at
     FROM password_resets r JOIN orgs o ON o.id = r.org_id JOIN users u ON u.id = r.user_id
     WHERE r.token_hash = $1";

/// Stores a reset link for `email`, a member of `org`, with its `password_reset_issued` ledger
/// row, cancelling the user's older unused links. An owner (`actor` a user) must own every org
/// the member belongs to.
pub async fn issue(
    pool: &Pool,
    org: &Org,
    email: &Email,
    token_hash: &[u8; 32],
    expires_at: OffsetDateTime,
    actor: Actor,
    now: OffsetDateTime,
) -> Result<Reset, Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // The member's row and the issuer's are read under a share lock: a removal or a role
    // change runs wholly before or after.
    let member = tx
        .query_opt(
            "SELECT m.id, m.user_id FROM memberships m JOIN users u ON u.id = m.user_id
             WHERE m.org_id = $1 AND u.email = $2 AND m.removed_at IS NULL FOR SHARE OF m",
            &[&org.id, &email.as_str()],
        )
        .await?
        .ok_or_else(|| Error::not_found(format!("member {email} of org {:?}", org.name)))?;
    let (membership_id, user_id): (Uuid, Uuid) = (member.get(0), member.get(1));
    if let Actor::User(owner) = actor
        && !owns_every_org_of(&tx, owner, user_id).await?
    {
        return Err(Error::Conflict(format!(
            "{email} also belongs to an org you do not own: only the command line \
             (`keycap member reset-link`) can make their reset link"
        )));
    }
    tx.execute(
        "UPDATE password_resets SET cancelled_at = $2
         WHERE user_id = $1 AND used_at IS NULL AND cancelled_at IS NULL",
        &[&user_id, &now],
    )
    .await?;
    let id = Uuid::new_v4();
    tx.execute(
        "INSERT INTO password_resets (id, org_id, user_id, token_hash, created_by, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &id,
            &org.id,
            &user_id,
            &token_hash.as_slice(),
            &actor.user_id(),
            &now,
            &expires_at,
        ],
    )
    .await?;
    let mut entry = NewEntry::new(org.id, LedgerKind::PasswordResetIssued, actor, now);
    entry.membership_id = Some(membership_id);
    entry.detail = json!({"email": email.as_str(), "expires_at": expires_at.unix_timestamp()});
    transactions::append(&tx, &entry).await?;
    let row = tx.query_one(SELECT, &[&token_hash.as_slice()]).await?;
    tx.commit().await?;
    Ok(from_row(&row))
}

/// True when `owner` owns every org `user` belongs to (read under a share lock of the user's
/// memberships, so a join or a demotion runs wholly before or after).
async fn owns_every_org_of(
    client: &impl GenericClient,
    owner: Uuid,
    user: Uuid,
) -> Result<bool, Error> {
    let not_owned: i64 = client
        .query_one(
            "SELECT count(*) FROM (
                 SELECT m.org_id FROM memberships m
                  WHERE m.user_id = $1 AND m.removed_at IS NULL FOR SHARE) m
              WHERE NOT EXISTS (SELECT 1 FROM memberships o
                                 WHERE o.org_id = m.org_id AND o.user_id = $2
                                   AND o.removed_at IS NULL AND o.role = 'owner')",
            &[&user, &owner],
        )
        .await?
        .get(0);
    Ok(not_owned == 0)
}

/// Cancels `user`'s unused reset links (after they changed their password themselves).
pub async fn cancel_for_user(
    client: &impl GenericClient,
    user: Uuid,
    now: OffsetDateTime,
) -> Result<(), Error> {
    client
        .execute(
            "UPDATE password_resets SET cancelled_at = $2
             WHERE user_id = $1 AND used_at IS NULL AND cancelled_at IS NULL",
            &[&user, &now],
        )
        .await?;
    Ok(())
}

/// The reset link whose token hashes to `token_hash`, if any (used and expired ones included, so
/// the page can say why a link no longer works).
pub async fn find(
    client: &impl GenericClient,
    token_hash: &[u8; 32],
) -> Result<Option<Reset>, Error> {
    let row = client.query_opt(SELECT, &[&token_hash.as_slice()]).await?;
    Ok(row.map(|row| from_row(&row)))
}

/// Why a reset link cannot be used.
pub fn unusable(reset: &Reset, now: OffsetDateTime) -> Option<&'static str> {
    if reset.used_at.is_some() {
        Some("this reset link was already used: sign in, or ask an owner for a new one")
    } else if reset.cancelled_at.is_some() {
        Some(
            "this reset link was cancelled (a newer one was made, or the password was changed): \
             use the newest link, or ask an owner for one",
        )
    } else if reset.expires_at <= now {
        Some("this reset link has expired: ask an owner for a new one")
    } else {
        None
    }
}

/// Sets the password of the link's user to `password_hash` and uses the link up, in one
/// transaction: ends the user's sessions, revokes their admin tokens, forgets their failed
/// sign-ins, and writes the `password_reset_used` ledger row. Refused when the link is not
/// usable or its user is no longer a member of the org it was made in.
pub async fn use_link(
    pool: &Pool,
    token_hash: &[u8; 32],
    password_hash: &str,
    now: OffsetDateTime,
) -> Result<Reset, Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT id, created_by FROM password_resets WHERE token_hash = $1 FOR UPDATE",
            &[&token_hash.as_slice()],
        )
        .await?
        .ok_or_else(|| Error::not_found("reset link"))?;
    let (id, created_by): (Uuid, Option<Uuid>) = (row.get(0), row.get(1));
    let reset = from_row(&tx.query_one(SELECT, &[&token_hash.as_slice()]).await?);
    if let Some(reason) = unusable(&reset, now) {
        return Err(Error::Conflict(reason.into()));
    }
    let membership = tx
        .query_opt(
            "SELECT id FROM memberships WHERE org_id = $1 AND user_id = $2 AND removed_at IS NULL",
            &[&reset.org.id, &reset.user_id],
        )
        .await?
        .ok_or_else(|| {
            Error::Conflict(format!(
                "{} is no longer a member of org {:?}: this link no longer works",
                reset.email, reset.org.name
            ))
        })?;
    // The owner who made the link must still own every org the user belongs to now: not
    // demoted or removed since, and the user not since joined an org they do not own.
    if let Some(owner) = created_by
        && !owns_every_org_of(&tx, owner, reset.user_id).await?
    {
        return Err(Error::Conflict(
            "the owner who made this link can no longer reset this account: ask an owner for a \
             new link"
                .into(),
        ));
    }
    tx.execute(
        "UPDATE password_resets SET used_at = $2 WHERE id = $1",
        &[&id, &now],
    )
    .await?;
    accounts::set_password(&tx, reset.user_id, password_hash).await?;
    tx.execute("DELETE FROM sessions WHERE user_id = $1", &[&reset.user_id])
        .await?;
    accounts::revoke_user_admin_tokens(&tx, reset.user_id, now).await?;
    tx.execute(
        "DELETE FROM login_failures WHERE email = $1",
        &[&reset.email],
    )
    .await?;
    let mut entry = NewEntry::new(
        reset.org.id,
        LedgerKind::PasswordResetUsed,
        Actor::User(reset.user_id),
        now,
    );
    entry.membership_id = Some(membership.get(0));
    entry.detail = json!({"email": reset.email});
    transactions::append(&tx, &entry).await?;
    tx.commit().await?;
    Ok(Reset {
        used_at: Some(now),
        ..reset
    })
}
