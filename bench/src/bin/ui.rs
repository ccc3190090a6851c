//! The web UI on a large store: how long its pages take beside the REST API answering the
//! same query, and how long a stored change takes to reach an open page.
//!
//! `ui BATON [--store sqlite|postgres]` (bench/ui/run.sh runs it); the environment sets
//! `RUNS` (100,000), `DELIVERIES` (100,000), `BODY_BYTES` (4,096: the size of each stored
//! webhook body), `REQUESTS` (500 timed requests per page and side), `WARMUP` (50 untimed
//! first), `LIVE_SAMPLES` (200) and `PG_URL` (`postgres://postgres@127.0.0.1:5432`: the
//! server where a PostgreSQL side gets a fresh database, dropped at its end).
//!
//! - **Seed**: a fresh store written through the store's own API in commits of 500 runs:
//!   `DELIVERIES` GitHub pushes, and `RUNS` finished runs of a three-stage workflow
//!   (build → test → deploy; seven in ten succeeded, two failed at test, one cancelled), one
//!   every 20 s back from now. Three runs in four were started by a push (its delivery marked
//!   processed with the run), the others by hand; every push names its commit.
//! - **Pages**: a `baton serve` (the given binary) on that store, signed in as a viewer
//!   (`POST /login`, the `baton_session` cookie). For each page, `WARMUP` then `REQUESTS`
//!   sequential GETs on one keep-alive connection, each timed from send to the last byte
//!   of the body, the UI's and the API's alternated so both see the same machine. The peer
//!   is the REST API with a bearer token answering the same query: `/runs` beside
//!   `/api/v1/runs?limit=50`, a page from the middle (`before=` the cursor of the middle run)
//!   on both, `status=failed` on both, `/runs/{id}` beside `/api/v1/runs/{id}`,
//!   `/deliveries` beside `/api/v1/deliveries?limit=50`. A page the server answers 404 is
//!   printed as not yet served and skipped.
//! - **Store → browser**: `LIVE_SAMPLES` runs of a workflow whose first stage waits for an
//!   approval, twice: the change made at once after the page opened its stream, and made
//!   100 ms after (a page open a while). For each: start the run, wait until the stage
//!   waits, open `/ui/events?run=ID` with the session, approve through the API after the
//!   pause, read the stream until its `change` event,
//!   then fetch the run page's live fragment (`/runs/ID?fragment=live`, when served). The
//!   latency runs from the stage's stored `finished_at` (the engine's clock as it computed
//!   the step, before its commit) to the moment the fragment is read (or the event, when
//!   there is no fragment), on the same machine's clock.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_bench::{Backend, Baton, drop_pg_database, env_or, fresh_pg_database, quantile};
use baton_core::context::TriggerInfo;
use baton_core::{ExternalRef, RunStatus, StageStatus, WorkflowSpec};
use baton_store::{
    AttemptRecord, Change, Intake, Millis, NewDelivery, Phase, RunCursor, RunHeader, RunPayload,
    StageRecord,
};
use serde_json::{Value, json};

/// The viewer who signs in and reads.
const VIEWER: &str = "bench-viewer-token";
/// The operator who starts the live runs.
const OPERATOR: &str = "bench-operator-token";
/// The approver who approves them.
const APPROVER: &str = "bench-approver-token";
/// Runs per seeding commit.
const RUNS_PER_COMMIT: usize = 500;
/// The time between two seeded runs.
const RUN_EVERY_MS: i64 = 20_000;
/// The page-time target.
const PAGE_TARGET_MS: f64 = 20.0;
/// How long a page has had its event stream open before the later kind of change: past
/// the 40 ms a client may delay its acknowledgement of the stream's first bytes.
const OPEN_A_WHILE: Duration = Duration::from_millis(100);
/// The store → browser target.
const LIVE_TARGET_MS: f64 = 100.0;

