//! The ledger: the append-only, hash-chained `transactions` table.
//!
//! Rows are only ever inserted, inside the same database transaction as the change they
//! record, dated by the `now` that change was given (the same instant its budget window was
//! taken from, so a carve and the month it is checked against never differ). A trigger
//! assigns each row its per-org sequence number and chains its hash over the previous row of
//! the org; another trigger refuses UPDATE, DELETE and TRUNCATE.

use deadpool_postgres::GenericClient;
use domain::{LedgerKind, Money};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Actor, Error};

/// A ledger row to append.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub org_id: Uuid,
    pub kind: LedgerKind,
    pub actor: Actor,
    pub membership_id: Option<Uuid>,
    pub api_key_id: Option<Uuid>,
    pub master_key_id: Option<Uuid>,
    pub amount: Money,
    pub detail: Value,
    /// When the change happened: the caller's `now`, never the database's clock.
    pub at: OffsetDateTime,
}

impl NewEntry {
    /// An entry at `at` with no subject, amount zero and an empty detail.
    pub fn new(org_id: Uuid, kind: LedgerKind, actor: Actor, at: OffsetDateTime) -> NewEntry {
        NewEntry {
            org_id,
            kind,
            actor,
            at,
            membership_id: None,
            api_key_id: None,
            master_key_id: None,
            amount: Money::ZERO,
            detail: Value::Object(Default::default()),
        }
    }
}

/// A ledger row as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    pub seq: i64,
    pub kind: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub actor_email: Option<String>,
    pub member_email: Option<String>,
    pub api_key_id: Option<Uuid>,
    pub master_key_id: Option<Uuid>,
    pub amount_nanousd: i64,
    pub detail: Value,
    pub hash: String,
}

const INSERT: &str = "INSERT INTO transactions
    (org_id, kind, actor_user_id, membership_id, api_key_id, master_key_id, amount_nanousd, detail,
     created_at, prev_hash, hash)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, '', '')";

/// Appends a ledger row. Call it inside the transaction that makes the change.
pub async fn append(client: &impl GenericClient, entry: &NewEntry) -> Result<(), Error> {
    let mut detail = entry.detail.clone();
    if let Value::Object(map) = &mut detail {
        map.entry("via")
            .or_insert_with(|| Value::from(entry.actor.via()));
    }
    client
        .execute(
            INSERT,
            &[
                &entry.org_id,
                &entry.kind.as_str(),
                &entry.actor.user_id(),
                &entry.membership_id,
                &entry.api_key_id,
                &entry.master_key_id,
                &entry.amount.nanos(),
                &detail,
                &entry.at,
            ],
        )
        .await?;
    Ok(())
}

/// Which ledger rows to list: all filters are optional and combine with AND.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub member_email: Option<String>,
    pub kind: Option<LedgerKind>,
    /// Rows created at or after this instant.
    pub from: Option<OffsetDateTime>,
    /// Rows created before this instant.
    pub to: Option<OffsetDateTime>,
    /// Rows with a sequence number below this one (the page after a page ending at it).
    pub before_seq: Option<i64>,
    /// Only rows about this membership, for a member's own activity.
    pub membership_id: Option<Uuid>,
}

const LIST_FILTERED: &str =
    "SELECT t.seq, t.kind, t.created_at, actor.email, member.email, t.api_key_id,
        t.master_key_id, t.amount_nanousd, t.detail, t.hash
    FROM transactions t
    LEFT JOIN users actor ON actor.id = t.actor_user_id
    LEFT JOIN memberships m ON m.id = t.membership_id
    LEFT JOIN users member ON member.id = m.user_id
    WHERE t.org_id = $1
      AND ($2::text IS NULL OR member.email = $2)
      AND ($3::text IS NULL OR t.kind = $3)
      AND ($4::timestamptz IS NULL OR t.created_at >= $4)
      AND ($5::timestamptz IS NULL OR t.created_at < $5)
      AND ($6::bigint IS NULL OR t.seq < $6)
      AND ($7::uuid IS NULL OR t.membership_id = $7)
    ORDER BY t.seq DESC
    LIMIT $8";

/// The newest `limit` ledger rows of an org that match `filter` (`Filter::default()` for
/// all), newest first.
pub async fn list_filtered(
    client: &impl GenericClient,
    org_id: Uuid,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<Entry>, Error> {
    let kind = filter.kind.map(LedgerKind::as_str);
    let rows = client
        .query(
            LIST_FILTERED,
            &[
                &org_id,
                &filter.member_email,
                &kind,
                &filter.from,
                &filter.to,
                &filter.before_seq,
                &filter.membership_id,
                &limit,
            ],
        )
        .await?;
    Ok(rows.iter().map(entry_from_row).collect())
}

fn entry_from_row(row: &tokio_postgres::Row) -> Entry {
    Entry {
        seq: row.get(0),
        kind: row.get(1),
        created_at: row.get(2),
        actor_email: row.get(3),
        member_email: row.get(4),
        api_key_id: row.get(5),
        master_key_id: row.get(6),
        amount_nanousd: row.get(7),
        detail: row.get(8),
        hash: hex::encode(row.get::<_, Vec<u8>>(9)),
    }
}

/// The result of checking an org's hash chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainStatus {
    /// Every row's hash matches its content and its predecessor.
    Intact { n_rows: i64 },
    /// The first row (by sequence) whose hash or link does not match.
    Broken { seq: i64 },
}

