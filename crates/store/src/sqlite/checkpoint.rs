//! The checkpointer thread, which keeps the WAL short without stalling the writer.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::schema::open_connection;
use crate::*;
use baton_core::outage::Outage;

/// When the WAL is copied back into the database, and when it is made to start over.
#[derive(Clone, Copy)]
pub(super) struct WalLimits {
    /// How often the checkpointer copies.
    pub(super) interval: Duration,
    /// WAL frames (pages) past which the WAL is made to start over.
    pub(super) restart_frames: i64,
    /// Frames a restart may be left to copy, while the writer waits.
    pub(super) restart_tail: i64,
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
pub(super) fn spawn_checkpointer(
    path: PathBuf,
    limits: WalLimits,
    closed: Arc<AtomicBool>,
    restart: Arc<AtomicBool>,
) -> Result<()> {
    let mut checkpointer = Checkpointer {
        conn: open_connection(&path, OpenFlags::default())?,
        db: File::open(&path).map_err(|source| StoreError::Io {
            what: format!("cannot open {} for checkpoints", path.display()),
            source,
        })?,
        synced: None,
    };
    std::thread::Builder::new()
        .name("baton-store-checkpoint".into())
        .spawn(move || {
            let mut outage = Outage::default();
            while !closed.load(Ordering::Relaxed) {
                std::thread::sleep(limits.interval);
                // Copying goes on while a restart is pending: a reader that holds up the
                // restart must not hold up the copying too.
                let copied = checkpointer.copy(limits);
                log_outage("WAL checkpoint", &copied, &mut outage);
                if let Ok(wanted) = copied {
                    restart.store(wanted, Ordering::Relaxed);
                }
            }
        })
        .map_err(|source| StoreError::Io {
            what: "cannot start the checkpoint thread".into(),
            source,
        })?;
    Ok(())
}

/// Logs a failing `what` (a WAL checkpoint or restart) when it starts failing and when it
/// works again: it is tried ten times a second, and a full disk fails every try.
fn log_outage<T>(what: &str, result: &Result<T>, outage: &mut Outage) {
    match result {
        Ok(_) => {
            if let Some((lasted, failures)) = outage.recovered() {
                tracing::warn!(after = ?lasted, failed_tries = failures, "{what} works again");
            }
        }
        Err(e) => {
            if outage.failed() {
                tracing::warn!(
                    error = %e,
                    "{what} failed; retrying (logged again when it works again)"
                );
            }
        }
    }
}

/// The checkpointer thread's connection and what it last made durable.
pub(super) struct Checkpointer {
    pub(super) conn: Connection,
    /// The database file, to sync what a pass copied.
    pub(super) db: File,
    /// WAL frames and copied frames after the last pass that was synced.
    pub(super) synced: Option<(i64, i64)>,
}

impl Checkpointer {
    /// Copies until the WAL is past `restart_frames` and at most `restart_tail` frames are left
    /// to copy; answers whether the writer should restart the WAL.
    pub(super) fn copy(&mut self, limits: WalLimits) -> Result<bool> {
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
    fn pass(&mut self) -> Result<(i64, i64)> {
        let progress = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })?;
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
pub(super) fn restart_wal(conn: &Connection, wanted: &AtomicBool, outage: &mut Outage) {
    let busy = conn
        .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0))
        .map_err(StoreError::from);
    log_outage("WAL restart", &busy, outage);
    if busy.is_ok_and(|busy| busy == 0) {
        wanted.store(false, Ordering::Relaxed);
    }
}
