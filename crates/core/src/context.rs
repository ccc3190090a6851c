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

/// Where events keep the commit they are about, most specific first: a pull request's
/// head, a GitLab merge request's last commit, a GitLab push's checkout, a GitLab
/// pipeline's SHA, a push's `after` and head commit, the head SHA of GitHub check, workflow
/// and merge-queue events, a deployment's, then a plain `sha` or `commit` (a string, or an
/// object with a `sha`), as a status event or a hand-started run may carry.
pub const COMMIT_POINTERS: &[&str] = &[
    "/pull_request/head/sha",
    "/object_attributes/last_commit/id",
    "/checkout_sha",
    "/object_attributes/sha",
    "/after",
    "/head_commit/id",
    "/check_suite/head_sha",
    "/check_run/head_sha",
    "/workflow_run/head_sha",
    "/workflow_job/head_sha",
    "/merge_group/head_sha",
    "/deployment/sha",
    "/sha",
    "/commit",
    "/commit/sha",
];

/// The commit `event` is about, as a full lowercase SHA: the first of [`COMMIT_POINTERS`]
/// that holds a [`full_sha`]. `None` when it names none, or when it is a branch deletion
/// (`deleted: true`), whose only SHA is a commit that is gone from the branch.
pub fn commit_of(event: &Value) -> Option<String> {
    if event.pointer("/deleted").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    COMMIT_POINTERS
        .iter()
        .find_map(|pointer| event.pointer(pointer).and_then(full_sha))
}

/// `value` as a full commit SHA in lowercase, if it is one: a string of 40 hex digits
/// (SHA-1) or 64 (SHA-256 repositories), not all zeros. Anything else (a short SHA, the
/// zeros a forge sends for a created or deleted ref, text that could change a URL it is put
/// in) is not.
pub fn full_sha(value: &Value) -> Option<String> {
    let sha = value.as_str()?;
    let ok = matches!(sha.len(), 40 | 64)
        && sha.bytes().all(|b| b.is_ascii_hexdigit())
        && sha.bytes().any(|b| b != b'0');
    ok.then(|| sha.to_ascii_lowercase())
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

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
    const HEAD: &str = "89abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn commits_of_forge_events() {
        let sha = Some(SHA.to_owned());
        let head = Some(HEAD.to_owned());
        for (event, want) in [
            // GitHub push: `after`, or the head commit when `after` is missing.
            (
                json!({"ref": "refs/heads/main", "after": SHA, "head_commit": {"id": HEAD}}),
                &sha,
            ),
            (
                json!({"after": "0".repeat(40), "head_commit": {"id": HEAD}}),
                &head,
            ),
            // A pull request's head wins over the push-like `after` it also carries.
            (
                json!({"after": SHA, "pull_request": {"head": {"sha": HEAD}}}),
                &head,
            ),
            (json!({"check_suite": {"head_sha": SHA}}), &sha),
            (json!({"check_run": {"head_sha": SHA}}), &sha),
            (json!({"workflow_run": {"head_sha": HEAD}}), &head),
            (json!({"workflow_job": {"head_sha": HEAD}}), &head),
            (json!({"merge_group": {"head_sha": SHA}}), &sha),
            (json!({"deployment": {"sha": SHA}}), &sha),
            // GitLab push (the checkout, not a tag object's `after`), merge request, pipeline.
            (
                json!({"object_kind": "tag_push", "after": HEAD, "checkout_sha": SHA}),
                &sha,
            ),
            (
                json!({"object_kind": "merge_request", "object_attributes": {"last_commit": {"id": HEAD}}}),
                &head,
            ),
            (
                json!({"object_kind": "pipeline", "object_attributes": {"sha": SHA}}),
                &sha,
            ),
            // Plain fields, upper case folded.
            (json!({"sha": SHA.to_uppercase()}), &sha),
            (json!({"commit": SHA}), &sha),
            (json!({"commit": {"sha": HEAD}}), &head),
            (json!({"sha": "a".repeat(64)}), &Some("a".repeat(64))),
        ] {
            assert_eq!(&commit_of(&event), want, "{event}");
        }
    }

    #[test]
    fn events_without_a_commit_have_none() {
        for event in [
            json!({}),
            json!({"ref": "main"}),
            json!([SHA]),
            json!(SHA),
            json!({"after": "0".repeat(40)}),
            json!({"after": SHA, "deleted": true}),
            json!({"sha": "abc1234"}),
            json!({"sha": format!("{}/../..", &SHA[..34])}),
            json!({"sha": format!("{}g", &SHA[..39])}),
            json!({"sha": 1234}),
            json!({"commit": {"id": SHA}}),
            json!({"checkout_sha": null, "after": "0".repeat(40)}),
        ] {
            assert_eq!(commit_of(&event), None, "{event}");
        }
    }

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
