//! The relay queue on PostgreSQL (see [`crate::relay`]): `relay_messages`, their tries in
//! `relay_attempts`, and the targets a 410 disabled in `relay_targets`.
//!
//! Replicas share the queue. A claim leases messages with `FOR UPDATE SKIP LOCKED` and gives
//! each a new token from `lease_tokens`; [`Leases`] remembers the tokens of what this process
//! holds, and a try or a give-back of a pending message whose stored token is another
//! claim's is refused with [`StoreError::Fenced`]: its lease ran out and another replica
//! took it, so that replica's record is the one that stands. A late try of a message settled
//! since only adds its row to the history, as on SQLite.
//!
//! An ordered target is claimed only from its head (its oldest pending message by key):
//! while another replica holds the head, nothing of the target is claimed, so two replicas
//! never send one target's messages out of order.
//!
//! Due times count leases as a shared store must: a message leased by anyone is due for a
//! claim when its lease ends, so the work of a replica that died is taken up without a
//! restart of any other.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, ToSql};

use super::queries::page_limit;
use super::{PostgresStore, notify, pg_error};
use crate::relay::{MESSAGE_COLUMNS, answer_slice, entry, try_problem};
use crate::*;

/// The relay messages this process holds, with the tokens of their claims: a try is recorded
/// only while its message's claim is still this process's.
#[derive(Debug, Default)]
pub(super) struct Leases {
    /// Message key → the token of this process's claim on it.
    held: Mutex<HashMap<String, i64>>,
    /// The targets (relay, target) claimed in order, whose due time is their head's.
    ordered: Mutex<HashSet<(String, String)>>,
}

/// What a commit's transaction claimed and settled, recorded in [`Leases`] once it commits.
#[derive(Debug, Default)]
pub(super) struct Staged {
    /// Messages enqueued leased to this process, with their tokens.
    claimed: Vec<(String, i64)>,
    /// Claims the commit ended (a try recorded, a message given back).
    ended: Vec<(String, i64)>,
}

/// Locks `mutex`; a panic elsewhere while it was held leaves a map that is still whole.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Leases {
    /// Records what a committed transaction claimed.
    pub(super) fn committed(&self, staged: Staged) {
        let mut held = lock(&self.held);
        for (key, token) in staged.ended {
            if held.get(&key) == Some(&token) {
                held.remove(&key);
            }
        }
        held.extend(staged.claimed);
    }

    /// The token of this process's claim on `key`, if it has one.
    fn token(&self, key: &str) -> Option<i64> {
        lock(&self.held).get(key).copied()
    }

    /// Forgets the claim `token` on `key`: another process took the message over.
    fn lost(&self, key: &str, token: i64) {
        let mut held = lock(&self.held);
        if held.get(key) == Some(&token) {
            held.remove(key);
        }
    }

    /// Whether `relay`/`target` was last claimed in order.
    fn is_ordered(&self, relay: &str, target: &str) -> bool {
        lock(&self.ordered).contains(&(relay.to_owned(), target.to_owned()))
    }

    /// Notes how `relay`/`target` is claimed.
    fn claimed_as(&self, relay: &str, target: &str, ordered: bool) {
        let mut set = lock(&self.ordered);
        let pair = (relay.to_owned(), target.to_owned());
        if ordered {
            set.insert(pair);
        } else {
            set.remove(&pair);
        }
    }
}

