use super::schema::MIGRATIONS;
use super::*;
use baton_core::context::TriggerInfo;
use rusqlite::params;
use serde_json::json;

pub(super) async fn store(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
        .await
        .unwrap()
}

fn header(id: &str) -> RunHeader {
    RunHeader {
        id: id.into(),
        workflow: "wf".into(),
        status: RunStatus::Queued,
        cancel_requested: false,
        message: None,
        created_at: 1,
        started_at: None,
        finished_at: None,
    }
}

fn payload() -> RunPayload {
    RunPayload {
        spec: json!({"name": "wf"}),
        event: json!({"ref": "main"}),
        trigger: TriggerInfo {
            source: "manual".into(),
            event: "manual".into(),
            delivery_id: None,
        },
    }
}

fn task(run: &str, stage: &str, kind: TaskKind, due: Millis, claim: Option<Millis>) -> Change {
    Change::Schedule(TaskSpec {
        run_id: run.into(),
        stage_id: stage.into(),
        kind,
        attempt: 1,
        due_at: due,
        claim_until: claim,
    })
}

#[tokio::test]
async fn runs_stages_and_attempts_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let mut stage = StageRecord::pending("r1", "build", 0);
    store
        .commit(vec![
            Change::InsertRun(header("r1"), payload()),
            Change::PutStage(stage.clone()),
        ])
        .await
        .unwrap();
    stage.status = StageStatus::Running;
    stage.attempt = 1;
    stage.phase = Some(Phase::Started);
    stage.external = Some(ExternalRef {
        id: "42".into(),
        url: Some("http://x/42".into()),
        data: json!({"q": 1}),
    });
    stage.input = Some(json!({"a": [1, 2]}));
    let attempt = AttemptRecord {
        run_id: "r1".into(),
        stage_id: "build".into(),
        attempt: 1,
        status: StageStatus::Running,
        reason: None,
        message: None,
        external: stage.external.clone(),
        started_at: Some(5),
        finished_at: None,
    };
    let mut h = header("r1");
    h.status = RunStatus::Running;
    store
        .commit(vec![
            Change::PutStage(stage.clone()),
            Change::PutAttempt(attempt.clone()),
            Change::PutRun(h.clone()),
        ])
        .await
        .unwrap();
    let snap = store.load_run("r1").await.unwrap().unwrap();
    assert_eq!(snap.header, h);
    assert_eq!(snap.payload, payload());
    assert_eq!(snap.stages, vec![stage]);
    assert_eq!(snap.attempts, vec![attempt]);
    assert_eq!(
        store.unfinished_runs().await.unwrap(),
        vec!["r1".to_string()]
    );
    assert!(store.load_run("nope").await.unwrap().is_none());
}

#[tokio::test]
async fn tasks_are_claimed_once_and_versions_protect_reschedules() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    store
        .commit(vec![Change::InsertRun(header("r1"), payload())])
        .await
        .unwrap();
    store
        .commit(vec![
            task("r1", "a", TaskKind::Poll, 10, None),
            task("r1", "b", TaskKind::Poll, 50, None),
        ])
        .await
        .unwrap();
    assert_eq!(store.next_due().await.unwrap(), Some(10));
    let claimed = store.claim_due(20, 10, 1000).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].stage_id, "a");
    // Leased: not claimable again until the lease ends.
    assert!(store.claim_due(30, 10, 1000).await.unwrap().is_empty());
    // Rescheduled while it ran: the old version's Done must not remove the new one.
    store
        .commit(vec![task("r1", "a", TaskKind::Poll, 25, None)])
        .await
        .unwrap();
    store
        .commit(vec![Change::Done {
            id: claimed[0].id,
            version: claimed[0].version,
        }])
        .await
        .unwrap();
    let again = store.claim_due(60, 10, 2000).await.unwrap();
    assert_eq!(
        again
            .iter()
            .map(|t| t.stage_id.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    store.release_leases().await.unwrap();
    assert_eq!(store.claim_due(60, 10, 2000).await.unwrap().len(), 2);
}

#[tokio::test]
async fn claimed_schedules_come_back_and_a_failed_batch_leaves_others() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(store(&dir).await);
    let tasks = store
        .commit(vec![
            Change::InsertRun(header("r1"), payload()),
            task("r1", "", TaskKind::Advance, 1, Some(99)),
        ])
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].kind, TaskKind::Advance);
    // A duplicate run id fails its own batch only.
    let (bad, good) = tokio::join!(
        store.commit(vec![Change::InsertRun(header("r1"), payload())]),
        store.commit(vec![Change::InsertRun(header("r2"), payload())])
    );
    assert!(bad.is_err());
    good.unwrap();
    assert!(store.load_run("r2").await.unwrap().is_some());
}

