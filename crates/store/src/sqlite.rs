//! The embedded SQLite store: one file, WAL, `synchronous=FULL`.
//!
//! All writes go through one writer thread that drains every queued batch into a single
//! transaction (group commit): one fsync serves many engine steps. The writer uses rusqlite
//! directly on its own OS thread with cached prepared statements. (sqlx's SQLite driver,
//! tried first, hands every statement to a worker thread and back; with ~10 statements per
//! engine step, two thirds of the engine's CPU went to context switches.) Reads run on a
//! small pool of read connections through `spawn_blocking`; WAL lets them run beside the
//! writer.
//!
//! One process owns a store file at a time (an exclusive lock on `<file>.lock`), so an
//! engine can clear stale leases at start without waiting for them to expire.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use baton_core::{RunStatus, StageStatus};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, Transaction, params};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::inbox;
use crate::*;

mod outbox;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_deliveries.sql"),
    include_str!("../migrations/sqlite/0003_delivery_passes.sql"),
    include_str!("../migrations/sqlite/0004_reports.sql"),
];

/// The most batches folded into one transaction.
const MAX_GROUP: usize = 512;

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
const MIN_COMMIT_GAP: Duration = Duration::from_millis(1);

/// A group this long commits without waiting out [`MIN_COMMIT_GAP`]: its flush is shared
/// widely enough, and a wait would only add latency.
///
/// It must stay well under the number of senders that wait for their answers: with 32, a
/// closed loop of 32 connections seldom had all 32 queued at once (some are always being
/// parsed), so nearly every commit waited out the gap, and its peak fell to 30,400-31,700/s
/// against 35,000-37,700/s with no gap. With 16, in four alternated pairs of peak runs, the
/// peak was 1-31% higher than with 32; the writer still flushes about 1,000 times a second up
/// to 16,000 deliveries/s (990 against 989 at 9,000/s, 1,044 against 987 at 16,000/s).
const COMMIT_AT_ONCE: usize = 16;

/// Read connections kept open.
const READERS: usize = 3;

/// Stored deliveries the feed holds for a matcher that is behind; past this it lags.
const FEED_CAPACITY: usize = 4096;

enum Op {
    Commit(Vec<Change>),
    InsertDelivery(NewDelivery),
    Claim {
        now: Millis,
        limit: u32,
        lease_until: Millis,
    },
    ReleaseLeases,
    ClaimReports {
        now: Millis,
        limit: u32,
        lease_until: Millis,
    },
    ReleaseReportLeases,
}

/// What the writer answers: the tasks a commit claimed, where a delivery went, or the
/// reports claimed.
enum Answer {
    Tasks(Vec<Task>),
    Delivery(Intake),
    Reports(Vec<DueReport>),
}

type Reply = oneshot::Sender<Result<Answer>>;

/// The SQLite store.
pub struct SqliteStore {
    closed: Arc<AtomicBool>,
    writer: inbox::Sender<(Op, Reply)>,
    feed: Arc<OnceLock<feed::FeedSender>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
    _lock: File,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

/// The file named by a `sqlite://PATH` or `sqlite:PATH` url (query parameters ignored).
fn path_of(url: &str) -> Result<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::Url(format!("store url `{url}`: expected `sqlite://PATH`")))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path.contains(":memory:") {
        return Err(StoreError::Url(format!(
            "store url `{url}`: an in-memory database cannot be durable; name a file"
        )));
    }
    Ok(PathBuf::from(path))
}

