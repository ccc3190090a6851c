//! baton's durable store.
//!
//! Everything the engine knows about a run lives here, never only in memory: the run, its
//! stages and attempts, the queue of due work ("tasks": advance the run, start, poll,
//! time out or cancel a stage), the commit statuses waiting to be reported ([`outbox`]), and
//! the deliveries on their way to relay targets ([`relay`]).
//! The engine changes state only through [`Store::commit`],
//! which applies a batch of [`Change`]s atomically, so a process killed at any instant
//! leaves either the whole step or none of it.
//!
//! [`SqliteStore`] is the embedded default (one file, WAL, `synchronous=FULL`, group
//! commit), owned by one process. [`PostgresStore`] is shared: any number of `baton serve`
//! replicas use one database, claim work with `FOR UPDATE SKIP LOCKED` under leases that
//! expire, and fence every write of a run with the run's version and the task's lease token
//! ([`Change::Fence`]), so a replica that lost its lease cannot commit over the one that took
//! it.

use async_trait::async_trait;
use baton_core::context::TriggerInfo;
use baton_core::{ExternalRef, RunStatus, StageStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[cfg(test)]
#[allow(dead_code)] // Filled as the store's tests move onto every backend.
mod contract;
mod feed;
mod inbox;
mod listing;
mod outbox;
mod postgres;
pub mod relay;
mod sqlite;

pub use feed::{DeliveryFeed, PendingDelivery};
pub use listing::{DeliverySummary, RunListing};
pub use outbox::{DueReport, ReportKey};
pub use postgres::PostgresStore;
pub use relay::{
    DueRelay, NewRelayMessage, RelayAttemptRecord, RelayMessageFilter, RelayMessageRecord,
    RelayNext, RelayOutcome, RelayReplay, RelayStatus, RelayStore, RelayTargetStats,
};
pub use sqlite::SqliteStore;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The wall clock in [`Millis`].
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or_default()
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error not covered by a more specific variant.
    #[error("store: {0}")]
    Database(rusqlite::Error),
    /// The disk holding the store is full (SQLite's `SQLITE_FULL`, or `ENOSPC` from the
    /// operating system): nothing more can be stored until space is freed there. Writes
    /// succeed again on their own once it is.
    #[error("store cannot write: disk full ({detail})")]
    Full {
        /// What SQLite or the operating system said.
        detail: String,
    },
    /// Reading or writing the store's files failed in the operating system (SQLite's
    /// `SQLITE_IOERR` family): a failing disk, a file removed or a filesystem gone read-only.
    #[error("store cannot read or write: I/O error ({detail})")]
    Storage {
        /// What SQLite or the operating system said.
        detail: String,
    },
    /// A schema migration failed.
    #[error("store migration {number} failed")]
    Migration {
        /// The migration's number (1-based).
        number: usize,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The store was written by a newer baton, whose schema this build does not know.
    #[error("the store was written by a newer baton (schema {found}, this build knows {known})")]
    NewerSchema {
        /// The schema version in the file.
        found: i64,
        /// The newest schema version this build has.
        known: usize,
    },
    /// A file or thread the store needs could not be had.
    #[error("store: {what}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A blocking store call on the runtime's thread pool panicked or was cancelled.
    #[error("store: the {what} task did not finish")]
    Task {
        /// Which call.
        what: &'static str,
        /// Why it did not finish.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A stored value could not be read back.
    #[error("store: corrupt value in {what}: {detail}")]
    Corrupt {
        /// Which column or row.
        what: String,
        /// The decode error.
        detail: String,
    },
    /// Another process holds this store.
    #[error("{0}")]
    Locked(String),
    /// The store's lock file could not be opened or locked.
    #[error("cannot lock the store with {path}")]
    Lock {
        /// The lock file.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The URL names a backend this build does not have, or is malformed.
    #[error("{0}")]
    Url(String),
    /// A group commit failed; every change in the group gets this error, which says why.
    #[error("{0}")]
    Commit(std::sync::Arc<StoreError>),
    /// The store's writer has stopped (the process is shutting down).
    #[error("store writer has stopped")]
    Closed,
    /// The database cannot be reached now (PostgreSQL down, the network gone, no connection
    /// free in time). Nothing was written; the same call works again once it is back.
    #[error("store unavailable: {detail}")]
    Unavailable {
        /// What the driver said, without the password.
        detail: String,
    },
    /// PostgreSQL reported an error not covered by a more specific variant (a constraint,
    /// a statement the server refused). Its text carries no password.
    #[error("store: {0}")]
    Postgres(#[source] tokio_postgres::Error),
    /// A PostgreSQL schema migration failed; the schema is left as it was before it.
    #[error("store migration {number} failed")]
    PostgresMigration {
        /// The migration's number (1-based).
        number: usize,
        /// What PostgreSQL said.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A commit was refused because another process now owns the work: the run's version or
    /// the task's lease token is no longer the one the commit was made from
    /// ([`Change::Fence`]). Nothing of the commit was written.
    #[error("store: {0}")]
    Fenced(String),
}

impl StoreError {
    /// True when the store could not write for want of space or because its files failed
    /// ([`StoreError::Full`], [`StoreError::Storage`]): readiness reports these.
    pub fn cannot_write(&self) -> bool {
        match self {
            Self::Full { .. } | Self::Storage { .. } | Self::Unavailable { .. } => true,
            Self::Commit(inner) => inner.cannot_write(),
            _ => false,
        }
    }

    /// True when the commit was refused by [`Change::Fence`]: another process owns the work.
    pub fn is_fenced(&self) -> bool {
        match self {
            Self::Fenced(_) => true,
            Self::Commit(inner) => inner.is_fenced(),
            _ => false,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    /// Gives a full disk and failing files their own variants, so every message says so
    /// rather than SQLite's generic text.
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => Self::Full {
                detail: e.to_string(),
            },
            Some(ErrorCode::SystemIoFailure) => Self::Storage {
                detail: e.to_string(),
            },
            _ => Self::Database(e),
        }
    }
}

impl From<std::io::Error> for StoreError {
    /// An operating-system error on the store's files (the checkpointer's own syncs).
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => Self::Full {
                detail: e.to_string(),
            },
            _ => Self::Storage {
                detail: e.to_string(),
            },
        }
    }
}

/// Short alias.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The mutable part of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunHeader {
    /// The run id.
    pub id: String,
    /// The workflow's name.
    pub workflow: String,
    /// Where the run is.
    pub status: RunStatus,
    /// Someone asked to cancel the run.
    pub cancel_requested: bool,
    /// Why the run ended as it did, for people.
    pub message: Option<String>,
    /// When the run was created.
    pub created_at: Millis,
    /// When the first stage started.
    pub started_at: Option<Millis>,
    /// When the run reached a terminal status.
    pub finished_at: Option<Millis>,
}

/// The parts of a run fixed at creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPayload {
    /// The workflow as written (`WorkflowSpec` as JSON), so a resumed run runs the same graph.
    pub spec: Value,
    /// The event that started the run (`.event`).
    pub event: Value,
    /// What started it (`.trigger`).
    pub trigger: TriggerInfo,
}

/// How far the current attempt's start has got; the write-ahead record of a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A start is scheduled (a retry waiting for its backoff, or a stage retried by hand);
    /// nothing has been sent yet.
    Scheduled,
    /// Recorded before the adapter's `start` is called. Found on recovery, it means the
    /// start may or may not have reached the system: ask the adapter's `find` first.
    Starting,
    /// The adapter returned a reference and it is stored.
    Started,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Starting => "starting",
            Self::Started => "started",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "scheduled" => Some(Self::Scheduled),
            "starting" => Some(Self::Starting),
            "started" => Some(Self::Started),
            _ => None,
        }
    }
}

