//! The kit against a small in-memory adapter: a conforming one passes, and each kind of
//! breakage is caught with a message naming the rule.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use baton_adapter_kit::{
    Scenario, check_garbage_ref, check_poll_hint, engine_key, run_conformance,
};
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, ExternalState, FieldError, Logs,
    PollOutcome, PollRequest, SecretResolver, StartRequest,
};
use serde_json::{Map, Value, json};

/// How the toy misbehaves, one flaw at a time.
#[derive(Clone, Copy, PartialEq)]
enum Flaw {
    None,
    FindsEverything,
    PanicsOnGarbage,
    IgnoresCancel,
    HugeHint,
    /// `find` answers from what this instance started, not from the system.
    FindsOnlyItsOwn,
}

/// The toy's external system: key → (input, polls so far, cancelled). Shared by every
/// instance built for it, as a CI server is by every replica.
type System = Arc<Mutex<HashMap<String, (Value, u32, bool)>>>;

struct Toy {
    flaw: Flaw,
    work: System,
    /// The keys this instance started.
    started: Mutex<HashSet<String>>,
}

impl Toy {
    fn new(flaw: Flaw, work: System) -> Self {
        Self {
            flaw,
            work,
            started: Mutex::default(),
        }
    }
}

#[async_trait]
impl Adapter for Toy {
    fn kind(&self) -> &'static str {
        "toy"
    }

    async fn start(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        self.work
            .lock()
            .unwrap()
            .entry(request.key.to_string())
            .or_insert((request.input.clone(), 0, false));
        self.started.lock().unwrap().insert(request.key.to_string());
        Ok(ExternalRef {
            id: request.key.to_string(),
            url: None,
            data: json!({"n": 1}),
        })
    }

    async fn find(&self, key: &AttemptKey, _: &Value) -> Result<Option<ExternalRef>, AdapterError> {
        let known = if self.flaw == Flaw::FindsOnlyItsOwn {
            self.started.lock().unwrap().contains(key.as_str())
        } else {
            self.work.lock().unwrap().contains_key(key.as_str())
        };
        Ok(
            (known || self.flaw == Flaw::FindsEverything).then(|| ExternalRef {
                id: key.to_string(),
                url: None,
                data: json!({"n": 1}),
            }),
        )
    }

    async fn poll(&self, request: &PollRequest<'_>) -> Result<PollOutcome, AdapterError> {
        if self.flaw == Flaw::PanicsOnGarbage {
            let n = request.external.data["n"].as_u64().unwrap();
            assert!(n > 0);
        }
        let mut work = self.work.lock().unwrap();
        let Some((input, polls, cancelled)) = work.get_mut(request.key.as_str()) else {
            return Err(AdapterError::NotFound("never started".into()));
        };
        *polls += 1;
        let state = match (input.as_str(), *cancelled, *polls) {
            (Some("long"), true, _) => ExternalState::Cancelled,
            (Some("long"), false, _) | (_, _, 1) => ExternalState::Unknown("warming".into()),
            (Some("ok"), _, _) => ExternalState::Succeeded { warnings: false },
            _ => ExternalState::Failed,
        };
        let hint = if self.flaw == Flaw::HugeHint { 7200 } else { 1 };
        Ok(PollOutcome::state(state).next_poll(Duration::from_secs(hint)))
    }

    async fn outputs(
        &self,
        _: &AttemptKey,
        _: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        Ok(Map::new())
    }

    async fn cancel(&self, key: &AttemptKey, _: &ExternalRef) -> Result<(), AdapterError> {
        if self.flaw != Flaw::IgnoresCancel
            && let Some(w) = self.work.lock().unwrap().get_mut(key.as_str())
            // Finished work stays as it was.
            && w.0 == json!("long")
        {
            w.2 = true;
        }
        Ok(())
    }

    async fn logs(&self, _: &AttemptKey, _: &ExternalRef) -> Result<Logs, AdapterError> {
        Ok(Logs::default())
    }
}

struct ToyKind;

impl AdapterKind for ToyKind {
    fn kind(&self) -> &'static str {
        "toy"
    }

    fn validate_instance(&self, _: &Value) -> Vec<FieldError> {
        Vec::new()
    }

    fn validate_stage(&self, with: &Value) -> Vec<FieldError> {
        match with.get("x") {
            Some(Value::String(_)) => Vec::new(),
            _ => vec![FieldError::new("x", "expected a string")],
        }
    }

    fn build(
        &self,
        _: &str,
        _: &Value,
        _: &dyn SecretResolver,
    ) -> Result<Arc<dyn Adapter>, AdapterError> {
        Err(AdapterError::Invalid("not used".into()))
    }
}

fn scenario(flaw: Flaw) -> Scenario {
    let system = System::default();
    Scenario {
        kind: Arc::new(ToyKind),
        adapter: Arc::new(Toy::new(flaw, system.clone())),
        valid_with: json!({"x": "y"}),
        invalid_with: json!({"x": 1}),
        succeed: json!("ok"),
        fail: json!("bad"),
        long: json!("long"),
        success_signal: None,
        failure_signal: None,
        side_effect_free: false,
        replica: Some(Arc::new(Toy::new(flaw, system))),
        deadline: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn a_conforming_adapter_passes() {
    run_conformance(scenario(Flaw::None)).await;
}

#[tokio::test]
#[should_panic(expected = "find of the never-started key")]
async fn finding_unstarted_work_is_caught() {
    run_conformance(scenario(Flaw::FindsEverything)).await;
}

#[tokio::test]
#[should_panic(expected = "poll panicked on a reference with data")]
async fn a_panic_on_garbage_is_caught() {
    let s = scenario(Flaw::PanicsOnGarbage);
    check_garbage_ref(s.adapter, None, s.deadline).await;
}

#[tokio::test]
#[should_panic(expected = "did not reach a terminal state")]
async fn an_ignored_cancel_is_caught_within_the_deadline() {
    let mut s = scenario(Flaw::IgnoresCancel);
    s.deadline = Duration::from_secs(1);
    run_conformance(s).await;
}

#[tokio::test]
#[should_panic(expected = "outside (0, 1 h]")]
async fn a_huge_hint_is_caught() {
    run_conformance(scenario(Flaw::HugeHint)).await;
}

#[tokio::test]
#[should_panic(expected = "a replica taking over the stage would start it again")]
async fn finding_only_what_this_instance_started_is_caught() {
    run_conformance(scenario(Flaw::FindsOnlyItsOwn)).await;
}

#[test]
fn engine_keys_hold_their_time_and_differ() {
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let (a, b) = (engine_key("s"), engine_key("s"));
    assert_ne!(a, b);
    assert_eq!(a.run_id().len(), 32, "{a}");
    let created = baton_core::wire::run_created_ms(&a).expect("a UUIDv7 run id");
    assert!(
        created >= before && created < before + 5_000,
        "{created} vs {before}"
    );
    assert_eq!(AttemptKey::parse(a.as_str()), Some(a));
}

#[test]
#[should_panic(expected = "outside (0, 1 h]")]
fn a_zero_hint_is_caught() {
    let outcome = PollOutcome::state(ExternalState::Running).next_poll(Duration::ZERO);
    check_poll_hint("toy", &outcome);
}

#[test]
#[should_panic(expected = "accepted the invalid block")]
fn a_lax_validation_is_caught() {
    baton_adapter_kit::check_validate_stage(&ToyKind, &json!({"x": "y"}), &json!({"x": "z"}));
}
