use super::schema::MIGRATIONS;
use super::*;
use crate::contract::{delivery, header, payload};
use rusqlite::params;
use serde_json::json;

pub(super) async fn store(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
        .await
        .unwrap()
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
