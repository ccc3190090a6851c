//! The [`Store`] trait for [`SqliteStore`]: writes go to the writer, reads to the pool.

use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use rusqlite::{OptionalExtension, Row, params, params_from_iter};

use super::health::Verdict;
use super::rows::{
    attempt_from_row, corrupt, delivery_from_row, header_from_row, listing_from_row, rows,
    stage_from_row, summary_from_row,
};
use super::writer::{Answer, Op};
use super::{FEED_CAPACITY, SqliteStore};
use crate::listing;
use crate::*;

#[async_trait]
impl Store for SqliteStore {
    async fn commit(&self, changes: Vec<Change>) -> Result<Vec<Task>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        self.send_for_tasks(Op::Commit(changes)).await
    }

    async fn claim_due(&self, now: Millis, limit: u32, lease_until: Millis) -> Result<Vec<Task>> {
        self.send_for_tasks(Op::Claim {
            now,
            limit,
            lease_until,
        })
        .await
    }

    async fn next_due(&self) -> Result<Option<Millis>> {
        self.read(|conn| {
            Ok(conn.query_row(
                "SELECT MIN(due_at) FROM tasks WHERE lease_until IS NULL",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn release_leases(&self) -> Result<()> {
        self.send_for_tasks(Op::ReleaseLeases).await.map(|_| ())
    }

    async fn load_run(&self, run_id: &str) -> Result<Option<RunSnapshot>> {
        let run_id = run_id.to_owned();
        self.read(move |conn| {
            let Some((header, version, spec, event, trigger)) = conn
                .prepare_cached("SELECT * FROM runs WHERE id = ?1")?
                .query_row([&run_id], |row| {
                    Ok((
                        header_from_row(row),
                        row.get::<_, i64>("version")?,
                        row.get::<_, String>("spec")?,
                        row.get::<_, String>("event")?,
                        row.get::<_, String>("trigger_info")?,
                    ))
                })
                .optional()?
            else {
                return Ok(None);
            };
            let payload = RunPayload {
                spec: serde_json::from_str(&spec).map_err(|e| corrupt("runs.spec", e))?,
                event: serde_json::from_str(&event).map_err(|e| corrupt("runs.event", e))?,
                trigger: serde_json::from_str(&trigger)
                    .map_err(|e| corrupt("runs.trigger_info", e))?,
            };
            let stages = rows(
                conn,
                "SELECT * FROM stages WHERE run_id = ?1 ORDER BY position",
                [&run_id],
                stage_from_row,
            )?;
            let attempts = rows(
                conn,
                "SELECT * FROM attempts WHERE run_id = ?1 ORDER BY stage_id, attempt",
                [&run_id],
                attempt_from_row,
            )?;
            Ok(Some(RunSnapshot {
                version,
                header: header?,
                payload,
                stages,
                attempts,
            }))
        })
        .await
    }

    async fn unfinished_runs(&self) -> Result<Vec<String>> {
        self.read(|conn| {
            rows(
                conn,
                "SELECT id FROM runs WHERE status NOT IN ('succeeded', 'failed', 'cancelled') ORDER BY created_at",
                [],
                |r| Ok(r.get(0)?),
            )
        })
        .await
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunListing>> {
        let sql = listing::runs_page_sql(filter, '?');
        let mut args: Vec<SqlValue> = Vec::new();
        args.extend(filter.workflow.clone().map(SqlValue::Text));
        args.extend(filter.status.map(|s| SqlValue::Text(s.as_str().to_owned())));
        if let Some(cursor) = &filter.before {
            args.push(SqlValue::Integer(cursor.created_at));
            args.push(SqlValue::Text(cursor.id.clone()));
        }
        args.push(SqlValue::Integer(listing::page_limit(filter.limit).into()));
        args.push(SqlValue::Integer(filter.offset.into()));
        self.read(move |conn| rows(conn, &sql, params_from_iter(args), listing_from_row))
            .await
    }

    async fn ping(&self) -> Result<()> {
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    async fn writable(&self) -> Result<()> {
        match self.health.verdict(std::time::Instant::now()) {
            Verdict::Writes => Ok(()),
            Verdict::Fails(e) => Err(StoreError::Commit(e)),
            Verdict::Probe => {
                #[cfg(test)]
                self.health.probed();
                self.send(Op::Probe).await.map(|_| ())
            }
        }
    }

    async fn insert_delivery(&self, delivery: NewDelivery) -> Result<Intake> {
        match self.send(Op::InsertDelivery(delivery)).await? {
            Answer::Delivery(intake) => Ok(intake),
            _ => Err(corrupt(
                "deliveries",
                "the writer answered a delivery with something else",
            )),
        }
    }

    async fn insert_deliveries(&self, deliveries: Vec<NewDelivery>) -> Result<Vec<Intake>> {
        if deliveries.is_empty() {
            return Ok(Vec::new());
        }
        match self.send(Op::InsertDeliveries(deliveries)).await? {
            Answer::Deliveries(intakes) => Ok(intakes),
            _ => Err(corrupt(
                "deliveries",
                "the writer answered deliveries with something else",
            )),
        }
    }

    async fn pending_deliveries(&self, limit: u32) -> Result<Vec<PendingDelivery>> {
        self.read(move |conn| {
            let pending = |row: &Row<'_>| {
                Ok(PendingDelivery {
                    id: row.get(0)?,
                    source: row.get(1)?,
                    delivery_id: row.get(2)?,
                    event: row.get(3)?,
                    body: row.get(4)?,
                    replay: row.get::<_, String>(5)? == "replay",
                    headers: row.get(6)?,
                })
            };
            // Replays first (few, indexed), then the deliveries past the last pass: a range
            // of the table's own key, so no index has to be kept up on every insert.
            rows(
                conn,
                "SELECT * FROM (
                     SELECT seq, source, delivery_id, event, body, status, headers FROM deliveries
                     WHERE status = 'replay' ORDER BY seq LIMIT ?1)
                 UNION ALL
                 SELECT * FROM (
                     SELECT seq, source, delivery_id, event, body, status, headers FROM deliveries
                     WHERE seq > (SELECT COALESCE(MAX(through_seq), 0) FROM delivery_passes)
                       AND status = 'received' ORDER BY seq LIMIT ?1)
                 LIMIT ?1",
                [limit],
                pending,
            )
        })
        .await
    }

    fn delivery_feed(&self) -> Option<DeliveryFeed> {
        let (sender, feed) = feed::channel(FEED_CAPACITY);
        self.feed.set(sender).ok().map(|()| feed)
    }

    async fn load_delivery(&self, id: i64) -> Result<Option<DeliveryRecord>> {
        self.read(move |conn| {
            Ok(rows(
                conn,
                "SELECT * FROM deliveries_seen WHERE seq = ?1",
                [id],
                delivery_from_row,
            )?
            .pop())
        })
        .await
    }

    async fn list_deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryRecord>> {
        self.deliveries_page(filter, "*", delivery_from_row).await
    }

    async fn list_delivery_summaries(
        &self,
        filter: &DeliveryFilter,
    ) -> Result<Vec<DeliverySummary>> {
        let columns = format!(
            "{}, status, processed_at",
            listing::DELIVERY_SUMMARY_COLUMNS
        );
        self.deliveries_page(filter, &columns, summary_from_row)
            .await
    }

    async fn claim_reports(
        &self,
        now: Millis,
        limit: u32,
        lease_until: Millis,
    ) -> Result<Vec<DueReport>> {
        let op = Op::ClaimReports {
            now,
            limit,
            lease_until,
        };
        match self.send(op).await? {
            Answer::Reports(reports) => Ok(reports),
            _ => Err(corrupt(
                "reports",
                "the writer answered a claim of reports with something else",
            )),
        }
    }

    async fn next_report_due(&self, now: Millis) -> Result<Option<Millis>> {
        self.read(move |conn| super::outbox::next_due(conn, now))
            .await
    }

    async fn release_report_leases(&self) -> Result<()> {
        self.send(Op::ReleaseReportLeases).await.map(|_| ())
    }

    async fn report_ref(&self, run_id: &str, source: &str) -> Result<Option<String>> {
        let (run_id, source) = (run_id.to_owned(), source.to_owned());
        self.read(move |conn| super::outbox::load_ref(conn, &run_id, &source))
            .await
    }

    fn relays(&self) -> Option<&dyn RelayStore> {
        Some(self)
    }

    async fn holds(&self, task: &Task) -> Result<bool> {
        let (id, token) = (task.id, task.lease);
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT 1 FROM tasks WHERE id = ?1 AND lease_token = ?2")?
                .query_row(params![id, token], |_| Ok(()))
                .optional()?
                .is_some())
        })
        .await
    }

    async fn renew(&self, leases: &[TaskLease], until: Millis) -> Result<Vec<i64>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let op = Op::Renew {
            leases: leases.to_vec(),
            until,
        };
        match self.send(op).await? {
            Answer::Lost(lost) => Ok(lost),
            _ => Err(corrupt(
                "tasks",
                "the writer answered a renewal with something else",
            )),
        }
    }
}

