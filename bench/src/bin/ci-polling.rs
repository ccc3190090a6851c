//! What waiting on GitHub Actions, GitLab CI, Travis CI and Concourse costs: `STAGES`
//! stages at once (500), each on a run, pipeline or build that lasts `RUN_SECS` (120 s),
//! against the in-process forges of `baton-forge-fakes`, through `baton serve` with each
//! adapter's default poll settings.
//!
//! `ci-polling BATON [github-actions|gitlab-ci|travis|concourse]…` (bench/ci-polling/run.sh
//! runs it with every one); the environment sets `STAGES` (500), `RUN_SECS` (120), `PEER_RUNS` (20) and
//! `DEADLINE_SECS` (twice `RUN_SECS` and a minute): a side whose runs have not all finished
//! by then is reported as it stands, with how many had finished.
//!
//! For each adapter, at the same time and each against a forge of its own:
//!
//! - **webhooks off**: a `baton serve` whose workflow has one stage on the forge; `STAGES`
//!   runs started through the REST API. Figures: the forge's requests per run (every
//!   request baton made: start, polls, jobs, artifacts), the peak requests in one second on
//!   the one token, and (GitHub) the lowest `x-ratelimit-remaining` the token reached.
//! - **webhooks on**: the same, and as each run or pipeline ends the bench sends the forge's
//!   completion delivery (GitHub's `workflow_run`, GitLab's Pipeline Hook, signed as the
//!   forge signs it) to baton's source. Concourse has no completion webhook: this side
//!   follows its builds through their event streams, and the figure runs from the moment
//!   the model sent a build's final `status` event. Figure: baton's own clock from the delivery's
//!   `received_at` (stored before the 202) to the stage's `finished_at`, p50, p99 and worst;
//!   a stage that a poll ended before its delivery arrived is counted apart.
//! - **peer**: `PEER_RUNS` runs started directly on the forge and watched as `gh run watch`
//!   does by default: the run read every 3 s until it ends. Figure: its requests per run.
//!
//! The engine's defaults apply, except `engine.max_concurrency`, raised to `STAGES`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_bench::{Baton, client, env_or, get_json, quantile};
use baton_forge_fakes::concourse::{self, Concourse};
use baton_forge_fakes::github::{Github, Workflow};
use baton_forge_fakes::gitlab::{GitLab, JobPlan, PipelinePlan};
use baton_forge_fakes::travis::{self, Travis};
use hmac::Mac;
use serde_json::{Value, json};

/// The REST API token of the scratch servers (operator: it starts runs).
const API_TOKEN: &str = "bench-operator";
/// The forge token baton uses.
const FORGE_TOKEN: &str = "bench-forge-token";
/// The webhook secret (GitHub) or token (GitLab) of the source.
const HOOK_SECRET: &str = "bench-hook-secret";
/// How often the peer reads its run: `gh run watch`'s default interval.
const PEER_INTERVAL: Duration = Duration::from_secs(3);

struct Settings {
    baton: String,
    stages: usize,
    run: Duration,
    peer_runs: usize,
    /// How long a side may take before its figures are taken as they are.
    deadline: Duration,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((baton, kinds)) = args.split_first() else {
        eprintln!("usage: ci-polling BATON [github-actions|gitlab-ci|travis|concourse]…");
        std::process::exit(2);
    };
    let kinds: Vec<Kind> = if kinds.is_empty() {
        vec![
            Kind::GithubActions,
            Kind::GitlabCi,
            Kind::Travis,
            Kind::Concourse,
        ]
    } else {
        kinds
            .iter()
            .map(|k| Kind::parse(k).unwrap_or_else(|| panic!("unknown adapter `{k}`")))
            .collect()
    };
    let settings = Settings {
        baton: baton.clone(),
        stages: env_or("STAGES", 500),
        run: Duration::from_secs(env_or("RUN_SECS", 120)),
        peer_runs: env_or("PEER_RUNS", 20),
        deadline: Duration::ZERO,
    };
    let settings = Settings {
        deadline: Duration::from_secs(env_or("DEADLINE_SECS", settings.run.as_secs() * 2 + 60)),
        ..settings
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut reports = Vec::new();
    for kind in kinds {
        reports.push(runtime.block_on(round(&settings, kind)));
    }
    println!();
    println!(
        "ci-polling: {} stages at once, each on a {} s run; peer: {} runs read every {} s",
        settings.stages,
        settings.run.as_secs(),
        settings.peer_runs,
        PEER_INTERVAL.as_secs()
    );
    for report in &reports {
        report.print();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    GithubActions,
    GitlabCi,
    Travis,
    Concourse,
}

impl Kind {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "github-actions" => Some(Self::GithubActions),
            "gitlab-ci" => Some(Self::GitlabCi),
            "travis" => Some(Self::Travis),
            "concourse" => Some(Self::Concourse),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::GithubActions => "github-actions",
            Self::GitlabCi => "gitlab-ci",
            Self::Travis => "travis",
            Self::Concourse => "concourse",
        }
    }
}

