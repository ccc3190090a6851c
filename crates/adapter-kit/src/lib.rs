//! A conformance kit for baton adapters.
//!
//! Every adapter, built in or not, runs through the same rules so that the engine can rely on
//! the contract in [`baton_core::adapter`] without knowing the system behind it. An adapter's
//! tests build a [`Scenario`] (inputs that succeed, fail and run long) and call
//! [`run_conformance`], which panics with a message naming the broken rule. Each rule is also
//! a public function, so a test can check one rule on its own.
//!
//! The kit plays the engine's part: it renders nothing (inputs are given already rendered),
//! stores every [`ExternalRef`] as JSON and reads it back before using it (as the store does),
//! replaces the reference when a poll returns a new one, and never treats a non-terminal
//! state as the end. Every wait is bounded by the scenario's deadline.
//!
//! Rules:
//!
//! 1. `validate_stage` accepts the valid `with:` block and rejects the invalid one with
//!    messages and at least one key path ([`check_validate_stage`]).
//! 2. `find` for a key never started answers `None` ([`check_find_unstarted`]).
//! 3. The succeeding input: `start` → reference survives JSON → `find` gives the same id →
//!    polls reach `Succeeded` within the deadline → `outputs` is a JSON object
//!    ([`check_succeeds`]).
//! 4. Every poll hint is within `(0, 1 h]` ([`check_poll_hint`]).
//! 5. The failing input reaches `Failed` or `Errored` ([`check_fails`]).
//! 6. The long input, once cancelled, reaches `Cancelled`, `Failed` or `Errored`
//!    ([`check_cancel_running`]); cancelling finished work is `Ok` and changes nothing
//!    ([`check_cancel_finished`]).
//! 7. A reference with garbage `data` never makes `poll` panic ([`check_garbage_ref`]).
//! 8. `logs` answers `Ok` for finished work ([`check_logs`]).
//! 9. [`ExternalState::Unknown`] is never terminal ([`check_unknown_is_not_terminal`]).
//! 10. `find` works from another instance: the succeeding input, started by the adapter
//!     under a key shaped as the engine makes them, is found by the
//!     [replica](Scenario::replica) with the same id, and the replica polls what it found to
//!     `Succeeded` and reads its outputs ([`check_find_from_replica`]). This is what a
//!     `baton serve` replica does when it takes over a stage whose start another replica
//!     sent but did not store.
//!
//! [`docs::check_doc_keys`] keeps an adapter's documented instance keys in step with the
//! struct that declares them; [`harness`] holds what an adapter's own scenario tests share
//! (secrets from a table, polling as the engine does, assertions on errors).
//!
//! Adapters whose `start` touches nothing outside baton (the approval adapter) set
//! [`Scenario::side_effect_free`]: rules 2 and 6 are relaxed for them, as explained there.

pub mod docs;
pub mod harness;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_core::{
    Adapter, AdapterKind, AttemptKey, ExternalRef, ExternalState, PollOutcome, PollRequest,
    StartRequest, Waker,
};
use serde_json::{Map, Value, json};

/// The longest poll hint the kit accepts: an adapter asking to be polled less than hourly
/// would leave a finished stage unnoticed for too long.
pub const MAX_POLL_HINT: Duration = Duration::from_secs(3600);

