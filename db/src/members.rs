//! Users and their memberships in orgs: roles and monthly budgets.

use deadpool_postgres::GenericClient;
use domain::{LedgerKind, Money, MonthWindow, MonthlyBudget, Role};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

pub use domain::Email;

use crate::orgs::Org;
use crate::transactions::{self, NewEntry};
use crate::{Actor, Error, Pool};

/// A member of an org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub id: Uuid,
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub email: String,
    pub role: Role,
    pub monthly_budget: Money,
}

pub(crate) async fn upsert_user(client: &impl GenericClient, email: &Email) -> Result<Uuid, Error> {
    let row = client
        .query_one(
            "INSERT INTO users (id, email) VALUES ($1, $2)
             ON CONFLICT (email) DO UPDATE SET email = EXCLUDED.email RETURNING id",
            &[&Uuid::new_v4(), &email.as_str()],
        )
        .await?;
    Ok(row.get(0))
}

pub(crate) async fn insert_membership(
    client: &impl GenericClient,
    org_id: Uuid,
    user_id: Uuid,
    role: Role,
    budget: Money,
) -> Result<Uuid, Error> {
    let id = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO memberships (id, org_id, user_id, role, monthly_budget_nanousd) VALUES ($1, $2, $3, $4, $5)",
            &[&id, &org_id, &user_id, &role.as_str(), &budget.nanos()],
        )
        .await?;
    Ok(id)
}

/// Adds a membership for a user inside a caller's transaction, reviving a removed one, with
/// its ledger row. Refused when the user is already an active member.
#[expect(
    clippy::too_many_arguments,
    reason = "the membership's five fields, then who makes the change and when, as every ledger writer"
)]
pub(crate) async fn join_in(
    client: &impl GenericClient,
    org_id: Uuid,
    user_id: Uuid,
    email: &Email,
    role: Role,
    budget: Money,
    actor: Actor,
    now: OffsetDateTime,
) -> Result<Uuid, Error> {
    let active = client
        .query_opt(
            "SELECT 1 FROM memberships WHERE org_id = $1 AND user_id = $2 AND removed_at IS NULL",
            &[&org_id, &user_id],
        )
        .await?;
    if active.is_some() {
        return Err(Error::Conflict(format!(
            "{email} is already a member of this org"
        )));
    }
    let revived = client
        .query_opt(
            "UPDATE memberships SET removed_at = NULL, role = $3, monthly_budget_nanousd = $4
             WHERE org_id = $1 AND user_id = $2 RETURNING id",
            &[&org_id, &user_id, &role.as_str(), &budget.nanos()],
        )
        .await?;
    let membership_id = match revived {
        Some(row) => row.get(0),
        None => insert_membership(client, org_id, user_id, role, budget).await?,
    };
    let mut entry = NewEntry::new(org_id, LedgerKind::MemberJoined, actor, now);
    entry.membership_id = Some(membership_id);
    entry.amount = budget;
    entry.detail = json!({ "email": email.as_str(), "role": role.as_str() });
    transactions::append(client, &entry).await?;
    Ok(membership_id)
}

const FIND: &str = "SELECT m.id, m.org_id, m.user_id, u.email, m.role, m.monthly_budget_nanousd
    FROM memberships m JOIN users u ON u.id = m.user_id
    WHERE m.org_id = $1 AND u.email = $2 AND m.removed_at IS NULL";

const FIND_FOR_UPDATE: &str =
    "SELECT m.id, m.org_id, m.user_id, u.email, m.role, m.monthly_budget_nanousd
    FROM memberships m JOIN users u ON u.id = m.user_id
    WHERE m.org_id = $1 AND u.email = $2 AND m.removed_at IS NULL
    FOR NO KEY UPDATE OF m";

fn membership_from_row(row: &tokio_postgres::Row) -> Membership {
    let role: String = row.get(4);
    Membership {
        id: row.get(0),
        org_id: row.get(1),
        user_id: row.get(2),
        email: row.get(3),
        role: role.parse().unwrap_or(Role::User),
        monthly_budget: Money::from_nanos(row.get(5)),
    }
}

