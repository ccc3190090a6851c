//! What a finished build leaves: its outputs (the build, its jobs, and `KEY=value` lines
//! printed between `BATON-OUTPUTS-BEGIN` and `BATON-OUTPUTS-END` in the jobs' logs) and
//! its logs (links, and the broken jobs' tails).

use std::collections::BTreeMap;

use baton_core::adapter::LogLink;
use baton_core::{AdapterError, ExternalRef, Logs};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::TravisAdapter;
use crate::client::Ask;
use crate::model::Job;
use crate::tracked::Tracked;

/// The line that opens a block of outputs in a job's log.
pub const BEGIN: &str = "BATON-OUTPUTS-BEGIN";
/// The line that closes it.
pub const END: &str = "BATON-OUTPUTS-END";

/// How much of the end of each job's log is searched for outputs.
pub(crate) const OUTPUTS_LOG_BYTES: usize = 1_048_576;

/// How many jobs' logs are searched for outputs, in the build's order.
pub(crate) const OUTPUT_JOBS: usize = 20;

/// How much of the end of a log a tail is read from, and how many lines it keeps.
const TAIL_BYTES: usize = 65_536;
const TAIL_LINES: usize = 30;

/// The output keys baton sets itself, which a log may not replace.
const RESERVED: [&str; 5] = ["id", "url", "number", "state", "jobs"];

impl TravisAdapter {
    /// `id`, `url`, `number`, `state`, `jobs` (number → state) and the jobs' logged outputs.
    pub(crate) async fn read_outputs(
        &self,
        external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        let tracked = Tracked::read(external)?;
        let Some(id) = tracked.build else {
            return Err(AdapterError::NotFound(format!(
                "Travis made no build for this attempt's request ({}): there are no outputs",
                tracked.end.as_deref().unwrap_or("still waiting")
            )));
        };
        // The poll that saw the end kept the state and the jobs.
        let (state, number, jobs) = match &tracked.end {
            Some(end) => (end.clone(), tracked.number.clone(), tracked.jobs.clone()),
            None => {
                let build = self.build(id).await?;
                (build.state, build.number, build.jobs)
            }
        };
        let mut outputs = Map::new();
        outputs.insert("id".into(), json!(id.to_string()));
        outputs.insert(
            "url".into(),
            json!(format!("{}/builds/{id}", self.inner.pages)),
        );
        outputs.insert("number".into(), json!(number));
        outputs.insert("state".into(), json!(state));
        let states: Map<String, Value> = jobs.iter().map(|j| (j.label(), json!(j.state))).collect();
        outputs.insert("jobs".into(), Value::Object(states));
        for (key, value) in self.logged_outputs(&jobs).await? {
            outputs.insert(key, Value::String(value));
        }
        Ok(outputs)
    }

    /// The outputs the jobs printed, the first [`OUTPUT_JOBS`] jobs read in the build's
    /// order; a key two jobs print with different values is an error naming both.
    async fn logged_outputs(&self, jobs: &[Job]) -> Result<BTreeMap<String, String>, AdapterError> {
        let mut found: BTreeMap<String, (String, String)> = BTreeMap::new();
        for job in jobs.iter().take(OUTPUT_JOBS) {
            let Some(log) = self.log(job.id, OUTPUTS_LOG_BYTES).await? else {
                continue;
            };
            let label = job.label();
            let pairs = logged_pairs(&log).map_err(|problem| {
                AdapterError::Invalid(format!(
                    "the outputs job {label} printed in its log cannot be read: {problem}"
                ))
            })?;
            for (key, value) in pairs {
                match found.get(&key) {
                    Some((other, earlier)) if *earlier != value => {
                        return Err(AdapterError::Invalid(format!(
                            "jobs {other} and {label} both print output `{key}`, with different values (`{earlier}` and `{value}`): print it from one job only (for example only when `TRAVIS_JOB_NUMBER` ends in `.1`)"
                        )));
                    }
                    Some(_) => {}
                    None => {
                        found.insert(key, (label.clone(), value));
                    }
                }
            }
        }
        Ok(found.into_iter().map(|(k, (_, v))| (k, v)).collect())
    }

