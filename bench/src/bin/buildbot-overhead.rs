//! What baton adds to a Buildbot build: the same short build (the test master's `sleep`
//! builder, `sleep` seconds) forced straight through Buildbot's API by a careful client, and
//! started through `baton serve` by a signed GitHub webhook, with Buildbot's status push
//! reaching baton (completion webhooks on) and without it (polling only).
//!
//! `buildbot-overhead BATON BUILDBOT_URL` (bench/buildbot-overhead/run.sh runs it); the
//! environment sets `ROUNDS` (20), `SLEEP` (2 seconds), `DIRECT_POLL_MS` (200) and
//! `API_POLL_MS` (50); `TRACE=1` prints when baton made each call, round by round.
//!
//! Each round runs the three one after the other (never two builds at once), so that a
//! drift of the machine touches all three alike. Every client reaches Buildbot through a
//! counting reverse proxy of its own (one per client), which is how the requests per build
//! are counted; the proxy adds well under a millisecond per request, to all three.
//!
//! - direct: `POST /api/v2/forceschedulers/force` (JSON-RPC `force`), then every
//!   `DIRECT_POLL_MS` `GET /api/v2/builds?buildrequestid=<id>` until the build is complete;
//!   timed on the client from the force to the answer that shows it complete.
//! - baton: `POST /hooks/github`, then the REST API every `API_POLL_MS` until the run has
//!   finished. Timed twice: by baton's own clock, from the delivery's `received_at` to the
//!   run's `finished_at`, and on the client from the POST to the answer that shows the run
//!   finished. With webhooks on, `baton serve` listens where the master's `HttpStatusPush`
//!   posts (the web port + 9, `/hooks/adapters/buildbot`); with them off it listens
//!   elsewhere, so every push is refused and only polls see the end.
//!
//! Both baton servers use the adapter's default poll settings (`poll_initial` 1 s,
//! `poll_max` 30 s).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use baton_bench::{Baton, client, env_or, get_json};
use hmac::Mac;
use serde_json::{Value, json};

const SECRET: &str = "bench-secret";
const TOKEN: &str = "bench-viewer";
/// What master.cfg's status push sends as `Authorization: Bearer …`.
const HOOK_TOKEN: &str = "baton-test-hook";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 2 {
        eprintln!("usage: buildbot-overhead BATON BUILDBOT_URL");
        std::process::exit(2);
    }
    let settings = Settings {
        baton: args[0].clone(),
        buildbot: args[1].trim_end_matches('/').to_owned(),
        rounds: env_or("ROUNDS", 20),
        sleep: env_or("SLEEP", 2),
        direct_poll: Duration::from_millis(env_or("DIRECT_POLL_MS", 200)),
        api_poll: Duration::from_millis(env_or("API_POLL_MS", 50)),
        trace: std::env::var_os("TRACE").is_some_and(|v| v == "1"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(settings));
}

struct Settings {
    baton: String,
    buildbot: String,
    rounds: usize,
    sleep: u32,
    direct_poll: Duration,
    api_poll: Duration,
    trace: bool,
}

// ---- a counting reverse proxy ------------------------------------------------------------------

/// Forwards every request to Buildbot and counts it, by call.
struct Proxy {
    upstream: String,
    client: reqwest::Client,
    total: AtomicU64,
    calls: Mutex<BTreeMap<String, u64>>,
    /// When each call came (for `TRACE=1`).
    log: Mutex<Vec<(Instant, String)>>,
}

