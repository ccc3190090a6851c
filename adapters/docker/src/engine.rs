//! The Docker engine as the adapter sees it: one connection, made at first use (with the
//! API version both sides speak), the engine's answers turned into [`AdapterError`]s, and
//! the reads every path shares (a container by name, its log).

use std::time::Duration;

use baton_core::{AdapterError, AttemptKey};
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as EngineError;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::LogsOptions;
use futures::StreamExt;

use crate::config::Host;

/// The label holding the attempt key on every container baton makes.
pub const ATTEMPT_LABEL: &str = "baton.attempt";
/// The label holding the run id.
pub const RUN_LABEL: &str = "baton.run";
/// The label holding the stage id.
pub const STAGE_LABEL: &str = "baton.stage";
/// The label holding when the attempt's own timeout passes (Unix seconds).
pub const DEADLINE_LABEL: &str = "baton.deadline";

/// The bound on one request to the engine. A stop waits for the grace period inside its
/// request, so this is longer than the longest `stop_grace`.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(50);

/// Opens the connection to `host` and agrees on the API version (the engine here may be
/// older than the client's default version, or newer than its oldest).
pub(crate) async fn connect(host: &Host) -> Result<Docker, AdapterError> {
    let seconds = REQUEST_TIMEOUT.as_secs();
    let version = bollard::API_DEFAULT_VERSION;
    let docker = match host {
        Host::Unix(path) => Docker::connect_with_unix(&path.to_string_lossy(), seconds, version),
        Host::Tcp(address) => Docker::connect_with_http(address, seconds, version),
    }
    .map_err(|e| unreachable_engine(host, &e))?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| unreachable_engine(host, &e))
}

fn unreachable_engine(host: &Host, error: &EngineError) -> AdapterError {
    AdapterError::Transient(format!(
        "cannot reach the Docker engine at {host}: {error} (is it running? `host` in the adapter's block, or DOCKER_HOST, names it)"
    ))
}

/// The engine's status code for a refused request, if it answered one.
pub(crate) fn status_of(error: &EngineError) -> Option<u16> {
    match error {
        EngineError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// An engine error while doing `what` for `key`, as the engine should treat it: a refusal
/// of the request itself (400, 404, 409) cannot be mended by trying again; anything else
/// (5xx, a lost connection, a timeout) may pass.
pub(crate) fn failed(key: &AttemptKey, what: &str, error: &EngineError) -> AdapterError {
    let message = match error {
        EngineError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    };
    let message = format!("docker {key}: cannot {what}: {message}");
    match status_of(error) {
        Some(404) => AdapterError::NotFound(message),
        Some(400 | 409) => AdapterError::Invalid(message),
        Some(401 | 403) => AdapterError::Auth(message),
        _ => AdapterError::Transient(message),
    }
}

/// `Ok` when the request succeeded or the engine answered one of the statuses `fine`
/// (the container is already as wanted: stopped, gone); else the error of doing `what`.
pub(crate) fn unless_already(
    result: Result<(), EngineError>,
    fine: &[u16],
    key: &AttemptKey,
    what: &str,
) -> Result<(), AdapterError> {
    match result {
        Err(e) if !status_of(&e).is_some_and(|status| fine.contains(&status)) => {
            Err(failed(key, what, &e))
        }
        _ => Ok(()),
    }
}

/// The container named `name`, or `None` when the engine has none.
pub(crate) async fn inspect(
    docker: &Docker,
    key: &AttemptKey,
    name: &str,
) -> Result<Option<ContainerInspectResponse>, AdapterError> {
    match docker.inspect_container(name, None).await {
        Ok(found) => Ok(Some(found)),
        Err(e) if status_of(&e) == Some(404) => Ok(None),
        Err(e) => Err(failed(key, "inspect the container", &e)),
    }
}

/// Which of the container's streams a log read takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Streams {
    /// Standard output only (where `[COUT]` lines are).
    Stdout,
    /// Both, interleaved as written.
    Both,
}

/// Reads the container's log, `tail` lines from its end (`all` for the whole), handing each
/// chunk's bytes to `each` as they come, so a long log is never held whole.
pub(crate) async fn read_log(
    docker: &Docker,
    key: &AttemptKey,
    name: &str,
    streams: Streams,
    tail: &str,
    mut each: impl FnMut(&[u8]),
) -> Result<(), AdapterError> {
    let options = LogsOptions {
        stdout: true,
        stderr: streams == Streams::Both,
        tail: tail.to_owned(),
        ..LogsOptions::default()
    };
    let mut log = docker.logs(name, Some(options));
    while let Some(chunk) = log.next().await {
        match chunk {
            Ok(LogOutput::StdOut { message } | LogOutput::StdErr { message }) => each(&message),
            Ok(_) => {}
            Err(e) => return Err(failed(key, "read the container's log", &e)),
        }
    }
    Ok(())
}

/// The last `max_lines` lines of the container's log, cut to at most `max_bytes` at a line
/// start.
pub(crate) async fn log_tail(
    docker: &Docker,
    key: &AttemptKey,
    name: &str,
    max_lines: usize,
    max_bytes: usize,
) -> Result<String, AdapterError> {
    let mut bytes = Vec::new();
    read_log(
        docker,
        key,
        name,
        Streams::Both,
        &max_lines.to_string(),
        |chunk| bytes.extend_from_slice(chunk),
    )
    .await?;
    Ok(cut_tail(&bytes, max_bytes))
}

/// The end of `bytes`, at most `max_bytes`, starting at a whole line when cut, without the
/// final newline.
pub(crate) fn cut_tail(bytes: &[u8], max_bytes: usize) -> String {
    let from = bytes.len().saturating_sub(max_bytes);
    let mut kept = &bytes[from..];
    if from > 0
        && let Some(newline) = kept.iter().position(|b| *b == b'\n')
    {
        kept = &kept[newline + 1..];
    }
    String::from_utf8_lossy(kept)
        .trim_end_matches('\n')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_are_cut_at_a_line_start() {
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(cut_tail(text.as_bytes(), 4096), text.trim_end());
        assert_eq!(cut_tail(text.as_bytes(), 20), "line 99\nline 100");
        assert_eq!(cut_tail(b"", 10), "");
        assert_eq!(cut_tail(b"no newline at all", 5), "t all");
    }

    #[test]
    fn refusals_are_told_from_passing_trouble() {
        let key = AttemptKey::new("r", "s", 1);
        let refused = |status_code| EngineError::DockerResponseServerError {
            status_code,
            message: "no such thing".into(),
        };
        for (status, variant) in [
            (404, "NotFound"),
            (409, "Invalid"),
            (400, "Invalid"),
            (403, "Auth"),
            (500, "Transient"),
        ] {
            let error = failed(&key, "do it", &refused(status));
            let (name, message) = baton_adapter_kit::harness::error_parts(&error);
            assert_eq!(name, variant, "{status}");
            assert_eq!(message, "docker r/s/1: cannot do it: no such thing");
        }
        assert!(failed(&key, "x", &EngineError::RequestTimeoutError).is_transient());
        assert_eq!(unless_already(Ok(()), &[], &key, "x"), Ok(()));
        assert_eq!(
            unless_already(Err(refused(404)), &[304, 404], &key, "x"),
            Ok(())
        );
        let error = unless_already(Err(refused(409)), &[304, 404], &key, "stop").unwrap_err();
        assert_eq!(
            error.to_string(),
            "docker r/s/1: cannot stop: no such thing"
        );
        assert_eq!(status_of(&EngineError::RequestTimeoutError), None);
    }
}
