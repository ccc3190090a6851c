//! The report outbox's contract on every backend: superseding, claims and their leases,
//! retries, references, and what survives a restart.

use super::{Backend, every_backend};
use crate::*;

fn key(stage_id: &str) -> ReportKey {
    ReportKey {
        run_id: "r1".into(),
        source: "github".into(),
        stage_id: stage_id.into(),
    }
}

fn want(stage_id: &str, due_at: Millis) -> Change {
    Change::Report {
        key: key(stage_id),
        due_at,
    }
}

/// (stage, version, tries, first try) of each claimed row.
fn claimed(rows: &[DueReport]) -> Vec<(&str, i64, u32, Option<Millis>)> {
    rows.iter()
        .map(|r| (r.key.stage_id.as_str(), r.version, r.tries, r.first_try_at))
        .collect()
}

async fn a_newer_change_supersedes_the_waiting_row_even_while_it_is_claimed(b: Backend) {
    let store = &*b.store;
    store
        .commit(vec![want("", 10), want("build", 20)])
        .await
        .unwrap();
    assert_eq!(store.next_report_due(0).await.unwrap(), Some(10));
    assert!(store.claim_reports(5, 10, 100).await.unwrap().is_empty());
    let rows = store.claim_reports(15, 10, 100).await.unwrap();
    assert_eq!(claimed(&rows), [("", 1, 0, None)]);
    // Claimed: neither claimed nor counted as due again until the claim ends.
    assert_eq!(store.next_report_due(30).await.unwrap(), Some(20));
    assert_eq!(
        claimed(&store.claim_reports(30, 10, 100).await.unwrap()),
        [("build", 1, 0, None)]
    );
    assert!(store.claim_reports(40, 10, 100).await.unwrap().is_empty());
    // The run changes while its row is posted: the row gets a new version, still claimed.
    store.commit(vec![want("", 50)]).await.unwrap();
    assert_eq!(store.next_report_due(60).await.unwrap(), None);
    assert!(store.claim_reports(60, 10, 100).await.unwrap().is_empty());
    // Settling the old version leaves the new one, due as the change said.
    store
        .commit(vec![Change::ReportDone {
            key: key(""),
            version: 1,
        }])
        .await
        .unwrap();
    assert_eq!(store.next_report_due(60).await.unwrap(), Some(50));
    let rows = store.claim_reports(60, 10, 200).await.unwrap();
    assert_eq!(claimed(&rows), [("", 2, 0, None)]);
    // Settling the version claimed removes the row.
    store
        .commit(vec![Change::ReportDone {
            key: key(""),
            version: 2,
        }])
        .await
        .unwrap();
    // A claim that ran out lets the row be claimed again.
    assert_eq!(store.next_report_due(150).await.unwrap(), Some(20));
    assert_eq!(
        claimed(&store.claim_reports(150, 10, 300).await.unwrap()),
        [("build", 1, 0, None)]
    );
}

