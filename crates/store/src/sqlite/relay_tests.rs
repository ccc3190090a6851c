//! The relay queue on a real SQLite file: claims and leases, tries, postponing, disabled
//! targets, replays, listings and counts, durability, and the plans of its hot queries.

use rusqlite::Connection;
use rusqlite::types::ToSql;

use super::relay::*;
use super::schema::migrate;
use super::tests::store as open;
use crate::relay::ANSWER_SLICE_BYTES;
use crate::*;

/// A message key whose order follows `n`, as a UUIDv7's follows time.
fn key(n: u32) -> String {
    format!("msg_{n:032x}")
}

/// A stored delivery's public id, with a body and headers its relay messages carry.
async fn delivery(store: &SqliteStore, id: &str) -> i64 {
    let stored = store
        .insert_delivery(NewDelivery {
            source: "github".into(),
            delivery_id: id.into(),
            event: "push".into(),
            headers: format!(r#"{{"x-github-delivery":"{id}"}}"#),
            body: format!(r#"{{"id":"{id}"}}"#),
            received_at: 1,
        })
        .await
        .unwrap();
    match stored {
        Intake::Stored(seq) => seq,
        Intake::Duplicate(seq) => panic!("delivery {id} was stored before as {seq}"),
    }
}

/// A message for `relay`/`target` made at `created_at`, due then, not leased.
fn message(
    n: u32,
    relay: &str,
    target: &str,
    delivery: i64,
    created_at: Millis,
) -> NewRelayMessage {
    NewRelayMessage {
        key: key(n),
        relay: relay.into(),
        target: target.into(),
        delivery,
        created_at,
        due_at: created_at,
        lease_until: None,
    }
}

/// Enqueues `messages`, one commit.
async fn enqueue(store: &SqliteStore, messages: Vec<NewRelayMessage>) {
    store
        .commit(messages.into_iter().map(Change::RelayEnqueue).collect())
        .await
        .unwrap();
}

/// A try of message `n` at `at`, 10 ms long.
fn attempt(
    n: u32,
    number: u32,
    at: Millis,
    outcome: RelayOutcome,
    code: Option<u16>,
) -> RelayAttemptRecord {
    RelayAttemptRecord {
        key: key(n),
        attempt: number,
        at,
        duration_ms: 10,
        outcome,
        code,
        body: code.map(|c| format!("answer {c}")),
        error: None,
    }
}

/// Records `attempt` followed by `next`.
async fn record(store: &SqliteStore, attempt: RelayAttemptRecord, next: RelayNext) {
    store
        .commit(vec![Change::RelayAttempt { attempt, next }])
        .await
        .unwrap();
}

/// The keys of claimed messages, in the order claimed.
fn keys(claimed: &[DueRelay]) -> Vec<String> {
    claimed.iter().map(|m| m.key.clone()).collect()
}

/// The keys of listed messages, in the order listed.
fn listed(messages: &[RelayMessageRecord]) -> Vec<String> {
    messages.iter().map(|m| m.key.clone()).collect()
}

/// The message with key `n`.
async fn load(store: &SqliteStore, n: u32) -> (RelayMessageRecord, Vec<RelayAttemptRecord>) {
    store
        .load_relay_message(&key(n))
        .await
        .unwrap()
        .expect("the message")
}

/// Claims up to 10 of `relay`/`target`'s due messages at `now`, leased until `lease`.
async fn claim(store: &SqliteStore, target: &str, now: Millis, lease: Millis) -> Vec<String> {
    keys(
        &store
            .claim_relays("r", target, now, 10, lease, false)
            .await
            .unwrap(),
    )
}

#[tokio::test]
async fn a_claim_leases_due_messages_of_one_target_with_their_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let d1 = delivery(&store, "d1").await;
    let d2 = delivery(&store, "d2").await;
    let mut later = message(3, "r", "a", d2, 100);
    later.due_at = 500;
    enqueue(
        &store,
        vec![
            message(1, "r", "a", d1, 20),
            message(2, "r", "a", d2, 10),
            later,
            message(4, "r", "b", d1, 5),
            message(5, "other", "a", d1, 5),
        ],
    )
    .await;
    assert_eq!(store.next_relay_due("r", "a", 0).await.unwrap(), Some(10));
    assert_eq!(store.next_relay_due("r", "c", 0).await.unwrap(), None);
    // Not due yet: nothing.
    assert!(claim(&store, "a", 9, 1_000).await.is_empty());
    let claimed = store
        .claim_relays("r", "a", 50, 10, 1_000, false)
        .await
        .unwrap();
    // Oldest due first, this target's and relay's only.
    assert_eq!(keys(&claimed), [key(2), key(1)]);
    let first = &claimed[0];
    assert_eq!(
        (
            first.relay.as_str(),
            first.target.as_str(),
            first.tries,
            first.attempts,
            first.due_at
        ),
        ("r", "a", 0, 0, 10)
    );
    assert_eq!(
        (
            first.delivery,
            first.source.as_str(),
            first.delivery_id.as_str(),
            first.event.as_str()
        ),
        (d2, "github", "d2", "push")
    );
    assert_eq!(first.headers, r#"{"x-github-delivery":"d2"}"#);
    assert_eq!(first.body, r#"{"id":"d2"}"#);
    // Leased: a second claim gets nothing, and they are not due for anyone else.
    assert!(claim(&store, "a", 60, 2_000).await.is_empty());
    assert_eq!(store.next_relay_due("r", "a", 60).await.unwrap(), Some(500));
    // Due but still leased at the lease's last instant; claimable after it.
    assert_eq!(claim(&store, "a", 1_000, 2_000).await, [key(3)]);
    assert_eq!(claim(&store, "a", 1_001, 2_000).await, [key(2), key(1)]);
    // A limit takes the oldest due.
    assert_eq!(
        keys(
            &store
                .claim_relays("r", "a", 5_000, 1, 6_000, false)
                .await
                .unwrap()
        ),
        [key(2)]
    );
}

#[tokio::test]
async fn an_ordered_claim_takes_the_oldest_by_key_even_when_not_due() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let d1 = delivery(&store, "d1").await;
    let d2 = delivery(&store, "d2").await;
    let d3 = delivery(&store, "d3").await;
    // Keys are made as deliveries are matched, so in their order; due times are not: the
    // first delivery's message waits for a retry.
    let mut waiting = message(1, "r", "a", d1, 30);
    waiting.due_at = 900;
    enqueue(
        &store,
        vec![
            waiting,
            message(2, "r", "a", d2, 20),
            message(3, "r", "a", d3, 10),
        ],
    )
    .await;
    let ordered = store
        .claim_relays("r", "a", 50, 2, 1_000, true)
        .await
        .unwrap();
    assert_eq!(keys(&ordered), [key(1), key(2)]);
    assert_eq!(ordered[0].due_at, 900, "the caller waits for it");
    assert_eq!(
        keys(
            &store
                .claim_relays("r", "a", 50, 10, 1_000, true)
                .await
                .unwrap()
        ),
        [key(3)]
    );
}

#[tokio::test]
async fn a_message_handed_over_leased_is_claimed_only_when_its_lease_ends_or_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let d = delivery(&store, "d").await;
    let mut handed = message(1, "r", "a", d, 10);
    handed.lease_until = Some(100);
    enqueue(&store, vec![handed, message(2, "r", "a", d, 10)]).await;
    assert_eq!(claim(&store, "a", 50, 5_000).await, [key(2)]);
    assert_eq!(store.next_relay_due("r", "a", 50).await.unwrap(), None);
    assert_eq!(store.next_relay_due("r", "a", 101).await.unwrap(), Some(10));
    // A dispatcher starting over with the store to itself takes back every lease.
    store.release_relay_leases().await.unwrap();
    assert_eq!(claim(&store, "a", 50, 5_000).await, [key(1), key(2)]);
    // Delivered ones hold no lease to give back and stay delivered.
    record(
        &store,
        attempt(1, 1, 60, RelayOutcome::Delivered, Some(200)),
        RelayNext::Delivered,
    )
    .await;
    store.release_relay_leases().await.unwrap();
    assert_eq!(claim(&store, "a", 70, 5_000).await, [key(2)]);
    assert_eq!(load(&store, 1).await.0.status, RelayStatus::Delivered);
}

#[tokio::test]
async fn a_retry_moves_the_due_time_and_a_success_ends_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let d = delivery(&store, "d").await;
    enqueue(&store, vec![message(1, "r", "a", d, 10)]).await;
    assert_eq!(claim(&store, "a", 10, 1_000).await, [key(1)]);
    record(
        &store,
        attempt(1, 1, 10, RelayOutcome::Failed, Some(500)),
        RelayNext::Retry {
            due_at: 5_010,
            tries: 1,
        },
    )
    .await;
    let (m, tries) = load(&store, 1).await;
    assert_eq!(
        (m.status, m.tries, m.attempts, m.due_at, m.finished_at),
        (RelayStatus::Pending, 1, 1, Some(5_010), None)
    );
    assert_eq!(
        (m.last_outcome, m.last_code, m.message.as_deref()),
        (Some(RelayOutcome::Failed), Some(500), Some("HTTP 500"))
    );
    assert_eq!(tries, [attempt(1, 1, 10, RelayOutcome::Failed, Some(500))]);
    // The lease ended with the try, and the message is due again at its new time only.
    assert_eq!(
        store.next_relay_due("r", "a", 20).await.unwrap(),
        Some(5_010)
    );
    assert!(claim(&store, "a", 5_009, 9_000).await.is_empty());
    let again = store
        .claim_relays("r", "a", 5_010, 10, 9_000, false)
        .await
        .unwrap();
    assert_eq!(
        (
            again[0].key.clone(),
            again[0].tries,
            again[0].attempts,
            again[0].due_at
        ),
        (key(1), 1, 1, 5_010)
    );
    record(
        &store,
        attempt(1, 2, 5_020, RelayOutcome::Delivered, Some(204)),
        RelayNext::Delivered,
    )
    .await;
    let (m, tries) = load(&store, 1).await;
    assert_eq!(
        (m.status, m.tries, m.attempts, m.due_at, m.finished_at),
        (RelayStatus::Delivered, 1, 2, None, Some(5_030))
    );
    assert_eq!(
        (m.last_outcome, m.last_code, m.message),
        (Some(RelayOutcome::Delivered), Some(204), None)
    );
    assert_eq!(tries.iter().map(|t| t.attempt).collect::<Vec<_>>(), [1, 2]);
    assert!(claim(&store, "a", 99_999, 100_000).await.is_empty());
    assert_eq!(store.next_relay_due("r", "a", 99_999).await.unwrap(), None);
    // A try that ends after the message was settled is kept, and settles nothing more.
    record(
        &store,
        attempt(1, 3, 6_000, RelayOutcome::Failed, Some(502)),
        RelayNext::Retry {
            due_at: 7_000,
            tries: 2,
        },
    )
    .await;
    let (m, tries) = load(&store, 1).await;
    assert_eq!(
        (m.status, m.attempts, m.tries),
        (RelayStatus::Delivered, 2, 1)
    );
    assert_eq!(tries.len(), 3);
}