/// The kit polls at least this often, whatever the hint, so that tests stay fast. Hints are
/// still checked; only the waiting is shortened.
pub const KIT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Everything the kit needs to put one adapter through the rules.
pub struct Scenario {
    /// The adapter's kind, for `validate_stage`.
    pub kind: Arc<dyn AdapterKind>,
    /// The adapter under test.
    pub adapter: Arc<dyn Adapter>,
    /// A `with:` block that `validate_stage` must accept.
    pub valid_with: Value,
    /// A `with:` block that `validate_stage` must reject, with a problem at a key path.
    pub invalid_with: Value,
    /// The rendered input of a stage that succeeds quickly.
    pub succeed: Value,
    /// The rendered input of a stage that fails.
    pub fail: Value,
    /// The rendered input of a stage that runs long enough to be cancelled (30 s or more).
    pub long: Value,
    /// A signal sent with every poll of `succeed` (an approval), if it needs one to finish.
    pub success_signal: Option<Value>,
    /// A signal sent with every poll of `fail`, if it needs one to finish.
    pub failure_signal: Option<Value>,
    /// `start` creates nothing outside baton, so starting twice is harmless.
    ///
    /// Such an adapter may answer `find` with a reference for a key it never started
    /// (adopting it is the same as starting it), and its `cancel` need not change what
    /// `poll` reports, because there is nothing external to stop: the engine records the
    /// cancel itself. `cancel` must still be `Ok`, and the long input must still never
    /// report `Succeeded` after it.
    pub side_effect_free: bool,
    /// A second instance, built from the same config against the same system, that has
    /// seen nothing the first did: rule 10 runs against it.
    ///
    /// `None` only for an adapter whose `find` cannot reach what another instance started
    /// (its work lives in one process); its documentation must then say what happens when
    /// a replica takes over a stage it started.
    pub replica: Option<Arc<dyn Adapter>>,
    /// The bound on every wait: one adapter call, or a whole run to a terminal state.
    pub deadline: Duration,
}

/// An attempt the kit drove to a terminal state.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The attempt's key.
    pub key: AttemptKey,
    /// The reference as last stored (after any replacement by a poll).
    pub external: ExternalRef,
    /// The terminal poll.
    pub outcome: PollOutcome,
    /// The signal sent with the polls, if any.
    pub signal: Option<Value>,
}

/// Runs every rule against `s`, panicking with a clear message on the first broken one.
pub async fn run_conformance(s: Scenario) {
    let adapter = s.adapter.as_ref();
    let kind = adapter.kind();
    assert_eq!(
        s.kind.kind(),
        kind,
        "[conformance] the kind and the adapter disagree on the kind name"
    );
    // The engine always attaches a waker; a wake for a malformed key would be lost.
    let waker = || {
        Waker::new(move |key: &AttemptKey| {
            assert!(
                AttemptKey::parse(key.as_str()).is_some(),
                "[conformance {kind}] the adapter woke a malformed key `{key}`"
            );
        })
    };
    adapter.attach(waker());
    if let Some(replica) = &s.replica {
        assert_eq!(
            replica.kind(),
            kind,
            "[conformance] the replica is not of the adapter's kind"
        );
        replica.attach(waker());
    }

    check_unknown_is_not_terminal();
    check_validate_stage(s.kind.as_ref(), &s.valid_with, &s.invalid_with);
    check_find_unstarted(adapter, &s.succeed, s.side_effect_free, s.deadline).await;

    let ok = check_succeeds(adapter, &s.succeed, s.success_signal.as_ref(), s.deadline).await;
    check_logs(adapter, &ok, s.deadline).await;
    check_cancel_finished(adapter, &ok, s.deadline).await;

    let failed = check_fails(adapter, &s.fail, s.failure_signal.as_ref(), s.deadline).await;
    check_logs(adapter, &failed, s.deadline).await;
    check_cancel_finished(adapter, &failed, s.deadline).await;

    check_cancel_running(adapter, &s.long, s.side_effect_free, s.deadline).await;
    check_garbage_ref(s.adapter.clone(), Some(&ok), s.deadline).await;

    if let Some(replica) = &s.replica {
        let signal = s.success_signal.as_ref();
        check_find_from_replica(adapter, replica.as_ref(), &s.succeed, signal, s.deadline).await;
    }
}

/// A key no other test or run uses, so adapters with durable state never see a clash.
pub fn fresh_key(stage: &str) -> AttemptKey {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    AttemptKey::new(&format!("conf{}x{nanos}x{n}", std::process::id()), stage, 1)
}

/// A key whose run id is shaped as the engine makes them (a UUIDv7 in its simple form,
/// holding the run's creation time), unique as [`fresh_key`]'s are.
///
/// Adapters may bound a search by the time the run id holds
/// ([`run_created_ms`](baton_core::wire::run_created_ms)); an instance that did not start
/// the work has nothing else to go by, so the rule on replicas uses such keys.
pub fn engine_key(stage: &str) -> AttemptKey {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ms = since_epoch.as_millis() as u64 & 0xffff_ffff_ffff;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xfff;
    // The variant bits (`10`) lead the last 64; the process and the clock make the rest
    // unique across test processes.
    let tail = (1 << 63)
        | ((u64::from(std::process::id()) & 0x3fff_ffff) << 32)
        | u64::from(since_epoch.subsec_nanos());
    AttemptKey::new(&format!("{ms:012x}7{n:03x}{tail:016x}"), stage, 1)
}