/// One stage of one run, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// The run.
    pub run_id: String,
    /// The stage id.
    pub stage_id: String,
    /// Its place in the workflow's topological order.
    pub position: u32,
    /// Its status.
    pub status: StageStatus,
    /// A machine-readable why (`timed_out`, `condition`, `upstream_failed`, …).
    pub reason: Option<String>,
    /// A sentence for people.
    pub message: Option<String>,
    /// The current attempt number; 0 before the first.
    pub attempt: u32,
    /// The current attempt's start phase.
    pub phase: Option<Phase>,
    /// The current attempt's rendered input.
    pub input: Option<Value>,
    /// The current attempt's external reference.
    pub external: Option<ExternalRef>,
    /// Outputs of the finished attempt (a JSON object).
    pub outputs: Option<Value>,
    /// The last signal (an approval decision) sent to the current attempt.
    pub signal: Option<Value>,
    /// When the first attempt started.
    pub started_at: Option<Millis>,
    /// When the stage reached a terminal status.
    pub finished_at: Option<Millis>,
}

impl StageRecord {
    /// A fresh pending stage.
    pub fn pending(run_id: &str, stage_id: &str, position: u32) -> Self {
        Self {
            run_id: run_id.to_owned(),
            stage_id: stage_id.to_owned(),
            position,
            status: StageStatus::Pending,
            reason: None,
            message: None,
            attempt: 0,
            phase: None,
            input: None,
            external: None,
            outputs: None,
            signal: None,
            started_at: None,
            finished_at: None,
        }
    }
}

