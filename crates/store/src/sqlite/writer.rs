//! The writer thread: drains queued operations into one transaction a group (group commit),
//! answers each sender, and feeds stored deliveries to the matcher.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction, params};
use tokio::sync::oneshot;

use super::apply::apply_change;
use super::checkpoint::restart_wal;
use super::health::WriteHealth;
use super::rows::{TASK_COLUMNS, task_from_row};
use crate::inbox;
use crate::*;
use baton_core::outage::Outage;

/// The most batches folded into one transaction.
pub(super) const MAX_GROUP: usize = 512;

/// Commits start at least this far apart, unless a group is [`COMMIT_AT_ONCE`] long.
///
/// Every commit ends in a flush of the WAL, and flushes cost more than the time the writer
/// waits for them: a cloud volume counts them against its IOPS, and on the 2-core VM we
/// measure on they cost the VM host time, which it pays back in pauses of the whole VM (see
/// docs/server.md, "What limits baton"). At 9,000 deliveries/s on 128 connections the writer
/// flushed 1,570-1,810 times a second without a gap, 860-890 with 1 ms; in alternated runs the
/// VM's steal time fell by a third and p99 from 17-40 ms to 11-17 ms, with peaks no lower on
/// that VM (on a faster one the 32-connection peak was lower: see [`COMMIT_AT_ONCE`]).
/// An idle writer commits at once: the gap only holds back, by at most 1 ms, a commit that
/// would follow the last one within it.
pub(super) const MIN_COMMIT_GAP: Duration = Duration::from_millis(1);

/// A group this long commits without waiting out [`MIN_COMMIT_GAP`]: its flush is shared
/// widely enough, and a wait would only add latency.
///
/// It must stay well under the number of senders that wait for their answers: with 32, a
/// closed loop of 32 connections seldom had all 32 queued at once (some are always being
/// parsed), so nearly every commit waited out the gap, and its peak fell to 30,400-31,700/s
/// against 35,000-37,700/s with no gap. With 16, in four alternated pairs of peak runs, the
/// peak was 1-31% higher than with 32; the writer still flushes about 1,000 times a second up
/// to 16,000 deliveries/s (990 against 989 at 9,000/s, 1,044 against 987 at 16,000/s).
pub(super) const COMMIT_AT_ONCE: usize = 16;

pub(super) enum Op {
    Commit(Vec<Change>),
    InsertDelivery(NewDelivery),
    /// Deliveries stored together: applied inside the group's transaction like any
    /// operation, so they are committed (or fail) as one.
    InsertDeliveries(Vec<NewDelivery>),
    Claim {
        now: Millis,
        limit: u32,
        lease_until: Millis,
    },
    ReleaseLeases,
    /// Extends the claims still held (see [`Store::renew`]).
    Renew {
        leases: Vec<TaskLease>,
        until: Millis,
    },
    ClaimReports {
        now: Millis,
        limit: u32,
        lease_until: Millis,
    },
    ReleaseReportLeases,
    /// Leases a target's relay messages (see [`RelayStore::claim_relays`]).
    ClaimRelays {
        relay: String,
        target: String,
        now: Millis,
        limit: u32,
        lease_until: Millis,
        ordered: bool,
    },
    /// Clears every relay message's lease.
    ReleaseRelayLeases,
    /// Makes relay messages pending again (see [`RelayStore::replay_relays`]).
    ReplayRelays {
        replay: RelayReplay,
        now: Millis,
    },
    /// Readiness's test write (see [`probe`]).
    Probe,
    /// Caps the database at this many pages (SQLite's `max_page_count`, never below its size
    /// now), or lifts the cap: a full disk for the tests.
    #[cfg(test)]
    MaxPages(Option<i64>),
}

/// What the writer answers: the tasks a commit claimed, where a delivery went, the
/// reports or relay messages claimed, or how many relay messages a replay selected.
pub(super) enum Answer {
    Tasks(Vec<Task>),
    Delivery(Intake),
    Deliveries(Vec<Intake>),
    Reports(Vec<DueReport>),
    /// The relay messages claimed.
    Relays(Vec<DueRelay>),
    /// How many relay messages a replay made pending again.
    Replayed(u64),
    /// The tasks whose claims were no longer held (a renewal).
    Lost(Vec<i64>),
}