async fn a_retry_keeps_its_schedule_across_a_restart_unless_superseded(b: Backend) {
    {
        let store = &*b.store;
        store
            .commit(vec![want("", 10), want("build", 10)])
            .await
            .unwrap();
        let rows = store.claim_reports(10, 10, 1_000).await.unwrap();
        assert_eq!(rows.len(), 2);
        let retry = |stage_id: &str, due_at| Change::ReportRetry {
            key: key(stage_id),
            version: 1,
            due_at,
            tries: 3,
            first_try_at: 9,
        };
        store
            .commit(vec![retry("", 500), retry("build", 700)])
            .await
            .unwrap();
        // The build stage changes again: its retry is dropped, the new version is due now.
        store.commit(vec![want("build", 40)]).await.unwrap();
        // Claimed again by the process about to die.
        assert_eq!(store.claim_reports(600, 10, 10_000).await.unwrap().len(), 2);
    }
    let b = b.restarted().await;
    let store = &*b.store;
    assert_eq!(store.next_report_due(650).await.unwrap(), None);
    store.release_report_leases().await.unwrap();
    if store.shared() {
        // The dead process's claims could be a live replica's: they hold until they end.
        assert_eq!(store.next_report_due(10_000).await.unwrap(), None);
        assert_eq!(store.next_report_due(10_001).await.unwrap(), Some(40));
        assert_eq!(
            claimed(&store.claim_reports(10_001, 10, 11_000).await.unwrap()),
            [("build", 2, 0, None), ("", 1, 3, Some(9))]
        );
    } else {
        assert_eq!(store.next_report_due(0).await.unwrap(), Some(40));
        assert_eq!(
            claimed(&store.claim_reports(100, 10, 1_000).await.unwrap()),
            [("build", 2, 0, None)]
        );
        assert_eq!(
            claimed(&store.claim_reports(500, 10, 1_000).await.unwrap()),
            [("", 1, 3, Some(9))]
        );
    }
    // A retry of a version that was superseded while it was tried changes nothing but
    // the claim.
    store.commit(vec![want("", 510)]).await.unwrap();
    store
        .commit(vec![Change::ReportRetry {
            key: key(""),
            version: 1,
            due_at: 9_000,
            tries: 4,
            first_try_at: 9,
        }])
        .await
        .unwrap();
    assert_eq!(
        claimed(&store.claim_reports(520, 10, 1_000).await.unwrap()),
        [("", 2, 0, None)]
    );
}

async fn a_reference_is_kept_per_run_and_source_across_a_restart_and_replaced_by_the_next(
    b: Backend,
) {
    let put = |run_id: &str, source: &str, reference: &str| Change::ReportRef {
        run_id: run_id.into(),
        source: source.into(),
        reference: reference.into(),
    };
    {
        let store = &*b.store;
        assert_eq!(store.report_ref("r1", "github").await.unwrap(), None);
        store
            .commit(vec![put("r1", "github", "creating"), put("r1", "app", "a")])
            .await
            .unwrap();
        store
            .commit(vec![put("r1", "github", "check-run 7")])
            .await
            .unwrap();
    }
    let b = b.restarted().await;
    let store = &*b.store;
    assert_eq!(
        store.report_ref("r1", "github").await.unwrap().as_deref(),
        Some("check-run 7")
    );
    assert_eq!(
        store.report_ref("r1", "app").await.unwrap().as_deref(),
        Some("a")
    );
    assert_eq!(store.report_ref("r2", "github").await.unwrap(), None);
}

every_backend!(
    a_newer_change_supersedes_the_waiting_row_even_while_it_is_claimed,
    a_retry_keeps_its_schedule_across_a_restart_unless_superseded,
    a_reference_is_kept_per_run_and_source_across_a_restart_and_replaced_by_the_next,
);

/// What only a shared store does: replicas on one PostgreSQL schema.
mod shared {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;
    use crate::contract::postgres;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_never_claim_one_row() {
        let b = postgres().await;
        let (one, two) = (b.store.clone(), b.reopen().await);
        one.commit(
            (0..60)
                .map(|n| want(&format!("stage{n}"), n.into()))
                .collect(),
        )
        .await
        .unwrap();
        let drain = async |store: Arc<dyn Store>| {
            let mut got = Vec::new();
            loop {
                let rows = store.claim_reports(1_000, 3, 100_000).await.unwrap();
                if rows.is_empty() {
                    return got;
                }
                got.extend(rows.into_iter().map(|r| r.key.stage_id));
                tokio::task::yield_now().await;
            }
        };
        let (from_one, from_two) = tokio::join!(
            tokio::spawn(drain(one.clone())),
            tokio::spawn(drain(two.clone()))
        );
        let (from_one, from_two) = (from_one.unwrap(), from_two.unwrap());
        let all: HashSet<&String> = from_one.iter().chain(&from_two).collect();
        assert_eq!(
            (all.len(), from_one.len() + from_two.len()),
            (60, 60),
            "every row claimed once"
        );
        assert_eq!(two.next_report_due(1_000).await.unwrap(), None);
    }
}