/// One attempt of one stage, kept for history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The run.
    pub run_id: String,
    /// The stage.
    pub stage_id: String,
    /// The attempt number (1-based).
    pub attempt: u32,
    /// The attempt's status.
    pub status: StageStatus,
    /// A machine-readable why.
    pub reason: Option<String>,
    /// A sentence for people.
    pub message: Option<String>,
    /// The external reference.
    pub external: Option<ExternalRef>,
    /// When it started.
    pub started_at: Option<Millis>,
    /// When it ended.
    pub finished_at: Option<Millis>,
}

/// Kinds of due work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Look at the run's graph: skip, start or finish what is ready.
    Advance,
    /// Start (or adopt) a stage attempt.
    Start,
    /// Poll a stage attempt's external work.
    Poll,
    /// A stage attempt's timeout.
    Timeout,
    /// Cancel a stage attempt's external work.
    Cancel,
}

impl TaskKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Advance => "advance",
            Self::Start => "start",
            Self::Poll => "poll",
            Self::Timeout => "timeout",
            Self::Cancel => "cancel",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "advance" => Self::Advance,
            "start" => Self::Start,
            "poll" => Self::Poll,
            "timeout" => Self::Timeout,
            "cancel" => Self::Cancel,
            _ => return None,
        })
    }
}

/// Work to schedule. There is at most one task per (run, stage, kind); scheduling again
/// replaces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    /// The run.
    pub run_id: String,
    /// The stage, or empty for run-level work.
    pub stage_id: String,
    /// What to do.
    pub kind: TaskKind,
    /// The stage attempt the work belongs to.
    pub attempt: u32,
    /// When it is due.
    pub due_at: Millis,
    /// Lease it to the committing engine until this time, so that engine can run it at once
    /// without a separate claim. `None` leaves it for [`Store::claim_due`].
    pub claim_until: Option<Millis>,
}

/// The claim on a task: its row and the token its claim was given. A claim made later (by
/// this process or another) gets a new token, so an old claim can tell it was taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskLease {
    /// The task's row id.
    pub id: i64,
    /// The claim's token.
    pub token: i64,
}

/// A scheduled task as read back from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Row id.
    pub id: i64,
    /// The token of the claim this task was handed out under ([`TaskLease`]).
    pub lease: i64,
    /// Bumped each time the task is rescheduled; [`Change::Done`] only removes the version
    /// it names, so a task rescheduled while it ran is not lost.
    pub version: i64,
    /// The run.
    pub run_id: String,
    /// The stage, or empty.
    pub stage_id: String,
    /// What to do.
    pub kind: TaskKind,
    /// The stage attempt.
    pub attempt: u32,
    /// When it was due.
    pub due_at: Millis,
}