struct Settings {
    baton: String,
    backend: Backend,
    runs: usize,
    deliveries: usize,
    body_bytes: usize,
    requests: usize,
    warmup: usize,
    live_samples: usize,
    pg_url: String,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!("usage: ui BATON [--store sqlite|postgres]");
        std::process::exit(2);
    };
    let Some((baton, rest)) = args.split_first() else {
        usage()
    };
    let backend = match rest {
        [] => Backend::Sqlite,
        [flag, name] if flag == "--store" && name == "sqlite" => Backend::Sqlite,
        [flag, name] if flag == "--store" && name == "postgres" => Backend::Postgres,
        _ => usage(),
    };
    let settings = Settings {
        baton: baton.clone(),
        backend,
        runs: env_or("RUNS", 100_000),
        deliveries: env_or("DELIVERIES", 100_000),
        body_bytes: env_or("BODY_BYTES", 4096),
        requests: env_or("REQUESTS", 500),
        warmup: env_or("WARMUP", 50),
        live_samples: env_or("LIVE_SAMPLES", 200),
        pg_url: std::env::var("PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(&settings));
}

async fn bench(s: &Settings) {
    let scratch = tempfile::tempdir().expect("temp dir");
    let (url, database) = match s.backend {
        Backend::Sqlite => (
            format!("sqlite://{}", scratch.path().join("baton.db").display()),
            None,
        ),
        Backend::Postgres => {
            let name = format!("baton_ui_{}", std::process::id());
            (fresh_pg_database(&s.pg_url, &name).await, Some(name))
        }
    };
    let begun = Instant::now();
    let seeded = seed(s, &url).await;
    eprintln!(
        "ui {}: seeded {} runs and {} deliveries in {:.0} s",
        s.backend.name(),
        s.runs,
        s.deliveries,
        begun.elapsed().as_secs_f64()
    );

    let baton = start_baton(s, &url);
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let cookie = sign_in(&http, &baton.url).await;
    check_listing(&http, &baton.url, &cookie, &seeded).await;

    let cursor = seeded.middle_cursor.as_str();
    let run = seeded.failed_run.as_str();
    let pages = [
        (
            "runs, first page",
            "/runs".to_owned(),
            "/api/v1/runs?limit=50".to_owned(),
        ),
        (
            "runs, middle page",
            format!("/runs?before={cursor}"),
            format!("/api/v1/runs?limit=50&before={cursor}"),
        ),
        (
            "runs, failed",
            "/runs?status=failed".to_owned(),
            "/api/v1/runs?limit=50&status=failed".to_owned(),
        ),
        (
            "one run",
            format!("/runs/{run}"),
            format!("/api/v1/runs/{run}"),
        ),
        (
            "deliveries",
            "/deliveries".to_owned(),
            "/api/v1/deliveries?limit=50".to_owned(),
        ),
    ];
    let mut measured = Vec::new();
    for (name, ui, api) in &pages {
        eprintln!("ui {}: timing {name}", s.backend.name());
        measured.push((
            *name,
            ui.as_str(),
            time_pair(s, &http, &baton.url, &cookie, ui, api).await,
        ));
    }
    eprintln!(
        "ui {}: store → browser, {} samples",
        s.backend.name(),
        s.live_samples
    );
    // A change at once after the page opened its stream, and one on a page open a while.
    let mut lives = Vec::new();
    for open_for in [Duration::ZERO, OPEN_A_WHILE] {
        lives.push(live_latency(s, &http, &baton.url, &cookie, open_for).await);
    }
    drop(baton);
    if let Some(name) = database {
        drop_pg_database(&s.pg_url, &name).await;
    }
    report(s, &measured, &lives);
}

/// What the seeding left that the measurements need.
struct Seeded {
    /// The cursor of the run halfway down the list.
    middle_cursor: String,
    /// A failed run halfway down the list.
    failed_run: String,
    /// The newest run, which the first page starts with.
    newest_run: String,
}

/// A commit SHA of its own for each `n`.
fn sha(n: u64) -> String {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    format!(
        "{:016x}{:016x}{:08x}",
        mix(n),
        mix(n ^ 0xabcd),
        n as u32 | 1
    )
}

/// The workflow every seeded run ran, as the engine stores it.
fn seeded_spec() -> Value {
    let spec: WorkflowSpec = serde_json::from_str(SEEDED_WORKFLOW).expect("the seeded workflow");
    serde_json::to_value(spec).expect("the spec as JSON")
}

/// The seeded workflow: JSON, which is YAML too, so `baton serve` loads the same text.
const SEEDED_WORKFLOW: &str = r#"{
  "name": "ci",
  "on": [{"source": "github", "event": "push"}, {"source": "manual"}],
  "stages": {
    "build": {"uses": "exec", "with": {"run": "true"}},
    "test": {"needs": ["build"], "uses": "exec", "with": {"run": "true"}},
    "deploy": {"needs": ["test"], "uses": "exec", "with": {"run": "true"}}
  }
}"#;