/// Finds an active member of `org` by email.
pub async fn find(
    client: &impl GenericClient,
    org: &Org,
    email: &Email,
) -> Result<Membership, Error> {
    let row = client.query_opt(FIND, &[&org.id, &email.as_str()]).await?;
    row.map(|row| membership_from_row(&row))
        .ok_or_else(|| Error::not_found(format!("member {email} in org {:?}", org.name)))
}

/// Finds an active member and locks the membership row for the rest of the transaction, so
/// that concurrent carves from one budget happen one after another. `NO KEY UPDATE`, not
/// `UPDATE`: a ledger insert elsewhere (the late-spend trigger of migration 0006) holds the
/// org's ledger lock while its foreign key takes a key-share lock on this row, and a full
/// update lock here would deadlock with it.
pub(crate) async fn find_for_update(
    client: &impl GenericClient,
    org: &Org,
    email: &Email,
) -> Result<Membership, Error> {
    let row = client
        .query_opt(FIND_FOR_UPDATE, &[&org.id, &email.as_str()])
        .await?;
    row.map(|row| membership_from_row(&row))
        .ok_or_else(|| Error::not_found(format!("member {email} in org {:?}", org.name)))
}

/// Every active member of an org, by email.
pub async fn list(client: &impl GenericClient, org: &Org) -> Result<Vec<Membership>, Error> {
    let rows = client
        .query(
            "SELECT m.id, m.org_id, m.user_id, u.email, m.role, m.monthly_budget_nanousd
             FROM memberships m JOIN users u ON u.id = m.user_id
             WHERE m.org_id = $1 AND m.removed_at IS NULL ORDER BY u.email",
            &[&org.id],
        )
        .await?;
    Ok(rows.iter().map(membership_from_row).collect())
}

/// What a membership carved from its budget and got back as refunds in a month: two columns,
/// `carved` and `refunded`, summed over the ledger rows the query selects. The one derivation
/// of a month's carves (`months`, and `monthly_budget` for the write paths).
macro_rules! carved_and_refunded {
    () => {
        "coalesce(sum(amount_nanousd) FILTER (WHERE kind IN ('key_provisioned', 'key_renewed', 'key_cap_changed')), 0)::bigint AS carved,
         coalesce(sum(amount_nanousd) FILTER (WHERE kind = 'refund'), 0)::bigint AS refunded"
    };
}

const MONTH: &str = concat!(
    "SELECT ",
    carved_and_refunded!(),
    " FROM transactions
    WHERE membership_id = $1 AND created_at >= $2 AND created_at < $3"
);

/// What membership `$membership`'s keys spent from `$start` to `$end` (SQL expressions): the
/// gateway's rollups. The one derivation of a member's spend in a month (`months`, and the
/// budget alerts).
macro_rules! member_spend {
    ($membership:literal, $start:literal, $end:literal) => {
        concat!(
            "coalesce((SELECT sum(r.cost_nanousd) FROM usage_rollups r
                       JOIN api_keys k ON k.id = r.api_key_id
                       WHERE k.membership_id = ",
            $membership,
            " AND r.minute >= ",
            $start,
            " AND r.minute < ",
            $end,
            "), 0)::bigint"
        )
    };
}
pub(crate) use member_spend;

/// A member's month: their membership, what they carved and got back (the ledger), and what
/// their keys spent (the gateway's rollups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberMonth {
    pub membership: Membership,
    pub month: MonthlyBudget,
    pub spent: Money,
}

const MONTHS: &str = concat!(
    "SELECT m.id, m.org_id, m.user_id, u.email, m.role, m.monthly_budget_nanousd,
            month.carved, month.refunded, ",
    member_spend!("m.id", "$2", "$3"),
    "
     FROM memberships m JOIN users u ON u.id = m.user_id
     CROSS JOIN LATERAL (SELECT ",
    carved_and_refunded!(),
    " FROM transactions t
         WHERE t.membership_id = m.id AND t.created_at >= $2 AND t.created_at < $3) month
     WHERE m.org_id = $1 AND m.removed_at IS NULL AND ($4::uuid IS NULL OR m.id = $4)
     ORDER BY u.email"
);