/// One forge model with the workflow or project the stages use.
#[derive(Clone)]
enum Forge {
    Github(Github),
    Gitlab(GitLab),
    Travis(Travis),
    /// The model, and whether baton follows builds through their event streams (the
    /// "webhooks on" side: Concourse pushes through the stream, not through webhooks).
    Concourse(Concourse, bool),
}

/// The GitLab project the stages create pipelines in.
const GITLAB_PROJECT: &str = "bench/app";
/// The GitHub repository and workflow the stages dispatch.
const GITHUB_REPO: &str = "octo-org/app";
const GITHUB_WORKFLOW: &str = "ci.yml";
/// The Concourse team whose pipeline `app` has the job `build`.
const CONCOURSE_TEAM: &str = "main";
/// The Travis repository the stages request builds of.
const TRAVIS_REPO: &str = "bench/app";
/// A GitHub token's primary rate limit: 5,000 requests an hour.
const GITHUB_LIMIT: (u64, Duration) = (5000, Duration::from_secs(3600));

/// What keeps a served model alive.
type Serving = Box<dyn std::any::Any + Send>;

impl Forge {
    /// A forge whose runs last `run`, with baton's token.
    fn new(kind: Kind, run: Duration) -> Self {
        match kind {
            Kind::GitlabCi => {
                let gitlab = GitLab::new();
                gitlab.add_token("baton", FORGE_TOKEN);
                let queued = Duration::from_secs(1);
                let job = JobPlan::new("build", "build").runs_for(run.saturating_sub(queued * 2));
                gitlab
                    .project(GITLAB_PROJECT)
                    .plan(PipelinePlan::new(vec![job]).queued_for(queued, queued));
                Self::Gitlab(gitlab)
            }
            Kind::GithubActions => {
                let github = Github::new(GITHUB_REPO);
                github.token("baton", FORGE_TOKEN);
                github.rate_limit(GITHUB_LIMIT.0, GITHUB_LIMIT.1);
                let queued = Duration::from_secs(2);
                github.add_workflow(
                    Workflow::new(GITHUB_WORKFLOW)
                        .queued_for(queued)
                        .runs_for(run.saturating_sub(queued))
                        .outputs(&json!({"image": "registry.example.com/app@sha256:0123"})),
                );
                Self::Github(github)
            }
            Kind::Travis => {
                let travis = Travis::new();
                travis.add_token("baton", FORGE_TOKEN);
                // Processed at once, the build created after 2 s and queued 1 s; Travis's
                // limit of 10 requests an hour is lifted so that every stage can start.
                let queued = Duration::from_secs(1);
                let job = travis::JobPlan::passes()
                    .runs_for(run.saturating_sub(queued * 3))
                    .log("BATON-OUTPUTS-BEGIN\nIMAGE=registry.example.com/app:1.0\nBATON-OUTPUTS-END\n");
                travis
                    .repo(TRAVIS_REPO)
                    .limit(u32::MAX, GITHUB_LIMIT.1)
                    .plan(
                        travis::BuildPlan::new(vec![job])
                            .build_after(Duration::from_millis(500), queued * 2)
                            .queued_for(queued / 2, queued / 2),
                    );
                Self::Travis(travis)
            }
            Kind::Concourse => {
                let concourse = Concourse::new();
                concourse.add_bearer(FORGE_TOKEN, "baton", &[CONCOURSE_TEAM]);
                let pending = Duration::from_secs(2);
                concourse.pipeline(CONCOURSE_TEAM, "app").job(
                    "build",
                    concourse::BuildPlan::new()
                        .pending_for(pending)
                        .runs_for(run.saturating_sub(pending)),
                );
                Self::Concourse(concourse, false)
            }
        }
    }