#[tokio::test]
async fn a_retry_says_its_error_and_the_last_try_kills_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let d = delivery(&store, "d").await;
    enqueue(&store, vec![message(1, "r", "a", d, 10)]).await;
    let mut timeout = attempt(1, 1, 10, RelayOutcome::Timeout, None);
    timeout.error = Some("no answer within 5s".into());
    record(
        &store,
        timeout,
        RelayNext::Retry {
            due_at: 100,
            tries: 1,
        },
    )
    .await;
    assert_eq!(
        load(&store, 1).await.0.message.as_deref(),
        Some("no answer within 5s")
    );
    // With neither an error nor a code, the outcome says what happened.
    record(
        &store,
        attempt(1, 2, 100, RelayOutcome::Connection, None),
        RelayNext::Retry {
            due_at: 200,
            tries: 2,
        },
    )
    .await;
    assert_eq!(
        load(&store, 1).await.0.message.as_deref(),
        Some("connection")
    );
    record(
        &store,
        attempt(1, 3, 200, RelayOutcome::Failed, Some(503)),
        RelayNext::Dead {
            reason: "503 on the last of 3 tries".into(),
        },
    )
    .await;
    let (m, tries) = load(&store, 1).await;
    assert_eq!(
        (m.status, m.tries, m.attempts, m.due_at, m.finished_at),
        (RelayStatus::Dead, 3, 3, None, Some(210))
    );
    assert_eq!(
        (m.last_outcome, m.last_code, m.message.as_deref()),
        (
            Some(RelayOutcome::Failed),
            Some(503),
            Some("503 on the last of 3 tries")
        )
    );
    assert_eq!(tries[0].error.as_deref(), Some("no answer within 5s"));
    assert_eq!(
        tries
            .iter()
            .map(|t| (t.attempt, t.outcome))
            .collect::<Vec<_>>(),
        [
            (1, RelayOutcome::Timeout),
            (2, RelayOutcome::Connection),
            (3, RelayOutcome::Failed)
        ]
    );
    assert!(claim(&store, "a", 99_999, 100_000).await.is_empty());
}

