//! What 10,000 runs waiting at once on a slow CI cost one `baton serve`: its memory and its
//! CPU while they wait, on each store backend.
//!
//! `scale BATON [sqlite|postgres]…` (bench/scale/run.sh runs it); the environment sets
//! `RUNS` (10,000), `SETTLE_SECS` (100: from the moment every run waits until the sample
//! starts, so that every stage's poll wait has grown to its longest), `SAMPLE_SECS` (60),
//! `WAIT_SECS` (900: how long the runs may take to all be waiting before the figures are
//! taken as they stand), `PG_URL` (`postgres://postgres@127.0.0.1:5432`: the server where
//! each PostgreSQL side gets a fresh database, dropped at its end).
//!
//! Per backend: the in-process GitLab model of `baton-forge-fakes`, whose pipelines run for
//! a day (a CI that never finishes while measured); a `baton serve` on a fresh store with one
//! workflow of one `gitlab-ci` stage and the adapter's default polls (5 s growing ×1.5 to
//! 30 s, less up to a fifth at random); `RUNS` runs started through the REST API. Once the
//! store holds every stage running with the pipeline's reference, and after `SETTLE_SECS`,
//! the bench reads baton's `/proc/PID/status` (VmRSS, VmHWM) and `/proc/PID/stat`
//! (utime + stime) and the model's request count at the start and the end of `SAMPLE_SECS`.
//!
//! Figures: RSS before any run, RSS while waiting and its peak, RSS per waiting run; CPU
//! while waiting as a share of one core; the model's requests per second against the poll
//! schedule's rate (`RUNS` / 27 s, the mean of the longest wait) and CPU time per request.

use std::time::{Duration, Instant};

use baton_bench::{
    Backend, Baton, client, drop_pg_database, env_or, fresh_pg_database, pg_connect,
};
use baton_forge_fakes::gitlab::{GitLab, JobPlan, PipelinePlan};
use serde_json::{Value, json};

/// The REST API token of the scratch server (operator: it starts runs).
const API_TOKEN: &str = "bench-operator";
/// The GitLab token baton uses.
const FORGE_TOKEN: &str = "bench-forge-token";
/// The GitLab project the stages create pipelines in.
const PROJECT: &str = "bench/app";
/// The adapter's longest wait between polls (its default), and the mean factor of its
/// jitter (uniform in [0.8, 1.0]): a waiting stage polls every 27 s on average.
const POLL_MAX_SECS: f64 = 30.0;
const JITTER_MEAN: f64 = 0.9;
/// Run starts in flight at once.
const START_CONCURRENCY: usize = 32;