#[tokio::test]
async fn deliveries_are_stored_once_and_processed() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let Intake::Stored(first) = store.insert_delivery(delivery("d1")).await.unwrap() else {
        panic!("stored")
    };
    assert_eq!(
        store.insert_delivery(delivery("d1")).await.unwrap(),
        Intake::Duplicate(first)
    );
    let Intake::Stored(second) = store.insert_delivery(delivery("d2")).await.unwrap() else {
        panic!("stored")
    };
    let Intake::Stored(third) = store.insert_delivery(delivery("d3")).await.unwrap() else {
        panic!("stored")
    };
    let pending = store.pending_deliveries(10).await.unwrap();
    assert_eq!(
        pending.iter().map(|d| d.id).collect::<Vec<_>>(),
        [first, second, third]
    );
    assert_eq!(pending[0].body, r#"{"ref": "main"}"#);
    assert_eq!(pending[0].headers, r#"{"x-github-event":"push"}"#);
    assert!(!pending[0].replay);
    // A pass over the first two: the first started a run, the second nothing.
    store
        .commit(vec![
            Change::DeliveryProcessed {
                seq: first,
                runs: vec!["r1".into()],
                message: None,
                now: 9,
            },
            Change::DeliveriesMatched {
                through: second,
                now: 9,
            },
        ])
        .await
        .unwrap();
    let ids = |p: Vec<PendingDelivery>| p.iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(ids(store.pending_deliveries(10).await.unwrap()), [third]);
    let seen = store.load_delivery(second).await.unwrap().unwrap();
    assert_eq!(
        (seen.status.as_str(), seen.processed_at, seen.runs.len()),
        ("processed", Some(9), 0)
    );
    assert_eq!(seen.headers, json!({"x-github-event": "push"}));
    let waiting = store.load_delivery(third).await.unwrap().unwrap();
    assert_eq!(
        (waiting.status.as_str(), waiting.processed_at),
        ("received", None)
    );
    // The mark never moves back.
    store
        .commit(vec![Change::DeliveriesMatched {
            through: first,
            now: 10,
        }])
        .await
        .unwrap();
    assert_eq!(ids(store.pending_deliveries(10).await.unwrap()), [third]);
    // A replay comes first, and says so; its runs add to the earlier ones.
    store
        .commit(vec![Change::ReplayDelivery { seq: first }])
        .await
        .unwrap();
    let pending = store.pending_deliveries(10).await.unwrap();
    assert_eq!(ids(pending.clone()), [first, third]);
    assert!(pending[0].replay && !pending[1].replay);
    assert_eq!(pending[0].headers, r#"{"x-github-event":"push"}"#);
    assert_eq!(
        store.load_delivery(first).await.unwrap().unwrap().status,
        "received"
    );
    assert_eq!(ids(store.pending_deliveries(1).await.unwrap()), [first]);
    store
        .commit(vec![Change::DeliveryProcessed {
            seq: first,
            runs: vec!["r2".into()],
            message: None,
            now: 11,
        }])
        .await
        .unwrap();
    let d = store.load_delivery(first).await.unwrap().unwrap();
    assert_eq!(
        (d.status.as_str(), d.runs.clone(), d.processed_at),
        (
            "processed",
            vec!["r1".to_string(), "r2".to_string()],
            Some(11)
        )
    );
    assert_eq!(ids(store.pending_deliveries(10).await.unwrap()), [third]);
    let listed = store
        .list_deliveries(&DeliveryFilter {
            source: Some("github".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|d| d.id).collect::<Vec<_>>(),
        [third, second, first]
    );
}

fn delivery(id: &str) -> NewDelivery {
    NewDelivery {
        source: "github".into(),
        delivery_id: id.into(),
        event: "push".into(),
        headers: r#"{"x-github-event":"push"}"#.into(),
        body: r#"{"ref": "main"}"#.into(),
        received_at: 5,
    }
}

/// Under load that never pauses, a passive checkpoint never catches up, and without a
/// restart the WAL grew by ~85 MB/s in the benchmark. It must stay near its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_starts_over_while_deliveries_keep_arriving() {
    let dir = tempfile::tempdir().unwrap();
    let limits = WalLimits {
        interval: Duration::from_millis(5),
        restart_frames: 64,
        restart_tail: 16,
    };
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = Arc::new(SqliteStore::open_with(&url, limits).await.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..16)
        .map(|task| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Random-looking ids: each lands on its own index page, as GUIDs do.
                    let id = format!(
                        "{:016x}-{task}",
                        (n + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    );
                    store.insert_delivery(delivery(&id)).await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let wal = dir.path().join("t.db-wal");
    let mut largest = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for s in senders {
        sent += s.await.unwrap();
    }
    // A frame is a 4 KiB page and a 24-byte header; allow the limit several times over
    // for what arrives between two checks, and the tail.
    let frames = largest / (4096 + 24);
    assert!(sent > 2_000, "only {sent} deliveries were sent");
    assert!(
        frames < 1_000,
        "the WAL reached {frames} frames for {sent} deliveries (limit 64)"
    );
}

#[tokio::test]
async fn the_feed_carries_stored_deliveries_in_order_once_taken() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    // Nothing is kept for a feed nobody took.
    store.insert_delivery(delivery("before")).await.unwrap();
    let mut feed = store.delivery_feed().expect("the first feed");
    assert!(store.delivery_feed().is_none(), "one feed per store");
    let mut ids = Vec::new();
    for name in ["a", "b", "a", "c"] {
        if let Intake::Stored(id) = store.insert_delivery(delivery(name)).await.unwrap() {
            ids.push(id);
        }
    }
    let mut got = Vec::new();
    feed.try_recv_many(&mut got, 100);
    assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), ids);
    assert_eq!(
        got.iter()
            .map(|d| d.delivery_id.as_str())
            .collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert_eq!(got[0].body, r#"{"ref": "main"}"#);
    assert_eq!(got[0].headers, r#"{"x-github-event":"push"}"#);
    assert!(!feed.take_lagged());
}

#[tokio::test]
async fn a_batch_of_deliveries_is_stored_together_with_duplicates_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let Intake::Stored(seen) = store.insert_delivery(delivery("seen")).await.unwrap() else {
        panic!("stored")
    };
    let mut feed = store.delivery_feed().expect("the feed");
    assert_eq!(store.insert_deliveries(Vec::new()).await.unwrap(), []);
    let intakes = store
        .insert_deliveries(
            ["e1", "seen", "e2", "e1"]
                .into_iter()
                .map(delivery)
                .collect(),
        )
        .await
        .unwrap();
    let [
        Intake::Stored(e1),
        Intake::Duplicate(d1),
        Intake::Stored(e2),
        Intake::Duplicate(d2),
    ] = intakes[..]
    else {
        panic!("{intakes:?}")
    };
    // A repeat inside the batch is a duplicate of its first, stored a moment before.
    assert_eq!((d1, d2), (seen, e1));
    assert!(seen < e1 && e1 < e2);
    // The matcher gets the new ones, in order, once each.
    let mut got = Vec::new();
    feed.try_recv_many(&mut got, 100);
    assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), [e1, e2]);
    assert_eq!(
        store
            .insert_deliveries(vec![delivery("e2"), delivery("e3")])
            .await
            .unwrap()[0],
        Intake::Duplicate(e2)
    );
}

#[tokio::test]
async fn a_batch_that_cannot_be_stored_whole_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    store.fill_disk(true).await;
    write_until_full(&store).await;
    let e = store
        .insert_deliveries(vec![delivery("small"), large_delivery("large")])
        .await
        .unwrap_err();
    assert!(e.cannot_write(), "{e:?}");
    store.fill_disk(false).await;
    // Neither was kept: the small one, which fitted, is new when sent again.
    assert!(matches!(
        store.insert_delivery(delivery("small")).await.unwrap(),
        Intake::Stored(_)
    ));
}

