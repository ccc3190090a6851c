//! What 200 concurrent rollouts cost one `kubernetes` instance: `NAMESPACES` (20) namespaces
//! of `DEPLOYMENTS` (10) Deployments each, every one set to a new image at once by the real
//! `baton`, against the in-process Kubernetes API server of `baton_forge_fakes::kubernetes`
//! (its Deployment controller moves one replica every `STEP_MS` ms, `REPLICAS` (3) replicas
//! each).
//!
//! `k8s-rollouts BATON` (bench/k8s-rollouts/run.sh runs it); the environment also sets
//! `ROUNDS` (3). Each round has two sides, one after the other, each setting the next image:
//!
//! - **one run of all stages**: one `baton run --json` of one workflow with a set-image
//!   stage per Deployment, none needing another;
//! - **a run per rollout**: one `baton serve`, given one run of a one-stage workflow per
//!   Deployment through its REST API (started one after the other, as fast as it answers),
//!   read back once every run has ended.
//!
//! The watches of a side end with its process. Figures, each against its target:
//!
//! - **open watches at peak** (the API server's own count): one watch per namespace and
//!   kind is 20 here; one per stage would be 200.
//! - **requests per rollout**: every request the API server served during a side (reads,
//!   the patch, watch requests, relists) divided by the rollouts.
//! - **completing status write → stage end**: from the moment the controller wrote the
//!   status that completed a rollout (`Cluster::rollout_completed_at`) to the stage's
//!   `finished_at` as the engine stored it, both on this machine's clock: p50, p95, p99 and
//!   worst over every rollout of every round (target: p99 ≤ 50 ms).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_bench::{Baton, client, env_or, get_json, quantile};
use baton_forge_fakes::kubernetes::{Cluster, RolloutPlan, Rules};
use serde_json::{Value, json};

/// The REST API token of the `baton serve` side.
const API_TOKEN: &str = "bench-operator";
/// The ServiceAccount token baton's kubeconfig carries.
const TOKEN: &str = "bench-baton-token";
/// The target for the p99 of completing status write → stage end.
const P99_TARGET_MS: f64 = 50.0;

struct Settings {
    baton: String,
    namespaces: usize,
    deployments: usize,
    replicas: i32,
    step: Duration,
    rounds: usize,
}

impl Settings {
    fn rollouts(&self) -> usize {
        self.namespaces * self.deployments
    }
}

/// What one round measured.
struct Round {
    succeeded: usize,
    took: Duration,
    requests: u64,
    /// Completing status write → stage end, ms, one per rollout whose both ends are known.
    latencies: Vec<f64>,
}

fn namespace(i: usize) -> String {
    format!("team-{i:02}")
}

fn deployment(j: usize) -> String {
    format!("web-{j:02}")
}

fn image(round: usize) -> String {
    format!("registry.example.com/shop/web:1.{round}.0")
}

fn millis_since_epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn main() {
    let Some(baton) = std::env::args().nth(1) else {
        eprintln!("usage: k8s-rollouts BATON");
        std::process::exit(2);
    };
    let settings = Settings {
        baton: std::path::absolute(baton)
            .expect("the binary's path")
            .display()
            .to_string(),
        namespaces: env_or("NAMESPACES", 20),
        deployments: env_or("DEPLOYMENTS", 10),
        replicas: env_or("REPLICAS", 3),
        step: Duration::from_millis(env_or("STEP_MS", 200)),
        rounds: env_or("ROUNDS", 3),
    };

    let cluster = Cluster::new();
    cluster.add_token(TOKEN, "system:serviceaccount:baton:baton", Rules::all());
    for i in 0..settings.namespaces {
        let ns = namespace(i);
        cluster.add_namespace(&ns);
        for j in 0..settings.deployments {
            let name = deployment(j);
            cluster.add_deployment(&ns, &name, "web", &image(0), settings.replicas);
            cluster.rollout_plan(&ns, &name, RolloutPlan::completes().step(settings.step));
        }
    }
    let served = cluster
        .serve_in_background()
        .expect("serve the fake cluster");
    let dir = tempfile::tempdir().expect("a scratch folder");
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    cluster
        .write_kubeconfig(&served, &kubeconfig, "bench", TOKEN)
        .expect("write the kubeconfig");
    std::fs::write(
        dir.path().join("baton.toml"),
        config(
            settings.rollouts(),
            &kubeconfig,
            "rollouts.yaml",
            "sqlite://baton.db",
        ),
    )
    .expect("write baton.toml");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");

    let mut one_run = Vec::new();
    let mut run_each = Vec::new();
    for round in 1..=settings.rounds {
        one_run.push(run_round(&settings, &cluster, dir.path(), 2 * round - 1));
        run_each.push(runtime.block_on(serve_round(&settings, &cluster, &kubeconfig, 2 * round)));
    }
    report(&settings, &cluster, &one_run, &run_each);
}

