//! The report outbox on PostgreSQL (see [`crate::outbox`]).

use deadpool_postgres::Transaction;

use super::PostgresStore;
use crate::*;

/// Applies an outbox change (`Report`, `ReportDone`, `ReportRetry`, `ReportRef`) inside a
/// commit's transaction.
pub(super) async fn apply(tx: &Transaction<'_>, change: &Change) -> Result<()> {
    let _ = (tx, change);
    Err(StoreError::Url(
        "the PostgreSQL outbox is not in this build yet".into(),
    ))
}

impl PostgresStore {
    /// [`Store::claim_reports`].
    pub(super) async fn claim_reports_impl(
        &self,
        now: Millis,
        limit: u32,
        lease_until: Millis,
    ) -> Result<Vec<DueReport>> {
        let _ = (now, limit, lease_until, self.client().await?);
        Ok(Vec::new())
    }

    /// [`Store::next_report_due`].
    pub(super) async fn next_report_due_impl(&self, now: Millis) -> Result<Option<Millis>> {
        let _ = (now, self.client().await?);
        Ok(None)
    }

    /// [`Store::report_ref`].
    pub(super) async fn report_ref_impl(
        &self,
        run_id: &str,
        source: &str,
    ) -> Result<Option<String>> {
        let _ = (run_id, source, self.client().await?);
        Ok(None)
    }
}
