//! Budget alerts (migration 0013): a member whose spend this month passes a share of their
//! monthly budget, or a key whose spend passes a share of its cap, gets one alert per threshold
//! per period (the month; the key's period), and each alert its deliveries (an email per
//! recipient, the webhook), which a sender claims, sends, and marks sent or retries later.

use domain::{Money, MonthWindow};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::members::member_spend;
use crate::{Error, Pool};

/// The percentages that alert: of a member's monthly budget, and of a key's cap.
#[derive(Debug, Clone, Default)]
pub struct Thresholds {
    pub member_percents: Vec<i32>,
    pub key_percents: Vec<i32>,
}

/// Where new alerts are delivered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Channels {
    /// An email to the member and to each owner of the org.
    pub email: bool,
    pub webhook: bool,
}

// A member's spend this month is what their keys' requests cost this month (the gateway's
// rollups, `member_spend!`, as every page reads it), against the budget they have now.
const MEMBER_ALERTS: &str = concat!(
    "WITH spent AS (
        SELECT m.id AS membership_id, m.org_id, m.monthly_budget_nanousd AS lim, ",
    member_spend!("m.id", "$1", "$2"),
    " AS spent
        FROM memberships m
        WHERE m.removed_at IS NULL AND m.monthly_budget_nanousd > 0
    )
    INSERT INTO budget_alerts (id, org_id, membership_id, api_key_id, threshold_percent,
                               period_start, spent_nanousd, limit_nanousd, created_at)
    SELECT gen_random_uuid(), org_id, membership_id, NULL, pct, $1, spent, lim, $3
    FROM spent, unnest($4::int[]) AS pct
    WHERE spent::numeric * 100 >= lim::numeric * pct
    ON CONFLICT DO NOTHING
    RETURNING id"
);

// A key's spend is its folded spend in its period (fold first).
const KEY_ALERTS: &str = "INSERT INTO budget_alerts (id, org_id, membership_id, api_key_id,
        threshold_percent, period_start, spent_nanousd, limit_nanousd, created_at)
    SELECT gen_random_uuid(), k.org_id, k.membership_id, k.id, pct,
           k.period_start::timestamp AT TIME ZONE 'UTC', s.spent_nanousd, k.cap_nanousd, $1
    FROM api_keys k
    JOIN key_spends s ON s.api_key_id = k.id
    JOIN memberships m ON m.id = k.membership_id,
    unnest($2::int[]) AS pct
    WHERE k.closed_at IS NULL AND m.removed_at IS NULL AND k.cap_nanousd > 0
      AND s.spent_nanousd::numeric * 100 >= k.cap_nanousd::numeric * pct
    ON CONFLICT DO NOTHING
    RETURNING id";

// An email to the member and to every owner of the org (one each, the member being an owner
// or not), and the webhook.
const DELIVERIES: &str = "INSERT INTO alert_deliveries (alert_id, channel, recipient, next_attempt_at)
    SELECT a.id, 'email', u.email, $2::timestamptz
    FROM budget_alerts a
    JOIN memberships m ON m.org_id = a.org_id AND m.removed_at IS NULL
                      AND (m.id = a.membership_id OR m.role = 'owner')
    JOIN users u ON u.id = m.user_id
    WHERE a.id = ANY($1) AND $3::bool
    UNION ALL
    SELECT a.id, 'webhook', 'webhook', $2::timestamptz FROM budget_alerts a WHERE a.id = ANY($1) AND $4::bool";