/// Rule 9: an unknown external status is never terminal.
pub fn check_unknown_is_not_terminal() {
    for raw in ["", "weird", "SUCCESS?", "finished"] {
        assert!(
            !ExternalState::Unknown(raw.to_owned()).is_terminal(),
            "[conformance] ExternalState::Unknown({raw:?}) must never be terminal"
        );
    }
}

/// Rule 1: `valid` passes `validate_stage`; `invalid` fails with a non-empty message on every
/// problem and a key path on at least one (so users are told where to look).
pub fn check_validate_stage(kind: &dyn AdapterKind, valid: &Value, invalid: &Value) {
    let name = kind.kind();
    let errors = kind.validate_stage(valid);
    assert!(
        errors.is_empty(),
        "[conformance {name}] validate_stage rejected the valid block {valid}: {errors:?}"
    );
    let errors = kind.validate_stage(invalid);
    assert!(
        !errors.is_empty(),
        "[conformance {name}] validate_stage accepted the invalid block {invalid}"
    );
    for e in &errors {
        assert!(
            !e.message.trim().is_empty(),
            "[conformance {name}] validate_stage gave an empty message for path `{}`",
            e.path
        );
    }
    assert!(
        errors.iter().any(|e| !e.path.is_empty()),
        "[conformance {name}] validate_stage named no key path for {invalid}: {errors:?}"
    );
}

/// Rule 4: a poll's hint, when given, is more than zero and at most [`MAX_POLL_HINT`].
pub fn check_poll_hint(kind: &str, outcome: &PollOutcome) {
    if let Some(hint) = outcome.next_poll {
        assert!(
            !hint.is_zero() && hint <= MAX_POLL_HINT,
            "[conformance {kind}] poll hint {hint:?} is outside (0, 1 h] in {outcome:?}"
        );
    }
}

/// The store keeps references as JSON: a reference must come back from it unchanged.
/// Returns the copy read back, which callers use from then on.
pub fn check_ref_round_trips(kind: &str, external: &ExternalRef) -> ExternalRef {
    let text = serde_json::to_string(external).unwrap_or_else(|e| {
        panic!("[conformance {kind}] the reference {external:?} does not serialize: {e}")
    });
    let back: ExternalRef = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("[conformance {kind}] the reference does not deserialize from {text}: {e}")
    });
    assert_eq!(
        &back, external,
        "[conformance {kind}] the reference changed through JSON ({text})"
    );
    back
}

/// Awaits `future`, panicking with `what` if it takes longer than `deadline`.
pub async fn bounded<T>(
    kind: &str,
    what: &str,
    deadline: Duration,
    future: impl Future<Output = T>,
) -> T {
    match tokio::time::timeout(deadline, future).await {
        Ok(value) => value,
        Err(_) => panic!("[conformance {kind}] {what} did not answer within {deadline:?}"),
    }
}

/// Starts `input` under `key`; returns the reference after its trip through JSON.
pub async fn start(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    input: &Value,
    deadline: Duration,
) -> ExternalRef {
    let kind = adapter.kind();
    let request = StartRequest {
        key: key.clone(),
        workflow: "conformance".to_owned(),
        input: input.clone(),
        timeout: deadline,
    };
    let external = bounded(kind, "start", deadline, adapter.start(&request))
        .await
        .unwrap_or_else(|e| panic!("[conformance {kind}] start of {input} failed: {e:?}"));
    check_ref_round_trips(kind, &external)
}