#[tokio::test]
async fn a_postponed_message_is_due_later_without_a_try_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let d = delivery(&store, "d").await;
    enqueue(
        &store,
        vec![message(1, "r", "a", d, 10), message(2, "r", "a", d, 10)],
    )
    .await;
    assert_eq!(claim(&store, "a", 10, 1_000).await, [key(1), key(2)]);
    let postpone = |n, due_at| Change::RelayPostpone {
        key: key(n),
        due_at,
    };
    store.commit(vec![postpone(1, 900)]).await.unwrap();
    let (m, tries) = load(&store, 1).await;
    assert_eq!(
        (m.status, m.tries, m.attempts, m.due_at, m.last_outcome),
        (RelayStatus::Pending, 0, 0, Some(900), None)
    );
    assert!(tries.is_empty());
    // Its lease ended: due at its new time, while the other stays leased.
    assert!(claim(&store, "a", 899, 2_000).await.is_empty());
    assert_eq!(claim(&store, "a", 900, 2_000).await, [key(1)]);
    // A settled message is not brought back by a late postpone.
    record(
        &store,
        attempt(2, 1, 20, RelayOutcome::Delivered, Some(200)),
        RelayNext::Delivered,
    )
    .await;
    store.commit(vec![postpone(2, 3_000)]).await.unwrap();
    let (m, _) = load(&store, 2).await;
    assert_eq!((m.status, m.due_at), (RelayStatus::Delivered, None));
}

