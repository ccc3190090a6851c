//! The `approval` adapter: a stage that waits for a person's decision.
//!
//! ```yaml
//!   release:
//!     uses: approval
//!     with: { message: 'Release ${{ .event.pull_request.head.sha }}?', role: approver }
//!     timeout: 72h
//! ```
//!
//! There is no external system. The decision reaches the attempt as the engine's *signal*
//! ([`PollRequest::signal`]), sent by the CLI (`--approve`), the REST API or the UI, which
//! also check that the person holds `role`. The signal's shape is the core's [`Decision`]:
//! `{"decision": "approved" | "rejected", "by": "…", "comment": "…"}`. The kind declares that
//! it takes decisions and that `uses: approval` needs no `[adapters]` block.
//!
//! - `start` returns a reference whose id is the attempt key and whose data holds the
//!   message and role. It creates nothing, so it is idempotent, and `find` answers the same
//!   reference for any key: adopting an approval that was "never started" is exactly the
//!   same as starting it, so the engine can never start one twice in any harmful sense.
//! - `poll` maps the signal: approved → `Succeeded`, rejected → `Failed` (naming who
//!   rejected), none → `Blocked` (the engine wakes the attempt when a decision arrives, so
//!   the 30 s hint is only a safety net), anything else → still `Blocked`, saying the signal
//!   was not understood. The terminal poll replaces the reference with one that also records
//!   the decision, so `outputs` and `logs` (which get no signal) can read it back from the
//!   store, and a later poll keeps the first decision even if another signal arrives.
//! - `cancel` succeeds without doing anything, and that is the whole job: nothing outside
//!   baton waits on this stage, and the engine records the cancel in the stage's own state.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, ExternalState, FieldError, Logs,
    PollOutcome, PollRequest, SecretResolver, StartRequest,
};
pub use baton_core::{Decision, Verdict};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The kind name, as in `uses: approval`.
pub const KIND: &str = "approval";

/// The role asked for when a stage names none.
pub const DEFAULT_ROLE: &str = "approver";

/// How long to wait before polling a pending approval again. The engine wakes the attempt
/// when a decision arrives, so this only bounds how stale a missed wake-up can get.
pub const WAIT_HINT: Duration = Duration::from_secs(30);

/// The longest part of an unreadable signal quoted back in a message.
const QUOTE_LIMIT: usize = 200;

/// The instance block (`[adapters.<name>]` with `kind = "approval"`): it takes no keys.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceKeys {}

/// The `approval` kind: needs no instance settings ([`InstanceKeys`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApprovalKind;

impl AdapterKind for ApprovalKind {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn summary(&self) -> &'static str {
        "waits for a person to approve or reject the stage"
    }

    fn docs(&self) -> &'static str {
        "docs/adapters.md#approval"
    }

    fn builtin_instance(&self) -> bool {
        true
    }

    fn takes_decisions(&self) -> bool {
        true
    }

    fn validate_instance(&self, config: &Value) -> Vec<FieldError> {
        baton_core::read_config::<InstanceKeys>(config)
            .err()
            .unwrap_or_default()
    }

    fn validate_stage(&self, with: &Value) -> Vec<FieldError> {
        let map = match with {
            Value::Null => return Vec::new(),
            Value::Object(map) => map,
            _ => {
                return vec![FieldError::new(
                    "",
                    "expected a table with `message` and `role`, both optional",
                )];
            }
        };
        let mut errors = Vec::new();
        for (key, value) in map {
            match (key.as_str(), value) {
                ("message", Value::String(_)) => {}
                ("message", _) => errors.push(FieldError::new(
                    "message",
                    "expected a string: the question shown to the approver",
                )),
                ("role", Value::String(role)) if is_template(role) || is_role(role) => {}
                ("role", _) => errors.push(FieldError::new(
                    "role",
                    "expected a role name such as `approver` (letters, digits, `_`, `-`)",
                )),
                _ => errors.push(FieldError::new(
                    key,
                    "unknown key: the approval adapter takes `message` and `role`",
                )),
            }
        }
        errors
    }

    fn build(
        &self,
        name: &str,
        config: &Value,
        _secrets: &dyn SecretResolver,
    ) -> Result<Arc<dyn Adapter>, AdapterError> {
        if let Some(e) = self.validate_instance(config).first() {
            return Err(AdapterError::Invalid(format!(
                "adapter `{name}`: {}: {}",
                e.path, e.message
            )));
        }
        Ok(Arc::new(ApprovalAdapter))
    }
}