    /// The same forge, followed by its push channel where it has one instead of webhooks
    /// (Concourse's event streams).
    fn pushing(self) -> Self {
        match self {
            Self::Concourse(c, _) => Self::Concourse(c, true),
            other => other,
        }
    }

    /// Serves the model; returns its URL and what keeps it served.
    async fn serve(&self) -> (String, Serving) {
        match self {
            Self::Github(g) => {
                let served = g.serve().await.expect("serve the GitHub model");
                (served.url.clone(), Box::new(served))
            }
            Self::Gitlab(g) => {
                let served = g.serve().await.expect("serve the GitLab model");
                (served.url.clone(), Box::new(served))
            }
            Self::Travis(t) => {
                let served = t.serve().await.expect("serve the Travis model");
                (served.url.clone(), Box::new(served))
            }
            Self::Concourse(c, _) => {
                let served = c.serve().await.expect("serve the Concourse model");
                (served.url.clone(), Box::new(served))
            }
        }
    }

    /// The config blocks of the source and the adapter instance `ci`.
    fn config(&self, url: &str) -> String {
        match self {
            Self::Github(_) => format!(
                r#"[sources.forge]
kind = "github"
secret = {{ env = "BENCH_HOOK" }}

[adapters.ci]
kind = "github-actions"
url = "{url}"
repo = "{GITHUB_REPO}"
token = {{ env = "BENCH_FORGE_TOKEN" }}
"#
            ),
            Self::Gitlab(_) => format!(
                r#"[sources.forge]
kind = "gitlab"
token = {{ env = "BENCH_HOOK" }}

[adapters.ci]
kind = "gitlab-ci"
url = "{url}"
project = "{GITLAB_PROJECT}"
token = {{ env = "BENCH_FORGE_TOKEN" }}
"#
            ),
            Self::Travis(_) => format!(
                r#"[sources.forge]
kind = "travis"
repos = ["{TRAVIS_REPO}"]
api_url = "{url}"

[adapters.ci]
kind = "travis"
url = "{url}"
web_url = "{url}"
repo = "{TRAVIS_REPO}"
token = {{ env = "BENCH_FORGE_TOKEN" }}
"#
            ),
            Self::Concourse(_, events) => format!(
                r#"[adapters.ci]
kind = "concourse"
url = "{url}"
team = "{CONCOURSE_TEAM}"
token = {{ env = "BENCH_FORGE_TOKEN" }}
events = {events}
"#
            ),
        }
    }