// The first row, from sequence number $2 on, whose hash does not match its content, or whose
// link to the row before does not match (the row at $2 is checked against nothing before it
// unless $2 is 1, whose link is the zero hash).
const VERIFY: &str = "SELECT seq FROM (
        SELECT seq, hash, prev_hash,
            lag(hash) OVER (ORDER BY seq) AS expected_prev,
            lag(seq) OVER (ORDER BY seq) AS prev_seq,
            transactions_digest(prev_hash, org_id, seq, kind, actor_user_id, membership_id,
                api_key_id, master_key_id, amount_nanousd, detail, created_at) AS recomputed
        FROM transactions WHERE org_id = $1 AND seq >= $2
    ) chain
    WHERE hash <> recomputed
       OR (expected_prev IS NULL
           AND (seq <> $2 OR ($2 = 1 AND prev_hash <> decode(repeat('00', 32), 'hex'))))
       OR (expected_prev IS NOT NULL AND (prev_hash <> expected_prev OR seq <> prev_seq + 1))
    ORDER BY seq LIMIT 1";

/// Recomputes every hash of an org's chain in the database.
pub async fn verify_chain(client: &impl GenericClient, org_id: Uuid) -> Result<ChainStatus, Error> {
    verify_from_seq(client, org_id, 1).await
}

/// Recomputes the hashes of an org's chain from row `from_seq` on.
async fn verify_from_seq(
    client: &impl GenericClient,
    org_id: Uuid,
    from_seq: i64,
) -> Result<ChainStatus, Error> {
    if let Some(row) = client.query_opt(VERIFY, &[&org_id, &from_seq]).await? {
        return Ok(ChainStatus::Broken { seq: row.get(0) });
    }
    let row = client
        .query_one(
            "SELECT count(*) FROM transactions WHERE org_id = $1",
            &[&org_id],
        )
        .await?;
    Ok(ChainStatus::Intact { n_rows: row.get(0) })
}

/// The newest row of an org's chain: its sequence number and hash (hex), to keep elsewhere;
/// `None` for an empty ledger.
pub async fn head(
    client: &impl GenericClient,
    org_id: Uuid,
) -> Result<Option<(i64, String)>, Error> {
    let row = client
        .query_opt(
            "SELECT seq, hash FROM transactions WHERE org_id = $1 ORDER BY seq DESC LIMIT 1",
            &[&org_id],
        )
        .await?;
    Ok(row.map(|row| (row.get(0), hex::encode(row.get::<_, Vec<u8>>(1)))))
}

/// What checking a chain from a kept hash found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromKept {
    /// The row with the kept hash is there (`seq`), and every row from it on is intact.
    Intact { seq: i64, n_rows: i64 },
    /// The row with the kept hash is there, but the chain breaks at `seq`.
    Broken { seq: i64 },
    /// No row has the kept hash: the rows up to it were rewritten or removed.
    NotFound,
}

/// Checks an org's chain from the row whose hash is `kept` (hex, as `head` printed it).
pub async fn verify_from_hash(
    client: &impl GenericClient,
    org_id: Uuid,
    kept: &[u8],
) -> Result<FromKept, Error> {
    let Some(row) = client
        .query_opt(
            "SELECT seq FROM transactions WHERE org_id = $1 AND hash = $2",
            &[&org_id, &kept],
        )
        .await?
    else {
        return Ok(FromKept::NotFound);
    };
    let seq: i64 = row.get(0);
    Ok(match verify_from_seq(client, org_id, seq).await? {
        ChainStatus::Intact { n_rows } => FromKept::Intact { seq, n_rows },
        ChainStatus::Broken { seq } => FromKept::Broken { seq },
    })
}

/// How often `/audit` checks the whole chain rather than the rows after its checkpoint.
const WHOLE_CHECK_EVERY: &str = "1 day";

/// What `/audit` shows: the chain checked from the org's checkpoint (the newest row found
/// intact before) on, or whole when there is none, when the checkpoint's row no longer has its
/// hash, or when the whole chain was last checked a day ago; the checkpoint then moves to the
/// newest row. Returns the status and the sequence number checking started from.
pub async fn verify_since_checkpoint(
    client: &impl GenericClient,
    org_id: Uuid,
) -> Result<(ChainStatus, i64), Error> {
    let checkpoint = client
        .query_opt(
            &format!(
                "SELECT c.seq FROM audit_checkpoints c
                   JOIN transactions t ON t.org_id = c.org_id AND t.seq = c.seq AND t.hash = c.hash
                  WHERE c.org_id = $1
                    AND c.whole_checked_at > now() - interval '{WHOLE_CHECK_EVERY}'"
            ),
            &[&org_id],
        )
        .await?;
    let from = checkpoint.map_or(1, |row| row.get::<_, i64>(0));
    // The newest row before the check: the check covers it, and rows added after it are
    // checked by the next view.
    let newest = head(client, org_id).await?;
    let status = verify_from_seq(client, org_id, from).await?;
    if let ChainStatus::Intact { .. } = status
        && let Some((seq, _)) = newest
    {
        client
            .execute(
                "INSERT INTO audit_checkpoints (org_id, seq, hash, whole_checked_at)
                 SELECT org_id, seq, hash, now() FROM transactions WHERE org_id = $1 AND seq = $2
                 ON CONFLICT (org_id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash,
                     whole_checked_at = CASE WHEN $3::bigint = 1 THEN now()
                                             ELSE audit_checkpoints.whole_checked_at END",
                &[&org_id, &seq, &from],
            )
            .await?;
    }
    Ok((status, from))
}