    /// The end of job `job`'s `log.txt`, at most `cap` bytes; `None` when Travis has none.
    async fn log(&self, job: u64, cap: usize) -> Result<Option<String>, AdapterError> {
        let client = &self.inner.client;
        let what = format!("read the log of job {job}");
        let reply = client
            .send(
                Method::GET,
                client.url(&["job", &job.to_string(), "log.txt"], &[]),
                None,
                Ask {
                    cap,
                    tail: true,
                    ..Ask::read(&what)
                },
            )
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        client.accept(&reply, &what)?;
        let mut text = String::from_utf8_lossy(&reply.body).into_owned();
        if reply.cut {
            // The first line kept is likely a part of one: drop it.
            text = text
                .split_once('\n')
                .map(|(_, rest)| rest.to_owned())
                .unwrap_or_default();
        }
        Ok(Some(text))
    }

    /// The last lines of job `job`'s log, cleaned of terminal codes; `None` when empty.
    pub(crate) async fn log_tail(&self, job: u64) -> Result<Option<String>, AdapterError> {
        let Some(log) = self.log(job, TAIL_BYTES).await? else {
            return Ok(None);
        };
        let lines: Vec<String> = log.lines().map(clean).collect();
        let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
        Ok((!tail.trim().is_empty()).then_some(tail))
    }

    /// Links to the build, each job's page and its `log.txt`, and the broken jobs' tails.
    pub(crate) async fn read_logs(&self, external: &ExternalRef) -> Result<Logs, AdapterError> {
        let tracked = Tracked::read(external)?;
        let mut logs = Logs::default();
        let pages = &self.inner.pages;
        let Some(id) = tracked.build else {
            logs.links.push(LogLink {
                name: "requests".into(),
                url: format!("{pages}/requests"),
            });
            return Ok(logs);
        };
        let jobs = match tracked.end {
            Some(_) => tracked.jobs,
            None => self.build(id).await?.jobs,
        };
        logs.links.push(LogLink {
            name: "build".into(),
            url: format!("{pages}/builds/{id}"),
        });
        let api = self.inner.client.api();
        let mut text = String::new();
        for job in &jobs {
            let label = job.label();
            logs.links.push(LogLink {
                name: format!("job {label}"),
                url: format!("{pages}/jobs/{}", job.id),
            });
            logs.links.push(LogLink {
                name: format!("job {label} log.txt"),
                url: format!("{api}job/{}/log.txt", job.id),
            });
            if job.broken()
                && let Some(tail) = self.log_tail(job.id).await?
            {
                let state = job.state.as_deref().unwrap_or_default();
                text.push_str(&format!("==> job {label} ({state}) <==\n{tail}\n"));
            }
        }
        logs.text = (!text.is_empty()).then_some(text);
        Ok(logs)
    }
}

/// A log line as a person reads it: terminal escape codes removed and, where `\r` redrew
/// the line, only what was drawn last.
pub(crate) fn clean(line: &str) -> String {
    let drawn = line
        .split('\r')
        .rev()
        .find(|part| !strip_escapes(part).trim().is_empty())
        .unwrap_or_default();
    strip_escapes(drawn).trim_end().to_owned()
}

fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        // CSI: ESC [ parameters, then one final byte in @..~.
        if chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// The `KEY=value` lines of every `BATON-OUTPUTS-BEGIN` … `BATON-OUTPUTS-END` block of a
