//! The intake: webhook deliveries stored in groups (group commit).
//!
//! Callers queue their deliveries for a few writer tasks. A writer takes everything waiting
//! (up to [`MAX_GROUP`] deliveries) and stores it with ONE statement, a transaction of its
//! own: one round trip and one flush of the WAL for the whole group, where an INSERT per
//! delivery pays both for each and holds a pooled connection while it waits for its flush.
//! See [`WRITERS`] for the figures.
//!
//! Each caller is answered after the commit that stored its deliveries (`synchronous_commit`
//! is left on: an answer means stored). Stored deliveries are held and go to the feed before
//! their callers are answered, so a caller's delivery is on the feed once it has its id.
//! A group that fails is stored again one caller at a time, so a caller's bad delivery (a
//! NUL in its text, a deadlock with another replica inserting the same ids in another order)
//! fails only that caller; a database that cannot be reached fails them all at once.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use super::deliveries::Deliveries;
use super::{CONNECT_TIMEOUT, get, pg_error};
use crate::feed::PendingDelivery;
use crate::*;

/// Writer tasks. More would gather a group while another waits for its commit, but the
/// database's work per row is what limits: from 128 concurrent callers on a 2-core machine
/// shared with other work, one writer stored 13,100-14,200 deliveries/s (p99 23-36 ms),
/// two 10,200-12,200/s and four 13,600-14,400/s, against 3,300-3,700/s (p99 59-97 ms) for
/// an INSERT per delivery (`insert_throughput` in the tests). The ids' order on the feed
/// holds for any number.
const WRITERS: usize = 1;

/// The most deliveries stored in one statement (a caller's batch is never split, and may
/// take a group past it).
const MAX_GROUP: usize = 512;

/// Ids taken from the sequence at once: one round trip per this many deliveries.
const ID_BLOCK: i64 = 1024;

/// Stores a group, with the ids handed out for it (`$1`), claimed by this process.
const INSERT: &str = "INSERT INTO deliveries
        (seq, source, delivery_id, event, headers, body, received_at, status, claim_until, claim_token)
    SELECT u.*, 'received', $8, $9
    FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::BIGINT[])
        AS u(seq, source, delivery_id, event, headers, body, received_at)
    ON CONFLICT (source, delivery_id) DO NOTHING
    RETURNING seq";

/// The stored ids of deliveries the insert skipped, in the order asked: stored before, or
/// earlier in the same group.
const STORED: &str = "SELECT d.seq
    FROM unnest($1::TEXT[], $2::TEXT[]) WITH ORDINALITY AS u(source, delivery_id, n)
    JOIN deliveries d USING (source, delivery_id)
    ORDER BY u.n";

/// One caller's deliveries and where its answer goes.
pub(super) enum Job {
    /// [`Store::insert_delivery`].
    One(NewDelivery, oneshot::Sender<Result<Intake>>),
    /// [`Store::insert_deliveries`]: stored together or not at all.
    Many(Vec<NewDelivery>, oneshot::Sender<Result<Vec<Intake>>>),
}

impl Job {
    fn deliveries(&self) -> &[NewDelivery] {
        match self {
            Job::One(d, _) => std::slice::from_ref(d),
            Job::Many(batch, _) => batch,
        }
    }
}

/// Where a job's answer goes.
enum Reply {
    One(oneshot::Sender<Result<Intake>>),
    Many(oneshot::Sender<Result<Vec<Intake>>>),
}

/// The callers' end of the intake. Dropping it stops the writers once they have stored
/// what is queued.
pub(super) struct Queue {
    jobs: mpsc::UnboundedSender<Job>,
}

/// What the writers share.
struct Writers {
    pool: Pool,
    deliveries: Arc<Deliveries>,
    /// How long an insert's claim lasts, in [`Millis`].
    lease: Millis,
    /// Taken by the writer that gathers next: gathering and handing out ids are one step,
    /// so ids follow the order of the groups.
    queue: tokio::sync::Mutex<Waiting>,
}

/// The jobs waiting for a writer, and the ids for them.
struct Waiting {
    jobs: mpsc::UnboundedReceiver<Job>,
    /// Ids taken from the sequence and not yet handed out, in order.
    ids: VecDeque<i64>,
}

impl Queue {
    /// Starts the writers.
    pub(super) fn start(pool: Pool, deliveries: Arc<Deliveries>, lease: Millis) -> Self {
        let (jobs, receiver) = mpsc::unbounded_channel();
        let writers = Arc::new(Writers {
            pool,
            deliveries,
            lease,
            queue: tokio::sync::Mutex::new(Waiting {
                jobs: receiver,
                ids: VecDeque::new(),
            }),
        });
        for _ in 0..WRITERS {
            tokio::spawn(write(writers.clone()));
        }
        Self { jobs }
    }

