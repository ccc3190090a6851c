//! What baton reads from Buildbot, read leniently: missing fields take defaults, unknown
//! fields are ignored, and results codes outside 0–6 are kept, never guessed at.

use baton_core::{AdapterError, AttemptKey, ExternalState};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::Warnings;

/// `process/results.py`: the codes of a finished build or build request.
pub(crate) const SUCCESS: i64 = 0;
/// Finished with warnings.
pub(crate) const WARNINGS: i64 = 1;
/// The work failed.
pub(crate) const FAILURE: i64 = 2;
/// Nothing ran (on a request: it was merged into another).
pub(crate) const SKIPPED: i64 = 3;
/// Buildbot or the config failed.
pub(crate) const EXCEPTION: i64 = 4;
/// The build will be tried again: a new build of the same request follows.
pub(crate) const RETRY: i64 = 5;
/// Stopped or cancelled.
pub(crate) const CANCELLED: i64 = 6;

/// The name of a results code, as Buildbot writes it.
pub fn results_name(code: i64) -> String {
    match code {
        SUCCESS => "SUCCESS".into(),
        WARNINGS => "WARNINGS".into(),
        FAILURE => "FAILURE".into(),
        SKIPPED => "SKIPPED".into(),
        EXCEPTION => "EXCEPTION".into(),
        RETRY => "RETRY".into(),
        CANCELLED => "CANCELLED".into(),
        other => format!("results {other}"),
    }
}

/// The state a finished build's results code maps to. `RETRY` is not terminal for the
/// request (a new build follows), so callers handle it before this.
pub(crate) fn map_results(code: i64, warnings: Warnings) -> ExternalState {
    match code {
        SUCCESS => ExternalState::Succeeded { warnings: false },
        WARNINGS => match warnings {
            Warnings::Success => ExternalState::Succeeded { warnings: true },
            Warnings::Failure => ExternalState::Failed,
        },
        FAILURE => ExternalState::Failed,
        SKIPPED => ExternalState::Skipped,
        EXCEPTION => ExternalState::Errored,
        CANCELLED => ExternalState::Cancelled,
        other => ExternalState::Unknown(results_name(other)),
    }
}

/// `GET /buildrequests/{id}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct BuildRequest {
    /// The request's id.
    pub buildrequestid: u64,
    /// The buildset it belongs to.
    pub buildsetid: u64,
    /// The builder.
    pub builderid: u64,
    /// A master took it.
    pub claimed: bool,
    /// It is finished.
    pub complete: bool,
    /// `-1` (or null) while incomplete.
    pub results: Option<i64>,
}

/// `GET /builds/{id}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Build {
    /// The build's id.
    pub buildid: u64,
    /// Its number within the builder.
    pub number: u64,
    /// The builder.
    pub builderid: u64,
    /// The request it serves.
    pub buildrequestid: Option<u64>,
    /// It is finished.
    pub complete: bool,
    /// `null` while running.
    pub results: Option<i64>,
    /// Buildbot's words for where it is ("building", "failed 'exit 3' (failure)").
    pub state_string: Option<String>,
}

/// The first element of `response[collection]`, read as `T`.
pub(crate) fn first<T: for<'de> Deserialize<'de>>(
    response: &Value,
    collection: &str,
) -> Result<Option<T>, AdapterError> {
    Ok(all::<T>(response, collection)?.into_iter().next())
}

/// Every element of `response[collection]`, read as `T`.
pub(crate) fn all<T: for<'de> Deserialize<'de>>(
    response: &Value,
    collection: &str,
) -> Result<Vec<T>, AdapterError> {
    let items = response
        .get(collection)
        .and_then(Value::as_array)
        .ok_or_else(|| {
            AdapterError::Protocol(format!(
                "Buildbot's answer has no `{collection}` list: {}",
                short(response)
            ))
        })?;
    items
        .iter()
        .map(|item| {
            serde_json::from_value(item.clone()).map_err(|e| {
                AdapterError::Protocol(format!(
                    "Buildbot's `{collection}` entry is not readable ({e}): {}",
                    short(item)
                ))
            })
        })
        .collect()
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(300) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

/// What baton keeps in [`baton_core::ExternalRef::data`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RefData {
    /// The builder's name.
    pub builder: String,
    /// The builder's id.
    pub builderid: u64,
    /// The buildset the force created.
    pub buildset: u64,
    /// The build request (also the reference's `id`).
    pub buildrequest: u64,
    /// The build serving the request, once one started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<u64>,
    /// That build's number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u64>,
    /// Polls so far, which set the next wait.
    #[serde(default)]
    pub polls: u32,
    /// The build's `results` once it completed: a finished build never changes, so the
    /// outputs need not read it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<i64>,
    /// The finished build's `state_string`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_string: Option<String>,
}