    /// The stage's `with:` block.
    fn stage_with(&self) -> &'static str {
        match self {
            Self::Github(_) => "{ workflow: ci.yml, ref: main }",
            Self::Gitlab(_) => "{ ref: main }",
            Self::Travis(_) => "{ branch: main }",
            Self::Concourse(..) => "{ pipeline: app, job: build }",
        }
    }

    /// The ids of the runs or pipelines that have ended.
    fn ended(&self) -> Vec<u64> {
        match self {
            Self::Github(g) => g
                .runs()
                .into_iter()
                .filter(|r| r.status == "completed")
                .map(|r| r.id)
                .collect(),
            Self::Gitlab(g) => g
                .pipelines()
                .into_iter()
                .filter(|p| matches!(p.status.as_str(), "success" | "failed" | "canceled"))
                .map(|p| p.id)
                .collect(),
            Self::Travis(t) => t
                .builds()
                .into_iter()
                .filter(|b| {
                    matches!(
                        b.state.as_str(),
                        "passed" | "failed" | "errored" | "canceled"
                    )
                })
                .map(|b| b.id)
                .collect(),
            Self::Concourse(c, _) => c
                .job_builds()
                .into_iter()
                .filter(|b| {
                    matches!(
                        b.status.as_str(),
                        "succeeded" | "failed" | "errored" | "aborted"
                    )
                })
                .map(|b| b.id)
                .collect(),
        }
    }

    /// The completion delivery for run or pipeline `id`: its headers and body.
    fn delivery(&self, id: u64, serial: usize) -> (Vec<(&'static str, String)>, String) {
        match self {
            Self::Github(g) => {
                let body = g.workflow_run_delivery(id, "completed");
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HOOK_SECRET.as_bytes())
                    .expect("an HMAC key");
                mac.update(body.as_bytes());
                let headers = vec![
                    ("content-type", "application/json".to_owned()),
                    ("x-github-event", "workflow_run".to_owned()),
                    ("x-github-delivery", format!("bench-{id}-{serial}")),
                    (
                        "x-hub-signature-256",
                        format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
                    ),
                ];
                (headers, body)
            }
            Self::Gitlab(g) => {
                let body = g.pipeline_hook(id).expect("a Pipeline Hook body");
                let headers = vec![
                    ("content-type", "application/json".to_owned()),
                    ("x-gitlab-event", "Pipeline Hook".to_owned()),
                    ("x-gitlab-token", HOOK_SECRET.to_owned()),
                    ("x-gitlab-event-uuid", format!("bench-{id}-{serial}")),
                ];
                (headers, body)
            }
            Self::Travis(t) => {
                let (form, signature, slug) = t.notification(id).expect("a notification");
                let headers = vec![
                    (
                        "content-type",
                        "application/x-www-form-urlencoded".to_owned(),
                    ),
                    ("signature", signature),
                    ("travis-repo-slug", slug),
                ];
                (headers, form)
            }
            Self::Concourse(..) => unreachable!("Concourse pushes through event streams"),
        }
    }

    /// When the forge pushed the end of run `id` to baton itself (Concourse's `status`
    /// event), in wall-clock ms; `None` for forges that push through webhooks.
    fn pushed_end_ms(&self, id: u64) -> Option<u64> {
        match self {
            Self::Concourse(c, _) => ["succeeded", "failed", "errored", "aborted"]
                .iter()
                .find_map(|status| c.status_sent_ms(id, status)),
            _ => None,
        }
    }

    /// Requests the forge served, and the most in one second.
    fn requests(&self) -> (u64, u64) {
        let meter = match self {
            Self::Github(g) => g.meter(),
            Self::Gitlab(g) => g.meter(),
            Self::Travis(t) => t.meter(),
            Self::Concourse(c, _) => c.meter(),
        };
        (meter.total(), meter.peak_per_second())
    }

    /// The lowest rate-limit `remaining` the token reached, where the forge has one.
    fn lowest_remaining(&self) -> Option<u64> {
        match self {
            Self::Github(g) => g.lowest_remaining("baton"),
            Self::Gitlab(_) | Self::Travis(_) | Self::Concourse(..) => None,
        }
    }

    /// Starts one run directly, as a person's client would, and returns how to read it.
    async fn peer_start(&self, http: &reqwest::Client, url: &str) -> String {
        match self {
            Self::Github(_) => {
                let dispatched: Value = http
                    .post(format!(
                        "{url}/repos/{GITHUB_REPO}/actions/workflows/{GITHUB_WORKFLOW}/dispatches"
                    ))
                    .bearer_auth(FORGE_TOKEN)
                    .header("user-agent", "ci-polling-peer")
                    .json(&json!({"ref": "main", "return_run_details": true}))
                    .send()
                    .await
                    .expect("dispatch a run")
                    .json()
                    .await
                    .expect("the run's details");
                format!(
                    "{url}/repos/{GITHUB_REPO}/actions/runs/{}",
                    dispatched["workflow_run_id"]
                )
            }
            Self::Gitlab(_) => {
                let project = GITLAB_PROJECT.replace('/', "%2F");
                let created: Value = http
                    .post(format!("{url}/api/v4/projects/{project}/pipeline"))
                    .header("PRIVATE-TOKEN", FORGE_TOKEN)
                    .json(&json!({"ref": "main"}))
                    .send()
                    .await
                    .expect("create a pipeline")
                    .json()
                    .await
                    .expect("the pipeline");
                format!(
                    "{url}/api/v4/projects/{project}/pipelines/{}",
                    created["id"]
                )
            }
            Self::Travis(_) => {
                let slug = TRAVIS_REPO.replace('/', "%2F");
                let created: Value = travis_call(http.post(format!("{url}/repo/{slug}/requests")))
                    .json(&json!({"request": {"branch": "main"}}))
                    .send()
                    .await
                    .expect("create a request")
                    .json()
                    .await
                    .expect("the request");
                format!("{url}/repo/{slug}/request/{}", created["request"]["id"])
            }
            Self::Concourse(..) => {
                let created: Value = http
                    .post(format!(
                        "{url}/api/v1/teams/{CONCOURSE_TEAM}/pipelines/app/jobs/build/builds"
                    ))
                    .bearer_auth(FORGE_TOKEN)
                    .send()
                    .await
                    .expect("create a build")
                    .json()
                    .await
                    .expect("the build");
                format!("{url}/api/v1/builds/{}", created["id"])
            }
        }
    }

    /// Whether the run or pipeline read from `url` has ended.
    async fn peer_ended(&self, http: &reqwest::Client, url: &str) -> bool {
        match self {
            Self::Github(_) => {
                let run: Value = http
                    .get(url)
                    .bearer_auth(FORGE_TOKEN)
                    .header("user-agent", "ci-polling-peer")
                    .send()
                    .await
                    .expect("read the run")
                    .json()
                    .await
                    .expect("the run");
                run["status"] == "completed"
            }
            Self::Gitlab(_) => {
                let pipeline: Value = http
                    .get(url)
                    .header("PRIVATE-TOKEN", FORGE_TOKEN)
                    .send()
                    .await
                    .expect("read the pipeline")
                    .json()
                    .await
                    .expect("the pipeline");
                matches!(
                    pipeline["status"].as_str(),
                    Some("success" | "failed" | "canceled")
                )
            }
            // The request shows its build's state, so one read a round serves.
            Self::Travis(_) => {
                let request: Value = travis_call(http.get(url))
                    .send()
                    .await
                    .expect("read the request")
                    .json()
                    .await
                    .expect("the request");
                matches!(
                    request["builds"][0]["state"].as_str(),
                    Some("passed" | "failed" | "errored" | "canceled")
                )
            }
            Self::Concourse(..) => {
                let build: Value = http
                    .get(url)
                    .bearer_auth(FORGE_TOKEN)
                    .send()
                    .await
                    .expect("read the build")
                    .json()
                    .await
                    .expect("the build");
                matches!(
                    build["status"].as_str(),
                    Some("succeeded" | "failed" | "errored" | "aborted")
                )
            }
        }
    }
}

