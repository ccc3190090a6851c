//! The store contract: tests every backend passes. Each test runs once per backend
//! ([`backends`]): SQLite in a temporary folder, and PostgreSQL in a schema of its own on the
//! server named by `BATON_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`),
//! so tests run in parallel without seeing each other. A PostgreSQL that cannot be reached
//! fails the tests: the README's test command starts one.

use std::sync::Arc;

use crate::*;

mod outbox;
mod relay;

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
    }
}

/// One fresh store per backend, SQLite first.
pub(crate) async fn backends() -> Vec<Backend> {
    // PostgreSQL joins when its store is in the build.
    vec![sqlite().await]
}

impl Backend {
    /// The store as a restarted process finds it: the old handle dropped first (one process
    /// owns a SQLite file), then the store opened again.
    pub(crate) async fn restarted(self) -> Self {
        let Self {
            kind,
            store,
            options,
            _dir,
        } = self;
        drop(store);
        let store = open_with(&options).await.unwrap();
        Self {
            kind,
            store,
            options,
            _dir,
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
