//! One worker per target: takes messages handed over by the matcher or claimed from the
//! store, sends them within the target's concurrency, rate and circuit, and records each
//! try with what follows it.
//!
//! A try holds one of the target's `concurrency` places only while its request is under
//! way; recording it is a commit of its own, which the store groups with others, so a
//! target's throughput is not bound by the time a commit takes. An `ordered` target sends
//! one message at a time and waits for each one's record before it takes the next, so the
//! next is always the oldest pending.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use baton_core::expr_bound::Limits;
use baton_core::outage::Outage;
use baton_store::{
    Change, DueRelay, Millis, RelayAttemptRecord, RelayNext, RelayOutcome, Store, StoreError,
    now_millis,
};
use metrics::{Counter, Gauge};
use tokio::sync::{Notify, mpsc};

use crate::circuit::{Circuit, CircuitState, Gate};
use crate::rate::RateLimiter;
use crate::schedule::retry_delay;
use crate::target::{Sent, Target};

/// How long a claimed or handed-over message stays leased to this process: longer than a
/// try can take (a target's `timeout` is at most 10 minutes) with its record
/// ([`SETTLE_PATIENCE`]). A worker holds a message it cannot send yet (its target's circuit
/// is open, a 429 paused it) for at most [`HOLD`], then gives it back, so it never holds
/// one whose lease ended, which its own next claim could take a second time. A process
/// that owns the store releases every lease when it starts.
pub(crate) const LEASE: Duration = Duration::from_secs(30 * 60);

/// The longest a worker holds a message it has not started to send.
const HOLD: Duration = Duration::from_secs(10 * 60);

/// How often a worker looks at the store when nothing woke it: a safety net behind the
/// wake-ups the matcher, the records and the replays send.
const SAFETY_LOOK: Duration = Duration::from_secs(30);

/// The longest a record of a try is retried when the store cannot write. Past it the
/// message stays leased until [`LEASE`] ends, and is sent again (receivers drop the
/// duplicate by its key).
const SETTLE_PATIENCE: Duration = Duration::from_secs(60);

/// Why a target is disabled, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Disabled {
    /// When the 410 came.
    pub(crate) at: Millis,
    /// What it said.
    pub(crate) reason: String,
}

/// What a target's worker and its tries share.
struct TargetState {
    circuit: Circuit,
    rate: Option<RateLimiter>,
    /// A 429's `Retry-After`: nothing is sent before then.
    paused_until: Option<Instant>,
    disabled: Option<Disabled>,
}

/// One target: its sender, its queue of handed-over messages, and its state.
pub(crate) struct TargetShared {
    /// The sender.
    pub(crate) target: Target,
    /// Its URL as people may see it.
    pub(crate) url: String,
    /// Free places in the queue of handed-over messages.
    pub(crate) room: AtomicUsize,
    handed: Mutex<Vec<DueRelay>>,
    /// The store has messages for this target that no one leased: the worker claims them.
    backlog: AtomicBool,
    wake: Notify,
    state: Mutex<TargetState>,
    attempts: [Counter; RelayOutcome::ALL.len()],
    /// The age of the oldest pending message, in seconds.
    pub(crate) oldest_pending: Gauge,
    /// 1 while the circuit is open.
    circuit_open: Gauge,
    /// 1 while a 410 keeps the target disabled.
    disabled_gauge: Gauge,
}

/// A worker's queue of handed-over messages holds this many per place of concurrency (and
/// at least [`MIN_ROOM`]); past it, messages wait in the store to be claimed.
const ROOM_PER_PLACE: usize = 8;
const MIN_ROOM: usize = 64;

impl TargetShared {
    pub(crate) fn new(target: Target, url: String) -> Self {
        let labels = [
            ("relay", target.relay.clone()),
            ("target", target.name.clone()),
        ];
        let attempts = RelayOutcome::ALL.map(|outcome| {
            let mut labels = labels.to_vec();
            labels.push(("outcome", outcome.as_str().to_owned()));
            metrics::counter!("baton_relay_attempts_total", &labels)
        });
        let state = TargetState {
            circuit: Circuit::new(target.schedule.clone()),
            rate: target.rate.map(RateLimiter::new),
            paused_until: None,
            disabled: None,
        };
        Self {
            room: AtomicUsize::new((target.concurrency * ROOM_PER_PLACE).max(MIN_ROOM)),
            handed: Mutex::new(Vec::new()),
            backlog: AtomicBool::new(true),
            wake: Notify::new(),
            state: Mutex::new(state),
            attempts,
            oldest_pending: metrics::gauge!("baton_relay_oldest_pending_seconds", &labels),
            circuit_open: metrics::gauge!("baton_relay_circuit_open", &labels),
            disabled_gauge: metrics::gauge!("baton_relay_target_disabled", &labels),
            target,
            url,
        }
    }

