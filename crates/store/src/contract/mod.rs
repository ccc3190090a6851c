//! The store contract: tests every backend passes. Each test runs once per backend
//! ([`backends`]): SQLite in a temporary folder, and PostgreSQL in a schema of its own on the
//! server named by `BATON_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`),
//! so tests run in parallel without seeing each other. A PostgreSQL that cannot be reached
//! fails the tests: the README's test command starts one.

use std::sync::Arc;

use baton_core::RunStatus;
use baton_core::context::TriggerInfo;
use serde_json::json;

use crate::*;

mod fencing;
mod outbox;
mod relay;
mod tests;

/// Which backend a [`Backend`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// [`SqliteStore`] on a file in a temporary folder.
    Sqlite,
    /// [`PostgresStore`] in a fresh schema.
    Postgres,
}

/// A fresh, empty store of one backend, and how to open it again (a restart).
pub(crate) struct Backend {
    /// Which backend.
    pub(crate) kind: Kind,
    /// The store.
    pub(crate) store: Arc<dyn Store>,
    /// Opens the same store again (a second replica, or a restart after `store` is dropped).
    pub(crate) options: StoreOptions,
    /// Keeps the SQLite folder.
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL schema, dropped with the backend.
    schema: Option<String>,
}

impl Drop for Backend {
    /// Drops the PostgreSQL schema on a thread of its own, since `drop` cannot wait for an
    /// async call; a failure leaves a schema behind, which harms no other test.
    fn drop(&mut self) {
        let Some(schema) = self.schema.take() else {
            return;
        };
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    // A test that failed inside a transaction leaves it open (its runtime
                    // waits here, so the rollback is never sent): give up on its locks
                    // rather than wait for them forever.
                    let _ = client
                        .batch_execute(&format!(
                            "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {schema} CASCADE"
                        ))
                        .await;
                }
            });
        })
        .join();
    }
}

impl Backend {
    /// Opens another handle on the same store: for PostgreSQL a second replica; for SQLite
    /// only after every earlier handle is dropped (one process owns a file).
    pub(crate) async fn reopen(&self) -> Arc<dyn Store> {
        open_with(&self.options).await.unwrap()
    }
}

/// The PostgreSQL server the tests use.
pub(crate) fn postgres_url() -> String {
    std::env::var("BATON_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A SQLite store in a new temporary folder.
pub(crate) async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        url: format!("sqlite://{}", dir.path().join("t.db").display()),
        ..StoreOptions::default()
    };
    Backend {
        kind: Kind::Sqlite,
        store: open_with(&options).await.unwrap(),
        options,
        _dir: Some(dir),
        schema: None,
    }
}

/// A name no other test uses: the time and a counter.
fn unique_name() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("t_{nanos:x}_{}_{n}", std::process::id())
}

/// Creates an empty schema on the test server and answers the options that open a store
/// in it, with the schema's name.
pub(crate) async fn postgres_schema() -> (StoreOptions, String) {
    let schema = unique_name();
    let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("the test PostgreSQL at {}: {e}", postgres_url()));
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let separator = if postgres_url().contains('?') {
        '&'
    } else {
        '?'
    };
    let options = StoreOptions {
        url: format!(
            "{}{separator}options=-csearch_path%3D{schema}",
            postgres_url()
        ),
        ..StoreOptions::default()
    };
    (options, schema)
}

/// A PostgreSQL store in a new schema.
pub(crate) async fn postgres() -> Backend {
    let (options, schema) = postgres_schema().await;
    Backend {
        kind: Kind::Postgres,
        store: open_with(&options).await.unwrap(),
        options,
        _dir: None,
        schema: Some(schema),
    }
}

/// A store of `kind` as a build that knew only the first `version` migrations left it,
/// with `script` (SQL both backends run) applied to it then, opened by this build (which
/// migrates it the rest of the way).
pub(crate) async fn migrated_from(kind: Kind, version: usize, script: &str) -> Backend {
    match kind {
        Kind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.db");
            let mut conn = rusqlite::Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &sqlite::schema::MIGRATIONS[..version] {
                tx.execute_batch(sql).unwrap();
            }
            tx.execute_batch(script).unwrap();
            tx.pragma_update(None, "user_version", version as i64)
                .unwrap();
            tx.commit().unwrap();
            drop(conn);
            let options = StoreOptions {
                url: format!("sqlite://{}", path.display()),
                ..StoreOptions::default()
            };
            Backend {
                kind,
                store: open_with(&options).await.unwrap(),
                options,
                _dir: Some(dir),
                schema: None,
            }
        }
        Kind::Postgres => {
            let (options, schema) = postgres_schema().await;
            let (client, connection) =
                tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let mut all = format!(
                "BEGIN; SET LOCAL search_path = {schema}; \
                 CREATE TABLE baton_schema (version BIGINT NOT NULL); \
                 INSERT INTO baton_schema VALUES ({version});"
            );
            for sql in &postgres::schema::MIGRATIONS[..version] {
                all.push_str(sql);
            }
            all.push_str(script);
            all.push_str("; COMMIT;");
            client.batch_execute(&all).await.unwrap();
            Backend {
                kind,
                store: open_with(&options).await.unwrap(),
                options,
                _dir: None,
                schema: Some(schema),
            }
        }
    }
}

/// One fresh store per backend, SQLite first.
pub(crate) async fn backends() -> Vec<Backend> {
    vec![sqlite().await, postgres().await]
}

/// Test data.
pub(crate) fn header(id: &str) -> RunHeader {
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
/// Test data.
pub(crate) fn payload() -> RunPayload {
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
/// Test data.
pub(crate) fn task(
    run: &str,
    stage: &str,
    kind: TaskKind,
    due: Millis,
    claim: Option<Millis>,
) -> Change {
    Change::Schedule(TaskSpec {
        run_id: run.into(),
        stage_id: stage.into(),
        kind,
        attempt: 1,
        due_at: due,
        claim_until: claim,
    })
}
/// Test data.
pub(crate) fn delivery(id: &str) -> NewDelivery {
    NewDelivery {
        source: "github".into(),
        delivery_id: id.into(),
        event: "push".into(),
        headers: r#"{"x-github-event":"push"}"#.into(),
        body: r#"{"ref": "main"}"#.into(),
        received_at: 5,
    }
}

impl Backend {
    /// The store as a restarted process finds it: the old handle dropped first (one process
    /// owns a SQLite file), then the store opened again.
    pub(crate) async fn restarted(mut self) -> Self {
        let (kind, options) = (self.kind, self.options.clone());
        // Taken, so the old handle's drop keeps the folder and the schema.
        let (dir, schema) = (self._dir.take(), self.schema.take());
        drop(self);
        Self {
            kind,
            store: open_with(&options).await.unwrap(),
            options,
            _dir: dir,
            schema,
        }
    }
}

/// Tests that run once on every backend: each name is an `async fn name(Backend)` of the
/// calling module, run by a `#[tokio::test]` of the same name in its `every_backend` module.
macro_rules! every_backend {
    ($($name:ident),* $(,)?) => {
        mod every_backend {
            $(
                #[tokio::test]
                async fn $name() {
                    for backend in crate::contract::backends().await {
                        // Shown with a failure's output: which backend failed.
                        println!("on {:?}", backend.kind);
                        super::$name(backend).await;
                    }
                }
            )*
        }
    };
}
pub(crate) use every_backend;
