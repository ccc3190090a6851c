//! The JSON context that templates and `if:` conditions read.
//!
//! `{ event, trigger: {source, event, delivery_id}, run: {id, workflow, attempt},
//!    stages: { <id>: {status, outputs, external: {id, url}} } }`

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::adapter::ExternalRef;
use crate::state::StageStatus;

/// What started a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerInfo {
    /// The source name (`github`, `manual`).
    pub source: String,
    /// The event type (`push`, `manual`).
    pub event: String,
    /// The delivery id, when a webhook started the run.
    #[serde(default)]
    pub delivery_id: Option<String>,
}

/// One upstream stage as the context shows it.
#[derive(Debug, Clone, Copy)]
pub struct StageView<'a> {
    /// Its status.
    pub status: StageStatus,
    /// Its outputs (an object, or null before it finished).
    pub outputs: &'a Value,
    /// Its external reference, once started.
    pub external: Option<&'a ExternalRef>,
}

/// Builds the context for one stage. Only the stages given appear under `.stages`.
pub fn stage_context<'a>(
    event: &Value,
    trigger: &TriggerInfo,
    run_id: &str,
    workflow: &str,
    run_attempt: u32,
    stages: impl IntoIterator<Item = (&'a str, StageView<'a>)>,
) -> Value {
    let mut views = Map::new();
    for (id, view) in stages {
        let external = match view.external {
            Some(ext) => json!({"id": ext.id, "url": ext.url}),
            None => Value::Null,
        };
        let outputs = if view.outputs.is_null() {
            Value::Object(Map::new())
        } else {
            view.outputs.clone()
        };
        views.insert(
            id.to_owned(),
            json!({"status": view.status.as_str(), "outputs": outputs, "external": external}),
        );
    }
    json!({
        "event": event,
        "trigger": trigger,
        "run": {"id": run_id, "workflow": workflow, "attempt": run_attempt},
        "stages": views,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_has_the_documented_shape() {
        let outputs = json!({"n": 1});
        let ext = ExternalRef::new("42");
        let ctx = stage_context(
            &json!({"ref": "main"}),
            &TriggerInfo {
                source: "github".into(),
                event: "push".into(),
                delivery_id: Some("d1".into()),
            },
            "r1",
            "wf",
            1,
            [(
                "a",
                StageView {
                    status: StageStatus::Succeeded,
                    outputs: &outputs,
                    external: Some(&ext),
                },
            )],
        );
        assert_eq!(ctx["event"]["ref"], "main");
        assert_eq!(ctx["trigger"]["delivery_id"], "d1");
        assert_eq!(
            ctx["run"],
            json!({"id": "r1", "workflow": "wf", "attempt": 1})
        );
        assert_eq!(
            ctx["stages"]["a"],
            json!({"status": "succeeded", "outputs": {"n": 1}, "external": {"id": "42", "url": null}})
        );
    }
}