#[tokio::test]
async fn an_answer_body_is_kept_to_its_slice_at_a_character_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let d = delivery(&store, "d").await;
    enqueue(&store, vec![message(1, "r", "a", d, 10)]).await;
    // "é" is two bytes, and the second would be the slice's 1025th.
    let mut long = attempt(1, 1, 10, RelayOutcome::Failed, Some(500));
    long.body = Some(format!(
        "{}é{}",
        "a".repeat(ANSWER_SLICE_BYTES - 1),
        "b".repeat(500)
    ));
    record(
        &store,
        long,
        RelayNext::Retry {
            due_at: 20,
            tries: 1,
        },
    )
    .await;
    let mut exact = attempt(1, 2, 20, RelayOutcome::Failed, Some(500));
    exact.body = Some("c".repeat(ANSWER_SLICE_BYTES));
    record(
        &store,
        exact,
        RelayNext::Retry {
            due_at: 30,
            tries: 2,
        },
    )
    .await;
    let (_, tries) = load(&store, 1).await;
    assert_eq!(
        tries[0].body.as_deref(),
        Some("a".repeat(ANSWER_SLICE_BYTES - 1).as_str())
    );
    assert_eq!(
        tries[1].body.as_deref(),
        Some("c".repeat(ANSWER_SLICE_BYTES).as_str())
    );
}

/// The stats of `relay`/`target`, if the store lists it.
async fn target_stats(store: &SqliteStore, relay: &str, target: &str) -> Option<RelayTargetStats> {
    store
        .relay_targets()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.relay == relay && t.target == target)
}

fn disable(target: &str, at: Millis, reason: &str) -> Change {
    Change::RelayTargetDisabled {
        relay: "r".into(),
        target: target.into(),
        at,
        reason: reason.into(),
    }
}

#[tokio::test]
async fn a_disabled_target_kills_its_pending_messages_and_keeps_the_first_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let d = delivery(&store, "d").await;
    enqueue(
        &store,
        vec![
            message(1, "r", "a", d, 10),
            message(2, "r", "a", d, 10),
            message(3, "r", "a", d, 10),
            message(4, "r", "b", d, 10),
        ],
    )
    .await;
    assert_eq!(claim(&store, "a", 10, 1_000).await.len(), 3);
    record(
        &store,
        attempt(1, 1, 10, RelayOutcome::Delivered, Some(200)),
        RelayNext::Delivered,
    )
    .await;
    store
        .commit(vec![disable("a", 100, "410 Gone for msg_2")])
        .await
        .unwrap();
    for n in [2, 3] {
        let (m, _) = load(&store, n).await;
        assert_eq!(
            (m.status, m.finished_at, m.due_at, m.message.as_deref()),
            (
                RelayStatus::Dead,
                Some(100),
                None,
                Some("410 Gone for msg_2")
            )
        );
    }
    assert_eq!(load(&store, 1).await.0.status, RelayStatus::Delivered);
    assert_eq!(load(&store, 4).await.0.status, RelayStatus::Pending);
    let a = target_stats(&store, "r", "a").await.unwrap();
    assert_eq!(
        (
            a.pending,
            a.delivered,
            a.dead,
            a.disabled_at,
            a.disabled_reason.as_deref()
        ),
        (0, 1, 2, Some(100), Some("410 Gone for msg_2"))
    );
    assert_eq!(
        target_stats(&store, "r", "b").await.unwrap().disabled_at,
        None
    );
    // A message that came since dies when the disabling is applied again; the mark keeps
    // the first time and reason.
    enqueue(&store, vec![message(5, "r", "a", d, 150)]).await;
    store
        .commit(vec![disable("a", 200, "target a is disabled")])
        .await
        .unwrap();
    let (m, _) = load(&store, 5).await;
    assert_eq!(
        (m.status, m.finished_at, m.message.as_deref()),
        (RelayStatus::Dead, Some(200), Some("target a is disabled"))
    );
    let a = target_stats(&store, "r", "a").await.unwrap();
    assert_eq!(
        (a.dead, a.disabled_at, a.disabled_reason.as_deref()),
        (3, Some(100), Some("410 Gone for msg_2"))
    );
    // Its messages' leases ended with them: nothing is claimable.
    assert!(claim(&store, "a", 5_000, 6_000).await.is_empty());
}