/// A `baton.toml` with the instance `k8s`, the workflow file `workflow`, the store `store`
/// and the REST API token of `serve_round`.
fn config(stages: usize, kubeconfig: &Path, workflow: &str, store: &str) -> String {
    format!(
        r#"workflows = ["{workflow}"]

[store]
url = "{store}"

[engine]
max_concurrency = {}

[api]
tokens = [{{ name = "bench", token = {{ env = "BENCH_API_TOKEN" }}, role = "operator" }}]

[adapters.k8s]
kind = "kubernetes"
kubeconfig = "{}"
context = "bench"
"#,
        stages.max(1),
        kubeconfig.display()
    )
}

/// One `baton serve` given one run per Deployment through its REST API, each setting the
/// image of `round`; the figures once every run has ended.
async fn serve_round(
    settings: &Settings,
    cluster: &Cluster,
    kubeconfig: &Path,
    round: usize,
) -> Round {
    let workflow = "name: one\non: [{ source: manual }]\nstages:\n  deploy:\n    uses: k8s\n    timeout: 5m\n    with: { action: set-image, namespace: '${{ .event.namespace }}', deployment: '${{ .event.name }}', container: web, image: '${{ .event.image }}' }\n";
    let baton = Baton::start(
        &settings.baton,
        "127.0.0.1:0",
        &[("BENCH_API_TOKEN", API_TOKEN)],
        |dir: &Path| {
            let store = format!("sqlite://{}", dir.join("baton.db").display());
            vec![
                (
                    "baton.toml".to_owned(),
                    config(settings.rollouts(), kubeconfig, "one.yaml", &store),
                ),
                ("one.yaml".to_owned(), workflow.to_owned()),
            ]
        },
    );
    let http = client();
    let requests_before = cluster.meter().total();
    let begun = Instant::now();
    let mut runs = Vec::new();
    for i in 0..settings.namespaces {
        for j in 0..settings.deployments {
            let (ns, name) = (namespace(i), deployment(j));
            let answer: Value = http
                .post(format!("{}/api/v1/workflows/one/runs", baton.url))
                .bearer_auth(API_TOKEN)
                .json(&json!({"namespace": ns, "name": name, "image": image(round)}))
                .send()
                .await
                .expect("start a run")
                .json()
                .await
                .expect("the run");
            let id = answer["run"].as_str().expect("a run id").to_owned();
            runs.push((ns, name, id));
        }
    }
    let mut ended: Vec<Option<Value>> = vec![None; runs.len()];
    while ended.iter().any(Option::is_none) {
        assert!(
            begun.elapsed() < Duration::from_secs(300),
            "round {round}: runs still going after 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        for ((_, _, id), slot) in runs.iter().zip(ended.iter_mut()) {
            if slot.is_none() {
                let run =
                    get_json(&http, &format!("{}/api/v1/runs/{id}", baton.url), API_TOKEN).await;
                if run["finished_at"].is_number() {
                    *slot = Some(run);
                }
            }
        }
    }
    let took = begun.elapsed();
    let requests = cluster.meter().total() - requests_before;
    drop(baton);
    let stages = runs
        .iter()
        .zip(ended.into_iter().flatten())
        .map(|((ns, name, _), run)| (ns.clone(), name.clone(), run["stages"][0].clone()));
    Round::tally(cluster, round, took, requests, stages)
}

/// One `baton run` of one workflow setting every Deployment to the image of `round`.
fn run_round(settings: &Settings, cluster: &Cluster, dir: &Path, round: usize) -> Round {
    let mut workflow = String::from("name: rollouts\nstages:\n");
    for i in 0..settings.namespaces {
        for j in 0..settings.deployments {
            workflow.push_str(&format!(
                "  {ns}-{name}:\n    uses: k8s\n    timeout: 5m\n    with: {{ action: set-image, namespace: {ns}, deployment: {name}, container: web, image: \"{image}\" }}\n",
                ns = namespace(i),
                name = deployment(j),
                image = image(round),
            ));
        }
    }
    std::fs::write(dir.join("rollouts.yaml"), workflow).expect("write the workflow");

    let requests_before = cluster.meter().total();
    let begun = Instant::now();
    let out = Command::new(&settings.baton)
        .args(["run", "-c", "baton.toml", "rollouts", "--json"])
        .current_dir(dir)
        .env("BATON_LOG", "warn")
        .env("BENCH_API_TOKEN", API_TOKEN)
        .stdin(Stdio::null())
        .output()
        .expect("run baton");
    // `baton run` prints its progress to stderr: shown only when the run went wrong.
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let took = begun.elapsed();
    let requests = cluster.meter().total() - requests_before;
    let run: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "baton run did not print a run ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });

    // Stage ids are `<namespace>-<deployment>`, and every deployment's name is `web-NN`.
    let stages = run["stages"].as_array().into_iter().flatten().map(|stage| {
        let id = stage["id"].as_str().unwrap_or_default();
        let (ns, n) = id.split_once("-web-").unwrap_or((id, ""));
        (ns.to_owned(), format!("web-{n}"), stage.clone())
    });
    Round::tally(cluster, round, took, requests, stages)
}

