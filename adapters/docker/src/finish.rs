//! Ending an attempt: reading what an ended container leaves (exit code, `[COUT]` lines,
//! `$BATON_OUTPUT`, the log tail), recording it durably, and only then removing the
//! container; and stopping a container that must end now.

use std::time::Duration;

use baton_core::component::{self, parse_cout};
use baton_core::{AdapterError, AttemptKey};
use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum};
use bollard::query_parameters::{
    DownloadFromContainerOptions, KillContainerOptions, RemoveContainerOptions,
    StopContainerOptions,
};
use futures::StreamExt;
use serde_json::{Map, Value};
use std::io::Read;

use crate::config::BATON_DIR;
use crate::engine::{self, Streams, failed};
use crate::record::{AttemptFiles, Ending, Record};
use crate::run::{Attempt, status};

/// The most of `$BATON_OUTPUT` read back; a larger file fails the stage.
pub(crate) const MAX_OUTPUT_FILE: u64 = 4 * 1024 * 1024;
/// How much of the log a failure message and the record keep.
pub(crate) const TAIL_LINES: usize = 20;
/// The byte bound on that tail.
pub(crate) const TAIL_BYTES: usize = 4096;

/// What a cancel writes in the marker; anything else there is a timeout's explanation.
pub(crate) const CANCELLED: &str = "cancelled";

/// Collects `[COUT]` values from log chunks, which may cut a line anywhere.
#[derive(Debug, Default)]
pub(crate) struct CoutLines {
    partial: Vec<u8>,
    outputs: Map<String, Value>,
}

impl CoutLines {
    /// Takes the next chunk of standard output.
    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        self.partial.extend_from_slice(chunk);
        if let Some(last) = self.partial.iter().rposition(|b| *b == b'\n') {
            let rest = self.partial.split_off(last + 1);
            let whole = std::mem::replace(&mut self.partial, rest);
            self.outputs.extend(component::cout_outputs(&whole[..]));
        }
        // A line this long is no `[COUT]` line anyone meant: drop it rather than hold an
        // endless line in memory.
        if self.partial.len() as u64 > MAX_OUTPUT_FILE {
            self.partial.clear();
        }
    }

    /// Every value seen, the last unfinished line included.
    pub(crate) fn finish(mut self) -> Map<String, Value> {
        if let Some((key, value)) = parse_cout(&String::from_utf8_lossy(&self.partial)) {
            self.outputs.insert(key, value);
        }
        self.outputs
    }
}

/// The object the component wrote to `$BATON_OUTPUT`, read through the engine's archive
/// API (so it works whatever user the component ran as, with no folder shared).
async fn output_file(
    attempt: &Attempt<'_>,
) -> Result<Result<Option<Map<String, Value>>, String>, AdapterError> {
    let options = DownloadFromContainerOptions {
        path: format!("{BATON_DIR}/output.json"),
    };
    let mut archive = Vec::new();
    let mut body = attempt
        .docker
        .download_from_container(attempt.name, Some(options));
    // The tar adds headers and padding around the file: allow for them.
    let bound = MAX_OUTPUT_FILE + 64 * 1024;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => archive.extend_from_slice(&bytes),
            Err(e) if engine::status_of(&e) == Some(404) => return Ok(Ok(None)),
            Err(e) => return Err(failed(attempt.key, "read $BATON_OUTPUT", &e)),
        }
        if archive.len() as u64 > bound {
            return Ok(Err(format!(
                "$BATON_OUTPUT is larger than {} MiB",
                MAX_OUTPUT_FILE >> 20
            )));
        }
    }
    Ok(file_in_tar(&archive).and_then(|bytes| component::output_object(&bytes)))
}

