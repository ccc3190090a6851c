//! [`Store::commit`]: every [`Change`] of a commit in one transaction, in order.

use baton_core::context::commit_of;
use deadpool_postgres::Transaction;
use serde_json::Value;

use super::queries::{TASK_COLUMNS, task_from_row};
use super::{PostgresStore, notify, outbox, pg_error, relay};
use crate::*;

/// A task scheduled without a claim counts as handed over (to whichever replica claims it
/// first) when it is due within this long: the others are woken for it.
const WAKE_WITHIN: Millis = 1_000;

/// What a commit's changes leave to do once it has committed.
#[derive(Default)]
struct Staged {
    /// Deliveries marked matched: no longer held.
    released: Vec<i64>,
    /// What relay changes claimed.
    relay: relay::Staged,
    /// Work handed over, to `NOTIFY` once (the notification is sent at commit).
    wake: Vec<Work>,
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

impl PostgresStore {
    /// [`Store::commit`].
    pub(super) async fn commit_impl(&self, changes: Vec<Change>) -> Result<Vec<Task>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let mut staged = Staged::default();
        let mut claimed = Vec::new();
        for change in &changes {
            if let Some(task) = self.apply(&tx, change, &mut staged).await? {
                claimed.push(task);
            }
        }
        staged.wake.sort_unstable_by_key(|w| w.as_str());
        staged.wake.dedup();
        for work in &staged.wake {
            notify(&tx, *work).await?;
        }
        tx.commit().await.map_err(pg_error)?;
        self.relay_leases.committed(staged.relay);
        if !staged.released.is_empty() {
            let mut held = self
                .deliveries
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for seq in &staged.released {
                held.remove(seq);
            }
        }
        Ok(claimed)
    }