impl Round {
    /// The figures of a side whose stages were `stages` (namespace, Deployment, the stage
    /// as stored), one per rollout.
    fn tally(
        cluster: &Cluster,
        round: usize,
        took: Duration,
        requests: u64,
        stages: impl Iterator<Item = (String, String, Value)>,
    ) -> Self {
        let mut succeeded = 0;
        let mut latencies = Vec::new();
        for (ns, name, stage) in stages {
            if stage["status"] != "succeeded" {
                eprintln!(
                    "round {round}: {ns}/{name}: {}: {}",
                    stage["status"], stage["message"]
                );
                continue;
            }
            succeeded += 1;
            match (
                cluster.rollout_completed_at(&ns, &name),
                stage["finished_at"].as_f64(),
            ) {
                (Some(completed), Some(finished)) => {
                    latencies.push(finished - millis_since_epoch(completed));
                }
                _ => eprintln!("round {round}: {ns}/{name}: no completing status write recorded"),
            }
        }
        latencies.sort_by(f64::total_cmp);
        Self {
            succeeded,
            took,
            requests,
            latencies,
        }
    }
}

fn report(settings: &Settings, cluster: &Cluster, one_run: &[Round], run_each: &[Round]) {
    let rollouts = settings.rollouts();
    println!();
    println!(
        "k8s-rollouts: {rollouts} rollouts at once ({} namespaces × {} Deployments of {} replicas, one replica every {} ms), {} rounds of each side",
        settings.namespaces,
        settings.deployments,
        settings.replicas,
        settings.step.as_millis(),
        one_run.len()
    );
    println!();
    println!(
        "| side | round | succeeded | took | requests per rollout | write → end p50 | p95 | p99 | worst |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut p99s = Vec::new();
    for (side, rounds) in [
        ("one run of all stages (`baton run`)", one_run),
        ("a run per rollout (`baton serve`)", run_each),
    ] {
        let mut all = Vec::new();
        for (n, round) in rounds.iter().enumerate() {
            all.extend_from_slice(&round.latencies);
            println!(
                "| {side} | {} | {}/{rollouts} | {:.1} s | {:.1} | {} |",
                n + 1,
                round.succeeded,
                round.took.as_secs_f64(),
                round.requests as f64 / rollouts as f64,
                quantiles(&round.latencies)
            );
        }
        all.sort_by(f64::total_cmp);
        let requests: u64 = rounds.iter().map(|r| r.requests).sum();
        println!(
            "| {side} | all | {}/{} | | {:.1} | {} |",
            rounds.iter().map(|r| r.succeeded).sum::<usize>(),
            rollouts * rounds.len(),
            requests as f64 / (rollouts * rounds.len()).max(1) as f64,
            quantiles(&all)
        );
        p99s.push((side, quantile(&all, 0.99)));
    }
    println!();
    let opened: u64 = (0..settings.namespaces)
        .map(|i| cluster.watches_opened("deployments", &namespace(i)))
        .sum();
    let peak = cluster.peak_open_watches();
    let target = settings.namespaces;
    println!(
        "open watches at peak: {peak} (target {target}: one per namespace and kind; one per stage would be {rollouts}): {}",
        verdict(peak <= target)
    );
    let sides = one_run.len() + run_each.len();
    println!(
        "deployment watch streams opened: {opened} in {sides} rounds ({:.1} per namespace and round)",
        opened as f64 / (settings.namespaces * sides).max(1) as f64
    );
    for (side, p99) in p99s {
        println!(
            "completing status write → stage end p99, {side}: {p99:.1} ms (target ≤ {P99_TARGET_MS} ms): {}",
            verdict(p99 <= P99_TARGET_MS)
        );
    }
    println!(
        "watches open after the last round: {}",
        cluster.open_watches()
    );
}

fn quantiles(sorted: &[f64]) -> String {
    format!(
        "{:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms",
        quantile(sorted, 0.5),
        quantile(sorted, 0.95),
        quantile(sorted, 0.99),
        sorted.last().copied().unwrap_or(0.0)
    )
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}
