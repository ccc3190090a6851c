//! The embedded SQLite store: one file, WAL, `synchronous=FULL`.
//!
//! All writes go through one writer task that drains every queued batch into a single
//! transaction (group commit): one fsync serves many engine steps, which is what makes
//! durable state changes fast on one disk. Each batch runs in its own savepoint, so a
//! failing batch does not sink the others. Reads use a separate small pool.
//!
//! One process owns a store file at a time (an exclusive lock on `<file>.lock`), so an
//! engine can clear stale leases at start without waiting for them to expire.

use std::fs::File;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use baton_core::{ExternalRef, RunStatus, StageStatus};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use crate::*;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The most batches folded into one transaction.
const MAX_GROUP: usize = 512;

enum Op {
    Commit(Vec<Change>),
    Claim {
        now: Millis,
        limit: u32,
        lease_until: Millis,
    },
    ReleaseLeases,
}

type Reply = oneshot::Sender<Result<Vec<Task>>>;

/// The SQLite store.
pub struct SqliteStore {
    writer: mpsc::UnboundedSender<(Op, Reply)>,
    reader: SqlitePool,
    path: PathBuf,
    _lock: File,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://path/to/file.db`),
    /// takes the process lock and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Url(format!("store url `{url}`: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let path = options.get_filename().to_path_buf();
        if path.as_os_str().is_empty() || path.to_string_lossy().contains(":memory:") {
            return Err(StoreError::Url(format!(
                "store url `{url}`: an in-memory database cannot be durable; name a file"
            )));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Url(format!(
                    "cannot create the store's folder {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let lock = take_lock(&path)?;
        let mut writer_conn = SqliteConnection::connect_with(&options).await?;
        MIGRATOR.run(&mut writer_conn).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options)
            .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer_loop(writer_conn, rx));
        Ok(Self {
            writer: tx,
            reader,
            path,
            _lock: lock,
        })
    }