    /// Forgets those of `seqs` that another process has claimed since this one was handed
    /// them: they are that process's to match now. Without this a matching pass that was
    /// fenced would hold them still, and every later pass up to them would be fenced again
    /// while this process kept its other deliveries claimed.
    async fn forget_taken_deliveries(&self, tx: &Transaction<'_>, seqs: &[i64]) -> Result<()> {
        let taken = tx
            .query(
                &tx.prepare_cached(
                    "SELECT seq FROM deliveries WHERE seq = ANY($1)
                     AND (claim_token IS NULL OR claim_token NOT IN ($2, $3))",
                )
                .await
                .map_err(pg_error)?,
                &[&seqs, &self.deliveries.token, &self.deliveries.taken],
            )
            .await
            .map_err(pg_error)?;
        let mut held = self
            .deliveries
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for row in &taken {
            held.remove(&row.try_get::<_, i64>(0).map_err(pg_error)?);
        }
        Ok(())
    }

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        change: &Change,
        staged: &mut Staged,
    ) -> Result<Option<Task>> {
        let run = |sql: &'static str| async move { tx.prepare_cached(sql).await.map_err(pg_error) };
        match change {
            Change::Fence {
                run_id,
                version,
                lease,
            } => {
                let bumped = tx
                    .execute(
                        &run(
                            "UPDATE runs SET version = version + 1 WHERE id = $1 AND version = $2",
                        )
                        .await?,
                        &[run_id, version],
                    )
                    .await
                    .map_err(pg_error)?;
                if bumped != 1 {
                    return Err(StoreError::Fenced(format!(
                        "run {run_id} is no longer at version {version}: another process wrote it"
                    )));
                }
                if let Some(lease) = lease {
                    let held = tx
                        .query_opt(
                            &run(
                                "SELECT 1 FROM tasks WHERE id = $1 AND lease_token = $2 FOR UPDATE",
                            )
                            .await?,
                            &[&lease.id, &lease.token],
                        )
                        .await
                        .map_err(pg_error)?;
                    if held.is_none() {
                        return Err(StoreError::Fenced(format!(
                            "task {} of run {run_id} is no longer claimed by this process (token {})",
                            lease.id, lease.token
                        )));
                    }
                }
            }
            Change::InsertRun(header, payload) => {
                tx.execute(
                    &run("INSERT INTO runs (id, workflow, status, spec, event, trigger_info, cancel_requested, message, created_at, started_at, finished_at,
                                            trigger_source, trigger_event, trigger_delivery, commit_sha)
                          VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)").await?,
                    &[
                        &header.id,
                        &header.workflow,
                        &header.status.as_str(),
                        &payload.spec.to_string(),
                        &payload.event.to_string(),
                        &json(&payload.trigger),
                        &header.cancel_requested,
                        &header.message,
                        &header.created_at,
                        &header.started_at,
                        &header.finished_at,
                        &payload.trigger.source,
                        &payload.trigger.event,
                        &payload.trigger.delivery_id,
                        &commit_of(&payload.event),
                    ],
                )
                .await
                .map_err(pg_error)?;
            }
            Change::PutRun(header) => {
                tx.execute(
                    &run("UPDATE runs SET status = $2, cancel_requested = $3, message = $4, started_at = $5, finished_at = $6 WHERE id = $1").await?,
                    &[
                        &header.id,
                        &header.status.as_str(),
                        &header.cancel_requested,
                        &header.message,
                        &header.started_at,
                        &header.finished_at,
                    ],
                )
                .await
                .map_err(pg_error)?;
            }
            Change::PutStage(s) => {
                tx.execute(
                    &run("INSERT INTO stages (run_id, stage_id, position, status, reason, message, attempt, phase, input, external, outputs, signal, started_at, finished_at)
                          VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                          ON CONFLICT (run_id, stage_id) DO UPDATE SET
                              position = excluded.position, status = excluded.status, reason = excluded.reason,
                              message = excluded.message, attempt = excluded.attempt, phase = excluded.phase,
                              input = excluded.input, external = excluded.external, outputs = excluded.outputs,
                              signal = excluded.signal, started_at = excluded.started_at,
                              finished_at = excluded.finished_at").await?,
                    &[
                        &s.run_id,
                        &s.stage_id,
                        &(s.position as i32),
                        &s.status.as_str(),
                        &s.reason,
                        &s.message,
                        &(s.attempt as i32),
                        &s.phase.map(Phase::as_str),
                        &s.input.as_ref().map(Value::to_string),
                        &s.external.as_ref().map(json),
                        &s.outputs.as_ref().map(Value::to_string),
                        &s.signal.as_ref().map(Value::to_string),
                        &s.started_at,
                        &s.finished_at,
                    ],
                )
                .await
                .map_err(pg_error)?;
            }
            Change::PutAttempt(a) => {
                tx.execute(
                    &run("INSERT INTO attempts (run_id, stage_id, attempt, status, reason, message, external, started_at, finished_at)
                          VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                          ON CONFLICT (run_id, stage_id, attempt) DO UPDATE SET
                              status = excluded.status, reason = excluded.reason, message = excluded.message,
                              external = excluded.external, started_at = excluded.started_at,
                              finished_at = excluded.finished_at").await?,
                    &[
                        &a.run_id,
                        &a.stage_id,
                        &(a.attempt as i32),
                        &a.status.as_str(),
                        &a.reason,
                        &a.message,
                        &a.external.as_ref().map(json),
                        &a.started_at,
                        &a.finished_at,
                    ],
                )
                .await
                .map_err(pg_error)?;
            }
            Change::Schedule(t) => {
                // A claim gets a new token; a schedule without one clears the old, so the
                // task's earlier holder no longer holds it.
                let sql = format!(
                    "INSERT INTO tasks (run_id, stage_id, kind, attempt, due_at, lease_until, version, lease_token)
                     VALUES ($1, $2, $3, $4, $5, $6, 0,
                             CASE WHEN $6::BIGINT IS NULL THEN 0 ELSE nextval('lease_tokens') END)
                     ON CONFLICT (run_id, stage_id, kind) DO UPDATE SET
                         attempt = excluded.attempt, due_at = excluded.due_at,
                         lease_until = excluded.lease_until, version = tasks.version + 1,
                         lease_token = excluded.lease_token
                     RETURNING {TASK_COLUMNS}"
                );
                let statement = tx.prepare_cached(&sql).await.map_err(pg_error)?;
                let row = tx
                    .query_one(
                        &statement,
                        &[
                            &t.run_id,
                            &t.stage_id,
                            &t.kind.as_str(),
                            &(t.attempt as i32),
                            &t.due_at,
                            &t.claim_until,
                        ],
                    )
                    .await
                    .map_err(pg_error)?;
                let task = task_from_row(&row)?;
                if t.claim_until.is_some() {
                    return Ok(Some(task));
                }
                if t.due_at <= now_millis() + WAKE_WITHIN {
                    staged.wake.push(Work::Tasks);
                }
            }
            Change::Done { id, version } => {
                tx.execute(
                    &run("DELETE FROM tasks WHERE id = $1 AND version = $2").await?,
                    &[id, version],
                )
                .await
                .map_err(pg_error)?;
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
                // Runs of a replay are appended to those of earlier passes.
                let marked = tx
                    .execute(
                        &run("UPDATE deliveries SET status = $3, processed_at = $4, message = $5,
                                  runs = CASE WHEN $6 = '[]' THEN runs ELSE (runs::jsonb || $6::jsonb)::text END,
                                  claim_until = NULL
                              WHERE seq = $1 AND claim_token IN ($2, $7)").await?,
                        &[
                            seq,
                            &self.deliveries.token,
                            &status,
                            now,
                            message,
                            &json(runs),
                            &self.deliveries.taken,
                        ],
                    )
                    .await
                    .map_err(pg_error)?;
                if marked != 1 {
                    self.forget_taken_deliveries(tx, &[*seq]).await?;
                    return Err(StoreError::Fenced(format!(
                        "delivery {seq} is no longer claimed by this process"
                    )));
                }
                staged.released.push(*seq);
            }
            Change::DeliveriesMatched { through, now } => {
                let held: Vec<i64> = self
                    .deliveries
                    .held
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .range(..=*through)
                    .copied()
                    .collect();
                if held.is_empty() {
                    return Ok(None);
                }
                let marked = tx
                    .execute(
                        &run("UPDATE deliveries SET
                                  status = CASE WHEN status = 'received' THEN 'processed' ELSE status END,
                                  processed_at = CASE WHEN status = 'received' THEN $3 ELSE processed_at END,
                                  claim_until = NULL
                              WHERE seq = ANY($1) AND claim_token IN ($2, $4)").await?,
                        &[&held, &self.deliveries.token, now, &self.deliveries.taken],
                    )
                    .await
                    .map_err(pg_error)?;
                if marked != held.len() as u64 {
                    self.forget_taken_deliveries(tx, &held).await?;
                    return Err(StoreError::Fenced(format!(
                        "{} of the deliveries up to {through} were claimed by another process",
                        held.len() as u64 - marked
                    )));
                }
                staged.released.extend(held);
            }
            Change::ReplayDelivery { seq } => {
                tx.execute(
                    &run("UPDATE deliveries SET status = 'replay', claim_until = NULL WHERE seq = $1")
                        .await?,
                    &[seq],
                )
                .await
                .map_err(pg_error)?;
                staged.wake.push(Work::Deliveries);
            }
            Change::Unschedule {
                run_id,
                stage_id,
                kind,
            } => {
                tx.execute(
                    &run("DELETE FROM tasks WHERE run_id = $1 AND stage_id = $2 AND kind = $3")
                        .await?,
                    &[run_id, stage_id, &kind.as_str()],
                )
                .await
                .map_err(pg_error)?;
            }
            Change::Report { .. }
            | Change::ReportDone { .. }
            | Change::ReportRetry { .. }
            | Change::ReportRef { .. } => outbox::apply(tx, change).await?,
            Change::RelayEnqueue(_)
            | Change::RelayAttempt { .. }
            | Change::RelayPostpone { .. }
            | Change::RelayTargetDisabled { .. } => {
                relay::apply(tx, change, &self.relay_leases, &mut staged.relay).await?;
            }
        }
        Ok(None)
    }
}
