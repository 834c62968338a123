//! Master API keys as stored: sealed bytes from the vault, a name and the last four characters.

use deadpool_postgres::GenericClient;
use domain::services::Service;
use domain::{LedgerKind, Sealed};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::orgs::Org;
use crate::transactions::{self, NewEntry};
use crate::{Actor, Error, Pool};

/// A master key row, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterKey {
    pub id: Uuid,
    pub org_id: Uuid,
    pub service: String,
    pub name: String,
    pub last_four: String,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

/// A master key row with its sealed secret, for the gateway to open.
#[derive(Debug, Clone)]
pub struct SealedMasterKey {
    pub key: MasterKey,
    pub sealed: Sealed,
}

/// A master key to store. The caller picks `id` first, because the vault binds it into the seal.
#[derive(Debug, Clone)]
pub struct NewMasterKey {
    pub id: Uuid,
    pub service: Service,
    pub name: String,
    pub last_four: String,
    pub sealed: Sealed,
}

/// Stores a sealed master key and its ledger row.
pub async fn add(
    pool: &Pool,
    org: &Org,
    new: &NewMasterKey,
    actor: Actor,
    now: OffsetDateTime,
) -> Result<MasterKey, Error> {
    let name = new.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(Error::Invalid(
            "master key name must be 1 to 200 characters".into(),
        ));
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_one(
            "INSERT INTO master_keys (id, org_id, service, name, ciphertext, nonce, sealing_key_id, last_four, created_by,
                                      created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING created_at",
            &[
                &new.id,
                &org.id,
                &new.service.as_str(),
                &name,
                &new.sealed.ciphertext,
                &new.sealed.nonce,
                &new.sealed.sealing_key_id,
                &new.last_four,
                &actor.user_id(),
                &now,
            ],
        )
        .await?;
    let mut entry = NewEntry::new(org.id, LedgerKind::MasterKeyAdded, actor, now);
    entry.master_key_id = Some(new.id);
    entry.detail =
        json!({ "service": new.service.as_str(), "name": name, "last_four": new.last_four });
    transactions::append(&tx, &entry).await?;
    tx.commit().await?;
    Ok(MasterKey {
        id: new.id,
        org_id: org.id,
        service: new.service.as_str().to_string(),
        name: name.to_string(),
        last_four: new.last_four.clone(),
        created_at: row.get(0),
        revoked_at: None,
    })
}

/// A `SELECT` of every master-key column in the order [`from_row`] reads, followed by `$tail`.
macro_rules! select_master_keys {
    ($tail:literal) => {
        concat!(
            "SELECT id, org_id, service, name, last_four, created_at, revoked_at, sealing_key_id, nonce, ciphertext FROM master_keys ",
            $tail
        )
    };
}

fn from_row(row: &tokio_postgres::Row) -> SealedMasterKey {
    SealedMasterKey {
        key: MasterKey {
            id: row.get(0),
            org_id: row.get(1),
            service: row.get(2),
            name: row.get(3),
            last_four: row.get(4),
            created_at: row.get(5),
            revoked_at: row.get(6),
        },
        sealed: Sealed {
            sealing_key_id: row.get(7),
            nonce: row.get(8),
            ciphertext: row.get(9),
        },
    }
}

/// Every master key of an org, newest first.
pub async fn list(client: &impl GenericClient, org: &Org) -> Result<Vec<MasterKey>, Error> {
    let rows = client
        .query(
            select_master_keys!("WHERE org_id = $1 ORDER BY created_at DESC"),
            &[&org.id],
        )
        .await?;
    Ok(rows.iter().map(|row| from_row(row).key).collect())
}

/// The newest active master key of an org for a service.
pub async fn active_for(
    client: &impl GenericClient,
    org_id: Uuid,
    service: Service,
) -> Result<Option<MasterKey>, Error> {
    let row = client
        .query_opt(
            select_master_keys!(
                "WHERE org_id = $1 AND service = $2 AND revoked_at IS NULL
             ORDER BY created_at DESC LIMIT 1"
            ),
            &[&org_id, &service.as_str()],
        )
        .await?;
    Ok(row.map(|row| from_row(&row).key))
}

/// One master key with its sealed secret.
pub async fn get_sealed(client: &impl GenericClient, id: Uuid) -> Result<SealedMasterKey, Error> {
    let row = client
        .query_opt(select_master_keys!("WHERE id = $1"), &[&id])
        .await?;
    row.map(|row| from_row(&row))
        .ok_or_else(|| Error::not_found(format!("master key {id}")))
}

/// Locks the org's master key `id` for the rest of `tx`; a revoked one is a conflict, said
/// with `when_revoked` after its name.
async fn lock_active(
    tx: &deadpool_postgres::Transaction<'_>,
    org: &Org,
    id: Uuid,
    when_revoked: &str,
) -> Result<MasterKey, Error> {
    let row = tx
        .query_opt(
            select_master_keys!("WHERE id = $1 AND org_id = $2 FOR UPDATE"),
            &[&id, &org.id],
        )
        .await?
        .ok_or_else(|| Error::not_found(format!("master key {id}")))?;
    let key = from_row(&row).key;
    if key.revoked_at.is_some() {
        return Err(Error::Conflict(format!(
            "master key {:?} {when_revoked}",
            key.name
        )));
    }
    Ok(key)
}

