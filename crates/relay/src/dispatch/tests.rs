//! What follows each kind of try, and workers against a real SQLite store and a real
//! receiver on 127.0.0.1.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use baton_config::{RelaySign, RelayTarget};
use baton_core::secret::SecretError;
use baton_core::{Secret, SecretRef, SecretResolver};
use baton_store::{
    Change, DueRelay, Intake, NewDelivery, RelayStatus, SqliteStore, Store, now_millis,
};
use indexmap::IndexMap;

use super::*;
use crate::circuit::CircuitState;

struct NoSecrets;

impl SecretResolver for NoSecrets {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, SecretError> {
        Err(SecretError::MissingEnv(format!("{reference:?}")))
    }
}

fn config(url: &str, schedule: &[u64], ordered: bool) -> RelayTarget {
    RelayTarget {
        name: "ci".to_owned(),
        url: url.to_owned(),
        sign: RelaySign::None,
        headers: Vec::new(),
        transform: None,
        timeout: Duration::from_secs(5),
        concurrency: if ordered { 1 } else { 4 },
        rate: None,
        schedule: schedule
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect(),
        ordered,
        allow_private: true,
    }
}

fn shared(url: &str, schedule: &[u64], ordered: bool) -> Arc<TargetShared> {
    let target = Target::new("mirror", &config(url, schedule, ordered), &NoSecrets).unwrap();
    Arc::new(TargetShared::new(target, url.to_owned()))
}

fn message(key: &str, tries: u32) -> DueRelay {
    DueRelay {
        key: key.to_owned(),
        relay: "mirror".to_owned(),
        target: "ci".to_owned(),
        tries,
        attempts: tries,
        due_at: 0,
        delivery: 1,
        source: "github".to_owned(),
        delivery_id: "d-1".to_owned(),
        event: "push".to_owned(),
        headers: "{}".to_owned(),
        body: "{}".to_owned(),
    }
}

fn sent(outcome: RelayOutcome, code: Option<u16>, retry_after: Option<u64>) -> Sent {
    Sent {
        outcome,
        code,
        body: None,
        error: None,
        started_at: 1_000,
        duration: Duration::from_millis(3),
        retry_after: retry_after.map(Duration::from_secs),
    }
}

#[test]
fn a_2xx_delivers_and_closes_the_circuit() {
    let t = shared("http://127.0.0.1:9/", &[1000], false);
    let now = Instant::now();
    for _ in 0..crate::circuit::OPEN_AFTER - 1 {
        t.decide(
            &message("m", 0),
            &sent(RelayOutcome::Failed, Some(500), None),
            now,
        );
    }
    let (next, disable) = t.decide(
        &message("m", 0),
        &sent(RelayOutcome::Delivered, Some(204), None),
        now,
    );
    assert_eq!(next, RelayNext::Delivered);
    assert!(!disable);
    assert_eq!(t.condition().0, CircuitState::Closed);
    // The count starts over: four more failures do not open it.
    for _ in 0..crate::circuit::OPEN_AFTER - 1 {
        t.decide(
            &message("m", 0),
            &sent(RelayOutcome::Timeout, None, None),
            now,
        );
    }
    assert_eq!(t.condition().0, CircuitState::Closed);
}

#[test]
fn a_failure_retries_on_the_schedule_until_the_last_try_then_dies() {
    let t = shared("http://127.0.0.1:9/", &[10_000, 60_000], false);
    let now = Instant::now();
    let before = now_millis();
    let (next, _) = t.decide(
        &message("m", 0),
        &sent(RelayOutcome::Failed, Some(500), None),
        now,
    );
    let RelayNext::Retry { due_at, tries } = next else {
        panic!("{next:?}");
    };
    assert_eq!(tries, 1);
    // The first delay, spread by at most 10%.
    assert!(
        (before + 9_000..=now_millis() + 11_000).contains(&due_at),
        "{due_at}"
    );
    let (next, _) = t.decide(
        &message("m", 1),
        &sent(RelayOutcome::Connection, None, None),
        now,
    );
    let RelayNext::Retry { due_at, tries } = next else {
        panic!("{next:?}");
    };
    assert_eq!(tries, 2);
    assert!(
        (before + 54_000..=now_millis() + 66_000).contains(&due_at),
        "{due_at}"
    );
    let mut last = sent(RelayOutcome::Timeout, None, None);
    last.error = Some("timed out after 5s".into());
    let (next, disable) = t.decide(&message("m", 2), &last, now);
    assert_eq!(
        next,
        RelayNext::Dead {
            reason: "no 2xx answer after 3 tries; the last: timed out after 5s".into()
        }
    );
    assert!(!disable);
}

