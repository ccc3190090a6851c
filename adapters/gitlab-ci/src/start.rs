//! Creating a pipeline, and finding the one an attempt already created.

use std::time::Duration;

use baton_core::typed::stage_with;
use baton_core::wire::{iso_utc, run_created_ms};
use baton_core::{AdapterError, AttemptKey, ExternalRef, StartRequest};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::GitLabAdapter;
use crate::client::{Call, Credential, Repeat, gitlab_message};
use crate::config::{self, ATTEMPT_VARIABLE, Mode, StageSpec};
use crate::model::{Pipeline, Variable};
use crate::tracked::Tracked;

/// GitLab's words when the project's "Minimum role to use pipeline variables" is above
/// the token's role (`Gitlab::Ci::Pipeline::Chain::Validate::...` in gitlabhq/gitlabhq,
/// rendered by `render_validation_error!` in `lib/api/ci/pipelines.rb` as
/// `400 {"message": {"base": [...]}}`).
const VARIABLES_FORBIDDEN: &str = "Insufficient permissions to set pipeline variables";

/// How many recent pipelines `find` looks through.
const FIND_CANDIDATES: usize = 20;

/// How far before a run's creation `find` looks, for clocks that disagree a little.
const CLOCK_SLACK: Duration = Duration::from_secs(60);

/// The largest create answer read.
const CREATE_ANSWER_BYTES: usize = 1_048_576;

fn stage_spec(input: &Value) -> Result<StageSpec, AdapterError> {
    stage_with(config::parse_stage(input, Mode::Rendered))
}

impl GitLabAdapter {
    /// Creates the pipeline of the stage in `request` and returns the attempt's reference.
    pub(crate) async fn create(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        let spec = stage_spec(&request.input)?;
        let key = &request.key;
        let client = &self.inner.client;
        let mut variables = spec.variables.clone();
        variables.push((ATTEMPT_VARIABLE.to_owned(), key.to_string()));
        let (url, mut body, credential, what) = match &self.inner.trigger_token {
            // The trigger endpoint takes variables as a hash (doc/ci/triggers/_index.md).
            Some(trigger) => {
                let hash: Map<String, Value> = variables
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect();
                (
                    client.url("trigger/pipeline", &[]),
                    json!({"token": trigger.expose(), "ref": spec.git_ref, "variables": hash}),
                    Credential::Trigger,
                    "create a pipeline with the trigger token",
                )
            }
            // The pipeline API takes them as an array (doc/api/pipelines.md).
            None => {
                let array: Vec<Value> = variables
                    .into_iter()
                    .map(|(k, v)| json!({"key": k, "value": v, "variable_type": "env_var"}))
                    .collect();
                (
                    client.url("pipeline", &[]),
                    json!({"ref": spec.git_ref, "variables": array}),
                    Credential::Token,
                    "create a pipeline",
                )
            }
        };
        if !spec.inputs.is_empty() {
            body["inputs"] = Value::Object(spec.inputs.clone());
        }
        let answer = client
            .send(
                Method::POST,
                url,
                Some(&body),
                Call {
                    credential,
                    what,
                    repeat: Repeat::Once,
                    cap: CREATE_ANSWER_BYTES,
                    tail: false,
                },
            )
            .await?;
        if answer.status == StatusCode::BAD_REQUEST
            && gitlab_message(&answer.body).is_some_and(|m| m.contains(VARIABLES_FORBIDDEN))
        {
            return Err(AdapterError::Invalid(format!(
                "GitLab refused the pipeline's variables (400 \"{VARIABLES_FORBIDDEN}\"): baton sets BATON_ATTEMPT to find the pipeline again after a restart, so the token's user needs a role at least the project's \"Minimum role to use pipeline variables\" (Settings > CI/CD > Variables; `ci_pipeline_variables_minimum_override_role` in the projects API), which must not be `no_one_allowed`"
            )));
        }
        client.check(&answer, credential, what)?;
        let pipeline: Pipeline = client.parse(&answer, what)?;
        let tracked = Tracked {
            iid: pipeline.iid,
            dotenv_artifact: spec.dotenv_artifact,
            ..Tracked::default()
        };
        let external = tracked.reference(&pipeline);
        self.inner.followed.follow(pipeline.id, key, &external);
        tracing::info!(attempt = %key, pipeline = pipeline.id, "created a GitLab pipeline");
        Ok(external)
    }

    /// See [`GitLabAdapter::find`](crate::GitLabAdapter).
    pub(crate) async fn find_pipeline(
        &self,
        key: &AttemptKey,
        input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        if let Some(known) = self.inner.followed.reference(key) {
            return Ok(Some(known));
        }
        let spec = stage_spec(input)?;
        let source = if self.inner.trigger_token.is_some() {
            "trigger"
        } else {
            "api"
        };
        let since = run_created_ms(key)
            .map(|ms| iso_utc(ms.saturating_sub(CLOCK_SLACK.as_millis() as u64)));
        let per_page = FIND_CANDIDATES.to_string();
        let mut query = vec![
            ("ref", spec.git_ref.as_str()),
            ("source", source),
            ("order_by", "id"),
            ("sort", "desc"),
            ("per_page", per_page.as_str()),
        ];
        if let Some(since) = &since {
            query.push(("updated_after", since.as_str()));
        }
        let client = &self.inner.client;
        let candidates: Vec<Pipeline> = client
            .get_json("pipelines", &query, "list recent pipelines")
            .await?;
        for pipeline in candidates {
            let variables: Vec<Variable> = client
                .get_json(
                    &format!("pipelines/{}/variables", pipeline.id),
                    &[],
                    "read a pipeline's variables",
                )
                .await?;
            let ours = variables
                .iter()
                .any(|v| v.key == ATTEMPT_VARIABLE && v.value.as_deref() == Some(key.as_str()));
            if ours {
                let tracked = Tracked {
                    iid: pipeline.iid,
                    dotenv_artifact: spec.dotenv_artifact.clone(),
                    ..Tracked::default()
                };
                let external = tracked.reference(&pipeline);
                self.inner.followed.follow(pipeline.id, key, &external);
                tracing::info!(attempt = %key, pipeline = pipeline.id, "found the attempt's GitLab pipeline");
                return Ok(Some(external));
            }
        }
        Ok(None)
    }
}