/// Replaces the secret of an active master key in place (same id, so the sub-keys that use it
/// keep working with the new secret) and writes its ledger row.
pub async fn rotate(
    pool: &Pool,
    org: &Org,
    id: Uuid,
    last_four: &str,
    sealed: &Sealed,
    actor: Actor,
    now: OffsetDateTime,
) -> Result<MasterKey, Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let mut key = lock_active(&tx, org, id, "is revoked: add a new one instead").await?;
    tx.execute(
        "UPDATE master_keys SET ciphertext = $2, nonce = $3, sealing_key_id = $4, last_four = $5,
                rotated_at = $6
         WHERE id = $1",
        &[
            &id,
            &sealed.ciphertext,
            &sealed.nonce,
            &sealed.sealing_key_id,
            &last_four,
            &now,
        ],
    )
    .await?;
    let mut entry = NewEntry::new(org.id, LedgerKind::MasterKeyRotated, actor, now);
    entry.master_key_id = Some(id);
    entry.detail =
        json!({ "name": key.name, "previous_last_four": key.last_four, "last_four": last_four });
    transactions::append(&tx, &entry).await?;
    tx.commit().await?;
    key.last_four = last_four.to_string();
    Ok(key)
}

/// Revokes a master key. The sub-keys that use it are refused by the gateway from then on; they
/// stay open, so an owner can see them and their members can provision new ones.
pub async fn revoke(
    pool: &Pool,
    org: &Org,
    id: Uuid,
    actor: Actor,
    now: OffsetDateTime,
) -> Result<MasterKey, Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let mut key = lock_active(&tx, org, id, "is already revoked").await?;
    let revoked_at: OffsetDateTime = tx
        .query_one(
            "UPDATE master_keys SET revoked_at = $2 WHERE id = $1 RETURNING revoked_at",
            &[&id, &now],
        )
        .await?
        .get(0);
    let mut entry = NewEntry::new(org.id, LedgerKind::MasterKeyRevoked, actor, now);
    entry.master_key_id = Some(id);
    entry.detail = json!({ "name": key.name, "last_four": key.last_four });
    transactions::append(&tx, &entry).await?;
    tx.commit().await?;
    key.revoked_at = Some(revoked_at);
    Ok(key)
}

/// One master key of an org, without its secret.
pub async fn find(client: &impl GenericClient, org: &Org, id: Uuid) -> Result<MasterKey, Error> {
    let row = client
        .query_opt(
            select_master_keys!("WHERE id = $1 AND org_id = $2"),
            &[&id, &org.id],
        )
        .await?;
    row.map(|row| from_row(&row).key)
        .ok_or_else(|| Error::not_found(format!("master key {id}")))
}

/// How many master keys are sealed in the database, revoked ones included: a keyring that
/// cannot open them must not be replaced by a new one.
pub async fn count_sealed(client: &impl GenericClient) -> Result<i64, Error> {
    let row = client
        .query_one("SELECT count(*) FROM master_keys", &[])
        .await?;
    Ok(row.get(0))
}

/// A master key sealed with another encryption key than the newest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToReseal {
    pub id: Uuid,
    pub org_id: Uuid,
    pub sealing_key_id: String,
}

/// Every master key (revoked ones too) sealed with another encryption key than `current`, in a
/// stable order: what `keycap vault rekey` has left to do.
pub async fn sealed_with_older(
    client: &impl GenericClient,
    current: &str,
) -> Result<Vec<ToReseal>, Error> {
    let rows = client
        .query(
            "SELECT id, org_id, sealing_key_id FROM master_keys WHERE sealing_key_id <> $1
             ORDER BY created_at, id",
            &[&current],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| ToReseal {
            id: row.get(0),
            org_id: row.get(1),
            sealing_key_id: row.get(2),
        })
        .collect())
}

/// Seals master key `id` again, in one transaction with its `master_key_resealed` ledger row:
/// `seal_again` opens what is stored and seals it with the newest encryption key, `current`.
/// Returns the key's name, or `None` when it is already sealed with `current` (a run that
/// resumes, or one racing it). The secret itself is unchanged.
pub async fn reseal(
    pool: &Pool,
    id: Uuid,
    current: &str,
    seal_again: impl FnOnce(Uuid, &Sealed) -> Result<Sealed, String>,
    now: OffsetDateTime,
) -> Result<Option<String>, Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT org_id, name, ciphertext, nonce, sealing_key_id FROM master_keys
             WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
        .ok_or_else(|| Error::not_found(format!("master key {id}")))?;
    let (org_id, name): (Uuid, String) = (row.get(0), row.get(1));
    let stored = Sealed {
        ciphertext: row.get(2),
        nonce: row.get(3),
        sealing_key_id: row.get(4),
    };
    if stored.sealing_key_id == current {
        return Ok(None);
    }
    let sealed = seal_again(org_id, &stored)
        .map_err(|why| Error::Invalid(format!("master key {name:?} ({id}): {why}")))?;
    if sealed.sealing_key_id != current {
        return Err(Error::Invalid(format!(
            "master key {name:?} ({id}) was sealed with {}, not the newest key {current}",
            sealed.sealing_key_id
        )));
    }
    tx.execute(
        "UPDATE master_keys SET ciphertext = $2, nonce = $3, sealing_key_id = $4 WHERE id = $1",
        &[
            &id,
            &sealed.ciphertext,
            &sealed.nonce,
            &sealed.sealing_key_id,
        ],
    )
    .await?;
    let mut entry = NewEntry::new(org_id, LedgerKind::MasterKeyResealed, Actor::Cli, now);
    entry.master_key_id = Some(id);
    entry.detail = json!({
        "name": name,
        "from_sealing_key": stored.sealing_key_id,
        "to_sealing_key": sealed.sealing_key_id,
    });
    transactions::append(&tx, &entry).await?;
    tx.commit().await?;
    Ok(Some(name))
}
