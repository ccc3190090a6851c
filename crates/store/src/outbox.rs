//! The report outbox: commit statuses waiting to be posted, kept in the store so they
//! survive a restart.
//!
//! The engine writes a row ([`Change::Report`](crate::Change::Report)) in the same commit as
//! each change of a run or stage whose workflow reports somewhere: one row per run, source
//! and context, so a newer change supersedes a row still waiting (its version goes up and it
//! is due at once). The row says *which* status to report, not what it is: the reporter reads
//! the run when it posts, so it always posts the latest state. It claims due rows
//! ([`Store::claim_reports`](crate::Store::claim_reports)), and settles each with
//! [`Change::ReportDone`](crate::Change::ReportDone) (removed, unless a newer change came
//! meanwhile) or [`Change::ReportRetry`](crate::Change::ReportRetry) (tried again later).
//!
//! A reporter that makes one object at the far end per run (a GitHub check run, updated as
//! the run moves) records it with [`Change::ReportRef`](crate::Change::ReportRef) and reads
//! it back with [`Store::report_ref`](crate::Store::report_ref), so a restart updates the
//! same object instead of making another.

use crate::Millis;

/// Which status a row reports: one run's own (`stage_id` empty) or one stage's, to one
/// source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReportKey {
    /// The run.
    pub run_id: String,
    /// The `[sources.*]` name from the workflow's `report:`.
    pub source: String,
    /// The stage, or empty for the run itself.
    pub stage_id: String,
}

/// A claimed outbox row: what to report, and how far its retries have got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueReport {
    /// What to report.
    pub key: ReportKey,
    /// Bumped by every change the row reports; settling names the version it dealt with,
    /// so a change that came while it was posted is not lost.
    pub version: i64,
    /// Failed tries of this version so far (0 before the first).
    pub tries: u32,
    /// When this version was first tried, if it was.
    pub first_try_at: Option<Millis>,
}
