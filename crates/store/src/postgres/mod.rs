//! The PostgreSQL store: shared by any number of `baton serve` replicas.
//!
//! The parts: `outbox` and `relay` (the report outbox's and the relay queue's tables: their
//! changes inside a commit's transaction, their claims and reads); this file opens a store.

use deadpool_postgres::Transaction;

use crate::*;

mod outbox;
mod relay;

/// The channel replicas `NOTIFY` each other on; the payload is a [`Work`] name.
pub(super) const CHANNEL: &str = "baton_work";

/// The PostgreSQL store.
pub struct PostgresStore {
    /// Connections.
    pool: deadpool_postgres::Pool,
    /// Relay messages this process holds, with their claims' tokens (see `relay`).
    relay_leases: relay::Leases,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, takes the migration lock and brings the schema up to date.
    pub async fn open(options: &StoreOptions) -> Result<Self> {
        tokio::task::yield_now().await;
        Err(StoreError::Url(format!(
            "store url `{}`: PostgreSQL is not in this build yet",
            redact_url(&options.url)
        )))
    }

    /// [`PostgresStore::open`] as the trait object [`open_with`] returns.
    pub(crate) async fn open_shared(options: &StoreOptions) -> Result<std::sync::Arc<dyn Store>> {
        Self::open(options).await?;
        unreachable!("not yet")
    }

    /// A pooled connection.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| StoreError::Unavailable {
            detail: e.to_string(),
        })
    }
}

/// Tells the other replicas, when the transaction commits, that `work` is waiting.
pub(super) async fn notify(tx: &Transaction<'_>, work: Work) -> Result<()> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &work.as_str()])
        .await
        .map_err(|e| StoreError::Unavailable {
            detail: e.to_string(),
        })?;
    Ok(())
}
