//! A build's event stream (`GET /api/v1/builds/{id}/events`): a small server-sent events
//! parser, what baton keeps of the events (the last status, a bounded tail of the log,
//! error messages, the task's exit status), and the followers, one task per followed
//! build, that read the stream, resume it with `Last-Event-ID` after a cut, and wake the
//! engine the moment a `status` event says the build ended.
//!
//! The stream (`atc/api/buildserver/eventhandler.go`): messages named `event` with an
//! `id: n` and data `{"event": <type>, "version": "<major>.<minor>", "data": {…}}`, then one
//! named `end`. `Last-Event-ID: n` resumes with event `n + 1`. An event is read only when
//! its major version is the one baton knows (`EventVersion.IsCompatibleWith`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use baton_core::{AdapterError, AttemptKey, Waker};
use serde::Deserialize;
use serde_json::Value;

use crate::client::Client;
use crate::model;

/// How many lines of a build's log baton keeps.
pub(crate) const TAIL_LINES: usize = 200;
/// How many bytes of a build's log baton keeps.
pub(crate) const TAIL_BYTES: usize = 65_536;
/// The longest SSE line read; a longer one is dropped.
const MAX_LINE: usize = 4 * 1_048_576;
/// How many error messages of a build baton keeps.
const MAX_ERRORS: usize = 10;
/// How many builds are followed at once; past it, builds are only polled.
pub(crate) const MAX_STREAMS: usize = 2_000;
/// How many finished builds' tails are kept for `logs` and `outputs`.
const FINISHED_KEPT: usize = 256;
/// The longest a follower follows one build.
const MAX_FOLLOW: Duration = Duration::from_secs(86_400);
/// The first and the longest wait before a cut stream is opened again.
const RECONNECT_FIRST: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// After this many failed openings in a row, the engine is woken so that its polls go
/// back to their normal pace while the stream is away.
const FAILURES_BEFORE_WAKE: u32 = 2;

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) id: Option<String>,
    pub(crate) name: String,
    pub(crate) data: String,
}

/// Reads server-sent events from chunks of bytes as they come (the WHATWG
/// `text/event-stream` rules: `field: value` lines, `:` comments, a blank line ends a
/// message, `\r\n` or `\n` line ends).
#[derive(Debug, Default)]
pub(crate) struct Parser {
    line: Vec<u8>,
    id: Option<String>,
    name: Option<String>,
    data: Option<String>,
    dropping: bool,
}

impl Parser {
    /// The messages `bytes` completes.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Vec<Message> {
        let mut messages = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                if self.line.len() < MAX_LINE {
                    self.line.push(b);
                } else {
                    self.dropping = true;
                }
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if std::mem::take(&mut self.dropping) {
                continue;
            }
            if let Some(message) = self.line_done(&line) {
                messages.push(message);
            }
        }
        messages
    }

    fn line_done(&mut self, line: &[u8]) -> Option<Message> {
        if line.is_empty() {
            let (id, name, data) = (self.id.take(), self.name.take(), self.data.take());
            if name.is_none() && data.is_none() {
                return None;
            }
            return Some(Message {
                id,
                name: name.unwrap_or_else(|| "message".to_owned()),
                data: data.unwrap_or_default(),
            });
        }
        if line[0] == b':' {
            return None;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text.as_ref(), ""),
        };
        match field {
            "event" => self.name = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

/// The last lines of a log, bounded in lines and bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tail {
    text: String,
}

impl Tail {
    /// Appends `payload` (a log event's text, not always whole lines), then drops the
    /// oldest lines past [`TAIL_LINES`] or [`TAIL_BYTES`].
    pub(crate) fn push(&mut self, payload: &str) {
        self.text.push_str(payload);
        while self.text.len() > TAIL_BYTES || self.text.lines().count() > TAIL_LINES {
            match self.text.find('\n') {
                Some(end) if end + 1 < self.text.len() => {
                    self.text.drain(..=end);
                }
                _ => {
                    let mut cut = self.text.len().saturating_sub(TAIL_BYTES);
                    while !self.text.is_char_boundary(cut) {
                        cut += 1;
                    }
                    self.text.drain(..cut);
                    break;
                }
            }
        }
    }