/// The month `window` of each active member of org `org_id` (only membership `only`'s when
/// given), by email, in one query: the one derivation of a member's month that pages, the
/// command line and the usage metrics show.
pub async fn months(
    client: &impl GenericClient,
    org_id: Uuid,
    window: MonthWindow,
    only: Option<Uuid>,
) -> Result<Vec<MemberMonth>, Error> {
    let rows = client
        .query(MONTHS, &[&org_id, &window.start, &window.end, &only])
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let membership = membership_from_row(row);
            MemberMonth {
                month: MonthlyBudget {
                    budget: membership.monthly_budget,
                    carved: Money::from_nanos(row.get(6)),
                    refunded: Money::from_nanos(row.get(7)),
                },
                spent: Money::from_nanos(row.get(8)),
                membership,
            }
        })
        .collect())
}

/// A member's budget, carved and refunded amounts for the month `window`, from the ledger.
pub async fn monthly_budget(
    client: &impl GenericClient,
    membership: &Membership,
    window: MonthWindow,
) -> Result<MonthlyBudget, Error> {
    month_of(client, membership.id, membership.monthly_budget, window).await
}

/// The same for a membership known by id, with its monthly `budget`.
pub async fn month_of(
    client: &impl GenericClient,
    membership_id: Uuid,
    budget: Money,
    window: MonthWindow,
) -> Result<MonthlyBudget, Error> {
    let row = client
        .query_one(MONTH, &[&membership_id, &window.start, &window.end])
        .await?;
    Ok(MonthlyBudget {
        budget,
        carved: Money::from_nanos(row.get(0)),
        refunded: Money::from_nanos(row.get(1)),
    })
}

/// Adds `email` to `org` with a role and monthly budget, creating the user if needed.
pub async fn add(
    pool: &Pool,
    org: &Org,
    email: &Email,
    role: Role,
    budget: Money,
    actor: Actor,
    now: OffsetDateTime,
) -> Result<Membership, Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    if tx
        .query_opt(FIND, &[&org.id, &email.as_str()])
        .await?
        .is_some()
    {
        return Err(Error::Conflict(format!(
            "{email} is already a member of org {:?}",
            org.name
        )));
    }
    let user_id = upsert_user(&tx, email).await?;
    let membership_id = join_in(&tx, org.id, user_id, email, role, budget, actor, now).await?;
    tx.commit().await?;
    Ok(Membership {
        id: membership_id,
        org_id: org.id,
        user_id,
        email: email.to_string(),
        role,
        monthly_budget: budget,
    })
}

/// Sets a member's monthly budget. Lowering it below what is carved is allowed: no new keys
/// fit until it is positive again, and existing keys keep their caps.
pub async fn set_budget(
    pool: &Pool,
    org: &Org,
    email: &Email,
    budget: Money,
    actor: Actor,
    now: OffsetDateTime,
) -> Result<Membership, Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let mut membership = find_for_update(&tx, org, email).await?;
    tx.execute(
        "UPDATE memberships SET monthly_budget_nanousd = $2 WHERE id = $1",
        &[&membership.id, &budget.nanos()],
    )
    .await?;
    let mut entry = NewEntry::new(org.id, LedgerKind::BudgetSet, actor, now);
    entry.membership_id = Some(membership.id);
    entry.amount = budget;
    entry.detail =
        json!({ "email": email.as_str(), "previous_nanousd": membership.monthly_budget.nanos() });
    transactions::append(&tx, &entry).await?;
    tx.commit().await?;
    membership.monthly_budget = budget;
    Ok(membership)
}

/// Serialises role changes and removals within one org. Taken before any membership row is
/// locked, so that two owners demoting each other wait for one another instead of deadlocking.
async fn lock_roles(client: &impl GenericClient, org: &Org) -> Result<(), Error> {
    client
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('keycap.roles.' || $1::uuid::text, 0))",
            &[&org.id],
        )
        .await?;
    Ok(())
}

/// Revokes the admin tokens a user issued in an org, when they stop being its owner: a token
/// must not come back to life if they become an owner again.
async fn revoke_admin_tokens(
    client: &impl GenericClient,
    org: &Org,
    user_id: Uuid,
    now: OffsetDateTime,
) -> Result<(), Error> {
    client
        .execute(
            "UPDATE admin_tokens SET revoked_at = $3
             WHERE org_id = $1 AND user_id = $2 AND revoked_at IS NULL",
            &[&org.id, &user_id, &now],
        )
        .await?;
    Ok(())
}

