//! The [`Store`] trait for [`PostgresStore`]: claims and reads.

use std::time::Instant;

use async_trait::async_trait;
use baton_core::{RunStatus, StageStatus};
use serde_json::Value;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{PROBE_TIMEOUT, PROBE_TTL, PostgresStore, pg_error};
use crate::listing;
use crate::*;

/// The columns [`task_from_row`] reads.
pub(super) const TASK_COLUMNS: &str =
    "id, version, lease_token, run_id, stage_id, kind, attempt, due_at";

fn corrupt(what: &str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what: what.to_owned(),
        detail: detail.to_string(),
    }
}

/// Reads a task row ([`TASK_COLUMNS`]).
pub(super) fn task_from_row(row: &Row) -> Result<Task> {
    let kind: String = row.try_get("kind").map_err(pg_error)?;
    let kind = TaskKind::parse(&kind).ok_or_else(|| corrupt("tasks.kind", kind))?;
    Ok(Task {
        id: row.try_get("id").map_err(pg_error)?,
        lease: row.try_get("lease_token").map_err(pg_error)?,
        version: row.try_get("version").map_err(pg_error)?,
        run_id: row.try_get("run_id").map_err(pg_error)?,
        stage_id: row.try_get("stage_id").map_err(pg_error)?,
        kind,
        attempt: row.try_get::<_, i32>("attempt").map_err(pg_error)? as u32,
        due_at: row.try_get("due_at").map_err(pg_error)?,
    })
}

fn json_col<T: serde::de::DeserializeOwned>(row: &Row, column: &str) -> Result<Option<T>> {
    let text: Option<String> = row.try_get(column).map_err(pg_error)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(column, e)))
        .transpose()
}

fn header_from_row(row: &Row) -> Result<RunHeader> {
    let status: String = row.try_get("status").map_err(pg_error)?;
    Ok(RunHeader {
        id: row.try_get("id").map_err(pg_error)?,
        workflow: row.try_get("workflow").map_err(pg_error)?,
        status: RunStatus::parse(&status).ok_or_else(|| corrupt("runs.status", status))?,
        cancel_requested: row.try_get("cancel_requested").map_err(pg_error)?,
        message: row.try_get("message").map_err(pg_error)?,
        created_at: row.try_get("created_at").map_err(pg_error)?,
        started_at: row.try_get("started_at").map_err(pg_error)?,
        finished_at: row.try_get("finished_at").map_err(pg_error)?,
    })
}

fn stage_status(row: &Row) -> Result<StageStatus> {
    let status: String = row.try_get("status").map_err(pg_error)?;
    StageStatus::parse(&status).ok_or_else(|| corrupt("stages.status", status))
}

fn stage_from_row(row: &Row) -> Result<StageRecord> {
    let phase: Option<String> = row.try_get("phase").map_err(pg_error)?;
    Ok(StageRecord {
        run_id: row.try_get("run_id").map_err(pg_error)?,
        stage_id: row.try_get("stage_id").map_err(pg_error)?,
        position: row.try_get::<_, i32>("position").map_err(pg_error)? as u32,
        status: stage_status(row)?,
        reason: row.try_get("reason").map_err(pg_error)?,
        message: row.try_get("message").map_err(pg_error)?,
        attempt: row.try_get::<_, i32>("attempt").map_err(pg_error)? as u32,
        phase: phase.as_deref().and_then(Phase::parse),
        input: json_col(row, "input")?,
        external: json_col(row, "external")?,
        outputs: json_col(row, "outputs")?,
        signal: json_col(row, "signal")?,
        started_at: row.try_get("started_at").map_err(pg_error)?,
        finished_at: row.try_get("finished_at").map_err(pg_error)?,
    })
}

fn attempt_from_row(row: &Row) -> Result<AttemptRecord> {
    Ok(AttemptRecord {
        run_id: row.try_get("run_id").map_err(pg_error)?,
        stage_id: row.try_get("stage_id").map_err(pg_error)?,
        attempt: row.try_get::<_, i32>("attempt").map_err(pg_error)? as u32,
        status: stage_status(row)?,
        reason: row.try_get("reason").map_err(pg_error)?,
        message: row.try_get("message").map_err(pg_error)?,
        external: json_col(row, "external")?,
        started_at: row.try_get("started_at").map_err(pg_error)?,
        finished_at: row.try_get("finished_at").map_err(pg_error)?,
    })
}