/// A GitHub push of `sha`, padded to about `bytes`.
fn push_body(n: u64, bytes: usize) -> String {
    let mut body = json!({
        "ref": "refs/heads/main",
        "before": sha(n.wrapping_sub(1)),
        "after": sha(n),
        "repository": {"full_name": "bench/app", "name": "app", "owner": {"login": "bench"}},
        "pusher": {"name": "bench", "email": "bench@example.com"},
        "head_commit": {"id": sha(n), "message": "", "author": {"name": "bench"}},
    });
    let filler = bytes.saturating_sub(body.to_string().len());
    body["head_commit"]["message"] = Value::String("change the code. ".repeat(filler / 17 + 1));
    body.to_string()
}

/// The status of seeded run `i`: seven in ten succeeded, two failed, one cancelled.
fn seeded_status(i: usize) -> RunStatus {
    match i % 10 {
        7 | 8 => RunStatus::Failed,
        9 => RunStatus::Cancelled,
        _ => RunStatus::Succeeded,
    }
}

/// The id of seeded run `i`, shaped like the engine's (32 hex digits, time first).
fn run_id(i: usize, created_at: Millis) -> String {
    format!("{created_at:012x}7{i:019x}")
}

/// The stages and attempts of a finished run: build, test, deploy, as `status` ends.
fn seeded_stages(id: &str, created_at: Millis, status: RunStatus) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut at = created_at + 150;
    for (position, stage) in ["build", "test", "deploy"].iter().enumerate() {
        let mut record = StageRecord::pending(id, stage, position as u32);
        let outcome = match (status, position) {
            (_, 0) | (RunStatus::Succeeded, _) => StageStatus::Succeeded,
            (RunStatus::Failed, 1) => StageStatus::Failed,
            (RunStatus::Cancelled, 1) => StageStatus::Cancelled,
            _ => StageStatus::Skipped,
        };
        record.status = outcome;
        if outcome == StageStatus::Skipped {
            record.reason = Some("upstream_failed".into());
            record.message = Some("an upstream stage did not succeed".into());
            record.finished_at = Some(at);
            changes.push(Change::PutStage(record));
            continue;
        }
        let (started, finished) = (at, at + 4_000 + (position as i64) * 3_000);
        at = finished + 40;
        let external = ExternalRef::new(format!("{}", 4000 + position));
        record.attempt = 1;
        record.phase = Some(Phase::Started);
        record.input = Some(json!({"run": "true"}));
        record.external = Some(external.clone());
        record.started_at = Some(started);
        record.finished_at = Some(finished);
        if outcome == StageStatus::Succeeded {
            record.outputs = Some(json!({"exit_code": 0}));
        } else {
            record.message = Some(match outcome {
                StageStatus::Failed => "exit status 1".into(),
                _ => "cancelled by bench".into(),
            });
        }
        changes.push(Change::PutAttempt(AttemptRecord {
            run_id: id.to_owned(),
            stage_id: (*stage).to_owned(),
            attempt: 1,
            status: outcome,
            reason: None,
            message: record.message.clone(),
            external: Some(external),
            started_at: record.started_at,
            finished_at: record.finished_at,
        }));
        changes.push(Change::PutStage(record));
    }
    changes
}