/// The content of the one file in `archive`.
fn file_in_tar(archive: &[u8]) -> Result<Vec<u8>, String> {
    let unreadable = |e: std::io::Error| format!("cannot read $BATON_OUTPUT from the engine: {e}");
    let mut entries = tar::Archive::new(archive);
    let mut entry = entries
        .entries()
        .map_err(unreadable)?
        .next()
        .ok_or("the engine sent an empty archive for $BATON_OUTPUT")?
        .map_err(unreadable)?;
    if entry.header().entry_type() != tar::EntryType::Regular {
        return Err("$BATON_OUTPUT is not a regular file".to_owned());
    }
    if entry.size() > MAX_OUTPUT_FILE {
        return Err(format!(
            "$BATON_OUTPUT is larger than {} MiB",
            MAX_OUTPUT_FILE >> 20
        ));
    }
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes).map_err(unreadable)?;
    Ok(bytes)
}

/// How the container ended, from its state, the cancel marker and its outputs; the
/// message ends with the log tail on a failure.
fn ending(
    container: &ContainerInspectResponse,
    stopped: Option<&str>,
    output_problem: Option<&str>,
    tail: &str,
) -> (Ending, String) {
    let state = container.state.as_ref();
    let code = state.and_then(|s| s.exit_code).unwrap_or_default();
    let ran = status(container) != Some(ContainerStateStatusEnum::CREATED);
    let described = if !ran {
        "the container never started".to_owned()
    } else if state.and_then(|s| s.oom_killed).unwrap_or(false) {
        format!("the container was killed for using more memory than its limit (exit code {code})")
    } else {
        format!("the container exited with code {code}")
    };
    let (ending, mut message) = match (stopped, output_problem) {
        (Some(CANCELLED), _) => (Ending::Cancelled, format!("cancelled: {described}")),
        (Some(why), _) => (Ending::Failed, format!("{why}: {described}")),
        (None, None) if ran && code == 0 => (Ending::Succeeded, described),
        (None, Some(problem)) if ran && code == 0 => {
            (Ending::Failed, format!("{described}, but {problem}"))
        }
        (None, _) => (Ending::Failed, described),
    };
    if let Some(error) = state
        .and_then(|s| s.error.as_deref())
        .filter(|e| !e.is_empty())
    {
        message.push_str(&format!(" ({error})"));
    }
    if ending != Ending::Succeeded && !tail.trim().is_empty() {
        message.push_str("; the end of its log:\n");
        message.push_str(tail);
    }
    (ending, message)
}

/// Records how the ended `container` ended, then removes it. A record already there (from
/// a poll or a cancel that got there first) is returned as it is.
pub(crate) async fn finalize(
    attempt: &Attempt<'_>,
    container: &ContainerInspectResponse,
) -> Result<Record, AdapterError> {
    if let Some(record) = read_record(attempt.key, attempt.files)? {
        remove(attempt).await?;
        return Ok(record);
    }
    let ran = status(container) != Some(ContainerStateStatusEnum::CREATED);
    // The three reads are independent: made at once, a stage ends one engine round trip
    // after its container, not three.
    let what_it_left = async {
        let mut cout = CoutLines::default();
        if !ran {
            return Ok((cout, Ok(None)));
        }
        let ((), file) = tokio::try_join!(
            engine::read_log(
                attempt.docker,
                attempt.key,
                attempt.name,
                Streams::Stdout,
                "all",
                |chunk| cout.feed(chunk),
            ),
            output_file(attempt),
        )?;
        Ok((cout, file))
    };
    let tail = engine::log_tail(
        attempt.docker,
        attempt.key,
        attempt.name,
        TAIL_LINES,
        TAIL_BYTES,
    );
    let ((cout, file), tail) = tokio::try_join!(what_it_left, tail)?;
    let stopped = attempt.files.cancelled();
    let (ending, message) = ending(
        container,
        stopped.as_deref(),
        file.as_ref().err().map(String::as_str),
        &tail,
    );
    let exit_code = container
        .state
        .as_ref()
        .and_then(|s| s.exit_code)
        .filter(|_| ran);
    let record = Record {
        container: container.id.clone().unwrap_or_default(),
        ending,
        exit_code,
        message,
        outputs: component::component_outputs(cout.finish(), file.ok().flatten(), exit_code),
        log_tail: tail,
    };
    write_record(attempt.key, attempt.files, &record).await?;
    remove(attempt).await?;
    Ok(record)
}