    /// [`Store::insert_delivery`].
    pub(super) async fn one(&self, d: NewDelivery) -> Result<Intake> {
        let (reply, answer) = oneshot::channel();
        self.queue(Job::One(d, reply), answer).await
    }

    /// [`Store::insert_deliveries`], `batch` not empty.
    pub(super) async fn many(&self, batch: Vec<NewDelivery>) -> Result<Vec<Intake>> {
        let (reply, answer) = oneshot::channel();
        self.queue(Job::Many(batch, reply), answer).await
    }

    /// Queues `job` and waits for its answer, at most [`CONNECT_TIMEOUT`]: with the database
    /// away, a caller answers then rather than after every group ahead of it timed out.
    /// What it queued may still be stored; a sender's retry is then a duplicate.
    async fn queue<T>(&self, job: Job, answer: oneshot::Receiver<Result<T>>) -> Result<T> {
        if self.jobs.send(job).is_err() {
            return Err(gone());
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(StoreError::Unavailable {
                detail: format!("no answer from PostgreSQL within {CONNECT_TIMEOUT:?}"),
            }),
        }
    }
}

/// The writers have stopped: the store is being dropped.
fn gone() -> StoreError {
    StoreError::Closed
}

/// A writer: gathers a group, stores it, publishes and answers, until the intake is dropped.
async fn write(writers: Arc<Writers>) {
    let mut group = Vec::with_capacity(64);
    let mut intakes = Vec::with_capacity(MAX_GROUP);
    let mut replies = Vec::with_capacity(64);
    while let Some(ids) = writers.gather(&mut group).await {
        let (ids, results) = match ids {
            Ok(ids) => {
                let results = writers.store(&group, &ids, &mut intakes).await;
                (ids, results)
            }
            Err(e) => {
                let e = Arc::new(e);
                (Vec::new(), group.iter().map(|_| Err(share(&e))).collect())
            }
        };
        let mut stored = Vec::new();
        for (job, result) in group.drain(..).zip(results) {
            let first = result.as_ref().ok().map(|range| range.start);
            let mut keep = |d: NewDelivery, at: usize| {
                if let Some(Intake::Stored(id)) = first.map(|first| intakes[first + at]) {
                    stored.push(PendingDelivery::stored(d, id));
                }
            };
            let reply = match job {
                Job::One(d, reply) => {
                    keep(d, 0);
                    Reply::One(reply)
                }
                Job::Many(batch, reply) => {
                    for (at, d) in batch.into_iter().enumerate() {
                        keep(d, at);
                    }
                    Reply::Many(reply)
                }
            };
            replies.push((reply, result));
        }
        writers.deliveries.finish(&ids, stored);
        for (reply, result) in replies.drain(..) {
            match reply {
                Reply::One(reply) => {
                    let _ = reply.send(result.map(|range| intakes[range.start]));
                }
                Reply::Many(reply) => {
                    let _ = reply.send(result.map(|range| intakes[range].to_vec()));
                }
            }
        }
        intakes.clear();
    }
}

impl Writers {
    /// Waits for a job, takes what else is waiting (up to [`MAX_GROUP`] deliveries) and
    /// hands out ids for all of them, noted in flight. None once the intake is dropped.
    async fn gather(&self, group: &mut Vec<Job>) -> Option<Result<Vec<i64>>> {
        let mut queue = self.queue.lock().await;
        let first = queue.jobs.recv().await?;
        let mut n = first.deliveries().len();
        group.push(first);
        while n < MAX_GROUP {
            let Ok(job) = queue.jobs.try_recv() else {
                break;
            };
            n += job.deliveries().len();
            group.push(job);
        }
        if queue.ids.len() < n {
            match self.take_ids(n).await {
                Ok(fresh) => queue.ids.extend(fresh),
                Err(e) => return Some(Err(e)),
            }
        }
        let ids: Vec<i64> = queue.ids.drain(..n).collect();
        self.deliveries.begin(&ids);
        Some(Ok(ids))
    }