/// Polls until a terminal state, as the engine would, within `deadline`.
///
/// Transient errors are retried; any other error panics. A replaced reference is stored (and
/// round-tripped) and used from then on. Returns the last reference and the terminal poll.
pub async fn poll_until_terminal(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    mut external: ExternalRef,
    signal: Option<&Value>,
    deadline: Duration,
) -> (ExternalRef, PollOutcome) {
    let kind = adapter.kind();
    let until = Instant::now() + deadline;
    let mut last = None;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!(
                "[conformance {kind}] {key} did not reach a terminal state within {deadline:?}; last poll: {last:?}"
            );
        }
        let request = PollRequest {
            key,
            external: &external,
            signal,
        };
        let Ok(answer) = tokio::time::timeout(left, adapter.poll(&request)).await else {
            continue;
        };
        match answer {
            Ok(outcome) => {
                check_poll_hint(kind, &outcome);
                if let Some(replaced) = &outcome.external {
                    external = check_ref_round_trips(kind, replaced);
                }
                // `is_terminal` is the engine's test too, so `Unknown` keeps the loop going.
                if outcome.state.is_terminal() {
                    return (external, outcome);
                }
                let wait = outcome
                    .next_poll
                    .unwrap_or(KIT_POLL_INTERVAL)
                    .min(KIT_POLL_INTERVAL);
                last = Some(Ok(outcome));
                tokio::time::sleep(wait).await;
            }
            Err(e) if e.is_transient() => {
                last = Some(Err(e));
                tokio::time::sleep(KIT_POLL_INTERVAL).await;
            }
            Err(e) => panic!("[conformance {kind}] poll of {key} failed: {e:?}"),
        }
    }
}

/// Rule 2: `find` for a key that was never started answers `None` (or anything that is not
/// an error when the adapter is [side-effect free](Scenario::side_effect_free)).
pub async fn check_find_unstarted(
    adapter: &dyn Adapter,
    input: &Value,
    side_effect_free: bool,
    deadline: Duration,
) {
    let kind = adapter.kind();
    let key = fresh_key("never-started");
    let found = bounded(kind, "find", deadline, adapter.find(&key, input))
        .await
        .unwrap_or_else(|e| {
            panic!("[conformance {kind}] find of a never-started key failed: {e:?}")
        });
    if !side_effect_free {
        assert!(
            found.is_none(),
            "[conformance {kind}] find of the never-started key {key} returned {found:?}"
        );
    }
}

/// `find` after `start` returns a reference with the same id.
pub async fn check_find_after_start(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    input: &Value,
    started: &ExternalRef,
    deadline: Duration,
) {
    let kind = adapter.kind();
    let found = bounded(kind, "find", deadline, adapter.find(key, input))
        .await
        .unwrap_or_else(|e| panic!("[conformance {kind}] find after start failed: {e:?}"));
    let found = found
        .unwrap_or_else(|| panic!("[conformance {kind}] find after start of {key} returned None"));
    let found = check_ref_round_trips(kind, &found);
    assert_eq!(
        found.id, started.id,
        "[conformance {kind}] find after start returned another id"
    );
}

/// Rule 10: `input`, started by `adapter` under an [engine-shaped key](engine_key), is
/// found by `replica` (another instance, built from the same config, that never saw the
/// start) with the same id; the replica then polls what it found to `Succeeded` and reads
/// its outputs, as a replica that takes over a stage does.
///
/// A transient error from `find` is asked again within `deadline`, as the engine retries
/// it: a system may not show new work at once.
pub async fn check_find_from_replica(
    adapter: &dyn Adapter,
    replica: &dyn Adapter,
    input: &Value,
    signal: Option<&Value>,
    deadline: Duration,
) -> Finished {
    let kind = adapter.kind();
    let key = engine_key("replica");
    let started = start(adapter, &key, input, deadline).await;
    let until = Instant::now() + deadline;
    let found = loop {
        let left = until.saturating_duration_since(Instant::now());
        let answer = bounded(kind, "find on the replica", left, replica.find(&key, input)).await;
        match answer {
            Ok(found) => break found,
            Err(e) if e.is_transient() && Instant::now() + KIT_POLL_INTERVAL < until => {
                tokio::time::sleep(KIT_POLL_INTERVAL).await;
            }
            Err(e) => panic!("[conformance {kind}] find on the replica failed: {e:?}"),
        }
    };
    let found = found.unwrap_or_else(|| {
        panic!(
            "[conformance {kind}] the replica's find of {key}, started by another instance, returned None: a replica taking over the stage would start it again"
        )
    });
    let found = check_ref_round_trips(kind, &found);
    assert_eq!(
        found.id, started.id,
        "[conformance {kind}] the replica found another id for {key}"
    );
    let what = format!("the replica's polls of {key}");
    polls_to_success(replica, key, found, signal, deadline, &what).await
}

