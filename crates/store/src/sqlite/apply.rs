//! One engine [`Change`] as SQL, inside the writer's transaction.

use baton_core::context::commit_of;
use rusqlite::{OptionalExtension, Transaction, params};
use serde_json::Value;

use super::rows::{TASK_COLUMNS, task_from_row, to_json};
use super::{outbox, relay};
use crate::*;

pub(super) fn apply_change(tx: &Transaction<'_>, change: &Change) -> Result<Option<Task>> {
    match change {
        Change::Fence {
            run_id,
            version,
            lease,
        } => fence(tx, run_id, *version, *lease)?,
        Change::InsertRun(header, payload) => {
            tx.prepare_cached(
                "INSERT INTO runs (id, workflow, status, spec, event, trigger_info, cancel_requested, message, created_at, started_at, finished_at,
                                   trigger_source, trigger_event, trigger_delivery, commit_sha)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?
            .execute(params![
                header.id,
                header.workflow,
                header.status.as_str(),
                payload.spec.to_string(),
                payload.event.to_string(),
                to_json(&payload.trigger),
                header.cancel_requested,
                header.message,
                header.created_at,
                header.started_at,
                header.finished_at,
                payload.trigger.source,
                payload.trigger.event,
                payload.trigger.delivery_id,
                commit_of(&payload.event),
            ])?;
        }
        Change::PutRun(header) => {
            tx.prepare_cached(
                "UPDATE runs SET status = ?2, cancel_requested = ?3, message = ?4, started_at = ?5, finished_at = ?6 WHERE id = ?1",
            )?
            .execute(params![
                header.id,
                header.status.as_str(),
                header.cancel_requested,
                header.message,
                header.started_at,
                header.finished_at,
            ])?;
        }
        Change::PutStage(s) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO stages (run_id, stage_id, position, status, reason, message, attempt, phase, input, external, outputs, signal, started_at, finished_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?
            .execute(params![
                s.run_id,
                s.stage_id,
                s.position,
                s.status.as_str(),
                s.reason,
                s.message,
                s.attempt,
                s.phase.map(Phase::as_str),
                s.input.as_ref().map(Value::to_string),
                s.external.as_ref().map(to_json),
                s.outputs.as_ref().map(Value::to_string),
                s.signal.as_ref().map(Value::to_string),
                s.started_at,
                s.finished_at,
            ])?;
        }
        Change::PutAttempt(a) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO attempts (run_id, stage_id, attempt, status, reason, message, external, started_at, finished_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                a.run_id,
                a.stage_id,
                a.attempt,
                a.status.as_str(),
                a.reason,
                a.message,
                a.external.as_ref().map(to_json),
                a.started_at,
                a.finished_at,
            ])?;
        }
        Change::Schedule(t) => {
            let task = tx
                .prepare_cached(&format!(
                    "INSERT INTO tasks (run_id, stage_id, kind, attempt, due_at, lease_until, version, lease_token)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, 1)
                     ON CONFLICT (run_id, stage_id, kind) DO UPDATE SET
                         attempt = excluded.attempt, due_at = excluded.due_at,
                         lease_until = excluded.lease_until, version = tasks.version + 1,
                         lease_token = tasks.lease_token + 1
                     RETURNING {TASK_COLUMNS}"
                ))?
                .query_row(params![t.run_id, t.stage_id, t.kind.as_str(), t.attempt, t.due_at, t.claim_until], task_from_row)??;
            if t.claim_until.is_some() {
                return Ok(Some(task));
            }
        }
        Change::Done { id, version } => {
            tx.prepare_cached("DELETE FROM tasks WHERE id = ?1 AND version = ?2")?
                .execute(params![id, version])?;
        }
        Change::DeliveryProcessed {
            seq,
            runs,
            message,
            now,
        } => {
            let status = if message.is_some() {
                "failed"
            } else {
                "processed"
            };
            if runs.is_empty() {
                // The common case (no workflow matched) needs no JSON work.
                tx.prepare_cached("UPDATE deliveries SET status = ?2, processed_at = ?3, message = ?4 WHERE seq = ?1")?
                    .execute(params![seq, status, now, message])?;
            } else {
                // Runs of a replay are appended to those of earlier passes.
                tx.prepare_cached(
                    "UPDATE deliveries SET status = ?2, processed_at = ?3, message = ?4,
                         runs = (SELECT json_group_array(value) FROM (
                             SELECT value FROM json_each(deliveries.runs) UNION ALL SELECT value FROM json_each(?5)))
                     WHERE seq = ?1",
                )?
                .execute(params![seq, status, now, message, serde_json::to_string(runs).unwrap_or_else(|_| "[]".into())])?;
            }
        }
        Change::DeliveriesMatched { through, now } => {
            // The mark only moves forward.
            tx.prepare_cached(
                "INSERT INTO delivery_passes (through_seq, at) SELECT ?1, ?2
                 WHERE ?1 > (SELECT COALESCE(MAX(through_seq), 0) FROM delivery_passes)",
            )?
            .execute(params![through, now])?;
        }
        Change::ReplayDelivery { seq } => {
            tx.prepare_cached("UPDATE deliveries SET status = 'replay' WHERE seq = ?1")?
                .execute([seq])?;
        }
        Change::Unschedule {
            run_id,
            stage_id,
            kind,
        } => {
            tx.prepare_cached(
                "DELETE FROM tasks WHERE run_id = ?1 AND stage_id = ?2 AND kind = ?3",
            )?
            .execute(params![run_id, stage_id, kind.as_str()])?;
        }
        Change::Report { key, due_at } => outbox::want(tx, key, *due_at)?,
        Change::ReportDone { key, version } => outbox::done(tx, key, *version)?,
        Change::ReportRetry {
            key,
            version,
            due_at,
            tries,
            first_try_at,
        } => outbox::retry(tx, key, *version, *due_at, *tries, *first_try_at)?,
        Change::ReportRef {
            run_id,
            source,
            reference,
        } => outbox::put_ref(tx, run_id, source, reference)?,
        Change::RelayEnqueue(message) => relay::enqueue(tx, message)?,
        Change::RelayAttempt { attempt, next } => relay::attempt(tx, attempt, next)?,
        Change::RelayPostpone { key, due_at } => relay::postpone(tx, key, *due_at)?,
        Change::RelayTargetDisabled {
            relay: name,
            target,
            at,
            reason,
        } => relay::disable_target(tx, name, target, *at, reason)?,
    }
    Ok(None)
}

/// [`Change::Fence`]: bumps the run's version if it is still `version`, and checks the task
/// still carries the claim's token; refuses the whole commit otherwise.
fn fence(tx: &Transaction<'_>, run_id: &str, version: i64, lease: Option<TaskLease>) -> Result<()> {
    let bumped = tx
        .prepare_cached("UPDATE runs SET version = version + 1 WHERE id = ?1 AND version = ?2")?
        .execute(params![run_id, version])?;
    if bumped == 0 {
        return Err(StoreError::Fenced(format!(
            "run `{run_id}` is no longer at version {version}"
        )));
    }
    if let Some(lease) = lease {
        let held = tx
            .prepare_cached("SELECT 1 FROM tasks WHERE id = ?1 AND lease_token = ?2")?
            .query_row(params![lease.id, lease.token], |_| Ok(()))
            .optional()?
            .is_some();
        if !held {
            return Err(StoreError::Fenced(format!(
                "task {} of run `{run_id}` is no longer claimed under token {}",
                lease.id, lease.token
            )));
        }
    }
    Ok(())
}