fn open_connection(path: &Path, flags: OpenFlags) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let applied: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .map_err(|e| StoreError::Migrate(format!("migration {}: {e}", i + 1)))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    if applied as usize > MIGRATIONS.len() {
        return Err(StoreError::Migrate(format!(
            "the store was written by a newer baton (schema {applied}, this build knows {})",
            MIGRATIONS.len()
        )));
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://path/to/file.db`),
    /// takes the process lock and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(url, WalLimits::default()).await
    }

    async fn open_with(url: &str, wal: WalLimits) -> Result<Self> {
        let path = path_of(url)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Url(format!(
                    "cannot create the store's folder {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let lock = take_lock(&path)?;
        let opened = path.clone();
        let (writer_conn, readers) = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut writer = open_connection(&opened, OpenFlags::default())?;
            migrate(&mut writer)?;
            // Checkpoints stall the commit they land in (5-15 ms): a separate thread runs them.
            writer.pragma_update(None, "wal_autocheckpoint", 0)?;
            // Random delivery ids (GitLab's UUIDs, body hashes) each land on their own page of
            // the duplicate index: keep more of it in the writer's cache than SQLite's default
            // 2 MiB (see WRITER_CACHE_KIB for why not much more).
            writer.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
            // The writer only ever waits for readers, when it restarts the WAL: briefly.
            writer.busy_timeout(Duration::from_millis(50))?;
            let readers = (0..READERS)
                .map(|_| {
                    open_connection(
                        &opened,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((writer, readers))
        })
        .await
        .map_err(|e| StoreError::Corrupt {
            what: "open".into(),
            detail: e.to_string(),
        })??;
        let (tx, rx) = inbox::inbox();
        let closed = Arc::new(AtomicBool::new(false));
        let restart = Arc::new(AtomicBool::new(false));
        spawn_checkpointer(path.clone(), wal, closed.clone(), restart.clone())?;
        let feed = Arc::new(OnceLock::new());
        let writer_feed = feed.clone();
        std::thread::Builder::new()
            .name("baton-store-writer".into())
            .spawn(move || writer_loop(writer_conn, rx, &writer_feed, &restart))
            .map_err(|e| StoreError::Corrupt {
                what: "writer thread".into(),
                detail: e.to_string(),
            })?;
        Ok(Self {
            closed,
            writer: tx,
            feed,
            readers: Arc::new(Mutex::new(readers)),
            path,
            _lock: lock,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn send(&self, op: Op) -> Result<Answer> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send((op, reply))
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn send_for_tasks(&self, op: Op) -> Result<Vec<Task>> {
        match self.send(op).await? {
            Answer::Tasks(tasks) => Ok(tasks),
            Answer::Delivery(_) | Answer::Reports(_) => Ok(Vec::new()),
        }
    }

    /// Runs a read on a pooled read connection, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.lock().unwrap().pop();
            let conn = match conn {
                Some(c) => c,
                None => open_connection(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?,
            };
            let result = f(&conn);
            let mut pool = readers.lock().unwrap();
            if pool.len() < READERS {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Corrupt {
            what: "read".into(),
            detail: e.to_string(),
        })?
    }
}

/// The writer's page cache, in KiB.
///
/// A bigger cache costs more than it saves. When a B-tree split renumbers its new pages,
/// SQLite parks one at the lock page's number (262,145 with 4 KiB pages); while the database
/// is under 1 GiB, the commit then walks the cache's whole hash table to drop pages past the
/// end (210 times a second at 22,000 deliveries/s, inside the commit the callers wait for).
/// In alternated runs on a 2-core VM, 16 MiB against 64 MiB: peaks with GitHub's ids
/// 42,600-48,900 against 40,900-44,100/s, with random ids no worse (20,100-29,100 against
/// 20,200-27,000/s).
const WRITER_CACHE_KIB: i64 = 16 * 1024;

/// When the WAL is copied back into the database, and when it is made to start over.
#[derive(Clone, Copy)]
struct WalLimits {
    /// How often the checkpointer copies.
    interval: Duration,
    /// WAL frames (pages) past which the WAL is made to start over.
    restart_frames: i64,
    /// Frames a restart may be left to copy, while the writer waits.
    restart_tail: i64,
}

impl Default for WalLimits {
    /// Chosen on a 2-core VM at 15,000-22,000 deliveries/s, where the checkpoint's sync of the
    /// database delays the writer's syncs of the WAL: small checkpoints every 100 ms delayed
    /// them least; a WAL of 16 MiB restarts about three times a second at 22,000/s, each
    /// restart holding up the writer 0.5-0.9 ms with a tail of 64 frames (with a WAL of
    /// 256 MiB, p99 latency was ten times worse).
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(100),
            restart_frames: 4096,
            restart_tail: 64,
        }
    }
}

/// Copies the WAL back into the database every `interval`, in passive mode (never waiting for
/// readers or the writer), until the store is dropped.
///
/// SQLite only starts the WAL over when a write begins after a checkpoint has caught up with
/// it, which a passive checkpoint never does under steady load: the WAL would grow without
/// bound (3 GB in 35 s of benchmark). So past `restart_frames` this thread copies until at
/// most `restart_tail` frames are left and asks the writer, through `restart`, to finish with
/// a restart checkpoint between two commits.
fn spawn_checkpointer(
    path: PathBuf,
    limits: WalLimits,
    closed: Arc<AtomicBool>,
    restart: Arc<AtomicBool>,
) -> Result<()> {
    let mut checkpointer = Checkpointer {
        conn: open_connection(&path, OpenFlags::default())?,
        db: File::open(&path).map_err(|e| StoreError::Corrupt {
            what: "checkpoint".into(),
            detail: format!("cannot open {}: {e}", path.display()),
        })?,
        synced: None,
    };
    std::thread::Builder::new()
        .name("baton-store-checkpoint".into())
        .spawn(move || {
            while !closed.load(Ordering::Relaxed) {
                std::thread::sleep(limits.interval);
                // Copying goes on while a restart is pending: a reader that holds up the
                // restart must not hold up the copying too.
                match checkpointer.copy(limits) {
                    Ok(wanted) => restart.store(wanted, Ordering::Relaxed),
                    Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; retrying"),
                }
            }
        })
        .map_err(|e| StoreError::Corrupt {
            what: "checkpoint thread".into(),
            detail: e.to_string(),
        })?;
    Ok(())
}

/// The checkpointer thread's connection and what it last made durable.
struct Checkpointer {
    conn: Connection,
    /// The database file, to sync what a pass copied.
    db: File,
    /// WAL frames and copied frames after the last pass that was synced.
    synced: Option<(i64, i64)>,
}

impl Checkpointer {
    /// Copies until the WAL is past `restart_frames` and at most `restart_tail` frames are left
    /// to copy; answers whether the writer should restart the WAL.
    fn copy(&mut self, limits: WalLimits) -> std::io::Result<bool> {
        let (mut frames, mut copied) = self.pass()?;
        if frames <= limits.restart_frames {
            return Ok(false);
        }
        // Each pass copies what the writer added during the last one: a few passes shrink the
        // tail, unless the writer outpaces the copy (then the restart copies more).
        for _ in 0..16 {
            if frames - copied <= limits.restart_tail {
                break;
            }
            (frames, copied) = self.pass()?;
        }
        Ok(true)
    }

    /// One passive checkpoint, then a sync of the database file.
    ///
    /// SQLite syncs the database after a checkpoint only if no commit landed while it copied,
    /// which under steady load is never: the copied pages stayed dirty in the OS until the
    /// writer's restart had to sync them all, 1-3 ms with the writer stopped. Synced here, off
    /// the writer's path, the restart only syncs its own short tail.
    fn pass(&mut self) -> std::io::Result<(i64, i64)> {
        let progress = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .map_err(std::io::Error::other)?;
        if self.synced != Some(progress) {
            self.db.sync_data()?;
            self.synced = Some(progress);
        }
        Ok(progress)
    }
}

/// The writer's half of starting the WAL over (see `spawn_checkpointer`): copies what is left
/// and waits, at most its busy timeout, for readers of the old frames. If the checkpointer or
/// a reader is in the way, the writer tries again after its next group.
fn restart_wal(conn: &Connection, wanted: &AtomicBool) {
    match conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0)) {
        Ok(0) => wanted.store(false, Ordering::Relaxed),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "WAL restart failed; retrying"),
    }
}

