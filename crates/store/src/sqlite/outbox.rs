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

#[cfg(test)]
mod tests {
    use crate::sqlite::tests::store as open;
    use crate::*;

    fn key(stage_id: &str) -> ReportKey {
        ReportKey {
            run_id: "r1".into(),
            source: "github".into(),
            stage_id: stage_id.into(),
        }
    }

    fn want(stage_id: &str, due_at: Millis) -> Change {
        Change::Report {
            key: key(stage_id),
            due_at,
        }
    }

    /// (stage, version, tries, first try) of each claimed row.
    fn claimed(rows: &[DueReport]) -> Vec<(&str, i64, u32, Option<Millis>)> {
        rows.iter()
            .map(|r| (r.key.stage_id.as_str(), r.version, r.tries, r.first_try_at))
            .collect()
    }

    #[tokio::test]
    async fn a_newer_change_supersedes_the_waiting_row_even_while_it_is_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        store
            .commit(vec![want("", 10), want("build", 20)])
            .await
            .unwrap();
        assert_eq!(store.next_report_due(0).await.unwrap(), Some(10));
        assert!(store.claim_reports(5, 10, 100).await.unwrap().is_empty());
        let rows = store.claim_reports(15, 10, 100).await.unwrap();
        assert_eq!(claimed(&rows), [("", 1, 0, None)]);
        // Claimed: neither claimed nor counted as due again until the claim ends.
        assert_eq!(store.next_report_due(30).await.unwrap(), Some(20));
        assert_eq!(
            claimed(&store.claim_reports(30, 10, 100).await.unwrap()),
            [("build", 1, 0, None)]
        );
        assert!(store.claim_reports(40, 10, 100).await.unwrap().is_empty());
        // The run changes while its row is posted: the row gets a new version, still claimed.
        store.commit(vec![want("", 50)]).await.unwrap();
        assert_eq!(store.next_report_due(60).await.unwrap(), None);
        assert!(store.claim_reports(60, 10, 100).await.unwrap().is_empty());
        // Settling the old version leaves the new one, due as the change said.
        store
            .commit(vec![Change::ReportDone {
                key: key(""),
                version: 1,
            }])
            .await
            .unwrap();
        assert_eq!(store.next_report_due(60).await.unwrap(), Some(50));
        let rows = store.claim_reports(60, 10, 200).await.unwrap();
        assert_eq!(claimed(&rows), [("", 2, 0, None)]);
        // Settling the version claimed removes the row.
        store
            .commit(vec![Change::ReportDone {
                key: key(""),
                version: 2,
            }])
            .await
            .unwrap();
        // A claim that ran out lets the row be claimed again.
        assert_eq!(store.next_report_due(150).await.unwrap(), Some(20));
        assert_eq!(
            claimed(&store.claim_reports(150, 10, 300).await.unwrap()),
            [("build", 1, 0, None)]
        );
    }

    #[tokio::test]
    async fn a_retry_keeps_its_schedule_across_a_restart_unless_superseded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(&dir).await;
            store
                .commit(vec![want("", 10), want("build", 10)])
                .await
                .unwrap();
            let rows = store.claim_reports(10, 10, 1_000).await.unwrap();
            assert_eq!(rows.len(), 2);
            let retry = |stage_id: &str, due_at| Change::ReportRetry {
                key: key(stage_id),
                version: 1,
                due_at,
                tries: 3,
                first_try_at: 9,
            };
            store
                .commit(vec![retry("", 500), retry("build", 700)])
                .await
                .unwrap();
            // The build stage changes again: its retry is dropped, the new version is due now.
            store.commit(vec![want("build", 40)]).await.unwrap();
            // Claimed again by the process about to die.
            assert_eq!(store.claim_reports(600, 10, 10_000).await.unwrap().len(), 2);
        }
        let store = open(&dir).await;
        assert_eq!(store.next_report_due(650).await.unwrap(), None);
        store.release_report_leases().await.unwrap();
        assert_eq!(store.next_report_due(0).await.unwrap(), Some(40));
        assert_eq!(
            claimed(&store.claim_reports(100, 10, 1_000).await.unwrap()),
            [("build", 2, 0, None)]
        );
        assert_eq!(
            claimed(&store.claim_reports(500, 10, 1_000).await.unwrap()),
            [("", 1, 3, Some(9))]
        );
        // A retry of a version that was superseded while it was tried changes nothing but
        // the claim.
        store.commit(vec![want("", 510)]).await.unwrap();
        store
            .commit(vec![Change::ReportRetry {
                key: key(""),
                version: 1,
                due_at: 9_000,
                tries: 4,
                first_try_at: 9,
            }])
            .await
            .unwrap();
        assert_eq!(
            claimed(&store.claim_reports(520, 10, 1_000).await.unwrap()),
            [("", 2, 0, None)]
        );
    }

    #[tokio::test]
    async fn a_reference_is_kept_per_run_and_source_across_a_restart_and_replaced_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let put = |run_id: &str, source: &str, reference: &str| Change::ReportRef {
            run_id: run_id.into(),
            source: source.into(),
            reference: reference.into(),
        };
        {
            let store = open(&dir).await;
            assert_eq!(store.report_ref("r1", "github").await.unwrap(), None);
            store
                .commit(vec![put("r1", "github", "creating"), put("r1", "app", "a")])
                .await
                .unwrap();
            store
                .commit(vec![put("r1", "github", "check-run 7")])
                .await
                .unwrap();
        }
        let store = open(&dir).await;
        assert_eq!(
            store.report_ref("r1", "github").await.unwrap().as_deref(),
            Some("check-run 7")
        );
        assert_eq!(
            store.report_ref("r1", "app").await.unwrap().as_deref(),
            Some("a")
        );
        assert_eq!(store.report_ref("r2", "github").await.unwrap(), None);
    }
}