/// One atomic piece of a state change.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Refuses the whole commit with [`StoreError::Fenced`] unless the run is still at
    /// `version` (then bumps it by one) and, with `lease`, the task still carries that claim's
    /// token (an expired claim nobody took over still counts). The engine puts it first in
    /// every commit of a step, made from the run as it loaded it, so a step computed from a
    /// stale copy, or by a process whose lease was taken over, writes nothing.
    Fence {
        /// The run.
        run_id: String,
        /// The run's version the step was computed from ([`RunSnapshot::version`]).
        version: i64,
        /// The claim the step runs under, if it runs a task.
        lease: Option<TaskLease>,
    },
    /// Create a run.
    InsertRun(RunHeader, RunPayload),
    /// Write a run's mutable part.
    PutRun(RunHeader),
    /// Write a stage.
    PutStage(StageRecord),
    /// Write an attempt.
    PutAttempt(AttemptRecord),
    /// Schedule (or reschedule) a task.
    Schedule(TaskSpec),
    /// Remove a task that was handled, if it still has this version.
    Done {
        /// Row id.
        id: i64,
        /// The version that was handled.
        version: i64,
    },
    /// Record that a delivery was matched: the runs it started (appended to earlier ones),
    /// or why it could not be processed.
    DeliveryProcessed {
        /// The delivery's public id.
        seq: i64,
        /// Runs created from it in this pass.
        runs: Vec<String>,
        /// A problem, for people; the delivery is then `failed`.
        message: Option<String>,
        /// When.
        now: Millis,
    },
    /// Record that every delivery up to `through` was matched. Those without a
    /// [`Change::DeliveryProcessed`] of their own started nothing. One small write per
    /// matching pass instead of one per delivery: the intake's hot path. On a shared store
    /// it marks the deliveries this process was handed ([`Store::pending_deliveries`], the
    /// feed) up to `through`, and is fenced like [`Change::Fence`] if another process has
    /// claimed one of them since.
    DeliveriesMatched {
        /// The highest public id matched; every lower one was matched too.
        through: i64,
        /// When.
        now: Millis,
    },
    /// Mark a delivery for processing again (a replay).
    ReplayDelivery {
        /// The delivery's public id.
        seq: i64,
    },
    /// Remove a task of a stage whatever its version (a poll after the stage finished).
    Unschedule {
        /// The run.
        run_id: String,
        /// The stage, or empty.
        stage_id: String,
        /// Which task.
        kind: TaskKind,
    },
    /// Wants a run's or stage's status reported (see [`outbox`]): adds the outbox row, or
    /// supersedes the one waiting (a new version, due at `due_at`, its retries started over).
    Report {
        /// What to report.
        key: ReportKey,
        /// When it is due: the time of the change.
        due_at: Millis,
    },
    /// An outbox row was dealt with (posted, found already there, or given up on): removed
    /// if it still has this version, otherwise left for the newer change, due as it is.
    ReportDone {
        /// The row.
        key: ReportKey,
        /// The version that was dealt with.
        version: i64,
    },
    /// An outbox row's post failed and is tried again at `due_at`, if the row still has
    /// this version; a newer version keeps its own schedule. Either way the claim ends.
    ReportRetry {
        /// The row.
        key: ReportKey,
        /// The version that was tried.
        version: i64,
        /// When to try again.
        due_at: Millis,
        /// Failed tries so far.
        tries: u32,
        /// When the first try was.
        first_try_at: Millis,
    },
    /// Records what a reporter made at the far end for a run and source (a GitHub check
    /// run), replacing what was recorded before (see [`outbox`]).
    ReportRef {
        /// The run.
        run_id: String,
        /// The `[sources.*]` name.
        source: String,
        /// The reporter's own words for it; the store keeps them as they are.
        reference: String,
    },
    /// Writes a relay message (see [`relay`]). The matcher puts it in the commit that marks
    /// its delivery matched.
    RelayEnqueue(NewRelayMessage),
    /// Records a try of a relay message and what follows it: the try's row, and the
    /// message's status, tries and due time. Its lease ends.
    RelayAttempt {
        /// The try.
        attempt: RelayAttemptRecord,
        /// What follows.
        next: RelayNext,
    },
    /// Gives back a claimed relay message without a try (its target's circuit is open, the
    /// process is stopping), due at `due_at`. Its lease ends.
    RelayPostpone {
        /// The message's key.
        key: String,
        /// When it is due.
        due_at: Millis,
    },
    /// A target answered 410 Gone: it is disabled (the first disabling's time and reason are
    /// kept), and every pending message of it is dead with `reason`. Applied again, it kills
    /// the pending messages that came since.
    RelayTargetDisabled {
        /// The relay.
        relay: String,
        /// The target.
        target: String,
        /// When.
        at: Millis,
        /// Why, for people (the 410's message key and time).
        reason: String,
    },
}

