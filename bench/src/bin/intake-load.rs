//! An open-loop load generator for webhook intake: sends signed GitHub `push` deliveries at a
//! fixed rate, each with its own delivery id, and reports latency percentiles measured from
//! each request's *scheduled* time (so a stalled server cannot hide its queueing).
//!
//! `intake-load URL RATE SECONDS CONNECTIONS SECRET BODY`
//!
//! Prints one line of JSON: `{"sent", "ok", "non_2xx", "errors", "rate", "p50_ms", "p99_ms", "max_ms"}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hmac::Mac;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 6 {
        eprintln!("usage: intake-load URL RATE SECONDS CONNECTIONS SECRET BODY");
        std::process::exit(2);
    }
    let url = args[0].clone();
    let rate: f64 = args[1].parse().expect("RATE");
    let seconds: f64 = args[2].parse().expect("SECONDS");
    let connections: usize = args[3].parse().expect("CONNECTIONS");
    let body = args[5].clone();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(args[4].as_bytes()).expect("key");
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    // Two runtime threads, like wrk -t2: enough that the tool is not the limit at the rates
    // measured, while it shares the machine with the server under test.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(url, rate, seconds, connections, signature, body));
}

async fn run(
    url: String,
    rate: f64,
    seconds: f64,
    connections: usize,
    signature: String,
    body: String,
) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let slots = Arc::new(tokio::sync::Semaphore::new(connections));
    let (ok, non_2xx, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let total = (rate * seconds) as u64;
    let begun = Instant::now();
    let prefix = format!("load-{}", std::process::id());
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = begun + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(scheduled.into()).await;
        let permit = slots.clone().acquire_owned().await.expect("semaphore");
        let request = client
            .post(&url)
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", format!("{prefix}-{i}"))
            .header("x-hub-signature-256", &signature)
            .body(body.clone());
        let (ok, non_2xx, errors, latencies) = (
            ok.clone(),
            non_2xx.clone(),
            errors.clone(),
            latencies.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            match request.send().await {
                Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                Ok(_) => non_2xx.fetch_add(1, Ordering::Relaxed),
                Err(_) => errors.fetch_add(1, Ordering::Relaxed),
            };
            latencies.lock().unwrap().push(scheduled.elapsed());
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = begun.elapsed().as_secs_f64();
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    let pct = |p: f64| {
        l.get(((l.len().max(1) - 1) as f64 * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "{{\"sent\": {total}, \"ok\": {}, \"non_2xx\": {}, \"errors\": {}, \"rate\": {:.0}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}, \"max_ms\": {:.2}}}",
        ok.load(Ordering::Relaxed),
        non_2xx.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        total as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}