    /// The last `n` lines.
    pub(crate) fn last_lines(&self, n: usize) -> String {
        let lines: Vec<&str> = self.text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The whole tail.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }
}

/// The envelope of an `event` message.
#[derive(Debug, Deserialize)]
struct Envelope {
    event: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    data: Value,
}

/// The major version baton reads of each event type it uses (`atc/event/events.go`).
fn known_major(event: &str) -> Option<&'static str> {
    match event {
        "status" => Some("1"),
        "log" => Some("5"),
        "error" | "finish-task" => Some("4"),
        _ => None,
    }
}

/// What baton keeps of a build's events.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventLog {
    /// The id of the last event read, for `Last-Event-ID`.
    pub(crate) last_id: Option<u64>,
    /// The last status an event gave.
    pub(crate) status: Option<String>,
    /// The stream's `end` was read: every event is in.
    pub(crate) ended: bool,
    /// The log's tail (stdout and stderr of every step).
    pub(crate) tail: Tail,
    /// The `error` events' messages.
    pub(crate) errors: Vec<String>,
    /// The last task's exit status.
    pub(crate) exit_status: Option<i64>,
}

impl EventLog {
    /// Takes in one message; returns the status it gave when that status is an end.
    pub(crate) fn apply(&mut self, message: &Message) -> Option<String> {
        if message.name == "end" {
            self.ended = true;
            return None;
        }
        if message.name != "event" {
            return None;
        }
        if let Some(id) = message
            .id
            .as_deref()
            .and_then(|i| i.trim().parse::<u64>().ok())
        {
            // A resumed stream never gives an event twice; should a server do it, it is
            // read once.
            if self.last_id.is_some_and(|last| id <= last) {
                return None;
            }
            self.last_id = Some(id);
        }
        let envelope: Envelope = serde_json::from_str(&message.data).ok()?;
        let major = envelope.version.split('.').next().unwrap_or_default();
        if known_major(&envelope.event) != Some(major) {
            return None;
        }
        let data = &envelope.data;
        match envelope.event.as_str() {
            "status" => {
                let status = data.get("status")?.as_str()?.to_owned();
                self.status = Some(status.clone());
                model::state(&status).is_terminal().then_some(status)
            }
            "log" => {
                self.tail.push(data.get("payload")?.as_str()?);
                None
            }
            "error" => {
                let text = data.get("message")?.as_str()?;
                self.tail.push(&format!("error: {text}\n"));
                if self.errors.len() < MAX_ERRORS {
                    self.errors.push(text.to_owned());
                }
                None
            }
            "finish-task" => {
                self.exit_status = data.get("exit_status").and_then(Value::as_i64);
                None
            }
            _ => None,
        }
    }

    /// The status the events ended with, if they did.
    pub(crate) fn final_status(&self) -> Option<&str> {
        self.status
            .as_deref()
            .filter(|s| model::state(s).is_terminal())
    }
}

/// Whether a follower's stream is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Opening it for the first time.
    Opening,
    /// Reading it.
    Streaming,
    /// It failed; opening it again after a wait.
    Retrying,
    /// The follower stopped (the stream ended, or it gave up).
    Stopped,
}

#[derive(Debug)]
struct FollowState {
    log: EventLog,
    health: Health,
}