pub(super) type Reply = oneshot::Sender<Result<Answer>>;

/// The size of readiness's probe write: that of a sizeable delivery. A commit that failed on
/// a full disk leaves the WAL file as long as it got, and smaller commits still fit in that
/// room; a probe of a page or two would call such a disk writable.
const PROBE_BYTES: i64 = 64 << 10;

/// The writer's page cache, in KiB.
///
/// A bigger cache costs more than it saves. When a B-tree split renumbers its new pages,
/// SQLite parks one at the lock page's number (262,145 with 4 KiB pages); while the database
/// is under 1 GiB, the commit then walks the cache's whole hash table to drop pages past the
/// end (210 times a second at 22,000 deliveries/s, inside the commit the callers wait for).
/// In alternated runs on a 2-core VM, 16 MiB against 64 MiB: peaks with GitHub's ids
/// 42,600-48,900 against 40,900-44,100/s, with random ids no worse (20,100-29,100 against
/// 20,200-27,000/s).
pub(super) const WRITER_CACHE_KIB: i64 = 16 * 1024;

/// What the writer thread shares with the store's handle.
pub(super) struct WriterShared {
    /// Where stored deliveries go, once the matcher asked for them.
    pub(super) feed: Arc<OnceLock<feed::FeedSender>>,
    /// The checkpointer's request to start the WAL over.
    pub(super) restart_wal: Arc<AtomicBool>,
    /// The last group's outcome, for readiness.
    pub(super) health: Arc<WriteHealth>,
}

pub(super) fn writer_loop(
    mut conn: Connection,
    rx: inbox::Receiver<(Op, Reply)>,
    shared: &WriterShared,
) {
    let mut group: Vec<(Op, Reply)> = Vec::with_capacity(64);
    let mut last_commit = Instant::now();
    let mut restart_outage = Outage::default();
    while rx.gather(
        &mut group,
        COMMIT_AT_ONCE,
        MAX_GROUP,
        last_commit + MIN_COMMIT_GAP,
    ) {
        last_commit = Instant::now();
        let changes_before = conn.total_changes();
        let (committed, results) = match run_group(&mut conn, &group) {
            Ok(results) => (true, results),
            Err(e) => {
                let e = Arc::new(e);
                if !e.cannot_write() {
                    tracing::error!(error = %e, "store commit failed");
                }
                let results = group
                    .iter()
                    .map(|_| Err(StoreError::Commit(e.clone())))
                    .collect();
                (false, results)
            }
        };
        // Only a commit that changed rows wrote to the disk: an empty claim commits nothing
        // and says nothing about space.
        let wrote = committed && conn.total_changes() != changes_before;
        let results = record_outcome(&shared.health, wrote, results);
        for ((op, reply), result) in group.drain(..).zip(results) {
            if let Some(feed) = shared.feed.get() {
                publish_stored(feed, op, &result);
            }
            let _ = reply.send(result);
        }
        if committed && shared.restart_wal.load(Ordering::Relaxed) {
            restart_wal(&conn, &shared.restart_wal, &mut restart_outage);
        }
    }
}

/// Hands the deliveries `op` stored to the matcher: after the commit and in seq order, as
/// the feed's protocol needs.
fn publish_stored(feed: &feed::FeedSender, op: Op, result: &Result<Answer>) {
    let publish = |d: NewDelivery, id: i64| {
        feed.publish(PendingDelivery {
            id,
            source: d.source,
            delivery_id: d.delivery_id,
            event: d.event,
            headers: d.headers,
            body: d.body,
            replay: false,
        });
    };
    match (op, result) {
        (Op::InsertDelivery(d), Ok(Answer::Delivery(Intake::Stored(id)))) => publish(d, *id),
        (Op::InsertDeliveries(batch), Ok(Answer::Deliveries(intakes))) => {
            for (d, intake) in batch.into_iter().zip(intakes) {
                if let Intake::Stored(id) = intake {
                    publish(d, *id);
                }
            }
        }
        _ => {}
    }
}