/// Polls `external` until a terminal state, which must be `Succeeded` (`what` names the
/// work in the failure), then reads the outputs.
async fn polls_to_success(
    adapter: &dyn Adapter,
    key: AttemptKey,
    external: ExternalRef,
    signal: Option<&Value>,
    deadline: Duration,
    what: &str,
) -> Finished {
    let kind = adapter.kind();
    let (external, outcome) = poll_until_terminal(adapter, &key, external, signal, deadline).await;
    assert!(
        matches!(outcome.state, ExternalState::Succeeded { .. }),
        "[conformance {kind}] {what} ended {outcome:?}"
    );
    let finished = Finished {
        key,
        external,
        outcome,
        signal: signal.cloned(),
    };
    check_outputs(adapter, &finished, deadline).await;
    finished
}

/// Rule 3: `input` starts, can be found, succeeds within `deadline`, and has object outputs.
pub async fn check_succeeds(
    adapter: &dyn Adapter,
    input: &Value,
    signal: Option<&Value>,
    deadline: Duration,
) -> Finished {
    let key = fresh_key("succeed");
    let external = start(adapter, &key, input, deadline).await;
    check_find_after_start(adapter, &key, input, &external, deadline).await;
    let what = format!("the succeeding input {input}");
    polls_to_success(adapter, key, external, signal, deadline, &what).await
}

/// Outputs of finished work are readable and serialize as a JSON object.
pub async fn check_outputs(
    adapter: &dyn Adapter,
    finished: &Finished,
    deadline: Duration,
) -> Map<String, Value> {
    let kind = adapter.kind();
    let outputs = bounded(
        kind,
        "outputs",
        deadline,
        adapter.outputs(&finished.key, &finished.external),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "[conformance {kind}] outputs of {} failed: {e:?}",
            finished.key
        )
    });
    let text = serde_json::to_string(&outputs)
        .unwrap_or_else(|e| panic!("[conformance {kind}] outputs do not serialize: {e}"));
    assert!(
        matches!(serde_json::from_str::<Value>(&text), Ok(Value::Object(_))),
        "[conformance {kind}] outputs are not a JSON object: {text}"
    );
    outputs
}

/// Rule 5: the failing input ends `Failed` or `Errored`, never `Succeeded`.
pub async fn check_fails(
    adapter: &dyn Adapter,
    input: &Value,
    signal: Option<&Value>,
    deadline: Duration,
) -> Finished {
    let kind = adapter.kind();
    let key = fresh_key("fail");
    let external = start(adapter, &key, input, deadline).await;
    let (external, outcome) = poll_until_terminal(adapter, &key, external, signal, deadline).await;
    assert!(
        matches!(
            outcome.state,
            ExternalState::Failed | ExternalState::Errored
        ),
        "[conformance {kind}] the failing input {input} ended {outcome:?}"
    );
    Finished {
        key,
        external,
        outcome,
        signal: signal.cloned(),
    }
}