fn is_template(text: &str) -> bool {
    baton_core::adapter::InputMode::Templates.is_template(text)
}

fn is_role(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The `approval` adapter. Holds no state: everything lives in the reference and the signal.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApprovalAdapter;

impl ApprovalAdapter {
    /// The adapter.
    pub fn new() -> Self {
        Self
    }

    /// The reference for `key`: starting and finding are the same, side-effect free, act.
    fn reference(key: &AttemptKey, input: &Value) -> ExternalRef {
        let message = match input.get("message") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(text)) => text.clone(),
            // A whole-string template may render to another type; show it as JSON.
            Some(other) => other.to_string(),
        };
        let role = match input.get("role") {
            Some(Value::String(role)) if !role.is_empty() => role.clone(),
            _ => DEFAULT_ROLE.to_owned(),
        };
        ExternalRef {
            id: key.to_string(),
            url: None,
            data: json!({"message": message, "role": role}),
        }
    }
}

/// The parts of a reference, read leniently: a damaged reference must not panic a poll.
struct Recorded {
    message: String,
    role: String,
    decision: Option<Decision>,
}

impl Recorded {
    fn read(external: &ExternalRef) -> Self {
        let text = |key: &str| {
            external
                .data
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Self {
            message: text("message").unwrap_or_default(),
            role: text("role").unwrap_or_else(|| DEFAULT_ROLE.to_owned()),
            decision: external
                .data
                .get("decision")
                .and_then(|_| Decision::from_signal(&external.data)),
        }
    }

    fn waiting(&self) -> String {
        if self.message.is_empty() {
            "waiting for approval".to_owned()
        } else {
            format!("waiting for approval: {}", self.message)
        }
    }

    /// The reference recording `decision`, so that it outlives the signal.
    fn decided(&self, id: &str, decision: &Decision) -> ExternalRef {
        ExternalRef {
            id: id.to_owned(),
            url: None,
            data: json!({
                "message": self.message,
                "role": self.role,
                "decision": decision.decision,
                "by": decision.by,
                "comment": decision.comment,
            }),
        }
    }
}

fn quote(signal: &Value) -> String {
    let text = signal.to_string();
    match text.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

#[async_trait]
impl Adapter for ApprovalAdapter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn start(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        Ok(Self::reference(&request.key, &request.input))
    }

    async fn find(
        &self,
        key: &AttemptKey,
        input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        Ok(Some(Self::reference(key, input)))
    }

    async fn poll(&self, request: &PollRequest<'_>) -> Result<PollOutcome, AdapterError> {
        let recorded = Recorded::read(request.external);
        // The first decision is final: once recorded, later signals do not change it.
        let decision = match (&recorded.decision, request.signal) {
            (Some(decision), _) => decision.clone(),
            (None, None) => {
                let mut outcome = PollOutcome::state(ExternalState::Blocked)
                    .with_message(recorded.waiting())
                    .next_poll(WAIT_HINT);
                outcome.raw = Some("waiting".to_owned());
                return Ok(outcome);
            }
            (None, Some(signal)) => match Decision::from_signal(signal) {
                Some(decision) => decision,
                None => {
                    let mut outcome = PollOutcome::state(ExternalState::Blocked)
                        .with_message(format!(
                            "the signal {} was not understood: expected {{\"decision\": \"approved\" or \"rejected\", \"by\": …, \"comment\": …}}; still {}",
                            quote(signal),
                            recorded.waiting()
                        ))
                        .next_poll(WAIT_HINT);
                    outcome.raw = Some("waiting".to_owned());
                    return Ok(outcome);
                }
            },
        };
        let state = match decision.decision {
            Verdict::Approved => ExternalState::Succeeded { warnings: false },
            Verdict::Rejected => ExternalState::Failed,
        };
        let mut outcome = PollOutcome::state(state).with_message(decision.describe());
        outcome.raw = Some(decision.decision.as_str().to_owned());
        outcome.external = Some(recorded.decided(&request.external.id, &decision));
        Ok(outcome)
    }

    async fn outputs(
        &self,
        _key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        let recorded = Recorded::read(external);
        let decision = recorded.decision.ok_or_else(|| {
            AdapterError::Protocol(
                "this approval has no recorded decision: outputs are read from the reference returned by the poll that saw the decision"
                    .to_owned(),
            )
        })?;
        let mut outputs = Map::new();
        outputs.insert("decision".into(), json!(decision.decision));
        outputs.insert("by".into(), json!(decision.by));
        outputs.insert("comment".into(), json!(decision.comment));
        outputs.insert("message".into(), json!(recorded.message));
        Ok(outputs)
    }

    async fn cancel(&self, _key: &AttemptKey, _external: &ExternalRef) -> Result<(), AdapterError> {
        // Nothing outside baton holds this stage, so there is nothing to stop; the engine
        // marks the stage cancelled and stops polling it, which is all a cancel means here.
        Ok(())
    }

    async fn logs(&self, _key: &AttemptKey, external: &ExternalRef) -> Result<Logs, AdapterError> {
        let recorded = Recorded::read(external);
        let text = match &recorded.decision {
            Some(decision) => decision.describe(),
            None => format!("{} (role: {})", recorded.waiting(), recorded.role),
        };
        Ok(Logs {
            links: Vec::new(),
            text: Some(text),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AttemptKey {
        AttemptKey::new("r1", "release", 1)
    }

    async fn poll(external: &ExternalRef, signal: Option<&Value>) -> PollOutcome {
        ApprovalAdapter
            .poll(&PollRequest {
                key: &key(),
                external,
                signal,
            })
            .await
            .unwrap()
    }

    async fn started(input: Value) -> ExternalRef {
        ApprovalAdapter
            .start(&StartRequest {
                key: key(),
                workflow: "w".into(),
                input,
                timeout: Duration::from_secs(60),
            })
            .await
            .unwrap()
    }

    #[test]
    fn stage_validation() {
        let kind = ApprovalKind;
        assert!(kind.validate_stage(&Value::Null).is_empty());
        assert!(kind.validate_stage(&json!({})).is_empty());
        assert!(
            kind.validate_stage(
                &json!({"message": "Ship ${{ .run.id }}?", "role": "release-managers"})
            )
            .is_empty()
        );
        assert!(
            kind.validate_stage(&json!({"role": "${{ .event.role }}"}))
                .is_empty()
        );
        let errors = kind.validate_stage(&json!({"message": 1, "role": "a b", "who": "x"}));
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["message", "role", "who"]);
        assert_eq!(kind.validate_stage(&json!("ship?"))[0].path, "");
    }

    #[test]
    fn the_kind_takes_decisions_without_a_config_block() {
        let kind = ApprovalKind;
        assert!(kind.takes_decisions() && kind.builtin_instance());
    }

    #[test]
    fn instance_takes_no_settings() {
        let kind = ApprovalKind;
        assert!(kind.validate_instance(&json!({})).is_empty());
        assert_eq!(kind.validate_instance(&json!({"url": "x"}))[0].path, "url");
    }

    #[tokio::test]
    async fn start_and_find_agree_and_default_the_role() {
        let input = json!({"message": "Ship it?"});
        let ext = started(input.clone()).await;
        assert_eq!(ext.id, "r1/release/1");
        assert_eq!(ext.data, json!({"message": "Ship it?", "role": "approver"}));
        assert_eq!(started(input.clone()).await, ext);
        assert_eq!(
            ApprovalAdapter.find(&key(), &input).await.unwrap(),
            Some(ext)
        );
    }

    #[tokio::test]
    async fn waits_without_a_signal() {
        let ext = started(json!({"message": "Ship it?"})).await;
        let outcome = poll(&ext, None).await;
        assert_eq!(outcome.state, ExternalState::Blocked);
        assert_eq!(
            outcome.message.as_deref(),
            Some("waiting for approval: Ship it?")
        );
        assert_eq!(outcome.next_poll, Some(WAIT_HINT));
        assert_eq!(
            outcome.state.stage_status(),
            baton_core::StageStatus::Waiting
        );
    }

    #[tokio::test]
    async fn approval_succeeds_with_outputs() {
        let ext = started(json!({"message": "Ship it?", "role": "ops"})).await;
        let signal = Decision::approved("alice").with_comment("go").to_signal();
        let outcome = poll(&ext, Some(&signal)).await;
        assert_eq!(outcome.state, ExternalState::Succeeded { warnings: false });
        assert_eq!(outcome.message.as_deref(), Some("approved by alice: go"));
        let stored = outcome.external.unwrap();
        assert_eq!(stored.id, ext.id);
        let outputs = ApprovalAdapter.outputs(&key(), &stored).await.unwrap();
        assert_eq!(
            Value::Object(outputs),
            json!({"decision": "approved", "by": "alice", "comment": "go", "message": "Ship it?"})
        );
        let logs = ApprovalAdapter.logs(&key(), &stored).await.unwrap();
        assert_eq!(logs.text.as_deref(), Some("approved by alice: go"));
    }

    #[tokio::test]
    async fn rejection_fails_naming_who() {
        let ext = started(json!({})).await;
        let signal = json!({"decision": "rejected", "by": "bob", "comment": "not today", "at": 5});
        let outcome = poll(&ext, Some(&signal)).await;
        assert_eq!(outcome.state, ExternalState::Failed);
        assert_eq!(
            outcome.message.as_deref(),
            Some("rejected by bob: not today")
        );
        let outputs = ApprovalAdapter
            .outputs(&key(), outcome.external.as_ref().unwrap())
            .await
            .unwrap();
        assert_eq!(outputs["decision"], "rejected");
        assert_eq!(outputs["message"], "");
    }

    #[tokio::test]
    async fn the_first_decision_is_final() {
        let ext = started(json!({})).await;
        let approved = Decision::approved("alice").to_signal();
        let stored = poll(&ext, Some(&approved)).await.external.unwrap();
        let rejected = Decision::rejected("bob").to_signal();
        let again = poll(&stored, Some(&rejected)).await;
        assert_eq!(again.state, ExternalState::Succeeded { warnings: false });
        assert_eq!(poll(&stored, None).await.state, again.state);
    }

    #[tokio::test]
    async fn unreadable_signals_keep_waiting() {
        let ext = started(json!({"message": "Ship?"})).await;
        for signal in [
            json!({"decision": "maybe"}),
            json!("approved"),
            json!({"decision": "approved", "by": 7}),
            json!({"decision": "x".repeat(10_000)}),
        ] {
            let outcome = poll(&ext, Some(&signal)).await;
            assert_eq!(outcome.state, ExternalState::Blocked, "{signal}");
            let message = outcome.message.unwrap();
            assert!(message.contains("was not understood"), "{message}");
            assert!(
                message.ends_with("waiting for approval: Ship?"),
                "{message}"
            );
            assert!(message.len() < 600, "{message}");
        }
    }

    #[tokio::test]
    async fn outputs_need_a_recorded_decision() {
        let ext = started(json!({})).await;
        let err = ApprovalAdapter.outputs(&key(), &ext).await.unwrap_err();
        assert!(matches!(err, AdapterError::Protocol(_)));
        let logs = ApprovalAdapter.logs(&key(), &ext).await.unwrap();
        assert_eq!(
            logs.text.as_deref(),
            Some("waiting for approval (role: approver)")
        );
        ApprovalAdapter.cancel(&key(), &ext).await.unwrap();
    }
}
