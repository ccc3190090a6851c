//! What a finished run leaves: its jobs (conclusions and links), its artifacts, the
//! `baton-outputs` artifact's `outputs.json`, and the failed jobs' log tails.

use baton_core::adapter::LogLink;
use baton_core::{AdapterError, ExternalRef, Logs};
use serde_json::{Map, Value};

use crate::client::Call;
use crate::model::{Artifacts, Job, Jobs};
use crate::tracked::Tracked;
use crate::{GithubActionsAdapter, OUTPUTS_ARTIFACT, lock};

/// The largest outputs artifact baton downloads.
pub(crate) const MAX_ARTIFACT_BYTES: usize = 10 * 1024 * 1024;
/// The largest `outputs.json` baton reads.
pub(crate) const MAX_OUTPUTS_BYTES: usize = 1024 * 1024;
/// How much of each failed job's log goes into messages and `logs` (its tail).
pub(crate) const LOG_TAIL_BYTES: usize = 16 * 1024;
/// How many failed jobs' logs are read at most.
const MAX_FAILED_LOGS: usize = 3;
/// How many lines of each failed job's log a stage's error message quotes.
const MESSAGE_LINES: usize = 20;

/// The outputs baton sets itself, which `outputs.json` cannot replace.
const RESERVED: [&str; 8] = [
    "id",
    "url",
    "run_number",
    "conclusion",
    "jobs",
    "artifacts",
    "logs",
    "run_attempt",
];

fn failed(job: &Job) -> bool {
    matches!(
        job.conclusion.as_deref(),
        Some("failure" | "timed_out" | "startup_failure")
    )
}

impl GithubActionsAdapter {
    fn run_of(external: &ExternalRef) -> Result<u64, AdapterError> {
        Tracked::read(external)?.run.ok_or_else(|| {
            AdapterError::NotFound(
                "the dispatch's run was never found, so it has no outputs".to_owned(),
            )
        })
    }

    async fn jobs(&self, run: u64) -> Result<Vec<Job>, AdapterError> {
        let what = format!("read the jobs of run {run}");
        let jobs: Jobs = self
            .inner
            .client
            .get_json(
                &self.actions(&format!("runs/{run}/jobs?filter=latest&per_page=100")),
                Call::read(&what),
            )
            .await?;
        Ok(jobs.jobs)
    }

    pub(crate) async fn read_outputs(
        &self,
        external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        let run_id = Self::run_of(external)?;
        let cached = lock(&self.inner.watched)
            .get(&run_id)
            .and_then(|w| w.etag.clone());
        let run = self.read_run(run_id, cached).await?;
        let jobs = self.jobs(run_id).await?;
        let what = format!("read the artifacts of run {run_id}");
        let artifacts: Artifacts = self
            .inner
            .client
            .get_json(
                &self.actions(&format!("runs/{run_id}/artifacts?per_page=100")),
                Call::read(&what),
            )
            .await?;
        let mut out = Map::new();
        if let Some(a) = artifacts
            .artifacts
            .iter()
            .find(|a| a.name == OUTPUTS_ARTIFACT && !a.expired)
        {
            for (k, v) in self.outputs_file(a.id, a.size_in_bytes).await? {
                if !RESERVED.contains(&k.as_str()) {
                    out.insert(k, v);
                }
            }
        }
        out.insert("id".into(), Value::String(run_id.to_string()));
        out.insert("url".into(), Value::String(run.html_url.clone()));
        out.insert("run_number".into(), run.run_number.into());
        out.insert("run_attempt".into(), run.run_attempt.into());
        out.insert(
            "conclusion".into(),
            run.conclusion.clone().map_or(Value::Null, Value::String),
        );
        out.insert(
            "jobs".into(),
            Value::Object(
                jobs.iter()
                    .map(|j| {
                        (
                            j.name.clone(),
                            j.conclusion.clone().map_or(Value::Null, Value::String),
                        )
                    })
                    .collect(),
            ),
        );
        out.insert(
            "logs".into(),
            Value::Object(
                jobs.iter()
                    .filter_map(|j| Some((j.name.clone(), Value::String(j.html_url.clone()?))))
                    .collect(),
            ),
        );
        out.insert(
            "artifacts".into(),
            Value::Array(
                artifacts
                    .artifacts
                    .iter()
                    .map(|a| Value::String(a.name.clone()))
                    .collect(),
            ),
        );
        Ok(out)
    }

