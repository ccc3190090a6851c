//! Turns stored deliveries into runs, after the sender got its answer.
//!
//! Every workflow with an `on:` entry that names the delivery's source and event, and whose
//! `if` holds for the payload, gets one run; every relay that takes the delivery's source,
//! and whose `if` holds, gets one message per target (see [`baton_relay`]). The runs, the
//! relay messages and the record that the delivery was matched are one commit, so a crash
//! in between cannot start a run, or relay a delivery, twice; a restarted server picks up
//! the deliveries past the last matched mark.
//!
//! Deliveries come from the store's in-memory feed in commit order, so matching does not
//! read back what the intake just wrote; the store is read at start, after a replay, when
//! the feed fell behind, and every few seconds as a safety net. A pass that starts nothing
//! is recorded with one small write (the `through` mark of
//! [`Engine::match_deliveries`](baton_engine::Engine::match_deliveries)), not one per delivery.
//!
//! On a store replicas share, the feed has this process's own deliveries and the store's
//! pending deliveries are those no replica holds (another's whose claim expired, replays):
//! the store is read every second and whenever another replica hands deliveries over
//! ([`Store::wakes`](baton_store::Store::wakes)). Such a read can bring this process's own
//! delivery while a lower one is still being stored, so a pass from a read records each
//! delivery on its own, only the feed (in id order) moves the mark, and what was matched is
//! remembered by id, so the feed's later copy is skipped without skipping that lower one.
//! A pass whose
//! commit is fenced (another replica took one of its deliveries over) is dropped: that
//! replica matches them.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use baton_core::SourceDelivery;
use baton_core::context::TriggerInfo;
use baton_core::expr::parse_val;
use baton_core::expr_bound;
use baton_core::outage::Outage;
use baton_engine::{DeliveryOutcome, NewRun};
use baton_relay::Routed;
use baton_store::{Change, PendingDelivery, Work, now_millis};
use serde_json::Value;

use crate::AppState;

/// Deliveries matched in one pass (and one commit) at most.
const PASS: usize = 256;

/// How often the store is read even when nothing asked for it.
const SAFETY_SCAN: Duration = Duration::from_secs(5);

/// [`SAFETY_SCAN`] on a store replicas share: a dead replica's deliveries become pending
/// there when their claim expires, which no notification announces.
const SHARED_SCAN: Duration = Duration::from_secs(1);

/// Delivery ids a shared store's matcher remembers as matched: far more than are ever in
/// flight between a store read and the feed.
const REMEMBERED: usize = 1 << 16;

/// Which deliveries this process matched already, so one the feed and a store read both
/// hand over is matched once.
enum Matched {
    /// A store one process owns: ids come in order, so everything up to the mark.
    Through(i64),
    /// A shared store: ids interleave across replicas, so the last [`REMEMBERED`] ids.
    Ids {
        /// The ids, for lookups.
        set: HashSet<i64>,
        /// The same ids, oldest first, for forgetting.
        order: VecDeque<i64>,
    },
}

impl Matched {
    fn new(shared: bool) -> Self {
        if shared {
            Self::Ids {
                set: HashSet::new(),
                order: VecDeque::new(),
            }
        } else {
            Self::Through(0)
        }
    }

    /// True when `delivery` was matched by this process already (a replay never was).
    fn has(&self, delivery: &PendingDelivery) -> bool {
        if delivery.replay {
            return false;
        }
        match self {
            Self::Through(through) => delivery.id <= *through,
            Self::Ids { set, .. } => set.contains(&delivery.id),
        }
    }

    /// Records the deliveries of a committed pass.
    fn add(&mut self, batch: &[PendingDelivery]) {
        let ids = batch.iter().filter(|d| !d.replay).map(|d| d.id);
        match self {
            Self::Through(through) => *through = ids.fold(*through, i64::max),
            Self::Ids { set, order } => {
                for id in ids {
                    if set.insert(id) {
                        order.push_back(id);
                    }
                }
                while order.len() > REMEMBERED {
                    if let Some(old) = order.pop_front() {
                        set.remove(&old);
                    }
                }
            }
        }
    }
}

/// How long a pass waits for more deliveries once the first arrived. A pass that starts
/// nothing is one small commit of its own; under load, waiting a little folds a hundred
/// deliveries into it instead of a handful, and a few milliseconds are nothing beside the
/// time a run takes.
const GATHER: Duration = Duration::from_millis(5);

