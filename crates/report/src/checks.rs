//! GitHub check runs: on a source that authenticates as a GitHub App, each baton run gets one
//! check run on its commit, named `baton/<workflow>`, whose summary lists every stage, and
//! which is updated as the run moves. Commit statuses are not posted there.
//!
//! The API (<https://docs.github.com/en/rest/checks/runs>): `POST /repos/{o}/{r}/check-runs`
//! creates one, `PATCH /repos/{o}/{r}/check-runs/{id}` updates it, and
//! `GET /repos/{o}/{r}/commits/{sha}/check-runs?check_name=…&filter=all` lists a commit's.
//! Only a GitHub App may write check runs.
//!
//! Never two check runs for one baton run: the check run's id is kept in the store
//! (`report_refs`), and before a create is sent the store records that one is under way.
//! A later post that finds that mark, not an id (the answer to a create was lost: a time-out,
//! a 5xx, a process killed while waiting), looks the check run up by `external_id` (the baton
//! run id) before creating one.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use baton_core::{RunStatus, StageStatus};
use baton_store::{Change, Millis, RunSnapshot, StageRecord, Store};
use octocrab::Octocrab;
use serde_json::{Map, Value, json};

use crate::commit::GithubCommit;
use crate::status::{MAX_DESCRIPTION, run_context, run_url, truncate};
use crate::target::Failure;

/// GitHub's limit on `output.summary` and on `output.text`, in characters.
pub(crate) const MAX_OUTPUT: usize = 65535;

/// The longest stage message shown in the summary's table (the text has it in full, within
/// [`MAX_OUTPUT`]).
const MAX_CELL: usize = 300;

/// Check runs asked for per page of a lookup (GitHub's maximum), and the pages read at most:
/// a commit rarely has a thousand check runs of one name.
const PAGE: usize = 100;
const MAX_PAGES: u32 = 10;

/// What a reopened run's summary starts with while its check run stays completed.
const REOPENED: &str = "> A stage was retried and the run goes on again. GitHub keeps a completed check run \
                        completed, so the conclusion shown is the previous one until the run ends again.\n\n";

/// What the store holds for a run while its create is under way or unanswered.
const CREATING: &str = "check-run creating";

/// Where a check run is: GitHub's `status`, with the `conclusion` once `completed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckStatus {
    /// The run is queued.
    Queued,
    /// The run is running (a stage waiting for an approval included).
    InProgress,
    /// The run ended so.
    Completed(Conclusion),
}

/// How a completed check run ended, in GitHub's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conclusion {
    /// The run succeeded.
    Success,
    /// The run failed.
    Failure,
    /// The run was cancelled.
    Cancelled,
    /// The run succeeded with every stage skipped (their `if` was false).
    Skipped,
    /// The run succeeded although a stage failed (its `on_failure: ignore`).
    Neutral,
    /// The run failed, and every stage that failed ran out of time.
    TimedOut,
}

impl Conclusion {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
            Self::Neutral => "neutral",
            Self::TimedOut => "timed_out",
        }
    }
}

/// One run's check run as baton wants it to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckRun {
    /// The baton run: the check run's `external_id`.
    pub run_id: String,
    /// `baton/<workflow>`.
    pub name: String,
    /// `status` and `conclusion`.
    pub status: CheckStatus,
    /// When the run's first stage started.
    pub started_at: Option<Millis>,
    /// When the run ended (only once completed).
    pub completed_at: Option<Millis>,
    /// The link to the run, when baton knows its public URL.
    pub details_url: Option<String>,
    /// `output.title`: one line.
    pub title: String,
    /// `output.summary`: the stages in order, Markdown, at most [`MAX_OUTPUT`] characters.
    pub summary: String,
    /// `output.text`: every attempt of every stage, Markdown, at most [`MAX_OUTPUT`]
    /// characters; empty before any stage started.
    pub text: String,
}