#[tokio::test]
async fn a_replay_of_one_message_goes_on_numbering_its_tries_and_enables_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let d = delivery(&store, "d").await;
    enqueue(
        &store,
        vec![message(1, "r", "a", d, 10), message(2, "r", "a", d, 10)],
    )
    .await;
    record(
        &store,
        attempt(1, 1, 10, RelayOutcome::Failed, Some(500)),
        RelayNext::Retry {
            due_at: 20,
            tries: 1,
        },
    )
    .await;
    record(
        &store,
        attempt(1, 2, 20, RelayOutcome::Gone, Some(410)),
        RelayNext::Dead {
            reason: "410 Gone".into(),
        },
    )
    .await;
    store
        .commit(vec![disable("a", 30, "410 Gone")])
        .await
        .unwrap();
    assert_eq!(load(&store, 2).await.0.status, RelayStatus::Dead);
    let one = RelayReplay::Message(key(1));
    assert_eq!(store.replay_relays(&one, 1_000).await.unwrap(), 1);
    let (m, tries) = load(&store, 1).await;
    assert_eq!(
        (m.status, m.tries, m.attempts, m.due_at, m.finished_at),
        (RelayStatus::Pending, 0, 2, Some(1_000), None)
    );
    assert_eq!(tries.len(), 2, "its past tries stay");
    // The target is enabled again; its other dead message is not replayed with it.
    let a = target_stats(&store, "r", "a").await.unwrap();
    assert_eq!(
        (a.disabled_at, a.disabled_reason, a.pending, a.dead),
        (None, None, 1, 1)
    );
    assert_eq!(load(&store, 2).await.0.status, RelayStatus::Dead);
    // A pending message is left as it is.
    assert_eq!(store.replay_relays(&one, 2_000).await.unwrap(), 0);
    assert_eq!(load(&store, 1).await.0.due_at, Some(1_000));
    assert_eq!(
        store
            .replay_relays(&RelayReplay::Message(key(99)), 2_000)
            .await
            .unwrap(),
        0
    );
    // The next try is the third.
    let again = store
        .claim_relays("r", "a", 1_000, 10, 2_000, false)
        .await
        .unwrap();
    assert_eq!((again[0].attempts, again[0].tries), (2, 0));
    record(
        &store,
        attempt(1, 3, 1_000, RelayOutcome::Delivered, Some(200)),
        RelayNext::Delivered,
    )
    .await;
    let (m, tries) = load(&store, 1).await;
    assert_eq!((m.status, m.attempts), (RelayStatus::Delivered, 3));
    assert_eq!(
        tries.iter().map(|t| t.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
}

#[tokio::test]
async fn a_replay_selects_by_target_status_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let d = delivery(&store, "d").await;
    // Made at 100 × n: 1-4 to target a, 5-6 to b, 7 to another relay.
    let targets = ["a", "a", "a", "a", "b", "b"];
    let mut messages: Vec<_> = (1..=6)
        .map(|n| message(n, "r", targets[n as usize - 1], d, 100 * Millis::from(n)))
        .collect();
    messages.push(message(7, "other", "a", d, 700));
    enqueue(&store, messages).await;
    let dead = |n| Change::RelayAttempt {
        attempt: attempt(n, 1, 1_000, RelayOutcome::Failed, Some(500)),
        next: RelayNext::Dead {
            reason: "gave up".into(),
        },
    };
    let delivered = |n| Change::RelayAttempt {
        attempt: attempt(n, 1, 1_000, RelayOutcome::Delivered, Some(200)),
        next: RelayNext::Delivered,
    };
    // 1 dead, 2 delivered, 3 dead, 4 pending, 5 dead, 6 delivered, 7 dead.
    store
        .commit(vec![
            dead(1),
            delivered(2),
            dead(3),
            dead(5),
            delivered(6),
            dead(7),
        ])
        .await
        .unwrap();
    let status = |m: RelayMessageRecord| m.status;
    let statuses = async |store: &SqliteStore| {
        let mut all = Vec::new();
        for n in 1..=7 {
            all.push(status(load(store, n).await.0));
        }
        all
    };
    use RelayStatus::{Dead, Delivered, Pending};
    let matching = |target: Option<&str>, status, since, until| RelayReplay::Matching {
        relay: "r".into(),
        target: target.map(Into::into),
        status,
        since,
        until,
    };
    // Asking for pending messages selects none.
    assert_eq!(
        store
            .replay_relays(&matching(None, Some(Pending), None, None), 2_000)
            .await
            .unwrap(),
        0
    );
    // Every dead message of target a.
    assert_eq!(
        store
            .replay_relays(&matching(Some("a"), Some(Dead), None, None), 2_000)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        statuses(&store).await,
        [Pending, Delivered, Pending, Pending, Dead, Delivered, Dead]
    );
    assert_eq!(load(&store, 3).await.0.due_at, Some(2_000));
    // A time range across the relay's targets, delivered and dead alike: [200, 600) holds
    // 2 (delivered), 3 and 4 (pending, untouched) and 5 (dead).
    assert_eq!(
        store
            .replay_relays(&matching(None, None, Some(200), Some(600)), 3_000)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        statuses(&store).await,
        [Pending, Pending, Pending, Pending, Pending, Delivered, Dead]
    );
    let (two, _) = load(&store, 2).await;
    assert_eq!(
        (two.due_at, two.finished_at, two.attempts),
        (Some(3_000), None, 1)
    );
    assert_eq!(
        load(&store, 3).await.0.due_at,
        Some(2_000),
        "pending untouched"
    );
    // The bounds: made at `until` is out, at `since` is in.
    assert_eq!(
        store
            .replay_relays(
                &matching(Some("b"), Some(Delivered), Some(600), Some(600)),
                4_000
            )
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .replay_relays(
                &matching(Some("b"), Some(Delivered), Some(600), Some(601)),
                4_000
            )
            .await
            .unwrap(),
        1
    );
    // The other relay was never selected.
    assert_eq!(load(&store, 7).await.0.status, Dead);
}

