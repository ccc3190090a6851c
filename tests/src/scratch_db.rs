//! A PostgreSQL database of a test's own, on the server the tests use, dropped when the test
//! ends, so tests that run `baton` against PostgreSQL can run side by side.

use std::time::{SystemTime, UNIX_EPOCH};

/// The PostgreSQL server the tests use: `$BATON_TEST_POSTGRES`, else the one this machine
/// runs (`postgres` with trust authentication, database `test`).
pub fn postgres_url() -> String {
    std::env::var("BATON_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A database created for one test; dropped (with its connections) with this value.
pub struct ScratchDatabase {
    name: String,
    server: String,
}

impl ScratchDatabase {
    /// Creates `<prefix>_<pid>_<nanoseconds>` on [`postgres_url`]'s server.
    pub fn create(prefix: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let name = format!("{prefix}_{}_{nanos}", std::process::id());
        let server = postgres_url();
        execute(&server, &format!("CREATE DATABASE \"{name}\""));
        Self { name, server }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's URL with this database in place of the server URL's own.
    pub fn url(&self) -> String {
        let (base, query) = match self.server.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (self.server.as_str(), String::new()),
        };
        let authority = base
            .rsplit_once('/')
            .filter(|(head, _)| head.contains("//"))
            .map_or(base, |(head, _)| head);
        format!("{authority}/{}{query}", self.name)
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        // FORCE: a process under test that was killed may leave a session open for a while.
        let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if let Err(e) = try_execute(&self.server, &statement) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// Runs `sql` on the database of `url`, failing the test when it cannot.
fn execute(url: &str, sql: &str) {
    try_execute(url, sql).unwrap_or_else(|e| panic!("PostgreSQL at {url}: {sql}: {e}"));
}

fn try_execute(url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(connection);
        let result = client.batch_execute(sql).await;
        drop(client);
        let _ = driver.await;
        result
    })
}