impl RefData {
    /// A build request just forced (or found), before any poll.
    pub(crate) fn forced(
        builder: String,
        builderid: u64,
        buildset: u64,
        buildrequest: u64,
    ) -> Self {
        Self {
            builder,
            builderid,
            buildset,
            buildrequest,
            build: None,
            number: None,
            polls: 0,
            results: None,
            state_string: None,
        }
    }

    /// The build as the last poll saw it finish, if it did; `None` means read it.
    pub(crate) fn finished_build(&self) -> Option<Build> {
        Some(Build {
            buildid: self.build?,
            number: self.number?,
            builderid: self.builderid,
            buildrequestid: Some(self.buildrequest),
            complete: true,
            results: Some(self.results?),
            state_string: self.state_string.clone(),
        })
    }

    /// Reads the data of a stored reference; `id` must be the build request's id.
    pub(crate) fn read(id: &str, data: &Value) -> Result<Self, AdapterError> {
        let parsed: Self = serde_json::from_value(data.clone()).map_err(|e| {
            AdapterError::Protocol(format!(
                "the stored reference is not a Buildbot build request ({e}): {}",
                short(data)
            ))
        })?;
        if id != parsed.buildrequest.to_string() {
            return Err(AdapterError::Protocol(format!(
                "the stored reference's id `{id}` is not its build request {}",
                parsed.buildrequest
            )));
        }
        Ok(parsed)
    }

