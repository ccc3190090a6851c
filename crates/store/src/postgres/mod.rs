//! The PostgreSQL store: shared by any number of `baton serve` replicas.

use crate::*;

/// The PostgreSQL store.
#[derive(Debug)]
pub struct PostgresStore {}

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
}