/// Fills a fresh store at `url` through the store's API.
async fn seed(s: &Settings, url: &str) -> Seeded {
    let store = baton_store::open(url).await.expect("open the store");
    let now = baton_store::now_millis();
    let first = now - RUN_EVERY_MS * s.runs as i64;
    let spec = seeded_spec();

    // Deliveries, oldest first; delivery `i` is the push that started run `i`, if any.
    let mut delivery_ids = Vec::with_capacity(s.deliveries);
    let mut batch = Vec::new();
    for i in 0..s.deliveries {
        batch.push(NewDelivery {
            source: "github".into(),
            delivery_id: format!("{:08x}-bench-{i:012}", i * 7919),
            event: "push".into(),
            headers: json!({"x-github-event": "push", "user-agent": "GitHub-Hookshot/bench"})
                .to_string(),
            body: push_body(i as u64, s.body_bytes),
            received_at: first + RUN_EVERY_MS * i as i64 - 30,
        });
        if batch.len() == RUNS_PER_COMMIT || i + 1 == s.deliveries {
            for intake in store
                .insert_deliveries(std::mem::take(&mut batch))
                .await
                .expect("store deliveries")
            {
                let Intake::Stored(id) = intake else {
                    panic!("a seeded delivery was a duplicate")
                };
                delivery_ids.push(id);
            }
        }
    }

    let mut changes = Vec::new();
    let mut newest_run = String::new();
    let (mut middle_cursor, mut failed_run) = (String::new(), String::new());
    for i in 0..s.runs {
        let created_at = first + RUN_EVERY_MS * i as i64;
        let id = run_id(i, created_at);
        let status = seeded_status(i);
        let delivery = delivery_ids.get(i).copied().filter(|_| i % 4 != 0);
        let (trigger, event) = if delivery.is_some() {
            (
                TriggerInfo {
                    source: "github".into(),
                    event: "push".into(),
                    delivery_id: Some(format!("{:08x}-bench-{i:012}", i * 7919)),
                },
                serde_json::from_str(&push_body(i as u64, s.body_bytes)).expect("a push"),
            )
        } else {
            (
                TriggerInfo {
                    source: "manual".into(),
                    event: "manual".into(),
                    delivery_id: None,
                },
                if i % 8 == 0 {
                    json!({"sha": sha(i as u64)})
                } else {
                    json!({})
                },
            )
        };
        let stages = seeded_stages(&id, created_at, status);
        let finished_at = stages
            .iter()
            .filter_map(|c| match c {
                Change::PutStage(stage) => stage.finished_at,
                _ => None,
            })
            .max();
        let header = RunHeader {
            id: id.clone(),
            workflow: "ci".into(),
            status,
            cancel_requested: status == RunStatus::Cancelled,
            message: (status != RunStatus::Succeeded)
                .then(|| format!("stage test {}", status.as_str())),
            created_at,
            started_at: Some(created_at + 150),
            finished_at,
        };
        changes.push(Change::InsertRun(
            header,
            RunPayload {
                spec: spec.clone(),
                event,
                trigger,
            },
        ));
        changes.extend(stages);
        if let Some(seq) = delivery {
            changes.push(Change::DeliveryProcessed {
                seq,
                runs: vec![id.clone()],
                message: None,
                now: created_at,
            });
        }
        if i == s.runs / 2 {
            middle_cursor = RunCursor {
                created_at,
                id: id.clone(),
            }
            .to_text();
        }
        if i >= s.runs / 2 && failed_run.is_empty() && status == RunStatus::Failed {
            failed_run = id.clone();
        }
        newest_run = id;
        if (i + 1) % RUNS_PER_COMMIT == 0 || i + 1 == s.runs {
            store
                .commit(std::mem::take(&mut changes))
                .await
                .expect("store runs");
            if (i + 1) % 20_000 == 0 {
                eprintln!("ui {}: {} runs stored", s.backend.name(), i + 1);
            }
        }
    }
    // Every other delivery started nothing: matched, so `baton serve` does not match it.
    if let Some(&through) = delivery_ids.last() {
        store
            .commit(vec![Change::DeliveriesMatched { through, now }])
            .await
            .expect("mark the deliveries matched");
    }
    Seeded {
        middle_cursor,
        failed_run,
        newest_run,
    }
}