    /// At least `n` new ids, in order.
    async fn take_ids(&self, n: usize) -> Result<Vec<i64>> {
        let client = get(&self.pool).await?;
        let statement = client
            .prepare_cached(
                "SELECT nextval(pg_get_serial_sequence('deliveries', 'seq')) FROM generate_series(1, $1::BIGINT)",
            )
            .await
            .map_err(pg_error)?;
        let want = ID_BLOCK.max(n as i64);
        let mut fresh = client
            .query(&statement, &[&want])
            .await
            .map_err(pg_error)?
            .iter()
            .map(|row| row.try_get::<_, i64>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(pg_error)?;
        fresh.sort_unstable();
        Ok(fresh)
    }

    /// Stores `group` as `ids`, appending each delivery's intake to `intakes`: in one
    /// statement, or if that fails for another reason than an unreachable database, one
    /// statement per job. Answers each job's range of `intakes`, or its error.
    async fn store(
        &self,
        group: &[Job],
        ids: &[i64],
        intakes: &mut Vec<Intake>,
    ) -> Vec<Result<Range<usize>>> {
        let client = match get(&self.pool).await {
            Ok(client) => client,
            Err(e) => {
                let e = Arc::new(e);
                return group.iter().map(|_| Err(share(&e))).collect();
            }
        };
        let all = || group.iter().flat_map(Job::deliveries);
        match self.insert(&client, all, ids, intakes).await {
            Ok(()) => {
                let mut at = 0;
                return group
                    .iter()
                    .map(|job| {
                        at += job.deliveries().len();
                        Ok(at - job.deliveries().len()..at)
                    })
                    .collect();
            }
            Err(e) if group.len() == 1 => return vec![Err(e)],
            Err(e @ StoreError::Unavailable { .. }) => {
                let e = Arc::new(e);
                return group.iter().map(|_| Err(share(&e))).collect();
            }
            Err(_) => intakes.clear(),
        }
        let mut results = Vec::with_capacity(group.len());
        let mut at = 0;
        for job in group {
            let batch = job.deliveries();
            let own = &ids[at..at + batch.len()];
            at += batch.len();
            let start = intakes.len();
            let result = self.insert(&client, || batch.iter(), own, intakes).await;
            results.push(result.map(|()| start..intakes.len()).inspect_err(|_| {
                intakes.truncate(start);
            }));
        }
        results
    }

    /// Stores the deliveries `all` yields as `ids` (ascending) in one statement, appending
    /// their intakes to `intakes`.
    async fn insert<'a, I>(
        &self,
        client: &deadpool_postgres::Object,
        all: impl Fn() -> I,
        ids: &[i64],
        intakes: &mut Vec<Intake>,
    ) -> Result<()>
    where
        I: Iterator<Item = &'a NewDelivery>,
    {
        let column = |f: fn(&'a NewDelivery) -> &'a str| all().map(f).collect::<Vec<&str>>();
        let received: Vec<Millis> = all().map(|d| d.received_at).collect();
        let until = now_millis() + self.lease;
        let insert = client.prepare_cached(INSERT).await.map_err(pg_error)?;
        let rows = client
            .query(
                &insert,
                &[
                    &ids,
                    &column(|d| &d.source),
                    &column(|d| &d.delivery_id),
                    &column(|d| &d.event),
                    &column(|d| &d.headers),
                    &column(|d| &d.body),
                    &received,
                    &until,
                    &self.deliveries.token,
                ],
            )
            .await
            .map_err(pg_error)?;
        if rows.len() == ids.len() {
            intakes.extend(ids.iter().map(|&id| Intake::Stored(id)));
            return Ok(());
        }
        // Some were duplicates: the stored ones come back, the others are looked up.
        let mut stored = rows
            .iter()
            .map(|row| row.try_get::<_, i64>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(pg_error)?;
        stored.sort_unstable();
        let skipped: Vec<&NewDelivery> = all()
            .zip(ids)
            .filter(|(_, id)| stored.binary_search(id).is_err())
            .map(|(d, _)| d)
            .collect();
        let lookup = client.prepare_cached(STORED).await.map_err(pg_error)?;
        let sources: Vec<&str> = skipped.iter().map(|d| d.source.as_str()).collect();
        let delivery_ids: Vec<&str> = skipped.iter().map(|d| d.delivery_id.as_str()).collect();
        let found = client
            .query(&lookup, &[&sources, &delivery_ids])
            .await
            .map_err(pg_error)?;
        if found.len() != skipped.len() {
            return Err(StoreError::Corrupt {
                what: "deliveries".into(),
                detail: format!(
                    "{} of {} duplicate deliveries not found",
                    skipped.len() - found.len(),
                    skipped.len()
                ),
            });
        }
        let mut found = found.iter();
        for id in ids {
            intakes.push(if stored.binary_search(id).is_ok() {
                Intake::Stored(*id)
            } else {
                let row = found.next().expect("counted above");
                Intake::Duplicate(row.try_get(0).map_err(pg_error)?)
            });
        }
        Ok(())
    }
}

/// A group's failure as each of its callers gets it: an outage as such, anything else as
/// the group's error.
fn share(e: &Arc<StoreError>) -> StoreError {
    match &**e {
        StoreError::Unavailable { detail } => StoreError::Unavailable {
            detail: detail.clone(),
        },
        _ => StoreError::Commit(e.clone()),
    }
}