/// A run with everything stored about it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSnapshot {
    /// The run's version: 0 when created, bumped by each [`Change::Fence`].
    pub version: i64,
    /// The mutable part.
    pub header: RunHeader,
    /// The fixed part.
    pub payload: RunPayload,
    /// Stages in topological order.
    pub stages: Vec<StageRecord>,
    /// Every attempt, by stage then number.
    pub attempts: Vec<AttemptRecord>,
}

/// Which runs to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only this workflow.
    pub workflow: Option<String>,
    /// Only this status.
    pub status: Option<RunStatus>,
    /// At most this many (newest first).
    pub limit: u32,
    /// Skip this many.
    pub offset: u32,
    /// Only runs listed after this one, newest first: the next page by key, which stays as
    /// fast on the thousandth page as on the first (an offset reads every row it skips).
    pub before: Option<RunCursor>,
}

/// Where a page of runs ended: its last run's creation time and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCursor {
    /// `created_at` of the last run shown.
    pub created_at: Millis,
    /// Its id, which orders runs created in the same millisecond.
    pub id: String,
}

impl RunCursor {
    /// The cursor of `run`, the last of a page.
    pub fn after(run: &RunHeader) -> Self {
        Self {
            created_at: run.created_at,
            id: run.id.clone(),
        }
    }

    /// As text for an address: `<created_at>.<id>`.
    pub fn to_text(&self) -> String {
        format!("{}.{}", self.created_at, self.id)
    }

    /// Parses [`RunCursor::to_text`] output.
    pub fn parse(text: &str) -> Option<Self> {
        let (at, id) = text.split_once('.')?;
        Some(Self {
            created_at: at.parse().ok()?,
            id: id.to_owned(),
        })
    }
}

/// A webhook delivery to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    /// The `[sources.*]` name it came to.
    pub source: String,
    /// The sender's delivery id (or the body's hash): duplicates are recognised by it.
    pub delivery_id: String,
    /// The event type.
    pub event: String,
    /// Request headers, secrets removed, as JSON object text (written once by the intake,
    /// stored as is).
    pub headers: String,
    /// The raw body (JSON text).
    pub body: String,
    /// When it arrived.
    pub received_at: Millis,
}

/// Where an incoming delivery went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// Stored now, with this public id.
    Stored(i64),
    /// Seen before, under this public id; not stored again.
    Duplicate(i64),
}

/// A stored delivery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryRecord {
    /// Public id.
    pub id: i64,
    /// Source name.
    pub source: String,
    /// The sender's delivery id.
    pub delivery_id: String,
    /// Event type.
    pub event: String,
    /// Headers (secrets removed).
    pub headers: Value,
    /// The body, parsed.
    pub body: Value,
    /// When it arrived.
    pub received_at: Millis,
    /// `received` (to be processed), `processed` or `failed`.
    pub status: String,
    /// Runs it started.
    pub runs: Vec<String>,
    /// Why processing failed.
    pub message: Option<String>,
    /// When it was processed last.
    pub processed_at: Option<Millis>,
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    /// Only this source.
    pub source: Option<String>,
    /// At most this many (newest first).
    pub limit: u32,
    /// Skip this many.
    pub offset: u32,
    /// Only deliveries with a lower public id than this one: the next page by key, after
    /// the last delivery of the previous page.
    pub before: Option<i64>,
}