fn start_baton(s: &Settings, store_url: &str) -> Baton {
    let env = [
        ("BENCH_VIEWER", VIEWER),
        ("BENCH_OPERATOR", OPERATOR),
        ("BENCH_APPROVER", APPROVER),
        ("BENCH_GITHUB_SECRET", "bench-github-secret"),
    ];
    Baton::start(&s.baton, "127.0.0.1:0", &env, |_dir| {
        let config = format!(
            r#"workflows = ["ci.yaml", "gated.yaml"]

[store]
url = "{store_url}"

[api]
tokens = [
  {{ name = "vera", token = {{ env = "BENCH_VIEWER" }}, role = "viewer" }},
  {{ name = "otto", token = {{ env = "BENCH_OPERATOR" }}, role = "operator" }},
  {{ name = "anna", token = {{ env = "BENCH_APPROVER" }}, role = "approver" }},
]

[sources.github]
kind = "github"
secret = {{ env = "BENCH_GITHUB_SECRET" }}
"#
        );
        let gated = "name: gated\non: [{ source: manual }]\nstages:\n  ok:\n    uses: approval\n    timeout: 10m\n    with: { message: 'go on?' }\n  after:\n    needs: [ok]\n    uses: exec\n    with: { run: 'true' }\n";
        vec![
            ("baton.toml".to_owned(), config),
            ("ci.yaml".to_owned(), SEEDED_WORKFLOW.to_owned()),
            ("gated.yaml".to_owned(), gated.to_owned()),
        ]
    })
}

/// Signs in as the viewer; answers the `Cookie` header value of the session.
async fn sign_in(http: &reqwest::Client, base: &str) -> String {
    let answer = http
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={VIEWER}&next=%2Fruns"))
        .send()
        .await
        .expect("POST /login");
    assert!(
        answer.status().is_redirection(),
        "sign-in answered {}",
        answer.status()
    );
    let set = answer
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("baton_session="))
        .expect("a session cookie");
    set.split(';').next().expect("name=value").to_owned()
}

/// Checks, before timing, that both sides list what was seeded: a timing of a page that
/// shows the wrong thing would mean nothing.
async fn check_listing(http: &reqwest::Client, base: &str, cookie: &str, seeded: &Seeded) {
    let ui = http
        .get(format!("{base}/runs"))
        .header("cookie", cookie)
        .send()
        .await
        .expect("GET /runs");
    assert_eq!(ui.status(), 200, "GET /runs");
    let html = ui.text().await.expect("the runs page");
    assert!(
        html.contains(&seeded.newest_run),
        "the runs page does not list the newest run"
    );
    let api: Value = http
        .get(format!("{base}/api/v1/runs?limit=50"))
        .bearer_auth(VIEWER)
        .send()
        .await
        .expect("GET /api/v1/runs")
        .json()
        .await
        .expect("JSON");
    assert_eq!(api["runs"].as_array().map(Vec::len), Some(50), "{api}");
    assert_eq!(api["runs"][0]["id"], seeded.newest_run.as_str());
}

/// How one side answered one page: its times in ms, or that the page is not served.
enum Side {
    Timed(Vec<f64>),
    NotServed,
}

impl Side {
    fn quantiles(&self) -> Option<[f64; 3]> {
        match self {
            Self::Timed(times) => Some([0.5, 0.95, 0.99].map(|q| quantile(times, q))),
            Self::NotServed => None,
        }
    }
}

