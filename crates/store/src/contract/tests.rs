//! The store's contract tests, run on every backend.

use baton_core::{ExternalRef, RunStatus, StageStatus};
use serde_json::json;

use super::*;

#[tokio::test]
async fn runs_stages_and_attempts_round_trip() {
    for backend in backends().await {
        let store = backend.store.clone();
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
}

#[tokio::test]
async fn tasks_are_claimed_once_and_versions_protect_reschedules() {
    for backend in backends().await {
        let store = backend.store.clone();
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
        // A store of one process clears its leases; a shared one leaves them to expire.
        let expected = if store.shared() { 0 } else { 2 };
        assert_eq!(store.claim_due(60, 10, 2000).await.unwrap().len(), expected);
    }
}

#[tokio::test]
async fn claimed_schedules_come_back_and_a_failed_batch_leaves_others() {
    for backend in backends().await {
        let store = backend.store.clone();
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
}

#[tokio::test]
async fn deliveries_are_stored_once_and_processed() {
    for backend in backends().await {
        let store = backend.store.clone();
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
}

#[tokio::test]
async fn the_feed_carries_stored_deliveries_in_order_once_taken() {
    for backend in backends().await {
        let store = backend.store.clone();
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
}

#[tokio::test]
async fn a_batch_of_deliveries_is_stored_together_with_duplicates_named() {
    for backend in backends().await {
        let store = backend.store.clone();
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
}

#[tokio::test]
async fn lists_runs_with_filters() {
    for backend in backends().await {
        let store = backend.store.clone();
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
}

#[tokio::test]
async fn pages_runs_by_key() {
    for backend in backends().await {
        let store = backend.store.clone();
        // Two runs share a millisecond: the id orders them, and no page repeats or skips one.
        for (id, at) in [("a", 1), ("b", 2), ("c", 2), ("d", 3), ("e", 4)] {
            let mut h = header(id);
            h.created_at = at;
            if id == "d" {
                h.workflow = "other".into();
            }
            store
                .commit(vec![Change::InsertRun(h, payload())])
                .await
                .unwrap();
        }
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = store
                .list_runs(&RunFilter {
                    limit: 2,
                    before: before.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            before = Some(RunCursor::after(last));
            seen.extend(page.iter().map(|h| h.id.clone()));
        }
        assert_eq!(seen, ["e", "d", "c", "b", "a"], "{:?}", backend.kind);
        // With a filter, the cursor of a run the filter leaves out still places the page.
        let wf = store
            .list_runs(&RunFilter {
                workflow: Some("wf".into()),
                before: RunCursor::parse("3.d"),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            wf.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
            ["c", "b", "a"]
        );
        assert_eq!(RunCursor::parse("12.run-1.x").unwrap().id, "run-1.x");
        assert!(RunCursor::parse("x.y").is_none());
    }
}