#[test]
fn the_circuit_opens_after_failures_in_a_row() {
    let t = shared("http://127.0.0.1:9/", &[1000], false);
    let now = Instant::now();
    for i in 0..crate::circuit::OPEN_AFTER {
        assert_eq!(t.condition().0, CircuitState::Closed, "after {i}");
        t.decide(
            &message("m", 0),
            &sent(RelayOutcome::Refused, None, None),
            now,
        );
    }
    assert!(
        matches!(t.condition().0, CircuitState::Open { failures, .. } if failures == crate::circuit::OPEN_AFTER),
        "{:?}",
        t.condition()
    );
}

#[test]
fn a_410_kills_the_message_and_disables_the_target() {
    let t = shared("http://127.0.0.1:9/", &[1000], false);
    let (next, disable) = t.decide(
        &message("msg_a", 0),
        &sent(RelayOutcome::Gone, Some(410), None),
        Instant::now(),
    );
    assert!(disable);
    let RelayNext::Dead { reason } = next else {
        panic!("{next:?}");
    };
    assert!(
        reason.contains("410 Gone") && reason.contains("msg_a"),
        "{reason}"
    );
    let (_, disabled) = t.condition();
    assert_eq!(disabled.map(|d| d.reason), Some(reason));
}

#[test]
fn a_429_pauses_the_target_until_retry_after_and_retries_no_sooner() {
    let t = shared("http://127.0.0.1:9/", &[100], false);
    let now = Instant::now();
    let before = now_millis();
    let (next, _) = t.decide(
        &message("m", 0),
        &sent(RelayOutcome::RateLimited, Some(429), Some(30)),
        now,
    );
    let RelayNext::Retry { due_at, tries } = next else {
        panic!("{next:?}");
    };
    assert_eq!(tries, 1);
    assert!(due_at >= before + 30_000, "{due_at}");
    let paused = lock(&t.state).paused_until;
    assert_eq!(paused, Some(now + Duration::from_secs(30)));
    // A 429 is not a failure of the receiver.
    assert_eq!(t.condition().0, CircuitState::Closed);
}

/// A receiver that answers with the codes the test queues, then 200, and counts requests.
#[derive(Clone, Default)]
struct Receiver {
    answers: Arc<Mutex<Vec<u16>>>,
    seen: Arc<Mutex<Vec<String>>>,
    requests: Arc<AtomicU32>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap) -> StatusCode {
    r.requests.fetch_add(1, Ordering::SeqCst);
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let code = {
        let mut answers = lock(&r.answers);
        if answers.is_empty() {
            200
        } else {
            answers.remove(0)
        }
    };
    if code == 200 {
        lock(&r.seen).push(key);
    }
    StatusCode::from_u16(code).unwrap()
}

async fn start_receiver(receiver: Receiver) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}/hook")
}

async fn store_with_deliveries(dir: &tempfile::TempDir, n: usize) -> Arc<SqliteStore> {
    let url = format!("sqlite://{}", dir.path().join("baton.db").display());
    let store = Arc::new(SqliteStore::open(&url).await.unwrap());
    for i in 0..n {
        store
            .insert_delivery(NewDelivery {
                source: "github".into(),
                delivery_id: format!("d-{i}"),
                event: "push".into(),
                headers: "{}".into(),
                body: format!("{{\"n\":{i}}}"),
                received_at: now_millis(),
            })
            .await
            .unwrap();
    }
    store
}

async fn enqueue(store: &dyn Store, key: &str, delivery: i64, leased: bool) {
    let now = now_millis();
    store
        .commit(vec![Change::RelayEnqueue(baton_store::NewRelayMessage {
            key: key.into(),
            relay: "mirror".into(),
            target: "ci".into(),
            delivery,
            created_at: now,
            due_at: now,
            lease_until: leased.then_some(now + 600_000),
        })])
        .await
        .unwrap();
}

async fn status_of(store: &dyn Store, key: &str) -> RelayStatus {
    store
        .relays()
        .unwrap()
        .load_relay_message(key)
        .await
        .unwrap()
        .unwrap()
        .0
        .status
}

async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_worker_sends_what_is_handed_over_and_what_waits_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_deliveries(&dir, 2).await;
    let receiver = Receiver::default();
    let url = start_receiver(receiver.clone()).await;
    let t = shared(&url, &[50], false);
    // One written unleased (claimed from the store), one leased and handed over.
    enqueue(&*store, "msg_a", 1, false).await;
    enqueue(&*store, "msg_b", 2, true).await;
    assert!(t.reserve_room());
    let mut handed = message("msg_b", 0);
    handed.delivery = 2;
    t.hand_over(handed);
    let worker = tokio::spawn(work(t.clone(), store.clone(), Limits::default()));
    eventually("both delivered", || async {
        status_of(&*store, "msg_a").await == RelayStatus::Delivered
            && status_of(&*store, "msg_b").await == RelayStatus::Delivered
    })
    .await;
    assert_eq!(
        receiver.requests.load(Ordering::SeqCst),
        2,
        "each sent once"
    );
    worker.abort();
}