/// One GET, timed to the last byte; answers the status and the time in ms.
async fn timed_get(request: reqwest::RequestBuilder) -> (u16, f64) {
    let begun = Instant::now();
    let answer = request.send().await.expect("a request");
    let status = answer.status().as_u16();
    let _ = answer.bytes().await.expect("a body");
    (status, begun.elapsed().as_secs_f64() * 1000.0)
}

/// `WARMUP` then `REQUESTS` GETs of the UI page `ui` (with the session) and the API call
/// `api` (with the bearer token), alternated.
async fn time_pair(
    s: &Settings,
    http: &reqwest::Client,
    base: &str,
    cookie: &str,
    ui: &str,
    api: &str,
) -> (Side, Side) {
    let ui_get = || http.get(format!("{base}{ui}")).header("cookie", cookie);
    let api_get = || http.get(format!("{base}{api}")).bearer_auth(VIEWER);
    let (ui_status, _) = timed_get(ui_get()).await;
    let (api_status, _) = timed_get(api_get()).await;
    let served = |status: u16, what: &str| match status {
        200 => true,
        404 => false,
        other => panic!("GET {what} answered {other}"),
    };
    let (ui_served, api_served) = (served(ui_status, ui), served(api_status, api));
    let (mut ui_times, mut api_times) = (Vec::new(), Vec::new());
    for i in 0..s.warmup + s.requests {
        if ui_served {
            let (status, ms) = timed_get(ui_get()).await;
            assert_eq!(status, 200, "GET {ui}");
            if i >= s.warmup {
                ui_times.push(ms);
            }
        }
        if api_served {
            let (status, ms) = timed_get(api_get()).await;
            assert_eq!(status, 200, "GET {api}");
            if i >= s.warmup {
                api_times.push(ms);
            }
        }
    }
    let side = |served: bool, mut times: Vec<f64>| {
        if served {
            times.sort_by(f64::total_cmp);
            Side::Timed(times)
        } else {
            Side::NotServed
        }
    };
    (side(ui_served, ui_times), side(api_served, api_times))
}

/// Store → browser latencies in ms, and whether they end at the fragment (else the event).
struct Live {
    /// How long the stream was open before the change.
    open_for: Duration,
    latencies: Vec<f64>,
    with_fragment: bool,
}

fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock")
        .as_secs_f64()
        * 1000.0
}

