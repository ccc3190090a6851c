//! The embedded SQLite store: one file, WAL, `synchronous=FULL`.
//!
//! All writes go through one writer thread that drains every queued batch into a single
//! transaction (group commit): one fsync serves many engine steps. The writer uses rusqlite
//! directly on its own OS thread with cached prepared statements, because an engine step is
//! about ten statements: a driver that hands each statement to a worker thread and back
//! spends two thirds of the engine's CPU on context switches. Reads run on a
//! small pool of read connections through `spawn_blocking`; WAL lets them run beside the
//! writer.
//!
//! One process owns a store file at a time (an exclusive lock on `<file>.lock`), so an
//! engine can clear stale leases at start without waiting for them to expire.
//!
//! The parts: `schema` (migrations and connection settings), `writer` (the writer thread,
//! its group commit and the operations it applies), `apply` (one engine [`Change`] as SQL),
//! `outbox` and `relay` (the report outbox's and the relay queue's tables), `checkpoint` (the
//! thread that keeps the WAL short), `health` (whether the store can write
//! now, for readiness, and failures logged once per outage), `queries` (the [`Store`] trait:
//! writes sent to the writer, reads on the pool), `rows` (row decoding). This file opens a
//! store.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::inbox;
use crate::*;

mod apply;
mod checkpoint;
mod health;
mod outbox;
mod queries;
mod relay;
mod rows;
pub(crate) mod schema;
mod writer;

#[cfg(test)]
mod relay_tests;
#[cfg(test)]
mod tests;

use checkpoint::{WalLimits, spawn_checkpointer};
use health::WriteHealth;
use schema::{migrate, open_connection};
use writer::{Answer, Op, Reply, WRITER_CACHE_KIB, WriterShared, writer_loop};

/// Read connections kept open.
const READERS: usize = 3;

/// Stored deliveries the feed holds for a matcher that is behind; past this it lags.
const FEED_CAPACITY: usize = 4096;

/// The SQLite store.
pub struct SqliteStore {
    closed: Arc<AtomicBool>,
    writer: inbox::Sender<(Op, Reply)>,
    feed: Arc<OnceLock<feed::FeedSender>>,
    health: Arc<WriteHealth>,
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
        .map_err(|source| StoreError::Task {
            what: "open",
            source,
        })??;
        let (tx, rx) = inbox::inbox();
        let closed = Arc::new(AtomicBool::new(false));
        let restart = Arc::new(AtomicBool::new(false));
        spawn_checkpointer(path.clone(), wal, closed.clone(), restart.clone())?;
        let shared = WriterShared {
            feed: Arc::new(OnceLock::new()),
            restart_wal: restart,
            health: Arc::new(WriteHealth::default()),
        };
        let (feed, health) = (shared.feed.clone(), shared.health.clone());
        std::thread::Builder::new()
            .name("baton-store-writer".into())
            .spawn(move || writer_loop(writer_conn, rx, &shared))
            .map_err(|source| StoreError::Io {
                what: "cannot start the writer thread".into(),
                source,
            })?;
        Ok(Self {
            closed,
            writer: tx,
            feed,
            health,
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
            Answer::Delivery(_)
            | Answer::Deliveries(_)
            | Answer::Reports(_)
            | Answer::Relays(_)
            | Answer::Replayed(_)
            | Answer::Lost(_) => Ok(Vec::new()),
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
        .map_err(|source| StoreError::Task {
            what: "read",
            source,
        })?
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
        .map_err(|source| StoreError::Lock {
            path: lock_path.display().to_string(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(format!(
            "another baton process is using the store {} (lock {} is held); stop it or use another store",
            db.display(),
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Lock {
            path: lock_path.display().to_string(),
            source,
        }),
    }
}
