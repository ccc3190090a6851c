//! PostgreSQL-specific tests: replicas on one schema, claims and fencing, wakes, migrations
//! and a database that goes away.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::contract::{delivery, header, payload, postgres_schema, postgres_url};
use crate::*;

/// Opens a store on `options` with claims of `lease`.
async fn replica(options: &StoreOptions, lease: Duration) -> PostgresStore {
    let options = StoreOptions {
        lease: Some(lease),
        ..options.clone()
    };
    PostgresStore::open(&options).await.unwrap()
}

/// A run with an advance task due at `due`.
fn run_with_task(id: &str, due: Millis) -> Vec<Change> {
    vec![
        Change::InsertRun(header(id), payload()),
        Change::Schedule(TaskSpec {
            run_id: id.into(),
            stage_id: String::new(),
            kind: TaskKind::Advance,
            attempt: 0,
            due_at: due,
            claim_until: None,
        }),
    ]
}

#[tokio::test]
async fn a_fenced_matching_pass_lets_go_of_what_was_taken_and_the_next_marks_the_rest() {
    let (options, _schema) = postgres_schema().await;
    let lease = Duration::from_millis(300);
    let slow = replica(&options, lease).await;
    let other = replica(&options, Duration::from_secs(30)).await;
    let stored = |intake| match intake {
        Intake::Stored(id) => id,
        Intake::Duplicate(_) => panic!("stored"),
    };
    let first = stored(slow.insert_delivery(delivery("d0")).await.unwrap());
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let later = [
        stored(slow.insert_delivery(delivery("d1")).await.unwrap()),
        stored(slow.insert_delivery(delivery("d2")).await.unwrap()),
    ];
    // The other replica takes over only the one whose claim ended.
    let taken = other.pending_deliveries(10).await.unwrap();
    assert_eq!(taken.iter().map(|d| d.id).collect::<Vec<_>>(), [first]);
    let matched = || {
        slow.commit(vec![Change::DeliveriesMatched {
            through: later[1],
            now: 5,
        }])
    };
    assert!(matched().await.unwrap_err().is_fenced());
    // Fenced once: the next pass covers what this replica still holds, and marks it.
    matched().await.unwrap();
    for id in later {
        let d = slow.load_delivery(id).await.unwrap().unwrap();
        assert_eq!(d.status, "processed", "{id}");
    }
    let d = slow.load_delivery(first).await.unwrap().unwrap();
    assert_eq!(d.status, "received", "the other replica's to match");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_claim_the_same_task_or_delivery() {
    let (options, _schema) = postgres_schema().await;
    let a = Arc::new(replica(&options, Duration::from_secs(30)).await);
    let b = Arc::new(replica(&options, Duration::from_secs(30)).await);
    for i in 0..60 {
        a.commit(run_with_task(&format!("r{i}"), 1)).await.unwrap();
    }
    let claim = |store: Arc<PostgresStore>| async move {
        let mut got = Vec::new();
        loop {
            let tasks = store
                .claim_due(now_millis(), 4, now_millis() + 60_000)
                .await
                .unwrap();
            if tasks.is_empty() {
                return got;
            }
            got.extend(tasks.into_iter().map(|t| (t.id, t.lease)));
        }
    };
    let (from_a, from_b) = tokio::join!(claim(a.clone()), claim(b.clone()));
    let ids: HashSet<i64> = from_a.iter().chain(&from_b).map(|(id, _)| *id).collect();
    assert_eq!(from_a.len() + from_b.len(), 60, "every task claimed once");
    assert_eq!(ids.len(), 60);
    let tokens: HashSet<i64> = from_a.iter().chain(&from_b).map(|(_, t)| *t).collect();
    assert_eq!(tokens.len(), 60, "every claim has its own token");

    // Deliveries stored by a replica whose claims end at once are taken over by the others,
    // each by one of them, as replays (they were never on those replicas' feeds).
    let c = replica(&options, Duration::from_millis(1)).await;
    let mut stored = HashSet::new();
    for i in 0..40 {
        let Intake::Stored(id) = c.insert_delivery(delivery(&format!("d{i}"))).await.unwrap()
        else {
            panic!("stored")
        };
        stored.insert(id);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (from_a, from_b) = tokio::join!(a.pending_deliveries(100), b.pending_deliveries(100));
    let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
    assert!(from_a.iter().chain(&from_b).all(|d| d.replay));
    let taken: HashSet<i64> = from_a.iter().chain(&from_b).map(|d| d.id).collect();
    assert_eq!(from_a.len() + from_b.len(), 40);
    assert_eq!(taken, stored);
    // Read again, what a replica took over is still its own, and still a replay.
    let again = a.pending_deliveries(100).await.unwrap();
    assert_eq!(
        again.iter().map(|d| d.id).collect::<HashSet<_>>(),
        from_a.iter().map(|d| d.id).collect::<HashSet<_>>()
    );
    assert!(again.iter().all(|d| d.replay));
    // The replica that stored them has lost them: its matching is fenced.
    let first = *stored.iter().min().unwrap();
    let e = c
        .commit(vec![Change::DeliveriesMatched {
            through: first,
            now: 1,
        }])
        .await
        .unwrap_err();
    assert!(e.is_fenced(), "{e:?}");
    let e = c
        .commit(vec![Change::DeliveryProcessed {
            seq: first,
            runs: Vec::new(),
            message: None,
            now: 1,
        }])
        .await
        .unwrap_err();
    assert!(e.is_fenced(), "{e:?}");
}

#[tokio::test]
async fn a_claim_taken_over_fences_its_first_holder() {
    let (options, _schema) = postgres_schema().await;
    let a = replica(&options, Duration::from_secs(30)).await;
    let b = replica(&options, Duration::from_secs(30)).await;
    a.commit(run_with_task("r1", 1)).await.unwrap();
    let now = now_millis();
    let [mine] = &a.claim_due(now, 10, now + 50).await.unwrap()[..] else {
        panic!("one task")
    };
    assert!(a.holds(mine).await.unwrap());
    // Run affinity: while the claim lives, the run's other work waits.
    a.commit(vec![Change::Schedule(TaskSpec {
        run_id: "r1".into(),
        stage_id: "build".into(),
        kind: TaskKind::Poll,
        attempt: 1,
        due_at: 1,
        claim_until: None,
    })])
    .await
    .unwrap();
    assert!(b.claim_due(now, 10, now + 60_000).await.unwrap().is_empty());
    // Its own lease still counts after it expired, while nobody took it over.
    let fence = |lease: &Task, version| Change::Fence {
        run_id: "r1".into(),
        version,
        lease: Some(TaskLease {
            id: lease.id,
            token: lease.lease,
        }),
    };
    tokio::time::sleep(Duration::from_millis(60)).await;
    a.commit(vec![fence(mine, 0)]).await.unwrap();
    // Taken over: the first holder's next commit writes nothing.
    let later = now_millis();
    let theirs = b.claim_due(later, 10, later + 60_000).await.unwrap();
    let theirs = theirs.iter().find(|t| t.id == mine.id).expect("taken over");
    assert_ne!(theirs.lease, mine.lease);
    assert!(!a.holds(mine).await.unwrap());
    let e = a
        .commit(vec![
            fence(mine, 1),
            Change::PutRun(RunHeader {
                message: Some("stale".into()),
                ..header("r1")
            }),
        ])
        .await
        .unwrap_err();
    assert!(e.is_fenced(), "{e:?}");
    let snapshot = a.load_run("r1").await.unwrap().unwrap();
    assert_eq!((snapshot.version, snapshot.header.message), (1, None));
    // The new holder's fence passes; one made from a stale version does not.
    b.commit(vec![fence(theirs, 1)]).await.unwrap();
    let e = b.commit(vec![fence(theirs, 1)]).await.unwrap_err();
    assert!(e.is_fenced(), "{e:?}");
    assert_eq!(a.load_run("r1").await.unwrap().unwrap().version, 2);
}

#[tokio::test]
async fn renewing_keeps_claims_and_names_the_lost_ones() {
    let (options, _schema) = postgres_schema().await;
    let a = replica(&options, Duration::from_secs(30)).await;
    let b = replica(&options, Duration::from_secs(30)).await;
    a.commit(run_with_task("r1", 1)).await.unwrap();
    a.commit(run_with_task("r2", 1)).await.unwrap();
    let now = now_millis();
    let claimed = a.claim_due(now, 10, now + 100).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let leases: Vec<TaskLease> = claimed
        .iter()
        .map(|t| TaskLease {
            id: t.id,
            token: t.lease,
        })
        .collect();
    // The first is renewed in time; the second is left to expire and is taken over.
    assert!(
        a.renew(&leases[..1], now + 60_000)
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    let later = now_millis();
    let taken = b.claim_due(later, 10, later + 60_000).await.unwrap();
    assert_eq!(
        taken.iter().map(|t| t.id).collect::<Vec<_>>(),
        [claimed[1].id]
    );
    assert_eq!(
        a.renew(&leases, later + 60_000).await.unwrap(),
        [claimed[1].id]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_wakes_the_other_replicas() {
    let (options, _schema) = postgres_schema().await;
    let a = replica(&options, Duration::from_secs(30)).await;
    let b = replica(&options, Duration::from_secs(30)).await;
    let mut tasks = b.wakes(Work::Tasks).unwrap();
    let mut deliveries = b.wakes(Work::Deliveries).unwrap();
    // The LISTEN connection starts beside open: give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tasks.borrow_and_update();
    deliveries.borrow_and_update();
    a.commit(run_with_task("r1", now_millis())).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), tasks.changed())
        .await
        .expect("woken for tasks")
        .unwrap();
    let Intake::Stored(id) = a.insert_delivery(delivery("d1")).await.unwrap() else {
        panic!("stored")
    };
    assert!(
        !deliveries.has_changed().unwrap(),
        "a stored delivery is not handed over"
    );
    a.commit(vec![Change::ReplayDelivery { seq: id }])
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), deliveries.changed())
        .await
        .expect("woken for a replay")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_schema_is_migrated_once_while_the_others_wait() {
    let (options, schema) = postgres_schema().await;
    let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut script = format!(
        "SET search_path = {schema}; CREATE TABLE baton_schema (version BIGINT NOT NULL); \
         INSERT INTO baton_schema VALUES (7);"
    );
    for sql in &super::schema::MIGRATIONS[..7] {
        script.push_str(sql);
    }
    client.batch_execute(&script).await.unwrap();
    client
        .batch_execute(&format!(
            "INSERT INTO {schema}.runs (id, workflow, status, spec, event, trigger_info, created_at)
             VALUES ('old', 'wf', 'queued', '{{}}', '{{}}',
                     '{{\"source\": \"manual\", \"event\": \"manual\"}}', 1)"
        ))
        .await
        .unwrap();
    // 0008 adds columns: a second run of it would fail, so three opens that all succeed
    // ran it once.
    let (x, y, z) = tokio::join!(
        PostgresStore::open(&options),
        PostgresStore::open(&options),
        PostgresStore::open(&options)
    );
    let (x, _y, _z) = (x.unwrap(), y.unwrap(), z.unwrap());
    let version: i64 = client
        .query_one(&format!("SELECT version FROM {schema}.baton_schema"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, super::schema::MIGRATIONS.len() as i64);
    assert_eq!(x.load_run("old").await.unwrap().unwrap().version, 0);
    // A schema from a newer build is refused.
    client
        .batch_execute(&format!("UPDATE {schema}.baton_schema SET version = 99"))
        .await
        .unwrap();
    let e = PostgresStore::open(&options).await.unwrap_err();
    assert!(
        matches!(e, StoreError::NewerSchema { found: 99, .. }),
        "{e:?}"
    );
}

/// A TCP proxy to the test server that the test can cut and restore on the same port.
struct Proxy {
    port: u16,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    async fn start(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let kept = Arc::new(std::sync::Mutex::new(Vec::<JoinHandle<()>>::new()));
        let accept = tokio::spawn(async move {
            let _kept = Cut(kept.clone());
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut upstream).await;
                    }
                });
                kept.lock().unwrap().push(conn);
            }
        });
        Self {
            port,
            tasks: vec![accept],
        }
    }

    /// Closes the port and every connection through it.
    fn cut(self) -> u16 {
        for task in self.tasks {
            task.abort();
        }
        self.port
    }
}