#[async_trait]
impl RelayStore for SqliteStore {
    async fn claim_relays(
        &self,
        relay: &str,
        target: &str,
        now: Millis,
        limit: u32,
        lease_until: Millis,
        ordered: bool,
    ) -> Result<Vec<DueRelay>> {
        let op = Op::ClaimRelays {
            relay: relay.to_owned(),
            target: target.to_owned(),
            now,
            limit,
            lease_until,
            ordered,
        };
        match self.send(op).await? {
            Answer::Relays(messages) => Ok(messages),
            _ => Err(corrupt(
                "relay_messages",
                "the writer answered a claim of relay messages with something else",
            )),
        }
    }

    async fn next_relay_due(
        &self,
        relay: &str,
        target: &str,
        now: Millis,
    ) -> Result<Option<Millis>> {
        let (relay, target) = (relay.to_owned(), target.to_owned());
        self.read(move |conn| super::relay::next_due(conn, &relay, &target, now))
            .await
    }

    async fn release_relay_leases(&self) -> Result<()> {
        self.send(Op::ReleaseRelayLeases).await.map(|_| ())
    }

    async fn relay_targets(&self) -> Result<Vec<RelayTargetStats>> {
        self.read(super::relay::targets).await
    }

    async fn relay_oldest_pending(&self) -> Result<Vec<(String, String, Millis)>> {
        self.read(super::relay::oldest_pending).await
    }

