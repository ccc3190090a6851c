//! The relay queue's contract: claims and leases, tries, postponing, disabled targets,
//! replays, listings and counts, and durability, on every backend; then what only a shared
//! store does (two replicas never claim one message; a try of a message taken over is
//! fenced).
//!
//! A shared store differs where its leases belong to other replicas too: giving leases back
//! at start clears nothing, and a leased message is due for a claim when its lease ends.

use super::{Backend, every_backend};
use crate::relay::ANSWER_SLICE_BYTES;
use crate::*;

/// The store's relay queue.
fn q(store: &dyn Store) -> &dyn RelayStore {
    store.relays().expect("the store has a relay queue")
}

/// A message key whose order follows `n`, as a UUIDv7's follows time.
fn key(n: u32) -> String {
    format!("msg_{n:032x}")
}

/// A stored delivery's public id, with a body and headers its relay messages carry.
async fn delivery(store: &dyn Store, id: &str) -> i64 {
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
async fn enqueue(store: &dyn Store, messages: Vec<NewRelayMessage>) {
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
async fn record(store: &dyn Store, attempt: RelayAttemptRecord, next: RelayNext) {
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
async fn load(store: &dyn Store, n: u32) -> (RelayMessageRecord, Vec<RelayAttemptRecord>) {
    q(store)
        .load_relay_message(&key(n))
        .await
        .unwrap()
        .expect("the message")
}

/// Claims up to 10 of `relay`/`target`'s due messages at `now`, leased until `lease`.
async fn claim(store: &dyn Store, target: &str, now: Millis, lease: Millis) -> Vec<String> {
    keys(
        &q(store)
            .claim_relays("r", target, now, 10, lease, false)
            .await
            .unwrap(),
    )
}

async fn a_claim_leases_due_messages_of_one_target_with_their_deliveries(b: Backend) {
    let store = &*b.store;
    let d1 = delivery(store, "d1").await;
    let d2 = delivery(store, "d2").await;
    let mut later = message(3, "r", "a", d2, 100);
    later.due_at = 500;
    enqueue(
        store,
        vec![
            message(1, "r", "a", d1, 20),
            message(2, "r", "a", d2, 10),
            later,
            message(4, "r", "b", d1, 5),
            message(5, "other", "a", d1, 5),
        ],
    )
    .await;
    assert_eq!(
        q(store).next_relay_due("r", "a", 0).await.unwrap(),
        Some(10)
    );
    assert_eq!(q(store).next_relay_due("r", "c", 0).await.unwrap(), None);
    // Not due yet: nothing.
    assert!(claim(store, "a", 9, 1_000).await.is_empty());
    let claimed = q(store)
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
    assert!(claim(store, "a", 60, 2_000).await.is_empty());
    assert_eq!(
        q(store).next_relay_due("r", "a", 60).await.unwrap(),
        Some(500)
    );
    // Due but still leased at the lease's last instant; claimable after it.
    assert_eq!(claim(store, "a", 1_000, 2_000).await, [key(3)]);
    assert_eq!(claim(store, "a", 1_001, 2_000).await, [key(2), key(1)]);
    // A limit takes the oldest due.
    assert_eq!(
        keys(
            &q(store)
                .claim_relays("r", "a", 5_000, 1, 6_000, false)
                .await
                .unwrap()
        ),
        [key(2)]
    );
}

async fn an_ordered_claim_takes_the_oldest_by_key_even_when_not_due(b: Backend) {
    let store = &*b.store;
    let d1 = delivery(store, "d1").await;
    let d2 = delivery(store, "d2").await;
    let d3 = delivery(store, "d3").await;
    // Keys are made as deliveries are matched, so in their order; due times are not: the
    // first delivery's message waits for a retry.
    let mut waiting = message(1, "r", "a", d1, 30);
    waiting.due_at = 900;
    enqueue(
        store,
        vec![
            waiting,
            message(2, "r", "a", d2, 20),
            message(3, "r", "a", d3, 10),
        ],
    )
    .await;
    let ordered = q(store)
        .claim_relays("r", "a", 50, 2, 1_000, true)
        .await
        .unwrap();
    assert_eq!(keys(&ordered), [key(1), key(2)]);
    assert_eq!(ordered[0].due_at, 900, "the caller waits for it");
    let after = keys(
        &q(store)
            .claim_relays("r", "a", 50, 10, 1_000, true)
            .await
            .unwrap(),
    );
    if store.shared() {
        // Another replica must not send the third while the head is out: nothing, until
        // the head's lease ends.
        assert!(after.is_empty());
        assert_eq!(
            q(store).next_relay_due("r", "a", 50).await.unwrap(),
            Some(1_001)
        );
        assert_eq!(
            keys(
                &q(store)
                    .claim_relays("r", "a", 1_001, 10, 2_000, true)
                    .await
                    .unwrap()
            ),
            [key(1), key(2), key(3)]
        );
    } else {
        assert_eq!(after, [key(3)]);
    }
}

async fn a_message_handed_over_leased_is_claimed_only_when_its_lease_ends_or_is_released(
    b: Backend,
) {
    let store = &*b.store;
    let d = delivery(store, "d").await;
    let mut handed = message(1, "r", "a", d, 10);
    handed.lease_until = Some(100);
    enqueue(store, vec![handed, message(2, "r", "a", d, 10)]).await;
    assert_eq!(claim(store, "a", 50, 5_000).await, [key(2)]);
    assert_eq!(
        q(store).next_relay_due("r", "a", 101).await.unwrap(),
        Some(10)
    );
    // A shared store's leases may be other replicas': the handed one is due for a claim
    // when its lease ends, and giving leases back clears none.
    let due = q(store).next_relay_due("r", "a", 50).await.unwrap();
    q(store).release_relay_leases().await.unwrap();
    if store.shared() {
        assert_eq!(due, Some(101));
        assert!(claim(store, "a", 50, 5_000).await.is_empty());
        assert_eq!(claim(store, "a", 101, 5_000).await, [key(1)]);
    } else {
        assert_eq!(due, None);
        // A dispatcher starting over with the store to itself takes back every lease.
        assert_eq!(claim(store, "a", 50, 5_000).await, [key(1), key(2)]);
    }
    // Delivered ones hold no lease to give back and stay delivered.
    record(
        store,
        attempt(1, 1, 60, RelayOutcome::Delivered, Some(200)),
        RelayNext::Delivered,
    )
    .await;
    q(store).release_relay_leases().await.unwrap();
    assert_eq!(claim(store, "a", 5_001, 9_000).await, [key(2)]);
    assert_eq!(load(store, 1).await.0.status, RelayStatus::Delivered);
}

async fn a_retry_moves_the_due_time_and_a_success_ends_the_message(b: Backend) {
    let store = &*b.store;
    let d = delivery(store, "d").await;
    enqueue(store, vec![message(1, "r", "a", d, 10)]).await;
    assert_eq!(claim(store, "a", 10, 1_000).await, [key(1)]);
    record(
        store,
        attempt(1, 1, 10, RelayOutcome::Failed, Some(500)),
        RelayNext::Retry {
            due_at: 5_010,
            tries: 1,
        },
    )
    .await;
    let (m, tries) = load(store, 1).await;
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
        q(store).next_relay_due("r", "a", 20).await.unwrap(),
        Some(5_010)
    );
    assert!(claim(store, "a", 5_009, 9_000).await.is_empty());
    let again = q(store)
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
        store,
        attempt(1, 2, 5_020, RelayOutcome::Delivered, Some(204)),
        RelayNext::Delivered,
    )
    .await;
    let (m, tries) = load(store, 1).await;
    assert_eq!(
        (m.status, m.tries, m.attempts, m.due_at, m.finished_at),
        (RelayStatus::Delivered, 1, 2, None, Some(5_030))
    );
    assert_eq!(
        (m.last_outcome, m.last_code, m.message),
        (Some(RelayOutcome::Delivered), Some(204), None)
    );
    assert_eq!(tries.iter().map(|t| t.attempt).collect::<Vec<_>>(), [1, 2]);
    assert!(claim(store, "a", 99_999, 100_000).await.is_empty());
    assert_eq!(
        q(store).next_relay_due("r", "a", 99_999).await.unwrap(),
        None
    );
    // A try that ends after the message was settled is kept, and settles nothing more.
    record(
        store,
        attempt(1, 3, 6_000, RelayOutcome::Failed, Some(502)),
        RelayNext::Retry {
            due_at: 7_000,
            tries: 2,
        },
    )
    .await;
    let (m, tries) = load(store, 1).await;
    assert_eq!(
        (m.status, m.attempts, m.tries),
        (RelayStatus::Delivered, 2, 1)
    );
    assert_eq!(tries.len(), 3);
}

async fn a_retry_says_its_error_and_the_last_try_kills_the_message(b: Backend) {
    let store = &*b.store;
    let d = delivery(store, "d").await;
    enqueue(store, vec![message(1, "r", "a", d, 10)]).await;
    let mut timeout = attempt(1, 1, 10, RelayOutcome::Timeout, None);
    timeout.error = Some("no answer within 5s".into());
    record(
        store,
        timeout,
        RelayNext::Retry {
            due_at: 100,
            tries: 1,
        },
    )
    .await;
    assert_eq!(
        load(store, 1).await.0.message.as_deref(),
        Some("no answer within 5s")
    );
    // With neither an error nor a code, the outcome says what happened.
    record(
        store,
        attempt(1, 2, 100, RelayOutcome::Connection, None),
        RelayNext::Retry {
            due_at: 200,
            tries: 2,
        },
    )
    .await;
    assert_eq!(
        load(store, 1).await.0.message.as_deref(),
        Some("connection")
    );
    record(
        store,
        attempt(1, 3, 200, RelayOutcome::Failed, Some(503)),
        RelayNext::Dead {
            reason: "503 on the last of 3 tries".into(),
        },
    )
    .await;
    let (m, tries) = load(store, 1).await;
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
    assert!(claim(store, "a", 99_999, 100_000).await.is_empty());
}

async fn a_postponed_message_is_due_later_without_a_try_counted(b: Backend) {
    let store = &*b.store;
    let d = delivery(store, "d").await;
    enqueue(
        store,
        vec![message(1, "r", "a", d, 10), message(2, "r", "a", d, 10)],
    )
    .await;
    assert_eq!(claim(store, "a", 10, 1_000).await, [key(1), key(2)]);
    let postpone = |n, due_at| Change::RelayPostpone {
        key: key(n),
        due_at,
    };
    store.commit(vec![postpone(1, 900)]).await.unwrap();
    let (m, tries) = load(store, 1).await;
    assert_eq!(
        (m.status, m.tries, m.attempts, m.due_at, m.last_outcome),
        (RelayStatus::Pending, 0, 0, Some(900), None)
    );
    assert!(tries.is_empty());
    // Its lease ended: due at its new time, while the other stays leased.
    assert!(claim(store, "a", 899, 2_000).await.is_empty());
    assert_eq!(claim(store, "a", 900, 2_000).await, [key(1)]);
    // A settled message is not brought back by a late postpone.
    record(
        store,
        attempt(2, 1, 20, RelayOutcome::Delivered, Some(200)),
        RelayNext::Delivered,
    )
    .await;
    store.commit(vec![postpone(2, 3_000)]).await.unwrap();
    let (m, _) = load(store, 2).await;
    assert_eq!((m.status, m.due_at), (RelayStatus::Delivered, None));
}

async fn an_answer_body_is_kept_to_its_slice_at_a_character_boundary(b: Backend) {
    let store = &*b.store;
    let d = delivery(store, "d").await;
    enqueue(store, vec![message(1, "r", "a", d, 10)]).await;
    // "é" is two bytes, and the second would be the slice's 1025th.
    let mut long = attempt(1, 1, 10, RelayOutcome::Failed, Some(500));
    long.body = Some(format!(
        "{}é{}",
        "a".repeat(ANSWER_SLICE_BYTES - 1),
        "b".repeat(500)
    ));
    record(
        store,
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
        store,
        exact,
        RelayNext::Retry {
            due_at: 30,
            tries: 2,
        },
    )
    .await;
    let (_, tries) = load(store, 1).await;
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
async fn target_stats(store: &dyn Store, relay: &str, target: &str) -> Option<RelayTargetStats> {
    q(store)
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

async fn a_disabled_target_kills_its_pending_messages_and_keeps_the_first_reason(b: Backend) {
    let store = &*b.store;
    let d = delivery(store, "d").await;
    enqueue(
        store,
        vec![
            message(1, "r", "a", d, 10),
            message(2, "r", "a", d, 10),
            message(3, "r", "a", d, 10),
            message(4, "r", "b", d, 10),
        ],
    )
    .await;
    assert_eq!(claim(store, "a", 10, 1_000).await.len(), 3);
    record(
        store,
        attempt(1, 1, 10, RelayOutcome::Delivered, Some(200)),
        RelayNext::Delivered,
    )
    .await;
    store
        .commit(vec![disable("a", 100, "410 Gone for msg_2")])
        .await
        .unwrap();
    for n in [2, 3] {
        let (m, _) = load(store, n).await;
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
    assert_eq!(load(store, 1).await.0.status, RelayStatus::Delivered);
    assert_eq!(load(store, 4).await.0.status, RelayStatus::Pending);
    let a = target_stats(store, "r", "a").await.unwrap();
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
        target_stats(store, "r", "b").await.unwrap().disabled_at,
        None
    );
    // A message that came since dies when the disabling is applied again; the mark keeps
    // the first time and reason.
    enqueue(store, vec![message(5, "r", "a", d, 150)]).await;
    store
        .commit(vec![disable("a", 200, "target a is disabled")])
        .await
        .unwrap();
    let (m, _) = load(store, 5).await;
    assert_eq!(
        (m.status, m.finished_at, m.message.as_deref()),
        (RelayStatus::Dead, Some(200), Some("target a is disabled"))
    );
    let a = target_stats(store, "r", "a").await.unwrap();
    assert_eq!(
        (a.dead, a.disabled_at, a.disabled_reason.as_deref()),
        (3, Some(100), Some("410 Gone for msg_2"))
    );
    // Its messages' leases ended with them: nothing is claimable.
    assert!(claim(store, "a", 5_000, 6_000).await.is_empty());
}

async fn a_replay_of_one_message_goes_on_numbering_its_tries_and_enables_its_target(b: Backend) {
    let store = &*b.store;
    let d = delivery(store, "d").await;
    enqueue(
        store,
        vec![message(1, "r", "a", d, 10), message(2, "r", "a", d, 10)],
    )
    .await;
    record(
        store,
        attempt(1, 1, 10, RelayOutcome::Failed, Some(500)),
        RelayNext::Retry {
            due_at: 20,
            tries: 1,
        },
    )
    .await;
    record(
        store,
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
    assert_eq!(load(store, 2).await.0.status, RelayStatus::Dead);
    let one = RelayReplay::Message(key(1));
    assert_eq!(q(store).replay_relays(&one, 1_000).await.unwrap(), 1);
    let (m, tries) = load(store, 1).await;
    assert_eq!(
        (m.status, m.tries, m.attempts, m.due_at, m.finished_at),
        (RelayStatus::Pending, 0, 2, Some(1_000), None)
    );
    assert_eq!(tries.len(), 2, "its past tries stay");
    // The target is enabled again; its other dead message is not replayed with it.
    let a = target_stats(store, "r", "a").await.unwrap();
    assert_eq!(
        (a.disabled_at, a.disabled_reason, a.pending, a.dead),
        (None, None, 1, 1)
    );
    assert_eq!(load(store, 2).await.0.status, RelayStatus::Dead);
    // A pending message is left as it is.
    assert_eq!(q(store).replay_relays(&one, 2_000).await.unwrap(), 0);
    assert_eq!(load(store, 1).await.0.due_at, Some(1_000));
    assert_eq!(
        q(store)
            .replay_relays(&RelayReplay::Message(key(99)), 2_000)
            .await
            .unwrap(),
        0
    );
    // The next try is the third.
    let again = q(store)
        .claim_relays("r", "a", 1_000, 10, 2_000, false)
        .await
        .unwrap();
    assert_eq!((again[0].attempts, again[0].tries), (2, 0));
    record(
        store,
        attempt(1, 3, 1_000, RelayOutcome::Delivered, Some(200)),
        RelayNext::Delivered,
    )
    .await;
    let (m, tries) = load(store, 1).await;
    assert_eq!((m.status, m.attempts), (RelayStatus::Delivered, 3));
    assert_eq!(
        tries.iter().map(|t| t.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
}

async fn a_replay_selects_by_target_status_and_time(b: Backend) {
    let store = &*b.store;
    let d = delivery(store, "d").await;
    // Made at 100 × n: 1-4 to target a, 5-6 to b, 7 to another relay.
    let targets = ["a", "a", "a", "a", "b", "b"];
    let mut messages: Vec<_> = (1..=6)
        .map(|n| message(n, "r", targets[n as usize - 1], d, 100 * Millis::from(n)))
        .collect();
    messages.push(message(7, "other", "a", d, 700));
    enqueue(store, messages).await;
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
    let statuses = async |store: &dyn Store| {
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
        q(store)
            .replay_relays(&matching(None, Some(Pending), None, None), 2_000)
            .await
            .unwrap(),
        0
    );
    // Every dead message of target a.
    assert_eq!(
        q(store)
            .replay_relays(&matching(Some("a"), Some(Dead), None, None), 2_000)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        statuses(store).await,
        [Pending, Delivered, Pending, Pending, Dead, Delivered, Dead]
    );
    assert_eq!(load(store, 3).await.0.due_at, Some(2_000));
    // A time range across the relay's targets, delivered and dead alike: [200, 600) holds
    // 2 (delivered), 3 and 4 (pending, untouched) and 5 (dead).
    assert_eq!(
        q(store)
            .replay_relays(&matching(None, None, Some(200), Some(600)), 3_000)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        statuses(store).await,
        [Pending, Pending, Pending, Pending, Pending, Delivered, Dead]
    );
    let (two, _) = load(store, 2).await;
    assert_eq!(
        (two.due_at, two.finished_at, two.attempts),
        (Some(3_000), None, 1)
    );
    assert_eq!(
        load(store, 3).await.0.due_at,
        Some(2_000),
        "pending untouched"
    );
    // The bounds: made at `until` is out, at `since` is in.
    assert_eq!(
        q(store)
            .replay_relays(
                &matching(Some("b"), Some(Delivered), Some(600), Some(600)),
                4_000
            )
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        q(store)
            .replay_relays(
                &matching(Some("b"), Some(Delivered), Some(600), Some(601)),
                4_000
            )
            .await
            .unwrap(),
        1
    );
    // The other relay was never selected.
    assert_eq!(load(store, 7).await.0.status, Dead);
}

async fn messages_are_listed_newest_first_by_relay_target_and_status_in_pages(b: Backend) {
    let store = &*b.store;
    let d = delivery(store, "d").await;
    // Keys 1..=9: r/a, r/b, other/a in turn.
    let places = [("r", "a"), ("r", "b"), ("other", "a")];
    enqueue(
        store,
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
        store,
        attempt(4, 1, 20, RelayOutcome::Delivered, Some(200)),
        RelayNext::Delivered,
    )
    .await;
    for n in [5, 7] {
        record(
            store,
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
            listed(&q(store).list_relay_messages(&filter).await.unwrap())
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
    let dead = q(store)
        .list_relay_messages(&RelayMessageFilter {
            relay: Some("r".into()),
            target: Some("a".into()),
            status: Some(RelayStatus::Dead),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dead, [load(store, 7).await.0]);
    assert_eq!(
        (
            dead[0].delivery,
            dead[0].created_at,
            dead[0].message.as_deref()
        ),
        (d, 7, Some("gave up"))
    );
}

async fn a_page_is_fifty_unless_asked_and_at_most_a_thousand(b: Backend) {
    let store = &*b.store;
    let d = delivery(store, "d").await;
    enqueue(
        store,
        (1..=1_005).map(|n| message(n, "r", "a", d, 1)).collect(),
    )
    .await;
    let count = async |limit| {
        q(store)
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

async fn an_unknown_message_loads_as_none(b: Backend) {
    let store = &*b.store;
    assert_eq!(q(store).load_relay_message(&key(1)).await.unwrap(), None);
}

async fn targets_are_counted_by_status_with_their_oldest_pending_message(b: Backend) {
    let store = &*b.store;
    assert!(q(store).relay_targets().await.unwrap().is_empty());
    let d = delivery(store, "d").await;
    enqueue(
        store,
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
        store,
        attempt(2, 1, 100, RelayOutcome::Delivered, Some(200)),
        RelayNext::Delivered,
    )
    .await;
    record(
        store,
        attempt(4, 1, 100, RelayOutcome::Delivered, Some(200)),
        RelayNext::Delivered,
    )
    .await;
    record(
        store,
        attempt(1, 1, 100, RelayOutcome::Failed, Some(500)),
        RelayNext::Dead {
            reason: "gave up".into(),
        },
    )
    .await;
    let stats = q(store).relay_targets().await.unwrap();
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
        q(store).relay_oldest_pending().await.unwrap(),
        [("q".into(), "z".into(), 90), ("r".into(), "b".into(), 70)]
    );
    // Retried messages count as pending, with their age from when they were made.
    enqueue(store, vec![message(6, "r", "b", d, 60)]).await;
    record(
        store,
        attempt(6, 1, 100, RelayOutcome::Failed, Some(500)),
        RelayNext::Retry {
            due_at: 900,
            tries: 1,
        },
    )
    .await;
    let b = target_stats(store, "r", "b").await.unwrap();
    assert_eq!((b.pending, b.oldest_pending_at), (2, Some(60)));
}

async fn a_target_disabled_without_messages_is_listed(b: Backend) {
    let store = &*b.store;
    store.commit(vec![disable("gone", 5, "410")]).await.unwrap();
    assert_eq!(
        q(store).relay_targets().await.unwrap(),
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

async fn messages_tries_and_disabled_marks_survive_reopening_the_store(b: Backend) {
    let d;
    {
        let store = &*b.store;
        d = delivery(store, "d").await;
        enqueue(
            store,
            vec![message(1, "r", "a", d, 10), message(2, "r", "b", d, 10)],
        )
        .await;
        assert_eq!(claim(store, "a", 10, 1_000_000).await, [key(1)]);
        record(
            store,
            attempt(1, 1, 10, RelayOutcome::RateLimited, Some(429)),
            RelayNext::Retry {
                due_at: 40,
                tries: 1,
            },
        )
        .await;
        assert_eq!(claim(store, "a", 40, 1_000_000).await, [key(1)]);
        store.commit(vec![disable("b", 20, "410")]).await.unwrap();
    }
    let b = b.restarted().await;
    let store = &*b.store;
    let (m, tries) = load(store, 1).await;
    assert_eq!(
        (m.delivery, m.status, m.tries, m.attempts, m.due_at),
        (d, RelayStatus::Pending, 1, 1, Some(40))
    );
    assert_eq!(
        tries,
        [attempt(1, 1, 10, RelayOutcome::RateLimited, Some(429))]
    );
    assert_eq!(
        target_stats(store, "r", "b").await.unwrap().disabled_at,
        Some(20)
    );
    // The lease of the process that died holds until it is released, or on a shared store
    // (where it may be a live replica's) until it ends.
    assert!(claim(store, "a", 50, 1_000).await.is_empty());
    q(store).release_relay_leases().await.unwrap();
    let now = if store.shared() {
        assert!(claim(store, "a", 1_000_000, 2_000_000).await.is_empty());
        1_000_001
    } else {
        50
    };
    assert_eq!(claim(store, "a", now, 2_000_000).await, [key(1)]);
}

every_backend!(
    a_claim_leases_due_messages_of_one_target_with_their_deliveries,
    an_ordered_claim_takes_the_oldest_by_key_even_when_not_due,
    a_message_handed_over_leased_is_claimed_only_when_its_lease_ends_or_is_released,
    a_retry_moves_the_due_time_and_a_success_ends_the_message,
    a_retry_says_its_error_and_the_last_try_kills_the_message,
    a_postponed_message_is_due_later_without_a_try_counted,
    an_answer_body_is_kept_to_its_slice_at_a_character_boundary,
    a_disabled_target_kills_its_pending_messages_and_keeps_the_first_reason,
    a_replay_of_one_message_goes_on_numbering_its_tries_and_enables_its_target,
    a_replay_selects_by_target_status_and_time,
    messages_are_listed_newest_first_by_relay_target_and_status_in_pages,
    a_page_is_fifty_unless_asked_and_at_most_a_thousand,
    an_unknown_message_loads_as_none,
    targets_are_counted_by_status_with_their_oldest_pending_message,
    a_target_disabled_without_messages_is_listed,
    messages_tries_and_disabled_marks_survive_reopening_the_store,
);

/// What only a shared store does: replicas on one PostgreSQL schema.
mod shared {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::contract::postgres;

    /// Claims `target`'s due messages in tens until none is left, answering their keys.
    async fn drain(store: Arc<dyn Store>, target: &'static str) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            let claimed = q(&*store)
                .claim_relays("r", target, 1_000, 3, 100_000, false)
                .await
                .unwrap();
            if claimed.is_empty() {
                return got;
            }
            got.extend(keys(&claimed));
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_never_claim_one_message() {
        let b = postgres().await;
        let (one, two) = (b.store.clone(), b.reopen().await);
        let d = delivery(&*one, "d").await;
        enqueue(
            &*one,
            (1..=90)
                .map(|n| message(n, "r", "a", d, n.into()))
                .collect(),
        )
        .await;
        let (from_one, from_two) = tokio::join!(
            tokio::spawn(drain(one.clone(), "a")),
            tokio::spawn(drain(two.clone(), "a"))
        );
        let (from_one, from_two) = (from_one.unwrap(), from_two.unwrap());
        let all: HashSet<&String> = from_one.iter().chain(&from_two).collect();
        assert_eq!(
            (all.len(), from_one.len() + from_two.len()),
            (90, 90),
            "every message claimed once"
        );
        // And each settles what it claimed, fenced by nothing.
        for (store, claimed) in [(&one, &from_one), (&two, &from_two)] {
            let changes = claimed
                .iter()
                .map(|key| Change::RelayPostpone {
                    key: key.clone(),
                    due_at: 5_000,
                })
                .collect();
            store.commit(changes).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_message_taken_over_fences_its_first_holders_try() {
        let b = postgres().await;
        let (one, two) = (b.store.clone(), b.reopen().await);
        let d = delivery(&*one, "d").await;
        // One is handed over leased to replica one, one claimed by it.
        let mut handed = message(1, "r", "a", d, 10);
        handed.lease_until = Some(100);
        enqueue(&*one, vec![handed, message(2, "r", "a", d, 10)]).await;
        assert_eq!(claim(&*one, "a", 10, 100).await, [key(2)]);
        // Replica one stalls past its leases; two takes both over.
        assert!(claim(&*two, "a", 100, 1_000).await.is_empty());
        assert_eq!(claim(&*two, "a", 101, 1_000).await, [key(1), key(2)]);
        let late = |n| Change::RelayAttempt {
            attempt: attempt(n, 1, 50, RelayOutcome::Failed, Some(500)),
            next: RelayNext::Retry {
                due_at: 60,
                tries: 1,
            },
        };
        for n in [1, 2] {
            let refused = one.commit(vec![late(n)]).await.unwrap_err();
            assert!(refused.is_fenced(), "{refused}");
        }
        // Nothing of a refused commit is written, not even alongside other changes.
        let refused = one
            .commit(vec![
                disable("b", 5, "410"),
                Change::RelayPostpone {
                    key: key(1),
                    due_at: 0,
                },
            ])
            .await
            .unwrap_err();
        assert!(refused.is_fenced(), "{refused}");
        assert_eq!(target_stats(&*two, "r", "b").await, None);
        for n in [1, 2] {
            let (m, tries) = load(&*two, n).await;
            assert_eq!((m.attempts, m.due_at, tries.len()), (0, Some(10), 0));
        }
        // The new holder's tries stand.
        record(
            &*two,
            attempt(1, 1, 150, RelayOutcome::Delivered, Some(200)),
            RelayNext::Delivered,
        )
        .await;
        assert_eq!(load(&*two, 1).await.0.status, RelayStatus::Delivered);
        // A late try of a message settled since only adds its row to the history.
        one.commit(vec![late(1)]).await.unwrap();
        let (m, tries) = load(&*two, 1).await;
        assert_eq!(
            (m.status, m.attempts, tries.len()),
            (RelayStatus::Delivered, 1, 1)
        );
    }

    #[tokio::test]
    async fn an_ordered_target_held_by_one_replica_waits_on_the_other() {
        let b = postgres().await;
        let (one, two) = (b.store.clone(), b.reopen().await);
        let d = delivery(&*one, "d").await;
        enqueue(
            &*one,
            (1..=3).map(|n| message(n, "r", "a", d, 10)).collect(),
        )
        .await;
        let head = q(&*one)
            .claim_relays("r", "a", 20, 1, 500, true)
            .await
            .unwrap();
        assert_eq!(keys(&head), [key(1)]);
        let two = &*two;
        let ordered = async |now| {
            keys(
                &q(two)
                    .claim_relays("r", "a", now, 1, now + 500, true)
                    .await
                    .unwrap(),
            )
        };
        assert!(ordered(20).await.is_empty());
        assert_eq!(
            q(two).next_relay_due("r", "a", 20).await.unwrap(),
            Some(501)
        );
        // Once the head's try is recorded, the next goes to whoever claims.
        record(
            &*one,
            attempt(1, 1, 30, RelayOutcome::Delivered, Some(200)),
            RelayNext::Delivered,
        )
        .await;
        assert_eq!(ordered(40).await, [key(2)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replay_and_a_give_back_wake_the_other_replicas() {
        let b = postgres().await;
        let (one, two) = (b.store.clone(), b.reopen().await);
        let mut relays = two.wakes(Work::Relays).unwrap();
        // The LISTEN connection starts beside open: give it a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        relays.borrow_and_update();
        let d = delivery(&*one, "d").await;
        enqueue(&*one, vec![message(1, "r", "a", d, 10)]).await;
        assert_eq!(claim(&*one, "a", 10, now_millis() + 60_000).await, [key(1)]);
        // Given back due later: nobody needs waking.
        let back = |due_at| Change::RelayPostpone {
            key: key(1),
            due_at,
        };
        one.commit(vec![back(now_millis() + 60_000)]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!relays.has_changed().unwrap(), "woken for nothing due");
        // Given back due now: the others may take it.
        assert_eq!(
            claim(&*one, "a", now_millis() + 60_001, now_millis() + 120_000).await,
            [key(1)]
        );
        one.commit(vec![back(now_millis())]).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), relays.changed())
            .await
            .expect("woken for a message given back")
            .unwrap();
        relays.borrow_and_update();
        let now = now_millis();
        assert_eq!(claim(&*two, "a", now, now + 60_000).await, [key(1)]);
        record(
            &*two,
            attempt(1, 1, 30, RelayOutcome::Failed, Some(500)),
            RelayNext::Dead {
                reason: "gave up".into(),
            },
        )
        .await;
        let replayed = q(&*one)
            .replay_relays(&RelayReplay::Message(key(1)), now_millis())
            .await
            .unwrap();
        assert_eq!(replayed, 1);
        tokio::time::timeout(Duration::from_secs(5), relays.changed())
            .await
            .expect("woken for a replay")
            .unwrap();
    }
}