/// A call to the Travis API v3 as its clients make it.
fn travis_call(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request
        .header("Travis-API-Version", "3")
        .header("Authorization", format!("token {FORGE_TOKEN}"))
}

/// The scratch `baton serve` of one side.
fn start_baton(s: &Settings, forge: &Forge, forge_url: &str) -> Baton {
    let blocks = forge.config(forge_url);
    let with = forge.stage_with();
    let stages = s.stages;
    let env = [
        ("BENCH_TOKEN", API_TOKEN),
        ("BENCH_FORGE_TOKEN", FORGE_TOKEN),
        ("BENCH_HOOK", HOOK_SECRET),
    ];
    Baton::start(&s.baton, "127.0.0.1:0", &env, |dir: &Path| {
        let config = format!(
            r#"workflows = ["ci.yaml"]

[store]
url = "sqlite://{db}"

[engine]
max_concurrency = {stages}

[api]
tokens = [{{ name = "bench", token = {{ env = "BENCH_TOKEN" }}, role = "operator" }}]

{blocks}"#,
            db = dir.join("baton.db").display(),
        );
        let workflow = format!(
            "name: ci\non: [{{ source: manual }}]\nstages:\n  build:\n    uses: ci\n    timeout: 30m\n    with: {with}\n"
        );
        vec![
            ("baton.toml".to_owned(), config),
            ("ci.yaml".to_owned(), workflow),
        ]
    })
}