#[tokio::test]
async fn messages_are_listed_newest_first_by_relay_target_and_status_in_pages() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let d = delivery(&store, "d").await;
    // Keys 1..=9: r/a, r/b, other/a in turn.
    let places = [("r", "a"), ("r", "b"), ("other", "a")];
    enqueue(
        &store,
        (1..=9)
            .map(|n| {
                let (relay, target) = places[(n as usize - 1) % 3];
                message(n, relay, target, d, Millis::from(n))
            })
            .collect(),
    )
    .await;
    // 4 (r/a) delivered, 5 (r/b) and 7 (r/a) dead.
    record(
        &store,
        attempt(4, 1, 20, RelayOutcome::Delivered, Some(200)),
        RelayNext::Delivered,
    )
    .await;
    for n in [5, 7] {
        record(
            &store,
            attempt(n, 1, 20, RelayOutcome::Failed, Some(500)),
            RelayNext::Dead {
                reason: "gave up".into(),
            },
        )
        .await;
    }
    let list =
        async |relay: Option<&str>, target: Option<&str>, status, before: Option<u32>, limit| {
            let filter = RelayMessageFilter {
                relay: relay.map(Into::into),
                target: target.map(Into::into),
                status,
                before: before.map(key),
                limit,
            };
            listed(&store.list_relay_messages(&filter).await.unwrap())
        };
    let keys = |ns: &[u32]| ns.iter().copied().map(key).collect::<Vec<_>>();
    assert_eq!(
        list(None, None, None, None, 0).await,
        keys(&[9, 8, 7, 6, 5, 4, 3, 2, 1])
    );
    assert_eq!(
        list(Some("r"), None, None, None, 0).await,
        keys(&[8, 7, 5, 4, 2, 1])
    );
    assert_eq!(
        list(Some("r"), Some("a"), None, None, 0).await,
        keys(&[7, 4, 1])
    );
    assert_eq!(
        list(Some("r"), None, Some(RelayStatus::Dead), None, 0).await,
        keys(&[7, 5])
    );
    assert_eq!(
        list(Some("r"), Some("a"), Some(RelayStatus::Pending), None, 0).await,
        keys(&[1])
    );
    assert_eq!(
        list(None, None, Some(RelayStatus::Pending), None, 0).await,
        keys(&[9, 8, 6, 3, 2, 1])
    );
    assert_eq!(
        list(None, Some("a"), None, None, 0).await,
        keys(&[9, 7, 6, 4, 3, 1])
    );
    assert!(list(Some("nope"), None, None, None, 0).await.is_empty());
    // Pages of two through the relay's messages in any status.
    assert_eq!(list(Some("r"), None, None, None, 2).await, keys(&[8, 7]));
    assert_eq!(list(Some("r"), None, None, Some(7), 2).await, keys(&[5, 4]));
    assert_eq!(list(Some("r"), None, None, Some(4), 2).await, keys(&[2, 1]));
    assert!(list(Some("r"), None, None, Some(1), 2).await.is_empty());
    assert_eq!(list(None, None, None, Some(3), 0).await, keys(&[2, 1]));
    // A listed message carries what is stored of it.
    let dead = store
        .list_relay_messages(&RelayMessageFilter {
            relay: Some("r".into()),
            target: Some("a".into()),
            status: Some(RelayStatus::Dead),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dead, [load(&store, 7).await.0]);
    assert_eq!(
        (
            dead[0].delivery,
            dead[0].created_at,
            dead[0].message.as_deref()
        ),
        (d, 7, Some("gave up"))
    );
}

