//! The report outbox on PostgreSQL (see [`crate::outbox`]): the `reports` table, and
//! `report_refs` for what reporters made at the far end.
//!
//! Replicas share the rows: a claim takes due rows with `FOR UPDATE SKIP LOCKED`, so two
//! replicas claiming at once split them rather than wait for each other or post one twice.
//! Settling is not fenced: it names the row's version, and a post made twice (a claim that
//! ran out while its post was slow) posts the same latest state twice, which the far end
//! takes as one.

use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::relay::col;
use super::{PostgresStore, pg_error};
use crate::*;

/// Applies an outbox change (`Report`, `ReportDone`, `ReportRetry`, `ReportRef`) inside a
/// commit's transaction; any other change is left alone.
pub(super) async fn apply(tx: &Transaction<'_>, change: &Change) -> Result<()> {
    match change {
        Change::Report { key, due_at } => {
            let want = tx
                .prepare_cached(
                    "INSERT INTO reports (run_id, source, stage_id, version, due_at)
                     VALUES ($1, $2, $3, 1, $4)
                     ON CONFLICT (run_id, source, stage_id) DO UPDATE SET
                         version = reports.version + 1, due_at = excluded.due_at, tries = 0,
                         first_try_at = NULL",
                )
                .await
                .map_err(pg_error)?;
            tx.execute(&want, &[&key.run_id, &key.source, &key.stage_id, due_at])
                .await
                .map_err(pg_error)?;
        }
        Change::ReportDone { key, version } => {
            let done = tx
                .prepare_cached(
                    "DELETE FROM reports
                     WHERE run_id = $1 AND source = $2 AND stage_id = $3 AND version = $4",
                )
                .await
                .map_err(pg_error)?;
            tx.execute(&done, &[&key.run_id, &key.source, &key.stage_id, version])
                .await
                .map_err(pg_error)?;
            release(tx, key).await?;
        }
        Change::ReportRetry {
            key,
            version,
            due_at,
            tries,
            first_try_at,
        } => {
            let retry = tx
                .prepare_cached(
                    "UPDATE reports SET due_at = $5, tries = $6, first_try_at = $7
                     WHERE run_id = $1 AND source = $2 AND stage_id = $3 AND version = $4",
                )
                .await
                .map_err(pg_error)?;
            let tries = i32::try_from(*tries).unwrap_or(i32::MAX);
            tx.execute(
                &retry,
                &[
                    &key.run_id,
                    &key.source,
                    &key.stage_id,
                    version,
                    due_at,
                    &tries,
                    first_try_at,
                ],
            )
            .await
            .map_err(pg_error)?;
            release(tx, key).await?;
        }
        Change::ReportRef {
            run_id,
            source,
            reference,
        } => {
            let put = tx
                .prepare_cached(
                    "INSERT INTO report_refs (run_id, source, reference) VALUES ($1, $2, $3)
                     ON CONFLICT (run_id, source) DO UPDATE SET reference = excluded.reference",
                )
                .await
                .map_err(pg_error)?;
            tx.execute(&put, &[run_id, source, reference])
                .await
                .map_err(pg_error)?;
        }
        _ => {}
    }
    Ok(())
}

/// Ends the claim on a row, if it is still there (a newer version is due as it is).
async fn release(tx: &Transaction<'_>, key: &ReportKey) -> Result<()> {
    let release = tx
        .prepare_cached(
            "UPDATE reports SET lease_until = NULL
             WHERE run_id = $1 AND source = $2 AND stage_id = $3",
        )
        .await
        .map_err(pg_error)?;
    tx.execute(&release, &[&key.run_id, &key.source, &key.stage_id])
        .await
        .map_err(pg_error)?;
    Ok(())
}

impl PostgresStore {
    /// [`Store::claim_reports`].
    pub(super) async fn claim_reports_impl(
        &self,
        now: Millis,
        limit: u32,
        lease_until: Millis,
    ) -> Result<Vec<DueReport>> {
        let client = self.client().await?;
        let claim = client
            .prepare_cached(
                "WITH due AS (
                     SELECT id FROM reports
                     WHERE due_at <= $2 AND (lease_until IS NULL OR lease_until < $2)
                     ORDER BY due_at LIMIT $3
                     FOR UPDATE SKIP LOCKED)
                 UPDATE reports r SET lease_until = $1, lease_token = nextval('lease_tokens')
                 FROM due WHERE r.id = due.id
                 RETURNING r.run_id, r.source, r.stage_id, r.version, r.tries, r.first_try_at,
                           r.due_at",
            )
            .await
            .map_err(pg_error)?;
        let limit = i64::from(limit);
        let mut claimed = client
            .query(&claim, &[&lease_until, &now, &limit])
            .await
            .map_err(pg_error)?
            .iter()
            .map(|row| Ok((due_from_row(row)?, col::<Millis>(row, 6)?)))
            .collect::<Result<Vec<_>>>()?;
        // RETURNING promises no order.
        claimed.sort_by_key(|(_, due_at)| *due_at);
        Ok(claimed.into_iter().map(|(due, _)| due).collect())
    }

    /// [`Store::next_report_due`].
    pub(super) async fn next_report_due_impl(&self, now: Millis) -> Result<Option<Millis>> {
        let client = self.client().await?;
        let next = client
            .prepare_cached(
                "SELECT MIN(due_at) FROM reports WHERE lease_until IS NULL OR lease_until < $1",
            )
            .await
            .map_err(pg_error)?;
        client
            .query_one(&next, &[&now])
            .await
            .map_err(pg_error)?
            .try_get(0)
            .map_err(pg_error)
    }

    /// [`Store::report_ref`].
    pub(super) async fn report_ref_impl(
        &self,
        run_id: &str,
        source: &str,
    ) -> Result<Option<String>> {
        let client = self.client().await?;
        let load = client
            .prepare_cached("SELECT reference FROM report_refs WHERE run_id = $1 AND source = $2")
            .await
            .map_err(pg_error)?;
        match client
            .query_opt(&load, &[&run_id, &source])
            .await
            .map_err(pg_error)?
        {
            Some(row) => Ok(Some(col(&row, 0)?)),
            None => Ok(None),
        }
    }
}

/// A claimed row of the columns `run_id, source, stage_id, version, tries, first_try_at`.
fn due_from_row(row: &Row) -> Result<DueReport> {
    Ok(DueReport {
        key: ReportKey {
            run_id: col(row, 0)?,
            source: col(row, 1)?,
            stage_id: col(row, 2)?,
        },
        version: col(row, 3)?,
        tries: u32::try_from(col::<i32>(row, 4)?).unwrap_or_default(),
        first_try_at: col(row, 5)?,
    })
}