/// A delivery as people see it: a replay waiting is shown as received.
const DELIVERY_COLUMNS: &str = "seq, source, delivery_id, event, headers, body, received_at,
    CASE WHEN status = 'replay' THEN 'received' ELSE status END AS status,
    runs, message, processed_at";

fn delivery_from_row(row: &Row) -> Result<DeliveryRecord> {
    let body: String = row.try_get("body").map_err(pg_error)?;
    Ok(DeliveryRecord {
        id: row.try_get("seq").map_err(pg_error)?,
        source: row.try_get("source").map_err(pg_error)?,
        delivery_id: row.try_get("delivery_id").map_err(pg_error)?,
        event: row.try_get("event").map_err(pg_error)?,
        headers: json_col(row, "headers")?.unwrap_or(Value::Null),
        // Bodies were checked to be JSON before they were stored; keep text that is not.
        body: serde_json::from_str(&body).unwrap_or(Value::String(body)),
        received_at: row.try_get("received_at").map_err(pg_error)?,
        status: row.try_get("status").map_err(pg_error)?,
        runs: json_col(row, "runs")?.unwrap_or_default(),
        message: row.try_get("message").map_err(pg_error)?,
        processed_at: row.try_get("processed_at").map_err(pg_error)?,
    })
}

/// A delivery as people see it, without headers and body.
const SUMMARY_COLUMNS: &str = "seq, source, delivery_id, event, received_at,
    CASE WHEN status = 'replay' THEN 'received' ELSE status END AS status,
    runs, message, processed_at";

fn summary_from_row(row: &Row) -> Result<DeliverySummary> {
    Ok(DeliverySummary {
        id: row.try_get("seq").map_err(pg_error)?,
        source: row.try_get("source").map_err(pg_error)?,
        delivery_id: row.try_get("delivery_id").map_err(pg_error)?,
        event: row.try_get("event").map_err(pg_error)?,
        received_at: row.try_get("received_at").map_err(pg_error)?,
        status: row.try_get("status").map_err(pg_error)?,
        runs: json_col(row, "runs")?.unwrap_or_default(),
        message: row.try_get("message").map_err(pg_error)?,
        processed_at: row.try_get("processed_at").map_err(pg_error)?,
    })
}

/// Reads a [`RunListing`] ([`listing::RUN_LISTING_COLUMNS`]).
fn listing_from_row(row: &Row) -> Result<RunListing> {
    Ok(RunListing {
        header: header_from_row(row)?,
        trigger: TriggerInfo {
            source: row.try_get("trigger_source").map_err(pg_error)?,
            event: row.try_get("trigger_event").map_err(pg_error)?,
            delivery_id: row.try_get("trigger_delivery").map_err(pg_error)?,
        },
        delivery: row.try_get("delivery").map_err(pg_error)?,
        commit: row.try_get("commit_sha").map_err(pg_error)?,
    })
}

/// A page size as PostgreSQL takes it ([`listing::page_limit`]).
pub(super) fn page_limit(asked: u32) -> i64 {
    i64::from(listing::page_limit(asked))
}

impl PostgresStore {
    /// Runs `sql` (prepared once per connection) and returns its rows.
    async fn rows(&self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
        client.query(&statement, args).await.map_err(pg_error)
    }

    /// A page of deliveries: `columns` of the rows `filter` picks.
    async fn deliveries_page(&self, filter: &DeliveryFilter, columns: &str) -> Result<Vec<Row>> {
        let sql = listing::deliveries_page_sql(
            columns,
            "deliveries",
            filter.source.is_some(),
            filter.before.is_some(),
            '$',
        );
        let (limit, offset) = (page_limit(filter.limit), i64::from(filter.offset));
        let mut args: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if let Some(source) = &filter.source {
            args.push(source);
        }
        if let Some(before) = &filter.before {
            args.push(before);
        }
        args.push(&limit);
        args.push(&offset);
        self.rows(&sql, &args).await
    }

    /// Readiness's probe: `SELECT 1` within [`PROBE_TIMEOUT`].
    async fn probe(&self) -> Result<()> {
        let probe = async {
            let client = self.client().await?;
            client.query_one("SELECT 1", &[]).await.map_err(pg_error)?;
            Ok(())
        };
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable {
                detail: format!("no answer from PostgreSQL within {PROBE_TIMEOUT:?}"),
            }),
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn commit(&self, changes: Vec<Change>) -> Result<Vec<Task>> {
        self.commit_impl(changes).await
    }