    /// As JSON, for the reference.
    pub(crate) fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The marker baton writes into the force's `reason` and looks for in `find`. The closing
/// bracket keeps `r/s/1` from matching `r/s/10`.
pub fn reason_marker(key: &AttemptKey) -> String {
    format!("[baton {key}]")
}

/// The attempt key in a text holding a [`reason_marker`].
pub(crate) fn key_in_reason(text: &str) -> Option<AttemptKey> {
    let start = text.find("[baton ")? + "[baton ".len();
    let rest = &text[start..];
    AttemptKey::parse(&rest[..rest.find(']')?])
}

/// The attempt keys a status push (`reporters.HttpStatusPush`) concerns: the build's
/// `baton_attempt` property, else the attempt marker in its `reason` property or its
/// buildset's reason. Accepts one build or a list of them; builds not started by baton
/// give nothing.
pub(crate) fn keys_in_push(body: &Value) -> Vec<AttemptKey> {
    let builds: Vec<&Value> = match body {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let mut keys = Vec::new();
    for build in builds {
        let Some(build) = build.as_object() else {
            continue;
        };
        if let Some(key) = key_in_build(build)
            && !keys.contains(&key)
        {
            keys.push(key);
        }
    }
    keys
}

fn key_in_build(build: &Map<String, Value>) -> Option<AttemptKey> {
    let property = |name: &str| -> Option<&str> {
        let value = build.get("properties")?.get(name)?;
        // `{name: [value, source]}`, as the data API gives them; a bare value is accepted.
        match value {
            Value::Array(pair) => pair.first()?.as_str(),
            other => other.as_str(),
        }
    };
    property("baton_attempt")
        .and_then(AttemptKey::parse)
        .or_else(|| property("reason").and_then(key_in_reason))
        .or_else(|| {
            build
                .get("buildset")?
                .get("reason")?
                .as_str()
                .and_then(key_in_reason)
        })
}

/// The values of a `properties` answer (`[{name: [value, source]}]`), by name.
pub(crate) fn property_values(response: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    let maps = response
        .get("properties")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(Value::as_object).collect::<Vec<_>>())
        .unwrap_or_default();
    for map in maps {
        for (name, pair) in map {
            let value = match pair {
                Value::Array(pair) => pair.first().cloned().unwrap_or(Value::Null),
                other => other.clone(),
            };
            out.insert(name.clone(), value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn results_map_to_states() {
        let w = Warnings::Success;
        assert_eq!(
            map_results(0, w),
            ExternalState::Succeeded { warnings: false }
        );
        assert_eq!(
            map_results(1, w),
            ExternalState::Succeeded { warnings: true }
        );
        assert_eq!(map_results(1, Warnings::Failure), ExternalState::Failed);
        assert_eq!(map_results(2, w), ExternalState::Failed);
        assert_eq!(map_results(3, w), ExternalState::Skipped);
        assert_eq!(map_results(4, w), ExternalState::Errored);
        assert_eq!(map_results(6, w), ExternalState::Cancelled);
        let unknown = map_results(9, w);
        assert_eq!(unknown, ExternalState::Unknown("results 9".into()));
        assert!(!unknown.is_terminal());
        assert_eq!(results_name(5), "RETRY");
    }

    #[test]
    fn lenient_reads() {
        let r: BuildRequest = first(
            &json!({"buildrequests": [{"buildrequestid": 3, "results": -1, "new_field": {}}]}),
            "buildrequests",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (r.buildrequestid, r.results, r.complete),
            (3, Some(-1), false)
        );
        assert!(
            first::<Build>(&json!({"builds": []}), "builds")
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            first::<Build>(&json!({"nope": 1}), "builds"),
            Err(AdapterError::Protocol(_))
        ));
        assert!(matches!(
            all::<Build>(&json!({"builds": [{"buildid": "x"}]}), "builds"),
            Err(AdapterError::Protocol(_))
        ));
    }

    #[test]
    fn ref_data_is_checked() {
        let mut data = RefData::forced("b".into(), 2, 5, 7);
        assert_eq!(RefData::read("7", &data.to_value()).unwrap(), data);
        assert!(data.finished_build().is_none(), "not finished yet");
        // A reference stored before `results` was kept still reads, and asks for the build.
        data.build = Some(11);
        data.number = Some(3);
        assert_eq!(RefData::read("7", &data.to_value()).unwrap(), data);
        assert!(data.finished_build().is_none());
        data.results = Some(2);
        data.state_string = Some("failed 'exit 3' (failure)".into());
        let read = RefData::read("7", &data.to_value()).unwrap();
        let build = read.finished_build().expect("finished");
        assert_eq!((build.buildid, build.number, build.builderid), (11, 3, 2));
        assert_eq!((build.results, build.complete), (Some(2), true));
        assert_eq!(
            build.state_string.as_deref(),
            Some("failed 'exit 3' (failure)")
        );
        assert!(RefData::read("8", &data.to_value()).is_err());
        for garbage in [
            json!(null),
            json!("s"),
            json!({"buildrequest": "x"}),
            json!([1]),
        ] {
            assert!(RefData::read("7", &garbage).is_err());
        }
    }

    #[test]
    fn markers() {
        let key = AttemptKey::new("r1", "build", 1);
        let reason = format!("A build was forced by '': {} nightly", reason_marker(&key));
        assert_eq!(key_in_reason(&reason), Some(key));
        assert_eq!(key_in_reason("[baton r1/build]"), None);
        assert_eq!(key_in_reason("[baton r1/build/1"), None);
        assert_eq!(key_in_reason("force build"), None);
    }

    #[test]
    fn push_bodies() {
        let by_property =
            json!({"buildid": 1, "properties": {"baton_attempt": ["r/s/1", "Force Build Form"]}});
        let by_reason = json!({"properties": {"reason": ["[baton r/s/2] wf", "Force Build Form"]}});
        let by_buildset =
            json!({"buildset": {"reason": "A build was forced by 'x': [baton r/s/3]"}});
        let keys = keys_in_push(&json!([by_property, by_reason, by_buildset, by_property]));
        let names: Vec<&str> = keys.iter().map(AttemptKey::as_str).collect();
        assert_eq!(names, ["r/s/1", "r/s/2", "r/s/3"]);
        for other in [
            json!(null),
            json!(7),
            json!({"properties": {"baton_attempt": ["garbage", "x"]}}),
            json!({"properties": "x", "buildset": 3}),
            json!([[], {}]),
        ] {
            assert!(keys_in_push(&other).is_empty(), "{other}");
        }
    }

    #[test]
    fn properties_flatten() {
        let p = property_values(&json!({"properties": [{"a": [1, "src"], "b": ["x", "y"]}]}));
        assert_eq!(Value::Object(p), json!({"a": 1, "b": "x"}));
        assert!(property_values(&json!({"properties": "x"})).is_empty());
    }
}