/// Tells readiness how the group went (`wrote`: it committed changes), and logs a failure
/// to write when it starts and when it ends (a full disk fails every group: a line per group
/// would flood the log).
///
/// A failure to write is shared by the results it failed, so the reason readiness answers
/// is the one the callers got.
fn record_outcome(
    health: &WriteHealth,
    wrote: bool,
    results: Vec<Result<Answer>>,
) -> Vec<Result<Answer>> {
    let mut failure: Option<Arc<StoreError>> = None;
    // Collected in place: the same element type reuses the vector.
    let results = results
        .into_iter()
        .map(|result| match result {
            Err(e) if e.cannot_write() => {
                let shared = match e {
                    StoreError::Commit(shared) => shared,
                    e => Arc::new(e),
                };
                failure.get_or_insert_with(|| shared.clone());
                Err(StoreError::Commit(shared))
            }
            other => other,
        })
        .collect();
    match failure {
        Some(e) => {
            let starts = health.failed(e.clone());
            if starts {
                tracing::error!(
                    error = %e,
                    "the store cannot write: deliveries get 500 and engine steps wait until it can \
                     (logged again when it writes again)"
                );
            }
        }
        None if wrote => {
            if let Some((lasted, failures)) = health.wrote() {
                tracing::warn!(
                    after = ?lasted,
                    failed_writes = failures,
                    "the store writes again"
                );
            }
        }
        None => {}
    }
    results
}

/// Applies a group of operations in one transaction. If any operation fails, the group is
/// rolled back and each operation is applied again in a transaction of its own, so one bad
/// batch fails alone (a rare path; the common one costs nothing extra).
///
/// Rolled back with `finish`, which does nothing when SQLite rolled back already: it does
/// on a full disk, and a second `ROLLBACK` fails with "no transaction is active", an error
/// that would replace the one that says why.
pub(super) fn run_group(
    conn: &mut Connection,
    group: &[(Op, Reply)],
) -> Result<Vec<Result<Answer>>> {
    let tx = conn.transaction()?;
    let mut results = Vec::with_capacity(group.len());
    for (op, _) in group {
        match apply(&tx, op) {
            Ok(tasks) => results.push(Ok(tasks)),
            Err(e) if group.len() == 1 => {
                tx.finish()?;
                return Ok(vec![Err(e)]);
            }
            Err(_) => {
                tx.finish()?;
                return run_one_by_one(conn, group);
            }
        }
    }
    tx.commit()?;
    Ok(results)
}

pub(super) fn run_one_by_one(
    conn: &mut Connection,
    group: &[(Op, Reply)],
) -> Result<Vec<Result<Answer>>> {
    let mut results = Vec::with_capacity(group.len());
    for (op, _) in group {
        let tx = conn.transaction()?;
        match apply(&tx, op) {
            Ok(tasks) => {
                tx.commit()?;
                results.push(Ok(tasks));
            }
            Err(e) => {
                tx.finish()?;
                results.push(Err(e));
            }
        }
    }
    Ok(results)
}