struct Settings {
    baton: String,
    runs: usize,
    settle: Duration,
    sample: Duration,
    wait: Duration,
    pg_url: String,
    /// Clock ticks per second.
    ticks: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((baton, names)) = args.split_first() else {
        eprintln!("usage: scale BATON [sqlite|postgres]…");
        std::process::exit(2);
    };
    let backends: Vec<Backend> = if names.is_empty() {
        vec![Backend::Sqlite]
    } else {
        names
            .iter()
            .map(|n| match n.as_str() {
                "sqlite" => Backend::Sqlite,
                "postgres" => Backend::Postgres,
                other => panic!("unknown backend `{other}`: sqlite or postgres"),
            })
            .collect()
    };
    let settings = Settings {
        baton: baton.clone(),
        runs: env_or("RUNS", 10_000),
        settle: Duration::from_secs(env_or("SETTLE_SECS", 100)),
        sample: Duration::from_secs(env_or("SAMPLE_SECS", 60)),
        wait: Duration::from_secs(env_or("WAIT_SECS", 900)),
        pg_url: std::env::var("PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned()),
        ticks: clock_ticks(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut reports = Vec::new();
    for backend in backends {
        reports.push(runtime.block_on(side(&settings, backend)));
    }
    println!();
    println!(
        "scale: {} runs waiting at once, each on a GitLab pipeline that does not end; sample {} s after {} s settled",
        settings.runs,
        settings.sample.as_secs(),
        settings.settle.as_secs()
    );
    println!(
        "  {:<9} {:>9} {:>11} {:>12} {:>11} {:>13} {:>11} {:>12} {:>11} {:>10}",
        "backend",
        "waiting",
        "all in",
        "RSS idle",
        "RSS wait",
        "RSS peak",
        "per run",
        "CPU wait",
        "requests/s",
        "CPU/req"
    );
    for r in &reports {
        r.print(&settings);
    }
    let bound = settings.runs as f64 / (POLL_MAX_SECS * JITTER_MEAN);
    println!(
        "  targets: RSS ≤ 256 MB; requests/s near the poll schedule's {bound:.0}/s ({} runs / {:.0} s), CPU a cost per poll",
        settings.runs,
        POLL_MAX_SECS * JITTER_MEAN
    );
    for r in &reports {
        let rss_ok = r.rss_wait_kb.max(r.rss_peak_kb) as f64 / 1024.0 <= 256.0;
        println!(
            "  {}: RSS {} (peak {:.0} MB); {}/{} runs waiting",
            r.backend.name(),
            if rss_ok { "met" } else { "MISSED" },
            r.rss_peak_kb as f64 / 1024.0,
            r.waiting,
            settings.runs
        );
    }
}

/// One backend's figures.
struct Report {
    backend: Backend,
    waiting: usize,
    /// From the first start to the moment every run was waiting.
    all_in: Duration,
    rss_idle_kb: u64,
    rss_wait_kb: u64,
    rss_peak_kb: u64,
    /// CPU seconds over the sample.
    cpu: f64,
    /// Requests the model served over the sample.
    requests: u64,
    sample: Duration,
}

impl Report {
    fn print(&self, s: &Settings) {
        let mb = |kb: u64| format!("{:.0} MB", kb as f64 / 1024.0);
        let per_run = self.rss_wait_kb.saturating_sub(self.rss_idle_kb) as f64 * 1024.0
            / self.waiting.max(1) as f64;
        let secs = self.sample.as_secs_f64();
        println!(
            "  {:<9} {:>9} {:>10.0}s {:>12} {:>11} {:>13} {:>9.1}KB {:>11.1}% {:>11.0} {:>8.2}ms",
            self.backend.name(),
            format!("{}/{}", self.waiting, s.runs),
            self.all_in.as_secs_f64(),
            mb(self.rss_idle_kb),
            mb(self.rss_wait_kb),
            mb(self.rss_peak_kb),
            per_run / 1024.0,
            100.0 * self.cpu / secs,
            self.requests as f64 / secs,
            1000.0 * self.cpu / self.requests.max(1) as f64
        );
    }
}

/// A store for one side: its URL, and the database to drop afterwards (PostgreSQL).
struct Store {
    url: String,
    database: Option<String>,
}

async fn fresh_store(s: &Settings, backend: Backend, dir: &std::path::Path) -> Store {
    match backend {
        Backend::Sqlite => Store {
            url: format!("sqlite://{}", dir.join("baton.db").display()),
            database: None,
        },
        Backend::Postgres => {
            let name = format!("baton_scale_{}", std::process::id());
            Store {
                url: fresh_pg_database(&s.pg_url, &name).await,
                database: Some(name),
            }
        }
    }
}

/// Stages running with their pipeline's reference stored: runs that wait on the CI.
async fn waiting(store: &Store) -> usize {
    const QUERY: &str =
        "SELECT count(*) FROM stages WHERE status = 'running' AND external IS NOT NULL";
    if store.database.is_some() {
        let client = pg_connect(&store.url).await;
        let row = client.query_one(QUERY, &[]).await.expect("count waiting");
        row.get::<_, i64>(0) as usize
    } else {
        let path = store.url.trim_start_matches("sqlite://").to_owned();
        tokio::task::spawn_blocking(move || {
            let db = rusqlite::Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .expect("open the store");
            db.busy_timeout(Duration::from_secs(10))
                .expect("busy timeout");
            db.query_row(QUERY, [], |r| r.get::<_, i64>(0))
                .expect("count waiting") as usize
        })
        .await
        .expect("the count")
    }
}

/// VmRSS and VmHWM of `pid`, in kB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The kernel's clock ticks per second, the unit of `/proc/PID/stat`'s times.
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid`, in ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

async fn side(s: &Settings, backend: Backend) -> Report {
    eprintln!("scale {}: {} runs", backend.name(), s.runs);
    let gitlab = GitLab::new();
    gitlab.add_token("baton", FORGE_TOKEN);
    let a_day = Duration::from_secs(24 * 3600);
    gitlab.project(PROJECT).plan(
        PipelinePlan::new(vec![JobPlan::new("build", "build").runs_for(a_day)])
            .queued_for(Duration::from_secs(1), Duration::from_secs(1)),
    );
    let served = gitlab.serve().await.expect("serve the GitLab model");
    let scratch = tempfile::tempdir().expect("temp dir");
    let store = fresh_store(s, backend, scratch.path()).await;
    let baton = start_baton(s, &store.url, &served.url);
    let pid = baton.pid();
    let http = client();
    let (rss_idle_kb, _) = memory(pid);

    let begun = Instant::now();
    let starter = tokio::spawn(start_runs(http.clone(), baton.url.clone(), s.runs));
    let mut count = 0;
    let mut last_report = Instant::now();
    while begun.elapsed() < s.wait {
        tokio::time::sleep(Duration::from_secs(2)).await;
        count = waiting(&store).await;
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "scale {}: {:.0} s, {count} waiting, RSS {} MB",
                backend.name(),
                begun.elapsed().as_secs_f64(),
                memory(pid).0 / 1024
            );
        }
        if count >= s.runs {
            break;
        }
    }
    let all_in = begun.elapsed();
    starter.abort();
    eprintln!(
        "scale {}: {count} waiting after {:.0} s; settling {} s, then sampling {} s",
        backend.name(),
        all_in.as_secs_f64(),
        s.settle.as_secs(),
        s.sample.as_secs()
    );
    tokio::time::sleep(s.settle).await;
    let (cpu0, req0, t0) = (cpu_ticks(pid), gitlab.meter().total(), Instant::now());
    tokio::time::sleep(s.sample).await;
    let (cpu1, req1, sample) = (cpu_ticks(pid), gitlab.meter().total(), t0.elapsed());
    let (rss_wait_kb, rss_peak_kb) = memory(pid);
    let waiting_end = waiting(&store).await;
    drop(baton);
    drop(served);
    if let Some(name) = &store.database {
        drop_pg_database(&s.pg_url, name).await;
    }
    Report {
        backend,
        waiting: waiting_end,
        all_in,
        rss_idle_kb,
        rss_wait_kb,
        rss_peak_kb,
        cpu: (cpu1 - cpu0) as f64 / s.ticks,
        requests: req1 - req0,
        sample,
    }
}

fn start_baton(s: &Settings, store_url: &str, gitlab_url: &str) -> Baton {
    let env = [
        ("BENCH_TOKEN", API_TOKEN),
        ("BENCH_FORGE_TOKEN", FORGE_TOKEN),
    ];
    Baton::start(&s.baton, "127.0.0.1:0", &env, |_dir| {
        let config = format!(
            r#"workflows = ["ci.yaml"]

[store]
url = "{store_url}"

[api]
tokens = [{{ name = "bench", token = {{ env = "BENCH_TOKEN" }}, role = "operator" }}]

[adapters.ci]
kind = "gitlab-ci"
url = "{gitlab_url}"
project = "{PROJECT}"
token = {{ env = "BENCH_FORGE_TOKEN" }}
"#
        );
        let workflow = "name: ci\non: [{ source: manual }]\nstages:\n  build:\n    uses: ci\n    timeout: 12h\n    with: { ref: main }\n".to_owned();
        vec![
            ("baton.toml".to_owned(), config),
            ("ci.yaml".to_owned(), workflow),
        ]
    })
}

/// Starts `n` runs of workflow `ci` through the REST API, [`START_CONCURRENCY`] at a time.
async fn start_runs(http: reqwest::Client, baton: String, n: usize) {
    let url = format!("{baton}/api/v1/workflows/ci/runs");
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(START_CONCURRENCY));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let (http, url, permits) = (http.clone(), url.clone(), permits.clone());
        set.spawn(async move {
            let _permit = permits.acquire().await.expect("the semaphore");
            let answer: Value = http
                .post(&url)
                .bearer_auth(API_TOKEN)
                .json(&json!({"n": i}))
                .send()
                .await
                .expect("start a run")
                .json()
                .await
                .expect("the run");
            assert!(answer["run"].is_string(), "no run started: {answer}");
        });
    }
    set.join_all().await;
}