#[tokio::test]
async fn a_failed_try_comes_back_on_its_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_deliveries(&dir, 1).await;
    let receiver = Receiver::default();
    lock(&receiver.answers).extend([500, 503]);
    let url = start_receiver(receiver.clone()).await;
    let t = shared(&url, &[100, 100, 100], false);
    enqueue(&*store, "msg_a", 1, false).await;
    let worker = tokio::spawn(work(t.clone(), store.clone(), Limits::default()));
    eventually("delivered on the third try", || async {
        status_of(&*store, "msg_a").await == RelayStatus::Delivered
    })
    .await;
    let (_, attempts) = store
        .relays()
        .unwrap()
        .load_relay_message("msg_a")
        .await
        .unwrap()
        .unwrap();
    let codes: Vec<_> = attempts.iter().map(|a| a.code).collect();
    assert_eq!(codes, [Some(500), Some(503), Some(200)]);
    // The second try waited for the schedule's delay, spread by at most 10%.
    assert!(attempts[1].at - attempts[0].at >= 90, "{attempts:?}");
    worker.abort();
}

#[tokio::test]
async fn an_ordered_target_sends_the_next_only_after_the_one_before_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_deliveries(&dir, 3).await;
    let receiver = Receiver::default();
    lock(&receiver.answers).extend([500, 500]);
    let url = start_receiver(receiver.clone()).await;
    let t = shared(&url, &[100, 100, 100], true);
    for (key, delivery) in [("msg_a", 1), ("msg_b", 2), ("msg_c", 3)] {
        enqueue(&*store, key, delivery, false).await;
    }
    let worker = tokio::spawn(work(t.clone(), store.clone(), Limits::default()));
    eventually("all three delivered", || async {
        lock(&receiver.seen).len() == 3
    })
    .await;
    assert_eq!(*lock(&receiver.seen), ["msg_a", "msg_b", "msg_c"]);
    assert_eq!(
        receiver.requests.load(Ordering::SeqCst),
        5,
        "two failures, three 200s"
    );
    worker.abort();
}

#[tokio::test]
async fn a_410_disables_the_target_and_kills_what_comes_later_until_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_deliveries(&dir, 2).await;
    let receiver = Receiver::default();
    lock(&receiver.answers).push(410);
    let url = start_receiver(receiver.clone()).await;
    let t = shared(&url, &[100], false);
    enqueue(&*store, "msg_a", 1, false).await;
    let worker = tokio::spawn(work(t.clone(), store.clone(), Limits::default()));
    eventually("dead after the 410", || async {
        status_of(&*store, "msg_a").await == RelayStatus::Dead
    })
    .await;
    assert!(t.condition().1.is_some(), "disabled");
    enqueue(&*store, "msg_b", 2, false).await;
    t.wake_for_store();
    eventually("the later message dies unsent", || async {
        status_of(&*store, "msg_b").await == RelayStatus::Dead
    })
    .await;
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 1);
    let targets: HashMap<_, _> = store
        .relays()
        .unwrap()
        .relay_targets()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.target.clone(), s))
        .collect();
    assert!(targets["ci"].disabled_at.is_some());
    worker.abort();
}

