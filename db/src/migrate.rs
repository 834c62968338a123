//! Forward-only migrations from `migrations/`, applied in order under an advisory lock so that
//! several processes starting at once apply each migration exactly once.

use crate::{Error, Pool};

/// Every migration, in order: `(name, sql)`.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../../migrations/0001_init.sql")),
    (
        "0002_changed_at",
        include_str!("../../migrations/0002_changed_at.sql"),
    ),
    (
        "0003_admin",
        include_str!("../../migrations/0003_admin.sql"),
    ),
    (
        "0004_hot_spend_updates",
        include_str!("../../migrations/0004_hot_spend_updates.sql"),
    ),
    (
        "0005_rate_limits",
        include_str!("../../migrations/0005_rate_limits.sql"),
    ),
    (
        "0006_late_spend",
        include_str!("../../migrations/0006_late_spend.sql"),
    ),
    (
        "0007_flush_claims",
        include_str!("../../migrations/0007_flush_claims.sql"),
    ),
    (
        "0008_key_spends",
        include_str!("../../migrations/0008_key_spends.sql"),
    ),
    (
        "0009_spend_journal",
        include_str!("../../migrations/0009_spend_journal.sql"),
    ),
    (
        "0010_renewal_notices",
        include_str!("../../migrations/0010_renewal_notices.sql"),
    ),
    (
        "0011_cap_take_back",
        include_str!("../../migrations/0011_cap_take_back.sql"),
    ),
    (
        "0012_fold_at",
        include_str!("../../migrations/0012_fold_at.sql"),
    ),
    (
        "0013_usage_metrics_and_alerts",
        include_str!("../../migrations/0013_usage_metrics_and_alerts.sql"),
    ),
    (
        "0014_invite_cancel",
        include_str!("../../migrations/0014_invite_cancel.sql"),
    ),
    (
        "0015_leases",
        include_str!("../../migrations/0015_leases.sql"),
    ),
    (
        "0016_rate_windows",
        include_str!("../../migrations/0016_rate_windows.sql"),
    ),
    (
        "0017_audit_checkpoints",
        include_str!("../../migrations/0017_audit_checkpoints.sql"),
    ),
    (
        "0018_admin_token_expiry",
        include_str!("../../migrations/0018_admin_token_expiry.sql"),
    ),
    (
        "0019_login_addresses",
        include_str!("../../migrations/0019_login_addresses.sql"),
    ),
    (
        "0020_password_resets",
        include_str!("../../migrations/0020_password_resets.sql"),
    ),
    (
        "0021_lease_ledger_row",
        include_str!("../../migrations/0021_lease_ledger_row.sql"),
    ),
    (
        "0022_reclaimed_past",
        include_str!("../../migrations/0022_reclaimed_past.sql"),
    ),
    (
        "0023_give_back_claims",
        include_str!("../../migrations/0023_give_back_claims.sql"),
    ),
    (
        "0024_refund_what_cannot_be_spent",
        include_str!("../../migrations/0024_refund_what_cannot_be_spent.sql"),
    ),
];

const LOCK_KEY: i64 = 0x6b65_7963_6170; // "keycap"

/// Applies the migrations that have not run yet and returns how many it applied.
pub async fn migrate(pool: &Pool) -> Result<usize, Error> {
    let mut client = pool.get().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = apply_pending(&mut client).await;
    // Unlock even when a migration failed; the session may be reused by the pool.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn apply_pending(client: &mut deadpool_postgres::Object) -> Result<usize, Error> {
    // Checked first: CREATE TABLE IF NOT EXISTS would log a notice on every start.
    let exists = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?;
    if !exists.get::<_, bool>(0) {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                name text PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
            )
            .await?;
    }
    let mut applied = 0;
    for (name, sql) in MIGRATIONS {
        let done = client
            .query_opt("SELECT 1 FROM schema_migrations WHERE name = $1", &[name])
            .await?;
        if done.is_some() {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql)
            .await
            .map_err(|source| Error::Migration { name, source })?;
        tx.execute("INSERT INTO schema_migrations (name) VALUES ($1)", &[name])
            .await?;
        tx.commit().await?;
        tracing::info!(migration = name, "applied migration");
        applied += 1;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in `migrations/` is applied, in order, under its own name.
    #[test]
    fn every_migration_file_is_listed_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter_map(|name| name.strip_suffix(".sql").map(str::to_string))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|(name, _)| *name).collect();
        assert_eq!(listed, files);
    }
}