    /// Claims with `SKIP LOCKED`, each task under a new token, and keeps a run to one
    /// replica: a task whose run has another task under a live lease waits, and so does one
    /// whose run row is locked (a claim or a fenced commit of it under way elsewhere), which
    /// keeps two concurrent claims from taking two tasks of one run. Fencing stays what
    /// makes a stale write impossible; this only keeps it rare.
    async fn claim_due(&self, now: Millis, limit: u32, lease_until: Millis) -> Result<Vec<Task>> {
        let sql = format!(
            "WITH due AS (
                 SELECT t.id FROM tasks t JOIN runs r ON r.id = t.run_id
                 WHERE t.due_at <= $1 AND (t.lease_until IS NULL OR t.lease_until < $1)
                   AND NOT EXISTS (SELECT 1 FROM tasks o WHERE o.run_id = t.run_id
                                   AND o.id <> t.id AND o.lease_until >= $1)
                 ORDER BY t.due_at LIMIT $2
                 FOR UPDATE OF t, r SKIP LOCKED)
             UPDATE tasks SET lease_until = $3, lease_token = nextval('lease_tokens')
             FROM due WHERE tasks.id = due.id
             RETURNING {}",
            TASK_COLUMNS
                .split(", ")
                .map(|c| format!("tasks.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let rows = self
            .rows(&sql, &[&now, &i64::from(limit), &lease_until])
            .await?;
        let mut tasks = rows.iter().map(task_from_row).collect::<Result<Vec<_>>>()?;
        tasks.sort_by_key(|t| (t.due_at, t.id));
        Ok(tasks)
    }

    /// A lease that ended counts as none: its task is due again for any replica.
    async fn next_due(&self) -> Result<Option<Millis>> {
        let rows = self
            .rows(
                "SELECT MIN(CASE WHEN lease_until IS NULL THEN due_at
                                 ELSE GREATEST(due_at, lease_until + 1) END) FROM tasks",
                &[],
            )
            .await?;
        rows[0].try_get(0).map_err(pg_error)
    }

    /// Clears nothing: the leases belong to every replica, and end by expiry.
    async fn release_leases(&self) -> Result<()> {
        Ok(())
    }

    async fn load_run(&self, run_id: &str) -> Result<Option<RunSnapshot>> {
        let client = self.client().await?;
        let (run, stages, attempts) = futures::try_join!(
            client.prepare_cached("SELECT * FROM runs WHERE id = $1"),
            client.prepare_cached("SELECT * FROM stages WHERE run_id = $1 ORDER BY position"),
            client.prepare_cached(
                "SELECT * FROM attempts WHERE run_id = $1 ORDER BY stage_id, attempt"
            ),
        )
        .map_err(pg_error)?;
        let args: [&(dyn ToSql + Sync); 1] = [&run_id];
        let (run, stages, attempts) = futures::try_join!(
            client.query_opt(&run, &args),
            client.query(&stages, &args),
            client.query(&attempts, &args),
        )
        .map_err(pg_error)?;
        let Some(row) = run else {
            return Ok(None);
        };
        let text = |column: &str| -> Result<String> { row.try_get(column).map_err(pg_error) };
        let payload = RunPayload {
            spec: serde_json::from_str(&text("spec")?).map_err(|e| corrupt("runs.spec", e))?,
            event: serde_json::from_str(&text("event")?).map_err(|e| corrupt("runs.event", e))?,
            trigger: serde_json::from_str(&text("trigger_info")?)
                .map_err(|e| corrupt("runs.trigger_info", e))?,
        };
        Ok(Some(RunSnapshot {
            version: row.try_get("version").map_err(pg_error)?,
            header: header_from_row(&row)?,
            payload,
            stages: stages.iter().map(stage_from_row).collect::<Result<_>>()?,
            attempts: attempts
                .iter()
                .map(attempt_from_row)
                .collect::<Result<_>>()?,
        }))
    }

    async fn unfinished_runs(&self) -> Result<Vec<String>> {
        self.rows(
            "SELECT id FROM runs WHERE status NOT IN ('succeeded', 'failed', 'cancelled') ORDER BY created_at, id",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0).map_err(pg_error))
        .collect()
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunListing>> {
        let sql = listing::runs_page_sql(filter, '$');
        let status = filter.status.map(RunStatus::as_str);
        let (limit, offset) = (page_limit(filter.limit), i64::from(filter.offset));
        let mut args: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if let Some(workflow) = &filter.workflow {
            args.push(workflow);
        }
        if let Some(status) = &status {
            args.push(status);
        }
        if let Some(cursor) = &filter.before {
            args.push(&cursor.created_at);
            args.push(&cursor.id);
        }
        args.push(&limit);
        args.push(&offset);
        self.rows(&sql, &args)
            .await?
            .iter()
            .map(listing_from_row)
            .collect()
    }

    async fn ping(&self) -> Result<()> {
        self.probe().await
    }

    /// The outcome of a `SELECT 1` at most [`PROBE_TTL`] old, so readiness turns within
    /// seconds of the database going or coming back, at one query a second.
    async fn writable(&self) -> Result<()> {
        let cached = self.probe.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((at, outcome)) = cached
            && at.elapsed() < PROBE_TTL
        {
            return match outcome {
                None => Ok(()),
                Some(detail) => Err(StoreError::Unavailable { detail }),
            };
        }
        let outcome = self.probe().await;
        let kept = outcome.as_ref().err().map(ToString::to_string);
        *self.probe.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), kept));
        outcome
    }

    async fn insert_delivery(&self, delivery: NewDelivery) -> Result<Intake> {
        self.intake.one(delivery).await
    }

    async fn insert_deliveries(&self, deliveries: Vec<NewDelivery>) -> Result<Vec<Intake>> {
        if deliveries.is_empty() {
            return Ok(Vec::new());
        }
        self.intake.many(deliveries).await
    }

    async fn pending_deliveries(&self, limit: u32) -> Result<Vec<PendingDelivery>> {
        self.pending_deliveries_impl(limit).await
    }

    fn delivery_feed(&self) -> Option<DeliveryFeed> {
        self.delivery_feed_impl()
    }

    async fn load_delivery(&self, id: i64) -> Result<Option<DeliveryRecord>> {
        let sql = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE seq = $1");
        self.rows(&sql, &[&id])
            .await?
            .first()
            .map(delivery_from_row)
            .transpose()
    }

    async fn list_deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryRecord>> {
        self.deliveries_page(filter, DELIVERY_COLUMNS)
            .await?
            .iter()
            .map(delivery_from_row)
            .collect()
    }

    async fn list_delivery_summaries(
        &self,
        filter: &DeliveryFilter,
    ) -> Result<Vec<DeliverySummary>> {
        self.deliveries_page(filter, SUMMARY_COLUMNS)
            .await?
            .iter()
            .map(summary_from_row)
            .collect()
    }

    async fn claim_reports(
        &self,
        now: Millis,
        limit: u32,
        lease_until: Millis,
    ) -> Result<Vec<DueReport>> {
        self.claim_reports_impl(now, limit, lease_until).await
    }

    async fn next_report_due(&self, now: Millis) -> Result<Option<Millis>> {
        self.next_report_due_impl(now).await
    }

    /// Clears nothing: the leases belong to every replica, and end by expiry.
    async fn release_report_leases(&self) -> Result<()> {
        Ok(())
    }

    async fn report_ref(&self, run_id: &str, source: &str) -> Result<Option<String>> {
        self.report_ref_impl(run_id, source).await
    }

    fn shared(&self) -> bool {
        true
    }

    async fn holds(&self, task: &Task) -> Result<bool> {
        let rows = self
            .rows(
                "SELECT 1 FROM tasks WHERE id = $1 AND lease_token = $2",
                &[&task.id, &task.lease],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    async fn renew(&self, leases: &[TaskLease], until: Millis) -> Result<Vec<i64>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = leases.iter().map(|l| l.id).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.token).collect();
        let renewed: std::collections::HashSet<i64> = self
            .rows(
                "UPDATE tasks SET lease_until = GREATEST(COALESCE(lease_until, $3), $3)
                 FROM unnest($1::BIGINT[], $2::BIGINT[]) AS held(id, token)
                 WHERE tasks.id = held.id AND tasks.lease_token = held.token
                 RETURNING tasks.id",
                &[&ids, &tokens, &until],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0).map_err(pg_error))
            .collect::<Result<_>>()?;
        Ok(ids.into_iter().filter(|id| !renewed.contains(id)).collect())
    }

    fn wakes(&self, work: Work) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.wakes.subscribe(work))
    }

    fn relays(&self) -> Option<&dyn RelayStore> {
        Some(self)
    }
}