    async fn list_relay_messages(
        &self,
        filter: &RelayMessageFilter,
    ) -> Result<Vec<RelayMessageRecord>> {
        let limit = listing::page_limit(filter.limit);
        let filter = filter.clone();
        self.read(move |conn| super::relay::list(conn, &filter, limit))
            .await
    }

    async fn load_relay_message(
        &self,
        key: &str,
    ) -> Result<Option<(RelayMessageRecord, Vec<RelayAttemptRecord>)>> {
        let key = key.to_owned();
        self.read(move |conn| super::relay::load(conn, &key)).await
    }

    async fn replay_relays(&self, replay: &RelayReplay, now: Millis) -> Result<u64> {
        let op = Op::ReplayRelays {
            replay: replay.clone(),
            now,
        };
        match self.send(op).await? {
            Answer::Replayed(count) => Ok(count),
            _ => Err(corrupt(
                "relay_messages",
                "the writer answered a replay of relay messages with something else",
            )),
        }
    }
}

impl SqliteStore {
    /// A page of deliveries as people see them (`deliveries_seen`): `columns`, each row
    /// read with `from_row`.
    async fn deliveries_page<T: Send + 'static>(
        &self,
        filter: &DeliveryFilter,
        columns: &str,
        from_row: fn(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let sql = listing::deliveries_page_sql(
            columns,
            "deliveries_seen",
            filter.source.is_some(),
            filter.before.is_some(),
            '?',
        );
        let mut args: Vec<SqlValue> = Vec::new();
        args.extend(filter.source.clone().map(SqlValue::Text));
        args.extend(filter.before.map(SqlValue::Integer));
        args.push(SqlValue::Integer(listing::page_limit(filter.limit).into()));
        args.push(SqlValue::Integer(filter.offset.into()));
        self.read(move |conn| rows(conn, &sql, params_from_iter(args), from_row))
            .await
    }
}