/// The durable state behind the engine.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies `changes` atomically and durably; returns the scheduled tasks that were
    /// claimed by the caller (`claim_until`), with their ids and versions.
    async fn commit(&self, changes: Vec<Change>) -> Result<Vec<Task>>;

    /// Leases up to `limit` due, unleased tasks until `lease_until`, oldest first.
    async fn claim_due(&self, now: Millis, limit: u32, lease_until: Millis) -> Result<Vec<Task>>;

    /// The earliest due time of an unleased task.
    async fn next_due(&self) -> Result<Option<Millis>>;

    /// Clears every lease: used by an engine that owns the store alone, at start.
    async fn release_leases(&self) -> Result<()>;

    /// Everything about one run.
    async fn load_run(&self, run_id: &str) -> Result<Option<RunSnapshot>>;

    /// Ids of runs that are not finished, oldest first.
    async fn unfinished_runs(&self) -> Result<Vec<String>>;

    /// Runs, newest first, with what started them and their commit.
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunListing>>;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<()>;

    /// Whether a write can be stored now: `Ok`, or why not (a full disk is
    /// [`StoreError::Full`]). Readiness asks it, as often as once a second, so it must be
    /// cheap: a store answers from the outcome of its recent writes and writes a probe only
    /// when it knows nothing recent. A store that cannot tell answers [`Store::ping`].
    async fn writable(&self) -> Result<()> {
        self.ping().await
    }

    /// Stores a delivery durably, unless one with the same source and delivery id exists.
    async fn insert_delivery(&self, delivery: NewDelivery) -> Result<Intake>;

    /// Stores several deliveries durably and atomically: every one that is new, or none (on
    /// an error). One answer per delivery, in order; a delivery id seen before, or earlier in
    /// `deliveries`, is a [`Intake::Duplicate`]. A sender that batches its events (a
    /// registry's envelope) retries the whole batch, so it is never stored in part.
    async fn insert_deliveries(&self, deliveries: Vec<NewDelivery>) -> Result<Vec<Intake>>;

    /// Deliveries waiting to be matched: replays, then the deliveries past the last
    /// [`Change::DeliveriesMatched`] mark, oldest first; at most `limit`.
    async fn pending_deliveries(&self, limit: u32) -> Result<Vec<PendingDelivery>>;

    /// The deliveries this store stores from now on, handed over in memory in commit order
    /// (see [`feed`]). `None` when the store has no feed or it was taken already: the
    /// matcher then reads [`Store::pending_deliveries`] alone.
    fn delivery_feed(&self) -> Option<DeliveryFeed> {
        None
    }

    /// One delivery by public id.
    async fn load_delivery(&self, id: i64) -> Result<Option<DeliveryRecord>>;

    /// Deliveries, newest first.
    async fn list_deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryRecord>>;

    /// Deliveries, newest first, without their headers and bodies.
    async fn list_delivery_summaries(
        &self,
        filter: &DeliveryFilter,
    ) -> Result<Vec<DeliverySummary>>;

    /// Leases up to `limit` due, unleased outbox rows until `lease_until`, oldest due first
    /// (see [`outbox`]).
    async fn claim_reports(
        &self,
        now: Millis,
        limit: u32,
        lease_until: Millis,
    ) -> Result<Vec<DueReport>>;

    /// The earliest due time of an unleased outbox row (one whose lease ended counts).
    async fn next_report_due(&self, now: Millis) -> Result<Option<Millis>>;

    /// Clears every outbox lease: used by a reporter that owns the store alone, at start.
    async fn release_report_leases(&self) -> Result<()>;

    /// What [`Change::ReportRef`] last recorded for `run_id` and `source`.
    async fn report_ref(&self, run_id: &str, source: &str) -> Result<Option<String>>;

    /// The relay queue of this store (see [`relay`]); `None` when it has none, and relays
    /// cannot run on it.
    fn relays(&self) -> Option<&dyn RelayStore> {
        None
    }

    /// True when several processes share this store (PostgreSQL): leases are then never
    /// cleared at start (they belong to other replicas too) and end only by expiry, and a
    /// claim is renewed while its work goes on ([`Store::renew`]).
    fn shared(&self) -> bool {
        false
    }

    /// Whether `task` is still claimed under its token ([`Task::lease`]), expired or not: false
    /// when it was done, rescheduled or claimed again since. A store owned by one process
    /// answers true: nobody else can take its work.
    async fn holds(&self, task: &Task) -> Result<bool> {
        let _ = task;
        Ok(true)
    }

    /// Extends the leases of claims still held to `until`; answers the ids of those no longer
    /// held (done, rescheduled or claimed again), whose work the caller should drop.
    async fn renew(&self, leases: &[TaskLease], until: Millis) -> Result<Vec<i64>> {
        let _ = (leases, until);
        Ok(Vec::new())
    }

    /// Wakes when another process hands over `work` (PostgreSQL `LISTEN/NOTIFY`): the value
    /// counts the notifications. `None` for a store no other process writes.
    fn wakes(&self, work: Work) -> Option<tokio::sync::watch::Receiver<u64>> {
        let _ = work;
        None
    }
}

