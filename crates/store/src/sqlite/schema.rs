//! The schema and its migrations, and the settings every connection opens with.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::*;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_deliveries.sql"),
    include_str!("../../migrations/sqlite/0003_delivery_passes.sql"),
    include_str!("../../migrations/sqlite/0004_reports.sql"),
    include_str!("../../migrations/sqlite/0005_write_probe.sql"),
    include_str!("../../migrations/sqlite/0006_report_refs.sql"),
    include_str!("../../migrations/sqlite/0007_relays.sql"),
    include_str!("../../migrations/sqlite/0008_replicas.sql"),
    include_str!("../../migrations/sqlite/0009_ui.sql"),
];

pub(super) fn open_connection(path: &Path, flags: OpenFlags) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    let applied: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .map_err(|source| StoreError::Migration {
                number: i + 1,
                source,
            })?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    if applied as usize > MIGRATIONS.len() {
        return Err(StoreError::NewerSchema {
            found: applied,
            known: MIGRATIONS.len(),
        });
    }
    Ok(())
}
