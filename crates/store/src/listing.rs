//! Lists for people: runs with what started them and their commit, deliveries without
//! their headers and bodies, each a page newest first, by offset or by key.
//!
//! Both backends build their statements here: one per combination of the filters given,
//! so each is planned with its own index rather than one plan for `x IS NULL OR …` that
//! can use none.

use baton_core::context::TriggerInfo;
use serde::Serialize;

use crate::{Millis, RunFilter, RunHeader};

/// A run as the runs list shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunListing {
    /// The run's mutable part.
    #[serde(flatten)]
    pub header: RunHeader,
    /// What started it.
    pub trigger: TriggerInfo,
    /// The public id of the stored delivery that started it, when a webhook did and the
    /// delivery is stored.
    pub delivery: Option<i64>,
    /// The commit its event is about ([`baton_core::context::commit_of`]).
    pub commit: Option<String>,
}

/// A stored delivery without its headers and body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliverySummary {
    /// Public id.
    pub id: i64,
    /// Source name.
    pub source: String,
    /// The sender's delivery id.
    pub delivery_id: String,
    /// Event type.
    pub event: String,
    /// When it arrived.
    pub received_at: Millis,
    /// `received` (to be processed), `processed` or `failed`.
    pub status: String,
    /// Runs it started.
    pub runs: Vec<String>,
    /// Why processing failed.
    pub message: Option<String>,
    /// When it was processed last.
    pub processed_at: Option<Millis>,
}

/// The columns a [`RunListing`] is read from, on `runs r`: the delivery's id is looked up
/// for the rows of the page only.
pub(crate) const RUN_LISTING_COLUMNS: &str = "r.id, r.workflow, r.status, r.cancel_requested, \
     r.message, r.created_at, r.started_at, r.finished_at, r.trigger_source, r.trigger_event, \
     r.trigger_delivery, r.commit_sha, (SELECT d.seq FROM deliveries d \
     WHERE d.source = r.trigger_source AND d.delivery_id = r.trigger_delivery) AS delivery";

/// The columns a [`DeliverySummary`] is read from, besides `status` and `processed_at`,
/// which each backend derives its own way.
pub(crate) const DELIVERY_SUMMARY_COLUMNS: &str =
    "seq, source, delivery_id, event, received_at, runs, message";

/// A page of runs on `runs r` for `filter`: the statement, with numbered placeholders
/// (`sigil` `?` for SQLite, `$` for PostgreSQL) for, in order, the workflow, the status,
/// the cursor's time and id (each only if the filter has it), the limit and the offset.
pub(crate) fn runs_page_sql(filter: &RunFilter, sigil: char) -> String {
    let mut next = 0;
    let mut arg = || {
        next += 1;
        format!("{sigil}{next}")
    };
    let mut conditions = Vec::new();
    if filter.workflow.is_some() {
        conditions.push(format!("r.workflow = {}", arg()));
    }
    if filter.status.is_some() {
        conditions.push(format!("r.status = {}", arg()));
    }
    if filter.before.is_some() {
        let (at, id) = (arg(), arg());
        conditions.push(format!("(r.created_at, r.id) < ({at}, {id})"));
    }
    let (limit, offset) = (arg(), arg());
    format!(
        "SELECT {RUN_LISTING_COLUMNS} FROM runs r {} \
         ORDER BY r.created_at DESC, r.id DESC LIMIT {limit} OFFSET {offset}",
        where_clause(&conditions)
    )
}

/// A page of deliveries: `columns` of `table`, with numbered placeholders for, in order, the
/// source and the cursor (each only if the filter has it), the limit and the offset.
pub(crate) fn deliveries_page_sql(
    columns: &str,
    table: &str,
    source: bool,
    before: bool,
    sigil: char,
) -> String {
    let mut next = 0;
    let mut arg = || {
        next += 1;
        format!("{sigil}{next}")
    };
    let mut conditions = Vec::new();
    if source {
        conditions.push(format!("source = {}", arg()));
    }
    if before {
        conditions.push(format!("seq < {}", arg()));
    }
    let (limit, offset) = (arg(), arg());
    format!(
        "SELECT {columns} FROM {table} {} ORDER BY seq DESC LIMIT {limit} OFFSET {offset}",
        where_clause(&conditions)
    )
}

fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    }
}

/// A page size: 50 when unset, at most 1000.
pub(crate) fn page_limit(asked: u32) -> u32 {
    if asked == 0 { 50 } else { asked.min(1000) }
}