/// One side's figures.
struct Side {
    runs: usize,
    /// Runs that had finished by the deadline.
    finished: usize,
    requests: u64,
    peak: u64,
    lowest_remaining: Option<u64>,
    took: Duration,
    failed: usize,
}

impl Side {
    fn per_run(&self) -> f64 {
        self.requests as f64 / self.runs.max(1) as f64
    }
}

struct Report {
    kind: Kind,
    off: Side,
    on: Side,
    peer: Side,
    /// Delivery received → stage finished, ms, for stages the delivery ended.
    latencies: Vec<f64>,
    /// Stages a poll ended before their delivery arrived.
    ended_by_poll: usize,
}

impl Report {
    fn print(&self) {
        let remaining = |s: &Side| {
            s.lowest_remaining
                .map_or_else(|| "-".to_owned(), |r| r.to_string())
        };
        println!();
        println!("{}", self.kind.name());
        println!(
            "  {:<14} {:>9} {:>14} {:>12} {:>16} {:>9} {:>7}",
            "", "finished", "requests/run", "peak req/s", "lowest remaining", "took", "failed"
        );
        let (off, on, pushed) = match self.kind {
            Kind::Concourse => ("events off", "events on", "status event"),
            _ => ("webhooks off", "webhooks on", "delivery received"),
        };
        for (name, side) in [(off, &self.off), (on, &self.on), ("peer (3 s)", &self.peer)] {
            println!(
                "  {name:<14} {:>9} {:>14.1} {:>12} {:>16} {:>8.0}s {:>7}",
                format!("{}/{}", side.finished, side.runs),
                side.per_run(),
                side.peak,
                remaining(side),
                side.took.as_secs_f64(),
                side.failed
            );
        }
        println!(
            "  requests per run, {off}: {:.1} (target ≤ 15); ratio to the peer: {:.2}",
            self.off.per_run(),
            self.off.per_run() / self.peer.per_run().max(f64::MIN_POSITIVE)
        );
        let mut sorted = self.latencies.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "  {pushed} → stage finished: p50 {:.0} ms, p99 {:.0} ms, worst {:.0} ms over {} stages (target p99 ≤ 50 ms); {} ended by a poll first",
            quantile(&sorted, 0.5),
            quantile(&sorted, 0.99),
            sorted.last().copied().unwrap_or(0.0),
            sorted.len(),
            self.ended_by_poll
        );
    }
}