#[tokio::test]
async fn a_page_is_fifty_unless_asked_and_at_most_a_thousand() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let d = delivery(&store, "d").await;
    enqueue(
        &store,
        (1..=1_005).map(|n| message(n, "r", "a", d, 1)).collect(),
    )
    .await;
    let count = async |limit| {
        store
            .list_relay_messages(&RelayMessageFilter {
                relay: Some("r".into()),
                limit,
                ..Default::default()
            })
            .await
            .unwrap()
            .len()
    };
    assert_eq!(
        (count(0).await, count(7).await, count(5_000).await),
        (50, 7, 1_000)
    );
}

#[tokio::test]
async fn an_unknown_message_loads_as_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    assert_eq!(store.load_relay_message(&key(1)).await.unwrap(), None);
}

#[tokio::test]
async fn targets_are_counted_by_status_with_their_oldest_pending_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    assert!(store.relay_targets().await.unwrap().is_empty());
    let d = delivery(&store, "d").await;
    enqueue(
        &store,
        vec![
            message(1, "r", "b", d, 50),
            message(2, "r", "b", d, 30),
            message(3, "r", "b", d, 70),
            message(4, "r", "a", d, 10),
            message(5, "q", "z", d, 90),
        ],
    )
    .await;
    // b: 2 (the oldest pending) delivered, 1 dead; a: its only message delivered.
    record(
        &store,
        attempt(2, 1, 100, RelayOutcome::Delivered, Some(200)),
        RelayNext::Delivered,
    )
    .await;
    record(
        &store,
        attempt(4, 1, 100, RelayOutcome::Delivered, Some(200)),
        RelayNext::Delivered,
    )
    .await;
    record(
        &store,
        attempt(1, 1, 100, RelayOutcome::Failed, Some(500)),
        RelayNext::Dead {
            reason: "gave up".into(),
        },
    )
    .await;
    let stats = store.relay_targets().await.unwrap();
    let summary: Vec<_> = stats
        .iter()
        .map(|t| {
            (
                t.relay.as_str(),
                t.target.as_str(),
                t.pending,
                t.delivered,
                t.dead,
                t.oldest_pending_at,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("q", "z", 1, 0, 0, Some(90)),
            ("r", "a", 0, 1, 0, None),
            ("r", "b", 1, 1, 1, Some(70)),
        ]
    );
    assert_eq!(
        store.relay_oldest_pending().await.unwrap(),
        [("q".into(), "z".into(), 90), ("r".into(), "b".into(), 70)]
    );
    // Retried messages count as pending, with their age from when they were made.
    enqueue(&store, vec![message(6, "r", "b", d, 60)]).await;
    record(
        &store,
        attempt(6, 1, 100, RelayOutcome::Failed, Some(500)),
        RelayNext::Retry {
            due_at: 900,
            tries: 1,
        },
    )
    .await;
    let b = target_stats(&store, "r", "b").await.unwrap();
    assert_eq!((b.pending, b.oldest_pending_at), (2, Some(60)));
}

#[tokio::test]
async fn a_target_disabled_without_messages_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store.commit(vec![disable("gone", 5, "410")]).await.unwrap();
    assert_eq!(
        store.relay_targets().await.unwrap(),
        [RelayTargetStats {
            relay: "r".into(),
            target: "gone".into(),
            pending: 0,
            delivered: 0,
            dead: 0,
            oldest_pending_at: None,
            disabled_at: Some(5),
            disabled_reason: Some("410".into()),
        }]
    );
}

