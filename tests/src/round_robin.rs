//! A webhook sender in front of several `baton serve` replicas, as a plain load balancer
//! and a forge's redelivery would behave together: each try goes to the next replica in
//! turn, a try that gets no answer within a short timeout (the replica is dead or frozen)
//! or a non-2xx answer is made again on the next one, and only a 2xx counts as delivered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sign_sha256;

/// One signed GitHub delivery to make.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `X-GitHub-Delivery`.
    pub id: String,
    /// `X-GitHub-Event`.
    pub event: String,
    /// The JSON body.
    pub body: String,
}

/// What became of one delivery.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The delivery id.
    pub id: String,
    /// The status of the last try (0: no answer).
    pub status: u16,
    /// How many tries it took.
    pub tries: u32,
    /// The replica (index) that answered the last try.
    pub replica: usize,
    /// Whether the last answer said `duplicate` (an earlier try was stored after all).
    pub duplicate: bool,
}

impl Sent {
    /// Whether the sender got a 2xx: the delivery is acknowledged.
    pub fn acknowledged(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The replicas' `http://host:port` URLs and the source's secret.
pub struct RoundRobin {
    replicas: Vec<String>,
    source: String,
    secret: String,
    next: AtomicUsize,
    agent: ureq::Agent,
    /// Tries that got no 2xx, by replica.
    failed: Mutex<Vec<u64>>,
}

impl RoundRobin {
    /// A sender to `/hooks/<source>` of each of `replicas`, signing with `secret`, giving up
    /// on a try after `timeout`.
    pub fn new(replicas: Vec<String>, source: &str, secret: &str, timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        let failed = Mutex::new(vec![0; replicas.len()]);
        Self {
            replicas,
            source: source.to_owned(),
            secret: secret.to_owned(),
            next: AtomicUsize::new(0),
            agent,
            failed,
        }
    }

    /// Tries that got no 2xx, per replica.
    pub fn failed_tries(&self) -> Vec<u64> {
        self.failed.lock().expect("not poisoned").clone()
    }

    /// Delivers `delivery`, replica after replica, until one answers 2xx or `patience` has
    /// passed.
    pub fn send(&self, delivery: &Delivery, patience: Duration) -> Sent {
        let begun = Instant::now();
        let signature = sign_sha256(&self.secret, delivery.body.as_bytes());
        let mut tries = 0;
        loop {
            let replica = self.next.fetch_add(1, Ordering::Relaxed) % self.replicas.len();
            tries += 1;
            let (status, text) = self.try_once(replica, delivery, &signature);
            let sent = Sent {
                id: delivery.id.clone(),
                status,
                tries,
                replica,
                duplicate: text.contains("\"duplicate\""),
            };
            if sent.acknowledged() || begun.elapsed() > patience {
                return sent;
            }
            self.failed.lock().expect("not poisoned")[replica] += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_once(&self, replica: usize, delivery: &Delivery, signature: &str) -> (u16, String) {
        let url = format!("{}/hooks/{}", self.replicas[replica], self.source);
        let answer = self
            .agent
            .post(&url)
            .header("x-github-event", &delivery.event)
            .header("x-github-delivery", &delivery.id)
            .header("x-hub-signature-256", signature)
            .header("content-type", "application/json")
            .send(delivery.body.as_bytes());
        match answer {
            Ok(mut answer) => {
                let status = answer.status().as_u16();
                let text = answer.body_mut().read_to_string().unwrap_or_default();
                (status, text)
            }
            Err(_) => (0, String::new()),
        }
    }
}

/// Sends `deliveries` from `threads` threads at about `per_second` in all, each through
/// [`RoundRobin::send`]; `done` counts the acknowledged ones as they come, so the caller
/// can act at a chosen point of the stream. Returns every delivery's fate, in order.
pub fn send_all(
    sender: Arc<RoundRobin>,
    deliveries: Vec<Delivery>,
    threads: usize,
    per_second: f64,
    done: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<Sent>> {
    std::thread::spawn(move || {
        let deliveries = Arc::new(deliveries);
        let slot = Arc::new(AtomicUsize::new(0));
        let begun = Instant::now();
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (sender, deliveries, slot, done) = (
                    sender.clone(),
                    deliveries.clone(),
                    slot.clone(),
                    done.clone(),
                );
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let i = slot.fetch_add(1, Ordering::Relaxed);
                        let Some(delivery) = deliveries.get(i) else {
                            return mine;
                        };
                        let due = begun + Duration::from_secs_f64(i as f64 / per_second);
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        let sent = sender.send(delivery, Duration::from_secs(90));
                        if sent.acknowledged() {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        mine.push((i, sent));
                    }
                })
            })
            .collect();
        let mut all: Vec<(usize, Sent)> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("a sender thread"))
            .collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, sent)| sent).collect()
    })
}