/// Kinds of work another replica can hand over ([`Store::wakes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Work {
    /// Engine tasks due now (a released claim, an API action's task).
    Tasks,
    /// Deliveries to match (a replay, a released claim).
    Deliveries,
    /// Commit statuses to report.
    Reports,
    /// Relay messages to send (a replay, a released claim).
    Relays,
}

impl Work {
    /// The name sent as the notification's payload.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tasks => "tasks",
            Self::Deliveries => "deliveries",
            Self::Reports => "reports",
            Self::Relays => "relays",
        }
    }
}

/// How to open a store: [`open_with`].
#[derive(Clone, Default)]
pub struct StoreOptions {
    /// `sqlite://PATH` or `postgres://user@host:port/db?sslmode=…`.
    pub url: String,
    /// The database password when the URL has none (a resolved secret reference).
    pub password: Option<String>,
    /// How long a claim lasts unless renewed; `None` for the store's default.
    pub lease: Option<std::time::Duration>,
}

impl std::fmt::Debug for StoreOptions {
    /// Never shows the password, nor one written in the URL.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("lease", &self.lease)
            .finish()
    }
}

/// `url` with any password in it replaced by `<redacted>`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Opens the store named by `url` (`sqlite://path`, `sqlite::memory:` is refused because a
/// durable engine needs a file; or `postgres://…`).
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>> {
    open_with(&StoreOptions {
        url: url.to_owned(),
        ..StoreOptions::default()
    })
    .await
}

/// Opens the store `options` name.
pub async fn open_with(options: &StoreOptions) -> Result<std::sync::Arc<dyn Store>> {
    let url = &options.url;
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        PostgresStore::open_shared(options).await
    } else {
        Err(StoreError::Url(format!(
            "store url `{}`: expected `sqlite://PATH` or `postgres://USER@HOST/DB`",
            redact_url(url)
        )))
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn passwords_in_urls_are_hidden() {
        assert_eq!(
            redact_url("postgres://baton:s3cret@db:5432/baton?sslmode=require"),
            "postgres://baton:<redacted>@db:5432/baton?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://baton@db/baton"),
            "postgres://baton@db/baton"
        );
        assert_eq!(redact_url("sqlite://baton.db"), "sqlite://baton.db");
        assert_eq!(
            redact_url("postgres://u:p@ss@h/db"),
            "postgres://u:<redacted>@h/db"
        );
    }
}
