//! Starting an attempt and finding it again: the builder and its force scheduler are
//! looked up and checked (the scheduler must build that builder and declare every
//! property given), then one build is forced with the attempt key in its reason; `find`
//! looks for a buildset whose reason holds that key.

use std::time::Instant;

use baton_core::{AdapterError, AttemptKey, ExternalRef, FieldError, StartRequest};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::client::{backoff, may_retry};
use crate::config::{Mode, RESERVED_PROPERTIES, StageSpec, parse_stage};
use crate::model::{self, BuildRequest, RefData, all, first, key_in_reason};
use crate::{ATTEMPT_PROPERTY, BuildbotAdapter};

/// A force scheduler, as `GET /forceschedulers/<name>` describes it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Scheduler {
    pub(crate) builder_names: Vec<String>,
    pub(crate) all_fields: Vec<Value>,
}

impl Scheduler {
    /// Every parameter's `fullName` (the key the force call takes) and `type`.
    pub(crate) fn parameters(&self) -> Vec<(String, String)> {
        fn walk(fields: &[Value], out: &mut Vec<(String, String)>) {
            for field in fields {
                if let Some(children) = field.get("fields").and_then(Value::as_array) {
                    walk(children, out);
                } else if let Some(name) = field.get("fullName").and_then(Value::as_str)
                    && !name.is_empty()
                {
                    let kind = field.get("type").and_then(Value::as_str).unwrap_or("text");
                    out.push((name.to_owned(), kind.to_owned()));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.all_fields, &mut out);
        out
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Buildset {
    pub(crate) bsid: u64,
    pub(crate) reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Builder {
    pub(crate) builderid: u64,
    pub(crate) name: String,
}

impl BuildbotAdapter {
    /// Forces one build of the stage in `request` and returns the reference to its build request.
    pub(crate) async fn force(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        let spec = parse_stage(&request.input, Mode::Rendered)
            .map_err(|errors| AdapterError::Invalid(FieldError::join(&errors)))?;
        let builderid = self.builder_id(&spec.builder).await?;
        let scheduler = self.scheduler(&spec.scheduler).await?;
        let params = self.force_params(&spec, &scheduler, &request.key, &request.workflow)?;
        let url = self
            .client
            .api_url(&["forceschedulers", &spec.scheduler], &[]);
        let what = format!(
            "force builder `{}` through scheduler `{}`",
            spec.builder, spec.scheduler
        );
        let begun = Instant::now();
        let mut retry = 0;
        loop {
            let failure = match self
                .client
                .control_once(url.clone(), "force", params.clone(), &what)
                .await
            {
                Ok(result) => {
                    let data = self.forced(&result, &spec.builder, builderid)?;
                    tracing::info!(attempt = %request.key, buildrequest = data.buildrequest, builder = %spec.builder, "forced a Buildbot build");
                    return Ok(self.reference(&data));
                }
                Err(failure) => failure,
            };
            let wait = backoff(retry, failure.retry_after);
            if !failure.retry || !may_retry(retry, begun, wait) {
                // After an ambiguous failure the engine asks `find` before starting again.
                return Err(failure.error);
            }
            tracing::debug!(attempt = %request.key, error = %failure.error, ?wait, "force failed; retrying");
            tokio::time::sleep(wait).await;
            if failure.ambiguous
                && let Some(data) = self.find_forced(&request.key, Some(&spec.builder)).await?
            {
                return Ok(self.reference(&data));
            }
            retry += 1;
        }
    }

    /// Finds the build request forced for `key`, if any.
    pub(crate) async fn find_work(
        &self,
        key: &AttemptKey,
        input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        let builder = input.get("builder").and_then(Value::as_str);
        Ok(self
            .find_forced(key, builder)
            .await?
            .map(|data| self.reference(&data)))
    }

    pub(crate) async fn builder_id(&self, name: &str) -> Result<u64, AdapterError> {
        let url = self.client.api_url(&["builders"], &[("name", name)]);
        let answer = self
            .client
            .get(url, &format!("look up builder `{name}`"))
            .await?;
        if let Some(builder) = first::<Builder>(&answer, "builders")? {
            return Ok(builder.builderid);
        }
        let url = self.client.api_url(&["builders"], &[]);
        let names = all::<Builder>(&self.client.get(url, "list builders").await?, "builders")
            .map(|list| {
                list.into_iter()
                    .map(|b| b.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        Err(AdapterError::NotFound(format!(
            "Buildbot at {} has no builder `{name}` (it has: {names}): check `builder` in the stage's `with`",
            self.client.base()
        )))
    }

    pub(crate) async fn builder_name(&self, builderid: u64) -> Result<String, AdapterError> {
        let url = self
            .client
            .api_url(&["builders", &builderid.to_string()], &[]);
        let answer = self
            .client
            .get(url, &format!("read builder {builderid}"))
            .await?;
        Ok(first::<Builder>(&answer, "builders")?
            .map(|b| b.name)
            .unwrap_or_default())
    }

    pub(crate) async fn scheduler(&self, name: &str) -> Result<Scheduler, AdapterError> {
        let url = self.client.api_url(&["forceschedulers", name], &[]);
        let what = format!("read force scheduler `{name}`");
        match self.client.get(url, &what).await {
            Ok(answer) => first::<Scheduler>(&answer, "forceschedulers")?
                .ok_or_else(|| self.no_scheduler(name)),
            Err(AdapterError::NotFound(_)) => Err(self.no_scheduler(name)),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn no_scheduler(&self, name: &str) -> AdapterError {
        AdapterError::NotFound(format!(
            "Buildbot at {} has no force scheduler `{name}`: set `scheduler` in the stage's `with` to the name of a ForceScheduler in master.cfg (the default is `force`)",
            self.client.base()
        ))
    }

    /// The force call's parameters, or why the stage cannot be forced as written.
    pub(crate) fn force_params(
        &self,
        spec: &StageSpec,
        scheduler: &Scheduler,
        key: &AttemptKey,
        workflow: &str,
    ) -> Result<Value, AdapterError> {
        if !scheduler.builder_names.iter().any(|b| b == &spec.builder) {
            return Err(AdapterError::Invalid(format!(
                "force scheduler `{}` cannot build `{}` (it builds: {}): add the builder to its builderNames, or set `scheduler`",
                spec.scheduler,
                spec.builder,
                scheduler.builder_names.join(", ")
            )));
        }
        let parameters = scheduler.parameters();
        let kind_of = |name: &str| {
            parameters
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, k)| k.as_str())
        };
        let mut params = Map::new();
        let mut problems = Vec::new();
        for (name, value) in &spec.properties {
            let Some(kind) = kind_of(name) else {
                problems.push(format!("`{name}` is not one of its parameters"));
                continue;
            };
            let converted = match (kind, value) {
                ("bool", Value::Bool(b)) => Value::Bool(*b),
                ("bool", Value::String(s)) if s == "true" || s == "false" => {
                    Value::Bool(s == "true")
                }
                ("bool", other) => {
                    problems.push(format!("`{name}` is a boolean parameter, not {other}"));
                    continue;
                }
                (_, Value::String(s)) => Value::String(s.clone()),
                (_, other) => Value::String(other.to_string()),
            };
            params.insert(name.clone(), converted);
        }
        if !problems.is_empty() {
            let names: Vec<&str> = parameters
                .iter()
                .map(|(n, _)| n.as_str())
                .filter(|n| !RESERVED_PROPERTIES.contains(n))
                .collect();
            return Err(AdapterError::Invalid(format!(
                "force scheduler `{}` would drop or refuse properties: {}; it takes: {} (declare more in its `properties` in master.cfg)",
                spec.scheduler,
                problems.join("; "),
                names.join(", ")
            )));
        }
        params.insert(
            "reason".into(),
            Value::String(format!("{} {workflow}", model::reason_marker(key))),
        );
        if kind_of(ATTEMPT_PROPERTY).is_some() {
            params.insert(ATTEMPT_PROPERTY.into(), Value::String(key.to_string()));
        }
        params.insert("builderNames".into(), json!([spec.builder]));
        Ok(Value::Object(params))
    }

    /// Reads `[buildsetid, {"<builderid>": buildrequestid}]`.
    pub(crate) fn forced(
        &self,
        result: &Value,
        builder: &str,
        builderid: u64,
    ) -> Result<RefData, AdapterError> {
        let bad = || {
            AdapterError::Protocol(format!(
                "Buildbot's answer to the force call is not [buildsetid, {{builderid: buildrequestid}}]: {result}"
            ))
        };
        let result = result.get("result").ok_or_else(bad)?;
        let buildset = result.get(0).and_then(Value::as_u64).ok_or_else(bad)?;
        let requests = result.get(1).and_then(Value::as_object).ok_or_else(bad)?;
        let buildrequest = requests
            .get(&builderid.to_string())
            .or_else(|| requests.values().next())
            .and_then(Value::as_u64)
            .ok_or_else(bad)?;
        Ok(RefData::forced(
            builder.to_owned(),
            builderid,
            buildset,
            buildrequest,
        ))
    }

    /// The build request forced for `key`, if any: the newest buildset whose reason holds
    /// the key's marker, and its request for `builder` (or its only one).
    pub(crate) async fn find_forced(
        &self,
        key: &AttemptKey,
        builder: Option<&str>,
    ) -> Result<Option<RefData>, AdapterError> {
        let marker = model::reason_marker(key);
        let url = self.client.api_url(
            &["buildsets"],
            &[
                ("reason__contains", marker.as_str()),
                ("order", "-bsid"),
                ("limit", "10"),
            ],
        );
        let answer = self
            .client
            .get(url, &format!("look for the build of {key}"))
            .await?;
        let Some(set) = all::<Buildset>(&answer, "buildsets")?
            .into_iter()
            .find(|s| s.reason.as_deref().and_then(key_in_reason).as_ref() == Some(key))
        else {
            return Ok(None);
        };
        let url = self.client.api_url(
            &["buildrequests"],
            &[("buildsetid", set.bsid.to_string().as_str())],
        );
        let requests = all::<BuildRequest>(
            &self
                .client
                .get(url, &format!("read the requests of buildset {}", set.bsid))
                .await?,
            "buildrequests",
        )?;
        let builderid = match builder {
            Some(name) => Some(self.builder_id(name).await?),
            None => None,
        };
        let Some(request) = requests
            .iter()
            .find(|r| Some(r.builderid) == builderid)
            .or_else(|| requests.first())
        else {
            return Ok(None);
        };
        let name = match builder {
            Some(name) if Some(request.builderid) == builderid => name.to_owned(),
            _ => self.builder_name(request.builderid).await?,
        };
        Ok(Some(RefData::forced(
            name,
            request.builderid,
            set.bsid,
            request.buildrequestid,
        )))
    }
}
