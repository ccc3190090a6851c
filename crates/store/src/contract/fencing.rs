//! Fencing: run versions, claim tokens, `holds` and `renew` ([`Change::Fence`]).

use baton_core::context::TriggerInfo;
use serde_json::json;

use super::backends;
use crate::*;

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

fn insert(id: &str) -> Change {
    Change::InsertRun(
        header(id),
        RunPayload {
            spec: json!({"name": "wf"}),
            event: json!({}),
            trigger: TriggerInfo {
                source: "manual".into(),
                event: "manual".into(),
                delivery_id: None,
            },
        },
    )
}

fn schedule(run: &str, stage: &str, due: Millis, claim: Option<Millis>) -> Change {
    Change::Schedule(TaskSpec {
        run_id: run.into(),
        stage_id: stage.into(),
        kind: TaskKind::Poll,
        attempt: 1,
        due_at: due,
        claim_until: claim,
    })
}

fn fence(run: &str, version: i64, lease: Option<&Task>) -> Change {
    Change::Fence {
        run_id: run.into(),
        version,
        lease: lease.map(|t| TaskLease {
            id: t.id,
            token: t.lease,
        }),
    }
}

/// A stage write that shows whether a commit got through.
fn mark(run: &str, message: &str) -> Change {
    let mut stage = StageRecord::pending(run, "build", 0);
    stage.message = Some(message.into());
    Change::PutStage(stage)
}

async fn message(store: &dyn Store, run: &str) -> Option<String> {
    let run = store.load_run(run).await.unwrap().unwrap();
    run.stages.first().and_then(|s| s.message.clone())
}

async fn version(store: &dyn Store, run: &str) -> i64 {
    store.load_run(run).await.unwrap().unwrap().version
}

#[tokio::test]
async fn a_fence_bumps_the_version_and_refuses_a_stale_one_whole() {
    for b in backends().await {
        let store = &*b.store;
        store.commit(vec![insert("r1")]).await.unwrap();
        assert_eq!(version(store, "r1").await, 0, "{:?}", b.kind);
        store
            .commit(vec![fence("r1", 0, None), mark("r1", "first")])
            .await
            .unwrap();
        assert_eq!(version(store, "r1").await, 1);
        let stale = store
            .commit(vec![
                fence("r1", 0, None),
                mark("r1", "stale"),
                schedule("r1", "build", 1, None),
            ])
            .await
            .unwrap_err();
        assert!(stale.is_fenced(), "{stale}");
        assert_eq!(message(store, "r1").await.as_deref(), Some("first"));
        assert_eq!(
            version(store, "r1").await,
            1,
            "a refused commit bumps nothing"
        );
        assert_eq!(
            store.next_due().await.unwrap(),
            None,
            "nor schedules anything"
        );
        let missing = store
            .commit(vec![fence("nope", 0, None)])
            .await
            .unwrap_err();
        assert!(
            missing.is_fenced(),
            "a run that does not exist fails the fence"
        );
    }
}

