//! The relay queue's SQLite side (see [`crate::relay`]): `relay_messages`, their tries in
//! `relay_attempts`, and the targets a 410 disabled in `relay_targets`.
//!
//! The changes and the writes the queries need (claims, leases, replays) run in the writer's
//! transaction; the rest reads on the pool.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::types::ToSql;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::rows::{corrupt, rows};
use crate::relay::{MESSAGE_COLUMNS, answer_slice, entry, try_problem};
use crate::*;

/// Every status, for listings that take them one at a time.
const STATUSES: [RelayStatus; 3] = [
    RelayStatus::Pending,
    RelayStatus::Delivered,
    RelayStatus::Dead,
];

/// The update that settles a try on a pending message (key `?1`): its number (`?2`),
/// outcome (`?3`) and code (`?4`), its lease ended, and the columns `next` sets.
macro_rules! settle {
    ($next:literal) => {
        concat!(
            "UPDATE relay_messages SET attempts = ?2, last_outcome = ?3, last_code = ?4, ",
            "lease_until = NULL, ",
            $next,
            " WHERE key = ?1 AND status = 'pending'"
        )
    };
}

/// [`Change::RelayEnqueue`].
pub(super) fn enqueue(tx: &Transaction<'_>, m: &NewRelayMessage) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO relay_messages (key, relay, target, delivery, status, due_at, lease_until, created_at)
         VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?7)",
    )?
    .execute(params![
        m.key,
        m.relay,
        m.target,
        m.delivery,
        m.due_at,
        m.lease_until,
        m.created_at
    ])?;
    Ok(())
}

/// [`Change::RelayAttempt`]: the try's row, and the message moved on by `next` if it is
/// still pending (a replay or a disabling may have settled it while the try ran; the try
/// is kept either way).
pub(super) fn attempt(
    tx: &Transaction<'_>,
    a: &RelayAttemptRecord,
    next: &RelayNext,
) -> Result<()> {
    // A number recorded already (a lease that ran out while its try was still going, and
    // the same try made again) keeps the first: history is not rewritten.
    tx.prepare_cached(
        "INSERT INTO relay_attempts (key, attempt, at, duration_ms, outcome, code, body, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (key, attempt) DO NOTHING",
    )?
    .execute(params![
        a.key,
        a.attempt,
        a.at,
        a.duration_ms,
        a.outcome.as_str(),
        a.code,
        a.body.as_deref().map(answer_slice),
        a.error,
    ])?;
    let finished_at = a.at + Millis::from(a.duration_ms);
    let (key, number, outcome, code) = (&a.key, a.attempt, a.outcome.as_str(), a.code);
    match next {
        RelayNext::Delivered => tx
            .prepare_cached(settle!(
                "status = 'delivered', due_at = NULL, finished_at = ?5, message = NULL"
            ))?
            .execute(params![key, number, outcome, code, finished_at])?,
        RelayNext::Retry { due_at, tries } => tx
            .prepare_cached(settle!("due_at = ?5, tries = ?6, message = ?7"))?
            .execute(params![
                key,
                number,
                outcome,
                code,
                due_at,
                tries,
                try_problem(a)
            ])?,
        RelayNext::Dead { reason } => tx
            .prepare_cached(settle!(
                "status = 'dead', due_at = NULL, finished_at = ?5, message = ?6, tries = tries + 1"
            ))?
            .execute(params![key, number, outcome, code, finished_at, reason])?,
    };
    Ok(())
}

/// [`Change::RelayPostpone`]: no try is counted.
pub(super) fn postpone(tx: &Transaction<'_>, key: &str, due_at: Millis) -> Result<()> {
    tx.prepare_cached(
        "UPDATE relay_messages SET due_at = ?2, lease_until = NULL
         WHERE key = ?1 AND status = 'pending'",
    )?
    .execute(params![key, due_at])?;
    Ok(())
}

/// Every pending message of target `?1`/`?2` dead at `?3`, for reason `?4`.
pub(super) const KILL_PENDING_SQL: &str = "UPDATE relay_messages
     SET status = 'dead', due_at = NULL, lease_until = NULL, finished_at = ?3, message = ?4
     WHERE relay = ?1 AND target = ?2 AND status = 'pending'";

