//! One org's usage for its metrics (`GET /metrics` on the admin listener, docs/metrics.md):
//! each member's month (budget, given to keys, spent), spend by member and model, and each open
//! key's cap and spend, read by three queries in one transaction that a statement timeout
//! bounds.

use std::time::Duration;

use domain::{Money, MonthWindow, MonthlyBudget};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Error, Pool};

/// One member's month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberMonth {
    pub email: String,
    pub budget: MonthlyBudget,
    /// What their keys' requests cost this month (the rollups, as /dashboard shows it).
    pub spent: Money,
}

/// A member's spend on one model, over all time (a counter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpend {
    pub email: String,
    /// The model the requests named ('' for usage recorded before models were).
    pub model: String,
    pub spent: Money,
}

/// One open key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    pub email: String,
    pub name: String,
    pub service: String,
    pub cap: Money,
    pub spent: Money,
}

/// An org's usage at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgUsage {
    pub org_name: String,
    pub members: Vec<MemberMonth>,
    pub by_model: Vec<ModelSpend>,
    /// Empty when keys were not asked for.
    pub keys: Vec<KeyUsage>,
}

const BY_MODEL: &str = "SELECT u.email, b.model, sum(b.cost_nanousd)::bigint
    FROM usage_by_model b
    JOIN api_keys k ON k.id = b.api_key_id
    JOIN memberships m ON m.id = k.membership_id
    JOIN users u ON u.id = m.user_id
    WHERE k.org_id = $1
    GROUP BY 1, 2 ORDER BY 1, 2";

const KEYS: &str = "SELECT u.email, k.name, k.service, k.cap_nanousd, s.spent_nanousd
    FROM api_keys k
    JOIN key_spends s ON s.api_key_id = k.id
    JOIN memberships m ON m.id = k.membership_id
    JOIN users u ON u.id = m.user_id
    WHERE k.org_id = $1 AND k.closed_at IS NULL
    ORDER BY u.email, k.name, k.created_at, k.id";

/// Reads `org_id`'s usage at `now` (the month containing it); each statement is cut off after
/// `timeout`. With `with_keys`, the open keys too, folding the spend journal first so their
/// spend is exact.
pub async fn org_usage(
    pool: &Pool,
    org_id: Uuid,
    now: OffsetDateTime,
    with_keys: bool,
    timeout: Duration,
) -> Result<OrgUsage, Error> {
    let window = MonthWindow::containing(now);
    let mut client = pool.get().await?;
    let limit = format!(
        "SET LOCAL statement_timeout = {}",
        timeout.as_millis().max(1)
    );
    // The fold in a transaction of its own (see `usage::fold`), bounded like the reads.
    let tx = client.transaction().await?;
    tx.batch_execute(&limit).await?;
    crate::usage::fold(&tx).await?;
    tx.commit().await?;

    let tx = client.build_transaction().read_only(true).start().await?;
    tx.batch_execute(&limit).await?;
    let org_name: String = tx
        .query_opt("SELECT name FROM orgs WHERE id = $1", &[&org_id])
        .await?
        .ok_or_else(|| Error::not_found(format!("org {org_id}")))?
        .get(0);
    let members = crate::members::months(&tx, org_id, window, None)
        .await?
        .into_iter()
        .map(|m| MemberMonth {
            email: m.membership.email,
            budget: m.month,
            spent: m.spent,
        })
        .collect();
    let by_model = tx
        .query(BY_MODEL, &[&org_id])
        .await?
        .iter()
        .map(|row| ModelSpend {
            email: row.get(0),
            model: row.get(1),
            spent: Money::from_nanos(row.get(2)),
        })
        .collect();
    let keys = if with_keys {
        tx.query(KEYS, &[&org_id])
            .await?
            .iter()
            .map(|row| KeyUsage {
                email: row.get(0),
                name: row.get(1),
                service: row.get(2),
                cap: Money::from_nanos(row.get(3)),
                spent: Money::from_nanos(row.get(4)),
            })
            .collect()
    } else {
        Vec::new()
    };
    tx.commit().await?;
    Ok(OrgUsage {
        org_name,
        members,
        by_model,
        keys,
    })
}
