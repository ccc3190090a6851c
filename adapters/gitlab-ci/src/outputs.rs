//! What a finished pipeline leaves: its outputs (jobs, a dotenv file from the artifacts)
//! and its logs (job links, failed jobs' traces).

use baton_core::adapter::LogLink;
use baton_core::{AdapterError, ExternalRef, Logs};
use serde_json::{Map, Value, json};

use crate::GitLabAdapter;
use crate::client::Call;
use crate::model::{Job, Pipeline};
use crate::tracked::Tracked;

/// The largest dotenv file read.
pub(crate) const DOTENV_MAX_BYTES: usize = 65_536;

/// How much of the end of a job's trace is kept (GitLab sends the whole log; only its
/// last lines are used).
const TRACE_TAIL_BYTES: usize = 65_536;

/// How many lines of a failed job's trace the stage's message and the logs carry.
const TAIL_LINES: usize = 30;

/// The output keys baton sets itself, which a dotenv file may not replace.
const RESERVED: [&str; 6] = ["id", "iid", "url", "status", "sha", "jobs"];

impl GitLabAdapter {
    /// `id`, `iid`, `url`, `status`, `sha`, `jobs` (name → status) and, with
    /// `dotenv_artifact`, that file's `KEY=value` lines.
    pub(crate) async fn read_outputs(
        &self,
        external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        let (id, tracked) = Tracked::read(external)?;
        // The poll that saw the end kept what the outputs need of the pipeline itself.
        let pipeline = match &tracked.status {
            Some(status) => Pipeline {
                id,
                iid: tracked.iid,
                status: status.clone(),
                web_url: external.url.clone(),
                sha: tracked.sha.clone(),
            },
            None => self.pipeline(id).await?,
        };
        let jobs = self.jobs(id).await?;
        let mut outputs = Map::new();
        outputs.insert("id".into(), json!(pipeline.id.to_string()));
        outputs.insert("iid".into(), json!(pipeline.iid));
        outputs.insert("url".into(), json!(pipeline.web_url));
        outputs.insert("status".into(), json!(pipeline.status));
        outputs.insert("sha".into(), json!(pipeline.sha));
        // Jobs are listed newest first; a retried job's newest try is the one that counts.
        let mut by_name = Map::new();
        for job in jobs.iter().rev() {
            by_name.insert(job.name.clone(), json!(job.status));
        }
        outputs.insert("jobs".into(), Value::Object(by_name));
        if let Some(path) = &tracked.dotenv_artifact {
            for (key, value) in self.dotenv(&jobs, path).await? {
                outputs.insert(key, Value::String(value));
            }
        }
        Ok(outputs)
    }

    /// The `KEY=value` pairs of `path` in the artifacts of the last job that has it.
    async fn dotenv(
        &self,
        jobs: &[Job],
        path: &str,
    ) -> Result<Vec<(String, String)>, AdapterError> {
        let mut with_archive: Vec<&Job> = jobs
            .iter()
            .filter(|j| {
                j.artifacts_file
                    .as_ref()
                    .is_some_and(|a| a.filename.is_some())
            })
            .collect();
        with_archive.sort_by_key(|j| std::cmp::Reverse(j.id));
        for job in with_archive {
            let what = format!("read `{path}` from the artifacts of job `{}`", job.name);
            let file = self
                .inner
                .client
                .get_file(
                    &format!("jobs/{}/artifacts/{path}", job.id),
                    Call::read(&what, DOTENV_MAX_BYTES),
                )
                .await?;
            let Some(file) = file else { continue };
            if file.truncated {
                return Err(AdapterError::Invalid(format!(
                    "`{path}` in the artifacts of job `{}` is larger than {DOTENV_MAX_BYTES} bytes: a dotenv file holds a few variables",
                    job.name
                )));
            }
            let text = String::from_utf8(file.body).map_err(|_| {
                AdapterError::Invalid(format!(
                    "`{path}` in the artifacts of job `{}` is not UTF-8 text",
                    job.name
                ))
            })?;
            return parse_dotenv(&text).map_err(|e| {
                AdapterError::Invalid(format!(
                    "`{path}` in the artifacts of job `{}`: {e}",
                    job.name
                ))
            });
        }
        Err(AdapterError::NotFound(format!(
            "no job of the pipeline has `{path}` in its artifacts (dotenv_artifact): add it to the job's `artifacts:paths`"
        )))
    }