#[test]
fn the_pass_migration_starts_after_deliveries_already_handled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let mut conn = Connection::open(&path).unwrap();
    let tx = conn.transaction().unwrap();
    for sql in &MIGRATIONS[..2] {
        tx.execute_batch(sql).unwrap();
    }
    for (seq, status) in [
        (1, "processed"),
        (2, "failed"),
        (3, "received"),
        (4, "processed"),
    ] {
        tx.execute(
            "INSERT INTO deliveries (seq, source, delivery_id, event, headers, body, received_at, status, processed_at)
             VALUES (?1, 'gh', ?1, 'push', '{}', '{}', 1, ?2, CASE WHEN ?2 = 'received' THEN NULL ELSE 7 END)",
            params![seq, status],
        )
        .unwrap();
    }
    tx.pragma_update(None, "user_version", 2).unwrap();
    tx.commit().unwrap();
    migrate(&mut conn).unwrap();
    let through: i64 = conn
        .query_row("SELECT MAX(through_seq) FROM delivery_passes", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        through, 2,
        "the first delivery still received bounds the pass"
    );
    let statuses: Vec<(String, Option<i64>)> = conn
        .prepare("SELECT status, processed_at FROM deliveries_seen ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(
        statuses,
        [
            ("processed".into(), Some(7)),
            ("failed".into(), Some(7)),
            ("received".into(), None),
            ("processed".into(), Some(7)),
        ]
    );
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let _first = store(&dir).await;
    let err = SqliteStore::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another baton process"), "{err}");
}

