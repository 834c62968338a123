//! Orgs: creation with a first owner, and lookup by id or name.

use deadpool_postgres::GenericClient;
use domain::{LedgerKind, Money, Role};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::members::{self, Email};
use crate::transactions::{self, NewEntry};
use crate::{Actor, Error, Pool};

/// An org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    pub id: Uuid,
    pub name: String,
}

/// What creating an org made.
#[derive(Debug, Clone)]
pub struct CreatedOrg {
    pub org: Org,
    pub owner_user_id: Uuid,
    pub owner_membership_id: Uuid,
}

/// Creates an org and its first owner (with a zero budget) in one transaction, at `now`.
pub async fn create(
    pool: &Pool,
    name: &str,
    owner_email: &Email,
    actor: Actor,
    now: OffsetDateTime,
) -> Result<CreatedOrg, Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let created = create_in(&tx, name, owner_email, actor, now).await?;
    tx.commit().await?;
    Ok(created)
}

/// Creates an org and its first owner inside a caller's transaction.
pub(crate) async fn create_in(
    tx: &impl GenericClient,
    name: &str,
    owner_email: &Email,
    actor: Actor,
    now: OffsetDateTime,
) -> Result<CreatedOrg, Error> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(Error::Invalid(
            "org name must be 1 to 200 characters".into(),
        ));
    }
    if Uuid::parse_str(name).is_ok() {
        return Err(Error::Invalid("org name must not look like an id".into()));
    }
    let exists = tx
        .query_opt("SELECT 1 FROM orgs WHERE name = $1", &[&name])
        .await?;
    if exists.is_some() {
        return Err(Error::Conflict(format!("org {name:?} already exists")));
    }
    let org_id = Uuid::new_v4();
    tx.execute(
        "INSERT INTO orgs (id, name) VALUES ($1, $2)",
        &[&org_id, &name],
    )
    .await?;
    let user_id = members::upsert_user(tx, owner_email).await?;
    let membership_id =
        members::insert_membership(tx, org_id, user_id, Role::Owner, Money::ZERO).await?;
    let mut entry = NewEntry::new(org_id, LedgerKind::OrgCreated, actor, now);
    entry.membership_id = Some(membership_id);
    entry.detail = json!({ "name": name, "owner": owner_email.as_str() });
    transactions::append(tx, &entry).await?;
    Ok(CreatedOrg {
        org: Org {
            id: org_id,
            name: name.to_string(),
        },
        owner_user_id: user_id,
        owner_membership_id: membership_id,
    })
}

/// Finds an org by its id or its exact name.
pub async fn find(client: &impl GenericClient, id_or_name: &str) -> Result<Org, Error> {
    let row = match Uuid::parse_str(id_or_name.trim()) {
        Ok(id) => {
            client
                .query_opt("SELECT id, name FROM orgs WHERE id = $1", &[&id])
                .await?
        }
        Err(_) => {
            client
                .query_opt(
                    "SELECT id, name FROM orgs WHERE name = $1",
                    &[&id_or_name.trim()],
                )
                .await?
        }
    };
    let row = row.ok_or_else(|| Error::not_found(format!("org {id_or_name:?}")))?;
    Ok(Org {
        id: row.get(0),
        name: row.get(1),
    })
}