#[tokio::test]
async fn messages_tries_and_disabled_marks_survive_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let d;
    {
        let store = open(&dir).await;
        d = delivery(&store, "d").await;
        enqueue(
            &store,
            vec![message(1, "r", "a", d, 10), message(2, "r", "b", d, 10)],
        )
        .await;
        assert_eq!(claim(&store, "a", 10, 1_000_000).await, [key(1)]);
        record(
            &store,
            attempt(1, 1, 10, RelayOutcome::RateLimited, Some(429)),
            RelayNext::Retry {
                due_at: 40,
                tries: 1,
            },
        )
        .await;
        assert_eq!(claim(&store, "a", 40, 1_000_000).await, [key(1)]);
        store.commit(vec![disable("b", 20, "410")]).await.unwrap();
    }
    let store = open(&dir).await;
    let (m, tries) = load(&store, 1).await;
    assert_eq!(
        (m.delivery, m.status, m.tries, m.attempts, m.due_at),
        (d, RelayStatus::Pending, 1, 1, Some(40))
    );
    assert_eq!(
        tries,
        [attempt(1, 1, 10, RelayOutcome::RateLimited, Some(429))]
    );
    assert_eq!(
        target_stats(&store, "r", "b").await.unwrap().disabled_at,
        Some(20)
    );
    // The lease of the process that died holds until it is released.
    assert!(claim(&store, "a", 50, 1_000).await.is_empty());
    store.release_relay_leases().await.unwrap();
    assert_eq!(claim(&store, "a", 50, 1_000).await, [key(1)]);
}

/// The plan SQLite picks for `sql`, one step a line; every parameter is bound to `args`
/// by name, or to 1 when it is positional.
fn plan(conn: &Connection, sql: &str, args: &[(&str, &dyn ToSql)]) -> String {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let steps = if args.is_empty() {
        let ones = vec![1; stmt.parameter_count()];
        stmt.query_map(rusqlite::params_from_iter(ones), |row| {
            row.get::<_, String>(3)
        })
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
    } else {
        stmt.query_map(args, |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
    };
    steps.unwrap().join("\n")
}

/// The queries that run as often as messages arrive, or over a table that only grows, read
/// the index made for them in the order they need: no scan of the table, and no sort but
/// of a page.
#[test]
fn the_relay_queries_follow_their_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join("plan.db")).unwrap();
    migrate(&mut conn).unwrap();
    let pending = "INDEX relay_messages_pending";
    let cases: [(String, &str, &str, bool); 7] = [
        (claim_sql(false), "SEARCH m USING", pending, false),
        // A target in order reads its pending range in key (= delivery) order.
        (
            claim_sql(true),
            "SEARCH m USING",
            "INDEX relay_messages_by_target (relay=? AND target=? AND status=?)",
            false,
        ),
        (
            NEXT_DUE_SQL.into(),
            "SEARCH relay_messages USING",
            pending,
            false,
        ),
        (
            RELEASE_SQL.into(),
            "SCAN relay_messages USING",
            pending,
            false,
        ),
        (
            OLDEST_PENDING_SQL.into(),
            "SCAN relay_messages USING",
            "COVERING INDEX relay_messages_pending",
            false,
        ),
        (
            COUNTS_SQL.into(),
            "SCAN relay_messages USING",
            "COVERING INDEX relay_messages_by_target",
            false,
        ),
        (
            KILL_PENDING_SQL.into(),
            "SEARCH relay_messages USING",
            "INDEX relay_messages_by_target (relay=? AND target=? AND status=?)",
            false,
        ),
    ];
    for (sql, access, index, sorts) in cases {
        let steps = plan(&conn, &sql, &[]);
        assert!(
            steps.starts_with(&format!("{access} {index}")),
            "{sql}\n{steps}"
        );
        assert_eq!(steps.contains("TEMP B-TREE"), sorts, "{sql}\n{steps}");
    }
    let limit = 50;
    let listings = [
        (
            Some("r"),
            Some("a"),
            Some(RelayStatus::Dead),
            "relay_messages_by_target",
        ),
        (Some("r"), Some("a"), None, "relay_messages_by_target"),
        (
            Some("r"),
            None,
            Some(RelayStatus::Dead),
            "relay_messages_by_relay",
        ),
        (Some("r"), None, None, "relay_messages_by_relay"),
    ];
    for (relay, target, status, index) in listings {
        let filter = RelayMessageFilter {
            relay: relay.map(Into::into),
            target: target.map(Into::into),
            status,
            before: Some(key(9)),
            limit,
        };
        let (sql, args) = list_query(&filter, &limit);
        let steps = plan(&conn, &sql, &args);
        let searches: Vec<_> = steps.lines().filter(|s| s.starts_with("SEARCH")).collect();
        assert_eq!(
            searches.len(),
            if status.is_some() { 1 } else { 3 },
            "{filter:?}:\n{steps}"
        );
        for search in searches {
            assert!(
                search.contains(index) && search.contains("status=? AND key<?"),
                "{filter:?}:\n{steps}"
            );
        }
        assert!(
            !steps.contains("SCAN relay_messages"),
            "{filter:?}:\n{steps}"
        );
        // One status is read in order; the pages of three are sorted for their merge (each
        // at most a page long).
        let sorts = steps.matches("TEMP B-TREE").count();
        assert_eq!(
            sorts,
            if status.is_some() { 0 } else { 3 },
            "{filter:?}:\n{steps}"
        );
    }
}