/// Records the alerts that spend has crossed into since the last call, once per threshold
/// and period, with their deliveries, in one transaction; returns how many are new. Fold the
/// spend journal first (`usage::fold`), so keys' spend is exact.
pub async fn detect(
    pool: &Pool,
    now: OffsetDateTime,
    thresholds: &Thresholds,
    channels: Channels,
) -> Result<usize, Error> {
    let window = MonthWindow::containing(now);
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let mut ids: Vec<Uuid> = Vec::new();
    if !thresholds.member_percents.is_empty() {
        let rows = tx
            .query(
                MEMBER_ALERTS,
                &[
                    &window.start,
                    &window.end,
                    &now,
                    &thresholds.member_percents,
                ],
            )
            .await?;
        ids.extend(rows.iter().map(|row| row.get::<_, Uuid>(0)));
    }
    if !thresholds.key_percents.is_empty() {
        let rows = tx
            .query(KEY_ALERTS, &[&now, &thresholds.key_percents])
            .await?;
        ids.extend(rows.iter().map(|row| row.get::<_, Uuid>(0)));
    }
    if !ids.is_empty() {
        tx.execute(
            DELIVERIES,
            &[&ids, &now, &channels.email, &channels.webhook],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(ids.len())
}

/// One alert, as its messages and pages show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub id: Uuid,
    pub org_name: String,
    pub member_email: String,
    /// The key's name and service, for a key's alert.
    pub key: Option<(String, String)>,
    pub threshold_percent: i32,
    pub period_start: OffsetDateTime,
    /// Spend when the threshold was seen crossed, and the budget or cap it is a share of.
    pub spent: Money,
    pub limit: Money,
    pub created_at: OffsetDateTime,
}

const ALERT: &str = "SELECT a.id, o.name, u.email, k.name, k.service, a.threshold_percent,
        a.period_start, a.spent_nanousd, a.limit_nanousd, a.created_at
    FROM budget_alerts a
    JOIN orgs o ON o.id = a.org_id
    JOIN memberships m ON m.id = a.membership_id
    JOIN users u ON u.id = m.user_id
    LEFT JOIN api_keys k ON k.id = a.api_key_id";

fn alert_from_row(row: &tokio_postgres::Row) -> Alert {
    let key_name: Option<String> = row.get(3);
    let service: Option<String> = row.get(4);
    Alert {
        id: row.get(0),
        org_name: row.get(1),
        member_email: row.get(2),
        key: key_name.zip(service),
        threshold_percent: row.get(5),
        period_start: row.get(6),
        spent: Money::from_nanos(row.get(7)),
        limit: Money::from_nanos(row.get(8)),
        created_at: row.get(9),
    }
}

/// An org's newest alerts, or only one membership's, newest first.
pub async fn recent(
    client: &impl deadpool_postgres::GenericClient,
    org_id: Uuid,
    membership_id: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Alert>, Error> {
    let rows = client
        .query(
            &format!(
                "{ALERT} WHERE a.org_id = $1 AND ($2::uuid IS NULL OR a.membership_id = $2)
                 ORDER BY a.created_at DESC, a.threshold_percent DESC LIMIT $3"
            ),
            &[&org_id, &membership_id, &limit],
        )
        .await?;
    Ok(rows.iter().map(alert_from_row).collect())
}

/// A delivery to send now, with its alert.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    /// `email` or `webhook`.
    pub channel: String,
    /// The email address (`webhook` for the webhook).
    pub recipient: String,
    /// Tries so far, this one included.
    pub attempts: i32,
    pub alert: Alert,
}

/// Claims up to `limit` deliveries due at `now`: each is hidden from other senders until
/// `now + hold` (a sender that dies mid-send leaves it to be sent again then).
pub async fn claim_due(
    pool: &Pool,
    now: OffsetDateTime,
    hold: time::Duration,
    limit: i64,
) -> Result<Vec<Delivery>, Error> {
    let client = pool.get().await?;
    let claimed = client
        .query(
            "UPDATE alert_deliveries d SET attempts = d.attempts + 1, next_attempt_at = $2
             WHERE d.id IN (
                 SELECT id FROM alert_deliveries
                 WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= $1
                 ORDER BY next_attempt_at, id LIMIT $3
                 FOR UPDATE SKIP LOCKED)
             RETURNING d.id, d.channel, d.recipient, d.attempts, d.alert_id",
            &[&now, &(now + hold), &limit],
        )
        .await?;
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let alert_ids: Vec<Uuid> = claimed.iter().map(|row| row.get(4)).collect();
    let alerts: Vec<Alert> = client
        .query(&format!("{ALERT} WHERE a.id = ANY($1)"), &[&alert_ids])
        .await?
        .iter()
        .map(alert_from_row)
        .collect();
    let mut deliveries: Vec<Delivery> = claimed
        .iter()
        .filter_map(|row| {
            let alert_id: Uuid = row.get(4);
            let alert = alerts.iter().find(|a| a.id == alert_id)?.clone();
            Some(Delivery {
                id: row.get(0),
                channel: row.get(1),
                recipient: row.get(2),
                attempts: row.get(3),
                alert,
            })
        })
        .collect();
    deliveries.sort_by_key(|d| d.id);
    Ok(deliveries)
}

/// What became of one try.
#[derive(Debug, Clone)]
pub enum Outcome {
    Sent,
    /// Failed; try again at the given instant.
    Retry(OffsetDateTime, String),
    /// Failed for the last time.
    GiveUp(String),
}

/// Records what a try of `delivery` did, at `now`, unless another sender claimed it since
/// (its claim lapsed): that sender's try is the one recorded.
pub async fn finish(
    pool: &Pool,
    delivery: &Delivery,
    outcome: &Outcome,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let (id, attempts) = (delivery.id, delivery.attempts);
    let client = pool.get().await?;
    let short = |error: &str| error.chars().take(1000).collect::<String>();
    match outcome {
        Outcome::Sent => {
            client
                .execute(
                    "UPDATE alert_deliveries SET sent_at = $2 WHERE id = $1 AND attempts = $3",
                    &[&id, &now, &attempts],
                )
                .await?
        }
        Outcome::Retry(at, error) => client
            .execute(
                "UPDATE alert_deliveries SET next_attempt_at = $2, last_error = $3 WHERE id = $1",
                &[&id, at, &short(error)],
            )
            .await?,
        Outcome::GiveUp(error) => {
            client
                .execute(
                    "UPDATE alert_deliveries SET failed_at = $2, last_error = $3
                     WHERE id = $1 AND attempts = $4",
                    &[&id, &now, &short(error), &attempts],
                )
                .await?
        }
    };
    Ok(())
}