/// [`GATHER`] when relays are configured: a relayed message waits for its pass, and with
/// 5 ms the wait was half of the time from a delivery's 202 to its target (p50 5.5 ms, p99
/// 10.3-10.9 ms at 2,500 deliveries/s to two targets; with 1 ms, p50 3.1 ms, p99 6.0-8.8 ms
/// at 2,400/s: `bench/relay`). Deliveries that arrive while a pass commits still fold into
/// the next one.
const GATHER_RELAYING: Duration = Duration::from_millis(1);

/// Processes deliveries until the process stops.
pub(crate) async fn run(state: Arc<AppState>) {
    let store = state.engine.store();
    let mut feed = store.delivery_feed();
    let gather = if state.relays.is_empty() {
        GATHER
    } else {
        GATHER_RELAYING
    };
    // What this process matched: feed deliveries among them were in a store read already.
    let mut matched = Matched::new(store.shared());
    let safety_scan = if store.shared() {
        SHARED_SCAN
    } else {
        SAFETY_SCAN
    };
    // Another replica handing deliveries over (a replay, a released claim) wakes a read.
    let mut handed = store.wakes(Work::Deliveries);
    let mut scan = true;
    let mut batch = Vec::with_capacity(PASS);
    // A store that cannot write (a full disk) fails every pass until it can again: logged
    // when that starts and when it ends, not every second.
    let (mut reads, mut commits) = (Outage::default(), Outage::default());
    loop {
        // Clearing the feed's lag mark comes before any read of the store, never after
        // (see baton_store::feed): this is the only place it is cleared.
        if feed.as_ref().is_some_and(|f| f.take_lagged()) {
            scan = true;
        }
        if scan {
            match store.pending_deliveries(PASS as u32).await {
                Ok(pending) => {
                    recovered(&mut reads, "reading pending deliveries");
                    // A full page means more may wait.
                    scan = pending.len() == PASS;
                    if !pending.is_empty()
                        && !pass(&state, pending, Read::Store, &mut matched, &mut commits)
                            .await
                            .0
                    {
                        scan = true;
                    }
                }
                Err(e) => {
                    if reads.failed() {
                        tracing::error!(
                            error = &e as &dyn std::error::Error,
                            "reading pending deliveries failed; retrying every second (logged again when it works)"
                        );
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            continue;
        }
        let Some(f) = feed.as_mut() else {
            // No feed: read the store when asked, or every so often.
            tokio::select! {
                () = state.matcher.notified() => {}
                () = handed_over(&mut handed) => {}
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            scan = true;
            continue;
        };
        tokio::select! {
            received = f.recv_many(&mut batch, PASS) => {
                if received == 0 {
                    tracing::warn!("the delivery feed closed; reading the store instead");
                    feed = None;
                    scan = true;
                    continue;
                }
            }
            () = state.matcher.notified() => { scan = true; continue; }
            () = handed_over(&mut handed) => { scan = true; continue; }
            () = tokio::time::sleep(safety_scan) => { scan = true; continue; }
        }
        if batch.len() < PASS {
            tokio::time::sleep(gather).await;
            let room = PASS - batch.len();
            f.try_recv_many(&mut batch, room);
        }
        let (ok, used) = pass(
            &state,
            std::mem::take(&mut batch),
            Read::Feed,
            &mut matched,
            &mut commits,
        )
        .await;
        if !ok {
            scan = true;
        }
        batch = used;
        batch.clear();
    }
}

/// Resolves when another replica hands deliveries over; never without a shared store (or
/// once its notifications end).
async fn handed_over(wakes: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    let Some(receiver) = wakes.as_mut() else {
        return std::future::pending().await;
    };
    if receiver.changed().await.is_err() {
        *wakes = None;
        std::future::pending::<()>().await;
    }
}

/// Matches `batch` and commits the result; false (after a pause) if the commit failed, so
/// the caller reads the store again, which still has every delivery of the batch pending.
/// A commit fenced because another replica took one of the deliveries over is dropped at
/// once (false, no pause): that replica matches them, and a store read finds any this one
/// still holds. Gives the batch back, for its room.
async fn pass(
    state: &Arc<AppState>,
    mut batch: Vec<PendingDelivery>,
    read: Read,
    matched: &mut Matched,
    outage: &mut Outage,
) -> (bool, Vec<PendingDelivery>) {
    batch.retain(|d| !matched.has(d));
    if batch.is_empty() {
        return (true, batch);
    }
    // A shared store's read may return this process's own deliveries while a lower one is
    // still being stored; a mark past it would cover that one before the feed brings it. So
    // what a read of a shared store brings is recorded delivery by delivery, and only the
    // feed, in id order, moves the mark.
    let by_mark = read == Read::Feed || matches!(matched, Matched::Through(_));
    let (outcome, batch) = process(state, batch, by_mark).await;
    let ok = match outcome {
        Ok(()) => {
            recovered(outage, "matching deliveries");
            matched.add(&batch);
            state.deliveries_matched.send_modify(|passes| *passes += 1);
            offer(state, &batch).await;
            true
        }
        Err(e) if is_fenced(&e) => {
            metrics::counter!("baton_matcher_fenced_total").increment(1);
            tracing::warn!(
                deliveries = batch.len(),
                error = &e as &dyn std::error::Error,
                "another replica took over deliveries of this pass; leaving the pass to it"
            );
            false
        }
        Err(e) => {
            if outage.failed() {
                tracing::error!(
                    error = &e as &dyn std::error::Error,
                    "matching deliveries failed; retrying every second (logged again when it works)"
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            false
        }
    };
    (ok, batch)
}

/// Offers each delivery of `batch` to the adapters, which name the attempts it concerns (a
/// `workflow_run` delivery names the stage that follows that run): those are polled now.
/// A hint only, so it comes after the commit and is not repeated after a restart; polling
/// is the safety net.
async fn offer(state: &AppState, batch: &[PendingDelivery]) {
    for delivery in batch {
        let Some(source) = state.sources.get(&delivery.source) else {
            continue;
        };
        let offered = SourceDelivery {
            source: &delivery.source,
            kind: source.kind,
            event: &delivery.event,
            body: &delivery.body,
        };
        state.engine.offer_delivery(&offered).await;
    }
}

/// Logs the end of `outage`, if this success ended one.
fn recovered(outage: &mut Outage, what: &str) {
    if let Some((lasted, failures)) = outage.recovered() {
        tracing::warn!(after = ?lasted, failed_tries = failures, "{what} works again");
    }
}

/// Where a pass's deliveries came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// The store's feed: this process's deliveries, in id order.
    Feed,
    /// [`Store::pending_deliveries`](baton_store::Store::pending_deliveries).
    Store,
}

/// True when a commit was refused by a fence: another process owns the work now.
fn is_fenced(error: &baton_engine::EngineError) -> bool {
    matches!(error, baton_engine::EngineError::Store(e) if e.is_fenced())
}

/// What matching a batch decided: the runs to create, the deliveries' outcomes, the new
/// matched-through mark, and the relay messages.
type Decided = (Vec<NewRun>, Vec<DeliveryOutcome>, Option<i64>, Routed);

/// Matches every delivery of `batch` (none matched before) and commits what it decided: with
/// `by_mark`, the deliveries that started nothing by the matched-through mark, else each
/// with an outcome of its own. When a trigger has an `if`, the whole batch is matched on an evaluation thread under
/// `[expressions]` (one hand-off per pass), so a condition that runs long holds neither an
/// async worker nor more than its bounds.
async fn process(
    state: &Arc<AppState>,
    batch: Vec<PendingDelivery>,
    by_mark: bool,
) -> (Result<(), baton_engine::EngineError>, Vec<PendingDelivery>) {
    let conditional = state.relays.has_conditions()
        || state
            .workflows
            .iter()
            .any(|w| w.triggers.iter().any(|t| t.condition.is_some()));
    let (batch, (runs, outcomes, highest, routed)) = if conditional {
        let shared = state.clone();
        let job = expr_bound::offload(state.expressions, move |_| {
            let decided = match_all(&shared, &batch, by_mark);
            (batch, decided)
        });
        match job.await {
            Ok(done) => done,
            Err(e) => {
                let error = baton_engine::EngineError::Evaluation(e.to_string());
                return (Err(error), Vec::new());
            }
        }
    } else {
        let decided = match_all(state, &batch, by_mark);
        (batch, decided)
    };
    if highest.is_none() && outcomes.is_empty() && routed.is_empty() {
        return (Ok(()), batch);
    }
    let created = runs.len();
    let mut routed = routed;
    let messages = std::mem::take(&mut routed.messages);
    let relayed = messages.len();
    let writes = messages.into_iter().map(Change::RelayEnqueue).collect();
    let committed = state
        .engine
        .match_deliveries(runs, outcomes, highest, writes)
        .await;
    if committed.is_ok() {
        state.relays.committed(routed);
    }
    tracing::debug!(
        deliveries = batch.len(),
        runs = created,
        relay_messages = relayed,
        "deliveries matched"
    );
    (committed.map(|_| ()), batch)
}

fn match_all(state: &AppState, batch: &[PendingDelivery], by_mark: bool) -> Decided {
    let mut runs = Vec::new();
    let mut outcomes = Vec::new();
    let mut highest = None;
    let mut routed = Routed::default();
    let now = now_millis();
    for delivery in batch {
        let first = runs.len();
        let mut problems = match_one(state, delivery, &mut runs);
        problems.extend(state.relays.route(delivery, now, &mut routed));
        let marked = by_mark && !delivery.replay;
        if marked {
            // The largest, not the last: on a shared store ids come in no order.
            highest = highest.max(Some(delivery.id));
        }
        if !marked || first < runs.len() || !problems.is_empty() {
            outcomes.push(DeliveryOutcome {
                delivery: delivery.id,
                runs: first..runs.len(),
                problem: (!problems.is_empty()).then(|| problems.join("; ")),
            });
        }
    }
    (runs, outcomes, highest, routed)
}

/// Adds a run to `runs` for every workflow `delivery` starts; returns the problems met.
fn match_one(state: &AppState, delivery: &PendingDelivery, runs: &mut Vec<NewRun>) -> Vec<String> {
    let mut problems = Vec::new();
    // Parsed once, and only if some entry names this source and event.
    let mut payload = None;
    let mut event: Option<Value> = None;
    for workflow in &state.workflows {
        for (i, trigger) in workflow.triggers.iter().enumerate() {
            if !trigger.names(&delivery.source, &delivery.event) {
                continue;
            }
            let parsed = match payload.get_or_insert_with(|| parse_val(&delivery.body)) {
                Ok(parsed) => parsed,
                Err(e) => {
                    // The intake checked the body; a store edited by hand could still differ.
                    problems.push(format!("the stored body is not JSON: {e}"));
                    return problems;
                }
            };
            match trigger.holds(parsed) {
                Ok(true) => {
                    let event = event
                        .get_or_insert_with(|| {
                            serde_json::from_str(&delivery.body).unwrap_or(Value::Null)
                        })
                        .clone();
                    runs.push(NewRun {
                        workflow: workflow.clone(),
                        event,
                        trigger: TriggerInfo {
                            source: delivery.source.clone(),
                            event: delivery.event.clone(),
                            delivery_id: Some(delivery.delivery_id.clone()),
                        },
                    });
                    break; // one run per workflow per delivery
                }
                Ok(false) => {}
                Err(e) => problems.push(format!("workflow `{}` on[{i}].if: {e}", workflow.name())),
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: i64, replay: bool) -> PendingDelivery {
        PendingDelivery {
            id,
            source: "github".into(),
            delivery_id: format!("d-{id}"),
            event: "push".into(),
            headers: "{}".into(),
            body: "{}".into(),
            replay,
        }
    }

    #[test]
    fn one_process_remembers_a_mark_and_replicas_remember_ids() {
        let mut own = Matched::new(false);
        own.add(&[delivery(3, false), delivery(7, false), delivery(2, true)]);
        assert!(own.has(&delivery(5, false)), "below the mark");
        assert!(!own.has(&delivery(8, false)));
        assert!(
            !own.has(&delivery(3, true)),
            "a replay is always matched again"
        );

        // Another replica's delivery 5, taken over after this one matched 7, is still new.
        let mut shared = Matched::new(true);
        shared.add(&[delivery(3, false), delivery(7, false), delivery(2, true)]);
        assert!(shared.has(&delivery(7, false)));
        assert!(!shared.has(&delivery(5, false)));
        assert!(
            !shared.has(&delivery(2, false)),
            "a replay is not remembered"
        );
        assert!(!shared.has(&delivery(7, true)));
    }

    #[test]
    fn replicas_forget_the_oldest_ids_beyond_the_bound() {
        let mut shared = Matched::new(true);
        let batch: Vec<_> = (1..=REMEMBERED as i64 + 10)
            .map(|id| delivery(id, false))
            .collect();
        shared.add(&batch);
        assert!(!shared.has(&delivery(10, false)));
        assert!(shared.has(&delivery(11, false)));
        assert!(shared.has(&delivery(REMEMBERED as i64 + 10, false)));
        let Matched::Ids { set, order } = &shared else {
            panic!("a shared store remembers ids");
        };
        assert_eq!((set.len(), order.len()), (REMEMBERED, REMEMBERED));
    }
}
