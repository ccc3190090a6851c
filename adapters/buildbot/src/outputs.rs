//! What a finished attempt leaves: its outputs (the build's ids, results and properties)
//! and its logs (links to every step log, the tail of each stdio log).

use baton_core::adapter::LogLink;
use baton_core::{AdapterError, ExternalRef, Logs};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::model::{RefData, all, property_values, results_name};
use crate::{BuildbotAdapter, MAX_LOG_TEXT, MAX_LOGS, TAIL_LINES};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Step {
    pub(crate) stepid: u64,
    pub(crate) name: String,
    pub(crate) urls: Vec<StepUrl>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct StepUrl {
    pub(crate) name: String,
    pub(crate) url: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct LogInfo {
    pub(crate) logid: u64,
    pub(crate) name: String,
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) num_lines: u64,
}

impl BuildbotAdapter {
    /// Reads the outputs of finished work.
    pub(crate) async fn read_outputs(
        &self,
        external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        let mut data = RefData::read(&external.id, &external.data)?;
        let build = self.known_build(&mut data).await?;
        let mut out = Map::new();
        match build {
            Some(build) => {
                let url = self
                    .client
                    .api_url(&["builds", &build.buildid.to_string(), "properties"], &[]);
                let properties = property_values(
                    &self
                        .client
                        .get(
                            url,
                            &format!("read the properties of build {}", build.buildid),
                        )
                        .await?,
                );
                let code = build.results.unwrap_or(-1);
                out.insert("build_id".into(), json!(build.buildid));
                out.insert("number".into(), json!(build.number));
                out.insert(
                    "url".into(),
                    json!(self.build_url(build.builderid, build.number)),
                );
                out.insert("results".into(), json!(results_name(code)));
                out.insert("results_code".into(), json!(code));
                out.insert("state_string".into(), json!(build.state_string));
                out.insert("properties".into(), Value::Object(properties));
            }
            None => {
                let request = self.request(data.buildrequest).await?;
                let code = request.results.unwrap_or(-1);
                out.insert("build_id".into(), Value::Null);
                out.insert("number".into(), Value::Null);
                out.insert("url".into(), json!(self.request_url(data.buildrequest)));
                out.insert("results".into(), json!(results_name(code)));
                out.insert("results_code".into(), json!(code));
                out.insert("state_string".into(), Value::Null);
                out.insert("properties".into(), json!({}));
            }
        }
        out.insert("builder".into(), json!(data.builder));
        out.insert("buildrequest_id".into(), json!(data.buildrequest));
        Ok(out)
    }

    /// Points to the step logs and returns the tails of the stdio ones.
    pub(crate) async fn read_logs(&self, external: &ExternalRef) -> Result<Logs, AdapterError> {
        let mut data = RefData::read(&external.id, &external.data)?;
        let build = self.known_build(&mut data).await?;
        let Some(build) = build else {
            return Ok(Logs {
                links: vec![LogLink {
                    name: "build request".into(),
                    url: self.request_url(data.buildrequest),
                }],
                text: None,
            });
        };
        let mut logs = Logs {
            links: vec![LogLink {
                name: "build".into(),
                url: self.build_url(build.builderid, build.number),
            }],
            text: None,
        };
        let url = self
            .client
            .api_url(&["builds", &build.buildid.to_string(), "steps"], &[]);
        let steps = all::<Step>(
            &self
                .client
                .get(url, &format!("read the steps of build {}", build.buildid))
                .await?,
            "steps",
        )?;
        let mut text = String::new();
        let mut listed = 0;
        for step in steps {
            for link in &step.urls {
                logs.links.push(LogLink {
                    name: format!("{}: {}", step.name, link.name),
                    url: link.url.clone(),
                });
            }
            if listed >= MAX_LOGS {
                continue;
            }
            let url = self
                .client
                .api_url(&["steps", &step.stepid.to_string(), "logs"], &[]);
            let step_logs = all::<LogInfo>(
                &self
                    .client
                    .get(url, &format!("read the logs of step `{}`", step.name))
                    .await?,
                "logs",
            )?;
            for log in step_logs {
                if listed >= MAX_LOGS {
                    break;
                }
                listed += 1;
                let raw = self
                    .client
                    .api_url(&["logs", &log.logid.to_string(), "raw_inline"], &[]);
                logs.links.push(LogLink {
                    name: format!("{}/{}", step.name, log.name),
                    url: raw.to_string(),
                });
                if log.kind == "s" && text.len() < MAX_LOG_TEXT {
                    let tail = self.log_tail(&log).await?;
                    text.push_str(&format!("--- {} / {} ---\n", step.name, log.name));
                    text.push_str(&tail);
                }
            }
        }
        if text.len() > MAX_LOG_TEXT {
            let mut cut = text.len() - MAX_LOG_TEXT;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text = text.split_off(cut);
        }
        logs.text = (!text.is_empty()).then_some(text);
        Ok(logs)
    }

    pub(crate) async fn log_tail(&self, log: &LogInfo) -> Result<String, AdapterError> {
        let offset = log.num_lines.saturating_sub(TAIL_LINES).to_string();
        let limit = TAIL_LINES.to_string();
        let url = self.client.api_url(
            &["logs", &log.logid.to_string(), "contents"],
            &[("offset", offset.as_str()), ("limit", limit.as_str())],
        );
        let answer = self
            .client
            .get(url, &format!("read log {}", log.logid))
            .await?;
        let mut text = String::new();
        for chunk in answer
            .get("logchunks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let content = chunk.get("content").and_then(Value::as_str).unwrap_or("");
            for line in content.lines() {
                // Stream logs start each line with `h` (header), `o` or `e` (stdout, stderr).
                let line = if log.kind == "s" {
                    line.get(1..).unwrap_or("")
                } else {
                    line
                };
                text.push_str(line);
                text.push('\n');
            }
        }
        Ok(text)
    }
}