/// [`Change::RelayTargetDisabled`]: the mark (the first one stays), and the target's pending
/// messages dead.
pub(super) fn disable_target(
    tx: &Transaction<'_>,
    relay: &str,
    target: &str,
    at: Millis,
    reason: &str,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO relay_targets (relay, target, disabled_at, disabled_reason)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (relay, target) DO NOTHING",
    )?
    .execute(params![relay, target, at, reason])?;
    tx.prepare_cached(KILL_PENDING_SQL)?
        .execute(params![relay, target, at, reason])?;
    Ok(())
}

/// Leases up to `limit` of a target's pending messages not leased at `now` (see
/// [`RelayStore::claim_relays`]), with what their requests need from their deliveries.
pub(super) fn claim(
    tx: &Transaction<'_>,
    relay: &str,
    target: &str,
    now: Millis,
    limit: u32,
    lease_until: Millis,
    ordered: bool,
) -> Result<Vec<DueRelay>> {
    let claimed = rows(
        tx,
        &claim_sql(ordered),
        params![relay, target, now, limit],
        |row| {
            Ok(DueRelay {
                key: row.get(0)?,
                relay: row.get(1)?,
                target: row.get(2)?,
                tries: row.get(3)?,
                attempts: row.get(4)?,
                due_at: row.get(5)?,
                delivery: row.get(6)?,
                source: row.get(7)?,
                delivery_id: row.get(8)?,
                event: row.get(9)?,
                headers: row.get(10)?,
                body: row.get(11)?,
            })
        },
    )?;
    let mut lease =
        tx.prepare_cached("UPDATE relay_messages SET lease_until = ?2 WHERE key = ?1")?;
    for message in &claimed {
        lease.execute(params![message.key, lease_until])?;
    }
    Ok(claimed)
}

/// The claim's query: `?1` relay, `?2` target, `?3` now, `?4` limit.
pub(super) fn claim_sql(ordered: bool) -> String {
    // Due ones follow the pending index (due time, then age). In order, the by-target
    // index's pending range is already in key order, which is the order the deliveries
    // were matched in (keys are UUIDv7s made as each delivery is matched, in delivery
    // order), so a claim reads the first rows of it and sorts nothing, however long the
    // backlog of a target that has been down. Named, because without statistics the
    // planner picks by its equalities.
    let (index, due, order) = if ordered {
        ("relay_messages_by_target", "", "m.key")
    } else {
        (
            "relay_messages_pending",
            "AND m.due_at <= ?3",
            "m.due_at, m.created_at, m.key",
        )
    };
    format!(
        "SELECT m.key, m.relay, m.target, m.tries, m.attempts, m.due_at, m.delivery,
                d.source, d.delivery_id, d.event, d.headers, d.body
         FROM relay_messages m INDEXED BY {index}
         JOIN deliveries d ON d.seq = m.delivery
         WHERE m.relay = ?1 AND m.target = ?2 AND m.status = 'pending' {due}
           AND (m.lease_until IS NULL OR m.lease_until < ?3)
         ORDER BY {order} LIMIT ?4"
    )
}

/// Every lease held, cleared.
pub(super) const RELEASE_SQL: &str = "UPDATE relay_messages SET lease_until = NULL
     WHERE status = 'pending' AND lease_until IS NOT NULL";

/// Clears every lease. Only pending messages hold one (every change that settles a message
/// clears it), so the pending index finds them all.
pub(super) fn release_all(tx: &Transaction<'_>) -> Result<()> {
    tx.prepare_cached(RELEASE_SQL)?.execute([])?;
    Ok(())
}

/// [`RelayStore::replay_relays`]: the selected messages pending again, and their targets
/// enabled.
pub(super) fn replay(tx: &Transaction<'_>, replay: &RelayReplay, now: Millis) -> Result<u64> {
    let mut args: Vec<(&str, &dyn ToSql)> = vec![(":now", &now)];
    let selected = match replay {
        RelayReplay::Message(key) => {
            args.push((":key", key));
            "key = :key AND status <> 'pending'".to_owned()
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
            let given = [
                ("relay = :relay", ":relay", Some(relay as &dyn ToSql)),
                (
                    "target = :target",
                    ":target",
                    target.as_ref().map(|t| t as _),
                ),
                (
                    "created_at >= :since",
                    ":since",
                    since.as_ref().map(|s| s as _),
                ),
                (
                    "created_at < :until",
                    ":until",
                    until.as_ref().map(|u| u as _),
                ),
            ];
            let mut terms = given_terms(given, &mut args);
            terms.push(&status);
            terms.join(" AND ")
        }
    };
    let mut stmt = tx.prepare(&format!(
        "UPDATE relay_messages SET status = 'pending', due_at = :now, tries = 0,
             lease_until = NULL, finished_at = NULL
         WHERE {selected}
         RETURNING relay, target"
    ))?;
    let mut count = 0;
    let mut targets = BTreeSet::new();
    let mut returned = stmt.query(args.as_slice())?;
    while let Some(row) = returned.next()? {
        count += 1;
        targets.insert((row.get::<_, String>(0)?, row.get::<_, String>(1)?));
    }
    let mut enable =
        tx.prepare_cached("DELETE FROM relay_targets WHERE relay = ?1 AND target = ?2")?;
    for (relay, target) in &targets {
        enable.execute(params![relay, target])?;
    }
    Ok(count)
}