impl CheckRun {
    /// The check run `run` should show now.
    pub(crate) fn of(run: &RunSnapshot, public_url: Option<&str>) -> Self {
        let header = &run.header;
        let status = match header.status {
            RunStatus::Queued => CheckStatus::Queued,
            RunStatus::Running => CheckStatus::InProgress,
            _ => CheckStatus::Completed(conclusion(run)),
        };
        let completed = matches!(status, CheckStatus::Completed(_));
        let details_url = run_url(public_url, &header.id);
        Self {
            run_id: header.id.clone(),
            name: run_context(&header.workflow),
            status,
            started_at: header.started_at,
            completed_at: header.finished_at.filter(|_| completed),
            title: title(run),
            summary: summary(run, details_url.as_deref()),
            text: text(run),
            details_url,
        }
    }

    /// True once the run ended.
    pub(crate) fn is_completed(&self) -> bool {
        matches!(self.status, CheckStatus::Completed(_))
    }

    /// The request body: for a create (`head_sha` given) or an update. `reopened`: the
    /// check run is completed at GitHub and the run goes on again, which GitHub cannot show
    /// (its status stays completed); the output says so until the run ends again.
    fn body(&self, head_sha: Option<&str>, reopened: bool) -> Value {
        let mut body = Map::new();
        body.insert("name".into(), json!(self.name));
        if let Some(sha) = head_sha {
            body.insert("head_sha".into(), json!(sha));
        }
        body.insert("external_id".into(), json!(self.run_id));
        if let Some(url) = &self.details_url {
            body.insert("details_url".into(), json!(url));
        }
        let status = match self.status {
            CheckStatus::Queued => "queued",
            CheckStatus::InProgress => "in_progress",
            CheckStatus::Completed(conclusion) => {
                body.insert("conclusion".into(), json!(conclusion.as_str()));
                "completed"
            }
        };
        let mut output = Map::new();
        if reopened {
            output.insert(
                "title".into(),
                json!(truncate(
                    &format!("Running again: {}", self.title),
                    MAX_DESCRIPTION
                )),
            );
            output.insert(
                "summary".into(),
                json!(fit(format!("{REOPENED}{}", self.summary))),
            );
        } else {
            body.insert("status".into(), json!(status));
            if let Some(at) = self.started_at {
                body.insert("started_at".into(), json!(timestamp(at)));
            }
            output.insert("title".into(), json!(self.title));
            output.insert("summary".into(), json!(self.summary));
        }
        if let Some(at) = self.completed_at {
            body.insert("completed_at".into(), json!(timestamp(at)));
        }
        if !self.text.is_empty() {
            output.insert("text".into(), json!(self.text));
        }
        body.insert("output".into(), Value::Object(output));
        Value::Object(body)
    }
}

/// How a finished run concludes.
fn conclusion(run: &RunSnapshot) -> Conclusion {
    let stages = &run.stages;
    let failed: Vec<&StageRecord> = stages
        .iter()
        .filter(|s| s.status == StageStatus::Failed)
        .collect();
    match run.header.status {
        RunStatus::Cancelled => Conclusion::Cancelled,
        RunStatus::Failed
            if !failed.is_empty()
                && failed
                    .iter()
                    .all(|s| s.reason.as_deref() == Some("timed_out")) =>
        {
            Conclusion::TimedOut
        }
        RunStatus::Failed => Conclusion::Failure,
        _ if !stages.is_empty() && stages.iter().all(|s| s.status == StageStatus::Skipped) => {
            Conclusion::Skipped
        }
        _ if !failed.is_empty() => Conclusion::Neutral,
        _ => Conclusion::Success,
    }
}

/// The approval a waiting stage asks for: the role that may give it, when the stage is an
/// `approval` stage (its `with.role`, `approver` when unset).
fn approval_role(run: &RunSnapshot, stage: &StageRecord) -> Option<String> {
    if stage.status != StageStatus::Waiting {
        return None;
    }
    let uses = run
        .payload
        .spec
        .get("stages")
        .and_then(|stages| stages.get(&stage.stage_id))
        .and_then(|spec| spec.get("uses"))
        .and_then(Value::as_str);
    if uses != Some("approval") {
        return None;
    }
    let role = stage
        .input
        .as_ref()
        .and_then(|input| input.get("role"))
        .and_then(Value::as_str)
        .filter(|role| !role.is_empty())
        .unwrap_or("approver");
    Some(role.to_owned())
}