    /// The object in `outputs.json` inside artifact `id`.
    async fn outputs_file(&self, id: u64, size: u64) -> Result<Map<String, Value>, AdapterError> {
        if size > MAX_ARTIFACT_BYTES as u64 {
            return Err(AdapterError::Invalid(format!(
                "the `{OUTPUTS_ARTIFACT}` artifact is {size} bytes; baton reads at most {MAX_ARTIFACT_BYTES}: keep only outputs.json in it"
            )));
        }
        let what = format!("download the `{OUTPUTS_ARTIFACT}` artifact");
        let rel = format!(
            "repos/{}/{}/actions/artifacts/{id}/zip",
            self.inner.owner, self.inner.repo
        );
        let zip = self
            .inner
            .client
            .download(&rel, &what, MAX_ARTIFACT_BYTES, false)
            .await?;
        let text = crate::zip::read_entry(&zip, "outputs.json", MAX_OUTPUTS_BYTES)
            .map_err(|e| AdapterError::Invalid(format!("the `{OUTPUTS_ARTIFACT}` artifact: {e}")))?
            .ok_or_else(|| {
                AdapterError::Invalid(format!(
                    "the `{OUTPUTS_ARTIFACT}` artifact holds no `outputs.json` at its top level"
                ))
            })?;
        match serde_json::from_slice(&text) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(AdapterError::Invalid(format!(
                "`outputs.json` in `{OUTPUTS_ARTIFACT}` is not a JSON object"
            ))),
            Err(e) => Err(AdapterError::Invalid(format!(
                "`outputs.json` in `{OUTPUTS_ARTIFACT}` is not JSON: {e}"
            ))),
        }
    }

    /// The tails of the failed jobs' logs, as text for a stage's error message: the last
    /// lines of each.
    pub(crate) async fn failed_job_tails(&self, run: u64) -> Result<String, AdapterError> {
        let jobs = self.jobs(run).await?;
        let mut text = String::new();
        for (job, tail) in self.failed_logs(&jobs).await? {
            let lines: Vec<&str> = tail.lines().collect();
            let link = job.html_url.as_deref().unwrap_or("no link");
            text.push_str(&format!("job `{}` failed ({link}):\n", job.name));
            for line in &lines[lines.len().saturating_sub(MESSAGE_LINES)..] {
                text.push_str(&format!("  {line}\n"));
            }
        }
        Ok(text)
    }

    /// The failed jobs among `jobs` (the first few) with their logs' tails.
    async fn failed_logs<'j>(
        &self,
        jobs: &'j [Job],
    ) -> Result<Vec<(&'j Job, String)>, AdapterError> {
        let mut logs = Vec::new();
        for job in jobs.iter().filter(|j| failed(j)).take(MAX_FAILED_LOGS) {
            logs.push((job, self.job_log_tail(job.id).await?));
        }
        Ok(logs)
    }

    async fn job_log_tail(&self, job: u64) -> Result<String, AdapterError> {
        let what = format!("download the log of job {job}");
        let rel = format!(
            "repos/{}/{}/actions/jobs/{job}/logs",
            self.inner.owner, self.inner.repo
        );
        let tail = self
            .inner
            .client
            .download(&rel, &what, LOG_TAIL_BYTES, true)
            .await?;
        Ok(String::from_utf8_lossy(&tail).into_owned())
    }

    pub(crate) async fn read_logs(&self, external: &ExternalRef) -> Result<Logs, AdapterError> {
        let Ok(run) = Self::run_of(external) else {
            return Ok(Logs::default());
        };
        let jobs = self.jobs(run).await?;
        let mut links = Vec::new();
        if let Some(url) = &external.url {
            links.push(LogLink {
                name: "run".into(),
                url: url.clone(),
            });
        }
        links.extend(jobs.iter().filter_map(|j| {
            Some(LogLink {
                name: j.name.clone(),
                url: j.html_url.clone()?,
            })
        }));
        let mut text = String::new();
        for (job, tail) in self.failed_logs(&jobs).await? {
            text.push_str(&format!("==> job `{}` <==\n{tail}\n", job.name));
        }
        Ok(Logs {
            links,
            text: (!text.is_empty()).then_some(text),
        })
    }
}