/// The earliest due time of a message not leased at `?3` of target `?1`/`?2`.
pub(super) const NEXT_DUE_SQL: &str =
    "SELECT due_at FROM relay_messages INDEXED BY relay_messages_pending
     WHERE relay = ?1 AND target = ?2 AND status = 'pending'
       AND (lease_until IS NULL OR lease_until < ?3)
     ORDER BY due_at LIMIT 1";

/// The earliest due time of a target's pending message not leased at `now`.
pub(super) fn next_due(
    conn: &Connection,
    relay: &str,
    target: &str,
    now: Millis,
) -> Result<Option<Millis>> {
    // Not MIN(due_at): the lease test is not in the index, and the first unleased one in
    // due order ends the walk.
    Ok(conn
        .prepare_cached(NEXT_DUE_SQL)?
        .query_row(params![relay, target, now], |r| r.get(0))
        .optional()?)
}

/// Messages as `filter` says, newest first, at most `limit`.
pub(super) fn list(
    conn: &Connection,
    filter: &RelayMessageFilter,
    limit: u32,
) -> Result<Vec<RelayMessageRecord>> {
    let (sql, args) = list_query(filter, &limit);
    rows(conn, &sql, args.as_slice(), message_from_row)
}

/// The listing's query for `filter`, and its named arguments: only the terms the filter
/// has, so the planner sees which index fits.
pub(super) fn list_query<'a>(
    filter: &'a RelayMessageFilter,
    limit: &'a u32,
) -> (String, Vec<(&'static str, &'a dyn ToSql)>) {
    let mut args: Vec<(&str, &dyn ToSql)> = vec![(":limit", limit)];
    let given = [
        (
            "relay = :relay",
            ":relay",
            filter.relay.as_ref().map(|r| r as _),
        ),
        (
            "target = :target",
            ":target",
            filter.target.as_ref().map(|t| t as _),
        ),
        (
            "key < :before",
            ":before",
            filter.before.as_ref().map(|b| b as _),
        ),
    ];
    let terms = given_terms(given, &mut args);
    let page = |status: Option<RelayStatus>| {
        let status = status.map(|s| format!("status = '{}'", s.as_str()));
        let terms: Vec<&str> = terms.iter().copied().chain(status.as_deref()).collect();
        let filter = if terms.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", terms.join(" AND "))
        };
        format!(
            "SELECT {MESSAGE_COLUMNS} FROM relay_messages {filter} ORDER BY key DESC LIMIT :limit"
        )
    };
    // A relay's messages in any status: a page from each status's range of its index,
    // merged, rather than sorting all of them.
    let sql = match (filter.status, filter.relay.is_some()) {
        (Some(status), _) => page(Some(status)),
        (None, true) => format!(
            "SELECT * FROM ({}) ORDER BY key DESC LIMIT :limit",
            STATUSES
                .map(|s| format!("SELECT * FROM ({})", page(Some(s))))
                .join(" UNION ALL ")
        ),
        (None, false) => page(None),
    };
    (sql, args)
}

/// The terms (`column = :name`, its name, its value) whose value is given, their values
/// added to `args` by name.
fn given_terms<'a, const N: usize>(
    terms: [(&'static str, &'static str, Option<&'a dyn ToSql>); N],
    args: &mut Vec<(&'static str, &'a dyn ToSql)>,
) -> Vec<&'static str> {
    let mut given = Vec::with_capacity(N);
    for (term, name, value) in terms {
        if let Some(value) = value {
            given.push(term);
            args.push((name, value));
        }
    }
    given
}

