//! A PostgreSQL database of its own for one test, created on the server the tests use and
//! dropped when the test ends, so tests that run `baton serve` replicas on PostgreSQL run
//! side by side without seeing each other's rows. The test reads what baton stored with
//! plain SQL through it. With `BATON_TEST_KEEP_DB` set, the database is kept (and named)
//! for a look after the test.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio_postgres::{NoTls, SimpleQueryMessage};

/// The server the tests use: `$BATON_TEST_POSTGRES`, else the local one (trust auth).
pub fn admin_url() -> String {
    std::env::var("BATON_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh database, dropped (with its connections) when this is dropped.
pub struct ScratchDb {
    name: String,
    admin: String,
    url: String,
}

impl ScratchDb {
    /// Creates a database named `<prefix>_<pid>_<nanos>` on [`admin_url`]'s server.
    pub fn create(prefix: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let name = format!("{prefix}_{}_{nanos}", std::process::id());
        let admin = admin_url();
        // Database names cannot be bound as parameters; this one is made of [a-z0-9_] only.
        execute(&admin, &format!("CREATE DATABASE {name}"));
        let url = match admin.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("{admin}: expected postgres://…/DATABASE"),
        };
        Self { name, admin, url }
    }

    /// `postgres://…/<name>`, for `[store] url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The rows of `sql` (simple query protocol: every value as text, NULL as None).
    pub fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        query(&self.url, sql)
    }

    /// The first column of the first row of `sql`, as a whole number.
    pub fn number(&self, sql: &str) -> i64 {
        let rows = self.rows(sql);
        let cell = rows
            .first()
            .and_then(|row| row.first())
            .cloned()
            .flatten()
            .unwrap_or_else(|| panic!("{sql}: no value"));
        cell.parse()
            .unwrap_or_else(|e| panic!("{sql}: `{cell}` is not a number ({e})"))
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if std::env::var_os("BATON_TEST_KEEP_DB").is_some() {
            eprintln!("BATON_TEST_KEEP_DB: kept database {}", self.url);
            return;
        }
        // FORCE: replicas killed by the test may leave sessions behind for a moment.
        let _ = try_query(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn execute(url: &str, sql: &str) {
    query(url, sql);
}

/// [`try_query`], tried again for a while: the replicas under test may hold every
/// connection the server allows for a moment.
fn query(url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut tries = 0;
    loop {
        match try_query(url, sql) {
            Ok(rows) => return rows,
            Err(e) if tries < 20 => {
                tries += 1;
                eprintln!(
                    "{sql}: {} (PostgreSQL at {url}); trying again",
                    describe(&e)
                );
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Err(e) => panic!("{sql}: {} (PostgreSQL at {url})", describe(&e)),
        }
    }
}

/// The server's own message when there is one (`db error` alone says nothing).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// One connection per call: the tests read seldom, and a connection cannot outlive the
/// runtime that drives it.
fn try_query(url: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        let driver = tokio::spawn(connection);
        let messages = client.simple_query(sql).await;
        drop(client);
        let _ = driver.await;
        Ok(messages?
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    })
}