/// `output.title`: where the run is, in a line.
fn title(run: &RunSnapshot) -> String {
    let header = &run.header;
    let total = run.stages.len();
    let finished = run
        .stages
        .iter()
        .filter(|s| crate::status::Phase::from(s.status).is_terminal())
        .count();
    let line = match header.status {
        RunStatus::Queued => "Queued".to_owned(),
        RunStatus::Running => match run
            .stages
            .iter()
            .find_map(|s| approval_role(run, s).map(|role| (s, role)))
        {
            Some((stage, role)) => {
                format!("Waiting for approval of {} (role {role})", stage.stage_id)
            }
            None => format!("Running: {finished} of {total} stages finished"),
        },
        status => {
            let word = match status {
                RunStatus::Succeeded => "Succeeded",
                RunStatus::Failed => "Failed",
                _ => "Cancelled",
            };
            match header
                .message
                .as_deref()
                .map(fold)
                .filter(|m| !m.is_empty())
            {
                Some(message) => format!("{word}: {message}"),
                None => word.to_owned(),
            }
        }
    };
    truncate(&line, MAX_DESCRIPTION)
}

/// A stage's status for people: an icon and a word, so it reads without colour.
fn shown(stage: &StageRecord) -> &'static str {
    match stage.status {
        StageStatus::Pending => "⚪ pending",
        StageStatus::Running => "🔄 running",
        StageStatus::Waiting => "⏸️ waiting",
        StageStatus::Succeeded => "✅ succeeded",
        StageStatus::Failed if stage.reason.as_deref() == Some("timed_out") => "⌛ timed out",
        StageStatus::Failed => "❌ failed",
        StageStatus::Cancelled => "🚫 cancelled",
        StageStatus::Skipped => "⏭️ skipped",
    }
}

