//! What a finished attempt leaves: its outputs (the build's number, result, parameters,
//! artifacts and an optional property file) and its log (a tail for `logs`, chunks for
//! [`JenkinsAdapter::read_log`]).

use baton_core::adapter::LogLink;
use baton_core::{AdapterError, ExternalRef, Logs};
use serde_json::{Map, Value, json};

use crate::client::Call;
use crate::config::encode_segment;
use crate::model::{self, Build};
use crate::properties;
use crate::tracked::{Phase, Tracked};
use crate::{JenkinsAdapter, LOG_CHUNK_BYTES, LOG_TAIL_BYTES};

/// A piece of a build's log, from [`JenkinsAdapter::read_log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// The text from the offset asked for.
    pub text: String,
    /// The offset to ask for next.
    pub next: u64,
    /// True while the log may still grow.
    pub more: bool,
}

impl JenkinsAdapter {
    /// Reads the outputs of finished work.
    pub(crate) async fn read_outputs(
        &self,
        external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        let tracked = Tracked::read(external)?;
        let mut out = Map::new();
        out.insert("job".into(), json!(tracked.name));
        out.insert("queue_id".into(), json!(tracked.queue));
        if tracked.phase != Phase::Building {
            // Cancelled or lost before a build existed.
            return Ok(out);
        }
        let build = self.read_build(&tracked, model::BUILD_OUTPUT_TREE).await?;
        let base = external.url.clone().or_else(|| build.url.clone());
        out.insert("number".into(), json!(build.number.or(tracked.number)));
        out.insert("url".into(), json!(build.url.clone().or(base.clone())));
        out.insert("result".into(), json!(build.result));
        if build.queue_id.is_some() {
            out.insert("queue_id".into(), json!(build.queue_id));
        }
        out.insert("duration_ms".into(), json!(build.duration));
        out.insert(
            "parameters".into(),
            Value::Object(model::parameters(&build.actions)),
        );
        let link = build.url.clone().or(base).unwrap_or_default();
        let artifacts: Vec<Value> = build
            .artifacts
            .iter()
            .map(|a| {
                json!({
                    "name": a.file_name,
                    "path": a.relative_path,
                    "url": format!("{link}artifact/{}", a.relative_path.split('/').map(encode_segment).collect::<Vec<_>>().join("/")),
                })
            })
            .collect();
        out.insert("artifacts".into(), Value::Array(artifacts));
        if let Some(wanted) = &tracked.properties_artifact
            && let Some(props) = self.fetch_properties(&tracked, &build, wanted).await?
        {
            out.insert("properties".into(), Value::Object(props));
        }
        Ok(out)
    }

    /// Points to the log and returns its tail.
    pub(crate) async fn read_logs(&self, external: &ExternalRef) -> Result<Logs, AdapterError> {
        let tracked = Tracked::read(external)?;
        let client = &self.inner.client;
        if tracked.phase != Phase::Building {
            return Ok(Logs {
                links: external
                    .url
                    .iter()
                    .map(|u| LogLink {
                        name: "queue item".into(),
                        url: u.clone(),
                    })
                    .collect(),
                text: Some(format!("`{}` has not started a build", tracked.name)),
            });
        }
        let build = self.read_build(&tracked, model::BUILD_STATE_TREE).await?;
        let human = build
            .url
            .clone()
            .or_else(|| external.url.clone())
            .unwrap_or_default();
        let path = tracked.build.clone().unwrap_or_default();
        // A finished build's log streams as plain text; progressiveText on a large finished
        // log can exhaust the controller's heap (JENKINS-75081).
        let endpoint = if build.running() {
            "logText/progressiveText?start=0"
        } else {
            "consoleText"
        };
        let what = format!("read the log of {}", tracked.build_label());
        let (_, tail, total) = client
            .get_tail(
                client.url(&format!("{path}{endpoint}"))?,
                Call {
                    what: &what,
                    permission: "Job/Read",
                    not_found: "",
                },
                LOG_TAIL_BYTES,
            )
            .await?;
        let mut text = String::from_utf8_lossy(&tail).into_owned();
        if total > tail.len() as u64 {
            text = format!(
                "[the first {} bytes are not shown; the whole log is at {human}consoleText]\n{text}",
                total - tail.len() as u64
            );
        }
        Ok(Logs {
            links: vec![LogLink {
                name: "console".into(),
                url: format!("{human}console"),
            }],
            text: Some(text),
        })
    }