/// Refuses a change that would leave an org without an active owner.
async fn check_not_last_owner(
    client: &impl GenericClient,
    org: &Org,
    membership: &Membership,
) -> Result<(), Error> {
    if membership.role != Role::Owner {
        return Ok(());
    }
    // Lock every owner row so two owners demoting each other at once cannot both succeed.
    let rows = client
        .query(
            "SELECT id FROM memberships WHERE org_id = $1 AND role = 'owner' AND removed_at IS NULL
             ORDER BY id FOR NO KEY UPDATE",
            &[&org.id],
        )
        .await?;
    if rows.len() <= 1 {
        return Err(Error::Conflict(format!(
            "{} is the last owner of org {:?}: make someone else an owner first",
            membership.email, org.name
        )));
    }
    Ok(())
}

/// Changes a member's role. The last owner of an org cannot be demoted.
pub async fn set_role(
    pool: &Pool,
    org: &Org,
    email: &Email,
    role: Role,
    actor: Actor,
    now: OffsetDateTime,
) -> Result<Membership, Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    lock_roles(&tx, org).await?;
    let mut membership = find_for_update(&tx, org, email).await?;
    if membership.role == role {
        return Err(Error::Invalid(format!("{email} is already {role}")));
    }
    check_not_last_owner(&tx, org, &membership).await?;
    if membership.role == Role::Owner {
        revoke_admin_tokens(&tx, org, membership.user_id, now).await?;
        crate::invites::cancel_made_by(&tx, org, membership.user_id, actor, now).await?;
    }
    tx.execute(
        "UPDATE memberships SET role = $2 WHERE id = $1",
        &[&membership.id, &role.as_str()],
    )
    .await?;
    let mut entry = NewEntry::new(org.id, LedgerKind::RoleChanged, actor, now);
    entry.membership_id = Some(membership.id);
    entry.detail =
        json!({ "email": email.as_str(), "from": membership.role.as_str(), "to": role.as_str() });
    transactions::append(&tx, &entry).await?;
    tx.commit().await?;
    membership.role = role;
    Ok(membership)
}

/// Removes a member from an org: their open keys are revoked (with refunds) in the same
/// transaction, so a removed member's keys stop working. The last owner cannot be removed.
pub async fn remove(
    pool: &Pool,
    org: &Org,
    email: &Email,
    actor: Actor,
    now: OffsetDateTime,
) -> Result<usize, Error> {
    let mut client = pool.get().await?;
    // The refunds depend on what was spent: fold first (before the transaction; see `usage::fold`).
    crate::usage::fold(&client).await?;
    let tx = client.transaction().await?;
    lock_roles(&tx, org).await?;
    let membership = find_for_update(&tx, org, email).await?;
    check_not_last_owner(&tx, org, &membership).await?;
    revoke_admin_tokens(&tx, org, membership.user_id, now).await?;
    // The keys' spend rows before any ledger row (the org's ledger lock): the lock order of
    // migration 0015, which lease grants, give-backs and reclaims follow.
    let rows = tx
        .query(
            crate::keys::select_keys!(
                "WHERE k.membership_id = $1 AND k.closed_at IS NULL ORDER BY k.id FOR NO KEY UPDATE OF k, s"
            ),
            &[&membership.id],
        )
        .await?;
    crate::invites::cancel_made_by(&tx, org, membership.user_id, actor, now).await?;
    // Reset links made in this org for them end with the membership (a re-added member gets
    // new ones).
    tx.execute(
        "UPDATE password_resets SET cancelled_at = $3
         WHERE org_id = $1 AND user_id = $2 AND used_at IS NULL AND cancelled_at IS NULL",
        &[&org.id, &membership.user_id, &now],
    )
    .await?;
    for row in &rows {
        let key = crate::keys::key_from_row(row);
        crate::keys::close(&tx, &key, "revoked", LedgerKind::KeyRevoked, actor, now).await?;
    }
    tx.execute(
        "UPDATE memberships SET removed_at = $2 WHERE id = $1",
        &[&membership.id, &now],
    )
    .await?;
    let mut entry = NewEntry::new(org.id, LedgerKind::MemberRemoved, actor, now);
    entry.membership_id = Some(membership.id);
    entry.detail = json!({ "email": email.as_str(), "keys_revoked": rows.len() });
    transactions::append(&tx, &entry).await?;
    tx.commit().await?;
    Ok(rows.len())
}