impl Proxy {
    /// Starts one on 127.0.0.1; returns it and its base URL.
    async fn start(upstream: &str) -> (Arc<Self>, String) {
        let proxy = Arc::new(Self {
            upstream: upstream.to_owned(),
            client: client(),
            total: AtomicU64::new(0),
            calls: Mutex::new(BTreeMap::new()),
            log: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(proxy.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (proxy, url)
    }

    fn count(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    fn calls(&self) -> BTreeMap<String, u64> {
        self.calls.lock().unwrap().clone()
    }

    /// The calls since `begun`, as `+ms call` lines.
    fn since(&self, begun: Instant) -> String {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= begun)
            .map(|(at, call)| format!("    +{:5} ms  {call}", (*at - begun).as_millis()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `GET /api/v2/builds/17?x=1&y=2` → `GET /api/v2/builds/{id}?x&y`.
fn call_name(method: &str, path_and_query: &str) -> String {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let path: Vec<&str> = path
        .split('/')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                "{id}"
            } else {
                s
            }
        })
        .collect();
    let keys: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split('=').next().unwrap_or(p))
        .collect();
    let mut name = format!("{method} {}", path.join("/"));
    if !keys.is_empty() {
        name.push('?');
        name.push_str(&keys.join("&"));
    }
    name
}

async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    proxy.total.fetch_add(1, Ordering::SeqCst);
    let call = call_name(parts.method.as_str(), &path);
    proxy
        .log
        .lock()
        .unwrap()
        .push((Instant::now(), call.clone()));
    *proxy.calls.lock().unwrap().entry(call).or_default() += 1;
    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(body) => body,
        Err(e) => return (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut upstream = proxy
        .client
        .request(parts.method, format!("{}{path}", proxy.upstream));
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) {
            upstream = upstream.header(name, value);
        }
    }
    let answer = match upstream.body(body).send().await {
        Ok(answer) => answer,
        Err(e) => return (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    // Whole answers only: Buildbot 4.3 can wedge when a client hangs up halfway.
    let bytes = match answer.bytes().await {
        Ok(bytes) => bytes,
        Err(e) => return (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if !matches!(
            name.as_str(),
            "content-length" | "connection" | "transfer-encoding"
        ) {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}

// ---- the direct client -------------------------------------------------------------------------

/// Forces one build and polls it to its end; returns the time from the force to the answer
/// that showed it complete.
async fn direct(http: &reqwest::Client, base: &str, s: &Settings, tag: &str) -> Duration {
    let begun = Instant::now();
    let answer: Value = http
        .post(format!("{base}/api/v2/forceschedulers/force"))
        .json(&json!({
            "jsonrpc": "2.0",
            "id": 1,
            "method": "force",
            "params": {
                "builderNames": ["sleep"],
                "reason": format!("bench direct {tag}"),
                "sleep": s.sleep.to_string(),
                "tag": tag,
            },
        }))
        .send()
        .await
        .expect("force")
        .json()
        .await
        .expect("the force's answer");
    let brid = answer["result"][1]
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no build request in {answer}"));
    loop {
        tokio::time::sleep(s.direct_poll).await;
        let builds: Value = http
            .get(format!("{base}/api/v2/builds?buildrequestid={brid}"))
            .send()
            .await
            .expect("poll")
            .json()
            .await
            .expect("builds");
        if let Some(build) = builds["builds"].as_array().and_then(|b| b.last())
            && build["complete"] == true
        {
            let elapsed = begun.elapsed();
            assert_eq!(build["results"], 0, "the direct build failed: {build}");
            return elapsed;
        }
    }
}

// ---- baton -------------------------------------------------------------------------------------

/// A `baton serve` for these rounds: a GitHub source, the Buildbot instance behind
/// `buildbot`, and one workflow forcing the `sleep` builder.
fn start_baton(s: &Settings, buildbot: &str, listen: &str) -> Baton {
    let env = [
        ("BENCH_SECRET", SECRET),
        ("BENCH_TOKEN", TOKEN),
        ("BENCH_HOOK", HOOK_TOKEN),
    ];
    Baton::start(&s.baton, listen, &env, |dir| {
        let config = format!(
            r#"workflows = ["wf.yaml"]

[store]
url = "sqlite://{db}"

[api]
tokens = [{{ name = "bench", token = {{ env = "BENCH_TOKEN" }}, role = "viewer" }}]

[sources.github]
kind = "github"
secret = {{ env = "BENCH_SECRET" }}

[adapters.buildbot]
kind = "buildbot"
url = "{buildbot}"
webhook_token = {{ env = "BENCH_HOOK" }}
"#,
            db = dir.join("baton.db").display(),
        );
        let workflow = format!(
            r#"name: bench
on: [{{ source: github, event: push }}]
stages:
  build:
    uses: buildbot
    with:
      builder: sleep
      properties: {{ sleep: "{}", tag: '${{{{ .event.tag }}}}' }}
"#,
            s.sleep
        );
        vec![
            ("baton.toml".to_owned(), config),
            ("wf.yaml".to_owned(), workflow),
        ]
    })
}

/// One baton round's times.
struct BatonTimes {
    /// Delivery `received_at` → run `finished_at`, baton's clock.
    server: Duration,
    /// POST of the webhook → the answer showing the run finished.
    client: Duration,
    /// Delivery `received_at` → run `created_at`.
    intake: Duration,
}

async fn through_baton(
    http: &reqwest::Client,
    baton: &Baton,
    s: &Settings,
    tag: &str,
) -> BatonTimes {
    let body = json!({"ref": "refs/heads/main", "after": "0123abc", "tag": tag}).to_string();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let begun = Instant::now();
    let answer = http
        .post(format!("{}/hooks/github", baton.url))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", tag)
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
        .expect("webhook");
    assert_eq!(
        answer.status().as_u16(),
        202,
        "the webhook was not accepted"
    );
    let id = answer.json::<Value>().await.expect("JSON")["delivery"].clone();
    let delivery_url = format!("{}/api/v1/deliveries/{id}", baton.url);
    let (delivery, run_id) = loop {
        let delivery = get_json(http, &delivery_url, TOKEN).await;
        if let Some(run) = delivery["runs"][0].as_str() {
            let run = run.to_owned();
            break (delivery, run);
        }
        assert_ne!(delivery["status"], "failed", "{delivery}");
        tokio::time::sleep(s.api_poll).await;
    };
    let run_url = format!("{}/api/v1/runs/{run_id}", baton.url);
    loop {
        let run = get_json(http, &run_url, TOKEN).await;
        if run["finished_at"].is_i64() {
            let client = begun.elapsed();
            assert_eq!(run["status"], "succeeded", "{run:#}");
            let received = delivery["received_at"].as_i64().expect("received_at");
            let millis = |at: i64| Duration::from_millis((at - received).max(0) as u64);
            return BatonTimes {
                server: millis(run["finished_at"].as_i64().unwrap()),
                client,
                intake: millis(run["created_at"].as_i64().expect("created_at")),
            };
        }
        tokio::time::sleep(s.api_poll).await;
    }
}

// ---- the rounds --------------------------------------------------------------------------------

fn median(times: &[Duration]) -> f64 {
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    if n % 2 == 1 {
        ms[n / 2]
    } else {
        (ms[n / 2 - 1] + ms[n / 2]) / 2.0
    }
}

fn spread(times: &[Duration]) -> String {
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let min = times.iter().map(ms).fold(f64::INFINITY, f64::min);
    let max = times.iter().map(ms).fold(0.0, f64::max);
    format!("{:7.0} ms  ({min:.0}–{max:.0})", median(times))
}

async fn run(s: Settings) {
    let http = client();
    let web_port: u16 = s
        .buildbot
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("BUILDBOT_URL ends in :port");
    let push_listen = format!("127.0.0.1:{}", web_port + 9);

    let (direct_proxy, direct_url) = Proxy::start(&s.buildbot).await;
    let (on_proxy, on_url) = Proxy::start(&s.buildbot).await;
    let (off_proxy, off_url) = Proxy::start(&s.buildbot).await;
    let on = start_baton(&s, &on_url, &push_listen);
    let off = start_baton(&s, &off_url, "127.0.0.1:0");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let settle = Duration::from_millis(500);

    eprintln!(
        "buildbot-overhead: {} rounds of a {} s `sleep` build on {}: direct, baton with webhooks (listening on {push_listen}), baton polling only; one warm-up round first",
        s.rounds, s.sleep, s.buildbot
    );
    let (mut d_times, mut on_times, mut off_times) = (Vec::new(), Vec::new(), Vec::new());
    let mut counts = [(0u64, 0u64); 3];
    for round in 0..=s.rounds {
        let warm_up = round == 0;
        if round == 1 {
            counts = [
                (direct_proxy.count(), 0),
                (on_proxy.count(), 0),
                (off_proxy.count(), 0),
            ];
        }
        let d = direct(&http, &direct_url, &s, &format!("bench-{stamp}-d{round}")).await;
        tokio::time::sleep(settle).await;
        let on_begun = Instant::now();
        let b_on = through_baton(&http, &on, &s, &format!("bench-{stamp}-on{round}")).await;
        tokio::time::sleep(settle).await;
        let off_begun = Instant::now();
        let b_off = through_baton(&http, &off, &s, &format!("bench-{stamp}-off{round}")).await;
        tokio::time::sleep(settle).await;
        if s.trace {
            eprintln!(
                "  webhooks on, baton's calls:\n{}",
                on_proxy.since(on_begun)
            );
            eprintln!(
                "  webhooks off, baton's calls:\n{}",
                off_proxy.since(off_begun)
            );
        }
        eprintln!(
            "{} {round:2}: direct {:5} ms | webhooks on {:5} ms (client {:5}, intake {:3}) | off {:5} ms (client {:5})",
            if warm_up { "warm-up" } else { "round  " },
            d.as_millis(),
            b_on.server.as_millis(),
            b_on.client.as_millis(),
            b_on.intake.as_millis(),
            b_off.server.as_millis(),
            b_off.client.as_millis(),
        );
        if !warm_up {
            d_times.push(d);
            on_times.push(b_on);
            off_times.push(b_off);
        }
    }
    // Requests made after the last answer (outputs read after the run showed finished, a
    // late poll) still count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    counts[0].1 = direct_proxy.count();
    counts[1].1 = on_proxy.count();
    counts[2].1 = off_proxy.count();
    let per_build = |(before, after): (u64, u64)| (after - before) as f64 / s.rounds as f64;

    let server = |t: &[BatonTimes]| t.iter().map(|t| t.server).collect::<Vec<_>>();
    let clientside = |t: &[BatonTimes]| t.iter().map(|t| t.client).collect::<Vec<_>>();
    let intake = |t: &[BatonTimes]| t.iter().map(|t| t.intake).collect::<Vec<_>>();
    let direct_median = median(&d_times);

    println!(
        "\nBuildbot `sleep` build of {} s, {} rounds, medians (min–max)",
        s.sleep, s.rounds
    );
    println!(
        "direct: force → seen complete (polls every {} ms)   {}",
        s.direct_poll.as_millis(),
        spread(&d_times)
    );
    for (name, times) in [
        ("baton, completion webhooks on ", &on_times),
        ("baton, completion webhooks off", &off_times),
    ] {
        println!("{name}:");
        println!(
            "  received_at → run finished_at (baton's clock)    {}",
            spread(&server(times))
        );
        println!(
            "  webhook POST → seen finished (API every {} ms)   {}",
            s.api_poll.as_millis(),
            spread(&clientside(times))
        );
        println!(
            "  of which received_at → run created_at           {}",
            spread(&intake(times))
        );
    }
    println!(
        "ratio baton/direct, webhooks on:  {:.3} (baton's clock), {:.3} (client side)",
        median(&server(&on_times)) / direct_median,
        median(&clientside(&on_times)) / direct_median
    );
    println!(
        "ratio baton/direct, webhooks off: {:.3} (baton's clock), {:.3} (client side)",
        median(&server(&off_times)) / direct_median,
        median(&clientside(&off_times)) / direct_median
    );
    println!("HTTP requests to Buildbot per build:");
    println!(
        "  direct client                  {:5.1}",
        per_build(counts[0])
    );
    println!(
        "  baton, completion webhooks on  {:5.1}",
        per_build(counts[1])
    );
    println!(
        "  baton, completion webhooks off {:5.1}",
        per_build(counts[2])
    );
    for (name, proxy) in [("webhooks on", &on_proxy), ("webhooks off", &off_proxy)] {
        println!("  baton's calls, {name}, all {} builds:", s.rounds + 1);
        for (call, n) in proxy.calls() {
            println!("    {n:5}  {call}");
        }
    }
}