/// Records an attempt whose container the engine refused to start, then removes it.
pub(crate) async fn record_refused(
    attempt: &Attempt<'_>,
    container_id: &str,
    why: String,
) -> Result<Record, AdapterError> {
    let record = Record {
        container: container_id.to_owned(),
        ending: Ending::Failed,
        exit_code: None,
        message: why,
        outputs: component::component_outputs(Map::new(), None, None),
        log_tail: String::new(),
    };
    write_record(attempt.key, attempt.files, &record).await?;
    remove(attempt).await?;
    Ok(record)
}

/// The attempt's record, if written.
pub(crate) fn read_record(
    key: &AttemptKey,
    files: &AttemptFiles,
) -> Result<Option<Record>, AdapterError> {
    files.read_record().map_err(|e| {
        AdapterError::Transient(format!("docker {key}: cannot read the result record: {e}"))
    })
}

async fn write_record(
    key: &AttemptKey,
    files: &AttemptFiles,
    record: &Record,
) -> Result<(), AdapterError> {
    let (files, record) = (files.clone(), record.clone());
    tokio::task::spawn_blocking(move || files.write_record(&record))
        .await
        .map_err(|e| AdapterError::Transient(format!("docker {key}: a file task failed: {e}")))?
        .map_err(|e| {
            AdapterError::Transient(format!("docker {key}: cannot write the result record: {e}"))
        })
}

/// Removes the container (and its anonymous volumes); one already gone, or being removed
/// by another call (409), is fine.
pub(crate) async fn remove(attempt: &Attempt<'_>) -> Result<(), AdapterError> {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..RemoveContainerOptions::default()
    };
    let removed = attempt
        .docker
        .remove_container(attempt.name, Some(options))
        .await;
    engine::unless_already(removed, &[404, 409], attempt.key, "remove the container")
}