/// Rule 6, running work: the long input is not finished at once; after `cancel` it ends
/// `Cancelled` (or `Failed`/`Errored`, for systems that report an abort as a failure) within
/// `deadline`. A second cancel is `Ok`.
///
/// For a [side-effect free](Scenario::side_effect_free) adapter only `Ok` and "not
/// `Succeeded`" are required after the cancel.
pub async fn check_cancel_running(
    adapter: &dyn Adapter,
    input: &Value,
    side_effect_free: bool,
    deadline: Duration,
) {
    let kind = adapter.kind();
    let key = fresh_key("long");
    let external = start(adapter, &key, input, deadline).await;
    let first = bounded(
        kind,
        "poll",
        deadline,
        adapter.poll(&PollRequest {
            key: &key,
            external: &external,
            signal: None,
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("[conformance {kind}] first poll of the long input failed: {e:?}"));
    check_poll_hint(kind, &first);
    assert!(
        !first.state.is_terminal(),
        "[conformance {kind}] the long input {input} finished at once: {first:?}"
    );
    let external = first
        .external
        .as_ref()
        .map(|e| check_ref_round_trips(kind, e))
        .unwrap_or(external);

    bounded(kind, "cancel", deadline, adapter.cancel(&key, &external))
        .await
        .unwrap_or_else(|e| panic!("[conformance {kind}] cancel of running work failed: {e:?}"));

    if side_effect_free {
        let after = bounded(
            kind,
            "poll",
            deadline,
            adapter.poll(&PollRequest {
                key: &key,
                external: &external,
                signal: None,
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("[conformance {kind}] poll after cancel failed: {e:?}"));
        assert!(
            !matches!(after.state, ExternalState::Succeeded { .. }),
            "[conformance {kind}] cancelled work reported {after:?}"
        );
    } else {
        let (_, outcome) =
            poll_until_terminal(adapter, &key, external.clone(), None, deadline).await;
        assert!(
            matches!(
                outcome.state,
                ExternalState::Cancelled | ExternalState::Failed | ExternalState::Errored
            ),
            "[conformance {kind}] cancelled work ended {outcome:?}"
        );
    }

    bounded(kind, "cancel", deadline, adapter.cancel(&key, &external))
        .await
        .unwrap_or_else(|e| panic!("[conformance {kind}] a second cancel failed: {e:?}"));
}

/// Rule 6, finished work: `cancel` is `Ok` and the terminal state stays what it was (a
/// cancel that arrives late must not rewrite history).
pub async fn check_cancel_finished(adapter: &dyn Adapter, finished: &Finished, deadline: Duration) {
    let kind = adapter.kind();
    bounded(
        kind,
        "cancel",
        deadline,
        adapter.cancel(&finished.key, &finished.external),
    )
    .await
    .unwrap_or_else(|e| panic!("[conformance {kind}] cancel of finished work failed: {e:?}"));
    let again = bounded(
        kind,
        "poll",
        deadline,
        adapter.poll(&PollRequest {
            key: &finished.key,
            external: &finished.external,
            signal: finished.signal.as_ref(),
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("[conformance {kind}] poll after a late cancel failed: {e:?}"));
    assert_eq!(
        again.state, finished.outcome.state,
        "[conformance {kind}] a cancel of finished work changed its state"
    );
}

/// Rule 7: polls with a reference whose `data` is garbage answer (an error or any state)
/// without panicking, for a key never started and, if given, for finished work.
pub async fn check_garbage_ref(
    adapter: Arc<dyn Adapter>,
    finished: Option<&Finished>,
    deadline: Duration,
) {
    let kind = adapter.kind();
    let garbage = [
        json!({"garbage": [1, 2, 3], "pid": "not a number", "dir": 7}),
        json!("just a string"),
        json!(-1),
        json!([null, {"x": {}}]),
    ];
    let mut keys = vec![fresh_key("garbage")];
    keys.extend(finished.map(|f| f.key.clone()));
    for key in keys {
        for data in &garbage {
            for id in ["", "0", "garbage-id"] {
                let external = ExternalRef {
                    id: id.to_owned(),
                    url: Some("not a url".to_owned()),
                    data: data.clone(),
                };
                let adapter = adapter.clone();
                let key = key.clone();
                // A task turns a panic into a JoinError, so the failure names this rule.
                let task = tokio::spawn(async move {
                    let request = PollRequest {
                        key: &key,
                        external: &external,
                        signal: Some(&Value::Bool(true)),
                    };
                    let _ = adapter.poll(&request).await;
                });
                match bounded(kind, "poll of a garbage reference", deadline, task).await {
                    Ok(()) => {}
                    Err(e) if e.is_panic() => panic!(
                        "[conformance {kind}] poll panicked on a reference with data {data} and id {id:?}"
                    ),
                    Err(e) => panic!("[conformance {kind}] poll task failed: {e}"),
                }
            }
        }
    }
}

/// Rule 8: `logs` answers `Ok` for finished work.
pub async fn check_logs(adapter: &dyn Adapter, finished: &Finished, deadline: Duration) {
    let kind = adapter.kind();
    bounded(
        kind,
        "logs",
        deadline,
        adapter.logs(&finished.key, &finished.external),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "[conformance {kind}] logs of {} failed: {e:?}",
            finished.key
        )
    });
}
