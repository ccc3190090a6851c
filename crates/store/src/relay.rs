//! Relay messages: deliveries on their way to the `[relays.*]` targets, kept in the store so
//! none is lost to a restart.
//!
//! The matcher writes one message per delivery and target ([`Change::RelayEnqueue`]) in
//! the same commit as the delivery's matched mark, so a delivery that was acknowledged is
//! a delivery that will be relayed, and a restart never relays it again from the start.
//! A message is identified by its key (`msg_…`), which is also the `Idempotency-Key` and
//! `webhook-id` receivers see on every try.
//!
//! The relay's dispatcher claims due messages per target ([`Store::claim_relays`]), or gets
//! them already leased from the matcher ([`NewRelayMessage::lease_until`]), sends them, and
//! records each try with [`Change::RelayAttempt`], which also says what comes next: the
//! message is delivered, tried again at a time, or dead. A message the dispatcher took but
//! could not send (its target's circuit opened, the process is stopping) goes back with
//! [`Change::RelayPostpone`], which is not a try.
//!
//! A target that answered 410 Gone is disabled ([`Change::RelayTargetDisabled`]): its
//! pending messages become dead, and so does every later one, until a replay of any of its
//! messages enables it again ([`Store::replay_relays`]).
//!
//! [`Change::RelayEnqueue`]: crate::Change::RelayEnqueue
//! [`Change::RelayAttempt`]: crate::Change::RelayAttempt
//! [`Change::RelayPostpone`]: crate::Change::RelayPostpone
//! [`Change::RelayTargetDisabled`]: crate::Change::RelayTargetDisabled
//! [`Store::claim_relays`]: crate::Store::claim_relays
//! [`Store::replay_relays`]: crate::Store::replay_relays

use async_trait::async_trait;
use serde::Serialize;

use crate::{Millis, Result};

/// A message to write: one delivery bound for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRelayMessage {
    /// The message's key (`msg_` and 32 hex digits): unique, stable across tries.
    pub key: String,
    /// The `[relays.*]` name.
    pub relay: String,
    /// The target's name in the relay.
    pub target: String,
    /// The delivery's public id.
    pub delivery: i64,
    /// When it was made.
    pub created_at: Millis,
    /// When its first try is due.
    pub due_at: Millis,
    /// Leased to the writer until then: the matcher hands it to the dispatcher in memory
    /// after the commit, so no claim is needed. `None`: left for [`crate::Store::claim_relays`].
    pub lease_until: Option<Millis>,
}

/// Where a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayStatus {
    /// Waiting for its next try (or in flight).
    Pending,
    /// A try got a 2xx answer.
    Delivered,
    /// Its last try failed, or its target was disabled: it is not tried again unless
    /// replayed.
    Dead,
}

impl RelayStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => Self::Pending,
            "delivered" => Self::Delivered,
            "dead" => Self::Dead,
            _ => return None,
        })
    }
}

/// How one try ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayOutcome {
    /// A 2xx answer.
    Delivered,
    /// 410 Gone: the receiver says it will never take messages again.
    Gone,
    /// 429 Too Many Requests.
    RateLimited,
    /// Any other answer (a 3xx is not followed).
    Failed,
    /// No full answer within the target's `timeout`.
    Timeout,
    /// The connection could not be made, or broke before an answer.
    Connection,
    /// The target's address was refused before connecting (a private address without
    /// `allow_private`, a name that does not resolve), or the body could not be made (the
    /// `transform` failed).
    Refused,
}

impl RelayOutcome {
    /// Every outcome, for metrics that list each.
    pub const ALL: [Self; 7] = [
        Self::Delivered,
        Self::Gone,
        Self::RateLimited,
        Self::Failed,
        Self::Timeout,
        Self::Connection,
        Self::Refused,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Gone => "gone",
            Self::RateLimited => "rate_limited",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::Refused => "refused",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == text)
    }
}

/// What follows a try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayNext {
    /// The message is delivered.
    Delivered,
    /// Tried again at `due_at`; `tries` failed tries in this round so far.
    Retry {
        /// When.
        due_at: Millis,
        /// Failed tries since the message was made or last replayed.
        tries: u32,
    },
    /// No more tries: the message is dead, for this reason (people read it).
    Dead {
        /// Why.
        reason: String,
    },
}