#[tokio::test]
async fn every_claim_gets_a_new_token_and_old_tokens_fail_the_fence() {
    for b in backends().await {
        let store = &*b.store;
        let claimed = store
            .commit(vec![insert("r1"), schedule("r1", "build", 10, Some(100))])
            .await
            .unwrap();
        let first = claimed[0].clone();
        // Expired, not taken over: the claim still counts.
        store
            .commit(vec![
                fence("r1", 0, Some(&first)),
                mark("r1", "expired but mine"),
            ])
            .await
            .unwrap();
        assert!(store.holds(&first).await.unwrap(), "{:?}", b.kind);
        // Another claim after the lease ended.
        let second = store.claim_due(200, 10, 300).await.unwrap();
        assert_eq!(second.len(), 1);
        let second = second[0].clone();
        assert_eq!(second.id, first.id);
        assert_ne!(second.lease, first.lease, "a claim gets a new token");
        assert!(!store.holds(&first).await.unwrap());
        assert!(store.holds(&second).await.unwrap());
        let refused = store
            .commit(vec![fence("r1", 1, Some(&first)), mark("r1", "lost")])
            .await
            .unwrap_err();
        assert!(refused.is_fenced(), "{refused}");
        assert_eq!(version(store, "r1").await, 1);
        // A claim made in a commit gets a new token too.
        let third = store
            .commit(vec![
                fence("r1", 1, Some(&second)),
                schedule("r1", "build", 200, Some(400)),
            ])
            .await
            .unwrap();
        let third = third[0].clone();
        assert!(![first.lease, second.lease].contains(&third.lease));
        assert!(!store.holds(&second).await.unwrap());
        // Rescheduled without a claim: nobody holds it.
        store
            .commit(vec![
                fence("r1", 2, Some(&third)),
                schedule("r1", "build", 500, None),
            ])
            .await
            .unwrap();
        assert!(!store.holds(&third).await.unwrap());
        let fourth = store.claim_due(500, 10, 600).await.unwrap()[0].clone();
        assert!(store.holds(&fourth).await.unwrap());
        store
            .commit(vec![Change::Done {
                id: fourth.id,
                version: fourth.version,
            }])
            .await
            .unwrap();
        assert!(!store.holds(&fourth).await.unwrap(), "done: held by nobody");
        let gone = store
            .commit(vec![fence("r1", 3, Some(&fourth))])
            .await
            .unwrap_err();
        assert!(
            gone.is_fenced(),
            "a task that no longer exists fails the fence"
        );
    }
}

#[tokio::test]
async fn renewing_extends_held_claims_and_names_the_lost_ones() {
    for b in backends().await {
        let store = &*b.store;
        let claimed = store
            .commit(vec![
                insert("r1"),
                insert("r2"),
                schedule("r1", "a", 10, Some(100)),
                // Another run: a shared store never hands out a task of a run while another
                // task of it is under a live claim.
                schedule("r2", "b", 10, Some(100)),
            ])
            .await
            .unwrap();
        let (a, b_task) = (claimed[0].clone(), claimed[1].clone());
        let lease = |t: &Task| TaskLease {
            id: t.id,
            token: t.lease,
        };
        // `b` is taken over after its lease ran out; `a` is renewed before that.
        assert_eq!(
            store.renew(&[lease(&a)], 1000).await.unwrap(),
            Vec::<i64>::new(),
            "{:?}",
            b.kind
        );
        let taken = store.claim_due(150, 10, 2000).await.unwrap();
        assert_eq!(
            taken.iter().map(|t| t.id).collect::<Vec<_>>(),
            [b_task.id],
            "a renewed claim is not claimable until its new end"
        );
        let mut lost = store
            .renew(&[lease(&a), lease(&b_task)], 3000)
            .await
            .unwrap();
        lost.sort();
        assert_eq!(lost, [b_task.id]);
        assert!(store.holds(&a).await.unwrap());
        let ids = |tasks: Vec<Task>| tasks.iter().map(|t| t.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.claim_due(2500, 10, 4000).await.unwrap()),
            [b_task.id],
            "a lost claim is not renewed"
        );
        assert_eq!(ids(store.claim_due(3001, 10, 4000).await.unwrap()), [a.id]);
    }
}

#[tokio::test]
async fn a_fenced_batch_fails_alone_among_others_committed_at_once() {
    for b in backends().await {
        let store = b.store.clone();
        let runs: Vec<String> = (0..24).map(|i| format!("r{i}")).collect();
        store
            .commit(runs.iter().map(|r| insert(r)).collect())
            .await
            .unwrap();
        let commits = runs.iter().enumerate().map(|(i, run)| {
            let store = store.clone();
            // Every third is made from a version that is not the run's.
            let version = if i % 3 == 0 { 7 } else { 0 };
            let changes = vec![fence(run, version, None), mark(run, "written")];
            async move { store.commit(changes).await }
        });
        let results = futures::future::join_all(commits).await;
        for (i, (run, result)) in runs.iter().zip(results).enumerate() {
            if i % 3 == 0 {
                assert!(result.unwrap_err().is_fenced(), "{:?} {run}", b.kind);
                assert_eq!(message(&*store, run).await, None);
                assert_eq!(version(&*store, run).await, 0);
            } else {
                result.unwrap();
                assert_eq!(message(&*store, run).await.as_deref(), Some("written"));
                assert_eq!(version(&*store, run).await, 1);
            }
        }
    }
}