/// Runs the three sides of one adapter at once.
async fn round(s: &Settings, kind: Kind) -> Report {
    eprintln!(
        "ci-polling {}: {} stages with webhooks off, {} with webhooks on, {} peer runs; about {} s",
        kind.name(),
        s.stages,
        s.stages,
        s.peer_runs,
        s.run.as_secs() + 30
    );
    let http = client();
    let (off_forge, on_forge, peer_forge) = (
        Forge::new(kind, s.run),
        Forge::new(kind, s.run).pushing(),
        Forge::new(kind, s.run),
    );
    let ((off_url, off_served), (on_url, on_served), (peer_url, peer_served)) = (
        off_forge.serve().await,
        on_forge.serve().await,
        peer_forge.serve().await,
    );
    let off = start_baton(s, &off_forge, &off_url);
    let on = start_baton(s, &on_forge, &on_url);
    let begun = Instant::now();
    let (off_runs, on_runs) = tokio::join!(
        start_runs(&http, &off.url, s.stages),
        start_runs(&http, &on.url, s.stages)
    );
    let sent = Arc::new(Mutex::new(BTreeMap::new()));
    // Concourse pushes through its event streams: no deliveries to send.
    let pushes_itself = matches!(on_forge, Forge::Concourse(..));
    let sender = (!pushes_itself).then(|| {
        tokio::spawn(send_deliveries(
            http.clone(),
            on_forge.clone(),
            on.url.clone(),
            sent.clone(),
        ))
    });
    let peer = tokio::spawn(peer_side(
        http.clone(),
        peer_forge.clone(),
        peer_url,
        s.peer_runs,
    ));
    let deadline = s.deadline;
    let ((off_took, off_finished, off_failed), (on_took, on_finished, on_failed)) = tokio::join!(
        wait_finished(&http, &off.url, &off_runs, begun, deadline),
        wait_finished(&http, &on.url, &on_runs, begun, deadline)
    );
    // Requests made after the run showed finished (outputs, a late poll) still count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(sender) = sender {
        sender.abort();
    }
    let sent = std::mem::take(&mut *sent.lock().expect("the sent map"));
    let peer = peer.await.expect("the peer side");
    let (latencies, ended_by_poll) = if pushes_itself {
        pushed_latencies(&http, &on.url, &on_runs, &on_forge).await
    } else {
        latencies(&http, &on.url, &on_runs, &sent).await
    };
    let side = |forge: &Forge, runs: usize, finished, took, failed| {
        let (requests, peak) = forge.requests();
        Side {
            runs,
            finished,
            requests,
            peak,
            lowest_remaining: forge.lowest_remaining(),
            took,
            failed,
        }
    };
    drop((off_served, on_served, peer_served));
    Report {
        kind,
        off: side(
            &off_forge,
            off_runs.len(),
            off_finished,
            off_took,
            off_failed,
        ),
        on: side(&on_forge, on_runs.len(), on_finished, on_took, on_failed),
        peer,
        latencies,
        ended_by_poll,
    }
}

/// Starts `n` runs of workflow `ci` through the REST API, 16 requests at a time.
async fn start_runs(http: &reqwest::Client, baton: &str, n: usize) -> Vec<String> {
    let url = format!("{baton}/api/v1/workflows/ci/runs");
    let permits = Arc::new(tokio::sync::Semaphore::new(16));
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
            answer["run"].as_str().expect("a run id").to_owned()
        });
    }
    set.join_all().await
}

