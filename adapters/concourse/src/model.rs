//! Concourse's answers as baton reads them, and the build statuses mapped to baton's
//! states.
//!
//! Only the fields baton uses are read; any other is ignored, and a status is kept as text
//! so that one Concourse adds later is [`ExternalState::Unknown`] rather than a parse error.

use baton_core::ExternalState;
use serde::Deserialize;
use serde_json::{Map, Value};

/// A build (`GET /api/v1/builds/{id}`, the create answer, the job's builds list, a check).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Build {
    pub(crate) id: u64,
    #[serde(default)]
    pub(crate) name: String,
    pub(crate) status: String,
    /// Unix seconds, once started.
    #[serde(default)]
    pub(crate) start_time: Option<u64>,
    /// Who created it (7.x and later).
    #[serde(default)]
    pub(crate) created_by: Option<String>,
    /// Its comment (7.x and later).
    #[serde(default)]
    pub(crate) comment: Option<String>,
}

/// Why a build is still pending (`GET /api/v1/builds/{id}/preparation`); each value is
/// `blocking`, `not_blocking` or `unknown`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Preparation {
    #[serde(default)]
    pub(crate) paused_pipeline: String,
    #[serde(default)]
    pub(crate) paused_job: String,
    #[serde(default)]
    pub(crate) max_running_builds: String,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) inputs: Map<String, Value>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) missing_input_reasons: Map<String, Value>,
}

/// A build's inputs and outputs (`GET /api/v1/builds/{id}/resources`).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Resources {
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) inputs: Vec<Versioned>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) outputs: Vec<Versioned>,
}

/// One input or output: its name and the version it had.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Versioned {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) version: Value,
}

/// A pipeline or instance of a team (`GET /api/v1/teams/{team}/pipelines`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PipelineRef {
    pub(crate) name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) instance_vars: Map<String, Value>,
}

/// The user a token belongs to (`GET /api/v1/user`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct User {
    #[serde(default)]
    pub(crate) user_name: String,
}

/// A value Go may write as `null` (a nil map or slice) read as its default.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// Maps a build status as `atc/build.go` lists them.
pub(crate) fn state(status: &str) -> ExternalState {
    match status {
        "pending" => ExternalState::Queued,
        "started" => ExternalState::Running,
        "succeeded" => ExternalState::Succeeded { warnings: false },
        "failed" => ExternalState::Failed,
        "errored" => ExternalState::Errored,
        "aborted" => ExternalState::Cancelled,
        other => ExternalState::Unknown(other.to_owned()),
    }
}

impl Preparation {
    /// Why the build waits, in words; `None` when nothing is marked blocking.
    pub(crate) fn reasons(&self, pipeline: &str, job: &str) -> Option<String> {
        let mut reasons = Vec::new();
        if self.paused_pipeline == "blocking" {
            reasons.push(format!(
                "the pipeline `{pipeline}` is paused (unpause it: `fly unpause-pipeline -p {pipeline}`)"
            ));
        }
        if self.paused_job == "blocking" {
            reasons.push(format!(
                "the job `{job}` is paused (unpause it: `fly unpause-job -j {pipeline}/{job}`)"
            ));
        }
        if self.max_running_builds == "blocking" {
            reasons.push(format!(
                "the job `{job}` already runs as many builds as its `max_in_flight` (or `serial`) allows"
            ));
        }
        for (input, status) in &self.inputs {
            if status != "blocking" {
                continue;
            }
            match self
                .missing_input_reasons
                .get(input)
                .and_then(Value::as_str)
            {
                Some(reason) => reasons.push(format!("input `{input}` is missing: {reason}")),
                None => reasons.push(format!("input `{input}` is not satisfied")),
            }
        }
        for (input, reason) in &self.missing_input_reasons {
            if !self.inputs.contains_key(input) {
                let reason = reason.as_str().unwrap_or_default();
                reasons.push(format!("input `{input}` is missing: {reason}"));
            }
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_status_maps_and_unknown_ones_never_end() {
        assert_eq!(state("pending"), ExternalState::Queued);
        assert_eq!(state("started"), ExternalState::Running);
        assert_eq!(
            state("succeeded"),
            ExternalState::Succeeded { warnings: false }
        );
        assert_eq!(state("failed"), ExternalState::Failed);
        assert_eq!(state("errored"), ExternalState::Errored);
        assert_eq!(state("aborted"), ExternalState::Cancelled);
        for odd in ["Succeeded", "", "paused", "cancelled"] {
            let s = state(odd);
            assert_eq!(s, ExternalState::Unknown(odd.to_owned()));
            assert!(!s.is_terminal());
        }
    }

    #[test]
    fn a_preparation_says_every_blocker() {
        let prep: Preparation = serde_json::from_value(json!({
            "build_id": 1, "paused_pipeline": "blocking", "paused_job": "blocking",
            "max_running_builds": "blocking",
            "inputs": {"repo": "blocking", "image": "not_blocking", "other": "blocking"},
            "inputs_satisfied": "blocking",
            "missing_input_reasons": {"repo": "no versions available", "extra": "pinned version is not available"},
        }))
        .unwrap();
        let said = prep.reasons("app", "deploy").unwrap();
        for needle in [
            "the pipeline `app` is paused",
            "fly unpause-pipeline -p app",
            "the job `deploy` is paused",
            "max_in_flight",
            "input `repo` is missing: no versions available",
            "input `other` is not satisfied",
            "input `extra` is missing: pinned version is not available",
        ] {
            assert!(said.contains(needle), "{needle}: {said}");
        }
        assert!(!said.contains("image"), "{said}");
        let clear: Preparation = serde_json::from_value(json!({
            "paused_pipeline": "not_blocking", "paused_job": "not_blocking",
            "max_running_builds": "not_blocking", "inputs": {"repo": "not_blocking"},
            "missing_input_reasons": {}
        }))
        .unwrap();
        assert_eq!(clear.reasons("app", "deploy"), None);
        // Go writes a nil map or slice as `null`.
        let nil: Preparation =
            serde_json::from_value(json!({"inputs": null, "missing_input_reasons": null})).unwrap();
        assert_eq!(nil.reasons("app", "deploy"), None);
        let none: Resources =
            serde_json::from_value(json!({"inputs": null, "outputs": null})).unwrap();
        assert!(none.inputs.is_empty() && none.outputs.is_empty());
    }
}