/// One try of a message, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayAttemptRecord {
    /// The message's key.
    pub key: String,
    /// The try's number among all of the message's tries, replays included (1-based).
    pub attempt: u32,
    /// When it started.
    pub at: Millis,
    /// How long it took, in milliseconds.
    pub duration_ms: u32,
    /// How it ended.
    pub outcome: RelayOutcome,
    /// The answer's status code, if one came.
    pub code: Option<u16>,
    /// The start of the answer's body (at most [`ANSWER_SLICE_BYTES`]), if one came.
    pub body: Option<String>,
    /// What went wrong, for people (the timeout, the connection error).
    pub error: Option<String>,
}

/// How much of an answer's body is kept with its try.
pub const ANSWER_SLICE_BYTES: usize = 1024;

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayMessageRecord {
    /// Its key.
    pub key: String,
    /// The relay.
    pub relay: String,
    /// The target.
    pub target: String,
    /// The delivery's public id.
    pub delivery: i64,
    /// Where it is.
    pub status: RelayStatus,
    /// Failed tries since it was made or last replayed.
    pub tries: u32,
    /// Every try recorded, replays included.
    pub attempts: u32,
    /// When it was made.
    pub created_at: Millis,
    /// When its next try is due (pending messages).
    pub due_at: Option<Millis>,
    /// When it was delivered or died.
    pub finished_at: Option<Millis>,
    /// The last try's outcome, if any.
    pub last_outcome: Option<RelayOutcome>,
    /// The last try's status code, if any.
    pub last_code: Option<u16>,
    /// Why it died, or the last try's error.
    pub message: Option<String>,
}

/// A message claimed for sending, with what its request needs from the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRelay {
    /// Its key.
    pub key: String,
    /// The relay.
    pub relay: String,
    /// The target.
    pub target: String,
    /// Failed tries since it was made or last replayed.
    pub tries: u32,
    /// Every try recorded so far; the next is number `attempts + 1`.
    pub attempts: u32,
    /// When its try is due.
    pub due_at: Millis,
    /// The delivery's public id.
    pub delivery: i64,
    /// The source the delivery came to.
    pub source: String,
    /// The sender's delivery id.
    pub delivery_id: String,
    /// The event type.
    pub event: String,
    /// The delivery's stored headers (JSON object text, secrets removed).
    pub headers: String,
    /// The delivery's body as received.
    pub body: String,
}

/// Which messages to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayMessageFilter {
    /// Only this relay.
    pub relay: Option<String>,
    /// Only this target (of `relay`).
    pub target: Option<String>,
    /// Only this status.
    pub status: Option<RelayStatus>,
    /// Only messages made before this key (keys grow with time): the next page.
    pub before: Option<String>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// Which messages a replay sends again: one message, or every message of a relay (and
/// target) that matches `status` and was made in `[since, until)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayReplay {
    /// One message, by key, whatever its status (unless pending).
    Message(String),
    /// Many.
    Matching {
        /// The relay.
        relay: String,
        /// Only this target.
        target: Option<String>,
        /// Only messages in this status (`Dead` for "every dead message"); `None`: delivered
        /// and dead alike.
        status: Option<RelayStatus>,
        /// Made at or after.
        since: Option<Millis>,
        /// Made before.
        until: Option<Millis>,
    },
}

/// What the store knows of one target: how many messages are where, and whether a 410
/// disabled it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayTargetStats {
    /// The relay.
    pub relay: String,
    /// The target.
    pub target: String,
    /// Messages waiting (or in flight).
    pub pending: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Dead messages.
    pub dead: u64,
    /// When the oldest pending message was made.
    pub oldest_pending_at: Option<Millis>,
    /// When a 410 disabled the target, if it is disabled.
    pub disabled_at: Option<Millis>,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
}