/// Applies a relay change (`RelayEnqueue`, `RelayAttempt`, `RelayPostpone`,
/// `RelayTargetDisabled`) inside a commit's transaction; any other change is left alone.
pub(super) async fn apply(
    tx: &Transaction<'_>,
    change: &Change,
    leases: &Leases,
    staged: &mut Staged,
) -> Result<()> {
    match change {
        Change::RelayEnqueue(m) => enqueue(tx, m, staged).await,
        Change::RelayAttempt { attempt: a, next } => {
            let token = fence(tx, leases, &a.key).await?;
            record(tx, a, next).await?;
            staged.ended.extend(token.map(|t| (a.key.clone(), t)));
            Ok(())
        }
        Change::RelayPostpone { key, due_at } => {
            let token = fence(tx, leases, key).await?;
            let postpone = tx
                .prepare_cached(
                    "UPDATE relay_messages SET due_at = $2, lease_until = NULL
                     WHERE key = $1 AND status = 'pending'",
                )
                .await
                .map_err(pg_error)?;
            let given_back = tx
                .execute(&postpone, &[key, due_at])
                .await
                .map_err(pg_error)?
                > 0;
            if given_back && *due_at <= now_millis() {
                notify(tx, Work::Relays).await?;
            }
            staged.ended.extend(token.map(|t| (key.clone(), t)));
            Ok(())
        }
        Change::RelayTargetDisabled {
            relay,
            target,
            at,
            reason,
        } => {
            let mark = tx
                .prepare_cached(
                    "INSERT INTO relay_targets (relay, target, disabled_at, disabled_reason)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (relay, target) DO NOTHING",
                )
                .await
                .map_err(pg_error)?;
            tx.execute(&mark, &[relay, target, at, reason])
                .await
                .map_err(pg_error)?;
            let kill = tx
                .prepare_cached(
                    "UPDATE relay_messages
                     SET status = 'dead', due_at = NULL, lease_until = NULL, finished_at = $3,
                         message = $4
                     WHERE relay = $1 AND target = $2 AND status = 'pending'
                     RETURNING key",
                )
                .await
                .map_err(pg_error)?;
            // The claims this process held on them end: their worker drops them untried.
            for row in tx
                .query(&kill, &[relay, target, at, reason])
                .await
                .map_err(pg_error)?
            {
                let key: String = col(&row, 0)?;
                if let Some(token) = leases.token(&key) {
                    staged.ended.push((key, token));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// [`Change::RelayEnqueue`]: a message handed over leased gets its claim's token here, as a
/// claim's message would.
async fn enqueue(tx: &Transaction<'_>, m: &NewRelayMessage, staged: &mut Staged) -> Result<()> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO relay_messages
                 (key, relay, target, delivery, status, due_at, lease_until, created_at,
                  lease_token)
             VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7,
                     CASE WHEN $6::BIGINT IS NULL THEN 0 ELSE nextval('lease_tokens') END)
             RETURNING lease_token",
        )
        .await
        .map_err(pg_error)?;
    let row = tx
        .query_one(
            &insert,
            &[
                &m.key,
                &m.relay,
                &m.target,
                &m.delivery,
                &m.due_at,
                &m.lease_until,
                &m.created_at,
            ],
        )
        .await
        .map_err(pg_error)?;
    if m.lease_until.is_some() {
        staged.claimed.push((m.key.clone(), col(&row, 0)?));
    }
    Ok(())
}

/// Refuses the commit when the message `key` is pending under another claim than this
/// process's: its lease ran out and another process took it, whose record is the one that
/// stands. A message never claimed, or settled already (a late try only adds its row to
/// the history), passes. Answers this process's token, if it has one. Locks the row, so a
/// claim cannot slip in before the commit.
async fn fence(tx: &Transaction<'_>, leases: &Leases, key: &str) -> Result<Option<i64>> {
    let ours = leases.token(key);
    let read = tx
        .prepare_cached(
            "SELECT lease_token FROM relay_messages
             WHERE key = $1 AND status = 'pending' FOR UPDATE",
        )
        .await
        .map_err(pg_error)?;
    let stored: Option<i64> = match tx.query_opt(&read, &[&key]).await.map_err(pg_error)? {
        Some(row) => Some(col(&row, 0)?),
        None => None,
    };
    match stored {
        Some(stored) if stored != 0 && Some(stored) != ours => {
            if let Some(ours) = ours {
                leases.lost(key, ours);
            }
            Err(StoreError::Fenced(format!(
                "relay message {key} was claimed by another process after this one's lease ran out"
            )))
        }
        _ => Ok(ours),
    }
}

/// [`Change::RelayAttempt`] once fenced: the try's row, and the message moved on by `next`
/// if it is still pending (a replay or a disabling may have settled it while the try ran;
/// the try is kept either way).
async fn record(tx: &Transaction<'_>, a: &RelayAttemptRecord, next: &RelayNext) -> Result<()> {
    // A number recorded already (a lease that ran out while its try was still going, and
    // the same try made again) keeps the first: history is not rewritten.
    let insert = tx
        .prepare_cached(
            "INSERT INTO relay_attempts (key, attempt, at, duration_ms, outcome, code, body, error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (key, attempt) DO NOTHING",
        )
        .await
        .map_err(pg_error)?;
    let number = int(a.attempt);
    let code = a.code.map(i32::from);
    let duration = i64::from(a.duration_ms);
    let outcome = a.outcome.as_str();
    tx.execute(
        &insert,
        &[
            &a.key,
            &number,
            &a.at,
            &duration,
            &outcome,
            &code,
            &a.body.as_deref().map(answer_slice),
            &a.error,
        ],
    )
    .await
    .map_err(pg_error)?;
    let finished_at = a.at + Millis::from(a.duration_ms);
    // `$1` key, `$2` number, `$3` outcome, `$4` code; the rest is `next`'s.
    let settle = |next: &str| {
        format!(
            "UPDATE relay_messages SET attempts = $2, last_outcome = $3, last_code = $4,
                 lease_until = NULL, {next}
             WHERE key = $1 AND status = 'pending'"
        )
    };
    let head: [&(dyn ToSql + Sync); 4] = [&a.key, &number, &outcome, &code];
    match next {
        RelayNext::Delivered => {
            let sql =
                settle("status = 'delivered', due_at = NULL, finished_at = $5, message = NULL");
            let stmt = tx.prepare_cached(&sql).await.map_err(pg_error)?;
            tx.execute(&stmt, &[&head[..], &[&finished_at]].concat())
                .await
                .map_err(pg_error)?;
        }
        RelayNext::Retry { due_at, tries } => {
            let sql = settle("due_at = $5, tries = $6, message = $7");
            let stmt = tx.prepare_cached(&sql).await.map_err(pg_error)?;
            let (tries, problem) = (int(*tries), try_problem(a));
            tx.execute(&stmt, &[&head[..], &[due_at, &tries, &problem]].concat())
                .await
                .map_err(pg_error)?;
        }
        RelayNext::Dead { reason } => {
            let sql = settle(
                "status = 'dead', due_at = NULL, finished_at = $5, message = $6, tries = tries + 1",
            );
            let stmt = tx.prepare_cached(&sql).await.map_err(pg_error)?;
            tx.execute(&stmt, &[&head[..], &[&finished_at, reason]].concat())
                .await
                .map_err(pg_error)?;
        }
    }
    Ok(())
}

/// Column `index` of `row`.
pub(super) fn col<'a, T: FromSql<'a>>(row: &'a Row, index: usize) -> Result<T> {
    row.try_get(index).map_err(pg_error)
}

/// A count for an `INTEGER` column.
fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A count read from an `INTEGER` column.
fn count(row: &Row, index: usize) -> Result<u32> {
    Ok(u32::try_from(col::<i32>(row, index)?).unwrap_or_default())
}

/// The columns a claim answers (`m` the message, `d` its delivery), in [`due_from_row`]'s
/// order.
const CLAIMED_COLUMNS: &str = "m.key, m.relay, m.target, m.tries, m.attempts, m.due_at, \
     m.delivery, d.source, d.delivery_id, d.event, d.headers, d.body, m.lease_token, \
     m.created_at";

/// A claimed message of [`CLAIMED_COLUMNS`], with its claim's token and when it was made.
fn due_from_row(row: &Row) -> Result<(DueRelay, i64, Millis)> {
    let due = DueRelay {
        key: col(row, 0)?,
        relay: col(row, 1)?,
        target: col(row, 2)?,
        tries: count(row, 3)?,
        attempts: count(row, 4)?,
        due_at: col(row, 5)?,
        delivery: col(row, 6)?,
        source: col(row, 7)?,
        delivery_id: col(row, 8)?,
        event: col(row, 9)?,
        headers: col(row, 10)?,
        body: col(row, 11)?,
    };
    Ok((due, col(row, 12)?, col(row, 13)?))
}

/// Positional arguments of a query built from the terms a filter has.
#[derive(Default)]
struct Args<'a> {
    values: Vec<&'a (dyn ToSql + Sync)>,
}

impl<'a> Args<'a> {
    /// Adds `value`; answers its placeholder.
    fn bind(&mut self, value: &'a (dyn ToSql + Sync)) -> String {
        self.values.push(value);
        format!("${}", self.values.len())
    }

    /// `column op $n` for each term whose value is given.
    fn terms(&mut self, terms: &[(&str, Option<&'a (dyn ToSql + Sync)>)]) -> Vec<String> {
        terms
            .iter()
            .filter_map(|(term, value)| value.map(|v| format!("{term} {}", self.bind(v))))
            .collect()
    }
}

impl PostgresStore {
    /// Leases the messages `keys` (already locked by the transaction) until `lease_until`,
    /// each under a new token, with what their requests need from their deliveries.
    async fn lease(
        tx: &Transaction<'_>,
        keys: &[String],
        lease_until: Millis,
    ) -> Result<Vec<(DueRelay, i64, Millis)>> {
        let lease = tx
            .prepare_cached(&format!(
                "UPDATE relay_messages m
                 SET lease_until = $2, lease_token = nextval('lease_tokens')
                 FROM deliveries d
                 WHERE m.key = ANY($1) AND d.seq = m.delivery
                 RETURNING {CLAIMED_COLUMNS}"
            ))
            .await
            .map_err(pg_error)?;
        tx.query(&lease, &[&keys, &lease_until])
            .await
            .map_err(pg_error)?
            .iter()
            .map(due_from_row)
            .collect()
    }
}

#[async_trait]
impl RelayStore for PostgresStore {
    async fn claim_relays(
        &self,
        relay: &str,
        target: &str,
        now: Millis,
        limit: u32,
        lease_until: Millis,
        ordered: bool,
    ) -> Result<Vec<DueRelay>> {
        self.relay_leases.claimed_as(relay, target, ordered);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let limit = i64::from(limit);
        let keys: Vec<String> = if ordered {
            // The head and the messages after it, locked in key order (waiting for a claim
            // or a try another replica is committing on them, not skipping them, since a
            // skipped head would let the next message go first); then as many as are
            // unleased from the head on.
            let head = tx
                .prepare_cached(
                    "SELECT key, lease_until FROM relay_messages
                     WHERE relay = $1 AND target = $2 AND status = 'pending'
                     ORDER BY key LIMIT $3
                     FOR UPDATE",
                )
                .await
                .map_err(pg_error)?;
            let mut keys = Vec::new();
            for row in tx
                .query(&head, &[&relay, &target, &limit])
                .await
                .map_err(pg_error)?
            {
                let leased: Option<Millis> = col(&row, 1)?;
                if leased.is_some_and(|until| until >= now) {
                    break;
                }
                keys.push(col(&row, 0)?);
            }
            keys
        } else {
            let due = tx
                .prepare_cached(
                    "SELECT key FROM relay_messages
                     WHERE relay = $1 AND target = $2 AND status = 'pending' AND due_at <= $3
                       AND (lease_until IS NULL OR lease_until < $3)
                     ORDER BY due_at, created_at, key LIMIT $4
                     FOR UPDATE SKIP LOCKED",
                )
                .await
                .map_err(pg_error)?;
            tx.query(&due, &[&relay, &target, &now, &limit])
                .await
                .map_err(pg_error)?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()
                .map_err(pg_error)?
        };
        if keys.is_empty() {
            tx.commit().await.map_err(pg_error)?;
            return Ok(Vec::new());
        }
        let mut claimed = Self::lease(&tx, &keys, lease_until).await?;
        tx.commit().await.map_err(pg_error)?;
        // RETURNING promises no order.
        if ordered {
            claimed.sort_by(|a, b| a.0.key.cmp(&b.0.key));
        } else {
            claimed.sort_by(|a, b| (a.0.due_at, a.2, &a.0.key).cmp(&(b.0.due_at, b.2, &b.0.key)));
        }
        let mut staged = Staged::default();
        staged
            .claimed
            .extend(claimed.iter().map(|(m, token, _)| (m.key.clone(), *token)));
        self.relay_leases.committed(staged);
        Ok(claimed.into_iter().map(|(m, _, _)| m).collect())
    }

    async fn next_relay_due(
        &self,
        relay: &str,
        target: &str,
        now: Millis,
    ) -> Result<Option<Millis>> {
        let client = self.client().await?;
        if self.relay_leases.is_ordered(relay, target) {
            // Only the head is ever claimed: due as it is, or when its lease ends.
            let head = client
                .prepare_cached(
                    "SELECT due_at, lease_until FROM relay_messages
                     WHERE relay = $1 AND target = $2 AND status = 'pending'
                     ORDER BY key LIMIT 1",
                )
                .await
                .map_err(pg_error)?;
            let Some(row) = client
                .query_opt(&head, &[&relay, &target])
                .await
                .map_err(pg_error)?
            else {
                return Ok(None);
            };
            let (due_at, leased): (Millis, Option<Millis>) = (col(&row, 0)?, col(&row, 1)?);
            return Ok(Some(match leased {
                Some(until) if until >= now => due_at.max(until + 1),
                _ => due_at,
            }));
        }
        // The first unleased message in due order; the leased ones, claimed when due, sit
        // at the start of that order and are few.
        let unleased = client
            .prepare_cached(
                "SELECT due_at FROM relay_messages
                 WHERE relay = $1 AND target = $2 AND status = 'pending'
                   AND (lease_until IS NULL OR lease_until < $3)
                 ORDER BY due_at LIMIT 1",
            )
            .await
            .map_err(pg_error)?;
        let first: Option<Millis> = match client
            .query_opt(&unleased, &[&relay, &target, &now])
            .await
            .map_err(pg_error)?
        {
            Some(row) => col(&row, 0)?,
            None => None,
        };
        if first.is_some_and(|due| due <= now) {
            return Ok(first);
        }
        // Nothing unleased is due yet: a lease that ends sooner makes its message due then.
        let leased = client
            .prepare_cached(
                "SELECT MIN(GREATEST(due_at, lease_until + 1)) FROM relay_messages
                 WHERE relay = $1 AND target = $2 AND status = 'pending'
                   AND due_at <= $3 AND lease_until >= $3",
            )
            .await
            .map_err(pg_error)?;
        let ends: Option<Millis> = client
            .query_one(&leased, &[&relay, &target, &now])
            .await
            .map_err(pg_error)?
            .try_get(0)
            .map_err(pg_error)?;
        Ok(match (first, ends) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    async fn release_relay_leases(&self) -> Result<()> {
        // A shared store: the leases held are other replicas' too, and end by expiry.
        Ok(())
    }

    async fn relay_targets(&self) -> Result<Vec<RelayTargetStats>> {
        let client = self.client().await?;
        let mut stats = BTreeMap::new();
        let counts = client
            .prepare_cached(
                "SELECT relay, target, status, COUNT(*) FROM relay_messages
                 GROUP BY relay, target, status",
            )
            .await
            .map_err(pg_error)?;
        for row in client.query(&counts, &[]).await.map_err(pg_error)? {
            let status: String = col(&row, 2)?;
            let n = u64::try_from(col::<i64>(&row, 3)?).unwrap_or_default();
            let target = entry(&mut stats, col(&row, 0)?, col(&row, 1)?);
            match RelayStatus::parse(&status) {
                Some(RelayStatus::Pending) => target.pending = n,
                Some(RelayStatus::Delivered) => target.delivered = n,
                Some(RelayStatus::Dead) => target.dead = n,
                None => return Err(corrupt("relay_messages.status", &status)),
            }
        }
        for (relay, target, created_at) in self.relay_oldest_pending().await? {
            entry(&mut stats, relay, target).oldest_pending_at = Some(created_at);
        }
        let disabled = client
            .prepare_cached("SELECT relay, target, disabled_at, disabled_reason FROM relay_targets")
            .await
            .map_err(pg_error)?;
        for row in client.query(&disabled, &[]).await.map_err(pg_error)? {
            let target = entry(&mut stats, col(&row, 0)?, col(&row, 1)?);
            target.disabled_at = col(&row, 2)?;
            target.disabled_reason = col(&row, 3)?;
        }
        Ok(stats.into_values().collect())
    }

    async fn relay_oldest_pending(&self) -> Result<Vec<(String, String, Millis)>> {
        let client = self.client().await?;
        let oldest = client
            .prepare_cached(
                "SELECT relay, target, MIN(created_at) FROM relay_messages
                 WHERE status = 'pending' GROUP BY relay, target ORDER BY relay, target",
            )
            .await
            .map_err(pg_error)?;
        client
            .query(&oldest, &[])
            .await
            .map_err(pg_error)?
            .iter()
            .map(|row| Ok((col(row, 0)?, col(row, 1)?, col(row, 2)?)))
            .collect()
    }

    async fn list_relay_messages(
        &self,
        filter: &RelayMessageFilter,
    ) -> Result<Vec<RelayMessageRecord>> {
        let limit = page_limit(filter.limit);
        let status = filter.status.map(RelayStatus::as_str);
        let mut args = Args::default();
        let terms = args.terms(&[
            ("relay =", filter.relay.as_ref().map(|r| r as _)),
            ("target =", filter.target.as_ref().map(|t| t as _)),
            ("status =", status.as_ref().map(|s| s as _)),
            ("key <", filter.before.as_ref().map(|b| b as _)),
        ]);
        let filter = if terms.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", terms.join(" AND "))
        };
        let limit = args.bind(&limit);
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM relay_messages {filter} ORDER BY key DESC LIMIT {limit}"
        );
        let client = self.client().await?;
        let list = client.prepare_cached(&sql).await.map_err(pg_error)?;
        client
            .query(&list, &args.values)
            .await
            .map_err(pg_error)?
            .iter()
            .map(message_from_row)
            .collect()
    }

    async fn load_relay_message(
        &self,
        key: &str,
    ) -> Result<Option<(RelayMessageRecord, Vec<RelayAttemptRecord>)>> {
        let client = self.client().await?;
        let message = client
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM relay_messages WHERE key = $1"
            ))
            .await
            .map_err(pg_error)?;
        let Some(row) = client
            .query_opt(&message, &[&key])
            .await
            .map_err(pg_error)?
        else {
            return Ok(None);
        };
        let message = message_from_row(&row)?;
        let tries = client
            .prepare_cached(
                "SELECT key, attempt, at, duration_ms, outcome, code, body, error
                 FROM relay_attempts WHERE key = $1 ORDER BY attempt",
            )
            .await
            .map_err(pg_error)?;
        let tries = client
            .query(&tries, &[&key])
            .await
            .map_err(pg_error)?
            .iter()
            .map(attempt_from_row)
            .collect::<Result<_>>()?;
        Ok(Some((message, tries)))
    }

    async fn replay_relays(&self, replay: &RelayReplay, now: Millis) -> Result<u64> {
        let mut args = Args::default();
        let now_arg = args.bind(&now);
        let selected = match replay {
            RelayReplay::Message(key) => {
                format!("key = {} AND status <> 'pending'", args.bind(key))
            }
            RelayReplay::Matching {
                relay,
                target,
                status,
                since,
                until,
            } => {
                let status = match status {
                    Some(RelayStatus::Pending) => return Ok(0),
                    Some(status) => format!("status = '{}'", status.as_str()),
                    None => "status IN ('delivered', 'dead')".to_owned(),
                };
                let mut terms = args.terms(&[
                    ("relay =", Some(relay as _)),
                    ("target =", target.as_ref().map(|t| t as _)),
                    ("created_at >=", since.as_ref().map(|s| s as _)),
                    ("created_at <", until.as_ref().map(|u| u as _)),
                ]);
                terms.push(status);
                terms.join(" AND ")
            }
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let sql = format!(
            "UPDATE relay_messages SET status = 'pending', due_at = {now_arg}, tries = 0,
                 lease_until = NULL, finished_at = NULL
             WHERE {selected}
             RETURNING relay, target"
        );
        let replay = tx.prepare_cached(&sql).await.map_err(pg_error)?;
        let returned = tx.query(&replay, &args.values).await.map_err(pg_error)?;
        let mut targets = BTreeSet::new();
        for row in &returned {
            targets.insert((col::<String>(row, 0)?, col::<String>(row, 1)?));
        }
        let enable = tx
            .prepare_cached("DELETE FROM relay_targets WHERE relay = $1 AND target = $2")
            .await
            .map_err(pg_error)?;
        for (relay, target) in &targets {
            tx.execute(&enable, &[relay, target])
                .await
                .map_err(pg_error)?;
        }
        if !returned.is_empty() {
            notify(&tx, Work::Relays).await?;
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(returned.len() as u64)
    }
}

/// A value of column `what` this build cannot read.
fn corrupt(what: &str, detail: &str) -> StoreError {
    StoreError::Corrupt {
        what: what.to_owned(),
        detail: detail.to_owned(),
    }
}

/// Reads a message row of [`MESSAGE_COLUMNS`].
fn message_from_row(row: &Row) -> Result<RelayMessageRecord> {
    let status: String = col(row, 4)?;
    let last_outcome: Option<String> = col(row, 10)?;
    let last_code: Option<i32> = col(row, 11)?;
    Ok(RelayMessageRecord {
        key: col(row, 0)?,
        relay: col(row, 1)?,
        target: col(row, 2)?,
        delivery: col(row, 3)?,
        status: RelayStatus::parse(&status)
            .ok_or_else(|| corrupt("relay_messages.status", &status))?,
        tries: count(row, 5)?,
        attempts: count(row, 6)?,
        created_at: col(row, 7)?,
        due_at: col(row, 8)?,
        finished_at: col(row, 9)?,
        last_outcome: last_outcome
            .map(|o| outcome(&o, "relay_messages.last_outcome"))
            .transpose()?,
        last_code: last_code.and_then(|c| u16::try_from(c).ok()),
        message: col(row, 12)?,
    })
}

/// Reads a `relay_attempts` row.
fn attempt_from_row(row: &Row) -> Result<RelayAttemptRecord> {
    let outcome_text: String = col(row, 4)?;
    let code: Option<i32> = col(row, 5)?;
    Ok(RelayAttemptRecord {
        key: col(row, 0)?,
        attempt: count(row, 1)?,
        at: col(row, 2)?,
        duration_ms: u32::try_from(col::<i64>(row, 3)?).unwrap_or(u32::MAX),
        outcome: outcome(&outcome_text, "relay_attempts.outcome")?,
        code: code.and_then(|c| u16::try_from(c).ok()),
        body: col(row, 6)?,
        error: col(row, 7)?,
    })
}

/// Parses a stored outcome of column `what`.
fn outcome(text: &str, what: &str) -> Result<RelayOutcome> {
    RelayOutcome::parse(text).ok_or_else(|| corrupt(what, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{delivery, postgres_schema};

    /// How many claims the store remembers holding.
    fn held(store: &PostgresStore) -> usize {
        lock(&store.relay_leases.held).len()
    }

    #[tokio::test]
    async fn a_claim_is_forgotten_once_settled_given_back_killed_or_lost() {
        let (options, _schema) = postgres_schema().await;
        let store = PostgresStore::open(&options).await.unwrap();
        let Intake::Stored(d) = store.insert_delivery(delivery("d")).await.unwrap() else {
            panic!("a new delivery")
        };
        let message = |n: u32, target: &str, lease_until| {
            Change::RelayEnqueue(NewRelayMessage {
                key: format!("msg_{n}"),
                relay: "r".into(),
                target: target.into(),
                delivery: d,
                created_at: 1,
                due_at: 1,
                lease_until,
            })
        };
        store
            .commit(vec![
                message(1, "a", Some(100)),
                message(2, "a", None),
                message(3, "b", Some(100)),
                message(4, "c", Some(100)),
            ])
            .await
            .unwrap();
        assert_eq!(held(&store), 3);
        assert_eq!(
            store
                .claim_relays("r", "a", 1, 10, 100, false)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(held(&store), 4);
        let attempt = RelayAttemptRecord {
            key: "msg_1".into(),
            attempt: 1,
            at: 5,
            duration_ms: 1,
            outcome: RelayOutcome::Delivered,
            code: Some(200),
            body: None,
            error: None,
        };
        store
            .commit(vec![
                Change::RelayAttempt {
                    attempt,
                    next: RelayNext::Delivered,
                },
                Change::RelayPostpone {
                    key: "msg_2".into(),
                    due_at: 50,
                },
                Change::RelayTargetDisabled {
                    relay: "r".into(),
                    target: "b".into(),
                    at: 6,
                    reason: "410".into(),
                },
            ])
            .await
            .unwrap();
        assert_eq!(held(&store), 1);
        // Another replica takes msg_4 over; this one's give-back is refused, and forgotten.
        let other = PostgresStore::open(&options).await.unwrap();
        assert_eq!(
            other
                .claim_relays("r", "c", 101, 10, 1_000, false)
                .await
                .unwrap()
                .len(),
            1
        );
        let refused = store
            .commit(vec![Change::RelayPostpone {
                key: "msg_4".into(),
                due_at: 50,
            }])
            .await
            .unwrap_err();
        assert!(refused.is_fenced(), "{refused}");
        assert_eq!(held(&store), 0);
    }
}