/// Stops the container: its stop signal, `grace` to exit, then `SIGKILL` (the engine's own
/// stop does both; a kill follows if the stop itself failed). A container already stopped
/// (304) or gone is fine.
pub(crate) async fn stop(attempt: &Attempt<'_>, grace: Duration) -> Result<(), AdapterError> {
    let options = StopContainerOptions {
        t: Some(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX)),
        ..StopContainerOptions::default()
    };
    let stopped = attempt
        .docker
        .stop_container(attempt.name, Some(options))
        .await;
    let Err(problem) = engine::unless_already(stopped, &[304, 404], attempt.key, "stop") else {
        return Ok(());
    };
    tracing::warn!(key = %attempt.key, error = %problem, "stopping the container failed; killing it");
    let kill = KillContainerOptions {
        signal: "SIGKILL".to_owned(),
    };
    let killed = attempt
        .docker
        .kill_container(attempt.name, Some(kill))
        .await;
    // 409: it is not running any more.
    engine::unless_already(killed, &[404, 409], attempt.key, "kill the container")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::ContainerState;
    use serde_json::json;

    fn ended(status: ContainerStateStatusEnum, code: i64, oom: bool) -> ContainerInspectResponse {
        ContainerInspectResponse {
            state: Some(ContainerState {
                status: Some(status),
                exit_code: Some(code),
                oom_killed: Some(oom),
                ..ContainerState::default()
            }),
            ..ContainerInspectResponse::default()
        }
    }

    #[test]
    fn cout_lines_cut_anywhere_are_read_whole() {
        let mut lines = CoutLines::default();
        for chunk in [
            "[COUT] a",
            " = 1\nnoise\n[CO",
            "UT] b = x\n[COUT] a = 2\n[COUT] c = ",
            "true",
        ] {
            lines.feed(chunk.as_bytes());
        }
        assert_eq!(
            Value::Object(lines.finish()),
            json!({"a": 2, "b": "x", "c": true})
        );
        let mut endless = CoutLines::default();
        endless.feed(b"[COUT] big = ");
        endless.feed(&vec![b'x'; MAX_OUTPUT_FILE as usize]);
        endless.feed(b"\n[COUT] after = 1\n[COUT] last = ");
        assert_eq!(endless.partial, b"[COUT] last = ");
        endless.feed(&vec![b'y'; MAX_OUTPUT_FILE as usize]);
        assert!(endless.partial.is_empty());
        assert_eq!(Value::Object(endless.finish()), json!({"after": 1}));
    }

    #[test]
    fn endings() {
        use ContainerStateStatusEnum::{CREATED, EXITED};
        let ok = ended(EXITED, 0, false);
        assert_eq!(ending(&ok, None, None, "tail").0, Ending::Succeeded);
        assert_eq!(
            ending(&ok, None, None, "tail").1,
            "the container exited with code 0"
        );
        let (e, m) = ending(&ok, None, Some("$BATON_OUTPUT is bad"), "");
        assert_eq!(
            (e, m.as_str()),
            (
                Ending::Failed,
                "the container exited with code 0, but $BATON_OUTPUT is bad"
            )
        );
        let (e, m) = ending(
            &ended(EXITED, 3, false),
            None,
            Some("$BATON_OUTPUT is bad"),
            "",
        );
        assert_eq!(
            (e, m.as_str()),
            (Ending::Failed, "the container exited with code 3")
        );
        let (e, m) = ending(&ended(EXITED, 3, false), None, None, "boom\nbang");
        assert_eq!(e, Ending::Failed);
        assert_eq!(
            m,
            "the container exited with code 3; the end of its log:\nboom\nbang"
        );
        let (e, m) = ending(&ended(EXITED, 137, true), None, None, "");
        assert_eq!(e, Ending::Failed);
        assert!(m.contains("more memory than its limit"), "{m}");
        let (e, m) = ending(&ended(EXITED, 0, false), Some(CANCELLED), None, "x");
        assert_eq!(
            (e, m.as_str()),
            (
                Ending::Cancelled,
                "cancelled: the container exited with code 0; the end of its log:\nx"
            )
        );
        let (e, m) = ending(
            &ended(EXITED, 137, false),
            Some("timed out after 2s"),
            None,
            "",
        );
        assert_eq!(
            (e, m.as_str()),
            (
                Ending::Failed,
                "timed out after 2s: the container exited with code 137"
            )
        );
        let (e, m) = ending(&ended(CREATED, 0, false), None, None, "");
        assert_eq!(
            (e, m.as_str()),
            (Ending::Failed, "the container never started")
        );
    }

    #[test]
    fn the_output_file_comes_out_of_its_tar() {
        let tar_of = |data: &[u8], kind: tar::EntryType| {
            let mut header = tar::Header::new_ustar();
            header.set_path("output.json").unwrap();
            header.set_entry_type(kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            let mut builder = tar::Builder::new(Vec::new());
            builder.append(&header, data).unwrap();
            builder.into_inner().unwrap()
        };
        assert_eq!(
            file_in_tar(&tar_of(b"{\"a\":1}", tar::EntryType::Regular)).unwrap(),
            b"{\"a\":1}"
        );
        assert!(
            file_in_tar(&tar_of(b"", tar::EntryType::Directory))
                .unwrap_err()
                .contains("not a regular file")
        );
        assert!(file_in_tar(&[]).unwrap_err().contains("empty archive"));
        let largest = vec![b' '; MAX_OUTPUT_FILE as usize];
        assert_eq!(
            file_in_tar(&tar_of(&largest, tar::EntryType::Regular))
                .unwrap()
                .len() as u64,
            MAX_OUTPUT_FILE
        );
        let big = vec![b' '; MAX_OUTPUT_FILE as usize + 1];
        assert!(
            file_in_tar(&tar_of(&big, tar::EntryType::Regular))
                .unwrap_err()
                .contains("larger than 4 MiB")
        );
    }
}