/// `output.summary`: a line on the run, then a row per stage, in order.
fn summary(run: &RunSnapshot, details_url: Option<&str>) -> String {
    let header = &run.header;
    let mut out = format!(
        "**{}** run {}: {}\n\n",
        escape(&header.workflow),
        code(&header.id),
        header.status.as_str()
    );
    out.push_str("| | Stage | Status | Attempt | Message | External |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    let mut approvals = Vec::new();
    for stage in &run.stages {
        let (icon, word) = shown(stage).split_once(' ').unwrap_or(("", ""));
        let mut status = word.to_owned();
        if let Some(role) = approval_role(run, stage) {
            status = format!("waiting for approval (role {})", code(&role));
            approvals.push((stage.stage_id.as_str(), role));
        }
        let attempt = match stage.attempt {
            0 => "–".to_owned(),
            n => n.to_string(),
        };
        let message = truncate(&fold(stage.message.as_deref().unwrap_or("")), MAX_CELL);
        let _ = writeln!(
            out,
            "| {icon} | {} | {status} | {attempt} | {} | {} |",
            escape(&stage.stage_id),
            escape(&message),
            link(stage.external.as_ref().and_then(|e| e.url.as_deref())),
        );
    }
    for (stage, role) in approvals {
        let _ = write!(
            out,
            "\nStage {} waits for a person with the role {} to approve or reject it ({}).\n",
            escape(stage),
            code(&role),
            code(&format!("baton runs approve {} {stage}", header.id)),
        );
    }
    if let Some(url) = details_url {
        let _ = write!(out, "\nThe run in baton: {}\n", link(Some(url)));
    }
    fit(out)
}

/// `output.text`: every attempt of every stage, with its whole message.
fn text(run: &RunSnapshot) -> String {
    if run.attempts.is_empty() {
        return String::new();
    }
    let mut out = String::from("| Stage | Attempt | Status | Started | Finished | External |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    let mut messages = String::new();
    for attempt in &run.attempts {
        let record = StageRecord {
            status: attempt.status,
            reason: attempt.reason.clone(),
            ..StageRecord::pending(&attempt.run_id, &attempt.stage_id, 0)
        };
        let at = |t: Option<Millis>| t.map(timestamp).unwrap_or_else(|| "–".to_owned());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            escape(&attempt.stage_id),
            attempt.attempt,
            shown(&record),
            at(attempt.started_at),
            at(attempt.finished_at),
            link(attempt.external.as_ref().and_then(|e| e.url.as_deref())),
        );
        if let Some(message) = attempt
            .message
            .as_deref()
            .map(fold)
            .filter(|m| !m.is_empty())
        {
            let _ = write!(
                messages,
                "\n**{} attempt {}:** {}\n",
                escape(&attempt.stage_id),
                attempt.attempt,
                escape(&message)
            );
        }
    }
    out.push_str(&messages);
    fit(out)
}

/// `text` within [`MAX_OUTPUT`] characters: cut at a line's end, saying so.
fn fit(text: String) -> String {
    const CUT: &str = "\n… (cut to GitHub's limit; the run in baton has everything)\n";
    if text.chars().count() <= MAX_OUTPUT {
        return text;
    }
    let keep = MAX_OUTPUT - CUT.chars().count();
    let end = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
    let end = text[..end].rfind('\n').map_or(end, |i| i + 1);
    let mut out = text[..end].to_owned();
    out.push_str(CUT);
    out
}

/// Whitespace folded to single spaces.
fn fold(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text from runs and external systems, shown as itself in Markdown (a table cell included):
/// whitespace folded, and the characters Markdown or HTML would act on escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in fold(text).chars() {
        if matches!(
            c,
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '&' | '~' | '#'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Text as a Markdown code span, shown as it is: whitespace folded, and the backticks and
/// pipes that would end the span or a table cell replaced.
fn code(text: &str) -> String {
    format!("`{}`", fold(text).replace(['`', '|'], "'"))
}

/// A Markdown link to an http(s) `url`, labelled with its host; empty for anything else (a
/// URL that could break out of the link, another scheme).
fn link(url: Option<&str>) -> String {
    let Some(url) = url else {
        return String::new();
    };
    let parsed = reqwest::Url::parse(url).ok();
    let host = parsed
        .as_ref()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .and_then(|u| u.host_str());
    match host {
        Some(host) if !url.contains(|c: char| c.is_whitespace() || matches!(c, '<' | '>')) => {
            format!("[{}](<{url}>)", escape(host))
        }
        _ => String::new(),
    }
}

/// `2026-12-05T13:07:54Z`: an instant as GitHub's ISO 8601 timestamps, to the second.
pub(crate) fn timestamp(millis: Millis) -> String {
    let secs = millis.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date, counting in 400-year eras from 0000-03-01
    // (so a leap day ends each year).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// A check run as GitHub holds it: its id, and whether it is completed there. GitHub does not
/// let a completed check run go back to queued or in progress (a run reopened by a stage
/// retried by hand): see <https://github.com/Mergifyio/mergify/pull/1989> and
/// <https://github.com/lyft/atlantis/pull/265>.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    id: u64,
    completed: bool,
}

/// What the store says of a run's check run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorded {
    /// Nothing: no create was ever sent.
    Nothing,
    /// A create was sent and its answer never recorded.
    Creating,
    /// The check run.
    Known(Known),
}

/// Reads what [`reference`] wrote.
fn recorded(reference: Option<&str>) -> Recorded {
    let Some(text) = reference else {
        return Recorded::Nothing;
    };
    let rest = text.strip_prefix("check-run ").unwrap_or_default();
    let (id, completed) = match rest.strip_suffix(" completed") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    match id.parse() {
        Ok(id) => Recorded::Known(Known { id, completed }),
        Err(_) => Recorded::Creating,
    }
}

/// `check-run 42`, or `check-run 42 completed`: what the store keeps.
fn reference(known: Known) -> String {
    if known.completed {
        format!("check-run {} completed", known.id)
    } else {
        format!("check-run {}", known.id)
    }
}

/// The check runs of one source, by baton run, for the runs not completed (the store has
/// every one).
#[derive(Default)]
pub(crate) struct CheckRuns {
    known: Mutex<HashMap<String, Known>>,
}

impl CheckRuns {
    /// Shows `check` on `commit`: updates the run's check run, or creates it (looking it up
    /// first when an earlier create's answer was lost).
    pub(crate) async fn post(
        &self,
        crab: &Octocrab,
        source: &str,
        commit: &GithubCommit,
        check: &CheckRun,
        store: &dyn Store,
    ) -> Result<(), Failure> {
        let run_id = check.run_id.as_str();
        let cached = self.known.lock().unwrap().get(run_id).copied();
        let (found, stored) = match cached {
            Some(known) => (Some(known), Some(known)),
            None => {
                let text = store
                    .report_ref(run_id, source)
                    .await
                    .map_err(|e| Failure::transient(format!("cannot read the store: {e}")))?;
                match recorded(text.as_deref()) {
                    Recorded::Known(known) => (Some(known), Some(known)),
                    Recorded::Creating => (find(crab, commit, check).await?, None),
                    Recorded::Nothing => (None, None),
                }
            }
        };
        let now = match found {
            Some(known) => {
                update(crab, commit, known, check).await?;
                Known {
                    id: known.id,
                    completed: known.completed || check.is_completed(),
                }
            }
            None => {
                // Recorded first: whatever becomes of the answer, the next try looks before
                // it creates.
                store
                    .commit(vec![record(run_id, source, CREATING.to_owned())])
                    .await
                    .map_err(|e| Failure::transient(format!("cannot write the store: {e}")))?;
                Known {
                    id: create(crab, commit, check).await?,
                    completed: check.is_completed(),
                }
            }
        };
        if stored != Some(now)
            && let Err(e) = store
                .commit(vec![record(run_id, source, reference(now))])
                .await
        {
            // Without an id recorded, the next process looks the check run up by its run id.
            tracing::warn!(run = run_id, %source, check_run = now.id, error = &e as &dyn std::error::Error,
                "cannot record the check run in the store");
        }
        let mut known = self.known.lock().unwrap();
        if check.is_completed() {
            known.remove(run_id);
        } else {
            known.insert(run_id.to_owned(), now);
        }
        Ok(())
    }
}

fn record(run_id: &str, source: &str, reference: String) -> Change {
    Change::ReportRef {
        run_id: run_id.to_owned(),
        source: source.to_owned(),
        reference,
    }
}

fn repo_route(commit: &GithubCommit) -> String {
    // Owner, repository and SHA were checked to hold only URL-safe characters.
    format!("/repos/{}/{}", commit.owner, commit.repo)
}

/// The id in GitHub's answer about one check run.
fn id_of(answer: &Value) -> Result<u64, Failure> {
    answer.get("id").and_then(Value::as_u64).ok_or_else(|| {
        Failure::transient("GitHub's answer names no check run id (`id`); looking it up next time")
    })
}

async fn create(crab: &Octocrab, commit: &GithubCommit, check: &CheckRun) -> Result<u64, Failure> {
    let route = format!("{}/check-runs", repo_route(commit));
    let answer: Value = crab
        .post(route, Some(&check.body(Some(&commit.sha), false)))
        .await
        .map_err(crate::github::failure)?;
    id_of(&answer)
}

async fn update(
    crab: &Octocrab,
    commit: &GithubCommit,
    known: Known,
    check: &CheckRun,
) -> Result<(), Failure> {
    let route = format!("{}/check-runs/{}", repo_route(commit), known.id);
    let reopened = known.completed && !check.is_completed();
    let answer: Value = crab
        .patch(route, Some(&check.body(None, reopened)))
        .await
        .map_err(crate::github::failure)?;
    // A model of GitHub that answers with something else is not GitHub: say so, try again.
    id_of(&answer).map(|_| ())
}

/// The commit's check run named `check.name` whose `external_id` is the run's.
async fn find(
    crab: &Octocrab,
    commit: &GithubCommit,
    check: &CheckRun,
) -> Result<Option<Known>, Failure> {
    let route = format!("{}/commits/{}/check-runs", repo_route(commit), commit.sha);
    for page in 1..=MAX_PAGES {
        let query = [
            ("check_name", check.name.clone()),
            ("filter", "all".to_owned()),
            ("per_page", PAGE.to_string()),
            ("page", page.to_string()),
        ];
        let answer: Value = crab
            .get(&route, Some(&query))
            .await
            .map_err(crate::github::failure)?;
        let Some(runs) = answer.get("check_runs").and_then(Value::as_array) else {
            return Err(Failure::transient(
                "GitHub's list of check runs has no `check_runs` array",
            ));
        };
        let found = runs.iter().find(|run| {
            run.get("external_id").and_then(Value::as_str) == Some(check.run_id.as_str())
                && run.get("name").and_then(Value::as_str) == Some(check.name.as_str())
        });
        if let Some(run) = found {
            return Ok(Some(Known {
                id: id_of(run)?,
                completed: run.get("status").and_then(Value::as_str) == Some("completed"),
            }));
        }
        if runs.len() < PAGE {
            break;
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use baton_core::ExternalRef;
    use baton_core::context::TriggerInfo;
    use baton_store::{AttemptRecord, RunHeader, RunPayload};

    use super::*;

    fn stage(id: &str, status: StageStatus, attempt: u32) -> StageRecord {
        StageRecord {
            status,
            attempt,
            ..StageRecord::pending("r1", id, 0)
        }
    }

    fn run(status: RunStatus, stages: Vec<StageRecord>) -> RunSnapshot {
        RunSnapshot {
            version: 0,
            header: RunHeader {
                id: "r1".into(),
                workflow: "ci".into(),
                status,
                cancel_requested: false,
                message: None,
                created_at: 1,
                started_at: Some(1_764_940_074_000),
                finished_at: Some(1_764_940_134_500),
            },
            payload: RunPayload {
                spec: json!({"stages": {"gate": {"uses": "approval"}, "build": {"uses": "ci"}}}),
                event: Value::Null,
                trigger: TriggerInfo {
                    source: "github".into(),
                    event: "push".into(),
                    delivery_id: None,
                },
            },
            stages,
            attempts: Vec::new(),
        }
    }

    fn failed(id: &str, reason: &str) -> StageRecord {
        StageRecord {
            reason: Some(reason.into()),
            ..stage(id, StageStatus::Failed, 1)
        }
    }

    #[test]
    fn run_states_map_to_status_and_conclusion() {
        use StageStatus as S;
        let ok = || stage("a", S::Succeeded, 1);
        let skipped = || stage("b", S::Skipped, 0);
        let cases = [
            (run(RunStatus::Queued, vec![]), CheckStatus::Queued),
            (run(RunStatus::Running, vec![ok()]), CheckStatus::InProgress),
            (
                run(RunStatus::Succeeded, vec![ok(), skipped()]),
                CheckStatus::Completed(Conclusion::Success),
            ),
            (
                run(RunStatus::Succeeded, vec![skipped(), skipped()]),
                CheckStatus::Completed(Conclusion::Skipped),
            ),
            (
                run(RunStatus::Succeeded, vec![ok(), failed("c", "failed")]),
                CheckStatus::Completed(Conclusion::Neutral),
            ),
            (
                run(RunStatus::Failed, vec![ok(), failed("c", "failed")]),
                CheckStatus::Completed(Conclusion::Failure),
            ),
            (
                run(RunStatus::Failed, vec![failed("c", "timed_out")]),
                CheckStatus::Completed(Conclusion::TimedOut),
            ),
            (
                run(
                    RunStatus::Failed,
                    vec![failed("c", "timed_out"), failed("d", "failed")],
                ),
                CheckStatus::Completed(Conclusion::Failure),
            ),
            (
                run(RunStatus::Cancelled, vec![ok()]),
                CheckStatus::Completed(Conclusion::Cancelled),
            ),
        ];
        for (run, want) in cases {
            let check = CheckRun::of(&run, None);
            assert_eq!(check.status, want, "{:?}", run.header.status);
            assert_eq!(check.is_completed(), check.completed_at.is_some());
        }
    }

    #[test]
    fn the_body_follows_the_checks_api() {
        let mut build = stage("build", StageStatus::Failed, 2);
        build.message = Some("exit code 2".into());
        build.external = Some(ExternalRef {
            id: "7".into(),
            url: Some("https://jenkins.example.com/job/app/7/".into()),
            data: Value::Null,
        });
        let mut snapshot = run(RunStatus::Failed, vec![build]);
        snapshot.header.message = Some("stage `build` failed".into());
        let check = CheckRun::of(&snapshot, Some("https://baton.example.com"));
        let created = check.body(Some("abc"), false);
        assert_eq!(created["name"], "baton/ci");
        assert_eq!(created["head_sha"], "abc");
        assert_eq!(created["external_id"], "r1");
        assert_eq!(
            created["details_url"],
            "https://baton.example.com/api/v1/runs/r1"
        );
        assert_eq!(created["status"], "completed");
        assert_eq!(created["conclusion"], "failure");
        assert_eq!(created["started_at"], "2025-12-05T13:07:54Z");
        assert_eq!(created["completed_at"], "2025-12-05T13:08:54Z");
        assert_eq!(created["output"]["title"], "Failed: stage `build` failed");
        let summary = created["output"]["summary"].as_str().unwrap();
        assert!(
            summary.contains(
                "| ❌ | build | failed | 2 | exit code 2 | [jenkins.example.com](<https://jenkins.example.com/job/app/7/>) |"
            ),
            "{summary}"
        );
        let updated = check.body(None, false);
        assert!(updated.get("head_sha").is_none());
        // The run failed and goes on again: the check run stays completed, its output says
        // so, and the conclusion is not touched until the run ends again.
        let again = CheckRun::of(&run(RunStatus::Running, vec![]), None);
        let reopened = again.body(None, true);
        let keys: Vec<&str> = reopened
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["name", "external_id", "output"]);
        assert_eq!(
            reopened["output"]["title"],
            "Running again: Running: 0 of 0 stages finished"
        );
        assert!(
            reopened["output"]["summary"]
                .as_str()
                .unwrap()
                .starts_with("> A stage was retried")
        );
        let queued = CheckRun::of(&run(RunStatus::Queued, vec![]), None).body(None, false);
        let keys: Vec<&str> = queued
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["name", "external_id", "status", "started_at", "output"]
        );
        assert!(queued["output"].get("text").is_none());
    }

    #[test]
    fn a_stage_that_ran_out_of_time_says_so_in_summary_and_text() {
        let mut snapshot = run(RunStatus::Failed, vec![failed("deploy", "timed_out")]);
        snapshot.attempts = vec![AttemptRecord {
            run_id: "r1".into(),
            stage_id: "deploy".into(),
            attempt: 1,
            status: StageStatus::Failed,
            reason: Some("timed_out".into()),
            message: Some("no end within 1h".into()),
            external: None,
            started_at: Some(0),
            finished_at: Some(3_600_000),
        }];
        let check = CheckRun::of(&snapshot, None);
        assert_eq!(check.status, CheckStatus::Completed(Conclusion::TimedOut));
        assert!(
            check.summary.contains("| ⌛ | deploy | timed out | 1 |"),
            "{}",
            check.summary
        );
        assert!(
            check.text.contains(
                "| deploy | 1 | ⌛ timed out | 1970-01-01T00:00:00Z | 1970-01-01T01:00:00Z |  |"
            ),
            "{}",
            check.text
        );
        assert!(
            check
                .text
                .contains("**deploy attempt 1:** no end within 1h")
        );
    }

    #[test]
    fn a_waiting_approval_says_who_must_approve() {
        let mut gate = stage("gate", StageStatus::Waiting, 1);
        gate.input = Some(json!({"message": "ship?", "role": "release-managers"}));
        let mut build = stage("build", StageStatus::Waiting, 1);
        build.message = Some("blocked".into());
        let check = CheckRun::of(&run(RunStatus::Running, vec![build, gate]), None);
        assert_eq!(check.status, CheckStatus::InProgress);
        assert_eq!(
            check.title,
            "Waiting for approval of gate (role release-managers)"
        );
        assert!(
            check
                .summary
                .contains("| ⏸️ | gate | waiting for approval (role `release-managers`) | 1 |"),
            "{}",
            check.summary
        );
        // A stage of another kind waits without an approval.
        assert!(
            check
                .summary
                .contains("| ⏸️ | build | waiting | 1 | blocked |")
        );
        assert!(check.summary.contains(
            "waits for a person with the role `release-managers` to approve or reject it (`baton runs approve r1 gate`)"
        ));
    }

    #[test]
    fn text_from_outside_cannot_become_markdown_or_break_the_table() {
        let mut build = stage("build", StageStatus::Failed, 1);
        build.message = Some("a | b\n<script>x</script> [c](javascript:y) **d**".into());
        build.external = Some(ExternalRef {
            id: "1".into(),
            url: Some("javascript:alert(1)".into()),
            data: Value::Null,
        });
        let check = CheckRun::of(&run(RunStatus::Failed, vec![build]), None);
        let row = check.summary.lines().find(|l| l.contains("build")).unwrap();
        assert_eq!(
            row,
            r"| ❌ | build | failed | 1 | a \| b \<script\>x\</script\> \[c\](javascript:y) \*\*d\*\* |  |"
        );
        assert_eq!(code("a_b `c` | d"), "`a_b 'c' ' d`");
        assert_eq!(link(Some("https://x.example/a b")), "");
        assert_eq!(link(Some("https://x.example/a>b")), "");
    }

    #[test]
    fn summary_and_text_stay_within_githubs_limit() {
        let stages: Vec<StageRecord> = (0..400)
            .map(|i| {
                let mut s = stage(&format!("stage{i}"), StageStatus::Failed, 1);
                s.message = Some("é".repeat(1000));
                s
            })
            .collect();
        let mut snapshot = run(RunStatus::Failed, stages);
        snapshot.attempts = (0..400)
            .map(|i| AttemptRecord {
                run_id: "r1".into(),
                stage_id: format!("stage{i}"),
                attempt: 1,
                status: StageStatus::Failed,
                reason: None,
                message: Some("x".repeat(1000)),
                external: None,
                started_at: Some(0),
                finished_at: None,
            })
            .collect();
        let check = CheckRun::of(&snapshot, None);
        for part in [&check.summary, &check.text] {
            let n = part.chars().count();
            assert!(n <= MAX_OUTPUT && n > MAX_OUTPUT - 2000, "{n}");
            assert!(part.ends_with("the run in baton has everything)\n"));
            // Cut after a whole line.
            assert!(
                part.contains("\n\n… (cut to GitHub's limit"),
                "{}",
                &part[part.len() - 200..]
            );
        }
        assert!(check.summary.contains(" |\n\n… (cut to GitHub's limit"));
        assert!(check.text.contains("x\n\n\n… (cut to GitHub's limit"));
        assert!(check.text.starts_with("| Stage | Attempt |"));
        assert!(
            check
                .text
                .contains("| stage0 | 1 | ❌ failed | 1970-01-01T00:00:00Z | – |  |")
        );
        let short = CheckRun::of(&run(RunStatus::Queued, vec![]), None);
        assert!(!short.summary.contains("cut"));
    }

    #[test]
    fn timestamps_are_utc_iso_8601() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(timestamp(1_709_251_199_999), "2024-02-29T23:59:59Z");
        assert_eq!(timestamp(4_102_444_800_000), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn the_stored_reference_reads_back() {
        assert_eq!(recorded(None), Recorded::Nothing);
        assert_eq!(recorded(Some(CREATING)), Recorded::Creating);
        for completed in [false, true] {
            let known = Known { id: 42, completed };
            assert_eq!(recorded(Some(&reference(known))), Recorded::Known(known));
        }
        assert_eq!(
            reference(Known {
                id: 7,
                completed: true
            }),
            "check-run 7 completed"
        );
        assert_eq!(recorded(Some("check-run x")), Recorded::Creating);
        assert_eq!(recorded(Some("check-run x completed")), Recorded::Creating);
    }
}