/// The queries of the relay queue. Its writes are [`Change`](crate::Change)s, committed with
/// [`Store::commit`](crate::Store::commit); [`Store::relays`](crate::Store::relays) gives a
/// store's queue.
#[async_trait]
pub trait RelayStore: Send + Sync {
    /// Leases up to `limit` pending, unleased (or lease-expired) messages of one target
    /// until `lease_until`, with what their requests need from their deliveries (see
    /// the module docs). Due ones (`due_at <= now`), oldest due first; with `ordered`, the
    /// oldest pending by key whether due or not (the caller waits for each one's time). Keys
    /// are made as deliveries are matched, in their order, so a target's messages go out in
    /// their deliveries' order. On a shared store ([`Store::shared`](crate::Store::shared))
    /// an ordered claim starts at the target's oldest pending message or claims nothing, so
    /// while one process holds it no other sends the ones after it; each claim there has a
    /// token, and a try recorded after another process took the message over is refused
    /// ([`StoreError::Fenced`](crate::StoreError::Fenced)).
    async fn claim_relays(
        &self,
        relay: &str,
        target: &str,
        now: Millis,
        limit: u32,
        lease_until: Millis,
        ordered: bool,
    ) -> Result<Vec<DueRelay>>;

    /// The earliest due time of a target's pending, unleased (or lease-expired) message. On a
    /// shared store a leased message counts too, due when its lease ends (when another
    /// process may take it over), and an ordered target's is its oldest pending message's.
    async fn next_relay_due(
        &self,
        relay: &str,
        target: &str,
        now: Millis,
    ) -> Result<Option<Millis>>;

    /// Clears every relay message's lease: used by a dispatcher that owns the store alone,
    /// at start. A shared store clears nothing: its leases may be other processes', and end
    /// by expiry.
    async fn release_relay_leases(&self) -> Result<()>;

    /// Every target that has messages or was disabled, with its counts, by relay then
    /// target.
    async fn relay_targets(&self) -> Result<Vec<RelayTargetStats>>;

    /// When each target's oldest pending message was made: `(relay, target, created_at)`.
    /// Cheap (pending messages only), for the metrics.
    async fn relay_oldest_pending(&self) -> Result<Vec<(String, String, Millis)>>;

    /// Relay messages, newest first.
    async fn list_relay_messages(
        &self,
        filter: &RelayMessageFilter,
    ) -> Result<Vec<RelayMessageRecord>>;

    /// One relay message by key, with its tries, oldest first.
    async fn load_relay_message(
        &self,
        key: &str,
    ) -> Result<Option<(RelayMessageRecord, Vec<RelayAttemptRecord>)>>;

    /// Makes the selected messages pending again, due at `now`, their tries in this round
    /// back to 0 (their past tries stay recorded), and enables every target whose message
    /// it selected. Pending messages are left as they are. Returns how many it selected.
    async fn replay_relays(&self, replay: &RelayReplay, now: Millis) -> Result<u64>;
}

/// The columns of a message both backends read, in the order their row readers take them.
pub(crate) const MESSAGE_COLUMNS: &str = "key, relay, target, delivery, status, tries, \
     attempts, created_at, due_at, finished_at, last_outcome, last_code, message";

/// What a failed try says for people: its error, else its status code, else its outcome.
pub(crate) fn try_problem(a: &RelayAttemptRecord) -> String {
    match (&a.error, a.code) {
        (Some(error), _) => error.clone(),
        (None, Some(code)) => format!("HTTP {code}"),
        (None, None) => a.outcome.as_str().to_owned(),
    }
}

/// The start of an answer's body, at most [`ANSWER_SLICE_BYTES`] long, cut at a character
/// boundary.
pub(crate) fn answer_slice(body: &str) -> &str {
    let mut end = body.len().min(ANSWER_SLICE_BYTES);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    &body[..end]
}

/// The stats of one target in `stats`, added with nothing counted when it is new.
pub(crate) fn entry(
    stats: &mut std::collections::BTreeMap<(String, String), RelayTargetStats>,
    relay: String,
    target: String,
) -> &mut RelayTargetStats {
    stats
        .entry((relay.clone(), target.clone()))
        .or_insert_with(|| RelayTargetStats {
            relay,
            target,
            pending: 0,
            delivered: 0,
            dead: 0,
            oldest_pending_at: None,
            disabled_at: None,
            disabled_reason: None,
        })
}