    /// The database file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    async fn send(&self, op: Op) -> Result<Vec<Task>> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send((op, reply))
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

fn take_lock(db: &std::path::Path) -> Result<File> {
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

async fn writer_loop(mut conn: SqliteConnection, mut rx: mpsc::UnboundedReceiver<(Op, Reply)>) {
    let mut group: Vec<(Op, Reply)> = Vec::with_capacity(64);
    while let Some(first) = rx.recv().await {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let results = run_group(&mut conn, &group).await;
        match results {
            Ok(results) => {
                for ((_, reply), result) in group.drain(..).zip(results) {
                    let _ = reply.send(result);
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

/// Applies a group of operations in one transaction, each in its own savepoint.
async fn run_group(
    conn: &mut SqliteConnection,
    group: &[(Op, Reply)],
) -> Result<Vec<Result<Vec<Task>>>> {
    let mut tx = conn.begin().await?;
    let mut results = Vec::with_capacity(group.len());
    for (op, _) in group {
        let mut savepoint = tx.begin().await?;
        match apply(&mut savepoint, op).await {
            Ok(tasks) => {
                savepoint.commit().await?;
                results.push(Ok(tasks));
            }
            Err(e) => {
                savepoint.rollback().await?;
                results.push(Err(e));
            }
        }
    }
    tx.commit().await?;
    Ok(results)
}

async fn apply(conn: &mut SqliteConnection, op: &Op) -> Result<Vec<Task>> {
    match op {
        Op::Commit(changes) => {
            let mut claimed = Vec::new();
            for change in changes {
                if let Some(task) = apply_change(conn, change).await? {
                    claimed.push(task);
                }
            }
            Ok(claimed)
        }
        Op::Claim {
            now,
            limit,
            lease_until,
        } => {
            let rows = sqlx::query(
                "UPDATE tasks SET lease_until = ?1 WHERE id IN (
                     SELECT id FROM tasks WHERE due_at <= ?2 AND (lease_until IS NULL OR lease_until < ?2)
                     ORDER BY due_at LIMIT ?3)
                 RETURNING id, version, run_id, stage_id, kind, attempt, due_at",
            )
            .bind(lease_until)
            .bind(now)
            .bind(*limit as i64)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(task_from_row).collect()
        }
        Op::ReleaseLeases => {
            sqlx::query("UPDATE tasks SET lease_until = NULL WHERE lease_until IS NOT NULL")
                .execute(&mut *conn)
                .await?;
            Ok(Vec::new())
        }
    }
}

async fn apply_change(conn: &mut SqliteConnection, change: &Change) -> Result<Option<Task>> {
    match change {
        Change::InsertRun(header, payload) => {
            sqlx::query(
                "INSERT INTO runs (id, workflow, status, spec, event, trigger_info, cancel_requested, message, created_at, started_at, finished_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .bind(&header.id)
            .bind(&header.workflow)
            .bind(header.status.as_str())
            .bind(payload.spec.to_string())
            .bind(payload.event.to_string())
            .bind(to_json(&payload.trigger))
            .bind(header.cancel_requested)
            .bind(&header.message)
            .bind(header.created_at)
            .bind(header.started_at)
            .bind(header.finished_at)
            .execute(&mut *conn)
            .await?;
        }
        Change::PutRun(header) => {
            sqlx::query(
                "UPDATE runs SET status = ?2, cancel_requested = ?3, message = ?4, started_at = ?5, finished_at = ?6 WHERE id = ?1",
            )
            .bind(&header.id)
            .bind(header.status.as_str())
            .bind(header.cancel_requested)
            .bind(&header.message)
            .bind(header.started_at)
            .bind(header.finished_at)
            .execute(&mut *conn)
            .await?;
        }
        Change::PutStage(s) => {
            sqlx::query(
                "INSERT OR REPLACE INTO stages (run_id, stage_id, position, status, reason, message, attempt, phase, input, external, outputs, signal, started_at, finished_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )
            .bind(&s.run_id)
            .bind(&s.stage_id)
            .bind(s.position as i64)
            .bind(s.status.as_str())
            .bind(&s.reason)
            .bind(&s.message)
            .bind(s.attempt as i64)
            .bind(s.phase.map(Phase::as_str))
            .bind(s.input.as_ref().map(Value::to_string))
            .bind(s.external.as_ref().map(to_json))
            .bind(s.outputs.as_ref().map(Value::to_string))
            .bind(s.signal.as_ref().map(Value::to_string))
            .bind(s.started_at)
            .bind(s.finished_at)
            .execute(&mut *conn)
            .await?;
        }
        Change::PutAttempt(a) => {
            sqlx::query(
                "INSERT OR REPLACE INTO attempts (run_id, stage_id, attempt, status, reason, message, external, started_at, finished_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .bind(&a.run_id)
            .bind(&a.stage_id)
            .bind(a.attempt as i64)
            .bind(a.status.as_str())
            .bind(&a.reason)
            .bind(&a.message)
            .bind(a.external.as_ref().map(to_json))
            .bind(a.started_at)
            .bind(a.finished_at)
            .execute(&mut *conn)
            .await?;
        }
        Change::Schedule(t) => {
            let row = sqlx::query(
                "INSERT INTO tasks (run_id, stage_id, kind, attempt, due_at, lease_until, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)
                 ON CONFLICT (run_id, stage_id, kind) DO UPDATE SET
                     attempt = excluded.attempt, due_at = excluded.due_at,
                     lease_until = excluded.lease_until, version = tasks.version + 1
                 RETURNING id, version, run_id, stage_id, kind, attempt, due_at",
            )
            .bind(&t.run_id)
            .bind(&t.stage_id)
            .bind(t.kind.as_str())
            .bind(t.attempt as i64)
            .bind(t.due_at)
            .bind(t.claim_until)
            .fetch_one(&mut *conn)
            .await?;
            if t.claim_until.is_some() {
                return task_from_row(&row).map(Some);
            }
        }
        Change::Done { id, version } => {
            sqlx::query("DELETE FROM tasks WHERE id = ?1 AND version = ?2")
                .bind(id)
                .bind(version)
                .execute(&mut *conn)
                .await?;
        }
        Change::Unschedule {
            run_id,
            stage_id,
            kind,
        } => {
            sqlx::query("DELETE FROM tasks WHERE run_id = ?1 AND stage_id = ?2 AND kind = ?3")
                .bind(run_id)
                .bind(stage_id)
                .bind(kind.as_str())
                .execute(&mut *conn)
                .await?;
        }
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

fn json_col<T: serde::de::DeserializeOwned>(row: &SqliteRow, column: &str) -> Result<Option<T>> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(column, e)))
        .transpose()
}

fn task_from_row(row: &SqliteRow) -> Result<Task> {
    let kind: String = row.try_get("kind")?;
    Ok(Task {
        id: row.try_get("id")?,
        version: row.try_get("version")?,
        run_id: row.try_get("run_id")?,
        stage_id: row.try_get("stage_id")?,
        kind: TaskKind::parse(&kind).ok_or_else(|| corrupt("tasks.kind", kind))?,
        attempt: row.try_get::<i64, _>("attempt")? as u32,
        due_at: row.try_get("due_at")?,
    })
}

fn header_from_row(row: &SqliteRow) -> Result<RunHeader> {
    let status: String = row.try_get("status")?;
    Ok(RunHeader {
        id: row.try_get("id")?,
        workflow: row.try_get("workflow")?,
        status: RunStatus::parse(&status).ok_or_else(|| corrupt("runs.status", status))?,
        cancel_requested: row.try_get("cancel_requested")?,
        message: row.try_get("message")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn stage_status(row: &SqliteRow) -> Result<StageStatus> {
    let status: String = row.try_get("status")?;
    StageStatus::parse(&status).ok_or_else(|| corrupt("stages.status", status))
}

fn stage_from_row(row: &SqliteRow) -> Result<StageRecord> {
    let phase: Option<String> = row.try_get("phase")?;
    Ok(StageRecord {
        run_id: row.try_get("run_id")?,
        stage_id: row.try_get("stage_id")?,
        position: row.try_get::<i64, _>("position")? as u32,
        status: stage_status(row)?,
        reason: row.try_get("reason")?,
        message: row.try_get("message")?,
        attempt: row.try_get::<i64, _>("attempt")? as u32,
        phase: phase.as_deref().and_then(Phase::parse),
        input: json_col(row, "input")?,
        external: json_col::<ExternalRef>(row, "external")?,
        outputs: json_col(row, "outputs")?,
        signal: json_col(row, "signal")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn attempt_from_row(row: &SqliteRow) -> Result<AttemptRecord> {
    Ok(AttemptRecord {
        run_id: row.try_get("run_id")?,
        stage_id: row.try_get("stage_id")?,
        attempt: row.try_get::<i64, _>("attempt")? as u32,
        status: stage_status(row)?,
        reason: row.try_get("reason")?,
        message: row.try_get("message")?,
        external: json_col(row, "external")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn commit(&self, changes: Vec<Change>) -> Result<Vec<Task>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        self.send(Op::Commit(changes)).await
    }

    async fn claim_due(&self, now: Millis, limit: u32, lease_until: Millis) -> Result<Vec<Task>> {
        self.send(Op::Claim {
            now,
            limit,
            lease_until,
        })
        .await
    }

    async fn next_due(&self) -> Result<Option<Millis>> {
        let row = sqlx::query("SELECT MIN(due_at) AS due FROM tasks WHERE lease_until IS NULL")
            .fetch_one(&self.reader)
            .await?;
        Ok(row.try_get("due")?)
    }

    async fn release_leases(&self) -> Result<()> {
        self.send(Op::ReleaseLeases).await.map(|_| ())
    }

    async fn load_run(&self, run_id: &str) -> Result<Option<RunSnapshot>> {
        let Some(row) = sqlx::query("SELECT * FROM runs WHERE id = ?1")
            .bind(run_id)
            .fetch_optional(&self.reader)
            .await?
        else {
            return Ok(None);
        };
        let header = header_from_row(&row)?;
        let spec: String = row.try_get("spec")?;
        let event: String = row.try_get("event")?;
        let payload = RunPayload {
            spec: serde_json::from_str(&spec).map_err(|e| corrupt("runs.spec", e))?,
            event: serde_json::from_str(&event).map_err(|e| corrupt("runs.event", e))?,
            trigger: json_col(&row, "trigger_info")?.unwrap_or_default(),
        };
        let stages = sqlx::query("SELECT * FROM stages WHERE run_id = ?1 ORDER BY position")
            .bind(run_id)
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(stage_from_row)
            .collect::<Result<_>>()?;
        let attempts =
            sqlx::query("SELECT * FROM attempts WHERE run_id = ?1 ORDER BY stage_id, attempt")
                .bind(run_id)
                .fetch_all(&self.reader)
                .await?
                .iter()
                .map(attempt_from_row)
                .collect::<Result<_>>()?;
        Ok(Some(RunSnapshot {
            header,
            payload,
            stages,
            attempts,
        }))
    }

    async fn unfinished_runs(&self) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT id FROM runs WHERE status NOT IN ('succeeded', 'failed', 'cancelled') ORDER BY created_at",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunHeader>> {
        let limit = if filter.limit == 0 {
            50
        } else {
            filter.limit.min(1000)
        };
        let rows = sqlx::query(
            "SELECT id, workflow, status, cancel_requested, message, created_at, started_at, finished_at FROM runs
             WHERE (?1 IS NULL OR workflow = ?1) AND (?2 IS NULL OR status = ?2)
             ORDER BY created_at DESC, id DESC LIMIT ?3 OFFSET ?4",
        )
        .bind(&filter.workflow)
        .bind(filter.status.map(RunStatus::as_str))
        .bind(limit as i64)
        .bind(filter.offset as i64)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(header_from_row).collect()
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }
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