/// One message and its tries, oldest first.
pub(super) fn load(
    conn: &Connection,
    key: &str,
) -> Result<Option<(RelayMessageRecord, Vec<RelayAttemptRecord>)>> {
    let Some(message) = rows(
        conn,
        &format!("SELECT {MESSAGE_COLUMNS} FROM relay_messages WHERE key = ?1"),
        [key],
        message_from_row,
    )?
    .pop() else {
        return Ok(None);
    };
    let attempts = rows(
        conn,
        "SELECT key, attempt, at, duration_ms, outcome, code, body, error FROM relay_attempts
         WHERE key = ?1 ORDER BY attempt",
        [key],
        attempt_from_row,
    )?;
    Ok(Some((message, attempts)))
}

/// `(relay, target, created_at)` of each target's oldest pending message.
pub(super) const OLDEST_PENDING_SQL: &str =
    "SELECT relay, target, MIN(created_at) FROM relay_messages
     WHERE status = 'pending' GROUP BY relay, target ORDER BY relay, target";

/// Each target's oldest pending message's creation time, by relay then target.
pub(super) fn oldest_pending(conn: &Connection) -> Result<Vec<(String, String, Millis)>> {
    rows(conn, OLDEST_PENDING_SQL, [], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    })
}

/// `(relay, target, status, count)` of every target and status that has messages.
pub(super) const COUNTS_SQL: &str =
    "SELECT relay, target, status, COUNT(*) FROM relay_messages GROUP BY relay, target, status";

/// Every target with messages or a disabled mark, with its counts, by relay then target.
pub(super) fn targets(conn: &Connection) -> Result<Vec<RelayTargetStats>> {
    let mut stats = BTreeMap::new();
    // Each from an index alone: the counts from the by-target one, the oldest from the
    // pending one.
    let mut counts = conn.prepare_cached(COUNTS_SQL)?;
    let mut cursor = counts.query([])?;
    while let Some(row) = cursor.next()? {
        let status: String = row.get(2)?;
        let count: u64 = row.get(3)?;
        let target = entry(&mut stats, row.get(0)?, row.get(1)?);
        match RelayStatus::parse(&status) {
            Some(RelayStatus::Pending) => target.pending = count,
            Some(RelayStatus::Delivered) => target.delivered = count,
            Some(RelayStatus::Dead) => target.dead = count,
            None => return Err(corrupt("relay_messages.status", status)),
        }
    }
    for (relay, target, created_at) in oldest_pending(conn)? {
        entry(&mut stats, relay, target).oldest_pending_at = Some(created_at);
    }
    let mut disabled = conn
        .prepare_cached("SELECT relay, target, disabled_at, disabled_reason FROM relay_targets")?;
    let mut cursor = disabled.query([])?;
    while let Some(row) = cursor.next()? {
        let target = entry(&mut stats, row.get(0)?, row.get(1)?);
        target.disabled_at = row.get(2)?;
        target.disabled_reason = row.get(3)?;
    }
    Ok(stats.into_values().collect())
}

/// Reads a message row of [`MESSAGE_COLUMNS`].
fn message_from_row(row: &Row<'_>) -> Result<RelayMessageRecord> {
    let status: String = row.get(4)?;
    let last_outcome: Option<String> = row.get(10)?;
    Ok(RelayMessageRecord {
        key: row.get(0)?,
        relay: row.get(1)?,
        target: row.get(2)?,
        delivery: row.get(3)?,
        status: RelayStatus::parse(&status)
            .ok_or_else(|| corrupt("relay_messages.status", &status))?,
        tries: row.get(5)?,
        attempts: row.get(6)?,
        created_at: row.get(7)?,
        due_at: row.get(8)?,
        finished_at: row.get(9)?,
        last_outcome: last_outcome
            .map(|o| outcome(&o, "relay_messages.last_outcome"))
            .transpose()?,
        last_code: row.get(11)?,
        message: row.get(12)?,
    })
}

/// Reads a `relay_attempts` row.
fn attempt_from_row(row: &Row<'_>) -> Result<RelayAttemptRecord> {
    let outcome_text: String = row.get(4)?;
    Ok(RelayAttemptRecord {
        key: row.get(0)?,
        attempt: row.get(1)?,
        at: row.get(2)?,
        duration_ms: row.get(3)?,
        outcome: outcome(&outcome_text, "relay_attempts.outcome")?,
        code: row.get(5)?,
        body: row.get(6)?,
        error: row.get(7)?,
    })
}

/// Parses a stored outcome of column `what`.
fn outcome(text: &str, what: &str) -> Result<RelayOutcome> {
    RelayOutcome::parse(text).ok_or_else(|| corrupt(what, text))
}
