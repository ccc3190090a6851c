//! Decoding rows into the store's records.

use baton_core::context::TriggerInfo;
use baton_core::{RunStatus, StageStatus};
use rusqlite::{Connection, Row};
use serde_json::Value;

use crate::*;

pub(super) const TASK_COLUMNS: &str =
    "id, lease_token, version, run_id, stage_id, kind, attempt, due_at";

pub(super) fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

pub(super) fn corrupt(what: &str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what: what.to_owned(),
        detail: detail.to_string(),
    }
}

pub(super) fn json_col<T: serde::de::DeserializeOwned>(
    row: &Row<'_>,
    column: &str,
) -> Result<Option<T>> {
    let text: Option<String> = row.get(column)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(column, e)))
        .transpose()
}

/// Reads a task row; the outer error is rusqlite's (for `query_map`), the inner one ours.
pub(super) fn task_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Task>> {
    let kind: String = row.get("kind")?;
    let Some(kind) = TaskKind::parse(&kind) else {
        return Ok(Err(corrupt("tasks.kind", kind)));
    };
    Ok(Ok(Task {
        id: row.get("id")?,
        lease: row.get("lease_token")?,
        version: row.get("version")?,
        run_id: row.get("run_id")?,
        stage_id: row.get("stage_id")?,
        kind,
        attempt: row.get("attempt")?,
        due_at: row.get("due_at")?,
    }))
}

pub(super) fn header_from_row(row: &Row<'_>) -> Result<RunHeader> {
    let status: String = row.get("status")?;
    Ok(RunHeader {
        id: row.get("id")?,
        workflow: row.get("workflow")?,
        status: RunStatus::parse(&status).ok_or_else(|| corrupt("runs.status", status))?,
        cancel_requested: row.get("cancel_requested")?,
        message: row.get("message")?,
        created_at: row.get("created_at")?,
        started_at: row.get("started_at")?,
        finished_at: row.get("finished_at")?,
    })
}

pub(super) fn stage_status(row: &Row<'_>) -> Result<StageStatus> {
    let status: String = row.get("status")?;
    StageStatus::parse(&status).ok_or_else(|| corrupt("stages.status", status))
}

pub(super) fn stage_from_row(row: &Row<'_>) -> Result<StageRecord> {
    let phase: Option<String> = row.get("phase")?;
    Ok(StageRecord {
        run_id: row.get("run_id")?,
        stage_id: row.get("stage_id")?,
        position: row.get("position")?,
        status: stage_status(row)?,
        reason: row.get("reason")?,
        message: row.get("message")?,
        attempt: row.get("attempt")?,
        phase: phase.as_deref().and_then(Phase::parse),
        input: json_col(row, "input")?,
        external: json_col(row, "external")?,
        outputs: json_col(row, "outputs")?,
        signal: json_col(row, "signal")?,
        started_at: row.get("started_at")?,
        finished_at: row.get("finished_at")?,
    })
}

pub(super) fn attempt_from_row(row: &Row<'_>) -> Result<AttemptRecord> {
    Ok(AttemptRecord {
        run_id: row.get("run_id")?,
        stage_id: row.get("stage_id")?,
        attempt: row.get("attempt")?,
        status: stage_status(row)?,
        reason: row.get("reason")?,
        message: row.get("message")?,
        external: json_col(row, "external")?,
        started_at: row.get("started_at")?,
        finished_at: row.get("finished_at")?,
    })
}

/// Runs `sql` and maps every row with `f`.
pub(super) fn rows<T>(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
    f: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut out = Vec::new();
    let mut cursor = stmt.query(args)?;
    while let Some(row) = cursor.next()? {
        out.push(f(row)?);
    }
    Ok(out)
}

pub(super) fn delivery_from_row(row: &Row<'_>) -> Result<DeliveryRecord> {
    let body: String = row.get("body")?;
    Ok(DeliveryRecord {
        id: row.get("seq")?,
        source: row.get("source")?,
        delivery_id: row.get("delivery_id")?,
        event: row.get("event")?,
        headers: json_col(row, "headers")?.unwrap_or(Value::Null),
        // Bodies were checked to be JSON before they were stored; keep text that is not.
        body: serde_json::from_str(&body).unwrap_or(Value::String(body)),
        received_at: row.get("received_at")?,
        status: row.get("status")?,
        runs: json_col(row, "runs")?.unwrap_or_default(),
        message: row.get("message")?,
        processed_at: row.get("processed_at")?,
    })
}

/// Reads a [`RunListing`] ([`crate::listing::RUN_LISTING_COLUMNS`]).
pub(super) fn listing_from_row(row: &Row<'_>) -> Result<RunListing> {
    Ok(RunListing {
        header: header_from_row(row)?,
        trigger: TriggerInfo {
            source: row.get("trigger_source")?,
            event: row.get("trigger_event")?,
            delivery_id: row.get("trigger_delivery")?,
        },
        delivery: row.get("delivery")?,
        commit: row.get("commit_sha")?,
    })
}

/// Reads a [`DeliverySummary`].
pub(super) fn summary_from_row(row: &Row<'_>) -> Result<DeliverySummary> {
    Ok(DeliverySummary {
        id: row.get("seq")?,
        source: row.get("source")?,
        delivery_id: row.get("delivery_id")?,
        event: row.get("event")?,
        received_at: row.get("received_at")?,
        status: row.get("status")?,
        runs: json_col(row, "runs")?.unwrap_or_default(),
        message: row.get("message")?,
        processed_at: row.get("processed_at")?,
    })
}