    /// Takes a place in the queue, if one is free.
    pub(crate) fn reserve_room(&self) -> bool {
        self.room
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Queues a message whose commit is done (its place was reserved).
    pub(crate) fn hand_over(&self, message: DueRelay) {
        lock(&self.handed).push(message);
    }

    /// Wakes the worker for a message handed over.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Wakes the worker to claim from the store: messages were written there unleased (its
    /// queue was full, it is ordered, or they were replayed).
    pub(crate) fn wake_for_store(&self) {
        self.backlog.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// The circuit and the disabled mark, for people; the gauges follow.
    pub(crate) fn condition(&self) -> (CircuitState, Option<Disabled>) {
        let state = lock(&self.state);
        let circuit = state.circuit.state();
        self.circuit_open.set(match circuit {
            CircuitState::Closed => 0.0,
            CircuitState::Open { .. } => 1.0,
        });
        (circuit, state.disabled.clone())
    }

    /// Sets or clears the disabled mark (from the store, after a replay).
    pub(crate) fn set_disabled(&self, disabled: Option<Disabled>) {
        self.disabled_gauge
            .set(if disabled.is_some() { 1.0 } else { 0.0 });
        lock(&self.state).disabled = disabled;
    }

    /// Moves up to `max` handed-over messages, oldest first, into `into`, taken `now`.
    fn take_handed(&self, into: &mut VecDeque<Held>, max: usize, now: Instant) {
        let mut handed = lock(&self.handed);
        let n = handed.len().min(max);
        into.extend(handed.drain(..n).map(|message| Held {
            message,
            taken: now,
        }));
        drop(handed);
        self.room.fetch_add(n, Ordering::AcqRel);
    }

    /// Decides what follows `sent`, a try of `message`, and updates the circuit, the pause
    /// and the disabled mark. True in the second place when the target is to be disabled.
    fn decide(&self, message: &DueRelay, sent: &Sent, now: Instant) -> (RelayNext, bool) {
        let mut state = lock(&self.state);
        let failed = message.tries + 1;
        let retry = || match retry_delay(
            &self.target.schedule,
            failed,
            sent.retry_after,
            rand::random::<f64>(),
        ) {
            Some(delay) => RelayNext::Retry {
                due_at: now_millis() + delay.as_millis() as Millis,
                tries: failed,
            },
            None => RelayNext::Dead {
                reason: format!(
                    "no 2xx answer after {failed} tries; the last: {}",
                    describe(sent)
                ),
            },
        };
        match sent.outcome {
            RelayOutcome::Delivered => {
                state.circuit.succeeded();
                (RelayNext::Delivered, false)
            }
            RelayOutcome::Gone => {
                let reason = format!(
                    "the target answered 410 Gone to message {} at {}; nothing more is sent to it until one of its messages is replayed",
                    message.key, sent.started_at
                );
                state.disabled.get_or_insert(Disabled {
                    at: sent.started_at,
                    reason: reason.clone(),
                });
                self.disabled_gauge.set(1.0);
                (RelayNext::Dead { reason }, true)
            }
            RelayOutcome::RateLimited => {
                // The receiver is up but wants fewer requests: everything to it waits, and
                // this message is not held against the circuit.
                let pause = sent.retry_after.unwrap_or(Duration::from_secs(1));
                let until = now + pause;
                state.circuit.probe_told_nothing(now);
                state.paused_until = Some(state.paused_until.map_or(until, |p| p.max(until)));
                (retry(), false)
            }
            RelayOutcome::Failed
            | RelayOutcome::Timeout
            | RelayOutcome::Connection
            | RelayOutcome::Refused => {
                state.circuit.failed(now);
                (retry(), false)
            }
        }
    }
}

/// The try, as people read it in a dead message's reason.
fn describe(sent: &Sent) -> String {
    match (&sent.error, sent.code) {
        (Some(error), _) => error.clone(),
        (None, Some(code)) => format!("HTTP {code}"),
        (None, None) => sent.outcome.as_str().to_owned(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks, so a poisoned one is still consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a try tells its worker.
enum Event {
    /// Its request is over: its place is free.
    Sent,
    /// Its record is committed (or given up on); the message is next due then, if at all.
    Settled { next_due: Option<Millis> },
}

/// Runs one target's worker until the process stops.
pub(crate) async fn work(shared: Arc<TargetShared>, store: Arc<dyn Store>, limits: Limits) {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut worker = Worker {
        shared,
        store,
        limits,
        events: events_tx,
        ready: VecDeque::new(),
        in_flight: 0,
        settling: 0,
        look_at: Some(Instant::now()),
        claim_blocked: false,
        sending_blocked: false,
        wake_at: None,
        outage: Outage::default(),
    };
    loop {
        worker.wake_at = None;
        worker.step().await;
        let look_at = worker.look_at.filter(|_| !worker.claim_blocked);
        let sleep_until = worker
            .wake_at
            .into_iter()
            .chain(look_at)
            .min()
            .unwrap_or_else(|| Instant::now() + SAFETY_LOOK);
        tokio::select! {
            Some(event) = events.recv() => worker.on(event),
            () = worker.shared.wake.notified() => {}
            () = tokio::time::sleep_until(sleep_until.into()) => {}
        }
        // Take every event that came meanwhile before the next step.
        while let Ok(event) = events.try_recv() {
            worker.on(event);
        }
    }
}

/// A message a worker took and has not sent yet.
struct Held {
    message: DueRelay,
    /// When the worker took it (its lease started no later).
    taken: Instant,
}

struct Worker {
    shared: Arc<TargetShared>,
    store: Arc<dyn Store>,
    limits: Limits,
    events: mpsc::UnboundedSender<Event>,
    /// Messages taken (handed over or claimed) and not yet sent, oldest taken first.
    ready: VecDeque<Held>,
    /// The last launch stopped for the circuit, a pause or the rate, not for want of
    /// places: claiming more would only hold more.
    sending_blocked: bool,
    /// Requests under way.
    in_flight: usize,
    /// Tries whose record is not committed yet.
    settling: usize,
    /// When to look at the store for due messages (`None`: only when woken).
    look_at: Option<Instant>,
    /// No place is free to send what a look would claim: `look_at` waits for a try to end.
    claim_blocked: bool,
    /// When the worker must step again, whatever else happens.
    wake_at: Option<Instant>,
    outage: Outage,
}

impl Worker {
    fn on(&mut self, event: Event) {
        match event {
            Event::Sent => self.in_flight -= 1,
            Event::Settled { next_due } => {
                self.settling -= 1;
                if let Some(due) = next_due {
                    self.look_no_later_than(due);
                }
            }
        }
    }

    fn look_no_later_than(&mut self, due: Millis) {
        let at = instant_of(due);
        self.look_at = Some(self.look_at.map_or(at, |l| l.min(at)));
    }

    fn later(&mut self, at: Instant) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    async fn step(&mut self) {
        let target = &self.shared.target;
        if !target.ordered {
            // What the worker holds stays bounded while the target is slow, paused or
            // its circuit open: the rest waits in the handed-over queue, which has a
            // fixed room, and past that in the store.
            let room = (target.concurrency * 2).saturating_sub(self.ready.len());
            self.shared
                .take_handed(&mut self.ready, room, Instant::now());
        }
        self.give_back_held_too_long().await;
        let backlog = self.shared.backlog.swap(false, Ordering::AcqRel);
        if backlog {
            self.look_at = Some(Instant::now());
        }
        let disabled = lock(&self.shared.state).disabled.clone();
        if let Some(disabled) = disabled {
            // Only when messages came: a disabled target's worker otherwise writes nothing.
            if backlog || !self.ready.is_empty() {
                self.kill_pending(disabled).await;
            }
            return;
        }
        self.claim().await;
        self.launch();
    }

    /// A disabled target's messages are dead as they come: the ones taken, and any pending
    /// in the store (the record of the 410 killed those pending then; this kills the later
    /// ones).
    async fn kill_pending(&mut self, disabled: Disabled) {
        self.ready.clear();
        self.look_at = None;
        let change = Change::RelayTargetDisabled {
            relay: self.shared.target.relay.clone(),
            target: self.shared.target.name.clone(),
            at: disabled.at,
            reason: disabled.reason,
        };
        if let Err(e) = self.store.commit(vec![change]).await {
            self.failed("marking a disabled target's messages dead", &e);
            self.shared.backlog.store(true, Ordering::Release);
            self.later(Instant::now() + Duration::from_secs(1));
        }
    }

    /// Claims due messages from the store when it may have some and there are places to
    /// send them.
    async fn claim(&mut self) {
        let now = Instant::now();
        if self.look_at.is_none_or(|at| at > now) {
            return;
        }
        let shared = self.shared.clone();
        let target = &shared.target;
        let want = if target.ordered {
            // The oldest pending, once the one before is recorded.
            if self.in_flight + self.settling > 0 || !self.ready.is_empty() {
                0
            } else {
                ORDERED_CLAIM
            }
        } else {
            (target.concurrency * 2).saturating_sub(self.ready.len() + self.in_flight)
        };
        // While sending is blocked, claim only a message to probe or wait with, if none is
        // held.
        let want = match (self.sending_blocked, self.ready.is_empty()) {
            (true, false) => 0,
            (true, true) => want.min(1),
            (false, _) => want,
        };
        self.claim_blocked = want == 0;
        if want == 0 {
            return;
        }
        let store = self.store.clone();
        let Some(relays) = store.relays() else {
            return;
        };
        let now_ms = now_millis();
        let lease_until = now_ms + LEASE.as_millis() as Millis;
        let claimed = relays
            .claim_relays(
                &target.relay,
                &target.name,
                now_ms,
                want as u32,
                lease_until,
                target.ordered,
            )
            .await;
        match claimed {
            Ok(claimed) => {
                self.recovered("claiming relay messages");
                let full = claimed.len() == want;
                self.ready.extend(claimed.into_iter().map(|message| Held {
                    message,
                    taken: now,
                }));
                self.look_at = if full {
                    Some(now)
                } else {
                    match relays
                        .next_relay_due(&target.relay, &target.name, now_ms)
                        .await
                    {
                        Ok(next) => next.map(instant_of),
                        Err(e) => {
                            self.failed("reading when relay messages are due", &e);
                            Some(now + Duration::from_secs(1))
                        }
                    }
                };
            }
            Err(e) => {
                self.failed("claiming relay messages", &e);
                self.look_at = Some(now + Duration::from_secs(1));
            }
        }
    }

    /// Starts tries of ready messages while places, the rate, the pause and the circuit
    /// allow.
    fn launch(&mut self) {
        let shared = self.shared.clone();
        let target = &shared.target;
        self.sending_blocked = false;
        while let Some(Held { message: next, .. }) = self.ready.front() {
            if self.in_flight >= target.concurrency {
                return;
            }
            let now = Instant::now();
            if target.ordered {
                if self.in_flight + self.settling > 0 {
                    return;
                }
                if next.due_at > now_millis() {
                    self.later(instant_of(next.due_at));
                    return;
                }
            }
            {
                let mut state = lock(&self.shared.state);
                if let Some(until) = state.paused_until {
                    if until > now {
                        drop(state);
                        self.sending_blocked = true;
                        self.later(until);
                        return;
                    }
                    state.paused_until = None;
                }
                if let Some(rate) = &mut state.rate
                    && let Err(at) = rate.take(now)
                {
                    drop(state);
                    self.sending_blocked = true;
                    self.later(at);
                    return;
                }
                match state.circuit.gate(now) {
                    Gate::Open | Gate::Probe => {}
                    Gate::Wait(at) => {
                        drop(state);
                        self.sending_blocked = true;
                        if let Some(at) = at {
                            self.later(at);
                        }
                        return;
                    }
                }
            }
            let Some(Held { message, .. }) = self.ready.pop_front() else {
                return;
            };
            self.in_flight += 1;
            self.settling += 1;
            tokio::spawn(try_once(
                self.shared.clone(),
                self.store.clone(),
                self.limits,
                message,
                self.events.clone(),
            ));
        }
    }

    /// Gives the messages held for [`HOLD`] back to the store, due as they were, so none is
    /// held past its lease. The next look claims them again (leased anew).
    async fn give_back_held_too_long(&mut self) {
        let now = Instant::now();
        if self
            .ready
            .front()
            .is_none_or(|held| now.duration_since(held.taken) < HOLD)
        {
            if let Some(held) = self.ready.front() {
                self.later(held.taken + HOLD);
            }
            return;
        }
        let (old, kept): (Vec<Held>, Vec<Held>) = self
            .ready
            .drain(..)
            .partition(|held| now.duration_since(held.taken) >= HOLD);
        self.ready.extend(kept);
        let changes = old
            .into_iter()
            .map(|held| Change::RelayPostpone {
                key: held.message.key,
                due_at: held.message.due_at,
            })
            .collect();
        match self.store.commit(changes).await {
            Ok(_) => self.look_at = Some(now),
            Err(e) => {
                // They stay leased until their leases end, and are claimed again then.
                self.failed("giving back relay messages held too long", &e);
            }
        }
    }

    fn failed(&mut self, what: &str, e: &StoreError) {
        if self.outage.failed() {
            tracing::error!(
                relay = %self.shared.target.relay,
                target = %self.shared.target.name,
                error = e as &dyn std::error::Error,
                "{what} failed; retrying every second (logged again when it works)"
            );
        }
    }

    fn recovered(&mut self, what: &str) {
        if let Some((lasted, failures)) = self.outage.recovered() {
            tracing::warn!(
                relay = %self.shared.target.relay,
                target = %self.shared.target.name,
                after = ?lasted,
                failed_tries = failures,
                "{what} works again"
            );
        }
    }
}

/// Messages an ordered target claims at once. One: if it fails, it goes back to the store
/// with its next due time and is the oldest pending again, so the next claim returns it,
/// not the message after it.
const ORDERED_CLAIM: usize = 1;

/// The [`Instant`] of a wall-clock time (now for a time past).
fn instant_of(at: Millis) -> Instant {
    let ahead = at.saturating_sub(now_millis()).max(0);
    Instant::now() + Duration::from_millis(ahead as u64)
}

/// One try of `message`: the request, the decision, the record.
async fn try_once(
    shared: Arc<TargetShared>,
    store: Arc<dyn Store>,
    limits: Limits,
    message: DueRelay,
    events: mpsc::UnboundedSender<Event>,
) {
    let sent = shared.target.send(&message, limits).await;
    let (next, disable) = shared.decide(&message, &sent, Instant::now());
    let _ = events.send(Event::Sent);
    shared.attempts[outcome_index(sent.outcome)].increment(1);
    let next_due = match &next {
        RelayNext::Retry { due_at, .. } => Some(*due_at),
        RelayNext::Delivered | RelayNext::Dead { .. } => None,
    };
    let mut changes = vec![Change::RelayAttempt {
        attempt: RelayAttemptRecord {
            key: message.key.clone(),
            attempt: message.attempts + 1,
            at: sent.started_at,
            duration_ms: u32::try_from(sent.duration.as_millis()).unwrap_or(u32::MAX),
            outcome: sent.outcome,
            code: sent.code,
            body: sent.body,
            error: sent.error,
        },
        next,
    }];
    if disable && let Some(disabled) = lock(&shared.state).disabled.clone() {
        changes.push(Change::RelayTargetDisabled {
            relay: message.relay.clone(),
            target: message.target.clone(),
            at: disabled.at,
            reason: disabled.reason,
        });
    }
    let recorded = match settle(&*store, changes).await {
        Settled::Recorded => true,
        Settled::Fenced(e) => {
            tracing::warn!(
                relay = %message.relay,
                target = %message.target,
                key = %message.key,
                error = &e as &dyn std::error::Error,
                "a relay try was not recorded: its lease ran out and another process took the message over, so this process drops it"
            );
            false
        }
        Settled::GaveUp => {
            tracing::error!(
                relay = %message.relay,
                target = %message.target,
                key = %message.key,
                "a relay try could not be recorded for {SETTLE_PATIENCE:?}; the message will be sent again once its lease ends"
            );
            false
        }
    };
    let _ = events.send(Event::Settled {
        next_due: if recorded { next_due } else { None },
    });
    if disable {
        shared.wake();
    }
}

fn outcome_index(outcome: RelayOutcome) -> usize {
    RelayOutcome::ALL
        .iter()
        .position(|o| *o == outcome)
        .unwrap_or_default()
}

/// How [`settle`] ended.
enum Settled {
    /// The record is committed.
    Recorded,
    /// Refused: another process took the message over ([`StoreError::is_fenced`]).
    Fenced(StoreError),
    /// The store could not write for [`SETTLE_PATIENCE`].
    GaveUp,
}

/// Commits `changes`, retrying while the store cannot write, for at most
/// [`SETTLE_PATIENCE`].
///
/// Each try is a commit of its own, which the store's writer groups with whatever else is
/// queued. Gathering every target's finished tries into one large commit holds the
/// matcher's commits up behind it: in `bench/relay` the p99 from a message's commit to its
/// first try was then 16–43 ms, against 5 ms this way.
///
/// A commit refused by fencing is not retried: the message is another process's now, and
/// retrying would be refused the same way.
async fn settle(store: &dyn Store, changes: Vec<Change>) -> Settled {
    let started = Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        match store.commit(changes.clone()).await {
            Ok(_) => return Settled::Recorded,
            Err(e) if e.is_fenced() => return Settled::Fenced(e),
            Err(e) => {
                if started.elapsed() >= SETTLE_PATIENCE {
                    tracing::error!(
                        error = &e as &dyn std::error::Error,
                        "recording a relay try failed"
                    );
                    return Settled::GaveUp;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests;