/// Aborts the proxy's connections when its accept loop ends.
struct Cut(Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>);

impl Drop for Cut {
    fn drop(&mut self) {
        for conn in self.0.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_is_unavailable_until_it_returns() {
    let (options, _schema) = postgres_schema().await;
    // Schema created and migrated directly; the replica under test goes through the proxy.
    drop(PostgresStore::open(&options).await.unwrap());
    let proxy = Proxy::start(0).await;
    let through = StoreOptions {
        url: options
            .url
            .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port)),
        ..options.clone()
    };
    let store = PostgresStore::open(&through).await.unwrap();
    store.insert_delivery(delivery("before")).await.unwrap();
    store.writable().await.unwrap();
    let port = proxy.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let e = store.insert_delivery(delivery("during")).await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
    assert!(e.cannot_write());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    // Readiness follows within a couple of seconds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = store.writable().await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
    // Back on the same port: it works again by itself.
    let _proxy = Proxy::start(port).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.writable().await.is_err() {
        assert!(Instant::now() < deadline, "writable again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(matches!(
        store.insert_delivery(delivery("after")).await.unwrap(),
        Intake::Stored(_)
    ));
}

#[tokio::test]
async fn a_refused_connection_is_unavailable_at_once_and_names_no_password() {
    // A port nobody listens on: bound, then released.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for options in [
        StoreOptions {
            url: format!("postgres://baton:url-s3cret@127.0.0.1:{port}/test?sslmode=disable"),
            ..StoreOptions::default()
        },
        StoreOptions {
            url: format!("postgres://baton@127.0.0.1:{port}/test"),
            password: Some("option-s3cret".into()),
            ..StoreOptions::default()
        },
    ] {
        let started = Instant::now();
        let e = PostgresStore::open(&options).await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(6));
        let shown = format!("{e} {e:?} {options:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
    let e = PostgresStore::open(&StoreOptions {
        url: "postgres://baton:pw-s3cret@127.0.0.1/test?sslmode=sometimes".into(),
        ..StoreOptions::default()
    })
    .await
    .unwrap_err();
    assert!(
        matches!(e, StoreError::Url(_)) && !e.to_string().contains("s3cret"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_are_replaced_and_the_listener_comes_back() {
    let (options, schema) = postgres_schema().await;
    let options = StoreOptions {
        url: format!("{}&application_name={schema}", options.url),
        ..options
    };
    let store = PostgresStore::open(&options).await.unwrap();
    let mut wakes = store.wakes(Work::Tasks).unwrap();
    store.insert_delivery(delivery("before")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    wakes.borrow_and_update();
    let (killer, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let killed: i64 = killer
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        killed >= 2,
        "the pool's connection and the listener's: {killed}"
    );
    // A call may meet a connection that died under it (unavailable, nothing written);
    // the next gets a new one.
    let mut stored = false;
    for _ in 0..3 {
        match store.insert_delivery(delivery("after")).await {
            Ok(_) => {
                stored = true;
                break;
            }
            Err(e) => assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}"),
        }
    }
    assert!(stored);
    // The listener reconnects, and wakes everyone for what it may have missed.
    tokio::time::timeout(Duration::from_secs(5), wakes.changed())
        .await
        .expect("woken after reconnecting")
        .unwrap();
}

/// The test server's certificate (Debian's self-signed one, for `localhost`).
const SERVER_CERT: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

#[tokio::test]
async fn tls_checks_what_sslmode_asks_for() {
    if !std::path::Path::new(SERVER_CERT).exists() {
        panic!("{SERVER_CERT} is missing: the test server's TLS certificate");
    }
    let (options, _schema) = postgres_schema().await;
    let with = |host: &str, query: &str| StoreOptions {
        url: format!("{}&{query}", options.url.replace("127.0.0.1", host)),
        ..options.clone()
    };
    // Encrypted, whoever answers; then the chain; then the chain and the name.
    for (host, query) in [
        ("127.0.0.1", "sslmode=require".to_owned()),
        (
            "127.0.0.1",
            format!("sslmode=verify-ca&sslrootcert={SERVER_CERT}"),
        ),
        (
            "localhost",
            format!("sslmode=verify-full&sslrootcert={SERVER_CERT}"),
        ),
    ] {
        let store = PostgresStore::open(&with(host, &query))
            .await
            .unwrap_or_else(|e| panic!("{query}: {e:?}"));
        let ssl: bool = store
            .client()
            .await
            .unwrap()
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(ssl, "{query}");
    }
    // The wrong name, or a chain to no trusted root (one unrelated root), is refused, and
    // not as an outage.
    let bundle = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap();
    let end = "-----END CERTIFICATE-----";
    let other_root = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        other_root.path(),
        &bundle[..bundle.find(end).unwrap() + end.len()],
    )
    .unwrap();
    for (host, query) in [
        (
            "127.0.0.1",
            format!("sslmode=verify-full&sslrootcert={SERVER_CERT}"),
        ),
        (
            "localhost",
            format!(
                "sslmode=verify-ca&sslrootcert={}",
                other_root.path().display()
            ),
        ),
    ] {
        let e = PostgresStore::open(&with(host, &query)).await.unwrap_err();
        assert!(matches!(e, StoreError::Postgres(_)), "{query}: {e:?}");
    }
}

/// Inserts `names` from as many concurrent tasks, answering each name's intakes.
async fn insert_at_once(store: &Arc<PostgresStore>, names: Vec<String>) -> Vec<(String, Intake)> {
    let calls: Vec<_> = names
        .into_iter()
        .map(|name| {
            let store = store.clone();
            tokio::spawn(async move {
                let intake = store.insert_delivery(delivery(&name)).await.unwrap();
                (name, intake)
            })
        })
        .collect();
    let mut got = Vec::new();
    for call in calls {
        got.push(call.await.unwrap());
    }
    got
}

/// The id each name was stored under, checking that it was stored once and that every
/// other answer for it names that id.
fn stored_once(
    answers: &[(String, Intake)],
    before: &HashMap<String, i64>,
) -> HashMap<String, i64> {
    let mut ids = before.clone();
    for (name, intake) in answers {
        if let Intake::Stored(id) = intake {
            assert!(
                ids.insert(name.clone(), *id).is_none(),
                "{name} stored twice"
            );
        }
    }
    for (name, intake) in answers {
        assert!(
            matches!(intake, Intake::Stored(id) | Intake::Duplicate(id) if ids.get(name) == Some(id)),
            "{name}: {intake:?} against {:?}",
            ids.get(name)
        );
    }
    ids
}

async fn rows(store: &PostgresStore) -> i64 {
    store
        .client()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM deliveries", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_in_one_group_and_across_groups_name_the_stored_delivery() {
    let (options, _schema) = postgres_schema().await;
    let store = Arc::new(replica(&options, Duration::from_secs(30)).await);
    let mut feed = store.delivery_feed().unwrap();
    let Intake::Stored(k0) = store.insert_delivery(delivery("k0")).await.unwrap() else {
        panic!("stored")
    };
    let before = HashMap::from([("k0".to_owned(), k0)]);
    // 300 callers at once over 20 names: the groups the writers gather hold several copies
    // of a name, and repeat names that earlier groups stored.
    let answers = insert_at_once(&store, (0..300).map(|i| format!("k{}", i % 20)).collect()).await;
    let ids = stored_once(&answers, &before);
    assert_eq!(ids.len(), 20);
    assert_eq!(rows(&store).await, 20);
    // The feed has each stored delivery once, in id order.
    let mut got = Vec::new();
    feed.try_recv_many(&mut got, 100);
    let mut want: Vec<i64> = ids.values().copied().collect();
    want.sort_unstable();
    assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), want);
    assert!(!feed.take_lagged());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_storing_the_same_deliveries_at_once_store_each_once() {
    let (options, _schema) = postgres_schema().await;
    let a = Arc::new(replica(&options, Duration::from_secs(30)).await);
    let b = Arc::new(replica(&options, Duration::from_secs(30)).await);
    // In opposite orders, so their groups meet each other's rows both ways round.
    let names: Vec<String> = (0..200).map(|i| format!("r{i}")).collect();
    let reversed = names.iter().rev().cloned().collect();
    let (from_a, from_b) = tokio::join!(insert_at_once(&a, names), insert_at_once(&b, reversed));
    let all: Vec<_> = from_a.into_iter().chain(from_b).collect();
    assert_eq!(stored_once(&all, &HashMap::new()).len(), 200);
    assert_eq!(rows(&a).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_the_database_refuses_fails_only_its_caller() {
    let (options, _schema) = postgres_schema().await;
    let store = Arc::new(replica(&options, Duration::from_secs(30)).await);
    // PostgreSQL text holds no NUL: these are refused, whichever group they land in.
    let refused = |i: usize| i % 25 == 7;
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            let mut d = delivery(&format!("n{i}"));
            if refused(i) {
                d.body.push('\0');
            }
            tokio::spawn(async move { store.insert_delivery(d).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let result = call.await.unwrap();
        if refused(i) {
            assert!(
                matches!(result, Err(StoreError::Postgres(_))),
                "{i}: {result:?}"
            );
        } else {
            assert!(matches!(result, Ok(Intake::Stored(_))), "{i}: {result:?}");
        }
    }
    assert_eq!(rows(&store).await, 192);
    // A batch is stored whole or not at all.
    let mut batch: Vec<_> = ["m1", "m2", "m3"].into_iter().map(delivery).collect();
    batch[1].event.push('\0');
    assert!(store.insert_deliveries(batch).await.is_err());
    assert_eq!(rows(&store).await, 192);
}

/// `insert_delivery` from 128 concurrent tasks, as the intake calls it at 128 connections:
/// `cargo test -p baton-store --release -- --ignored --nocapture insert_throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn insert_throughput() {
    let (options, _schema) = postgres_schema().await;
    let store = Arc::new(replica(&options, Duration::from_secs(30)).await);
    let per_task = 200;
    let started = Instant::now();
    let tasks: Vec<_> = (0..128)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let begun = Instant::now();
                    store
                        .insert_delivery(delivery(&format!("{t}-{i}")))
                        .await
                        .unwrap();
                    latencies.push(begun.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    println!(
        "{} deliveries in {elapsed:?}: {:.0}/s, p50 {:?}, p99 {:?}",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100]
    );
}