/// One followed build.
#[derive(Debug)]
pub(crate) struct Follow {
    key: AttemptKey,
    state: Mutex<FollowState>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Follow {
    /// The status the stream ended with, if it did.
    pub(crate) fn final_status(&self) -> Option<String> {
        lock(&self.state).log.final_status().map(str::to_owned)
    }

    /// Whether the stream is up (or being opened for the first time), so that polls may
    /// slow down.
    pub(crate) fn healthy(&self) -> bool {
        matches!(
            lock(&self.state).health,
            Health::Opening | Health::Streaming
        )
    }

    /// What the events gave so far.
    pub(crate) fn log(&self) -> EventLog {
        lock(&self.state).log.clone()
    }

    fn set_health(&self, health: Health) {
        lock(&self.state).health = health;
    }
}

/// The followers of this adapter instance, and the finished builds' logs, both bounded.
#[derive(Debug)]
pub(crate) struct Streams {
    active: Mutex<HashMap<u64, Arc<Follow>>>,
    finished: Mutex<VecDeque<(u64, EventLog)>>,
    waker: Arc<Mutex<Option<Waker>>>,
    /// How many builds are followed at most.
    cap: usize,
}

impl Default for Streams {
    fn default() -> Self {
        Self::with_cap(MAX_STREAMS)
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        for follow in lock(&self.active).values() {
            if let Some(task) = lock(&follow.task).take() {
                task.abort();
            }
        }
    }
}

impl Streams {
    /// Followers of at most `cap` builds at once.
    fn with_cap(cap: usize) -> Self {
        Self {
            active: Mutex::default(),
            finished: Mutex::default(),
            waker: Arc::default(),
            cap,
        }
    }

    /// Keeps the engine's waker for the followers.
    pub(crate) fn attach(&self, waker: Waker) {
        *lock(&self.waker) = Some(waker);
    }