/// Two stores on one fresh schema of the test PostgreSQL (`BATON_TEST_POSTGRES`, by default
/// the server on 127.0.0.1:5432): two replicas; and the statement that drops the schema, on
/// a connection of its own.
async fn postgres_replicas() -> (
    Arc<dyn Store>,
    Arc<dyn Store>,
    (tokio_postgres::Client, String),
) {
    let server = std::env::var("BATON_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let (client, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
        .await
        .expect("the test PostgreSQL");
    tokio::spawn(connection);
    let schema = format!("t_relay_{}", uuid::Uuid::now_v7().simple());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let separator = if server.contains('?') { '&' } else { '?' };
    let url = format!("{server}{separator}options=-csearch_path%3D{schema}");
    (
        baton_store::open(&url).await.unwrap(),
        baton_store::open(&url).await.unwrap(),
        (client, format!("DROP SCHEMA {schema} CASCADE")),
    )
}

/// Stores a new delivery `id`; answers its public id.
async fn stored_delivery(store: &dyn Store, id: &str) -> i64 {
    let stored = store
        .insert_delivery(NewDelivery {
            source: "github".into(),
            delivery_id: id.into(),
            event: "push".into(),
            headers: "{}".into(),
            body: "{}".into(),
            received_at: now_millis(),
        })
        .await
        .unwrap();
    let Intake::Stored(delivery) = stored else {
        panic!("a new delivery")
    };
    delivery
}

/// A receiver that counts requests and answers each 200 once the test lets it go.
async fn start_holding_receiver(requests: Arc<AtomicU32>, go: Arc<Notify>) -> String {
    async fn hold(State((requests, go)): State<(Arc<AtomicU32>, Arc<Notify>)>) -> StatusCode {
        requests.fetch_add(1, Ordering::SeqCst);
        go.notified().await;
        StatusCode::OK
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/hook", axum::routing::post(hold))
        .with_state((requests, go));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}/hook")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_of_a_message_another_replica_took_over_is_dropped_not_retried() {
    let (one, two, (admin, drop_schema)) = postgres_replicas().await;
    let requests = Arc::new(AtomicU32::new(0));
    let go = Arc::new(Notify::new());
    let url = start_holding_receiver(requests.clone(), go.clone()).await;
    let t = shared(&url, &[50], false);
    let mut handed = Vec::new();
    for (i, key) in ["msg_a", "msg_b"].into_iter().enumerate() {
        let delivery = stored_delivery(&*one, &format!("d-{i}")).await;
        enqueue(&*one, key, delivery, true).await;
        let mut message = message(key, 0);
        message.delivery = delivery;
        handed.push(message);
    }
    let worker = tokio::spawn(work(t.clone(), one.clone(), Limits::default()));
    assert!(t.reserve_room());
    t.hand_over(handed.remove(0));
    t.wake();
    eventually("msg_a sent", || async {
        requests.load(Ordering::SeqCst) == 1
    })
    .await;
    // Replica one stalls past its lease while msg_a is under way; two takes it over.
    let later = now_millis() + 700_000;
    let taken = two
        .relays()
        .unwrap()
        .claim_relays("mirror", "ci", later, 1, later + 600_000, false)
        .await
        .unwrap();
    assert_eq!(taken[0].key, "msg_a");
    go.notify_one();
    // One's record of the try is refused, at once and for good: retrying cannot help.
    let record = Change::RelayAttempt {
        attempt: RelayAttemptRecord {
            key: "msg_a".into(),
            attempt: 1,
            at: now_millis(),
            duration_ms: 1,
            outcome: RelayOutcome::Delivered,
            code: Some(200),
            body: None,
            error: None,
        },
        next: RelayNext::Delivered,
    };
    let settled = tokio::time::timeout(Duration::from_secs(5), settle(&*one, vec![record]))
        .await
        .expect("a fenced record is not retried");
    assert!(matches!(settled, Settled::Fenced(_)));
    // The worker goes on with the next message; msg_a is two's, untouched by one.
    assert!(t.reserve_room());
    t.hand_over(handed.remove(0));
    t.wake();
    go.notify_one();
    let status = |key: &'static str| {
        let one = one.clone();
        async move {
            one.relays()
                .unwrap()
                .load_relay_message(key)
                .await
                .unwrap()
                .unwrap()
                .0
        }
    };
    eventually("msg_b delivered", || async {
        status("msg_b").await.status == RelayStatus::Delivered
    })
    .await;
    let a = status("msg_a").await;
    assert_eq!((a.status, a.attempts), (RelayStatus::Pending, 0));
    assert_eq!(
        requests.load(Ordering::SeqCst),
        2,
        "msg_a was not sent again"
    );
    worker.abort();
    let _ = worker.await;
    drop((one, two));
    admin.batch_execute(&drop_schema).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_another_replica_gives_back_is_sent_without_waiting_for_a_look() {
    let (one, two, (admin, drop_schema)) = postgres_replicas().await;
    let receiver = Receiver::default();
    let url = start_receiver(receiver.clone()).await;
    let delivery = stored_delivery(&*one, "d-0").await;
    enqueue(&*one, "msg_a", delivery, false).await;
    let now = now_millis();
    let held = one
        .relays()
        .unwrap()
        .claim_relays("mirror", "ci", now, 1, now + 60_000, false)
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    // Replica two's workers start while one holds the message: nothing for them yet.
    let mut relays = IndexMap::new();
    relays.insert(
        "mirror".to_owned(),
        baton_config::RelayConfig {
            from: vec!["github".into()],
            condition: None,
            to: vec![config(&url, &[50], false)],
        },
    );
    let two_relays =
        Arc::new(crate::Relays::new(&relays, &NoSecrets, two.clone(), Limits::default()).unwrap());
    let tasks = two_relays.start().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 0);
    // One stops and gives it back, due now: two sends it at once, not at its next look.
    one.commit(vec![Change::RelayPostpone {
        key: "msg_a".into(),
        due_at: now_millis(),
    }])
    .await
    .unwrap();
    eventually("msg_a delivered by two", || async {
        status_of(&*two, "msg_a").await == RelayStatus::Delivered
    })
    .await;
    drop(tasks);
    drop((one, two, two_relays));
    admin.batch_execute(&drop_schema).await.unwrap();
}
