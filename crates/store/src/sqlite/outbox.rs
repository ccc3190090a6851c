//! The report outbox's SQLite side (see [`crate::outbox`]): the `reports` table, and
//! `report_refs` for what reporters made at the far end.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use crate::{DueReport, Millis, ReportKey, Result};

/// [`Change::Report`](crate::Change::Report): adds the row, or supersedes the one there.
pub(super) fn want(tx: &Transaction<'_>, key: &ReportKey, due_at: Millis) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO reports (run_id, source, stage_id, version, due_at) VALUES (?1, ?2, ?3, 1, ?4)
         ON CONFLICT (run_id, source, stage_id) DO UPDATE SET
             version = reports.version + 1, due_at = excluded.due_at, tries = 0, first_try_at = NULL",
    )?
    .execute(params![key.run_id, key.source, key.stage_id, due_at])?;
    Ok(())
}

/// [`Change::ReportDone`](crate::Change::ReportDone).
pub(super) fn done(tx: &Transaction<'_>, key: &ReportKey, version: i64) -> Result<()> {
    tx.prepare_cached(
        "DELETE FROM reports WHERE run_id = ?1 AND source = ?2 AND stage_id = ?3 AND version = ?4",
    )?
    .execute(params![key.run_id, key.source, key.stage_id, version])?;
    release(tx, key)
}

/// [`Change::ReportRetry`](crate::Change::ReportRetry).
pub(super) fn retry(
    tx: &Transaction<'_>,
    key: &ReportKey,
    version: i64,
    due_at: Millis,
    tries: u32,
    first_try_at: Millis,
) -> Result<()> {
    tx.prepare_cached(
        "UPDATE reports SET due_at = ?5, tries = ?6, first_try_at = ?7
         WHERE run_id = ?1 AND source = ?2 AND stage_id = ?3 AND version = ?4",
    )?
    .execute(params![
        key.run_id,
        key.source,
        key.stage_id,
        version,
        due_at,
        tries,
        first_try_at
    ])?;
    release(tx, key)
}

/// Ends the claim on a row, if it is still there (a newer version is due as it is).
fn release(tx: &Transaction<'_>, key: &ReportKey) -> Result<()> {
    tx.prepare_cached(
        "UPDATE reports SET lease_until = NULL WHERE run_id = ?1 AND source = ?2 AND stage_id = ?3",
    )?
    .execute(params![key.run_id, key.source, key.stage_id])?;
    Ok(())
}

/// Leases up to `limit` rows due at `now`, oldest due first.
pub(super) fn claim(
    tx: &Transaction<'_>,
    now: Millis,
    limit: u32,
    lease_until: Millis,
) -> Result<Vec<DueReport>> {
    let mut stmt = tx.prepare_cached(
        "UPDATE reports SET lease_until = ?1 WHERE id IN (
             SELECT id FROM reports WHERE due_at <= ?2 AND (lease_until IS NULL OR lease_until < ?2)
             ORDER BY due_at LIMIT ?3)
         RETURNING run_id, source, stage_id, version, tries, first_try_at, due_at",
    )?;
    let mut claimed = stmt
        .query_map(params![lease_until, now, limit], |row| {
            Ok((due_from_row(row)?, row.get::<_, Millis>(6)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // RETURNING promises no order.
    claimed.sort_by_key(|(_, due_at)| *due_at);
    Ok(claimed.into_iter().map(|(due, _)| due).collect())
}

fn due_from_row(row: &Row<'_>) -> rusqlite::Result<DueReport> {
    Ok(DueReport {
        key: ReportKey {
            run_id: row.get(0)?,
            source: row.get(1)?,
            stage_id: row.get(2)?,
        },
        version: row.get(3)?,
        tries: row.get(4)?,
        first_try_at: row.get(5)?,
    })
}

/// The earliest due time of a row not leased at `now`.
pub(super) fn next_due(conn: &Connection, now: Millis) -> Result<Option<Millis>> {
    Ok(conn
        .prepare_cached(
            "SELECT MIN(due_at) FROM reports WHERE lease_until IS NULL OR lease_until < ?1",
        )?
        .query_row([now], |r| r.get(0))?)
}

/// [`Change::ReportRef`](crate::Change::ReportRef).
pub(super) fn put_ref(
    tx: &Transaction<'_>,
    run_id: &str,
    source: &str,
    reference: &str,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO report_refs (run_id, source, reference) VALUES (?1, ?2, ?3)
         ON CONFLICT (run_id, source) DO UPDATE SET reference = excluded.reference",
    )?
    .execute(params![run_id, source, reference])?;
    Ok(())
}

/// What [`put_ref`] last recorded for a run and source.
pub(super) fn load_ref(conn: &Connection, run_id: &str, source: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT reference FROM report_refs WHERE run_id = ?1 AND source = ?2")?
        .query_row(params![run_id, source], |r| r.get(0))
        .optional()?)
}

/// Clears every lease.
pub(super) fn release_all(tx: &Transaction<'_>) -> Result<()> {
    tx.prepare_cached("UPDATE reports SET lease_until = NULL WHERE lease_until IS NOT NULL")?
        .execute([])?;
    Ok(())
}