    /// The follower of build `id`, started for `key` if there is none; `None` when
    /// [`MAX_STREAMS`] builds are followed already.
    pub(crate) fn ensure(
        &self,
        client: &Arc<Client>,
        id: u64,
        key: &AttemptKey,
    ) -> Option<Arc<Follow>> {
        let mut active = lock(&self.active);
        if let Some(follow) = active.get(&id) {
            return Some(follow.clone());
        }
        if active.len() >= self.cap {
            // Builds whose streams ended but that no poll has seen end since (a stage
            // cancelled and never polled again) make room, their logs kept.
            let stopped: Vec<u64> = active
                .iter()
                .filter(|(_, f)| lock(&f.state).health == Health::Stopped)
                .map(|(id, _)| *id)
                .collect();
            for stopped in stopped {
                if let Some(follow) = active.remove(&stopped) {
                    self.keep(stopped, follow.log());
                }
            }
            if active.len() >= self.cap {
                return None;
            }
        }
        let follow = Arc::new(Follow {
            key: key.clone(),
            state: Mutex::new(FollowState {
                log: EventLog::default(),
                health: Health::Opening,
            }),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(run(client.clone(), id, follow.clone(), self.waker.clone()));
        *lock(&follow.task) = Some(task);
        active.insert(id, follow.clone());
        Some(follow)
    }

    /// The follower of build `id`, if any.
    pub(crate) fn get(&self, id: u64) -> Option<Arc<Follow>> {
        lock(&self.active).get(&id).cloned()
    }

    /// Stops following build `id` (it ended), keeping what its events gave.
    pub(crate) fn finish(&self, id: u64) {
        let Some(follow) = lock(&self.active).remove(&id) else {
            return;
        };
        if let Some(task) = lock(&follow.task).take() {
            task.abort();
        }
        self.keep(id, follow.log());
    }

    /// Keeps a finished build's events (read again for `logs`), the oldest dropped first.
    pub(crate) fn keep(&self, id: u64, log: EventLog) {
        let mut finished = lock(&self.finished);
        finished.retain(|(other, _)| *other != id);
        finished.push_back((id, log));
        while finished.len() > FINISHED_KEPT {
            finished.pop_front();
        }
    }

    /// What the events of build `id` gave, from its follower or from a finished one.
    pub(crate) fn log(&self, id: u64) -> Option<EventLog> {
        if let Some(follow) = self.get(id) {
            return Some(follow.log());
        }
        lock(&self.finished)
            .iter()
            .find(|(other, _)| *other == id)
            .map(|(_, log)| log.clone())
    }

    /// How many builds are followed now.
    pub(crate) fn following(&self) -> usize {
        lock(&self.active).len()
    }
}

fn wake(waker: &Mutex<Option<Waker>>, key: &AttemptKey) {
    let waker = lock(waker).clone();
    if let Some(waker) = waker {
        waker.wake(key);
    }
}

/// How one opening of the stream ended.
enum Read {
    /// The `end` came: every event is in.
    End,
    /// The stream broke off (or never opened).
    Cut,
    /// The follower cannot go on (the build is gone, the token refused).
    GiveUp(AdapterError),
}

/// Follows build `id` until its stream's `end`, opening the stream again after a cut
/// with `Last-Event-ID`.
async fn run(client: Arc<Client>, id: u64, follow: Arc<Follow>, waker: Arc<Mutex<Option<Waker>>>) {
    let began = Instant::now();
    let mut failures: u32 = 0;
    loop {
        let after = lock(&follow.state).log.last_id;
        let read = match client.open_events(id, after).await {
            Ok(response) => {
                follow.set_health(Health::Streaming);
                failures = 0;
                read_stream(response, &follow, &waker).await
            }
            Err(e) if e.is_transient() => {
                tracing::debug!(build = id, error = %e, "cannot open a Concourse event stream");
                Read::Cut
            }
            Err(e) => Read::GiveUp(e),
        };
        match read {
            Read::End => {
                follow.set_health(Health::Stopped);
                return;
            }
            Read::GiveUp(e) => {
                tracing::info!(build = id, error = %e, "stopped following a Concourse build's events; polling goes on");
                follow.set_health(Health::Stopped);
                wake(&waker, &follow.key);
                return;
            }
            Read::Cut => {}
        }
        failures += 1;
        follow.set_health(Health::Retrying);
        if failures == FAILURES_BEFORE_WAKE {
            // The stream stays away: polls go back to their normal pace.
            wake(&waker, &follow.key);
        }
        if began.elapsed() > MAX_FOLLOW {
            follow.set_health(Health::Stopped);
            return;
        }
        let wait = RECONNECT_FIRST
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
            .min(RECONNECT_MAX)
            .mul_f64(rand::random_range(0.5..=1.0));
        tokio::time::sleep(wait).await;
    }
}

/// Reads one opened stream until its `end` or a cut, waking the engine when a status
/// event says the build ended.
async fn read_stream(
    mut response: reqwest::Response,
    follow: &Follow,
    waker: &Mutex<Option<Waker>>,
) -> Read {
    let mut parser = Parser::default();
    loop {
        let Ok(Some(chunk)) = response.chunk().await else {
            return Read::Cut;
        };
        for message in parser.feed(&chunk) {
            let (ended, done) = {
                let mut state = lock(&follow.state);
                let ended = state.log.apply(&message);
                (ended, state.log.ended)
            };
            if ended.is_some() {
                wake(waker, &follow.key);
            }
            if done {
                return Read::End;
            }
        }
    }
}

/// Reads build `id`'s events from the start in one request, until their `end`, a second
/// without news (a build still running) or `request_timeout`, keeping what baton keeps of
/// them.
pub(crate) async fn read_once(client: &Client, id: u64) -> Result<EventLog, AdapterError> {
    let mut log = EventLog::default();
    let mut response = client.open_events(id, None).await?;
    let mut parser = Parser::default();
    let until = Instant::now() + client.request_timeout;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let quiet = Duration::from_secs(1).min(left);
        let chunk = match tokio::time::timeout(quiet, response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) | Err(_) => return Ok(log),
            Ok(Err(e)) => {
                return Err(AdapterError::Transient(format!(
                    "Concourse `{}`: reading build {id}'s events failed: {}",
                    client.instance,
                    baton_core::wire::error_chain(&e)
                )));
            }
        };
        for message in parser.feed(&chunk) {
            log.apply(&message);
            if log.ended {
                return Ok(log);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64, kind: &str, version: &str, data: &str) -> String {
        format!(
            "id: {id}\nevent: event\ndata: {{\"event\":\"{kind}\",\"version\":\"{version}\",\"data\":{data}}}\n\n"
        )
    }

    #[test]
    fn messages_are_read_across_chunks_and_line_ends() {
        let mut p = Parser::default();
        let text = format!(
            ": a comment\r\n{}{}id: 2\nevent: end\n\n",
            event(0, "status", "1.0", r#"{"status":"started","time":1}"#),
            event(1, "log", "5.1", r#"{"payload":"a\nb"}"#)
        );
        let mut messages = Vec::new();
        for chunk in text.as_bytes().chunks(7) {
            messages.extend(p.feed(chunk));
        }
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert_eq!(messages[0].id.as_deref(), Some("0"));
        assert_eq!(messages[0].name, "event");
        assert_eq!(
            messages[2],
            Message {
                id: Some("2".into()),
                name: "end".into(),
                data: String::new()
            }
        );
        let mut nul = Parser::default();
        let read = nul.feed(b"id: 1\0\nevent: end\n\n");
        assert_eq!(
            read[0].id, None,
            "an id with a NUL is ignored, as the spec says"
        );
        let mut two_lines = Parser::default();
        let joined = two_lines.feed(b"data: one\ndata:two\n\n");
        assert_eq!(joined[0].data, "one\ntwo");
        assert_eq!(joined[0].name, "message");
    }

    #[test]
    fn long_lines_are_read_up_to_the_cap_and_longer_ones_dropped_alone() {
        let mut p = Parser::default();
        let big = "x".repeat(2 * 1_048_576);
        let read = p.feed(format!("data: {big}\n\n").as_bytes());
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].data.len(), big.len());
        let longest = "z".repeat(MAX_LINE - "data: ".len());
        let read = p.feed(format!("data: {longest}\n\n").as_bytes());
        assert_eq!(
            read[0].data.len(),
            longest.len(),
            "a line of MAX_LINE bytes is read"
        );
        let huge = "y".repeat(MAX_LINE + 1 - "data: ".len());
        let read = p.feed(format!("data: {huge}\n\nid: 3\nevent: end\n\n").as_bytes());
        assert_eq!(
            read.len(),
            1,
            "the over-long line is dropped, the next message read"
        );
        assert_eq!(read[0].name, "end");
    }

    #[test]
    fn the_log_keeps_statuses_lines_errors_and_skips_repeats_and_other_versions() {
        let mut log = EventLog::default();
        let mut p = Parser::default();
        let text = [
            event(0, "status", "1.0", r#"{"status":"started","time":1}"#),
            event(1, "log", "5.1", r#"{"payload":"one\n"}"#),
            event(1, "log", "5.1", r#"{"payload":"one again\n"}"#),
            event(2, "log", "6.0", r#"{"payload":"from the future\n"}"#),
            event(3, "error", "4.1", r#"{"message":"disk full"}"#),
            event(4, "finish-task", "4.0", r#"{"exit_status":3}"#),
            event(5, "status", "1.0", r#"{"status":"errored","time":2}"#),
        ]
        .concat();
        let ends: Vec<_> = p
            .feed(text.as_bytes())
            .iter()
            .filter_map(|m| log.apply(m))
            .collect();
        assert_eq!(ends, ["errored"]);
        assert_eq!(log.tail.text(), "one\nerror: disk full\n");
        assert_eq!(log.errors, ["disk full"]);
        assert_eq!(log.exit_status, Some(3));
        assert_eq!(log.last_id, Some(5));
        assert_eq!(log.final_status(), Some("errored"));
        assert!(!log.ended);
        log.apply(&Message {
            id: Some("6".into()),
            name: "end".into(),
            data: String::new(),
        });
        assert!(log.ended);
        let mut noisy = EventLog::default();
        for i in 0..(MAX_ERRORS + 2) {
            noisy.apply(&Message {
                id: Some(i.to_string()),
                name: "event".into(),
                data: format!(r#"{{"event":"error","version":"4.1","data":{{"message":"e{i}"}}}}"#),
            });
        }
        assert_eq!(noisy.errors.len(), MAX_ERRORS);
        assert_eq!(
            noisy.tail.last_lines(1),
            format!("error: e{}", MAX_ERRORS + 1)
        );
    }

    #[tokio::test]
    async fn followers_are_bounded_and_stopped_ones_make_room() {
        use crate::auth::Auth;
        use crate::client::{Client, Target};
        // Nothing listens there: the followers only try.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let root =
            reqwest::Url::parse(&format!("http://{}/", closed.local_addr().unwrap())).unwrap();
        drop(closed);
        let client = Arc::new(
            Client::new(
                Target {
                    instance: "ci",
                    root: &root,
                    team: "main",
                    request_timeout: Duration::from_secs(1),
                    retry: baton_core::wire::RetryPolicy::default(),
                },
                Auth::bearer(baton_core::Secret::new("t")),
            )
            .unwrap(),
        );
        let streams = Streams::with_cap(2);
        let key = AttemptKey::new("r", "s", 1);
        let first = streams.ensure(&client, 1, &key).unwrap();
        assert!(Arc::ptr_eq(
            &first,
            &streams.ensure(&client, 1, &key).unwrap()
        ));
        streams.ensure(&client, 2, &key).unwrap();
        assert!(streams.ensure(&client, 3, &key).is_none(), "full");
        assert_eq!(streams.following(), 2);
        lock(&first.state).log.tail.push("kept\n");
        first.set_health(Health::Stopped);
        assert!(
            streams.ensure(&client, 3, &key).is_some(),
            "a stopped one made room"
        );
        assert_eq!(streams.following(), 2);
        assert!(streams.get(1).is_none());
        assert_eq!(streams.log(1).unwrap().tail.text(), "kept\n");
        streams.finish(2);
        assert_eq!(streams.following(), 1);
        assert!(streams.log(2).is_some());
        assert!(streams.log(9).is_none());
        for id in 100..(100 + FINISHED_KEPT as u64 + 1) {
            streams.keep(id, EventLog::default());
        }
        assert!(streams.log(100).is_none(), "the oldest kept log went first");
        assert!(streams.log(101).is_some());
    }

    #[test]
    fn the_tail_is_bounded_in_lines_and_bytes() {
        let mut tail = Tail::default();
        for i in 0..(TAIL_LINES + 50) {
            tail.push(&format!("line {i}\n"));
        }
        assert_eq!(tail.text().lines().count(), TAIL_LINES);
        assert!(tail.text().starts_with("line 50\n"));
        assert_eq!(
            tail.last_lines(2),
            format!("line {}\nline {}", TAIL_LINES + 48, TAIL_LINES + 49)
        );
        let mut wide = Tail::default();
        // One long line of two-byte characters and an odd tail: the cut lands inside a
        // character and moves on to the next.
        wide.push(&format!("{}a", "é".repeat(TAIL_BYTES)));
        assert!(wide.text().len() <= TAIL_BYTES, "{}", wide.text().len());
        assert!(wide.text().ends_with("éa") && wide.text().len() == TAIL_BYTES - 1);
        // Exactly the byte cap, in fewer lines than the line cap: all kept.
        let mut full = Tail::default();
        let line = format!("{}\n", "w".repeat(511));
        for _ in 0..(TAIL_BYTES / 512) {
            full.push(&line);
        }
        assert_eq!(full.text().len(), TAIL_BYTES);
        // One line longer than the cap: its end is kept, not nothing.
        let mut long = Tail::default();
        long.push(&format!("{}\n", "v".repeat(TAIL_BYTES + 10)));
        assert_eq!(long.text().len(), TAIL_BYTES);
        assert!(long.text().ends_with("v\n"));
        let mut partial = Tail::default();
        partial.push("no newline yet");
        partial.push(", now\n");
        assert_eq!(partial.last_lines(5), "no newline yet, now");
    }
}
