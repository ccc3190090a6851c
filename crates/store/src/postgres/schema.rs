//! The schema's migrations, run at open under an advisory lock so that replicas starting
//! together migrate once: the others wait on the lock, then find nothing left to do.

use crate::*;

use super::pg_error;

/// Schema migrations, applied in order; `baton_schema.version` records how many ran.
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_deliveries.sql"),
    include_str!("../../migrations/postgres/0003_delivery_passes.sql"),
    include_str!("../../migrations/postgres/0004_reports.sql"),
    include_str!("../../migrations/postgres/0005_write_probe.sql"),
    include_str!("../../migrations/postgres/0006_report_refs.sql"),
    include_str!("../../migrations/postgres/0007_relays.sql"),
    include_str!("../../migrations/postgres/0008_replicas.sql"),
    include_str!("../../migrations/postgres/0009_ui.sql"),
];

/// The advisory lock's key: "baton" in ASCII, so it is recognisable in `pg_locks`.
const LOCK_KEY: i64 = 0x62_61_74_6f_6e;

/// Brings the schema up to date in one transaction, under a transaction-level advisory
/// lock: a migration that fails leaves the schema as it was, and the lock is released with
/// the transaction however it ends (a session-level lock would outlive a dropped connection
/// returned to the pool).
pub(super) async fn migrate(client: &mut deadpool_postgres::Object) -> Result<()> {
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(pg_error)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS baton_schema (version BIGINT NOT NULL)")
        .await
        .map_err(pg_error)?;
    let found: Option<i64> = tx
        .query_opt("SELECT version FROM baton_schema", &[])
        .await
        .map_err(pg_error)?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(pg_error)?;
    let applied = match found {
        Some(version) => version,
        None => {
            tx.execute("INSERT INTO baton_schema (version) VALUES (0)", &[])
                .await
                .map_err(pg_error)?;
            0
        }
    };
    if applied as usize > MIGRATIONS.len() {
        return Err(StoreError::NewerSchema {
            found: applied,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied.max(0) as usize) {
        tx.batch_execute(sql)
            .await
            .map_err(|source| StoreError::PostgresMigration {
                number: i + 1,
                source,
            })?;
        tracing::info!(migration = i + 1, "store schema migrated");
    }
    if applied as usize != MIGRATIONS.len() {
        tx.execute(
            "UPDATE baton_schema SET version = $1",
            &[&(MIGRATIONS.len() as i64)],
        )
        .await
        .map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)
}