/// log, in order (a later block's value of a key wins). Inside a block, blank lines, the
/// shell's echo of commands (`$ …`) and Travis's fold and timing marks are skipped; any
/// other line that is not `KEY=value` (letters, digits and `_`; not one of baton's own
/// keys) is a problem, each named with its line number, as is a block that never ends.
pub(crate) fn logged_pairs(log: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut problems = Vec::new();
    let mut open_at = None;
    for (n, raw) in log.lines().enumerate() {
        let line = clean(raw);
        let line = line.trim();
        match open_at {
            None if line == BEGIN => open_at = Some(n + 1),
            None => {}
            Some(_) if line == END => open_at = None,
            Some(_)
                if line.is_empty()
                    || line.starts_with("$ ")
                    || line.starts_with("travis_fold:")
                    || line.starts_with("travis_time:") => {}
            Some(_) => match line.split_once('=') {
                Some((key, _)) if RESERVED.contains(&key) => problems.push(format!(
                    "line {}: `{key}` is an output baton sets itself ({})",
                    n + 1,
                    RESERVED.join(", ")
                )),
                Some((key, value))
                    if !key.is_empty()
                        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
                {
                    pairs.retain(|(k, _)| k != key);
                    pairs.push((key.to_owned(), value.to_owned()));
                }
                _ => problems.push(format!(
                    "line {}: expected `KEY=value` (letters, digits and `_` before the `=`) between {BEGIN} and {END}",
                    n + 1
                )),
            },
        }
    }
    if let Some(at) = open_at {
        problems.push(format!("the {BEGIN} of line {at} has no {END}"));
    }
    match problems.as_slice() {
        [] => Ok(pairs),
        _ => Err(problems.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_as_people_see_them() {
        assert_eq!(
            clean("\u{1b}[33;1mWorker information\u{1b}[0m"),
            "Worker information"
        );
        assert_eq!(
            clean("travis_fold:end:git.checkout\r\u{1b}[0K"),
            "travis_fold:end:git.checkout"
        );
        assert_eq!(
            clean("downloading 10%\rdownloading 100%\r"),
            "downloading 100%"
        );
        assert_eq!(clean("plain  "), "plain");
        assert_eq!(clean("\u{1b}"), "");
    }

    #[test]
    fn outputs_are_the_lines_between_the_markers() {
        let log = "\
$ echo building\n\
IMAGE=not-an-output\n\
$ echo BATON-OUTPUTS-BEGIN; echo IMAGE=reg/app@sha256:ab; echo BATON-OUTPUTS-END\n\
\u{1b}[0mBATON-OUTPUTS-BEGIN\r\n\
IMAGE=reg/app@sha256:ab\n\
\n\
NOTE=a b = c\n\
EMPTY=\n\
BATON-OUTPUTS-END\n\
later\n\
BATON-OUTPUTS-BEGIN\n\
travis_time:end:0a1b\r\u{1b}[0K\n\
travis_fold:end:outputs\r\u{1b}[0K\n\
NOTE=second\n\
BATON-OUTPUTS-END\n";
        assert_eq!(
            logged_pairs(log).unwrap(),
            [
                ("IMAGE".to_owned(), "reg/app@sha256:ab".to_owned()),
                ("EMPTY".to_owned(), String::new()),
                ("NOTE".to_owned(), "second".to_owned()),
            ]
        );
        assert_eq!(logged_pairs("no markers at all\nA=1\n").unwrap(), []);
        // A stray END (its BEGIN cut off with the log's start) is passed over.
        assert_eq!(logged_pairs("A=1\nBATON-OUTPUTS-END\n").unwrap(), []);
    }

    #[test]
    fn bad_lines_and_unclosed_blocks_are_named() {
        let err = logged_pairs(
            "BATON-OUTPUTS-BEGIN\nOK=1\njust words\nbad-key=2\nurl=x\nBATON-OUTPUTS-END\nBATON-OUTPUTS-BEGIN\nA=1\n",
        )
        .unwrap_err();
        assert!(err.contains("line 3: expected `KEY=value`"), "{err}");
        assert!(err.contains("line 4: expected"), "{err}");
        assert!(
            err.contains("line 5: `url` is an output baton sets itself"),
            "{err}"
        );
        assert!(
            err.contains("the BATON-OUTPUTS-BEGIN of line 7 has no BATON-OUTPUTS-END"),
            "{err}"
        );
    }
}