pub(super) fn apply(tx: &Transaction<'_>, op: &Op) -> Result<Answer> {
    match op {
        Op::Commit(changes) => {
            let mut claimed = Vec::new();
            for change in changes {
                if let Some(task) = apply_change(tx, change)? {
                    claimed.push(task);
                }
            }
            Ok(Answer::Tasks(claimed))
        }
        Op::InsertDelivery(d) => insert_delivery(tx, d).map(Answer::Delivery),
        Op::InsertDeliveries(batch) => batch
            .iter()
            .map(|d| insert_delivery(tx, d))
            .collect::<Result<_>>()
            .map(Answer::Deliveries),
        Op::Claim {
            now,
            limit,
            lease_until,
        } => {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE tasks SET lease_until = ?1, lease_token = lease_token + 1 WHERE id IN (
                     SELECT id FROM tasks WHERE due_at <= ?2 AND (lease_until IS NULL OR lease_until < ?2)
                     ORDER BY due_at LIMIT ?3)
                 RETURNING {TASK_COLUMNS}"
            ))?;
            let rows = stmt.query_map(params![lease_until, now, *limit as i64], task_from_row)?;
            rows.map(|r| r.map_err(StoreError::from).and_then(|t| t))
                .collect::<Result<_>>()
                .map(Answer::Tasks)
        }
        Op::ReleaseLeases => {
            tx.execute(
                "UPDATE tasks SET lease_until = NULL WHERE lease_until IS NOT NULL",
                [],
            )?;
            Ok(Answer::Tasks(Vec::new()))
        }
        Op::Renew { leases, until } => {
            let mut stmt = tx.prepare_cached(
                "UPDATE tasks SET lease_until = ?3 WHERE id = ?1 AND lease_token = ?2",
            )?;
            let mut lost = Vec::new();
            for lease in leases {
                if stmt.execute(params![lease.id, lease.token, until])? == 0 {
                    lost.push(lease.id);
                }
            }
            Ok(Answer::Lost(lost))
        }
        Op::ClaimReports {
            now,
            limit,
            lease_until,
        } => super::outbox::claim(tx, *now, *limit, *lease_until).map(Answer::Reports),
        Op::ReleaseReportLeases => {
            super::outbox::release_all(tx).map(|()| Answer::Reports(Vec::new()))
        }
        Op::ClaimRelays {
            relay,
            target,
            now,
            limit,
            lease_until,
            ordered,
        } => super::relay::claim(tx, relay, target, *now, *limit, *lease_until, *ordered)
            .map(Answer::Relays),
        Op::ReleaseRelayLeases => {
            super::relay::release_all(tx).map(|()| Answer::Relays(Vec::new()))
        }
        Op::ReplayRelays { replay, now } => {
            super::relay::replay(tx, replay, *now).map(Answer::Replayed)
        }
        Op::Probe => probe(tx).map(|()| Answer::Tasks(Vec::new())),
        #[cfg(test)]
        Op::MaxPages(pages) => {
            let pages = pages.unwrap_or(i64::from(u32::MAX - 1));
            tx.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
            Ok(Answer::Tasks(Vec::new()))
        }
    }
}

/// Inserts `d` unless its source already has its delivery id.
fn insert_delivery(tx: &Transaction<'_>, d: &NewDelivery) -> Result<Intake> {
    // Not `RETURNING seq`: SQLite collects returned rows in a temporary table built for every
    // execution, and the new row's id is at hand anyway.
    let inserted = tx
        .prepare_cached(
            "INSERT INTO deliveries (source, delivery_id, event, headers, body, received_at, status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'received')
             ON CONFLICT (source, delivery_id) DO NOTHING",
        )?
        .execute(params![
            d.source,
            d.delivery_id,
            d.event,
            d.headers,
            d.body,
            d.received_at
        ])?;
    Ok(match inserted {
        1 => Intake::Stored(tx.last_insert_rowid()),
        _ => Intake::Duplicate(
            tx.prepare_cached("SELECT seq FROM deliveries WHERE source = ?1 AND delivery_id = ?2")?
                .query_row(params![d.source, d.delivery_id], |r| r.get(0))?,
        ),
    })
}

/// Readiness's test write: a row of [`PROBE_BYTES`] written and removed in one transaction.
///
/// It needs what a delivery needs, new pages of the database (from the free list, else by
/// growing the file) and room in the WAL for them (its commit writes 18 pages, 72 KiB), so
/// it fails as a delivery would on a full disk. It leaves nothing behind but pages on the
/// free list, which the next probe takes again.
fn probe(tx: &Transaction<'_>) -> Result<()> {
    tx.prepare_cached("INSERT INTO write_probe (pad) VALUES (zeroblob(?1))")?
        .execute([PROBE_BYTES])?;
    tx.prepare_cached("DELETE FROM write_probe")?.execute([])?;
    Ok(())
}