fn take_lock(db: &Path) -> Result<File> {
    let mut lock_path = db.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            StoreError::Locked(format!(
                "cannot open the store lock {}: {e}",
                lock_path.display()
            ))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(format!(
            "another baton process is using the store {} (lock {} is held); stop it or use another store",
            db.display(),
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Locked(format!(
            "cannot lock the store {}: {e}",
            lock_path.display()
        ))),
    }
}

fn writer_loop(
    mut conn: Connection,
    rx: inbox::Receiver<(Op, Reply)>,
    feed: &OnceLock<feed::FeedSender>,
    restart_wal_wanted: &AtomicBool,
) {
    let mut group: Vec<(Op, Reply)> = Vec::with_capacity(64);
    let mut last_commit = Instant::now();
    while rx.gather(
        &mut group,
        COMMIT_AT_ONCE,
        MAX_GROUP,
        last_commit + MIN_COMMIT_GAP,
    ) {
        last_commit = Instant::now();
        match run_group(&mut conn, &group) {
            Ok(results) => {
                for ((op, reply), result) in group.drain(..).zip(results) {
                    if let (
                        Some(feed),
                        Op::InsertDelivery(d),
                        Ok(Answer::Delivery(Intake::Stored(id))),
                    ) = (feed.get(), op, &result)
                    {
                        // After the commit and in seq order, as the feed's protocol needs.
                        feed.publish(PendingDelivery {
                            id: *id,
                            source: d.source,
                            delivery_id: d.delivery_id,
                            event: d.event,
                            body: d.body,
                            replay: false,
                        });
                    }
                    let _ = reply.send(result);
                }
                if restart_wal_wanted.load(Ordering::Relaxed) {
                    restart_wal(&conn, restart_wal_wanted);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed");
                let text = e.to_string();
                for (_, reply) in group.drain(..) {
                    let _ = reply.send(Err(StoreError::Corrupt {
                        what: "commit".into(),
                        detail: text.clone(),
                    }));
                }
            }
        }
    }
}

/// Applies a group of operations in one transaction. If any operation fails, the group is
/// rolled back and each operation is applied again in a transaction of its own, so one bad
/// batch fails alone (a rare path; the common one costs nothing extra).
fn run_group(conn: &mut Connection, group: &[(Op, Reply)]) -> Result<Vec<Result<Answer>>> {
    let tx = conn.transaction()?;
    let mut results = Vec::with_capacity(group.len());
    for (op, _) in group {
        match apply(&tx, op) {
            Ok(tasks) => results.push(Ok(tasks)),
            Err(e) if group.len() == 1 => {
                tx.rollback()?;
                return Ok(vec![Err(e)]);
            }
            Err(_) => {
                tx.rollback()?;
                return run_one_by_one(conn, group);
            }
        }
    }
    tx.commit()?;
    Ok(results)
}

fn run_one_by_one(conn: &mut Connection, group: &[(Op, Reply)]) -> Result<Vec<Result<Answer>>> {
    let mut results = Vec::with_capacity(group.len());
    for (op, _) in group {
        let tx = conn.transaction()?;
        match apply(&tx, op) {
            Ok(tasks) => {
                tx.commit()?;
                results.push(Ok(tasks));
            }
            Err(e) => {
                tx.rollback()?;
                results.push(Err(e));
            }
        }
    }
    Ok(results)
}

const TASK_COLUMNS: &str = "id, version, run_id, stage_id, kind, attempt, due_at";

fn apply(tx: &Transaction<'_>, op: &Op) -> Result<Answer> {
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
        Op::InsertDelivery(d) => {
            // Not `RETURNING seq`: SQLite collects returned rows in a temporary table built
            // for every execution, and the new row's id is at hand anyway.
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
            let intake = match inserted {
                1 => Intake::Stored(tx.last_insert_rowid()),
                _ => Intake::Duplicate(
                    tx.prepare_cached(
                        "SELECT seq FROM deliveries WHERE source = ?1 AND delivery_id = ?2",
                    )?
                    .query_row(params![d.source, d.delivery_id], |r| r.get(0))?,
                ),
            };
            Ok(Answer::Delivery(intake))
        }
        Op::Claim {
            now,
            limit,
            lease_until,
        } => {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE tasks SET lease_until = ?1 WHERE id IN (
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
        Op::ClaimReports {
            now,
            limit,
            lease_until,
        } => outbox::claim(tx, *now, *limit, *lease_until).map(Answer::Reports),
        Op::ReleaseReportLeases => outbox::release_all(tx).map(|()| Answer::Reports(Vec::new())),
    }
}

fn apply_change(tx: &Transaction<'_>, change: &Change) -> Result<Option<Task>> {
    match change {
        Change::InsertRun(header, payload) => {
            tx.prepare_cached(
                "INSERT INTO runs (id, workflow, status, spec, event, trigger_info, cancel_requested, message, created_at, started_at, finished_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
                    "INSERT INTO tasks (run_id, stage_id, kind, attempt, due_at, lease_until, version)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)
                     ON CONFLICT (run_id, stage_id, kind) DO UPDATE SET
                         attempt = excluded.attempt, due_at = excluded.due_at,
                         lease_until = excluded.lease_until, version = tasks.version + 1
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
    }
    Ok(None)
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

fn corrupt(what: &str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what: what.to_owned(),
        detail: detail.to_string(),
    }
}

fn json_col<T: serde::de::DeserializeOwned>(row: &Row<'_>, column: &str) -> Result<Option<T>> {
    let text: Option<String> = row.get(column)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(column, e)))
        .transpose()
}

/// Reads a task row; the outer error is rusqlite's (for `query_map`), the inner one ours.
fn task_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Task>> {
    let kind: String = row.get("kind")?;
    let Some(kind) = TaskKind::parse(&kind) else {
        return Ok(Err(corrupt("tasks.kind", kind)));
    };
    Ok(Ok(Task {
        id: row.get("id")?,
        version: row.get("version")?,
        run_id: row.get("run_id")?,
        stage_id: row.get("stage_id")?,
        kind,
        attempt: row.get("attempt")?,
        due_at: row.get("due_at")?,
    }))
}

fn header_from_row(row: &Row<'_>) -> Result<RunHeader> {
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

fn stage_status(row: &Row<'_>) -> Result<StageStatus> {
    let status: String = row.get("status")?;
    StageStatus::parse(&status).ok_or_else(|| corrupt("stages.status", status))
}

fn stage_from_row(row: &Row<'_>) -> Result<StageRecord> {
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

fn attempt_from_row(row: &Row<'_>) -> Result<AttemptRecord> {
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
fn rows<T>(
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
            let Some((header, spec, event, trigger)) = conn
                .prepare_cached("SELECT * FROM runs WHERE id = ?1")?
                .query_row([&run_id], |row| {
                    Ok((
                        header_from_row(row),
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

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunHeader>> {
        let limit = page_limit(filter.limit);
        let filter = filter.clone();
        self.read(move |conn| {
            rows(
                conn,
                "SELECT id, workflow, status, cancel_requested, message, created_at, started_at, finished_at FROM runs
                 WHERE (?1 IS NULL OR workflow = ?1) AND (?2 IS NULL OR status = ?2)
                 ORDER BY created_at DESC, id DESC LIMIT ?3 OFFSET ?4",
                params![filter.workflow, filter.status.map(RunStatus::as_str), limit, filter.offset],
                header_from_row,
            )
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    async fn insert_delivery(&self, delivery: NewDelivery) -> Result<Intake> {
        match self.send(Op::InsertDelivery(delivery)).await? {
            Answer::Delivery(intake) => Ok(intake),
            Answer::Tasks(_) | Answer::Reports(_) => Err(corrupt(
                "deliveries",
                "the writer answered a delivery with something else",
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
                })
            };
            // Replays first (few, indexed), then the deliveries past the last pass: a range
            // of the table's own key, so no index has to be kept up on every insert.
            rows(
                conn,
                "SELECT * FROM (
                     SELECT seq, source, delivery_id, event, body, status FROM deliveries
                     WHERE status = 'replay' ORDER BY seq LIMIT ?1)
                 UNION ALL
                 SELECT * FROM (
                     SELECT seq, source, delivery_id, event, body, status FROM deliveries
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
        let limit = page_limit(filter.limit);
        let filter = filter.clone();
        self.read(move |conn| {
            rows(
                conn,
                "SELECT * FROM deliveries_seen WHERE (?1 IS NULL OR source = ?1) ORDER BY seq DESC LIMIT ?2 OFFSET ?3",
                params![filter.source, limit, filter.offset],
                delivery_from_row,
            )
        })
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
            Answer::Tasks(_) | Answer::Delivery(_) => Err(corrupt(
                "reports",
                "the writer answered a claim of reports with something else",
            )),
        }
    }

    async fn next_report_due(&self, now: Millis) -> Result<Option<Millis>> {
        self.read(move |conn| outbox::next_due(conn, now)).await
    }

    async fn release_report_leases(&self) -> Result<()> {
        self.send(Op::ReleaseReportLeases).await.map(|_| ())
    }
}

/// A page size: 50 when unset, at most 1000.
fn page_limit(asked: u32) -> u32 {
    if asked == 0 { 50 } else { asked.min(1000) }
}

fn delivery_from_row(row: &Row<'_>) -> Result<DeliveryRecord> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::context::TriggerInfo;
    use serde_json::json;

    async fn store(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap()
    }

    fn header(id: &str) -> RunHeader {
        RunHeader {
            id: id.into(),
            workflow: "wf".into(),
            status: RunStatus::Queued,
            cancel_requested: false,
            message: None,
            created_at: 1,
            started_at: None,
            finished_at: None,
        }
    }

    fn payload() -> RunPayload {
        RunPayload {
            spec: json!({"name": "wf"}),
            event: json!({"ref": "main"}),
            trigger: TriggerInfo {
                source: "manual".into(),
                event: "manual".into(),
                delivery_id: None,
            },
        }
    }

    fn task(run: &str, stage: &str, kind: TaskKind, due: Millis, claim: Option<Millis>) -> Change {
        Change::Schedule(TaskSpec {
            run_id: run.into(),
            stage_id: stage.into(),
            kind,
            attempt: 1,
            due_at: due,
            claim_until: claim,
        })
    }

    #[tokio::test]
    async fn runs_stages_and_attempts_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let mut stage = StageRecord::pending("r1", "build", 0);
        store
            .commit(vec![
                Change::InsertRun(header("r1"), payload()),
                Change::PutStage(stage.clone()),
            ])
            .await
            .unwrap();
        stage.status = StageStatus::Running;
        stage.attempt = 1;
        stage.phase = Some(Phase::Started);
        stage.external = Some(ExternalRef {
            id: "42".into(),
            url: Some("http://x/42".into()),
            data: json!({"q": 1}),
        });
        stage.input = Some(json!({"a": [1, 2]}));
        let attempt = AttemptRecord {
            run_id: "r1".into(),
            stage_id: "build".into(),
            attempt: 1,
            status: StageStatus::Running,
            reason: None,
            message: None,
            external: stage.external.clone(),
            started_at: Some(5),
            finished_at: None,
        };
        let mut h = header("r1");
        h.status = RunStatus::Running;
        store
            .commit(vec![
                Change::PutStage(stage.clone()),
                Change::PutAttempt(attempt.clone()),
                Change::PutRun(h.clone()),
            ])
            .await
            .unwrap();
        let snap = store.load_run("r1").await.unwrap().unwrap();
        assert_eq!(snap.header, h);
        assert_eq!(snap.payload, payload());
        assert_eq!(snap.stages, vec![stage]);
        assert_eq!(snap.attempts, vec![attempt]);
        assert_eq!(
            store.unfinished_runs().await.unwrap(),
            vec!["r1".to_string()]
        );
        assert!(store.load_run("nope").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn tasks_are_claimed_once_and_versions_protect_reschedules() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        store
            .commit(vec![Change::InsertRun(header("r1"), payload())])
            .await
            .unwrap();
        store
            .commit(vec![
                task("r1", "a", TaskKind::Poll, 10, None),
                task("r1", "b", TaskKind::Poll, 50, None),
            ])
            .await
            .unwrap();
        assert_eq!(store.next_due().await.unwrap(), Some(10));
        let claimed = store.claim_due(20, 10, 1000).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].stage_id, "a");
        // Leased: not claimable again until the lease ends.
        assert!(store.claim_due(30, 10, 1000).await.unwrap().is_empty());
        // Rescheduled while it ran: the old version's Done must not remove the new one.
        store
            .commit(vec![task("r1", "a", TaskKind::Poll, 25, None)])
            .await
            .unwrap();
        store
            .commit(vec![Change::Done {
                id: claimed[0].id,
                version: claimed[0].version,
            }])
            .await
            .unwrap();
        let again = store.claim_due(60, 10, 2000).await.unwrap();
        assert_eq!(
            again
                .iter()
                .map(|t| t.stage_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        store.release_leases().await.unwrap();
        assert_eq!(store.claim_due(60, 10, 2000).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn claimed_schedules_come_back_and_a_failed_batch_leaves_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(store(&dir).await);
        let tasks = store
            .commit(vec![
                Change::InsertRun(header("r1"), payload()),
                task("r1", "", TaskKind::Advance, 1, Some(99)),
            ])
            .await
            .unwrap();
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].kind, TaskKind::Advance);
        // A duplicate run id fails its own batch only.
        let (bad, good) = tokio::join!(
            store.commit(vec![Change::InsertRun(header("r1"), payload())]),
            store.commit(vec![Change::InsertRun(header("r2"), payload())])
        );
        assert!(bad.is_err());
        good.unwrap();
        assert!(store.load_run("r2").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn deliveries_are_stored_once_and_processed() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let Intake::Stored(first) = store.insert_delivery(delivery("d1")).await.unwrap() else {
            panic!("stored")
        };
        assert_eq!(
            store.insert_delivery(delivery("d1")).await.unwrap(),
            Intake::Duplicate(first)
        );
        let Intake::Stored(second) = store.insert_delivery(delivery("d2")).await.unwrap() else {
            panic!("stored")
        };
        let Intake::Stored(third) = store.insert_delivery(delivery("d3")).await.unwrap() else {
            panic!("stored")
        };
        let pending = store.pending_deliveries(10).await.unwrap();
        assert_eq!(
            pending.iter().map(|d| d.id).collect::<Vec<_>>(),
            [first, second, third]
        );
        assert_eq!(pending[0].body, r#"{"ref": "main"}"#);
        assert!(!pending[0].replay);
        // A pass over the first two: the first started a run, the second nothing.
        store
            .commit(vec![
                Change::DeliveryProcessed {
                    seq: first,
                    runs: vec!["r1".into()],
                    message: None,
                    now: 9,
                },
                Change::DeliveriesMatched {
                    through: second,
                    now: 9,
                },
            ])
            .await
            .unwrap();
        let ids = |p: Vec<PendingDelivery>| p.iter().map(|d| d.id).collect::<Vec<_>>();
        assert_eq!(ids(store.pending_deliveries(10).await.unwrap()), [third]);
        let seen = store.load_delivery(second).await.unwrap().unwrap();
        assert_eq!(
            (seen.status.as_str(), seen.processed_at, seen.runs.len()),
            ("processed", Some(9), 0)
        );
        assert_eq!(seen.headers, json!({"x-github-event": "push"}));
        let waiting = store.load_delivery(third).await.unwrap().unwrap();
        assert_eq!(
            (waiting.status.as_str(), waiting.processed_at),
            ("received", None)
        );
        // The mark never moves back.
        store
            .commit(vec![Change::DeliveriesMatched {
                through: first,
                now: 10,
            }])
            .await
            .unwrap();
        assert_eq!(ids(store.pending_deliveries(10).await.unwrap()), [third]);
        // A replay comes first, and says so; its runs add to the earlier ones.
        store
            .commit(vec![Change::ReplayDelivery { seq: first }])
            .await
            .unwrap();
        let pending = store.pending_deliveries(10).await.unwrap();
        assert_eq!(ids(pending.clone()), [first, third]);
        assert!(pending[0].replay && !pending[1].replay);
        assert_eq!(
            store.load_delivery(first).await.unwrap().unwrap().status,
            "received"
        );
        assert_eq!(ids(store.pending_deliveries(1).await.unwrap()), [first]);
        store
            .commit(vec![Change::DeliveryProcessed {
                seq: first,
                runs: vec!["r2".into()],
                message: None,
                now: 11,
            }])
            .await
            .unwrap();
        let d = store.load_delivery(first).await.unwrap().unwrap();
        assert_eq!(
            (d.status.as_str(), d.runs.clone(), d.processed_at),
            (
                "processed",
                vec!["r1".to_string(), "r2".to_string()],
                Some(11)
            )
        );
        assert_eq!(ids(store.pending_deliveries(10).await.unwrap()), [third]);
        let listed = store
            .list_deliveries(&DeliveryFilter {
                source: Some("github".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            listed.iter().map(|d| d.id).collect::<Vec<_>>(),
            [third, second, first]
        );
    }

    fn delivery(id: &str) -> NewDelivery {
        NewDelivery {
            source: "github".into(),
            delivery_id: id.into(),
            event: "push".into(),
            headers: r#"{"x-github-event":"push"}"#.into(),
            body: r#"{"ref": "main"}"#.into(),
            received_at: 5,
        }
    }

    /// Under load that never pauses, a passive checkpoint never catches up, and without a
    /// restart the WAL grew by ~85 MB/s in the benchmark. It must stay near its limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_while_deliveries_keep_arriving() {
        let dir = tempfile::tempdir().unwrap();
        let limits = WalLimits {
            interval: Duration::from_millis(5),
            restart_frames: 64,
            restart_tail: 16,
        };
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Arc::new(SqliteStore::open_with(&url, limits).await.unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = (0..16)
            .map(|task| {
                let (store, stop) = (store.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        // Random-looking ids: each lands on its own index page, as GUIDs do.
                        let id = format!(
                            "{:016x}-{task}",
                            (n + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        );
                        store.insert_delivery(delivery(&id)).await.unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let wal = dir.path().join("t.db-wal");
        let mut largest = 0;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        stop.store(true, Ordering::Relaxed);
        let mut sent = 0;
        for s in senders {
            sent += s.await.unwrap();
        }
        // A frame is a 4 KiB page and a 24-byte header; allow the limit several times over
        // for what arrives between two checks, and the tail.
        let frames = largest / (4096 + 24);
        assert!(sent > 2_000, "only {sent} deliveries were sent");
        assert!(
            frames < 1_000,
            "the WAL reached {frames} frames for {sent} deliveries (limit 64)"
        );
    }

    #[tokio::test]
    async fn the_feed_carries_stored_deliveries_in_order_once_taken() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        // Nothing is kept for a feed nobody took.
        store.insert_delivery(delivery("before")).await.unwrap();
        let mut feed = store.delivery_feed().expect("the first feed");
        assert!(store.delivery_feed().is_none(), "one feed per store");
        let mut ids = Vec::new();
        for name in ["a", "b", "a", "c"] {
            if let Intake::Stored(id) = store.insert_delivery(delivery(name)).await.unwrap() {
                ids.push(id);
            }
        }
        let mut got = Vec::new();
        feed.try_recv_many(&mut got, 100);
        assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), ids);
        assert_eq!(
            got.iter()
                .map(|d| d.delivery_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(got[0].body, r#"{"ref": "main"}"#);
        assert!(!feed.take_lagged());
    }

    #[test]
    fn the_pass_migration_starts_after_deliveries_already_handled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let mut conn = Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        for sql in &MIGRATIONS[..2] {
            tx.execute_batch(sql).unwrap();
        }
        for (seq, status) in [
            (1, "processed"),
            (2, "failed"),
            (3, "received"),
            (4, "processed"),
        ] {
            tx.execute(
                "INSERT INTO deliveries (seq, source, delivery_id, event, headers, body, received_at, status, processed_at)
                 VALUES (?1, 'gh', ?1, 'push', '{}', '{}', 1, ?2, CASE WHEN ?2 = 'received' THEN NULL ELSE 7 END)",
                params![seq, status],
            )
            .unwrap();
        }
        tx.pragma_update(None, "user_version", 2).unwrap();
        tx.commit().unwrap();
        migrate(&mut conn).unwrap();
        let through: i64 = conn
            .query_row("SELECT MAX(through_seq) FROM delivery_passes", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(
            through, 2,
            "the first delivery still received bounds the pass"
        );
        let statuses: Vec<(String, Option<i64>)> = conn
            .prepare("SELECT status, processed_at FROM deliveries_seen ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            statuses,
            [
                ("processed".into(), Some(7)),
                ("failed".into(), Some(7)),
                ("received".into(), None),
                ("processed".into(), Some(7)),
            ]
        );
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let _first = store(&dir).await;
        let err = SqliteStore::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("another baton process"), "{err}");
    }

    #[tokio::test]
    async fn lists_runs_with_filters() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            let mut h = header(id);
            h.created_at = i as i64;
            if *id == "b" {
                h.workflow = "other".into();
            }
            store
                .commit(vec![Change::InsertRun(h, payload())])
                .await
                .unwrap();
        }
        let all = store.list_runs(&RunFilter::default()).await.unwrap();
        assert_eq!(
            all.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
            ["c", "b", "a"]
        );
        let wf = store
            .list_runs(&RunFilter {
                workflow: Some("wf".into()),
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(wf.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["c"]);
        let none = store
            .list_runs(&RunFilter {
                status: Some(RunStatus::Failed),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(none.is_empty());
    }
}