/// Waits until every run of `runs` has finished, or `deadline` (from `begun`) has passed;
/// returns when that was, how many had finished and how many of those did not succeed.
async fn wait_finished(
    http: &reqwest::Client,
    baton: &str,
    runs: &[String],
    begun: Instant,
    deadline: Duration,
) -> (Duration, usize, usize) {
    let wanted: BTreeSet<&str> = runs.iter().map(String::as_str).collect();
    loop {
        let list = get_json(http, &format!("{baton}/api/v1/runs?limit=1000"), API_TOKEN).await;
        let finished: Vec<&Value> = list["runs"]
            .as_array()
            .map(|runs| {
                runs.iter()
                    .filter(|r| {
                        r["finished_at"].is_i64()
                            && r["id"].as_str().is_some_and(|id| wanted.contains(id))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if finished.len() < wanted.len() && begun.elapsed() >= deadline {
            // Say where one of the unfinished runs stands, in baton's words.
            let done: BTreeSet<&str> = finished.iter().filter_map(|r| r["id"].as_str()).collect();
            if let Some(open) = wanted.iter().find(|id| !done.contains(*id)) {
                let run = get_json(http, &format!("{baton}/api/v1/runs/{open}"), API_TOKEN).await;
                let stage = &run["stages"][0];
                eprintln!(
                    "{baton}: run {open} unfinished at the deadline: stage {} ({}), external {}",
                    stage["status"], stage["message"], stage["external"]
                );
            }
        }
        if finished.len() == wanted.len() || begun.elapsed() >= deadline {
            let failed = finished
                .iter()
                .filter(|r| r["status"] != "succeeded")
                .count();
            return (begun.elapsed(), finished.len(), failed);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Sends each ended run's completion delivery once, as soon as it ends, until aborted;
/// records in `sent` the forge's id → the stored delivery's id.
async fn send_deliveries(
    http: reqwest::Client,
    forge: Forge,
    baton: String,
    sent: Arc<Mutex<BTreeMap<u64, i64>>>,
) {
    let hooks = format!("{baton}/hooks/forge");
    let mut done = BTreeSet::new();
    loop {
        for id in forge.ended() {
            if !done.insert(id) {
                continue;
            }
            let (headers, body) = forge.delivery(id, done.len());
            let mut request = http.post(&hooks).body(body);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let answer = request.send().await.expect("send a delivery");
            assert_eq!(answer.status().as_u16(), 202, "the delivery was refused");
            let stored: Value = answer.json().await.expect("the intake's answer");
            let delivery = stored["delivery"].as_i64().expect("a delivery id");
            sent.lock().expect("the sent map").insert(id, delivery);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// For each run whose stage's external id got a delivery: its stage's `finished_at` less the
/// delivery's `received_at`, in ms, when the delivery came first; and how many stages a
/// poll ended before their delivery arrived.
async fn latencies(
    http: &reqwest::Client,
    baton: &str,
    runs: &[String],
    sent: &BTreeMap<u64, i64>,
) -> (Vec<f64>, usize) {
    let (mut latencies, mut by_poll) = (Vec::new(), 0);
    for run in runs {
        let snapshot = get_json(http, &format!("{baton}/api/v1/runs/{run}"), API_TOKEN).await;
        let stage = &snapshot["stages"][0];
        let Some(external) = stage["external"]["id"]
            .as_str()
            .and_then(|id| id.parse::<u64>().ok())
        else {
            continue;
        };
        let Some(delivery) = sent.get(&external) else {
            by_poll += 1;
            continue;
        };
        let delivery = get_json(
            http,
            &format!("{baton}/api/v1/deliveries/{delivery}"),
            API_TOKEN,
        )
        .await;
        let (Some(received), Some(finished)) = (
            delivery["received_at"].as_i64(),
            stage["finished_at"].as_i64(),
        ) else {
            continue;
        };
        if finished < received {
            by_poll += 1;
        } else {
            latencies.push((finished - received) as f64);
        }
    }
    (latencies, by_poll)
}

/// For each run: its stage's `finished_at` less the moment the forge pushed the build's end
/// through its own channel (Concourse's `status` event); and how many stages ended before
/// that (by a poll).
async fn pushed_latencies(
    http: &reqwest::Client,
    baton: &str,
    runs: &[String],
    forge: &Forge,
) -> (Vec<f64>, usize) {
    let (mut latencies, mut by_poll) = (Vec::new(), 0);
    for run in runs {
        let snapshot = get_json(http, &format!("{baton}/api/v1/runs/{run}"), API_TOKEN).await;
        let stage = &snapshot["stages"][0];
        let external = stage["external"]["id"]
            .as_str()
            .and_then(|id| id.parse::<u64>().ok());
        let pushed = external.and_then(|id| forge.pushed_end_ms(id));
        match (pushed, stage["finished_at"].as_i64()) {
            (Some(pushed), Some(finished)) if finished >= pushed as i64 => {
                latencies.push((finished - pushed as i64) as f64);
            }
            (_, Some(_)) => by_poll += 1,
            _ => {}
        }
    }
    (latencies, by_poll)
}

/// `n` runs started on the forge directly and read every [`PEER_INTERVAL`] until they end.
async fn peer_side(http: reqwest::Client, forge: Forge, url: String, n: usize) -> Side {
    let begun = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (http, forge, url) = (http.clone(), forge.clone(), url.clone());
        set.spawn(async move {
            let run = forge.peer_start(&http, &url).await;
            loop {
                tokio::time::sleep(PEER_INTERVAL).await;
                if forge.peer_ended(&http, &run).await {
                    break;
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    let (requests, peak) = forge.requests();
    Side {
        runs: n,
        finished: n,
        requests,
        peak,
        lowest_remaining: forge.lowest_remaining(),
        took: begun.elapsed(),
        failed: 0,
    }
}
