//! The relay queue on PostgreSQL (see [`crate::relay`]).

use deadpool_postgres::Transaction;

use crate::*;

/// The relay messages this process holds, with the tokens of their claims: a try is recorded
/// only while its message's claim is still this process's.
#[derive(Debug, Default)]
pub(super) struct Leases {}

/// What a commit's transaction claimed, recorded in [`Leases`] once it commits.
#[derive(Debug, Default)]
pub(super) struct Staged {}

impl Leases {
    /// Records what a committed transaction claimed.
    pub(super) fn committed(&self, staged: Staged) {
        let _ = staged;
    }
}

/// Applies a relay change (`RelayEnqueue`, `RelayAttempt`, `RelayPostpone`,
/// `RelayTargetDisabled`) inside a commit's transaction.
pub(super) async fn apply(
    tx: &Transaction<'_>,
    change: &Change,
    leases: &Leases,
    staged: &mut Staged,
) -> Result<()> {
    let _ = (tx, change, leases, staged);
    Err(StoreError::Url(
        "the PostgreSQL relay queue is not in this build yet".into(),
    ))
}