/// Waits until `GET url` (as the viewer) answers JSON for which `done` holds.
async fn wait_json(http: &reqwest::Client, url: &str, done: impl Fn(&Value) -> bool) -> Value {
    let begun = Instant::now();
    loop {
        let value: Value = http
            .get(url)
            .bearer_auth(VIEWER)
            .send()
            .await
            .expect("a GET")
            .json()
            .await
            .expect("JSON");
        if done(&value) {
            return value;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "{url} never got there: {value}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Store → browser latencies of `LIVE_SAMPLES` changes, each made `open_for` after its
/// page opened the event stream.
async fn live_latency(
    s: &Settings,
    http: &reqwest::Client,
    base: &str,
    cookie: &str,
    open_for: Duration,
) -> Live {
    let mut latencies = Vec::with_capacity(s.live_samples);
    let mut with_fragment = true;
    for _ in 0..s.live_samples {
        let started = http
            .post(format!("{base}/api/v1/workflows/gated/runs"))
            .bearer_auth(OPERATOR)
            .json(&json!({}))
            .send()
            .await
            .expect("start a run");
        assert_eq!(started.status(), 201, "start a run");
        let started: Value = started.json().await.expect("JSON");
        let run = started["run"].as_str().expect("a run id").to_owned();
        let run_url = format!("{base}/api/v1/runs/{run}");
        wait_json(http, &run_url, |r| r["stages"][0]["status"] == "waiting").await;

        let mut events = http
            .get(format!("{base}/ui/events?run={run}"))
            .header("cookie", cookie)
            .send()
            .await
            .expect("open the event stream");
        assert_eq!(events.status(), 200, "GET /ui/events");
        tokio::time::sleep(open_for).await;
        let approved = http
            .post(format!("{base}/api/v1/runs/{run}/stages/ok/approve"))
            .bearer_auth(APPROVER)
            .json(&json!({}))
            .send()
            .await
            .expect("approve");
        assert!(
            approved.status().is_success(),
            "approve: {}",
            approved.status()
        );
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !seen.contains("event: change") {
            let chunk = tokio::time::timeout_at(deadline.into(), events.chunk())
                .await
                .expect("a change within 30 s")
                .expect("the event stream")
                .expect("the stream to stay open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        let mut arrived = wall_ms();
        drop(events);
        if with_fragment {
            let fragment = http
                .get(format!("{base}/runs/{run}?fragment=live"))
                .header("cookie", cookie)
                .send()
                .await
                .expect("the fragment");
            match fragment.status().as_u16() {
                200 => {
                    let _ = fragment.bytes().await.expect("the fragment's body");
                    arrived = wall_ms();
                }
                404 => with_fragment = false,
                other => panic!("GET /runs/{run}?fragment=live answered {other}"),
            }
        }
        let stored = wait_json(http, &run_url, |r| r["stages"][0]["finished_at"].is_i64()).await;
        let finished = stored["stages"][0]["finished_at"]
            .as_i64()
            .expect("finished_at");
        latencies.push(arrived - finished as f64);
    }
    latencies.sort_by(f64::total_cmp);
    Live {
        open_for,
        latencies,
        with_fragment,
    }
}

fn report(s: &Settings, measured: &[(&str, &str, (Side, Side))], lives: &[Live]) {
    println!();
    println!(
        "ui on {}: {} runs, {} deliveries of {} B; {} sequential requests per page and side after {} warm-up; ms from send to last byte",
        s.backend.name(),
        s.runs,
        s.deliveries,
        s.body_bytes,
        s.requests,
        s.warmup
    );
    println!(
        "  {:<18} {:<28} {:>7} {:>7} {:>7}   {:>7} {:>7} {:>7}   {:>9}  target",
        "page", "UI address", "UI p50", "p95", "p99", "API p50", "p95", "p99", "p95 ratio",
    );
    let fmt = |q: Option<[f64; 3]>| match q {
        Some([a, b, c]) => format!("{a:>7.2} {b:>7.2} {c:>7.2}"),
        None => format!("{:>23}", "not yet served"),
    };
    for (name, address, (ui, api)) in measured {
        let (uq, aq) = (ui.quantiles(), api.quantiles());
        let ratio = match (uq, aq) {
            (Some(u), Some(a)) => format!("{:.2}", u[1] / a[1]),
            _ => "-".to_owned(),
        };
        let verdict = match uq {
            Some(u) if u[1] <= PAGE_TARGET_MS => "met",
            Some(_) => "MISSED",
            None => "skipped",
        };
        let shown: String = address.chars().take(28).collect();
        println!(
            "  {name:<18} {shown:<28} {}   {}   {ratio:>9}  {verdict}",
            fmt(uq),
            fmt(aq)
        );
    }
    for live in lives {
        let l = &live.latencies;
        println!(
            "  store → browser, change {} ms after the stream opened ({}), {} samples: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, worst {:.1} ms; target p99 ≤ {LIVE_TARGET_MS:.0} ms: {}",
            live.open_for.as_millis(),
            if live.with_fragment {
                "change event and live fragment read"
            } else {
                "change event only: the run page's fragment is not yet served"
            },
            l.len(),
            quantile(l, 0.5),
            quantile(l, 0.95),
            quantile(l, 0.99),
            l.last().copied().unwrap_or_default(),
            if quantile(l, 0.99) <= LIVE_TARGET_MS {
                "met"
            } else {
                "MISSED"
            }
        );
    }
    println!(
        "  page target: p95 ≤ {PAGE_TARGET_MS:.0} ms each; ratio = UI p95 / API p95 (the API answers JSON of the same query)"
    );
}
