//! In-process models of the forges baton drives: GitHub's REST API ([`github`]), GitLab's
//! ([`gitlab`]), Travis CI's API v3 ([`travis`]), Concourse's ATC API ([`concourse`]) and
//! the Kubernetes API server with its controllers ([`kubernetes`]).
//!
//! Each model keeps state and follows `docs/adapters/github-actions.md`,
//! `docs/adapters/gitlab-ci.md` and `docs/adapters/travis.md` (and the public API references
//! cited there): runs, pipelines and builds move from queued to their end as real time
//! passes, a cancel changes them, and the awkward answers (rate limits, 5xx, garbage,
//! statuses baton has never seen) can be switched on per test. Every request is counted by a [`Meter`], so a test or a benchmark
//! can say how many requests a run cost and how fast one token was spent.
//!
//! The models serve on `127.0.0.1` from the caller's Tokio runtime ([`serve`]), or from a
//! runtime of their own for tests that are not async ([`serve_in_background`]).

pub mod concourse;
pub mod github;
pub mod gitlab;
pub mod kubernetes;
pub mod travis;
pub mod travis_signing;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// An awkward answer of the GitLab and Travis models, switched on for their next requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// This status (a 5xx) with an HTML body, nothing done.
    Status(u16),
    /// 429 with `Retry-After` (seconds), nothing done (GitLab adds `RateLimit-Reset`).
    RateLimited(u64),
    /// 200 with a body that is not JSON, after doing the work.
    Garbage,
    /// The work is done, then the answer waits this long (past the client's timeout).
    Delay(Duration),
    /// The work is done, then the connection is dropped without an answer (a proxy that
    /// hung up).
    Hangup,
}

/// Drops the connection being served, without an answer: the task serving it ends here
/// (without the noise of a panic message).
pub(crate) fn hang_up() -> ! {
    std::panic::resume_unwind(Box::new("the model hung up"))
}

/// Which requests a [`Fault`] hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Any request.
    Any,
    /// Only the requests that create work (a pipeline, a build request).
    Create,
    /// Only reads (`GET`).
    Read,
}

/// A lock, taken even when a panicking holder poisoned it (the models' state stays usable).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Now, in ms since the epoch.
pub(crate) fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH);
    since.map_or(0, |d| d.as_millis() as u64)
}

/// A model being served: where it listens, and the task (or thread) serving it.
#[derive(Debug)]
pub struct Served {
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub url: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Served {
    /// Writes where it listens into `slot`, for a model whose answers hold its own links.
    pub(crate) fn recorded(self, slot: &Mutex<String>) -> Self {
        lock(slot).clone_from(&self.url);
        self
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Serves `router` on a free port of 127.0.0.1 from the current Tokio runtime, until the
/// returned [`Served`] is dropped.
pub async fn serve(router: axum::Router) -> std::io::Result<Served> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(Served {
        url: format!("http://{addr}"),
        addr,
        task: Some(task),
        runtime: None,
    })
}

/// Serves the router `make` builds from a runtime of its own (two worker threads), for
/// tests that are not async, until the returned [`Served`] is dropped.
pub fn serve_in_background(make: impl FnOnce() -> axum::Router) -> std::io::Result<Served> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut served = runtime.block_on(async { serve(make()).await })?;
    served.runtime = Some(runtime);
    Ok(served)
}

/// A fault's refusal before any work: a bare 5xx page, as a proxy in front of the forge
/// sends it (502 for a code that is not a status).
pub(crate) fn proxy_error(code: u16) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status =
        axum::http::StatusCode::from_u16(code).unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
    (status, "<html><body>502 Bad Gateway</body></html>").into_response()
}

/// A fault's refusal before any work: 429 asking to wait `secs` (`Retry-After`, and with
/// `reset`, `RateLimit-Reset` as a Unix time, as GitLab sends it).
pub(crate) fn too_many_requests(secs: u64, reset: bool) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut response = (
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        [("retry-after", secs.to_string())],
        "Retry later\n",
    )
        .into_response();
    if reset {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        if let Ok(value) = (now + secs).to_string().parse() {
            response.headers_mut().insert("ratelimit-reset", value);
        }
    }
    response
}

/// A JSON answer after the work, or what a fault makes of it: `garbage` (200 with that
/// page, not JSON), or the answer `late` by that long.
pub(crate) async fn after_work(
    status: axum::http::StatusCode,
    body: serde_json::Value,
    garbage: Option<&'static str>,
    late: Option<Duration>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Some(page) = garbage {
        return (axum::http::StatusCode::OK, page).into_response();
    }
    if let Some(d) = late {
        tokio::time::sleep(d).await;
    }
    (status, axum::Json(body)).into_response()
}

/// Counts requests: in all, per credential, and per second (for the peak rate).
#[derive(Debug)]
pub struct Meter {
    started: Instant,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: u64,
    by_credential: BTreeMap<String, u64>,
    by_second: BTreeMap<u64, u64>,
}

impl Default for Meter {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            counts: Mutex::default(),
        }
    }
}

impl Meter {
    /// Counts one request made with `credential` (a token's name, never its value).
    pub fn record(&self, credential: &str) {
        let second = self.started.elapsed().as_secs();
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total += 1;
        *counts
            .by_credential
            .entry(credential.to_owned())
            .or_default() += 1;
        *counts.by_second.entry(second).or_default() += 1;
    }

    /// Requests counted in all.
    pub fn total(&self) -> u64 {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// Requests counted with `credential`.
    pub fn by_credential(&self, credential: &str) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.by_credential.get(credential).copied().unwrap_or(0)
    }

    /// The most requests counted within one second since the meter began.
    pub fn peak_per_second(&self) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.by_second.values().copied().max().unwrap_or(0)
    }

    /// How long the meter has been counting.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}