    /// Reads a build's log from byte `start` through `progressiveText` (GET, as a POST
    /// would need a crumb): the text, the next offset (`X-Text-Size`) and whether more may
    /// come (`X-More-Data`). At most [`LOG_CHUNK_BYTES`] per call.
    pub async fn read_log(
        &self,
        external: &ExternalRef,
        start: u64,
    ) -> Result<LogChunk, AdapterError> {
        let tracked = Tracked::read(external)?;
        let Some(path) = tracked.build.clone() else {
            return Ok(LogChunk {
                text: String::new(),
                next: 0,
                more: true,
            });
        };
        let client = &self.inner.client;
        let what = format!("read the log of {}", tracked.build_label());
        let call = Call {
            what: &what,
            permission: "Job/Read",
            not_found: "",
        };
        let answer = client
            .get(
                client.url(&format!("{path}logText/progressiveText?start={start}"))?,
                call,
                LOG_CHUNK_BYTES,
            )
            .await?;
        client.check(&answer, call)?;
        let size = answer
            .header("X-Text-Size")
            .and_then(|s| s.trim().parse::<u64>().ok());
        let more = answer
            .header("X-More-Data")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let read = start + answer.body.len() as u64;
        let (next, more) = if answer.truncated {
            (read, true)
        } else {
            (size.unwrap_or(read), more)
        };
        Ok(LogChunk {
            text: answer.text(),
            next,
            more,
        })
    }

    pub(crate) async fn fetch_properties(
        &self,
        tracked: &Tracked,
        build: &Build,
        wanted: &str,
    ) -> Result<Option<Map<String, Value>>, AdapterError> {
        let label = tracked.build_label();
        let artifact = build
            .artifacts
            .iter()
            .find(|a| a.relative_path == wanted)
            .or_else(|| {
                let mut by_name = build.artifacts.iter().filter(|a| a.file_name == wanted);
                match (by_name.next(), by_name.next()) {
                    (Some(one), None) => Some(one),
                    _ => None,
                }
            });
        let Some(artifact) = artifact else {
            let passed = matches!(build.result.as_deref(), Some("SUCCESS" | "UNSTABLE"));
            if !passed {
                return Ok(None);
            }
            let names: Vec<&str> = build
                .artifacts
                .iter()
                .map(|a| a.relative_path.as_str())
                .collect();
            return Err(AdapterError::Invalid(format!(
                "{label} archived no `{wanted}` (properties_artifact); its artifacts are: {}. Archive it in the job (archiveArtifacts) or fix `properties_artifact`",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            )));
        };
        let client = &self.inner.client;
        let encoded: Vec<String> = artifact
            .relative_path
            .split('/')
            .map(encode_segment)
            .collect();
        let path = tracked.build.clone().unwrap_or_default();
        let what = format!("download `{}` of {label}", artifact.relative_path);
        let call = Call {
            what: &what,
            permission: "Job/Read (and Run/Artifacts)",
            not_found: "",
        };
        let answer = client
            .get(
                client.url(&format!("{path}artifact/{}", encoded.join("/")))?,
                call,
                properties::MAX_PROPERTIES_BYTES + 1,
            )
            .await?;
        client.check(&answer, call)?;
        if answer.truncated || answer.body.len() > properties::MAX_PROPERTIES_BYTES {
            return Err(AdapterError::Invalid(format!(
                "`{}` of {label} is larger than {} bytes: keep the property file to the values the next stages need",
                artifact.relative_path,
                properties::MAX_PROPERTIES_BYTES
            )));
        }
        properties::parse_artifact(&artifact.relative_path, &answer.body)
            .map(Some)
            .map_err(|e| AdapterError::Invalid(format!("{label}: {e}")))
    }
}
