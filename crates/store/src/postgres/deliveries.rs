//! Webhook deliveries on a shared store: their claims and the feed (the intake that stores
//! them is `intake`).
//!
//! - Every replica takes webhooks; the unique (source, delivery id) makes a redelivery to
//!   any of them a duplicate.
//! - A delivery is claimed for matching by the replica that stored it, at insert, with that
//!   process's token; another replica takes it over only once that claim has expired
//!   ([`Store::pending_deliveries`]), under a second token of its own that marks it as taken
//!   over. Matching marks only deliveries still held under one of this process's tokens, and
//!   fails as fenced if one was taken over.
//! - The feed must carry this process's deliveries in id order (the matcher skips feed
//!   deliveries at or below the last id it matched). Ids a sequence gives inside concurrent
//!   inserts come back in any order, so the intake takes ids in blocks and hands them out
//!   itself: handing out and noting an id as in flight are one step, and a stored delivery
//!   is published only once every lower id of this process has been stored or given up.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};

use crate::feed::{self, FeedSender};
use crate::*;

use super::{PostgresStore, pg_error};

/// Stored deliveries the feed holds for a matcher that is behind; past this it lags.
pub(super) const FEED_CAPACITY: usize = 4096;

/// Deliveries as this process sees them.
pub(super) struct Deliveries {
    /// This process's claim token on the deliveries it stores. A restart takes a new one,
    /// so the old process's claims look foreign.
    pub(super) token: i64,
    /// This process's claim token on deliveries it took over from another process (or from
    /// an earlier run of itself): they are told apart from its own because they were never
    /// on its feed, so they are matched as replays, every time they are read.
    pub(super) taken: i64,
    /// Ids handed out and their stored deliveries waiting for lower ids.
    order: Mutex<Order>,
    /// Deliveries this process holds: stored here or claimed, and not yet marked matched.
    pub(super) held: Mutex<BTreeSet<i64>>,
    /// Where stored deliveries go, once the matcher asked for them.
    pub(super) feed: OnceLock<FeedSender>,
}

#[derive(Default)]
struct Order {
    in_flight: BTreeSet<i64>,
    ready: BTreeMap<i64, PendingDelivery>,
}

impl Deliveries {
    pub(super) fn new(token: i64, taken: i64) -> Self {
        Self {
            token,
            taken,
            order: Mutex::new(Order::default()),
            held: Mutex::new(BTreeSet::new()),
            feed: OnceLock::new(),
        }
    }

    /// Notes `ids` in flight: handed out, in order, to inserts not yet ended.
    pub(super) fn begin(&self, ids: &[i64]) {
        self.order
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .in_flight
            .extend(ids.iter().copied());
    }

    /// Ends the inserts of `ids`: holds and publishes the stored ones, in id order after
    /// every lower id in flight.
    pub(super) fn finish(&self, ids: &[i64], stored: Vec<PendingDelivery>) {
        if !stored.is_empty() {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            held.extend(stored.iter().map(|d| d.id));
        }
        let mut order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            order.in_flight.remove(id);
        }
        if self.feed.get().is_some() {
            order.ready.extend(stored.into_iter().map(|d| (d.id, d)));
        }
        let Some(feed) = self.feed.get() else {
            return;
        };
        let order = &mut *order;
        while let Some(entry) = order.ready.first_entry() {
            if order.in_flight.first().is_some_and(|low| low < entry.key()) {
                break;
            }
            feed.publish(entry.remove());
        }
    }
}

impl PostgresStore {
    /// [`Store::pending_deliveries`]: claims replays, deliveries this process holds, and
    /// those whose claim has expired, oldest first after replays. A delivery taken over
    /// from another process comes as a replay: it was never on this process's feed, and its
    /// id may be below what the matcher has passed, so it is recorded on its own.
    pub(super) async fn pending_deliveries_impl(&self, limit: u32) -> Result<Vec<PendingDelivery>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "WITH c AS (
                     SELECT seq, claim_token AS was FROM deliveries
                     WHERE status IN ('received', 'replay')
                       AND (claim_token IN ($1, $5) OR claim_until IS NULL OR claim_until < $2)
                     ORDER BY status = 'replay' DESC, seq LIMIT $3
                     FOR UPDATE SKIP LOCKED)
                 UPDATE deliveries d SET claim_until = $4,
                     claim_token = CASE WHEN c.was = $1 THEN $1 ELSE $5 END
                 FROM c WHERE d.seq = c.seq
                 RETURNING d.seq, d.source, d.delivery_id, d.event, d.headers, d.body,
                           d.status = 'replay' OR c.was <> $1",
            )
            .await
            .map_err(pg_error)?;
        let now = now_millis();
        let rows = client
            .query(
                &statement,
                &[
                    &self.deliveries.token,
                    &now,
                    &i64::from(limit),
                    &(now + self.lease_millis()),
                    &self.deliveries.taken,
                ],
            )
            .await
            .map_err(pg_error)?;
        let mut pending = rows
            .iter()
            .map(|row| {
                Ok(PendingDelivery {
                    id: row.try_get(0)?,
                    source: row.try_get(1)?,
                    delivery_id: row.try_get(2)?,
                    event: row.try_get(3)?,
                    headers: row.try_get(4)?,
                    body: row.try_get(5)?,
                    replay: row.try_get(6)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(pg_error)?;
        pending.sort_unstable_by_key(|d| (!d.replay, d.id));
        self.deliveries
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(pending.iter().map(|d| d.id));
        Ok(pending)
    }

    /// [`Store::delivery_feed`].
    pub(super) fn delivery_feed_impl(&self) -> Option<DeliveryFeed> {
        let (sender, feed) = feed::channel(FEED_CAPACITY);
        self.deliveries.feed.set(sender).ok().map(|()| feed)
    }
}