    /// The last lines of job `job`'s trace; `None` when it has none.
    pub(crate) async fn trace_tail(&self, job: u64) -> Result<Option<String>, AdapterError> {
        let file = self
            .inner
            .client
            .get_file(
                &format!("jobs/{job}/trace"),
                Call {
                    tail: true,
                    ..Call::read("read a job's trace", TRACE_TAIL_BYTES)
                },
            )
            .await?;
        Ok(file.and_then(|f| {
            let text = String::from_utf8_lossy(&f.body).into_owned();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
            (!tail.trim().is_empty()).then_some(tail)
        }))
    }

    /// A link to the pipeline and to every job, and the failed jobs' trace tails as text.
    pub(crate) async fn read_logs(&self, external: &ExternalRef) -> Result<Logs, AdapterError> {
        let (id, _) = Tracked::read(external)?;
        let jobs = self.jobs(id).await?;
        let mut logs = Logs::default();
        if let Some(url) = &external.url {
            logs.links.push(LogLink {
                name: "pipeline".into(),
                url: url.clone(),
            });
        }
        let mut text = String::new();
        for job in jobs.iter().rev() {
            if let Some(url) = &job.web_url {
                logs.links.push(LogLink {
                    name: job.name.clone(),
                    url: url.clone(),
                });
            }
            if job.status == "failed"
                && let Some(tail) = self.trace_tail(job.id).await?
            {
                text.push_str(&format!(
                    "==> job `{}` ({}) <==\n{tail}\n",
                    job.name, job.status
                ));
            }
        }
        logs.text = (!text.is_empty()).then_some(text);
        Ok(logs)
    }
}

/// Reads `KEY=value` lines as GitLab's dotenv reports take them: blank lines and `#`
/// comments skipped, an optional `export `, a value in single or double quotes unquoted.
/// Every malformed line is reported, with its number.
pub(crate) fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            problems.push(format!("line {}: expected `KEY=value`", n + 1));
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            problems.push(format!(
                "line {}: `{key}` is not a variable name (letters, digits and `_`)",
                n + 1
            ));
            continue;
        }
        if RESERVED.contains(&key) {
            problems.push(format!(
                "line {}: `{key}` is an output baton sets itself ({})",
                n + 1,
                RESERVED.join(", ")
            ));
            continue;
        }
        let value = value.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        pairs.push((key.to_owned(), unquoted.to_owned()));
    }
    if problems.is_empty() {
        Ok(pairs)
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines_are_read_and_bad_ones_named() {
        let pairs = parse_dotenv(
            "# built\nIMAGE=reg/app@sha256:ab\n\nexport TAG='v1.2'\nNOTE=\"a b = c\"\nEMPTY=\n",
        )
        .unwrap();
        assert_eq!(
            pairs,
            [
                ("IMAGE".to_owned(), "reg/app@sha256:ab".to_owned()),
                ("TAG".to_owned(), "v1.2".to_owned()),
                ("NOTE".to_owned(), "a b = c".to_owned()),
                ("EMPTY".to_owned(), String::new()),
            ]
        );
        let err = parse_dotenv("OK=1\njust words\nbad-key=2\nurl=x\n").unwrap_err();
        assert!(err.contains("line 2: expected `KEY=value`"), "{err}");
        assert!(err.contains("line 3: `bad-key`"), "{err}");
        assert!(
            err.contains("line 4: `url` is an output baton sets itself"),
            "{err}"
        );
    }
}