#[tokio::test]
async fn lists_runs_with_filters() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        let mut h = header(id);
        h.created_at = i as i64;
        if *id == "b" {
            h.workflow = "other".into();
        }
        store
            .commit(vec![Change::InsertRun(h, payload())])
            .await
            .unwrap();
    }
    let all = store.list_runs(&RunFilter::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
        ["c", "b", "a"]
    );
    let wf = store
        .list_runs(&RunFilter {
            workflow: Some("wf".into()),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(wf.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["c"]);
    let none = store
        .list_runs(&RunFilter {
            status: Some(RunStatus::Failed),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
}

impl SqliteStore {
    /// Caps the database at its size now (`None`: lifts the cap). SQLite's `max_page_count`
    /// stands in for a full disk: a write that needs a page past the cap fails with
    /// `SQLITE_FULL`, the very error a full disk gives, from the same place (the pager cannot
    /// have the page), and no small filesystem or privilege to mount one is needed.
    async fn fill_disk(&self, full: bool) {
        self.send(Op::MaxPages(full.then_some(1))).await.unwrap();
    }
}

/// A delivery whose body needs pages of its own, so it cannot fit in what is left of one.
fn large_delivery(id: &str) -> NewDelivery {
    NewDelivery {
        body: format!(r#"{{"pad": "{}"}}"#, "x".repeat(16 << 10)),
        ..delivery(id)
    }
}

/// Stores large deliveries until one fails (the free list is used up first); that error.
async fn write_until_full(store: &SqliteStore) -> StoreError {
    for i in 0..200 {
        if let Err(e) = store
            .insert_delivery(large_delivery(&format!("fill-{i}")))
            .await
        {
            return e;
        }
    }
    panic!("200 deliveries of 16 KiB were stored on a full disk");
}

#[tokio::test]
async fn a_full_disk_says_disk_full_and_readiness_follows_it_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    store.insert_delivery(delivery("before")).await.unwrap();
    store.writable().await.unwrap();

    store.fill_disk(true).await;
    let e = write_until_full(&store).await;
    assert!(e.cannot_write(), "{e:?}");
    assert!(
        e.to_string().starts_with("store cannot write: disk full"),
        "{e}"
    );
    // An engine step on the full disk says the same.
    let e = store
        .commit(vec![Change::InsertRun(
            header("r-full"),
            RunPayload {
                event: json!({"pad": "x".repeat(16 << 10)}),
                ..payload()
            },
        )])
        .await
        .unwrap_err();
    assert!(
        e.to_string().starts_with("store cannot write: disk full"),
        "{e}"
    );

    // Readiness answers from the failed writes at once...
    let e = store.writable().await.unwrap_err();
    assert!(
        e.to_string().starts_with("store cannot write: disk full"),
        "{e}"
    );
    // ...and, once they are older than a recheck, from a probe, which fails too: a probe
    // needs a page as a delivery does.
    tokio::time::sleep(health::RECHECK_FAILURE).await;
    let probes = store.health.probes();
    let e = store.writable().await.unwrap_err();
    assert_eq!(store.health.probes(), probes + 1, "a probe ran");
    assert!(
        e.to_string().starts_with("store cannot write: disk full"),
        "{e}"
    );

    // Space returns: readiness says so by the next probe, and writes work again.
    store.fill_disk(false).await;
    let begun = std::time::Instant::now();
    while let Err(e) = store.writable().await {
        assert!(
            begun.elapsed() < Duration::from_secs(2),
            "still not writable 2 s after space returned: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store
        .insert_delivery(large_delivery("after"))
        .await
        .unwrap();
    store.writable().await.unwrap();
}

#[tokio::test]
async fn readiness_is_not_probed_while_writes_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    // Nothing written yet: a probe tells, and it succeeds.
    store.writable().await.unwrap();
    assert_eq!(store.health.probes(), 1);
    // Its success counts as a write: asked again at once, nothing is probed.
    store.writable().await.unwrap();
    assert_eq!(store.health.probes(), 1);
    // A busy store answers from its own commits, however often it is asked.
    for i in 0..50 {
        store
            .insert_delivery(delivery(&format!("d{i}")))
            .await
            .unwrap();
        store.writable().await.unwrap();
    }
    assert_eq!(store.health.probes(), 1, "no probe while commits succeed");
}

#[tokio::test]
async fn a_commit_that_writes_nothing_does_not_count_as_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    store.fill_disk(true).await;
    write_until_full(&store).await;
    tokio::time::sleep(health::RECHECK_FAILURE).await;
    // The engine's claim of due work commits every second with nothing to claim: it must
    // not make a full disk look writable.
    assert!(
        store
            .claim_due(now_millis(), 10, now_millis() + 1000)
            .await
            .unwrap()
            .is_empty()
    );
    store.release_leases().await.unwrap();
    let e = store.writable().await.unwrap_err();
    assert!(e.to_string().contains("disk full"), "{e}");
}
