//! What the benchmark binaries share: settings from the environment, a `baton serve` in a
//! scratch folder, and reading its REST API.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The environment variable `name` parsed, or `default` when it is not set. Panics, naming
/// the variable, when it is set to something that does not parse.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text}: not a number")),
        Err(_) => default,
    }
}

/// An HTTP client for the benchmarks' own calls: no proxy, a generous timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// `GET url` with a bearer `token`; panics unless the answer is 2xx JSON.
pub async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> Value {
    let answer = http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(
        answer.status().is_success(),
        "GET {url}: {}",
        answer.status()
    );
    answer.json().await.expect("JSON")
}

/// The value at the fraction `q` (0 to 1) of `sorted`, nearest rank; 0 when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The store backend a benchmark runs baton on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the scratch folder.
    Sqlite,
    /// A fresh PostgreSQL database ([`fresh_pg_database`]).
    Postgres,
}

impl Backend {
    /// As the command line and the figures name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// A client of the PostgreSQL database at `url`; panics, naming the server, when it cannot
/// connect.
pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", baton_store::redact_url(url)));
    tokio::spawn(connection);
    client
}

/// Creates database `name` on the server `pg_url` (`postgres://user@host:port`), dropping
/// one of that name left by an earlier run first; answers the new database's URL.
pub async fn fresh_pg_database(pg_url: &str, name: &str) -> String {
    let admin = pg_connect(&format!("{pg_url}/postgres")).await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .expect("drop an old bench database");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create the bench database");
    format!("{pg_url}/{name}")
}

/// Drops database `name` on the server `pg_url`; a failure leaves it for the next run's
/// [`fresh_pg_database`].
pub async fn drop_pg_database(pg_url: &str, name: &str) {
    let admin = pg_connect(&format!("{pg_url}/postgres")).await;
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
}

/// A `baton serve` in a scratch folder, killed when dropped.
pub struct Baton {
    child: Child,
    /// Where it listens: `http://127.0.0.1:<port>`.
    pub url: String,
    dir: tempfile::TempDir,
}

impl Drop for Baton {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Baton {
    /// Writes the files `files` gives for the scratch folder (name, content; `baton.toml`
    /// among them), starts `binary serve -c baton.toml --listen <listen>` there with `env`
    /// and `BATON_LOG=warn`, and waits (at most 30 s) until it says where it listens. Its
    /// other log lines go to stderr, prefixed with `listen`.
    pub fn start(
        binary: &str,
        listen: &str,
        env: &[(&str, &str)],
        files: impl FnOnce(&Path) -> Vec<(String, String)>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, content) in files(dir.path()) {
            std::fs::write(dir.path().join(&name), content)
                .unwrap_or_else(|e| panic!("writing {name}: {e}"));
        }
        // The child runs in the scratch folder: a relative path must not be read from there.
        let binary = std::path::absolute(binary).expect("the binary's path");
        let mut child = Command::new(binary)
            .args(["serve", "-c", "baton.toml", "--listen", listen])
            .current_dir(dir.path())
            .envs(env.iter().copied())
            .env("BATON_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn baton serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let name = listen.to_owned();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                } else {
                    eprintln!("baton serve ({name}): {line}");
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("baton serve did not start on {listen}"));
        Self { child, url, dir }
    }

    /// The scratch folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id of `baton serve` (to read its memory and CPU time from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), 50.0);
        assert_eq!(quantile(&values, 0.99), 99.0);
        assert_eq!(quantile(&values, 1.0), 100.0);
        assert_eq!(quantile(&values, 0.0), 1.0);
        assert_eq!(quantile(&[], 0.99), 0.0);
    }
}
